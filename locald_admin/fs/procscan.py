"""The in-use check's scan of ``/proc``: which mount namespaces the host has,
and whose processes are in each (``Census``).

Per process only what telling its owner and its namespace needs: the owner
of ``/proc/<pid>`` (one ``stat``: the process' euid, root for a process that
is not dumpable), and, unless the owner is a login user none of the waiting
callers is (``skip_owners``: such a user's namespace counts only for them),
the first bytes of ``/proc/<pid>/mountinfo`` (the id of its namespace's first
mount: a mount belongs to one namespace, so it names the namespace, and the
kernel prints one line, not the table).  ``uid_map`` is read only where the
rule of ``inuse.Whose`` needs it: for an owner that is neither root nor a
login user, once per namespace and owner until one of its processes is in
the initial user namespace.  Nothing here depends on the caller, so one
census serves every request that may use it (``mechanism/scans.py``).

The per-process part exists twice: in C (``_cprocscan.c``, used where it
is built; it groups what it found by namespace and owner) and here (the
reference and the fallback); tests/test_scans.py holds them to the same
census.

A namespace's whole table is read only when a check asks for it
(``Census.table``), at most once per census, through any of its processes
still alive.  Nothing needs ptrace rights (``/proc/<pid>/ns/mnt`` would).
"""

import os
import pwd
import threading
import time

PROC = "/proc"
HEAD = 64  # bytes of a mountinfo read to learn its first mount id
UID_MAP_MAX = 256  # bytes of a uid_map read
LOGIN_DEFS = "/etc/login.defs"
LOGIN_UID_DEFAULT = (1000, 60000)  # UID_MIN, UID_MAX where login.defs says nothing
IDENTITY_MAP = (0, 0, 4294967295)  # uid_map of the initial user namespace


def _parse_login_defs(f):
    lo, hi = LOGIN_UID_DEFAULT
    for line in f:
        if "UID_M" not in line:  # most lines are comments: only UID_MIN and UID_MAX count
            continue
        parts = line.split()
        if len(parts) >= 2 and parts[0] in ("UID_MIN", "UID_MAX"):
            try:
                value = int(parts[1], 0)
            except ValueError:
                continue
            if parts[0] == "UID_MIN":
                lo = value
            else:
                hi = value
    return lo, hi


_login_defs_read = {}  # path -> (what fstat said of the file read, its range)


