"""One request, start to end, without a bus: lexical rules, scope
resolution, mount check, deletion.  Pure file-system logic, testable alone;
the service runs ``Engine.cleanup`` inside a scheduled job (a worker thread),
so no path is ever resolved on the event loop (a hung FUSE mount above an
anchor would freeze every caller).
"""

import concurrent.futures
import os
import threading
from dataclasses import dataclass, field

from locald_admin import pathrules
from locald_admin.fs import fsops, report, walk
from locald_admin.fs import remove as fsremove
from . import scans, scope
from .config import Config
from .errors import Failed, InUse, InvalidPath, MountPoint, OutsideScope
from .settings import Settings

DEFAULT_WALK_THREADS = Settings().walk_threads


class Flag:
    """Set once, from the event loop; read by the walk's threads
    (``is_set()``, as a threading.Event, of which nothing else is used:
    nobody waits on it, and an Event costs a Condition and a lock per
    request)."""

    __slots__ = ("_set",)

    def __init__(self):
        self._set = False

    def set(self):
        self._set = True

    def is_set(self):
        return self._set


class Progress:
    """One request as its walk sees it: what it has removed so far (read
    from the loop while the walk runs in its thread), and ``cancelled``, set
    when the caller has left the bus."""

    __slots__ = ("walk", "cancelled", "started", "census")

    def __init__(self, cancelled=None, census=None):
        self.walk = report.WalkResult()
        self.cancelled = Flag() if cancelled is None else cancelled
        self.started = False
        # What gives the in-use check its census of /proc: a
        # scans.Ticket's, taken when the request arrived (None: its own scan).
        self.census = census

    @property
    def removed(self):
        return self.walk.removed_total


class Cancelled(Exception):
    """Every caller of the walk left the bus, so it stopped.  Not an error
    of the contract: nobody is left to answer."""

    def __init__(self, removed=0):
        super().__init__(f"cancelled after {removed} entries")
        self.removed = removed


@dataclass(frozen=True)
class Outcome:
    """What a finished request did: entries removed, and fields for its
    audit record (``anchor_kept``)."""

    removed: int
    notes: dict = field(default_factory=dict)


class _AllLeft:
    """The cancel flag of a shared walk: set once every request sharing it
    has its own ``cancelled`` set."""

    def __init__(self, first):
        self.events = [first]

    def is_set(self):
        return all(e.is_set() for e in self.events)


def parse(path):
    """Lexical rules -> ParsedPath, or InvalidPath/OutsideScope."""
    try:
        return pathrules.parse(path)
    except pathrules.PathRuleError as e:
        raise (InvalidPath if e.kind == "invalid" else OutsideScope)(str(e)) from None


def resolve(path, caller_uid, config=Config(), fs=None):
    """Lexical rules, then scope: the held Target, or None when there is
    nothing to delete.  ``fs``: the fsops.Fs to open with (default: openat2
    where the kernel has it)."""
    return scope.resolve(parse(path), caller_uid, config, fs)


GONE = "gone"  # identity(): the entry does not exist


def identity(target):
    """(st_dev, st_ino) of the resolved entry, GONE if there is no such
    entry, or None if it cannot be looked at (a mount point, which
    ``remove`` refuses; an error, which it reports): two requests with the
    same caller and identity may share one walk."""
    if target.anchor_fd is not None:
        st = os.fstat(target.anchor_fd)
    else:
        try:
            st = target.fs.lstat_beneath(target.parent_fd, target.name)
        except OSError as e:
            return GONE if fsops.refusal(e) is fsops.GONE else None
    return (st.st_dev, st.st_ino)


