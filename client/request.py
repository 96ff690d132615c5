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
  (``conclude``, ``owner``, ``timed_out``, ``unreachable``, ``lost``);
* CleanupWithOptions: its typed answer (``CleanupResult``, ``result``), and
  an older mechanism's (``older``: Cleanup instead for a plain call,
  ``unsupported`` for a dry run).
"""

import os

from locald_admin import interface as i
from locald_admin import messages, pathrules
from locald_admin.records import frozen
from .errors import (NO_SERVICE_ERRORS, CleanupFailedError, InvalidPathError, MechanismUnavailable, UnsupportedError,
                     from_dbus)

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


def seconds(timeout):
    """``timeout``, a call's time limit, if it is a positive number of
    seconds; else ValueError.  Not "<= 0" alone: a nan deadline compares
    false with every time (no attempt would ever be past it), and an
    infinite one never ends."""
    if not 0 < timeout < float("inf"):
        raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
    return timeout


class Busy:
    """The attempts of one call within ``timeout`` seconds of ``clock``
    (the caller's: the event loop's time, or ``time.monotonic``)."""

    def __init__(self, timeout, clock):
        self._clock = clock
        self.deadline = clock() + seconds(timeout)
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


@frozen
class CleanupResult:
    """What a CleanupWithOptions call did.  ``removed``, ``existed`` and
    ``duration_usec`` are None when the mechanism is older and answered a
    plain Cleanup instead (it says nothing of them).  A dry run's
    ``would_remove`` and ``refused`` ((path, reason) of the first entries a
    real call would leave in place, at most ``interface.MAX_REFUSED``)."""

    removed: "int | None"
    existed: "bool | None"
    duration_usec: "int | None"
    dry_run: bool = False
    would_remove: "int | None" = None
    refused: tuple = ()

    @property
    def left_behind(self):
        """A dry run: whether a real call would leave something in place."""
        return bool(self.refused)

    def as_dict(self):
        """The result object under the interface's own key names (what
        ``locald-shim admin cleanup --json`` prints); keys of what the
        mechanism did not say are left out."""
        out = {i.RESULT_REMOVED: self.removed, i.RESULT_EXISTED: self.existed,
               i.RESULT_DURATION: self.duration_usec}
        if self.dry_run:
            out[i.RESULT_WOULD_REMOVE] = self.would_remove
            out[i.RESULT_REFUSED] = [list(r) for r in self.refused]
        return {k: v for k, v in out.items() if v is not None}


# What a plain call answered by an older mechanism's Cleanup did, as far as
# anyone can tell: it succeeded.
UNKNOWN_RESULT = CleanupResult(None, None, None)


def older(reply):
    """Whether ``reply`` says the mechanism has no CleanupWithOptions (its
    InterfaceRevision is below ``interface.REVISION_WITH_OPTIONS``)."""
    return reply.error_name == messages.UNKNOWN_METHOD and reply.sender is not None


def unsupported():
    return UnsupportedError("the locald-admin mechanism on this system is older than this client and cannot do "
                            f"a dry run (it needs InterfaceRevision {i.REVISION_WITH_OPTIONS}); "
                            "update locald-admin and restart it")


def result(reply, dry_run):
    """The CleanupResult of a CleanupWithOptions ``reply``; raise what an
    error means (``conclude``)."""
    conclude(reply)
    try:
        values = messages.read_cleanup_result(reply)
    except messages.BadReply as e:
        raise CleanupFailedError(str(e)) from None
    refused = tuple(values.get(i.RESULT_REFUSED, ()))[:i.MAX_REFUSED]
    return CleanupResult(values.get(i.RESULT_REMOVED), values.get(i.RESULT_EXISTED), values.get(i.RESULT_DURATION),
                         dry_run, values.get(i.RESULT_WOULD_REMOVE), refused)
