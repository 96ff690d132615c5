"""Is a held directory in use by a mount in another mount namespace?

A running container's mounts live in its own mount namespace, invisible in
ours (``mounts.py`` sees only ours).  Deleting the directories they hang on
from the host detaches them while the container runs: its ``/proc``,
``/dev``, ``/sys``, bind mounts and tmpfs vanish under it.  So before
anything is deleted, every *other* mount namespace is looked at through
``/proc/<pid>/mountinfo`` (readable without any ptrace right), and the target
is **in use** when a mount there

* has its source at or below the target: same device, and its ``root``
  field (the mounted directory, relative to its file system's root) at or
  below the target's own place in that file system, as runc's bind mount of
  ``rootfs`` as the container's ``/``, or of the project's source; or
* has its mount point at or below the target: the namespace's ``/`` mount
  says where its tree lies on the host (device and ``root``), so a mount
  point ``/run/shm`` there lies at ``<that root>/run/shm`` here; or, placed
  through its parent mount as ``mounts.py`` places ours, the directory it is
  mounted on is at or below the target (a volume at ``/app/x/vol`` inside
  the container's bind of the project at ``/app``).

A mount of an **overlay** (a container's root file system: after
``pivot_root`` its mountinfo shows only ``overlay / ... upperdir=...``) uses
the target when one of its layers (``lowerdir``, ``upperdir``, ``workdir``,
``lowerdir+``, ``datadir+``; ``mounts.overlay_layers``) is an absolute path
at or below the target: by our location of the target (the mounter's view of
the host's paths is ours, as for every runtime that mounts the overlay before
``pivot_root``), or placed through that namespace's own table.  Our own
namespace's overlays count too (their layers are not mount points, so
``mounts.py`` does not see them).  A relative layer path (containerd's, for
long layer lists) cannot be placed, nor can fuse-overlayfs, which shows no
layers: logged once per mount and passed over.

**Whose namespaces count** (``Whose``): one holding a process owned by root,
by the caller or by one of the caller's subordinate uids (``/etc/subuid``:
their rootless containers), or a process in the **initial user namespace**
(``/proc/<pid>/uid_map`` is the identity map, readable without ptrace)
whose owner is **not a login user other than the caller** (a uid from
``UID_MIN`` to ``UID_MAX`` of ``/etc/login.defs`` that the password database
knows): a rootful container whose image runs as ``USER 65534`` or 999.  Not
every namespace in the initial user namespace: setuid helpers (bubblewrap
installed setuid, Apptainer's starter) give an unprivileged user such a
process in a mount namespace of their own, with binds of any directory they
can search, and they must not make a victim's directory "in use" (threat
model M8).  Another user's own ``unshare -Urm`` never counts either.  A pid
is named only for processes of the caller or of root.

Limits (documented, not defended): a process whose root or working directory
is inside the target but that holds no mount there; a container started
after the check; a single file bind-mounted into a container (only
directories are checked); a rootful container running as another login
user's uid, and one whose user namespace maps ids that are not the caller's
subordinate ids (neither is told from a stranger's namespace); the owner of
``/proc/<pid>`` is root for a process that is not dumpable (after a setuid
exec), so such a process counts as root's; relative overlay layers and
fuse-overlayfs.
"""

import logging
from dataclasses import dataclass
from typing import Optional

from locald_admin import pathrules
from . import mounts, owners, procscan

SUBUID = "/etc/subuid"
PROC = procscan.PROC
MAX_LOGGED = 256  # distinct unparsable lines and unplaceable overlays logged, at most

log = logging.getLogger("locald_admin.inuse")
_logged = set()


def _log_once(key, message, *args):
    """Log ``message`` once per ``key`` in this process' life (at most
    MAX_LOGGED keys): a mount seen by every request is said once."""
    if key in _logged or len(_logged) >= MAX_LOGGED:
        return
    _logged.add(key)
    log.warning(message, *args)


@dataclass(frozen=True)
class Use:
    """One mount that uses the target."""

    what: str  # what kind of use, for the message
    where: bytes  # its mount point in its namespace
    pid: Optional[int]  # only for processes of the caller or of root
    own: bool = False  # a mount of our own namespace (an overlay whose layer is in the target)

    def describe(self):
        if self.own:
            return f"{self.what}, mounted at {pathrules.display(self.where)} in this mount namespace"
        by = f" (pid {self.pid})" if self.pid is not None else ""
        return f"{self.what}, mounted at {pathrules.display(self.where)} in another mount namespace{by}"


