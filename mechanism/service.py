"""The service: receive method calls, authorize, run them off the loop, reply.

The interface's members are declared once, in ``locald_admin.interface``
(names, typed arguments, polkit action); ``METHODS`` below binds each to its
handler, and that one table drives dispatch here (introspection reads the
interface's own tables).

A call's way through, one job per function:

* ``dispatch``: the method by name, its signature checked and its arguments
  unpacked by its spec (``MethodSpec.unpack``); the call counted in flight
  (``callers.Callers``) and served in a task of its own;
* ``_serve``: the handler, then one audit record (``_record``) and the
  reply (``_answer``); every exception becomes a named D-Bus error with a
  one-line message (``_outcome``), never a traceback;
* the handler, as hostnamed's are: its arguments read (handed to it) ->
  validated (Cleanup: the path's size, on arrival: nothing is asked of
  anyone for an oversized one; CleanupWithOptions: its options too, by the
  interface's table, ``_options``) -> authorized (``_identify``: uid and pid
  from the bus daemon, never from arguments -> the uid's queue bound (Busy);
  ``_authorize``: polkit for the method's action, Cleanup's census of /proc
  started meanwhile for a uid whose last request polkit said yes to and
  needed one, ``scans.Ahead``) -> acted on
  (Cleanup: ``_remove`` queues the work, ``jobs``, for the engine in a
  worker thread: resolve the scope, check it is not in use, remove) -> its
  reply body.

A caller that leaves the bus (the daemon's NameOwnerChanged) has its polkit
checks and queued requests cancelled and its walks stopped; the record then
says ``result=cancelled``.
"""

import asyncio
import collections
import logging
import os
import time
from dataclasses import dataclass
from typing import Callable, Optional

from locald_admin import interface as i
from locald_admin import messages, pathrules
from locald_admin.busio import BusError
from locald_admin.fs import fsops
from .config import ConfigError
from . import memory
from .audit import RESULT_CANCELLED, RESULT_OK, Recorder
from .callers import Callers
from .engine import Cancelled, Engine, Progress
from .errors import Failed, InvalidArgs, InvalidPath, MechanismError, NotAuthorized
from .jobs import Jobs
from .polkit import Authority
from .scans import Ahead
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
    """A member of the interface and its handler, a coroutine method of
    CleanupService: ``handler(service, request, *arguments)``, the
    arguments unpacked by ``spec``, returns (reply body, entries removed)
    and puts what else the audit record says in ``request.fields`` and
    ``request.notes``.  ``too_big(service, request, size)`` refuses, in the
    method's own words, a call whose body busio did not read (over
    ``wire.MAX_INCOMING``): it has no arguments to hand over."""

    spec: i.MethodSpec
    handler: Callable
    too_big: Callable


