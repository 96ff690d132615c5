"""The service: receive method calls, authorize, run them off the loop, reply.

The interface's members are declared once, in ``locald_admin.interface``
(names, arguments, polkit action); ``METHODS`` below binds each to what it
does, and that one table drives dispatch here and introspection in
``busio``/``messages``.

Per call: the size of the argument (on arrival: nothing is asked of anyone
for an oversized one) -> sender (from the message header) -> uid and pid
(from the bus daemon, never from arguments) -> the caller's queue bound
(Busy) -> polkit for the method's action -> the operation, which queues the
work (``jobs``) for the engine in a worker thread -> reply -> one audit
record.  Every exception becomes a named D-Bus error with a one-line
message, never a traceback.  A caller that leaves the bus (the daemon's
NameOwnerChanged) has its polkit checks and queued requests cancelled and
its walks stopped; the record then says ``result=cancelled``.
"""

import asyncio
import collections
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from locald_admin import interface as i
from locald_admin import messages
from locald_admin.busio import BusError
from locald_admin.fs import fsops
from .config import ConfigError
from . import memory
from .audit import RESULT_CANCELLED, RESULT_OK, Recorder
from .engine import Cancelled, Engine, Flag, Progress
from .errors import Busy, Failed, InvalidPath, MechanismError, NotAuthorized
from .jobs import Jobs
from .polkit import Authority
from .settings import Settings

log = logging.getLogger(__name__)

CREDENTIALS_CACHE_SIZE = 4096


@dataclass(frozen=True)
class Caller:
    name: str  # unique bus name
    uid: int
    pid: object  # int, or "-" when the bus does not know it


@dataclass(frozen=True)
class Method:
    """A member of the interface and the coroutine method of CleanupService
    that performs it: ``run(service, caller, incoming, request, start)``
    returns (entries removed, reply body, extra audit fields)."""

    spec: i.MethodSpec
    run: Callable


@dataclass(eq=False)
class Request:
    """A call being served, from arrival to reply.  ``cancelled`` is set
    when the caller leaves the bus (the walk reads it from its thread);
    ``running`` once its job has a worker (from then on the task is not
    cancelled: the walk stops itself and the record says how far it got)."""

    sender: str
    task: Optional[asyncio.Task] = None
    cancelled: Flag = field(default_factory=Flag)
    running: bool = False


class _Repeating:
    """The pending timer of a repeating report; ``cancel()`` ends it."""

    __slots__ = ("timer",)

    def __init__(self):
        self.timer = None

    def cancel(self):
        self.timer.cancel()


