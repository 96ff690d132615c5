"""One cleanup request, start to end, without a bus: lexical rules, scope
resolution, mount check, deletion.  Pure file-system logic, testable alone.
"""

import errno
import os
import stat

from .. import pathrules
from . import fsops, mounts, scope, walk
from .config import Config
from .errors import Failed, InvalidPath, MountPoint, OutsideScope

MAX_NAMED_FAILURES = 5
# Threads that walk the target's subdirectories at once (set by the
# service's --walk-threads); 1 walks them one after another.
WALK_THREADS = 2
MAX_TYPE_RETRIES = 3  # the target flips between file and directory under us


def parse(path):
    """Lexical rules -> ParsedPath, or InvalidPath/OutsideScope."""
    try:
        return pathrules.parse(path)
    except pathrules.PathRuleError as e:
        raise (InvalidPath if e.kind == "invalid" else OutsideScope)(str(e)) from None


def resolve(path, caller_uid, config=Config()):
    """Lexical rules, then scope: the held Target, or None when there is
    nothing to delete."""
    return scope.resolve(parse(path), caller_uid, config)


def identity(target):
    """(st_dev, st_ino) of the resolved entry, or None if it is gone (or is
    a mount point, which ``remove`` refuses): two requests with the same
    caller and identity may share one walk."""
    if target.anchor_fd is not None:
        st = os.fstat(target.anchor_fd)
    else:
        try:
            st = fsops.lstat_beneath(target.parent_fd, target.name)
        except OSError:
            return None
    return (st.st_dev, st.st_ino)


def remove(target, progress=None):
    """Remove a resolved target; return entries removed.  Closes it.

    ``progress``: a walk.WalkResult to count into, read by another thread
    for progress reports.
    """
    try:
        for _ in range(MAX_TYPE_RETRIES):
            done = _remove_entry(target, progress)
            if done is not None:
                return done
        raise Failed(f"{target.display}: kept changing type while being removed")
    finally:
        target.close()


def cleanup(path, caller_uid, config=Config(), progress=None):
    """Remove ``path`` on behalf of ``caller_uid``; return entries removed.

    ``config``: the administrator's configuration (roots, owner rule).
    A target that does not exist is success with 0 removed.
    """
    target = resolve(path, caller_uid, config)
    return 0 if target is None else remove(target, progress)


def _remove_entry(t, progress=None):
    """Remove the entry; None means 'it changed type, try again'."""
    if t.anchor_fd is not None:  # the anchor itself, by its held fd
        return _remove_dir(t, t.anchor_fd, progress)
    try:
        st = fsops.lstat_beneath(t.parent_fd, t.name)
    except OSError as e:
        if e.errno == errno.ENOENT:
            return 0
        if e.errno == errno.EXDEV:
            raise MountPoint(f"{t.display} is a mount point; nothing was removed") from None
        raise Failed(f"{t.display}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        # A file, symlink (the link itself, never its target), fifo, socket
        # or device node.
        try:
            os.unlink(t.name, dir_fd=t.parent_fd)
            return 1
        except FileNotFoundError:
            return 0
        except IsADirectoryError:
            return None
        except OSError as e:
            raise Failed(f"could not remove {t.display}: {e.strerror}") from None
    try:
        dir_fd = fsops.open_beneath(t.parent_fd, t.name)
    except OSError as e:
        if e.errno == errno.ENOENT:
            return 0
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            return None
        if e.errno == errno.EXDEV:
            raise MountPoint(f"{t.display} is a mount point; nothing was removed") from None
        raise Failed(f"{t.display}: {e.strerror}") from None
    try:
        return _remove_dir(t, dir_fd, progress)
    finally:
        os.close(dir_fd)


def _remove_dir(t, dir_fd, progress=None):
    # A mount at or below the target: refuse before deleting anything, and
    # without looking into it (mountinfo, not stat).
    try:
        found = mounts.mounts_at_or_below(dir_fd)
    except mounts.LocationUnknown as e:
        raise Failed(f"{t.display}: {e.strerror}, so mounts below it cannot be ruled out; "
                     "nothing was removed") from None
    if found:
        names = ", ".join(pathrules.display(m) for m in found[:MAX_NAMED_FAILURES])
        raise MountPoint(f"{t.display}: mount point at or below the target: {names}; nothing was removed")
    res = walk.WalkResult() if progress is None else progress
    walk.remove_subdirs_in_parallel(dir_fd, res, WALK_THREADS)
    walk.remove_tree(t.parent_fd, t.name, dir_fd, result=res)
    _raise_for(t.display, res)
    return res.removed


def _raise_for(shown, res):
    def full(rel):
        return pathrules.display(shown.encode("utf-8", "surrogateescape") + (b"/" + rel if rel else b""))

    if res.mounts:
        names = ", ".join(full(m) for m in res.mounts[:MAX_NAMED_FAILURES])
        raise MountPoint(f"a mount point appeared during removal and was left in place: {names}; "
                         f"{res.removed} entries removed", removed=res.removed)
    if res.failures:
        items = list(res.failures.items())
        named = "; ".join(f"{full(rel)}: {why}" for rel, why in items[:MAX_NAMED_FAILURES])
        more = f" (and {len(items) - MAX_NAMED_FAILURES} more)" if len(items) > MAX_NAMED_FAILURES else ""
        raise Failed(f"could not remove {len(items)} entries: {named}{more}; {res.removed} entries removed",
                     removed=res.removed)