@dataclass(frozen=True)
class Ending:
    """How a call ended: its result for the record, the entries removed,
    and its reply (``(send, args)``; None: nobody is left to answer)."""

    result: str
    removed: int
    reply: Optional[tuple]
    reason: Optional[str] = None  # an error's message, for the audit record


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
        self.unsent = 0  # replies the bus connection could not take
        self._tasks = set()
        self._creds = collections.OrderedDict()  # unique name -> (uid, pid), LRU
        # Whose census starts while polkit is asked (cleanup): never an
        # answer for a call, polkit is asked every time.
        self._ahead = Ahead()
        # The calls in flight by caller; once none is, the memory of a big
        # walk or a flood goes back to the system after a quiet moment.
        self._trim = memory.IdleTrim(busy=lambda: self.callers.in_flight > 0)
        self.callers = Callers(settings.max_queued_per_uid, on_idle=self._trim.idle)

    async def start(self):
        """Serve the object, and learn from the bus daemon when a caller
        leaves (their checks and walks are then cancelled)."""
        self.bus.on_signal(self._on_signal)
        reply = await self.bus.call(messages.add_match(messages.NAME_LOST_RULE))
        if reply.error_name is not None:
            raise BusError(f"cannot watch callers leaving the bus: {reply.error_name}")
        self.bus.serve(self.dispatch)

    # -- a call's way through ---------------------------------------------
    def dispatch(self, call):
        """Take a call to our object; False for a member we do not have."""
        method = METHODS.get(call.member)
        if method is None:
            return False
        if call.oversized:  # its body was dropped unread (V11): nothing to unpack
            handle = (method.too_big, call.oversized)
        else:
            try:
                if call.signature != method.spec.in_signature:
                    raise ValueError(f"{method.spec.name} takes signature '{method.spec.in_signature}', "
                                     f"got '{call.signature}'")
                handle = (method.handler, *method.spec.unpack(call.body))
            except ValueError as e:
                self._spawn(self.bus.reply_error(call, messages.INVALID_ARGS, str(e)))
                return True
        request = self.callers.begin(call)
        request.task = self._spawn(self._serve(request, method.spec, *handle))
        # Its bookkeeping ends with its task, even one cancelled (its caller
        # gone) before it ever ran.
        request.task.add_done_callback(lambda _: self.callers.end(request))
        return True

    def _spawn(self, coro):
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _serve(self, request, spec, handler, *args):
        """The handler, then the call's audit record and its answer."""
        outcome = await self._outcome(request, spec, handler(self, request, *args))
        self._record(request, outcome)
        await self._answer(request, outcome)

    async def _outcome(self, request, spec, handling):
        """How ``handling`` (the handler's coroutine) ends, as an Ending:
        every exception a named error with a one-line message (V7)."""
        call = request.call
        try:
            body, removed = await handling
            return Ending(RESULT_OK, removed, (self.bus.reply, (call, spec.out_signature, body)))
        except MechanismError as e:
            return Ending(e.dbus_name, e.removed, (self.bus.reply_error, (call, e.dbus_name, e.message)), e.message)
        except Cancelled as e:  # the caller left while its walk ran: nobody to answer
            return Ending(RESULT_CANCELLED, e.removed, None)
        except asyncio.CancelledError:  # it left while waiting for polkit or for a worker
            return Ending(RESULT_CANCELLED, 0, None)
        except Exception:
            log.exception("internal error while serving %s", call.sender)
            return Ending(i.ERROR_FAILED, 0, (self.bus.reply_error, (call, i.ERROR_FAILED,
                                                                      "internal error in locald-admin; see its log")))

    def _record(self, request, outcome):
        """One audit record per call, however it ended."""
        reason = {} if outcome.reason is None else {"reason": outcome.reason}
        self.recorder.record(sender=request.sender, uid=request.uid, pid=request.pid, **request.fields,
                             result=outcome.result, removed=outcome.removed,
                             duration_ms=round((time.monotonic() - request.start) * 1000, 3), **request.notes,
                             **reason)

    async def _answer(self, request, outcome):
        """Send the reply, if anyone is left to take it."""
        if outcome.reply is None:
            return
        send, args = outcome.reply
        try:
            await send(*args)
        except BusError as e:  # the connection is gone; main() notices
            self.unsent += 1
            if self.bus.connected:
                log.warning("could not send the reply to %s: %s", request.sender, e)

    async def _identify(self, request):
        """Who the caller is, from the bus daemon (A1: never from the
        arguments), and a place in its uid's queue (V12: Busy past the
        bound, before polkit is asked)."""
        request.uid, request.pid = await self._credentials(request.sender)
        self.callers.queue(request)

    async def _authorize(self, request, action, interactive=None):
        """The Caller (identified), once polkit said yes to ``action`` (A3,
        A5: asked before anything touches the file system, and anything but
        a clear yes is NotAuthorized).  ``interactive``: whether polkit may
        ask for a password (None: the message's flag says)."""
        call = request.call
        allow = call.allow_interactive if interactive is None else interactive
        await self.authority.authorize(request.sender, request.uid, action, allow,
                                       self.settings.polkit_timeout_for(allow), gone=request.cancelled)
        if request.cancelled.is_set():
            raise asyncio.CancelledError()  # it left as polkit said yes
        return Caller(request.sender, request.uid, request.pid)

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
        for request in self.callers.of(name):
            request.cancelled.set()
            if not request.running:
                request.task.cancel()

    # -- the methods: read -> validate -> authorize -> act -> reply ------------
    async def cleanup(self, request, path):
        """Cleanup(s path) -> ()."""
        outcome = await self._cleanup(request, path)
        return (), outcome.removed

    async def cleanup_with_options(self, request, path, options):
        """CleanupWithOptions(s path, a{sv} options) -> (a{sv} result)."""
        interactive, dry_run = _options(options)  # before anything is asked of anyone, as the path's size
        if dry_run:
            request.notes["dry_run"] = "yes"  # the audit record says what it was
        outcome = await self._cleanup(request, path, interactive, dry_run)
        would, refused = None, ()
        if dry_run:
            plan = outcome.plan
            would = plan.would_remove if plan is not None else 0
            refused = _refused(path, plan)
            request.notes["would_remove"] = would
        duration = int((time.monotonic() - request.start) * 1e6)
        return (messages.cleanup_result(outcome.removed, outcome.existed, duration, would, refused),), outcome.removed

    async def _cleanup(self, request, path, interactive=None, dry_run=False):
        """Either method's sequence; the engine's Outcome.  ``interactive``:
        None, the message's flag decides; ``dry_run``: a count, nothing
        removed."""
        # Validate, on arrival, before anything is asked of anyone (V11): a
        # path over the contract's size says nothing about the file system,
        # and a big one costs memory everywhere it goes (polkit, Progress,
        # the log); the record carries its size, not the path.
        size = len(path.encode("utf-8", "surrogatepass"))
        if size > i.MAX_PATH_BYTES:
            request.fields["path"] = ""
            request.notes["path_bytes"] = size
            raise InvalidPath(f"the path is {size} bytes long; at most {i.MAX_PATH_BYTES} are accepted")
        request.fields["path"] = path
        await self._identify(request)
        # The in-use check's census is one that starts after this (scans.py).
        # For a uid whose last request polkit said yes to and needed one, a
        # scan starts as polkit is asked, ready with the answer; never for a
        # uid polkit has not said yes to (V19: refused calls cost no scan).
        ticket = self.engine.scans.ticket(request.uid)
        try:
            if self._ahead.wanted(request.uid):
                self.engine.scans.ahead(self.jobs.spawn)
            try:
                caller = await self._authorize(request, i.CLEANUP.action, interactive)
            except MechanismError:
                self._ahead.refused(request.uid)
                raise
            try:
                outcome = await self._remove(caller, path, request, ticket, dry_run)
            finally:
                self._ahead.served(request.uid, ticket.used)
        finally:
            ticket.close()
        request.notes.update(outcome.notes)
        return outcome

    async def cleanup_too_big(self, request, size):
        """A Cleanup call of ``size`` bytes, over what busio reads of a
        message (V11): its path was dropped unread, and it is refused before
        anything is asked of anyone."""
        request.fields["path"] = ""
        request.notes["message_bytes"] = size
        raise InvalidPath(f"the call is {size} bytes long; a path is at most {i.MAX_PATH_BYTES} bytes")

    async def _remove(self, caller, path, request, ticket, dry_run=False):
        """Cleanup's act: ``path`` removed for ``caller`` by the engine, in a
        worker thread of ``jobs`` (the scope resolved, the in-use check made
        on the census of ``ticket``, shared with the requests waiting for
        one, the walk), with Progress meanwhile; the engine's Outcome.  A
        dry run is a job as any other (it counts against the same limits),
        with no Progress: it removes nothing."""
        config = self.config
        if isinstance(config, ConfigError):  # S10: a broken configuration fails every call closed
            raise Failed(f"locald-admin is not configured correctly: {config}")
        progress = Progress(request.cancelled, ticket.census)
        reports = None if dry_run else self._report_progress(caller.name, path, progress, request.start)

        def started():
            request.running = True

        try:
            return await self.jobs.submit(caller.uid, self.engine.cleanup, path, caller.uid, config, progress,
                                          dry_run, on_start=started)
        finally:
            if reports is not None:
                reports.cancel()

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
            await self.callers.idle.wait()
            remaining = self.callers.last_done + idle_timeout - time.monotonic()
            if remaining <= 0 and self.callers.in_flight == 0:
                return
            await asyncio.sleep(max(remaining, 0.05))

    async def drain(self):
        """Wait until every call already received has been answered."""
        await self.callers.idle.wait()


