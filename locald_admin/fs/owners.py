"""Whose directories a removal on a caller's behalf may enter.

The rule (threat model S13): a directory owned by root, by the caller or by
one of the caller's subordinate uids is entered and removed as any other.  A
directory owned by anyone else is entered and removed only if its parent
directory is neither owned by nor writable by the caller: then the caller
cannot have put it there (it was made by root, as a container runtime does
when it unpacks an image whose files belong to uid 999).  Otherwise it is
left in place, with everything in it, and named as a failure.

Why the parent decides: a directory comes to be in a directory only through
someone who may write that directory (creating it there, or renaming it
into it; renaming a directory into another parent also needs write
permission on the directory itself, so nobody can move another user's
directory anywhere).  If the caller may write the parent, the other user's
directory may be there because the caller invited it: a world-writable
"drop" directory of the caller's that another user put their work in, which
the caller then moves below their anchor and asks root to delete.  If the
caller may not write the parent, whoever put it there was not the caller.
The sticky bit changes nothing: it limits who may remove or rename another's
entry, not who may create one, and the caller can still move the whole sticky
directory.  Files need no rule: removing a file is a change of the directory
that holds it, so the rule about that directory (or, for the target's
parent, the scope rules) has already decided.

"The caller" is the caller's uid and subordinate uids (``/etc/subuid``:
their rootless containers, whose root may change anything its uids own),
and for a group-writable parent the caller's groups and subordinate gids.
An id in a subordinate range that is a real user (or group) of the system is
not counted as subordinate: a badly written ``/etc/subuid`` must not hand
the caller other users' files.  A parent with an extended POSIX ACL counts
as writable by the caller whatever the ACL says (reading ACLs right is more
than this rule needs; refusing is the safe side).  Every stat is an
``fstat`` of a held fd, never a path lookup.
"""

import errno
import grp
import os
import pwd
import stat
import threading

SUBUID = "/etc/subuid"
SUBGID = "/etc/subgid"
ACL_ACCESS = "system.posix_acl_access"
_NO_ACL = frozenset({errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP})


def read_ranges(path, name, uid):
    """The ranges ``(start, count)`` of a subordinate id file (lines
    ``name:start:count``) that belong to the user ``name`` or to ``uid``
    (written as a number).  A missing or unreadable file has none."""
    keys = {str(uid)} | ({name} if name else set())
    ranges = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.strip().split(":")
                if len(parts) != 3 or parts[0] not in keys:
                    continue
                try:
                    start, count = int(parts[1]), int(parts[2])
                except ValueError:
                    continue
                if start >= 0 and count > 0:
                    ranges.append((start, count))
    except OSError:
        pass
    return tuple(ranges)


def _in(ranges, i):
    return any(s <= i < s + n for s, n in ranges)


def _exists(lookup, i):
    try:
        lookup(i)
        return True
    except KeyError:
        return False


class OwnerRule:
    """The rule for one caller: ``uid``, ``gids`` (their groups), and their
    subordinate ``subuids`` and ``subgids`` (ranges ``(start, count)``).

    Made by ``for_caller``, the groups and ranges are read from the
    databases the first time a decision needs them (a directory owned by
    someone other than root and the caller, or a group-writable parent), once
    per rule: most requests meet no such directory, and reading the group
    database (``getgrouplist``) was the largest cost of a small request.  A
    rule is made per request, so a change to the databases is seen by the
    next one."""

    def __init__(self, uid, gids=frozenset(), subuids=(), subgids=(), *, _load=None):
        self.uid = uid
        self._load = _load  # reads (gids, subuids, subgids) when first needed; None: given
        self._ids = None if _load is not None else (frozenset(gids), tuple(subuids), tuple(subgids))
        self._lock = threading.Lock()
        # Which ids of the ranges are real users or groups, once looked up.
        self._real = {}

    @classmethod
    def for_caller(cls, uid, subuid_path=SUBUID, subgid_path=SUBGID):
        """The rule for ``uid``, from the password and group databases and
        the subordinate id files (files only; a line counts if it names the
        user or their uid), read when first needed."""
        def load():
            try:
                pw = pwd.getpwuid(uid)
            except KeyError:
                name, gids = None, frozenset()
            else:
                name = pw.pw_name
                gids = frozenset(os.getgrouplist(name, pw.pw_gid))
            return gids, read_ranges(subuid_path, name, uid), read_ranges(subgid_path, name, uid)
        return cls(uid, _load=load)

    def _databases(self):
        ids = self._ids
        if ids is None:
            with self._lock:  # the walk's threads share one rule
                if self._ids is None:
                    self._ids = self._load()
                ids = self._ids
        return ids

    @property
    def gids(self):
        return self._databases()[0]

    @property
    def subuids(self):
        return self._databases()[1]

    @property
    def subgids(self):
        return self._databases()[2]

    @property
    def loaded(self):
        """Whether the databases have been read (for tests)."""
        return self._ids is not None

    def __repr__(self):
        return f"OwnerRule(uid={self.uid}{'' if self.loaded else ', not yet read'})"

    def subordinate_uid(self, i):
        """Whether ``i`` is one of the caller's subordinate uids (and no
        real user's)."""
        return _in(self.subuids, i) and not self._is_real("u", i)

    def subordinate_gid(self, i):
        return _in(self.subgids, i) and not self._is_real("g", i)

    def _is_real(self, kind, i):
        key = (kind, i)
        real = self._real.get(key)
        if real is None:
            real = self._real[key] = _exists(pwd.getpwuid if kind == "u" else grp.getgrgid, i)
        return real

    def callers(self, uid):
        """Whether ``uid`` is the caller's: the caller or a subordinate uid."""
        return uid == self.uid or self.subordinate_uid(uid)

    def trusted_owner(self, uid):
        """Whether a directory owned by ``uid`` is entered whatever its
        parent: root's, the caller's, a subordinate uid's."""
        return uid == 0 or self.callers(uid)

    def writable(self, fd, st):
        """Whether the caller owns or may write the directory ``fd`` (whose
        ``fstat`` is ``st``): as its owner, through its group, through
        "other", or possibly through an extended ACL."""
        if self.callers(st.st_uid):
            return True
        mode = st.st_mode
        if mode & stat.S_IWOTH:
            return True
        if mode & stat.S_IWGRP and (st.st_gid in self.gids or self.subordinate_gid(st.st_gid)):
            return True
        return has_acl(fd)

    def refusal(self, parent_fd, st):
        """None if the directory with ``fstat`` ``st``, an entry of the held
        directory ``parent_fd``, may be entered and removed; otherwise the
        reason, for the message."""
        if self.trusted_owner(st.st_uid):
            return None
        if not self.writable(parent_fd, os.fstat(parent_fd)):
            return None  # the caller cannot have put it there
        return (f"owned by uid {st.st_uid}, not the caller's, in a directory the caller could write: "
                "left in place")


def has_acl(fd):
    """Whether the directory ``fd`` has an extended POSIX access ACL (the
    kernel keeps the xattr only for an ACL the mode bits cannot express).
    An O_PATH fd is read through /proc/self/fd; when the answer cannot be
    had, True (the rule's safe side)."""
    try:
        os.getxattr(fd, ACL_ACCESS)
        return True
    except OSError as e:
        if e.errno in _NO_ACL:
            return False
        if e.errno != errno.EBADF:
            return True
    try:  # an O_PATH fd (as scope's prefix fd): its inode, through our own fd
        os.getxattr(f"/proc/self/fd/{fd}", ACL_ACCESS)
        return True
    except OSError as e:
        return e.errno not in _NO_ACL

