"""Find mounts at or below a directory that the mechanism holds open.

The directory is identified by its fd, not by the string the caller sent,
and mounts are compared with it in two ways, both from the kernel and both
from one reading of ``/proc/self/mountinfo`` (``table``):

* **by location**: the kernel's location of the held fd
  (``/proc/self/fd/N``) against the mount points, as strings (both relative
  to this process' root): a mount point at or below the location;
* **by identity**: the held directory's *place* (``place``: the device
  "major:minor" of its file system and its path within that file system) is
  compared with each mount's mount point, expressed the same way within its
  parent mount's file system.  This finds what a second view of the same tree
  hides from the first comparison: with the project bind-mounted again at
  ``alias``, a volume mounted at ``proj/.locald/x/vol`` is on the same
  directory as ``alias/.locald/x/vol``, and removing ``alias/.locald/x``
  would delete its entries, then meet the volume (``rmdir``: EBUSY).

A mount found either way counts, and so does every mount on top of or below
one found (it hangs in the same place in that view).  Nothing is stat'ed, so
a hung FUSE mount below the target cannot stall this check.

Mounts compared by location only, where their mount point cannot be placed:
the root mount of this namespace (its parent is outside the table) and any
mount whose parent mount is not in our table (only when this process' root
directory is not a mount's root: a chroot).
"""

import os
import re
from typing import NamedTuple

from . import fsops

MOUNTINFO = b"/proc/self/mountinfo"

_ESCAPE = re.compile(rb"\\([0-7]{3})")
# dentry_path() marks the root of a mount whose directory was removed.
_DELETED_ROOT = b"//deleted"


def unescape(field):
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    if b"\\" not in field:
        return field
    return _ESCAPE.sub(lambda m: bytes([int(m.group(1), 8)]), field)


class Mount(NamedTuple):
    """One line of a mountinfo table (fields unescaped, but ``options``)."""

    id: int
    parent: int  # the mount it is mounted on (itself, or not in the table, for a namespace's root)
    dev: bytes  # b"major:minor" of its file system
    root: bytes  # the mounted directory, within its file system
    mount_point: bytes  # where it is mounted, relative to the reader's root
    fstype: bytes = b""  # after the " - " separator
    options: bytes = b""  # the super options, still escaped (``overlay_layers`` reads them)


def _fields(line):
    """The Mount of one mountinfo line, or None when it does not parse."""
    f = line.split(b" ", 5)
    if len(f) < 6 or not (f[0].isdigit() and f[1].isdigit()) or b":" not in f[2]:
        return None
    # After the optional fields (shared:N, master:N, ...): " - fstype source super-options".
    _, sep, tail = f[5].partition(b" - ")
    rest = tail.split(b" ", 2) if sep else []
    return Mount(int(f[0]), int(f[1]), f[2], unescape(f[3]), unescape(f[4]),
                 rest[0] if rest else b"", rest[2] if len(rest) > 2 else b"")


class Unparsed(NamedTuple):
    """A mountinfo line that did not parse (``parse(raw, bad)`` lists them)."""

    line: bytes


def parse(raw, bad=None):
    """The Mounts of the mountinfo text ``raw`` (bytes), in its order.

    Lines end at ``\n`` only: the kernel escapes space, tab, newline and
    backslash in paths but not a carriage return, which ``splitlines``
    would take for a line end (one mount under such a path made every check
    on the machine fail).  A line that still does not parse is left out and,
    with a list ``bad``, appended to it (the caller logs it); never an error
    for every request."""
    out = []
    for line in raw.split(b"\n"):
        if not line:
            continue
        m = _fields(line)
        if m is None:
            if bad is not None:
                bad.append(Unparsed(line))
            continue
        out.append(m)
    return out


OVERLAY = b"overlay"
# The super options naming an overlay's layers: lowerdir is a ':'-separated
# list; the others (lowerdir+ and datadir+ of the new mount API, one layer
# each) one path.
_LAYER_LISTS = (b"lowerdir",)
_LAYER_PATHS = (b"upperdir", b"workdir", b"lowerdir+", b"datadir+")


def _split_unescaped(text, sep):
    """``text`` split at each ``sep`` (one byte) that no backslash escapes."""
    parts, cur, i = [], bytearray(), 0
    while i < len(text):
        c = text[i:i + 1]
        if c == b"\\" and i + 1 < len(text):
            cur += text[i:i + 2]
            i += 2
            continue
        if c == sep:
            parts.append(bytes(cur))
            cur = bytearray()
        else:
            cur += c
        i += 1
    parts.append(bytes(cur))
    return parts


