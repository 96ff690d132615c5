"""Ask the mechanism to clean up, and locald's "try, catch, delegate" helper.

``force_remove_dir_all(path)`` removes ``path`` as the calling user; when
that fails with PermissionError (root-owned leftovers of runc), it asks
``org.locald.Admin1.Cleanup`` on the system bus to remove it instead.
"""

import asyncio
import os
import shutil
import stat
import sys

from dbus_next import Message, MessageFlag, MessageType

from .. import interface as i
from .. import pathrules
from ..busio import connect_system_bus
from .errors import (CleanupError, CleanupFailedError, InvalidPathError, MechanismUnavailable,
                     from_dbus)

HINT = ("locald-admin could not be asked to remove it ({why}); "
        "install locald-admin (see its README) or remove the directory as root")


def absolute_path(path):
    """``path`` made absolute against the working directory, not normalised.

    Refuses (InvalidPathError) what the mechanism would refuse lexically,
    '..' above all, before anything is touched.
    """
    path = os.fspath(path)
    if isinstance(path, bytes):
        try:
            path = path.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidPathError("path is not valid UTF-8; D-Bus cannot carry it") from None
    if not os.path.isabs(path):
        path = os.path.join(os.getcwd(), path)
    try:
        pathrules.split_components(path)
        path.encode("utf-8")
    except pathrules.PathRuleError as e:
        raise InvalidPathError(str(e)) from None
    except UnicodeEncodeError:
        raise InvalidPathError("path is not valid UTF-8; D-Bus cannot carry it") from None
    return path


async def request_cleanup(path, *, interactive=False, timeout=i.DEFAULT_CALL_TIMEOUT, bus=None):
    """Call ``Cleanup(path)``; return None on success.

    Raises a CleanupError subclass for the mechanism's errors, or
    MechanismUnavailable when there is no mechanism to ask.  ``bus``: an
    existing dbus-next connection to reuse (default: a new one, closed after).
    """
    own_bus = bus is None
    if own_bus:
        try:
            bus = await connect_system_bus()
        except Exception as e:
            raise MechanismUnavailable(f"cannot connect to the system bus: {e}") from None
    try:
        call = Message(
            destination=i.BUS_NAME, path=i.OBJECT_PATH, interface=i.INTERFACE,
            member=i.METHOD_CLEANUP, signature=i.CLEANUP_SIGNATURE, body=[path],
            flags=MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION if interactive else MessageFlag.NONE)
        try:
            reply = await asyncio.wait_for(bus.call(call), timeout)
        except asyncio.TimeoutError:
            raise CleanupFailedError(f"no answer from {i.BUS_NAME} within {timeout:g} s") from None
        except CleanupError:
            raise
        except Exception as e:  # connection lost mid-call
            raise MechanismUnavailable(f"the bus connection failed: {e}") from None
        if reply.message_type == MessageType.ERROR:
            text = reply.body[0] if reply.body and isinstance(reply.body[0], str) else ""
            raise from_dbus(reply.error_name, text)
    finally:
        if own_bus:
            bus.disconnect()


def _remove_as_user(path):
    """Remove ``path`` with the caller's own rights; a missing path is fine."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return

    def ignore_missing(_func, _path, exc):
        exc = exc if isinstance(exc, BaseException) else exc[1]
        if not isinstance(exc, FileNotFoundError):
            raise exc

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=ignore_missing)
    else:
        shutil.rmtree(path, onerror=ignore_missing)


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


def force_remove_dir_all(path, *, interactive=False, timeout=i.DEFAULT_CALL_TIMEOUT):
    """Remove ``path`` (a directory tree or a single entry), delegating to
    the mechanism on PermissionError.  Synchronous: do not call it from a
    running event loop; use ``force_remove_dir_all_async`` there."""
    path = absolute_path(path)
    try:
        _remove_as_user(path)
    except PermissionError as original:
        try:
            asyncio.run(request_cleanup(path, interactive=interactive, timeout=timeout))
        except (CleanupError, MechanismUnavailable) as exc:
            _raise_delegated(exc, original)


async def force_remove_dir_all_async(path, *, interactive=False, timeout=i.DEFAULT_CALL_TIMEOUT, bus=None):
    """The asyncio twin of ``force_remove_dir_all`` (the user's own removal
    runs in a thread, so the loop keeps serving)."""
    path = absolute_path(path)
    try:
        await asyncio.get_running_loop().run_in_executor(None, _remove_as_user, path)
    except PermissionError as original:
        try:
            await request_cleanup(path, interactive=interactive, timeout=timeout, bus=bus)
        except (CleanupError, MechanismUnavailable) as exc:
            _raise_delegated(exc, original)