# The interface's methods, each bound to its handler.
# An option's name in an error message: at most this many characters of it,
# and at most MAX_NAMED_OPTIONS of them (a caller may send thousands).
MAX_OPTION_NAME_SHOWN = 64
MAX_NAMED_OPTIONS = 5


def _options(options):
    """(interactive, dry_run) from CleanupWithOptions' ``options``, or
    InvalidArgs naming every key the table (``interface.CLEANUP_OPTIONS``)
    does not have or whose value is of another type: an option this
    mechanism would pass over could change what the caller meant (a dry
    run done for real)."""
    known, unknown, mistyped = messages.read_cleanup_options(options)
    if unknown or mistyped:
        def named(keys):
            shown = [repr(k if len(k) <= MAX_OPTION_NAME_SHOWN else k[:MAX_OPTION_NAME_SHOWN] + "...")
                     for k in sorted(keys)[:MAX_NAMED_OPTIONS]]
            more = len(keys) - len(shown)
            return ", ".join(shown) + (f" and {more} more" if more else "")

        parts = ([f"unknown option {named(unknown)}"] if unknown else []) + \
                ([f"option of the wrong type {named(mistyped)}"] if mistyped else [])
        raise InvalidArgs(f"CleanupWithOptions: {'; '.join(parts)}; it takes "
                          + ", ".join(f"{k} ({t})" for k, (t, _) in i.CLEANUP_OPTIONS.items()))
    return known.get(i.OPTION_INTERACTIVE), known.get(i.OPTION_DRY_RUN, False)


def _refused(path, plan):
    """A dry run's ``refused``: (path, reason) of the first MAX_REFUSED
    entries a real call would leave in place (mounts first), each path the
    request's own path joined with the entry's below it."""
    if plan is None:
        return []
    base = path.rstrip("/") or "/"

    def full(rel):
        if not rel:
            return base
        return f"{base}/{pathrules.display(rel)}" if base != "/" else f"/{pathrules.display(rel)}"

    out = [(full(rel), "a mount point; left in place") for rel in plan.mounts]
    for rel, (err, reason) in plan.failures.items():
        out.append((full(rel), reason or (os.strerror(err) if err else "left in place")))
    return out[:i.MAX_REFUSED]


METHODS = {m.spec.name: m for m in (
    Method(i.CLEANUP, CleanupService.cleanup, CleanupService.cleanup_too_big),
    Method(i.CLEANUP_WITH_OPTIONS, CleanupService.cleanup_with_options, CleanupService.cleanup_too_big),
)}