def _overlay_unescape(path):
    """overlayfs's own escaping of a layer path: a backslash before ':',
    ',' or a backslash."""
    if b"\\" not in path:
        return path
    out, i = bytearray(), 0
    while i < len(path):
        if path[i:i + 1] == b"\\" and i + 1 < len(path):
            out += path[i + 1:i + 2]
            i += 2
        else:
            out += path[i:i + 1]
            i += 1
    return bytes(out)


def overlay_layers(m):
    """The layer paths of an overlay mount (lowerdir, upperdir, workdir,
    lowerdir+, datadir+), as the mounter named them, each unescaped both
    ways (mountinfo's octal escapes, then overlay's own ``\\:``, ``\\,``,
    ``\\\\``); [] for any other mount.  A relative path (containerd's, for
    long layer lists) is returned as it is: the caller cannot place it."""
    if m.fstype != OVERLAY:
        return []
    layers = []
    # The kernel writes each option with ',' '=' and whitespace octal-escaped
    # (seq_show_option), so splitting the raw field at ',' is exact.
    for opt in m.options.split(b","):
        key, eq, value = opt.partition(b"=")
        if not eq:
            continue
        key, value = unescape(key), unescape(value)
        if key in _LAYER_LISTS:
            layers += [_overlay_unescape(p) for p in _split_unescaped(value, b":") if p]
        elif key in _LAYER_PATHS and value:
            layers.append(_overlay_unescape(value))
    return layers


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


def locate(dirfd, mounts):
    """(location, (device, path within its file system)) of the held
    directory, from the mount table ``mounts``; None when it has been
    removed.  Raises LocationUnknown."""
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
    found = locate(dirfd, mounts)
    return None if found is None else found[1]


def path_place(path, mounts, skip=None):
    """(device, path within its file system) of the absolute ``path`` as
    the table ``mounts`` resolves it: through the mount with the longest
    mount point at or above it (the last one mounted there), ``skip`` (a
    mount id) left out; None when no mount holds it."""
    best = None
    for m in mounts:
        if m.id != skip and at_or_below(path, m.mount_point) and (
                best is None or len(m.mount_point) >= len(best.mount_point)):
            best = m
    if best is None or best.root.endswith(_DELETED_ROOT):
        return None
    return best.dev, join(best.root, _below(path, best.mount_point))


def mount_point_place(m, by_id):
    """(device, path within its file system) of the directory the mount
    ``m`` is mounted on: its mount point within its parent mount's file
    system.  ``by_id``: the table by mount id.  None where that cannot be
    told: the root mount, a parent not in the table."""
    p = by_id.get(m.parent)
    if p is None or p.id == m.id or not at_or_below(m.mount_point, p.mount_point):
        return None
    if p.root.endswith(_DELETED_ROOT):
        # The parent's directory was removed: it is empty for good, and
        # nothing mounted on it lies in a tree that still exists.
        return None
    return p.dev, join(p.root, _below(m.mount_point, p.mount_point))


def mounts_at_or_below(dirfd, mounts=None):
    """Mount points at or below the directory held by ``dirfd`` (sorted,
    each once), in any view of it: by location or by identity (module
    docstring).  ``mounts``: this process' mount table if already read
    (``table()``), so that one check reads it once.  Raises LocationUnknown
    when that cannot be known."""
    mounts = table() if mounts is None else mounts
    here = locate(dirfd, mounts)
    if here is None:
        return []
    top, (dev, rel) = here
    by_id = {m.id: m for m in mounts}
    found = set()
    for m in mounts:
        if at_or_below(m.mount_point, top):
            found.add(m.id)
            continue
        p = by_id.get(m.parent)
        if p is None or p.dev != dev:
            continue  # (the common case, decided without building a path)
        mp = mount_point_place(m, by_id)
        if mp is not None and at_or_below(mp[1], rel):
            found.add(m.id)
    if not found:
        return []
    # What is mounted on (or below) a mount found hangs in the same place of
    # that view: it counts too (stacked mounts, a volume's own submounts).
    children = {}
    for m in mounts:
        if m.parent != m.id:
            children.setdefault(m.parent, []).append(m.id)
    todo = list(found)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return sorted({by_id[i].mount_point for i in found})