class Whose:
    """Which namespaces of a census count for one caller's check (module
    docstring): one holding a process of root, of the caller or of a
    subordinate uid of theirs, or one in the initial user namespace whose
    owner is no login user (the census keeps those: ``Namespace.initial``)."""

    def __init__(self, caller_uid, subuid_path=None):
        self.caller = caller_uid
        self.rule = owners.OwnerRule.for_caller(caller_uid, subuid_path=subuid_path or SUBUID)

    def counts(self, ns):
        if 0 in ns.owners or ns.initial:
            return True
        return any(self.rule.callers(u) for u in ns.owners)

    def named_pid(self, ns):
        """The pid to name in a message: only one of root's or the caller's."""
        pid = ns.pid_of(0)
        return pid if pid is not None else ns.pid_of(self.caller)


# Parsing and placing are shared with our own namespace's check (mounts.py).
_at_or_below = mounts.at_or_below
_join = mounts.join
place = mounts.place


def parse(raw):
    """A namespace's mountinfo table; lines that do not parse are logged
    once and left out (never an error for every request)."""
    bad = []
    table = mounts.parse(raw, bad)
    for b in bad:
        _log_once(("line", b.line[:512]), "in-use check: a mountinfo line that does not parse was passed over: %r",
                  b.line[:512])
    return table


def _placed_at_or_below(m, by_id, dev, rel):
    """Whether the directory the mount ``m`` is mounted on, placed through
    its parent mount (``mounts.mount_point_place``), is at or below the
    place (``dev``, ``rel``): a volume mounted inside a container's bind of a
    directory above the target, which the namespace's ``/`` cannot place."""
    pl = mounts.mount_point_place(m, by_id)
    return pl is not None and pl[0] == dev and _at_or_below(pl[1], rel)


def _layer_uses(table, loc, dev, rel, pid, own=False):
    """Uses of the target by the layers of the overlay mounts of ``table``
    (module docstring): (Use, ...) for each such mount."""
    found = []
    for m in table:
        if m.fstype != mounts.OVERLAY:
            continue
        for layer in mounts.overlay_layers(m):
            if not layer.startswith(b"/"):
                _log_once(("relative", m.dev, m.mount_point), "in-use check: overlay %s at %r names a relative "
                          "layer %r, which cannot be placed; passed over", m.dev.decode(), m.mount_point, layer)
                continue
            pl = mounts.path_place(layer, table, skip=m.id)
            if _at_or_below(layer, loc) or (pl is not None and pl[0] == dev and _at_or_below(pl[1], rel)):
                found.append(Use("a layer of an overlay mount (a container's root file system)", m.mount_point, pid,
                                 own))
                break
    return found


def uses(dirfd, caller_uid, limit=5, own=None, census=None):
    """Mounts that use the held directory (at most ``limit``), or []: in
    other namespaces, and overlays of our own whose layers it holds.
    ``own``: our own mount table if already read (``mounts.table()``), so
    that one check reads it once.  ``census``: a ``procscan.Census`` that
    began after the request arrived (shared by the requests waiting for it,
    ``mechanism/scans.py``), or None to make one now."""
    own = mounts.table(f"{PROC}/self/mountinfo") if own is None else own
    here = mounts.locate(dirfd, own)
    if here is None:
        return []
    loc, (dev, rel) = here
    found = _layer_uses(own, loc, dev, rel, None, own=True)[:limit]
    if len(found) >= limit:
        return found
    census = procscan.scan(PROC) if census is None else census
    whose = Whose(caller_uid)
    ours = {m.id for m in own}
    for ns in list(census.namespaces.values()):
        # Mount ids are unique system-wide: a namespace whose first mount is
        # one of ours is our own (its mounts are mounts.py's to check).
        if ns.first in ours or not whose.counts(ns):
            continue
        table = census.table(ns, parse)
        if not table or table[0].id in ours:
            continue
        top = next(((m.dev, m.root) for m in table if m.mount_point == b"/"), None)
        pid = whose.named_pid(ns)
        by_id = {m.id: m for m in table}
        for m in table:
            d, r, mp = m.dev, m.root, m.mount_point
            if d == dev and _at_or_below(r, rel):
                found.append(Use("the source of a mount (a container's root or a bind mount)", mp, pid))
            elif (top is not None and top[0] == dev and _at_or_below(_join(top[1], mp), rel)
                  or _placed_at_or_below(m, by_id, dev, rel)):
                found.append(Use("a mount point of a container", mp, pid))
            if len(found) >= limit:
                return found
        found += _layer_uses(table, loc, dev, rel, pid)[:limit - len(found)]
        if len(found) >= limit:
            return found
    return found
