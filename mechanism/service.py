"""D-Bus glue: receive Cleanup calls, authorize, delete off the loop, reply.

dbus-next's ``@method`` handlers do not see the message, so they cannot know
the sender.  ``Cleanup`` is therefore answered by a message handler that runs
before dbus-next's own dispatch; the exported interface exists only so that
introspection shows ``Cleanup(s path)``.

Per call: sender (from the message header) -> uid and pid (from the bus
daemon, never from arguments) -> polkit -> engine in a worker thread ->
reply -> one audit line.  Every exception becomes a named D-Bus error with a
one-line message: dbus-next would otherwise send the caller a traceback.
"""

import asyncio
import collections
import json
import logging
import sys
import time

from dbus_next import Message, MessageFlag, MessageType
from dbus_next.service import ServiceInterface, method, signal

from .. import interface as i
from . import polkit
from .config import Config, ConfigError
from .errors import Failed, MechanismError, NotAuthorized
from .jobs import Jobs, Progress

log = logging.getLogger(__name__)

INVALID_ARGS = "org.freedesktop.DBus.Error.InvalidArgs"
CREDENTIALS_CACHE_SIZE = 4096


class Admin1Introspection(ServiceInterface):
    """Describes org.locald.Admin1 for introspection; calls never get here."""

    def __init__(self):
        super().__init__(i.INTERFACE)

    @method()
    def Cleanup(self, path: "s"):  # noqa: N802 (D-Bus member name)
        raise NotImplementedError("answered by CleanupService.on_message")

    @signal()
    def Progress(self) -> "std":  # noqa: N802
        """(path, entries removed, seconds elapsed), sent only to the caller."""
        raise NotImplementedError("sent by CleanupService._report_progress")


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
    def __init__(self, bus, *, workers=4, per_uid=2, polkit_timeout=15.0, polkit_interactive_timeout=300.0,
                 config=Config(), progress_interval=1.0):
        self.bus = bus
        self.jobs = Jobs(max_running=workers, per_uid=per_uid)
        self.progress_interval = progress_interval
        self.polkit_timeout = polkit_timeout
        self.polkit_interactive_timeout = polkit_interactive_timeout
        # A Config, or the ConfigError that made the configuration unusable:
        # then every call fails closed, naming the problem.
        self.config = config
        self.in_flight = 0
        self.last_done = time.monotonic()
        self._tasks = set()
        self._creds = collections.OrderedDict()  # unique name -> (uid, pid), LRU
        self._idle = asyncio.Event()
        self._idle.set()

    def install(self):
        self.bus.export(i.OBJECT_PATH, Admin1Introspection())
        self.bus.add_message_handler(self.on_message)

    # -- dispatch ---------------------------------------------------------
    def on_message(self, msg):
        if (msg.message_type != MessageType.METHOD_CALL or msg.path != i.OBJECT_PATH
                or msg.member != i.METHOD_CLEANUP or msg.interface not in (None, i.INTERFACE)):
            return False
        if msg.signature != i.CLEANUP_SIGNATURE:
            self._reply(msg, Message.new_error(
                msg, INVALID_ARGS, f"Cleanup takes one string (signature 's'), got '{msg.signature}'"))
            return True
        self.in_flight += 1
        self._idle.clear()
        task = asyncio.get_running_loop().create_task(self._serve(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    def _reply(self, msg, reply):
        if msg.flags & MessageFlag.NO_REPLY_EXPECTED:
            return None
        return self.bus.send(reply)

    async def _serve(self, msg):
        start = time.monotonic()
        path = msg.body[0]
        uid = pid = "-"
        result, removed = "ok", 0
        try:
            try:
                uid, pid = await self._credentials(msg.sender)
                interactive = bool(msg.flags & MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION)
                await polkit.authorize(
                    self.bus, msg.sender, uid, interactive,
                    self.polkit_interactive_timeout if interactive else self.polkit_timeout)
                config = self.config
                if isinstance(config, ConfigError):
                    raise Failed(f"locald-admin is not configured correctly: {config}")
                progress = Progress()
                reporter = asyncio.get_running_loop().create_task(
                    self._report_progress(msg.sender, path, progress, start))
                try:
                    removed = await self.jobs.cleanup(uid, path, config, progress)
                finally:
                    reporter.cancel()
                reply = Message.new_method_return(msg)
            except MechanismError as e:
                result, removed = e.dbus_name, e.removed
                reply = Message.new_error(msg, e.dbus_name, e.message)
            except Exception:
                log.exception("internal error while serving %s", msg.sender)
                result = i.ERROR_FAILED
                reply = Message.new_error(msg, i.ERROR_FAILED, "internal error in locald-admin; see its log")
            audit(sender=msg.sender, uid=uid, pid=pid, path=path, result=result, removed=removed,
                  duration_ms=round((time.monotonic() - start) * 1000, 3))
            sent = self._reply(msg, reply)
            if sent is not None:
                try:
                    await sent
                except Exception as e:  # the connection is gone; main() notices
                    log.warning("could not send the reply to %s: %s", msg.sender, e)
        finally:
            self.in_flight -= 1
            self.last_done = time.monotonic()
            if self.in_flight == 0:
                self._idle.set()

    async def _report_progress(self, sender, path, progress, start):
        """Every progress_interval, tell the caller (only the caller: paths
        are private, so the signal is unicast, never broadcast) how far the
        deletion got."""
        while True:
            await asyncio.sleep(self.progress_interval)
            try:
                self.bus.send(Message(
                    message_type=MessageType.SIGNAL, destination=sender, path=i.OBJECT_PATH,
                    interface=i.INTERFACE, member=i.SIGNAL_PROGRESS, signature="std",
                    body=[path, progress.removed, time.monotonic() - start]))
            except Exception as e:
                log.debug("progress signal to %s failed: %s", sender, e)

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
        reply = await self.bus.call(Message(
            destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus", member="GetConnectionCredentials",
            signature="s", body=[sender]))
        if reply.message_type == MessageType.ERROR:
            raise NotAuthorized(f"cannot identify the caller {sender}: {reply.error_name}")
        creds = reply.body[0]
        if "UnixUserID" not in creds:
            raise NotAuthorized(f"the bus does not know the uid of {sender}")
        pid = creds["ProcessID"].value if "ProcessID" in creds else "-"
        self._creds[sender] = (creds["UnixUserID"].value, pid)
        if len(self._creds) > CREDENTIALS_CACHE_SIZE:
            self._creds.popitem(last=False)
        return creds["UnixUserID"].value, pid

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
