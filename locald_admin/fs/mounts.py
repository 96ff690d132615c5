"""Find mounts at or below a directory that the mechanism holds open.

The directory is identified by its fd, not by the string the caller sent:
its location is what the kernel reports for the fd (``/proc/self/fd/N``),
compared with the mount points in ``/proc/self/mountinfo`` (both relative to
this process' root, both from the kernel).  Nothing is stat'ed, so a hung
FUSE mount below the target cannot stall this check.

The table is parsed once (``table``: ``Mount`` tuples) and shared with the
in-use check (``inuse.py``), as is ``place``, the held directory's device and
path within its file system.
"""

import os
import re
from typing import NamedTuple

from . import fsops

MOUNTINFO = b"/proc/self/mountinfo"

_ESCAPE = re.compile(rb"\\([0-7]{3})")


def unescape(field):
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    if b"\\" not in field:
        return field
    return _ESCAPE.sub(lambda m: bytes([int(m.group(1), 8)]), field)


class Mount(NamedTuple):
    """One line of a mountinfo table (fields unescaped)."""

    id: int
    parent: int  # the mount it is mounted on (itself, or not in the table, for a namespace's root)
    dev: bytes  # b"major:minor" of its file system
    root: bytes  # the mounted directory, within its file system
    mount_point: bytes  # where it is mounted, relative to the reader's root


def parse(raw):
    """The Mounts of the mountinfo text ``raw`` (bytes), in its order."""
    out = []
    for line in raw.splitlines():
        f = line.split(b" ", 5)
        out.append(Mount(int(f[0]), int(f[1]), f[2], unescape(f[3]), unescape(f[4])))
    return out


def table(mountinfo=MOUNTINFO):
    """This process' mount table (or the one at ``mountinfo``), read once:
    one consistent picture for every comparison of a check."""
    with open(mountinfo, "rb") as f:
        return parse(f.read())


def mount_points(mountinfo=MOUNTINFO):
    """Yield (mount_id, mount_point) for every mount in this namespace."""
    for m in table(mountinfo):
        yield m.id, m.mount_point


def at_or_below(path, top):
    """Whether ``path`` is ``top`` or below it (whole components)."""
    return path == top or path.startswith(top.rstrip(b"/") + b"/")


def join(root, rest):
    """``rest`` (b"" or b"/a/b") below ``root``."""
    return root.rstrip(b"/") + rest if rest not in (b"", b"/") else root


def _below(path, top):
    """The part of ``path`` below ``top`` (b"" or b"/a/b"); ``path`` must be
    at or below ``top``."""
    return path[len(top.rstrip(b"/")):]


class LocationUnknown(OSError):
    """The kernel cannot name where a held directory is (longer than
    PATH_MAX, or outside this process' root, or on a mount missing from our
    table): mounts below it cannot be ruled out, so callers must refuse rather
    than guess."""


def fd_location(fd):
    """Where the kernel says the directory ``fd`` is, or None when it has
    been removed (st_nlink 0: nothing can be mounted below it any more).

    Deletion is read from the inode, not from a " (deleted)" suffix, which a
    directory can simply be named.
    """
    if os.fstat(fd).st_nlink == 0:
        return None
    try:
        loc = os.readlink(f"/proc/self/fd/{fd}".encode())
    except OSError as e:
        raise LocationUnknown(e.errno, f"cannot name the location of the target: {e.strerror}") from None
    if not loc.startswith(b"/"):
        raise LocationUnknown(0, "the target is outside this process' root directory")
    return loc


def _locate(dirfd, mounts):
    """(location, (device, path within its file system)) of the held
    directory, from the mount table ``mounts``; None when it has been
    removed."""
    loc = fd_location(dirfd)
    if loc is None:
        return None
    mnt = fsops.mount_id(dirfd)
    for m in mounts:
        if m.id == mnt and at_or_below(loc, m.mount_point):
            return loc, (m.dev, join(m.root, _below(loc, m.mount_point)))
    raise LocationUnknown(0, "its mount is not in this process' mount table")


def place(dirfd, mounts):
    """(device, path within its file system) of the held directory, from
    our own mount table ``mounts`` (a ``table()``), or None when it has been
    removed.  Raises LocationUnknown."""
    found = _locate(dirfd, mounts)
    return None if found is None else found[1]


def mounts_at_or_below(dirfd, mounts=None):
    """Mount points at or below the directory held by ``dirfd`` (sorted).
    ``mounts``: this process' mount table if already read (``table()``), so
    that one check reads it once.  Raises LocationUnknown when that cannot
    be known."""
    top = fd_location(dirfd)
    if top is None:
        return []
    mounts = table() if mounts is None else mounts
    return sorted({m.mount_point for m in mounts if at_or_below(m.mount_point, top)})
