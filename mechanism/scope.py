"""Resolve a request's path to held file descriptors, race-free.

The anchor is the first ``.locald`` component.  The prefix above it is opened
from / (ordinary symlinks allowed, magic links not); the anchor is opened
relative to the prefix fd with no symlink following and no mount crossing,
and its owner is checked *on the fd*.  Every component below the anchor is
opened relative to the fd of the one before (``fsops.open_beneath``).  From
here on nothing is looked up by path string again, so renaming, symlink
swaps or bind mounts after this point cannot redirect the deletion.
"""

import errno
import os
import stat
from dataclasses import dataclass, field
from typing import List, Optional

from .. import pathrules
from . import fsops
from .errors import Failed, MountPoint, OutsideScope


@dataclass
class Target:
    """What a request resolved to.  ``parent_fd`` holds the entry ``name``;
    for the anchor itself that is the prefix directory."""

    parent_fd: int
    name: bytes
    display: str  # the normalized request path, for messages
    fds: List[int] = field(default_factory=list)  # every fd to close

    def close(self):
        for fd in reversed(self.fds):
            os.close(fd)
        self.fds.clear()


def _is_symlink(dirfd, name):
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dirfd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def resolve(parsed: pathrules.ParsedPath, caller_uid: int, check_owner=True) -> Optional[Target]:
    """Open the parent of the target and return it as a Target.

    Returns None when the target does not exist (a missing component, or a
    non-directory where the path needs a directory): nothing to delete.
    Raises OutsideScope, MountPoint or Failed.
    """
    shown = parsed.display()
    t = Target(parent_fd=-1, name=b"", display=shown)
    try:
        # 1. The prefix, from /.  Magic links (/proc/<pid>/root, .../cwd)
        #    would reach into other processes' views of the file system.
        try:
            t.fds.append(fsops.open_prefix(parsed.prefix))
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR):
                t.close()
                return None
            if e.errno in (errno.ELOOP, errno.EXDEV):
                raise OutsideScope(f"{shown}: the path above {pathrules.ANCHOR.decode()} "
                                   "goes through a magic link or a symlink loop") from None
            raise Failed(f"{shown}: cannot open the directory above the anchor: {e.strerror}") from None

        # 2. The anchor: a real directory (not a symlink to one, not a mount
        #    point), owned by the caller.  The owner is read from the fd we
        #    hold, so a swap after the check changes nothing.
        prefix_fd = t.fds[-1]
        try:
            anchor_fd = fsops.open_beneath(prefix_fd, pathrules.ANCHOR)
        except OSError as e:
            if e.errno == errno.ENOENT:
                t.close()
                return None
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                what = "a symlink" if _is_symlink(prefix_fd, pathrules.ANCHOR) else "not a directory"
                raise OutsideScope(f"{shown}: the anchor {pathrules.ANCHOR.decode()} is {what}") from None
            if e.errno == errno.EXDEV:
                raise MountPoint(f"{shown}: the anchor {pathrules.ANCHOR.decode()} is a mount point") from None
            raise Failed(f"{shown}: cannot open the anchor: {e.strerror}") from None
        t.fds.append(anchor_fd)
        st = os.fstat(anchor_fd)
        if check_owner and caller_uid != 0 and st.st_uid != caller_uid:
            raise OutsideScope(f"{shown}: the anchor is owned by uid {st.st_uid}, not by the caller (uid {caller_uid})")

        # 3. Below the anchor: one component at a time, relative to the fd of
        #    the one before; never a symlink, never across a mount.
        if not parsed.below:
            t.parent_fd, t.name = prefix_fd, pathrules.ANCHOR
            return t
        dirfd = anchor_fd
        for comp in parsed.below[:-1]:
            try:
                nxt = fsops.open_beneath(dirfd, comp)
            except OSError as e:
                if e.errno == errno.ENOENT:
                    t.close()
                    return None
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    if _is_symlink(dirfd, comp) or e.errno == errno.ELOOP:
                        raise OutsideScope(f"{shown}: {pathrules.display(comp)} is a symlink below the anchor") from None
                    t.close()
                    return None  # a file where a directory is needed: no target
                if e.errno == errno.EXDEV:
                    raise MountPoint(f"{shown}: {pathrules.display(comp)} is a mount point") from None
                raise Failed(f"{shown}: cannot open {pathrules.display(comp)}: {e.strerror}") from None
            t.fds.append(nxt)
            dirfd = nxt
        t.parent_fd, t.name = dirfd, parsed.below[-1]
        return t
    except BaseException:
        t.close()
        raise