def login_uid_range(path=LOGIN_DEFS):
    """(UID_MIN, UID_MAX) of ``/etc/login.defs`` (its defaults where it
    says nothing or cannot be read).  Parsed again only when the file is
    another or was changed (its inode, size, mtime and ctime: a write
    changes the ctime), so a request pays an open and an fstat for it."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            st = os.fstat(f.fileno())
            key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            known = _login_defs_read.get(path)
            if known is not None and known[0] == key:
                return known[1]
            value = _parse_login_defs(f)
    except OSError:
        return LOGIN_UID_DEFAULT
    _login_defs_read[path] = (key, value)
    return value


PASSWD_FILES = ("/etc/passwd", "/etc/nsswitch.conf")  # what the password database's listing depends on
LISTED_FOR = 10.0  # seconds a listing is used while those files and login.defs stay the same


def _identities(paths):
    """What ``stat`` says of each file (None where it cannot): a file
    replaced or written has another identity (inode, size, mtime, ctime)."""
    out = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            out.append(None)
            continue
        out.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(out)


_listings = {}  # (login.defs, passwd files) -> (their identities, when listed, the login users)


class LoginUsers:
    """Whether a uid is a login user: from UID_MIN to UID_MAX of
    ``/etc/login.defs`` and known to the password database (read when first
    asked, each uid looked up once).

    ``listed()`` enumerates the database (``getpwall``, about 0.1 ms with
    Debian's files and systemd sources, every scan before): the listing is
    used again by later scans while ``/etc/passwd``, ``/etc/nsswitch.conf``
    and login.defs are unchanged, for at most LISTED_FOR seconds (a directory
    service's users change without a file changing).  A user added since is
    not in it, so their processes are looked at (the safe side: they are
    skipped only once listed)."""

    def __init__(self, login_defs=LOGIN_DEFS, passwd_files=PASSWD_FILES):
        self._defs = login_defs
        self._passwd_files = tuple(passwd_files)
        self._range = None
        self._known = {}

    def listed(self):
        """The login users the password database enumerates."""
        where = (self._defs, self._passwd_files)
        ids = _identities((self._defs,) + self._passwd_files)
        now = time.monotonic()
        known = _listings.get(where)
        if known is not None and known[0] == ids and now - known[1] < LISTED_FOR:
            listed = known[2]
        else:
            if self._range is None:
                self._range = login_uid_range(self._defs)
            lo, hi = self._range
            listed = frozenset(p.pw_uid for p in pwd.getpwall() if lo <= p.pw_uid <= hi)
            _listings[where] = (ids, now, listed)
        self._known.update(dict.fromkeys(listed, True))  # no second lookup of these by ``in``
        return listed

    def __contains__(self, uid):
        known = self._known.get(uid)
        if known is None:
            if self._range is None:
                self._range = login_uid_range(self._defs)
            lo, hi = self._range
            known = self._known[uid] = lo <= uid <= hi and _in_passwd(uid)
        return known


def _in_passwd(uid):
    try:
        pwd.getpwuid(uid)
        return True
    except KeyError:
        return False


def first_mount_id(head):
    """The first mount id of a mountinfo's first bytes (at most 19 digits
    before a space or their end), or None."""
    first = head.split(b" ", 1)[0]
    return int(first) if first.isdigit() and len(first) < 20 else None


def in_initial_user_namespace(pid, proc=PROC):
    """Whether process ``pid`` is in the initial user namespace: its
    ``uid_map`` (readable without ptrace) is the identity map of all ids.
    False when it cannot be read (gone, or hidden)."""
    try:
        fd = os.open(f"{proc}/{pid}/uid_map", os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        raw = os.read(fd, UID_MAP_MAX)
    except OSError:
        return False
    finally:
        os.close(fd)
    return identity_map(raw)


def identity_map(raw):
    """Whether the text of a uid_map is the identity map of all ids: one
    line of three numbers, 0 0 4294967295 (blank lines aside)."""
    rows = [ln.split() for ln in raw.split(b"\n") if ln.strip()]
    return (len(rows) == 1 and len(rows[0]) == 3 and all(x.isdigit() for x in rows[0])
            and tuple(int(x) for x in rows[0]) == IDENTITY_MAP)


class Namespace:
    """One mount namespace of a census: ``first`` (its first mount's id),
    ``owners`` (uid -> the first pid seen of that owner), ``initial`` (the
    owners, neither root nor login users, with a process in it in the
    initial user namespace)."""

    __slots__ = ("first", "owners", "initial", "_table", "_lock")

    def __init__(self, first):
        self.first = first
        self.owners = {}
        self.initial = set()
        self._table = None
        self._lock = threading.Lock()

    def pid_of(self, uid):
        return self.owners.get(uid)


class Census:
    """The namespaces of the host, by first mount id, in the order first
    seen; ``processes`` counts the processes looked at."""

    def __init__(self, proc=PROC):
        self.proc = proc
        self.namespaces = {}
        self.processes = 0
        self.skipped = 0  # processes of skipped owners (only their owner was read)
        self.table_reads = 0  # whole tables read (each namespace's once at most)

    def add(self, pid, first, owner, login_users):
        """Process ``pid`` of ``owner``, its namespace's first mount ``first``."""
        ns = self.namespaces.get(first)
        if ns is None:
            ns = self.namespaces[first] = Namespace(first)
        ns.owners.setdefault(owner, pid)
        if owner != 0 and owner not in ns.initial and owner not in login_users:
            if in_initial_user_namespace(pid, self.proc):
                ns.initial.add(owner)

    def table(self, ns, parse):
        """The namespace's mount table (``parse``d), read once, through the
        first of its processes whose table still starts with its first
        mount; None when none of them is left."""
        with ns._lock:
            if ns._table is None:
                for pid in ns.owners.values():
                    try:
                        with open(f"{self.proc}/{pid}/mountinfo", "rb", buffering=0) as f:
                            raw = f.readall()
                    except OSError:
                        continue  # gone meanwhile
                    if first_mount_id(raw[:HEAD]) != ns.first:
                        continue  # its pid was reused
                    self.table_reads += 1
                    ns._table = parse(raw)
                    break
                else:
                    ns._table = []
            return ns._table


def compiled_scan():
    """The compiled per-process scan (the ``_cprocscan`` extension), or None
    when it was not built."""
    try:
        from . import _cprocscan
    except ImportError:
        return None
    return _cprocscan


def skip_owners(callers, login_users=None):
    """The owners whose processes a census for ``callers`` need not look at:
    the login users of the password database (UID_MIN..UID_MAX) other than
    those callers.  Such a user's namespace counts only for that user
    (``inuse.Whose``: a login user is never a subordinate id), so their
    processes cost one ``stat`` each instead of a mountinfo read.  A user the
    database does not list (``getpwall`` may not enumerate a directory
    service) is simply looked at."""
    login_users = LoginUsers() if login_users is None else login_users
    return frozenset(u for u in login_users.listed() if u not in callers and u != 0)


def scan(proc=PROC, login_users=None, compiled=None, skip=frozenset()):
    """A Census of ``proc``: with the compiled scan where it is built
    (``compiled`` None), or as told (True: the C scan, False: the Python
    one, the reference and the fallback).  ``skip``: owners whose processes
    are only counted (``skip_owners``), their mountinfo not read."""
    census = Census(proc)
    login_users = LoginUsers() if login_users is None else login_users
    cscan = compiled_scan() if compiled is not False else None
    if compiled and cscan is None:
        raise ValueError("the compiled scan (locald_admin.fs._cprocscan) is not built")
    if cscan is not None:
        census.processes, census.skipped, pairs = cscan.scan(os.fsencode(proc), tuple(sorted(skip)))
        for first, owner, pid, initial in pairs:
            ns = census.namespaces.get(first)
            if ns is None:
                ns = census.namespaces[first] = Namespace(first)
            ns.owners.setdefault(owner, pid)
            if initial and owner != 0 and owner not in login_users:
                ns.initial.add(owner)
        return census
    try:
        entries = os.listdir(proc)
    except OSError:
        return census
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            # The owner of /proc/<pid> (its euid; root if not dumpable), as of
            # every file in it: one stat, before anything else is read.
            owner = os.lstat(f"{proc}/{entry}").st_uid
        except OSError:
            continue  # gone meanwhile
        if owner in skip:
            census.skipped += 1
            continue
        try:
            fd = os.open(f"{proc}/{entry}/mountinfo", os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            continue  # gone meanwhile (ENOENT), or hidden
        try:
            head = os.read(fd, HEAD)
        except OSError:
            # Exiting (EINVAL: no mount namespace any more, so no mount).
            continue
        finally:
            os.close(fd)
        first = first_mount_id(head)
        if first is None:
            continue
        census.processes += 1
        census.add(int(entry), first, owner, login_users)
    return census