def remove(target, progress=None, threads=DEFAULT_WALK_THREADS, cancel=None, census=None,
           limits=walk.DEFAULT_LIMITS):
    """Remove a resolved target; return an Outcome.  Closes it.

    ``progress``: a report.WalkResult to count into, read by another thread
    for progress reports.  ``threads``: for the target's subdirectories.
    ``cancel``: stop when it is set (``is_set()``); raises Cancelled.
    ``census``: what returns the in-use check's census (a shared scan's).
    ``limits``: the walk's (``walk.Limits``, from the settings).  An anchor
    whose holder others could write (``Target.keep_anchor``) is emptied and
    kept (``anchor_kept`` in the Outcome's notes).
    """
    try:
        removed = fsremove.remove_entry(target.parent_fd, target.name, target.display, target.caller_uid,
                                        held_fd=target.anchor_fd, progress=progress, threads=threads,
                                        fs=target.fs, owners=target.rule, cancel=cancel,
                                        keep_dir=target.keep_anchor, census=census, limits=limits)
        return Outcome(removed, {"anchor_kept": "yes"} if target.keep_anchor else {})
    except fsremove.Cancelled as e:
        raise Cancelled(e.removed) from None
    except fsremove.MountInTheWay as e:
        raise MountPoint(e.message, removed=e.removed) from None
    except fsremove.InUse as e:
        raise InUse(e.message) from None
    except fsremove.Untrusted as e:
        raise OutsideScope(e.message) from None
    except fsremove.RemoveError as e:
        raise Failed(e.message, removed=e.removed) from None
    finally:
        target.close()


def cleanup(path, caller_uid, config=Config(), progress=None, threads=DEFAULT_WALK_THREADS, fs=None,
            limits=walk.DEFAULT_LIMITS):
    """Remove ``path`` on behalf of ``caller_uid``; return entries removed.

    ``config``: the administrator's configuration (roots, owner rule).
    ``limits``: the walk's (``walk.Limits``).  A target that does not exist
    is success with 0 removed.
    """
    target = resolve(path, caller_uid, config, fs)
    return 0 if target is None else remove(target, progress, threads, limits=limits).removed


class Engine:
    """The requests of one running service: each one's sequence, and which
    of them share a walk.

    Two concurrent requests of the same uid for the same resolved target
    (same st_dev, st_ino) share one walk: the second waits for the first's
    result instead of racing it through the same tree.  A shared walk stops
    only when every request sharing it was cancelled (its caller left the
    bus); a request whose caller is still there and that finds the walk it
    joined cancelled runs its own.
    """

    def __init__(self, walk_threads=DEFAULT_WALK_THREADS, fs=None, limits=walk.DEFAULT_LIMITS):
        self.walk_threads = walk_threads
        self.fs = fs  # fsops.Fs (None: the kernel's default)
        self.limits = limits  # walk.Limits: fds held per walk thread, levels entered
        self.scans = scans.SharedScans()  # the in-use check's census, shared by the requests waiting for one
        self._shared = {}  # (uid, st_dev, st_ino) -> (Future, Progress, _AllLeft)
        self._lock = threading.Lock()
        self.shared_walks = 0  # requests that joined another's walk

    def cleanup(self, path, uid, config, progress):
        """Cleanup(path) for ``uid``, in a worker thread; returns an Outcome
        or raises a MechanismError, or Cancelled."""
        while True:
            if progress.cancelled.is_set():
                raise Cancelled(0)  # the caller left before its turn came
            progress.started = True
            target = resolve(path, uid, config, self.fs)
            if target is None:
                return Outcome(0)
            ident = identity(target)
            if ident is GONE:
                # Nothing there when we looked: success, as when it was
                # missing above the target (one lookup, not a second in remove).
                target.close()
                return Outcome(0)
            if ident is None:
                return remove(target, progress.walk, self.walk_threads, progress.cancelled, progress.census,
                              self.limits)
            key = (uid,) + ident
            with self._lock:
                shared = self._shared.get(key)
                if shared is None:
                    mine = concurrent.futures.Future()
                    stop = _AllLeft(progress.cancelled)
                    self._shared[key] = (mine, progress, stop)
                else:
                    shared[2].events.append(progress.cancelled)
            if shared is None:
                break
            target.close()
            self.shared_walks += 1
            progress.walk = shared[1].walk  # report the shared walk's progress
            try:
                return shared[0].result()
            except Cancelled:
                if progress.cancelled.is_set():
                    raise
                # Everyone else left just as we joined: do it ourselves.
        try:
            if stop.is_set():
                target.close()
                raise Cancelled(0)
            outcome = remove(target, progress.walk, self.walk_threads, stop, progress.census, self.limits)
            mine.set_result(outcome)
            return outcome
        except BaseException as e:
            mine.set_exception(e)
            raise
        finally:
            with self._lock:
                del self._shared[key]
