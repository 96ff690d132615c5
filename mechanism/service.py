"""The service: receive method calls, authorize, run them off the loop, reply.

The interface's members are declared once, in ``locald_admin.interface``
(names, arguments, polkit action); ``METHODS`` below binds each to what it
does, and that one table drives dispatch here and introspection in
``busio``/``messages``.

Per call: sender (from the message header) -> uid and pid (from the bus
daemon, never from arguments) -> polkit for the method's action -> the
operation, which queues the work (``jobs``) for the engine in a worker
thread -> reply -> one audit line.  Every exception becomes a named D-Bus
error with a one-line message, never a traceback.
"""

import asyncio
import collections
import json
import logging
import sys
import time
from dataclasses import dataclass
from typing import Callable

from locald_admin import interface as i
from locald_admin import messages
from locald_admin.busio import BusError
from locald_admin.fs import fsops
from .config import ConfigError
from .engine import Engine, Progress
from .errors import Failed, MechanismError, NotAuthorized
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
    that performs it: ``run(service, caller, incoming, start)`` returns
    (entries removed, reply body)."""

    spec: i.MethodSpec
    run: Callable


def audit(**fields):
    """One key=value line per request on stderr (the journal under systemd).
    Values are JSON-quoted where needed so that a path cannot forge a line."""
    parts = []
    for k, v in fields.items():
        s = v if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)
        if isinstance(s, str) and (not s or any(c in s for c in ' "=\\') or not s.isprintable()):
            s = json.dumps(s, ensure_ascii=False)
        parts.append(f"{k}={s}")
    print("audit " + " ".join(parts), file=sys.stderr, flush=True)


class CleanupService:
    def __init__(self, bus, settings=Settings(), config=None):
        self.bus = bus
        self.settings = settings
        self.engine = Engine(walk_threads=settings.walk_threads, fs=fsops.choose(settings.openat2))
        self.jobs = Jobs(max_running=settings.workers, per_uid=settings.per_uid,
                         long_after=settings.long_job_after)
        self.authority = Authority(bus, max_in_flight=settings.polkit_checks_in_flight)
        # A Config, or the ConfigError that made the configuration unusable:
        # then every call fails closed, naming the problem.
        self.config = config
        self.in_flight = 0
        self.unsent = 0  # replies the bus connection could not take
        self.last_done = time.monotonic()
        self._tasks = set()
        self._creds = collections.OrderedDict()  # unique name -> (uid, pid), LRU
        self._idle = asyncio.Event()
        self._idle.set()

    def install(self):
        self.bus.serve(self.dispatch)

    # -- dispatch ---------------------------------------------------------
    def dispatch(self, call):
        """Take a call to our object; False for a member we do not have."""
        method = METHODS.get(call.member)
        if method is None:
            return False
        if call.signature != method.spec.in_signature:
            self._spawn(self.bus.reply_error(
                call, messages.INVALID_ARGS,
                f"{method.spec.name} takes signature '{method.spec.in_signature}', got '{call.signature}'"))
            return True
        self.in_flight += 1
        self._idle.clear()
        self._spawn(self._serve(method, call))
        return True

    def _spawn(self, coro):
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, method, call):
        start = time.monotonic()
        path = call.body[0]
        uid = pid = "-"
        result, removed = "ok", 0
        try:
            try:
                uid, pid = await self._credentials(call.sender)
                caller = Caller(call.sender, uid, pid)
                await self.authority.authorize(call.sender, uid, method.spec.action, call.allow_interactive,
                                               self.settings.polkit_timeout_for(call.allow_interactive))
                removed, body = await method.run(self, caller, call, start)
                reply = (self.bus.reply, (call, method.spec.out_signature, body))
            except MechanismError as e:
                result, removed = e.dbus_name, e.removed
                reply = (self.bus.reply_error, (call, e.dbus_name, e.message))
            except Exception:
                log.exception("internal error while serving %s", call.sender)
                result = i.ERROR_FAILED
                reply = (self.bus.reply_error, (call, i.ERROR_FAILED, "internal error in locald-admin; see its log"))
            audit(sender=call.sender, uid=uid, pid=pid, path=path, result=result, removed=removed,
                  duration_ms=round((time.monotonic() - start) * 1000, 3))
            send, args = reply
            try:
                await send(*args)
            except BusError as e:  # the connection is gone; main() notices
                self.unsent += 1
                if self.bus.connected:
                    log.warning("could not send the reply to %s: %s", call.sender, e)
        finally:
            self.in_flight -= 1
            self.last_done = time.monotonic()
            if self.in_flight == 0:
                self._idle.set()

    # -- the methods ----------------------------------------------------------
    async def _cleanup(self, caller, call, start):
        config = self.config
        if isinstance(config, ConfigError):
            raise Failed(f"locald-admin is not configured correctly: {config}")
        path = call.body[0]
        progress = Progress()
        reporter = asyncio.get_running_loop().create_task(
            self._report_progress(caller.name, path, progress, start))
        try:
            return await self.jobs.submit(caller.uid, self.engine.cleanup, path, caller.uid, config, progress), ()
        finally:
            reporter.cancel()

    async def _report_progress(self, sender, path, progress, start):
        """Every progress_interval, tell the caller (only the caller: paths
        are private, so the signal is unicast, never broadcast) how far the
        deletion got."""
        while True:
            await asyncio.sleep(self.settings.progress_interval)
            self.bus.post(messages.progress(sender, path, progress.removed, time.monotonic() - start))

    async def _credentials(self, sender):
        """uid and pid of ``sender``, from the bus daemon itself.

        Cached per unique name: the daemon never reuses a unique name and
        vouches for the sender of every message, so a cached answer for
        ``:1.42`` stays true for as long as this connection lives (only
        polkit's answers must never be cached, and are not)."""
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
