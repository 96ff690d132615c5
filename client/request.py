"""One Cleanup request, whichever connection makes it: the decisions the
asyncio client (``cleanup.AdminClient``) and the blocking one
(``blocking.cleanup``) share, with no I/O and no asyncio, cheap to import
for ``locald-shim``.

* ``absolute_path``: the path made absolute and held to the lexical rules,
  before anything is touched;
* ``Busy``: the retry of a ``Busy`` answer, with a pause that doubles from
  ``BUSY_BACKOFF_FIRST`` to ``BUSY_BACKOFF_MAX`` (jittered), within the
  call's own timeout;
* what an answer, a timeout or a lost connection means to the caller
  (``conclude``, ``owner``, ``timed_out``, ``unreachable``, ``lost``).
"""

import os

from locald_admin import interface as i
from locald_admin import pathrules
from .errors import NO_SERVICE_ERRORS, CleanupFailedError, InvalidPathError, MechanismUnavailable, from_dbus

# Busy (the mechanism holds as many of this user's requests as it takes):
# retried after a pause that doubles from the first to the last, within the
# call's own timeout.
BUSY_BACKOFF_FIRST = 0.05
BUSY_BACKOFF_MAX = 2.0


def absolute_path(path) -> str:
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


class Busy:
    """The attempts of one call within ``timeout`` seconds of ``clock``
    (the caller's: the event loop's time, or ``time.monotonic``)."""

    def __init__(self, timeout, clock):
        self._clock = clock
        self.deadline = clock() + timeout
        self._attempt = 0

    def remaining(self):
        """Seconds left for the next attempt."""
        return self.deadline - self._clock()

    def pause(self, reply):
        """None when ``reply`` is the call's answer; else the seconds to
        wait before asking again.  The mechanism had as many of this user's
        requests queued as it takes: come back later, sooner at first, never
        past the deadline (then Busy is the answer)."""
        if reply.error_name != i.ERROR_BUSY:
            return None
        import random  # only when the mechanism is busy: not on the shim's common path

        pause = min(BUSY_BACKOFF_MAX, BUSY_BACKOFF_FIRST * 2 ** self._attempt) * random.uniform(0.5, 1.0)
        self._attempt += 1
        if self._clock() + pause >= self.deadline:
            return None
        return pause


def owner(reply):
    """The unique name that answered for the service, when ``reply`` came
    from it (e.g. after an activation or a restart), else None."""
    return reply.sender if reply.sender and reply.error_name not in NO_SERVICE_ERRORS else None


def conclude(reply):
    """Return None when ``reply`` is success; raise what it means otherwise
    (``errors.from_dbus``, the one error table)."""
    if reply.error_name is not None:
        raise from_dbus(reply.error_name, reply.text)


def timed_out(timeout):
    return CleanupFailedError(f"no answer from {i.BUS_NAME} within {timeout:g} s")


def unreachable(e):
    """No connection to the bus (``e``: the BusError)."""
    return MechanismUnavailable(f"cannot connect to the system bus: {e}")


def lost(e):
    """The connection failed mid-call (``e``: the BusError)."""
    return MechanismUnavailable(f"the bus connection failed: {e}")
