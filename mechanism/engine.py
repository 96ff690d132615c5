"""One request, start to end, without a bus: lexical rules, scope
resolution, the one lookup of the target, mount and in-use checks,
deletion.  Pure file-system logic, testable alone; the service runs
``Engine.cleanup`` inside a scheduled job (a worker thread), so no path is
ever resolved on the event loop (a hung FUSE mount above an anchor would
freeze every caller).
"""

import concurrent.futures
import os
import threading
from dataclasses import dataclass, field

from locald_admin import pathrules
from locald_admin.fs import count, report, walk
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
    """What a finished request did: entries removed, whether its target
    existed, fields for its audit record (``anchor_kept``), and for a dry
    run the count (``plan``, an fs.count.TreeCount: ``would_remove``, and
    what would be left in place)."""

    removed: int
    notes: dict = field(default_factory=dict)
    existed: bool = True
    plan: object = None


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


GONE = "gone"  # look_up(): the entry does not exist


class _ChangedType(Exception):
    """The entry looked up was swapped for a directory before it was
    unlinked (``fs.remove.ChangedType``): the request starts again, with a
    new lookup and so a new identity, at most MAX_TYPE_RETRIES times."""

    def __init__(self, message):
        super().__init__(message)
        self.message = message


def _named(e):
    """The mechanism's error for the removal's ``e`` (a fs.remove.RemoveError)."""
    if isinstance(e, fsremove.Cancelled):
        return Cancelled(e.removed)
    if isinstance(e, fsremove.ChangedType):
        return _ChangedType(e.message)
    if isinstance(e, fsremove.MountInTheWay):
        return MountPoint(e.message, removed=e.removed)
    if isinstance(e, fsremove.InUse):
        return InUse(e.message)
    if isinstance(e, fsremove.Untrusted):
        return OutsideScope(e.message)
    return Failed(e.message, removed=e.removed)


def look_up(target):
    """The one lookup of the resolved target's final component, relative to
    its held parent fd, never following a symlink nor crossing a mount
    (``fs.remove.look_up``): kept in ``target.entry`` for ``remove``, which
    removes that entry and never looks the name up again.  Returns its
    (st_dev, st_ino), by which two requests of the same caller share one
    walk: the identity of what is then removed.  GONE when there is no such
    entry.  The anchor as target is held already (R3): its own fd's
    identity.  Raises MountPoint for a mount point, Failed for an error
    (closing the target)."""
    if target.anchor_fd is not None:
        st = os.fstat(target.anchor_fd)
        return (st.st_dev, st.st_ino)
    try:
        entry = fsremove.look_up(target.parent_fd, target.name, target.display, target.fs)
    except fsremove.RemoveError as e:
        target.close()
        raise _named(e) from None
    if entry is None:
        return GONE
    target.fds.append(entry.fd)
    target.entry = entry
    return entry.identity


def remove(target, progress=None, threads=DEFAULT_WALK_THREADS, cancel=None, census=None,
           limits=walk.DEFAULT_LIMITS, dry_run=False):
    """Remove a resolved target (its final component looked up by
    ``look_up``, or else looked up here); return an Outcome.  Closes it.

    ``progress``: a report.WalkResult to count into, read by another thread
    for progress reports.  ``threads``: for the target's subdirectories.
    ``cancel``: stop when it is set (``is_set()``); raises Cancelled.
    ``census``: what returns the in-use check's census (a shared scan's).
    ``limits``: the walk's (``walk.Limits``, from the settings).  An anchor
    whose holder others could write (``Target.keep_anchor``) is emptied and
    kept (``anchor_kept`` in the Outcome's notes).  ``dry_run``: every
    check, the errors they raise, then a count instead of the walk; nothing
    is removed (the Outcome's ``plan``).
    """
    plan = count.TreeCount() if dry_run else None
    try:
        removed = fsremove.remove_entry(target.parent_fd, target.name, target.display, target.caller_uid,
                                        held_fd=target.anchor_fd, entry=target.entry, progress=progress,
                                        threads=threads, fs=target.fs, owners=target.rule, cancel=cancel,
                                        keep_dir=target.keep_anchor, census=census, limits=limits, plan=plan)
        notes = {"anchor_kept": "yes"} if target.keep_anchor else {}
        if plan is not None:
            return Outcome(0, notes, plan=plan)
        return Outcome(removed, notes)
    except fsremove.RemoveError as e:
        raise _named(e) from None
    finally:
        target.close()


def cleanup(path, caller_uid, config=Config(), progress=None, threads=DEFAULT_WALK_THREADS, fs=None,
            limits=walk.DEFAULT_LIMITS):
    """Remove ``path`` on behalf of ``caller_uid``; return entries removed.
    The service's sequence (``Engine.cleanup``) without a service.

    ``config``: the administrator's configuration (roots, owner rule).
    ``progress``: a report.WalkResult to count into.  ``limits``: the
    walk's (``walk.Limits``).  A target that does not exist is success with
    0 removed.
    """
    request = Progress()
    if progress is not None:
        request.walk = progress
    return Engine(threads, fs, limits).cleanup(path, caller_uid, config, request).removed


class Engine:
    """The requests of one running service: each one's sequence, and which
    of them share a walk.

    Two concurrent requests of the same uid for the same target (the same
    st_dev, st_ino of the entry looked up, ``look_up``, which is the entry
    then removed) share one walk: the second waits for the first's
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

    def cleanup(self, path, uid, config, progress, dry_run=False):
        """Cleanup(path) for ``uid``, in a worker thread; returns an Outcome
        or raises a MechanismError, or Cancelled.  ``dry_run``: the same
        sequence and checks, a count instead of the removal (never shared
        with a removal's walk)."""
        for _ in range(fsremove.MAX_TYPE_RETRIES):
            try:
                if dry_run:
                    return self._dry_run(path, uid, config, progress)
                return self._once(path, uid, config, progress)
            except _ChangedType as e:
                changed = e  # look it up again: a new entry, a new identity
        raise Failed(changed.message)

    def _dry_run(self, path, uid, config, progress):
        """One attempt of a dry run: the same resolution, lookup and checks
        as ``_once``, then a count; no walk is shared either way."""
        if progress.cancelled.is_set():
            raise Cancelled(0)
        progress.started = True
        target = resolve(path, uid, config, self.fs)
        if target is None:
            return Outcome(0, existed=False)
        if look_up(target) is GONE:
            target.close()
            return Outcome(0, existed=False)
        return remove(target, cancel=progress.cancelled, census=progress.census, limits=self.limits, dry_run=True)

    def _once(self, path, uid, config, progress):
        """One attempt: resolve the scope, look the target up, then remove
        it or wait for the walk of the same identity already under way."""
        while True:
            if progress.cancelled.is_set():
                raise Cancelled(0)  # the caller left before its turn came
            progress.started = True
            target = resolve(path, uid, config, self.fs)
            if target is None:
                return Outcome(0, existed=False)
            ident = look_up(target)
            if ident is GONE:
                # Nothing there when we looked: success, as when it was
                # missing above the target.
                target.close()
                return Outcome(0, existed=False)
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
