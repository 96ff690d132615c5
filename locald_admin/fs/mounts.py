"""Find mounts at or below a directory that the mechanism holds open.

The directory is identified by its fd, not by the string the caller sent:
its location is what the kernel reports for the fd (``/proc/self/fd/N``),
compared with the mount points in ``/proc/self/mountinfo`` (both relative to
this process' root, both from the kernel).  Nothing is stat'ed, so a hung
FUSE mount below the target cannot stall this check.
"""

import os
import re

_ESCAPE = re.compile(rb"\\([0-7]{3})")


def unescape(field):
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    return _ESCAPE.sub(lambda m: bytes([int(m.group(1), 8)]), field)


def mount_points(mountinfo=b"/proc/self/mountinfo"):
    """Yield (mount_id, mount_point) for every mount in this namespace."""
    with open(mountinfo, "rb") as f:
        for line in f:
            fields = line.split(b" ")
            yield int(fields[0]), unescape(fields[4])


class LocationUnknown(OSError):
    """The kernel cannot name where a held directory is (longer than
    PATH_MAX, or outside this process' root): mounts below it cannot be
    ruled out, so callers must refuse rather than guess."""


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


def mounts_at_or_below(dirfd):
    """Mount points at or below the directory held by ``dirfd`` (sorted).
    Raises LocationUnknown when that cannot be known."""
    top = fd_location(dirfd)
    if top is None:
        return []
    prefix = top.rstrip(b"/") + b"/"
    return sorted({mp for _, mp in mount_points() if mp == top or mp.startswith(prefix)})
