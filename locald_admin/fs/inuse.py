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

Only the namespaces of processes owned by root, by the caller, or by the
caller's subordinate uids (``/etc/subuid``: their rootless containers)
count, so that no other user can make a victim's directory "in use" with an
``unshare -Urm`` of their own.  A pid is named only for processes of the
caller or of root.

Limits (documented, not defended): a process whose root or working directory
is inside the target but that holds no mount there; a container started
after the check; a single file bind-mounted into a container (only
directories are checked).
"""

import os
from dataclasses import dataclass
from typing import Optional

from .. import pathrules
from . import mounts, owners

SUBUID = "/etc/subuid"
PROC = "/proc"


@dataclass(frozen=True)
class Use:
    """One mount in another namespace that uses the target."""

    what: str  # what kind of use, for the message
    where: bytes  # its mount point in that namespace
    pid: Optional[int]  # only for processes of the caller or of root

    def describe(self):
        by = f" (pid {self.pid})" if self.pid is not None else ""
        return f"{self.what}, mounted at {pathrules.display(self.where)} in another mount namespace{by}"


# Parsing and placing are shared with our own namespace's check (mounts.py).
_parse = mounts.parse
_at_or_below = mounts.at_or_below
_join = mounts.join
place = mounts.place


def _placed_at_or_below(m, by_id, dev, rel):
    """Whether the directory the mount ``m`` is mounted on, placed through
    its parent mount (``mounts.mount_point_place``), is at or below the
    place (``dev``, ``rel``): a volume mounted inside a container's bind of a
    directory above the target, which the namespace's ``/`` cannot place."""
    pl = mounts.mount_point_place(m, by_id)
    return pl is not None and pl[0] == dev and _at_or_below(pl[1], rel)


def uses(dirfd, caller_uid, limit=5, own=None):
    """Mounts in other namespaces that use the held directory (at most
    ``limit``), or [].  ``own``: our own mount table if already read
    (``mounts.table()``), so that one check reads it once."""
    own = mounts.table(f"{PROC}/self/mountinfo") if own is None else own
    here = place(dirfd, own)
    if here is None:
        return []
    dev, rel = here
    # Whose namespaces count: root's, the caller's and the caller's
    # subordinate uids' (the same rule as the walk's, fs/owners.py).
    rule = owners.OwnerRule.for_caller(caller_uid, subuid_path=SUBUID)

    def counts(owner):
        return owner == 0 or rule.callers(owner)

    ours = {m.id for m in own}
    seen, found = set(), []
    for entry in os.listdir(PROC):
        if not entry.isdigit():
            continue
        try:
            owner = os.stat(f"{PROC}/{entry}").st_uid
            if not counts(owner):
                continue
            with open(f"{PROC}/{entry}/mountinfo", "rb", buffering=0) as f:
                # Mount ids are unique system-wide: a table whose first mount
                # is one of ours is our own namespace (the usual case), known
                # from its first bytes without making the kernel print it all.
                head = f.read(64)
                first = head.split(b" ", 1)[0]
                if not first.isdigit() or int(first) in ours:
                    continue
                raw = head + f.readall()
        except OSError:
            # Gone meanwhile (ENOENT, ESRCH), exiting (EINVAL: it has no
            # mount namespace any more, so it holds no mount), or hidden.
            continue
        table = _parse(raw)
        ids = frozenset(m.id for m in table)
        if ids & ours or ids in seen:
            continue
        seen.add(ids)
        top = next(((m.dev, m.root) for m in table if m.mount_point == b"/"), None)
        pid = int(entry) if owner in (0, caller_uid) else None
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
    return found
