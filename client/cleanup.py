"""Ask the mechanism to clean up, and locald's "try, catch, delegate" helper.

``force_remove_dir_all(path)`` removes ``path`` as the calling user with the
fd-anchored walk (``as_user``: no symlink followed, no mount entered, mounts
refused before anything is deleted); when that fails with PermissionError
(root-owned leftovers of runc), and only then, it asks
``org.locald.Admin1.Cleanup`` on the system bus to remove it instead.
"""

import asyncio
import os
import weakref
from typing import Callable, Optional, Union

PathLike = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]
# on_progress(entries removed so far, seconds since the call started)
ProgressCallback = Callable[[int, float], None]

from locald_admin import interface as i
from locald_admin import messages
from locald_admin.busio import BusError, Connection
from . import as_user, blocking, request
from .errors import CleanupError, MechanismUnavailable
from .request import BUSY_BACKOFF_FIRST, BUSY_BACKOFF_MAX  # noqa: F401 (the client's figures, named here too)

HINT = ("locald-admin could not be asked to remove it ({why}); "
        "install locald-admin (see its README) or remove the directory as root")


def absolute_path(path: PathLike) -> str:
    """``path`` made absolute against the working directory, not normalised.

    Refuses (InvalidPathError) what the mechanism would refuse lexically,
    '..' above all, before anything is touched.
    """
    return request.absolute_path(path)


class AdminClient:
    """One system-bus connection shared by many Cleanup calls.

    At most ``max_in_flight`` calls are pending on the connection at once
    (the system bus allows 128 pending replies per connection, and a full
    socket buffer only makes the writer wait: ``busio.Connection``), the others
    wait their turn.  A call that times out leaves nothing behind: its reply handler is
    dropped.  The connection is made on first use and again if it was lost.
    """

    def __init__(self, address: Optional[str] = None, max_in_flight: int = i.CLIENT_MAX_IN_FLIGHT) -> None:
        self.address = address
        self._slots = asyncio.Semaphore(max_in_flight)
        self._bus = None
        self._connecting = None
        self._progress = {}  # path -> set of callbacks
        self._owner = None  # unique name of org.locald.Admin1's owner

    async def connect(self) -> "AdminClient":
        """Connect now (calls connect on first use anyway); returns self."""
        await self._connection()
        return self

    @property
    def unique_name(self) -> Optional[str]:
        return self._bus.unique_name if self._bus is not None else None

    async def _connection(self):
        if self._bus is not None and self._bus.connected:
            return self._bus
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        try:
            return await asyncio.shield(self._connecting)
        finally:
            if self._connecting is not None and self._connecting.done():
                self._connecting = None

    async def _connect(self):
        try:
            bus = await Connection.open(self.address)
        except BusError as e:
            raise request.unreachable(e) from None
        bus.on_signal(self._on_signal)
        self._bus = bus
        self._owner = None
        try:  # Progress is believed only from the service's own connection
            self._owner = messages.read_name_owner(await bus.call(messages.get_name_owner(i.BUS_NAME)))
        except Exception:
            pass  # not running yet (activated by the first call)
        return bus

    def _on_signal(self, signal):
        # Anyone on the bus may send us a signal: only the owner of the
        # service's name is believed (learned at connect and from replies).
        progress = messages.read_progress(signal, self._owner)
        if progress is None:
            return
        path, removed, elapsed = progress
        for callback in list(self._progress.get(path, ())):
            try:
                callback(removed, elapsed)
            except Exception:
                pass

    async def cleanup(self, path: str, *, interactive: bool = False, timeout: float = i.DEFAULT_CALL_TIMEOUT,
                      on_progress: Optional[ProgressCallback] = None) -> None:
        """Call ``Cleanup(path)``; return None on success.

        Raises a CleanupError subclass for the mechanism's errors, or
        MechanismUnavailable when there is no mechanism to ask.
        ``on_progress(removed, elapsed)`` is called for Progress signals.
        ``Busy`` is retried with backoff until ``timeout``; BusyError only
        when the mechanism stays busy that long.
        """
        reply = await self._call(lambda: messages.cleanup(path, interactive), path, timeout, on_progress)
        request.conclude(reply)

    async def cleanup_with_options(self, path: str, *, dry_run: bool = False, interactive: bool = False,
                                   timeout: float = i.DEFAULT_CALL_TIMEOUT,
                                   on_progress: Optional[ProgressCallback] = None) -> "request.CleanupResult":
        """Call ``CleanupWithOptions(path, options)``; return what it did
        (a ``CleanupResult``: entries removed, whether the target existed,
        the call's duration; for a ``dry_run``, what a real call would
        remove and the first entries it would leave in place, nothing
        removed).  ``interactive`` is sent as the option and as the
        message's flag.  A mechanism older than the method (UnknownMethod):
        a plain call is made with ``Cleanup`` (its result says nothing but
        success: ``request.UNKNOWN_RESULT``), a dry run raises
        UnsupportedError.  Errors as ``cleanup``'s."""
        reply = await self._call(
            lambda: messages.cleanup_with_options(path, interactive, dry_run, allow_interactive=interactive),
            path, timeout, on_progress)
        if request.older(reply):
            if dry_run:
                raise request.unsupported()
            await self.cleanup(path, interactive=interactive, timeout=timeout, on_progress=on_progress)
            return request.UNKNOWN_RESULT
        return request.result(reply, dry_run)

    async def _call(self, make, path, timeout, on_progress):
        """The reply to ``make()`` (a message), asked again after Busy's
        pauses within ``timeout``."""
        busy = request.Busy(timeout, asyncio.get_running_loop().time)
        while True:
            reply = await self._call_once(make(), path, busy.remaining(), timeout, on_progress)
            pause = busy.pause(reply)
            if pause is None:
                break
            await asyncio.sleep(pause)
        self._owner = request.owner(reply) or self._owner
        return reply

    async def _call_once(self, message, path, remaining, timeout, on_progress):
        async with self._slots:
            bus = await self._connection()
            if on_progress is not None:
                self._progress.setdefault(path, set()).add(on_progress)
            try:
                return await bus.call(message, max(remaining, 0.001))
            except asyncio.TimeoutError:
                raise request.timed_out(timeout) from None
            except BusError as e:  # connection lost mid-call
                raise request.lost(e) from None
            finally:
                if on_progress is not None:
                    callbacks = self._progress.get(path, set())
                    callbacks.discard(on_progress)
                    if not callbacks:
                        self._progress.pop(path, None)

    def close(self) -> None:
        if self._bus is not None:
            self._bus.close()
            self._bus = None


