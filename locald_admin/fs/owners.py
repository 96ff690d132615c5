"""The trust rule: which directories a removal on a caller's behalf may enter.

One definition (threat model, "The trust rule"), asked by every walk that
root makes for a caller: scope resolution on the way from the anchor to the
target (``mechanism/scope.py``), the target itself (``remove.py``), the
Python walk (``removal._Removal.on_enter``), the parallel split
(``split.remove_in_parallel``) and the C walk (``_cwalk.c: refused_by_rule``,
which decides the two plain cases itself, exactly as ``untrusted`` does first,
and asks ``refusal`` about every other).

A directory below the anchor is *trusted*, and may be entered and removed,
when its parent is trusted (the walks enter only trusted directories, so
the parent always is; the anchor is trusted by scope's own rules) and:

* it is owned by the caller or one of the caller's subordinate uids; or
* it is owned by root and either has no group- or other-write bit, or its
  parent is owned by root with no group- or other-write bit; or
* it is owned by another uid and its parent is neither owned by nor
  writable by the caller.

Otherwise it is not entered: left in place and named (inside the target),
or the request is refused (on the way to it, or the target itself).

Why: a directory comes to be in a directory only through someone who may
write that directory, by creating it there or by renaming it into it, and
renaming a directory into another parent also needs write permission on the
directory itself (its ``..`` changes).  So:

* another user's directory in a parent the caller could write may be there
  because the caller invited it (a world-writable "drop" directory another
  user put their work in, which the caller then moves below the anchor);
  in a parent the caller cannot write, the caller did not put it there: root
  did (a container runtime unpacking an image whose files belong to uid
  999);
* a root-owned directory that only root may write cannot have been moved
  anywhere by a non-root user: root made it where it is.  One that others
  may write (``root:team 2775`` in a shared team directory, holding root's
  own ``0755`` directory and files) can be moved by any of them into their
  tree, root's files with it, unless it sits in a directory only root may
  write (then only root put it there).  That keeps a rootful image's
  ``tmp`` (1777), ``var/tmp``, ``run/lock`` (1777), ``var/mail`` and
  ``var/local`` (2775) removable: their parents are root's ``0755``
  directories.  For root's directories the mode bits say it all: an
  extended ACL that grants anyone write shows as the group write bit (the
  ACL mask).

Files need no rule: removing a file is a change of the directory that holds
it, which this rule (or, for the target's parent, scope) has decided.  The
sticky bit changes nothing: it limits who may remove or rename another's
entry, not who may create one, and the caller can still move the whole
sticky directory.

"The caller" is the caller's uid and subordinate uids (``/etc/subuid``:
their rootless containers, whose root may change anything its uids own),
and for a group-writable parent the caller's groups and subordinate gids.
An id in a subordinate range that is a real user (or group) of the system is
not counted as subordinate: a badly written ``/etc/subuid`` must not hand
the caller other users' files.  A parent not root's with an extended POSIX
ACL counts as writable by the caller whatever the ACL says (reading ACLs
right is more than this rule needs; refusing is the safe side).  Every stat
is an ``fstat`` of a held fd, never a path lookup.
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
GROUP_OR_OTHER_WRITE = stat.S_IWGRP | stat.S_IWOTH


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

    def untrusted(self, parent_fd, st, parent_st=None):
        """None if the directory whose ``fstat`` is ``st``, an entry of the
        held, trusted directory ``parent_fd`` (``fstat`` ``parent_st``, read
        when needed), is trusted; otherwise why not, for messages.

        The C walk (``_cwalk.c: refused_by_rule``) decides the first two
        cases itself, as here, and asks ``refusal`` about every other."""
        uid = st.st_uid
        if uid == self.uid:
            return None  # the caller's own
        if uid == 0:
            # Root's, and nobody else may write it: nobody but root can have
            # moved it here (that needs write permission on it).
            if not st.st_mode & GROUP_OR_OTHER_WRITE:
                return None
            # Others may write it, so anyone of them could have moved it in,
            # with root's files, unless only root may write where it is.
            pst = os.fstat(parent_fd) if parent_st is None else parent_st
            if pst.st_uid == 0 and not pst.st_mode & GROUP_OR_OTHER_WRITE:
                return None
            return (f"owned by root and writable by others (mode {stat.S_IMODE(st.st_mode):04o}) "
                    "in a directory that is not root's alone")
        if self.subordinate_uid(uid):
            return None  # the caller's rootless containers'
        # Another user's: trusted only where the caller cannot have put it.
        pst = os.fstat(parent_fd) if parent_st is None else parent_st
        if not self.writable(parent_fd, pst):
            return None
        return f"owned by {describe_uid(uid)}, not the caller's, in a directory the caller could write"

    def refusal(self, parent_fd, st):
        """What a walk reports for a directory it does not enter (``st``, an
        entry of ``parent_fd``): None if it is trusted, else the reason."""
        why = self.untrusted(parent_fd, st)
        return None if why is None else f"{why}: left in place"


def describe_uid(uid):
    """``uid 1001 (alice)``, or ``uid 1001`` for an id the password
    database does not know."""
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


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

