"""The service's bookkeeping of its callers: the calls in flight, each
sender's requests (to cancel them when it leaves the bus), each uid's queue
(bounded) and when the service is idle.  No I/O, nothing of the bus: the
service (``service.py``) tells it when a call begins, is queued and ends.
"""

import asyncio
import collections
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from .engine import Flag
from .errors import Busy


@dataclass(eq=False)
class Request:
    """A call being served, from arrival to reply.  ``cancelled`` is set
    when the caller leaves the bus (the walk reads it from its thread);
    ``running`` once its job has a worker (from then on the task is not
    cancelled: the walk stops itself and the record says how far it got).
    ``uid`` and ``pid`` are the bus daemon's, once asked; ``fields`` and
    ``notes`` what the method adds to the audit record (its arguments, as
    recorded, before the result; notes after it)."""

    call: Any  # messages.Incoming
    start: float = field(default_factory=time.monotonic)
    task: Optional[asyncio.Task] = None
    cancelled: Flag = field(default_factory=Flag)
    running: bool = False
    uid: Any = "-"  # int once known
    pid: Any = "-"  # int, or "-" when the bus does not know it
    queued: bool = False  # counted in its uid's queue
    fields: Dict[str, Any] = field(default_factory=dict)
    notes: Dict[str, Any] = field(default_factory=dict)

    @property
    def sender(self):
        return self.call.sender


class Callers:
    """The calls in flight, by caller.

    ``in_flight``, ``last_done`` and ``idle`` (an Event, set while nothing
    is in flight) are for idle exit and draining; ``on_idle()`` is called
    each time the last call in flight ends (the memory trim's timer)."""

    def __init__(self, max_queued_per_uid, on_idle=lambda: None):
        self.max_queued_per_uid = max_queued_per_uid
        self.on_idle = on_idle
        self.in_flight = 0
        self.last_done = time.monotonic()
        self.idle = asyncio.Event()
        self.idle.set()
        self._by_sender = {}  # unique name -> set of its Requests in flight
        self._queued = collections.Counter()  # uid -> requests past the credentials step

    def begin(self, call):
        """A call has arrived: its Request, counted in flight."""
        request = Request(call)
        self.in_flight += 1
        self.idle.clear()
        self._by_sender.setdefault(call.sender, set()).add(request)
        return request

    def queue(self, request):
        """Count ``request`` in its uid's queue (its uid known).  One user's
        flood queues at most ``max_queued_per_uid`` requests (threat model
        V12): past it they are told to come back (Busy), before polkit is
        asked, so that one user cannot hold every worker, polkit slot and
        pending reply of the service."""
        uid = request.uid
        if self._queued[uid] >= self.max_queued_per_uid:
            raise Busy(f"uid {uid} already has {self._queued[uid]} requests queued; try again later")
        self._queued[uid] += 1
        request.queued = True

    def of(self, sender):
        """The requests of ``sender`` in flight."""
        return self._by_sender.get(sender, ())

    def end(self, request):
        """``request`` is done (answered, or nobody left to answer)."""
        if request.queued:
            request.queued = False
            self._queued[request.uid] -= 1
            if not self._queued[request.uid]:
                del self._queued[request.uid]
        mine = self._by_sender.get(request.sender)
        if mine is not None:
            mine.discard(request)
            if not mine:
                del self._by_sender[request.sender]
        self.in_flight -= 1
        self.last_done = time.monotonic()
        if self.in_flight == 0:
            self.idle.set()
            self.on_idle()
