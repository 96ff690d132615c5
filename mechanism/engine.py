"""One cleanup request, start to end, without a bus: lexical rules, scope
resolution, mount check, deletion.  Pure file-system logic, testable alone.
"""

import os

from .. import pathrules
from ..fs import fsops
from ..fs import remove as fsremove
from . import scope
from .config import Config
from .errors import Failed, InvalidPath, MountPoint, OutsideScope

# Threads that walk the target's subdirectories at once (set by the
# service's --walk-threads); 1 walks them one after another.
WALK_THREADS = 2


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
        return fsremove.remove_entry(target.parent_fd, target.name, target.display, held_fd=target.anchor_fd,
                                     progress=progress, threads=WALK_THREADS)
    except fsremove.MountInTheWay as e:
        raise MountPoint(e.message, removed=e.removed) from None
    except fsremove.RemoveError as e:
        raise Failed(e.message, removed=e.removed) from None
    finally:
        target.close()


def cleanup(path, caller_uid, config=Config(), progress=None):
    """Remove ``path`` on behalf of ``caller_uid``; return entries removed.

    ``config``: the administrator's configuration (roots, owner rule).
    A target that does not exist is success with 0 removed.
    """
    target = resolve(path, caller_uid, config)
    return 0 if target is None else remove(target, progress)