class CleanupService:
    def __init__(self, bus, settings=Settings(), config=None, recorder=None):
        self.bus = bus
        self.settings = settings
        self.recorder = Recorder() if recorder is None else recorder
        self.engine = Engine(walk_threads=settings.walk_threads,
                             fs=fsops.choose(settings.openat2, not settings.python_walk),
                             limits=settings.walk_limits)
        self.jobs = Jobs(max_running=settings.workers, per_uid=settings.per_uid,
                         long_after=settings.long_job_after)
        self.authority = Authority(bus, max_in_flight=settings.polkit_checks_in_flight,
                                   plain_per_uid=settings.polkit_checks_per_uid,
                                   interactive_per_uid=settings.polkit_interactive_per_uid)
        # A Config, or the ConfigError that made the configuration unusable:
        # then every call fails closed, naming the problem.
        self.config = config
        self.in_flight = 0
        self.unsent = 0  # replies the bus connection could not take
        self.last_done = time.monotonic()
        self._tasks = set()
        self._creds = collections.OrderedDict()  # unique name -> (uid, pid), LRU
        self._queued = collections.Counter()  # uid -> requests past the credentials step
        self._requests = {}  # unique name -> set of its Requests in flight
        self._idle = asyncio.Event()
        self._idle.set()
        self._trim = None  # the pending return of freed memory (memory.trim) once idle

    async def start(self):
        """Serve the object, and learn from the bus daemon when a caller
        leaves (their checks and walks are then cancelled)."""
        self.bus.on_signal(self._on_signal)
        reply = await self.bus.call(messages.add_match(messages.NAME_LOST_RULE))
        if reply.error_name is not None:
            raise BusError(f"cannot watch callers leaving the bus: {reply.error_name}")
        self.bus.serve(self.dispatch)

    # -- dispatch ---------------------------------------------------------
    def dispatch(self, call):
        """Take a call to our object; False for a member we do not have."""
        method = METHODS.get(call.member)
        if method is None:
            return False
        if not call.oversized and call.signature != method.spec.in_signature:
            self._spawn(self.bus.reply_error(
                call, messages.INVALID_ARGS,
                f"{method.spec.name} takes signature '{method.spec.in_signature}', got '{call.signature}'"))
            return True
        self.in_flight += 1
        self._idle.clear()
        request = Request(call.sender)
        self._requests.setdefault(call.sender, set()).add(request)
        request.task = self._spawn(self._serve(method, call, request))
        return True

    def _spawn(self, coro):
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _serve(self, method, call, request):
        start = time.monotonic()
        path = call.body[0] if call.body else ""
        uid = pid = "-"
        result, removed, note = RESULT_OK, 0, {}
        counted = None
        reply = None
        try:
            try:
                # 1. On arrival, before anything is asked of anyone: an
                #    argument over the contract's size says nothing about the
                #    file system, and a big one costs memory everywhere it
                #    goes (polkit, Progress, the log).
                if call.oversized:
                    note = {"message_bytes": call.oversized}
                    raise InvalidPath(f"the call is {call.oversized} bytes long; a path is at most "
                                      f"{i.MAX_PATH_BYTES} bytes")
                size = len(path.encode("utf-8", "surrogatepass"))
                if size > i.MAX_PATH_BYTES:
                    path = ""
                    note = {"path_bytes": size}
                    raise InvalidPath(f"the path is {size} bytes long; at most {i.MAX_PATH_BYTES} are accepted")
                uid, pid = await self._credentials(call.sender)
                caller = Caller(call.sender, uid, pid)
                # 2. One user's flood queues at most this many requests: past
                #    it they are told to come back, before polkit is asked.
                if self._queued[uid] >= self.settings.max_queued_per_uid:
                    raise Busy(f"uid {uid} already has {self._queued[uid]} requests queued; try again later")
                self._queued[uid] += 1
                counted = uid
                await self.authority.authorize(call.sender, uid, method.spec.action, call.allow_interactive,
                                               self.settings.polkit_timeout_for(call.allow_interactive),
                                               gone=request.cancelled)
                if request.cancelled.is_set():
                    raise asyncio.CancelledError()  # it left as polkit said yes
                removed, body, note = await method.run(self, caller, call, request, start)
                reply = (self.bus.reply, (call, method.spec.out_signature, body))
            except MechanismError as e:
                result, removed = e.dbus_name, e.removed
                reply = (self.bus.reply_error, (call, e.dbus_name, e.message))
            except Cancelled as e:  # the caller left while its walk ran: nobody to answer
                result, removed = RESULT_CANCELLED, e.removed
            except asyncio.CancelledError:  # it left while waiting for polkit or for a worker
                result = RESULT_CANCELLED
            except Exception:
                log.exception("internal error while serving %s", call.sender)
                result = i.ERROR_FAILED
                reply = (self.bus.reply_error, (call, i.ERROR_FAILED, "internal error in locald-admin; see its log"))
            self.recorder.record(sender=call.sender, uid=uid, pid=pid, path=path, result=result, removed=removed,
                                 duration_ms=round((time.monotonic() - start) * 1000, 3), **note)
            if reply is not None:
                send, args = reply
                try:
                    await send(*args)
                except BusError as e:  # the connection is gone; main() notices
                    self.unsent += 1
                    if self.bus.connected:
                        log.warning("could not send the reply to %s: %s", call.sender, e)
        finally:
            if counted is not None:
                self._queued[counted] -= 1
                if not self._queued[counted]:
                    del self._queued[counted]
            mine = self._requests.get(call.sender)
            if mine is not None:
                mine.discard(request)
                if not mine:
                    del self._requests[call.sender]
            self.in_flight -= 1
            self.last_done = time.monotonic()
            if self.in_flight == 0:
                self._idle.set()
                # Give the memory of a big walk or a flood back to the
                # system once things have been quiet for a moment.
                if self._trim is None:
                    self._trim = asyncio.get_running_loop().call_later(memory.TRIM_AFTER, self._trim_when_idle)

    def _trim_when_idle(self):
        """memory.trim once nothing has been in flight for TRIM_AFTER s.
        One timer, moved on while calls keep coming (not one per call)."""
        self._trim = None
        if self.in_flight:
            return  # the last of those calls schedules it again
        remaining = self.last_done + memory.TRIM_AFTER - time.monotonic()
        if remaining > 0:
            self._trim = asyncio.get_running_loop().call_later(remaining, self._trim_when_idle)
        else:
            memory.trim()

    # -- callers leaving ----------------------------------------------------
    def _on_signal(self, signal):
        name = messages.read_name_lost(signal)
        if name is not None:
            self.caller_left(name)

    def caller_left(self, name):
        """``name`` has left the bus: its cached credentials go, its checks
        and queued requests are cancelled, its walks told to stop (a walk
        shared with a caller still there goes on)."""
        self._creds.pop(name, None)
        for request in self._requests.get(name, ()):
            request.cancelled.set()
            if not request.running:
                request.task.cancel()

    # -- the methods ----------------------------------------------------------
    async def _cleanup(self, caller, call, request, start):
        config = self.config
        if isinstance(config, ConfigError):
            raise Failed(f"locald-admin is not configured correctly: {config}")
        path = call.body[0]
        ticket = self.engine.scans.ticket(caller.uid)
        progress = Progress(request.cancelled, ticket.census)
        reports = self._report_progress(caller.name, path, progress, start)

        def started():
            request.running = True

        try:
            outcome = await self.jobs.submit(caller.uid, self.engine.cleanup, path, caller.uid, config, progress,
                                             on_start=started)
        finally:
            reports.cancel()
            ticket.close()
        return outcome.removed, (), outcome.notes

    def _report_progress(self, sender, path, progress, start):
        """Every progress_interval, tell the caller (only the caller: paths
        are private, so the signal is unicast, never broadcast) how far the
        deletion got, once it runs.  Returns what to ``cancel()`` when it
        ends (a timer, not a task: most requests end before the first)."""
        loop = asyncio.get_running_loop()
        interval = self.settings.progress_interval
        reports = _Repeating()

        def report():
            if progress.started:
                self.bus.post(messages.progress(sender, path, progress.removed, time.monotonic() - start))
            reports.timer = loop.call_later(interval, report)

        reports.timer = loop.call_later(interval, report)
        return reports

    async def _credentials(self, sender):
        """uid and pid of ``sender``, from the bus daemon itself.

        Cached per unique name: the daemon never reuses a unique name and
        vouches for the sender of every message, so a cached answer for
        ``:1.42`` stays true for as long as this connection lives (only
        polkit's answers must never be cached, and are not).  Dropped when
        the name leaves the bus."""
        cached = self._creds.get(sender)
        if cached is not None:
            self._creds.move_to_end(sender)
            return cached
        try:
            uid, pid = messages.read_credentials(
                await self.bus.call(messages.get_connection_credentials(sender)), sender)
        except messages.BadReply as e:
            raise NotAuthorized(str(e)) from None
        creds = self._creds[sender] = (uid, "-" if pid is None else pid)
        if len(self._creds) > CREDENTIALS_CACHE_SIZE:
            self._creds.popitem(last=False)
        return creds

    # -- lifecycle ----------------------------------------------------------
    async def wait_idle(self, idle_timeout):
        """Return once no call has been in flight for ``idle_timeout`` s."""
        while True:
            await self._idle.wait()
            remaining = self.last_done + idle_timeout - time.monotonic()
            if remaining <= 0 and self.in_flight == 0:
                return
            await asyncio.sleep(max(remaining, 0.05))

    async def drain(self):
        """Wait until every call already received has been answered."""
        await self._idle.wait()


# The interface's methods, each bound to what performs it.
METHODS = {m.spec.name: m for m in (
    Method(i.CLEANUP, CleanupService._cleanup),
)}