async def request_cleanup(path: str, *, interactive: bool = False, timeout: float = i.DEFAULT_CALL_TIMEOUT,
                          bus: Optional[AdminClient] = None, on_progress: Optional[ProgressCallback] = None) -> None:
    """Call ``Cleanup(path)`` once; return None on success.

    Raises a CleanupError subclass for the mechanism's errors, or
    MechanismUnavailable when there is no mechanism to ask.  ``bus``: an
    AdminClient to use (default: a connection of its own, closed after).
    """
    client = bus if bus is not None else AdminClient()
    try:
        await client.cleanup(path, interactive=interactive, timeout=timeout, on_progress=on_progress)
    finally:
        if bus is None:
            client.close()


_shared_clients = weakref.WeakKeyDictionary()  # event loop -> AdminClient


def shared_client() -> AdminClient:
    """The AdminClient shared by every call made in the running event loop."""
    loop = asyncio.get_running_loop()
    client = _shared_clients.get(loop)
    if client is None:
        client = _shared_clients[loop] = AdminClient()
    return client


def _raise_delegated(exc, original):
    """Raise what the caller sees when the mechanism could not do it: the
    contract's exception chained to the original PermissionError, or, with
    no mechanism to ask, the original PermissionError with a hint."""
    if isinstance(exc, MechanismUnavailable):
        hint = HINT.format(why=exc)
        if hasattr(original, "add_note"):
            original.add_note(hint)
        original.locald_admin_hint = hint
        raise original
    raise exc from original


def force_remove_dir_all(path: PathLike, *, interactive: bool = False, timeout: float = i.DEFAULT_CALL_TIMEOUT) -> None:
    """Remove ``path`` (a directory tree or a single entry), delegating to
    the mechanism on PermissionError.  Synchronous: do not call it from a
    running event loop (the call to the mechanism blocks: ``blocking.cleanup``);
    use ``force_remove_dir_all_async`` there."""
    path = absolute_path(path)
    try:
        as_user.remove(path)
    except PermissionError as original:
        try:
            blocking.cleanup(path, interactive=interactive, timeout=timeout)
        except (CleanupError, MechanismUnavailable) as exc:
            _raise_delegated(exc, original)


async def force_remove_dir_all_async(path: PathLike, *, interactive: bool = False,
                                     timeout: float = i.DEFAULT_CALL_TIMEOUT,
                                     bus: Optional[AdminClient] = None) -> None:
    """The asyncio twin of ``force_remove_dir_all`` (the user's own removal
    runs in a thread, so the loop keeps serving).  All calls in one event
    loop share one bus connection with a bound on calls in flight, so
    locald can start it for a thousand paths at once.  ``bus``: an
    AdminClient to use instead."""
    path = absolute_path(path)
    try:
        await asyncio.get_running_loop().run_in_executor(None, as_user.remove, path)
    except PermissionError as original:
        try:
            await (bus or shared_client()).cleanup(path, interactive=interactive, timeout=timeout)
        except (CleanupError, MechanismUnavailable) as exc:
            _raise_delegated(exc, original)
