"""The deletion walk: remove a directory tree through held directory fds.

The tree is walked by ``traverse.Traversal``, which holds the directory fds
and owns the defences of the walk itself: every directory entered with
``Fs.open_beneath`` (never a symlink, never a mount), at most
``limits.max_held_fds`` fds open whatever the depth, a closed parent reopened
through ``..`` only if it is the directory recorded on the way down, a moved
branch abandoned, nothing deeper than ``limits.max_depth`` levels entered,
every directory read in batches of at most ``BATCH`` entries, no recursion.
The two limits are a ``Limits``, given to every walk (the mechanism's from
its settings, ``--max-held-fds`` and ``--max-depth``; ``DEFAULT_LIMITS``
otherwise).  What is done with each entry is a visitor:

* ``remove_tree``: the removal (``_Removal``).  Entries are removed with
  ``unlinkat``/``rmdir`` relative to the held fd of the directory that was
  listed: no path string is ever re-resolved from /, and ``unlinkat`` on a
  symlink removes the link, never its target.  A name that turns out to be a
  symlink or a file when it is entered is unlinked as a name.  A directory
  refilled while we walked it is rescanned at most ``MAX_RESCANS`` times.
  The target's final ``rmdir`` happens only if its name still refers to the
  directory that was emptied.  A mount that appears during the walk is left
  in place and reported.  With an ``owners.OwnerRule``, another user's
  directory in a directory the caller could write is left in place and
  reported.
* ``count_tree``: a listing that deletes nothing (``_Count``): how many
  entries of each kind, and the mounts it did not enter.

What a walk reports is bounded too: the first ``MAX_FAILURES`` failures and
mounts are kept with their errnos (and the first failure that is not a
permission error, wherever it comes), the rest are counted.

Names are handled as bytes (as ``getdents64`` lists them: ``dirents``), so
names that are not UTF-8 are removed too; messages escape them.  An entry's
type is the listing's ``d_type``; where the file system does not record it
(DT_UNKNOWN: ext2 without ``filetype``) each visitor looks at the entry with
``Fs.lstat_beneath`` before anything else, never with a plain ``fstatat``
(which would follow a mount point into its file system), and so does the C
walk.
"""

import contextlib
import dataclasses
import errno
import os
import stat
import threading
from itertools import chain, islice

from . import dirents, fsops, traverse

MAX_RESCANS = 3  # an attacker refilling a directory cannot keep us busy forever
BATCH = traverse.DEFAULT_BATCH  # entries of a directory read at a time, at most
MAX_FAILURES = 64  # failures (and mounts) kept with their paths; the rest are counted
# Failures that more privilege can fix: the client asks the mechanism.
PERMISSION_ERRNOS = frozenset({errno.EACCES, errno.EPERM})


@dataclasses.dataclass(frozen=True)
class Limits:
    """How far one walk may go; every walk is given one (no module global
    holds them, so nothing patches them either).

    ``max_held_fds``: fds of ours open at once, whatever the depth and
    width: the oldest are closed and reopened through ``..`` with the
    identity check, so a deep chain cannot exhaust the fd table (V1).  Per
    walk: each parallel helper holds as many.  ``max_depth``: levels below
    the target that are entered; a directory deeper is named and left in
    place, so the state kept per level stays bounded (V13)."""

    max_held_fds: int = 48
    max_depth: int = traverse.DEFAULT_MAX_DEPTH

    def __post_init__(self):
        # What both walks can work with (the C walk refuses the same): the
        # current directory's fd is never closed, so one is enough; depth 0
        # enters nothing below the target.
        if self.max_held_fds < 1 or self.max_depth < 0:
            raise ValueError(f"walk limits: max_held_fds >= 1 and max_depth >= 0, not {self}")


DEFAULT_LIMITS = Limits()  # the client's own attempt, and the mechanism's defaults


# What the removal says where it decided itself (errno None), the same words
# from both walks (this one and ``_cwalk.c``, which is given them).
MOVED = "directory was moved during removal"
REPLACED = "was replaced by another directory during removal"


def too_deep(max_depth):
    return f"deeper than {max_depth} levels; left in place"


def kept_overflow(max_kept):
    return (f"more than {max_kept} of its entries could not be removed, too many to list it again; "
            "the rest left in place")


class Findings:
    """Failures and mounts found by a walk, bounded.  ``failures``: path
    (bytes, relative) -> (errno or None, reason), the first MAX_FAILURES
    and the first that is not EACCES/EPERM; ``more_failures`` counts the
    rest.  ``mounts``: paths of mounts left in place, the first
    MAX_FAILURES; ``more_mounts`` counts the rest."""

    __slots__ = ("failures", "more_failures", "mounts", "more_mounts", "_other")

    def __init__(self):
        # The errno lets the caller tell "permission denied" (the client then
        # asks the mechanism) from any other failure (which it passes on
        # unchanged).
        self.failures = {}
        self.more_failures = 0
        self.mounts = []
        self.more_mounts = 0
        self._other = False  # a failure that is not a permission error is kept

    def keeps(self, err):
        """Whether a failure with errno ``err`` would be kept with its path
        (rather than only counted): a walk builds a deep path only then."""
        return len(self.failures) < MAX_FAILURES or (not self._other and err not in PERMISSION_ERRNOS)

    def keeps_mount(self):
        return len(self.mounts) < MAX_FAILURES

    def fail(self, rel, err, reason=None):
        """Record the first failure at ``rel`` (bytes, or a function that
        makes them: a deep path costs its depth to build, so it is built only
        when kept): an OSError, or an errno (None for a race the walk
        detected itself) and its reason."""
        if isinstance(err, OSError):
            err, reason = err.errno, err.strerror
        other = err not in PERMISSION_ERRNOS
        if len(self.failures) >= MAX_FAILURES and (self._other or not other):
            self.more_failures += 1
            return
        if callable(rel):
            rel = rel()
        if rel in self.failures:
            return
        self.failures[rel] = (err, reason)
        self._other = self._other or other

    def mount(self, rel):
        """Record a mount left in place at ``rel`` (as for ``fail``)."""
        if len(self.mounts) >= MAX_FAILURES:
            self.more_mounts += 1
        else:
            self.mounts.append(rel() if callable(rel) else rel)

    @property
    def failure_count(self):
        return len(self.failures) + self.more_failures

    @property
    def mount_count(self):
        return len(self.mounts) + self.more_mounts


class WalkResult(Findings):
    __slots__ = ("removed", "helpers", "cancelled", "_fold")

    def __init__(self):
        super().__init__()
        self.removed = 0
        # Counters of walks under way (a C walk's _cwalk.Counter, counts
        # only), each folded into ``removed`` when it ends (``fold``).
        self.helpers = []
        self.cancelled = False  # the walk stopped because ``cancel`` was set
        self._fold = threading.Lock()

    @property
    def removed_total(self):
        """Entries removed so far by this walk and its helpers; safe to read
        from another thread while they run (each counter has one writer; a
        counter is folded under the lock, so the total never steps back)."""
        with self._fold:
            return self.removed + sum(h.removed for h in self.helpers)

    def start(self, counter):
        """``counter`` (a ``_cwalk.Counter``) counts a walk that starts now."""
        with self._fold:
            self.helpers.append(counter)

    def fold(self, counter):
        """``counter`` (in ``helpers``) has stopped: add it to ``removed``."""
        with self._fold:
            self.helpers.remove(counter)
            self.removed += counter.removed


_DT_DIR, _DT_UNKNOWN = dirents.DT_DIR, dirents.DT_UNKNOWN
_WITH_OPENAT2 = fsops.Fs(openat2=True)  # the parallel split's: it runs with the C walk only


def _is_dir(dir_fd, entry):
    """For the parallel split: whether ``entry`` (of ``dir_fd``) is a
    directory: its ``d_type``, or where the file system does not record it
    (DT_UNKNOWN) an ``lstat_beneath`` of it (O_PATH, RESOLVE_NO_XDEV: never
    a plain ``fstatat``); False when that fails (gone, a mount point: the
    walk that follows finds out for itself)."""
    d_type = entry.d_type
    if d_type != _DT_UNKNOWN:
        return d_type == _DT_DIR
    try:
        return stat.S_ISDIR(_WITH_OPENAT2.lstat_beneath(dir_fd, entry.bname).st_mode)
    except OSError:
        return False


def _subdirs(dir_fd, it, scan=None):
    """The names of the subdirectories of ``dir_fd``, read from ``it`` in
    batches; with ``scan``, none more once that many entries were read
    without finding two (a directory of files: the walk is faster alone)."""
    n, seen, found = traverse.FIRST_BATCH, 0, 0
    while True:
        batch = list(islice(it, n))
        for e in batch:
            if _is_dir(dir_fd, e):
                found += 1
                yield e.bname
        seen += len(batch)
        if len(batch) < n or (scan is not None and seen >= scan and found < 2):
            return
        n = min(BATCH, 2 * n)


SPLIT_DESCENT = 64  # single-subdirectory levels the parallel split descends through, at most
SPLIT_SCAN = 2048  # entries of a level the split reads looking for two subdirectories, at most


def remove_in_parallel(dir_fd, result, threads, fs, owners=None, cancel=None, limits=DEFAULT_LIMITS):
    """Before the ordinary walk of the target ``dir_fd``: with the C walk
    (``fs.compiled``) and ``threads`` >= 2, remove the subdirectories of
    the first level that has two or more with ``threads`` threads.

    From ``dir_fd`` down through levels with a single subdirectory (at most
    SPLIT_DESCENT, and looking at no more than SPLIT_SCAN entries of a level
    for its first two; each opened with ``Fs.open_beneath`` and the owner rule
    applied, as the walk would) to the first level with two or more; each
    of its subdirectories is then removed by one C walk (GIL released)
    relative to that level's held fd, in one of ``threads`` Python threads,
    with the owner rule and ``limits`` (``Limits``: each helper holds up to
    ``max_held_fds``, and goes as deep as is left of ``max_depth``, which
    counts from ``dir_fd``).  The names come from one listing shared by the
    threads, in batches.  Only counts are kept (into ``result``, readable
    while they run): whatever a helper could not remove, and every refusal,
    is still there for the ordinary single-threaded walk that follows,
    which finds it again and reports it.
    With ``cancel`` set, no helper starts another subdirectory and
    ``result.cancelled`` is set.  The Python walk is single-threaded (it is
    the fallback and the reference): with it this does nothing.  Returns
    the number of entries removed.
    """
    if threads < 2 or not fs.compiled:
        return 0
    max_depth = limits.max_depth
    before = result.removed
    level, opened, depth = dir_fd, [], 0
    try:
        while True:
            if depth >= max_depth or (cancel is not None and cancel.is_set()):
                return 0  # its subdirectories would be too deep: the walk says so
            with contextlib.closing(dirents.listing(level)) as it:
                names = _subdirs(level, it, SPLIT_SCAN)
                first = list(islice(names, 2))
                if len(first) == 1:
                    if depth >= SPLIT_DESCENT:
                        return 0
                    try:
                        cfd = fs.open_beneath(level, first[0])
                    except OSError:
                        return 0  # a symlink, mount or gone: the ordinary walk deals with it
                    if owners is not None and owners.refusal(level, os.fstat(cfd)) is not None:
                        os.close(cfd)
                        return 0
                    if opened:  # only the current level's fd is needed
                        os.close(opened.pop())
                    opened.append(cfd)
                    level, depth = cfd, depth + 1
                    continue
                if not first:
                    return 0
                below = dataclasses.replace(limits, max_depth=max_depth - depth - 1)
                _split(level, chain(first, names), result, threads, fs, owners, cancel, below)
                return result.removed - before
    finally:
        for fd in opened:
            os.close(fd)


def _split(level, pending, result, threads, fs, owners, cancel, limits):
    lock = threading.Lock()
    errors = []  # of any thread: the others stop, the caller's thread raises the first

    def work():
        try:
            while not errors:
                if cancel is not None and cancel.is_set():
                    result.cancelled = True
                    return
                with lock:
                    name = next(pending, None)
                if name is None:
                    return
                try:
                    cfd = fs.open_beneath(level, name)
                except OSError:
                    continue  # a symlink, mount or gone: the ordinary walk deals with it
                try:
                    # Counts only: the ordinary walk reports what is left.
                    compiled_remove_tree(level, name, cfd, result, owners, cancel, False, limits,
                                         findings=Findings())
                finally:
                    os.close(cfd)
        except BaseException as e:
            errors.append(e)

    helpers = [threading.Thread(target=work, daemon=True) for _ in range(threads - 1)]
    for h in helpers:
        h.start()
    try:
        work()
    finally:
        for h in helpers:
            h.join()
    if errors:
        raise errors[0]


# -- the removal: a visitor of the traversal ---------------------------------------

class _RemovalFrame(traverse.Frame):
    __slots__ = ("rescans", "incomplete")

    def __init__(self, fd, st, name, dino=None):
        # traverse.Frame.__init__, inlined: this runs once per directory.
        self.fd = fd
        self.dev = st.st_dev
        self.ino = ino = st.st_ino
        self.dino = ino if dino is None or dino == ino else dino
        self.name = name
        self.it = self.batch = self.kept = None
        self.pos = self.rescans = 0
        self.done = self.incomplete = False  # incomplete: something below could not be removed


class _Removal(traverse.Visitor):
    """Unlink what is not a directory, rmdir a directory after its entries;
    everything relative to the held fd of the directory that was listed."""

    Frame = _RemovalFrame

    def __init__(self, result, owners=None, keep_dir=False):
        self.result = result
        self.owners = owners
        self.keep_dir = keep_dir
        if owners is None:
            self.on_enter = None  # no rule: every directory is walked

    def on_list_failed(self, t, f, err):
        self.result.fail(t.rel, err)
        f.incomplete = True

    def on_entry(self, t, f, child, entry):
        d_type = entry.d_type
        if d_type == _DT_DIR:
            return True
        if d_type == _DT_UNKNOWN:
            # Not recorded by the file system (ext2 -O ^filetype): look at
            # the entry itself, before any unlink (whose EPERM, immutable or
            # append-only, would come before EISDIR and hide a directory),
            # and never with a plain fstatat, which would follow a mount
            # point into its file system (a hung FUSE daemon); the C walk
            # does the same.
            try:
                mode = t.fs.lstat_beneath(f.fd, child, parent_mnt=t.mnt).st_mode
            except OSError as e:
                why = fsops.refusal(e)
                if why is fsops.GONE:
                    return False
                if why is fsops.MOUNT:  # a mount point (M3), of any type: left in place
                    self.result.mount(lambda: t.rel(child))
                else:
                    self.result.fail(lambda: t.rel(child), e)
                f.incomplete = True
                t.keep(f, entry.inode())
                return False
            if stat.S_ISDIR(mode):
                return True
        try:
            # unlinkat relative to the held fd of the listed directory: a
            # symlink goes as a name, its target is never touched; a hard
            # link to a file outside goes, the file stays (S11).
            os.unlink(child, dir_fd=f.fd)
            self.result.removed += 1
        except FileNotFoundError:
            pass
        except IsADirectoryError:
            return True  # it became a directory: handle it as one
        except OSError as e:
            self.result.fail(lambda: t.rel(child), e)
            f.incomplete = True
            t.keep(f, entry.inode())
        return False

    def on_enter(self, t, parent, child, st):
        # Another user's directory where the caller could have had it put
        # (S13): left in place, with everything in it.
        if self.owners is None:
            return True
        why = self.owners.refusal(parent.fd, st)
        if why is None:
            return True
        self.result.fail(b"" if parent is t.stack[0] else lambda: t.rel(child), None, why)
        parent.incomplete = True
        return False

    def on_enter_failed(self, t, f, child, e):
        if fsops.refusal(e) is fsops.NOT_FOLLOWED:
            # Not a directory any more: a symlink or a file was swapped in
            # (R1).  Remove the name itself; never follow it.
            try:
                os.unlink(child, dir_fd=f.fd)
                self.result.removed += 1
                return True
            except FileNotFoundError:
                return True
            except OSError as e2:
                e = e2
        if fsops.refusal(e) is fsops.MOUNT:  # a mount appeared on it (M3): left in place
            self.result.mount(lambda: t.rel(child))
        else:
            self.result.fail(lambda: t.rel(child), e)
        f.incomplete = True
        return False

    def on_too_deep(self, t, f, child):
        self.result.fail(lambda: t.rel(child), None, too_deep(t.max_depth))
        f.incomplete = True

    def on_leave(self, t, f, parent):
        result = self.result
        if f.incomplete:
            parent.incomplete = True
            t.keep(parent, f.dino)
            return False
        if f is t.target:
            if self.keep_dir:
                # Kept, emptied: a listing that found nothing says it is
                # empty (what rmdir would say); one that found entries is
                # looked at again, at most MAX_RESCANS times (R5).
                if f.pos:
                    if f.rescans < MAX_RESCANS:
                        f.rescans += 1
                        return True
                    result.fail(b"", errno.ENOTEMPTY, os.strerror(errno.ENOTEMPTY))
                return False
            if not _same_entry(t.fs, parent.fd, f):
                # The target's name in its parent now names another
                # directory (swapped after we opened it, R4): leave that.
                result.fail(b"", None, REPLACED)
                return False
        try:
            os.rmdir(f.name, dir_fd=parent.fd)
            result.removed += 1
        except FileNotFoundError:
            pass
        except OSError as e:
            if e.errno == errno.ENOTEMPTY and f.rescans < MAX_RESCANS:
                f.rescans += 1  # refilled while we walked: look again (R5)
                return True
            if e.errno == errno.EBUSY:  # a mount appeared on it (M3): left in place
                result.mount(t.rel)
            else:
                result.fail(t.rel, e)
            parent.incomplete = True
            t.keep(parent, f.dino)
        return False

    def on_abandon(self, t, survivor, rel):
        self.result.fail(rel, None, MOVED)
        survivor.incomplete = True

    def on_resume(self, t, f):
        # What was removed is gone; what was left in place is skipped (kept).
        # A directory that left too many in place to remember is not listed
        # again: that ends every walk, even one whose child, deeper than the
        # fd bound, cannot be emptied and so closes this fd each time.
        if f.kept is traverse.OVERFLOW:
            self.result.fail(t.rel, None, kept_overflow(traverse.MAX_KEPT))
            f.incomplete = True
            return None
        return 0


def remove_tree(parent_fd, name, dir_fd, result=None, fs=None, owners=None, cancel=None, keep_dir=False,
                limits=DEFAULT_LIMITS):
    """Remove the directory ``name`` of ``parent_fd`` and everything below it.

    ``dir_fd`` is an open (O_RDONLY) fd of that directory, obtained with
    ``Fs.open_beneath``; it stays owned by the caller, as does
    ``parent_fd``.  ``owners``: an ``owners.OwnerRule`` applied to every
    directory entered, this one included (None: no rule).  ``cancel``: an
    object with ``is_set()``; once set the walk stops and
    ``result.cancelled`` is True.  ``keep_dir``: remove everything below
    the directory but not the directory itself.  ``limits``: the fds held
    at once and the levels below it that are entered (``Limits``).  Returns
    a WalkResult; paths in it are relative to the removed directory, which
    itself is ``b""``.

    ``fs.compiled`` chooses the walk: the C one (``_cwalk.c``) or the
    Python one (``python_remove_tree``, the reference); same semantics,
    same reports (tests/test_walk_differential.py).
    """
    result = WalkResult() if result is None else result
    fs = fsops.default() if fs is None else fs
    if fs.compiled:
        compiled_remove_tree(parent_fd, name, dir_fd, result, owners, cancel, keep_dir, limits)
    else:
        python_remove_tree(parent_fd, name, dir_fd, result, fs, owners, cancel, keep_dir, limits)
    return result


def python_remove_tree(parent_fd, name, dir_fd, result, fs, owners, cancel, keep_dir, limits):
    """The Python walk: ``traverse.Traversal`` with the ``_Removal`` visitor."""
    t = traverse.Traversal(parent_fd, name, dir_fd, limits.max_held_fds, fs, max_depth=limits.max_depth,
                           batch=BATCH, cancel=cancel)
    t.run(_Removal(result, owners, keep_dir))
    if t.cancelled:
        result.cancelled = True


def compiled_remove_tree(parent_fd, name, dir_fd, result, owners, cancel, keep_dir, limits, findings=None):
    """The C walk (``_cwalk.remove_tree``), with the GIL released while it
    runs.  Its count is a ``_cwalk.Counter`` in ``result.helpers`` while it
    runs (so ``removed_total`` is current), folded into ``result.removed``
    at the end.  The owner rule stays in Python: the C walk enters root's
    and the caller's directories itself and asks ``owners.refusal`` about
    any other.  ``findings``: where failures and mounts go if not into
    ``result`` (the parallel helpers': dropped)."""
    cwalk = fsops.compiled_walk()
    counter = cwalk.Counter()
    refuse = None if owners is None else (lambda pfd, cfd: owners.refusal(pfd, os.fstat(cfd)))
    reasons = (too_deep(limits.max_depth), kept_overflow(traverse.MAX_KEPT), MOVED, REPLACED)
    result.start(counter)
    try:
        cancelled = cwalk.remove_tree(parent_fd, name, dir_fd, result if findings is None else findings, counter,
                                      -1 if owners is None else owners.uid, refuse, cancel, keep_dir,
                                      limits.max_depth, limits.max_held_fds, MAX_RESCANS, traverse.MAX_KEPT,
                                      reasons)
    finally:
        result.fold(counter)
    if cancelled:
        result.cancelled = True


def _same_entry(fs, dirfd, frame):
    """Whether ``frame.name`` in ``dirfd`` is still the directory we hold."""
    try:
        st = fs.lstat_beneath(dirfd, frame.name)
    except FileNotFoundError:
        return True  # gone already: rmdir will say so
    except OSError:
        return False  # a mount point now, or unreadable: leave it
    return (st.st_dev, st.st_ino) == (frame.dev, frame.ino)


# -- a listing that deletes nothing: another visitor of the traversal ----------------

class TreeCount(Findings):
    """What ``count_tree`` saw.  ``dirs`` counts the directories listed to
    the end, the target included, so on a quiet tree ``total`` is what
    ``remove_tree`` would remove.  ``mounts`` and ``failures`` as in
    WalkResult (paths relative to the target)."""

    __slots__ = ("files", "dirs", "symlinks", "others")

    def __init__(self):
        super().__init__()
        self.files = self.dirs = self.symlinks = self.others = 0

    @property
    def total(self):
        return self.files + self.dirs + self.symlinks + self.others


_DIR, _FILE, _SYMLINK, _OTHER = "dir", "file", "symlink", "other"


# The kind of a listed entry whose file system records it (d_type).
_KINDS = {dirents.DT_DIR: _DIR, dirents.DT_REG: _FILE, dirents.DT_LNK: _SYMLINK}


def _kind_of(mode):
    if stat.S_ISREG(mode):
        return _FILE
    if stat.S_ISLNK(mode):
        return _SYMLINK
    return _DIR if stat.S_ISDIR(mode) else _OTHER


class _Count(traverse.Visitor):
    def __init__(self, count):
        self.count = count

    def on_list_failed(self, t, f, err):
        self.count.fail(t.rel, err)

    def on_entry(self, t, f, child, entry):
        d_type = entry.d_type
        if d_type != _DT_UNKNOWN:
            return self._counted(_KINDS.get(d_type, _OTHER))
        # Not recorded: looked at as the removal does (never a plain fstatat).
        c = self.count
        try:
            return self._counted(_kind_of(t.fs.lstat_beneath(f.fd, child, parent_mnt=t.mnt).st_mode))
        except OSError as e:
            why = fsops.refusal(e)
            if why is fsops.MOUNT:  # of any type: a mount point is not looked into
                c.mount(lambda: t.rel(child))
            elif why is not fsops.GONE:
                c.fail(lambda: t.rel(child), e)
            return False

    def _counted(self, kind):
        c = self.count
        if kind is _DIR:
            return True
        if kind is _FILE:
            c.files += 1
        elif kind is _SYMLINK:
            c.symlinks += 1
        elif kind is _OTHER:
            c.others += 1
        return False

    def on_enter_failed(self, t, f, child, e):
        c = self.count
        if fsops.refusal(e) is fsops.NOT_FOLLOWED:
            # Listed as a directory, now a symlink or a file (swapped in):
            # count what is there, without following it or crossing a mount.
            try:
                kind = _kind_of(t.fs.lstat_beneath(f.fd, child, parent_mnt=t.mnt).st_mode)
            except OSError as e2:
                e = e2
            else:
                if kind is _DIR:  # and back again: its entries are not counted
                    c.fail(lambda: t.rel(child), None, "kept changing type while being listed")
                else:
                    self._counted(kind)
                return False
        why = fsops.refusal(e)
        if why is fsops.GONE:
            return False
        if why is fsops.MOUNT:
            c.mount(lambda: t.rel(child))
        else:
            c.fail(lambda: t.rel(child), e)
        return False

    def on_too_deep(self, t, f, child):
        self.count.fail(lambda: t.rel(child), None, f"deeper than {t.max_depth} levels; not listed")

    def on_leave(self, t, f, parent):
        self.count.dirs += 1
        return False

    def on_abandon(self, t, survivor, rel):
        self.count.fail(rel, None, "directory was moved during listing")


def count_tree(parent_fd, name, dir_fd, fs=None, limits=DEFAULT_LIMITS):
    """Count the entries of the directory ``name`` of ``parent_fd`` and
    everything below it, deleting nothing; return a TreeCount.

    ``dir_fd`` as for ``remove_tree``: the directory opened with
    ``Fs.open_beneath``, owned by the caller.  The walk is the removal's
    (same defences, the same ``limits`` on fds and depth): no symlink is
    followed and no mount entered; a directory that is a mount point is
    listed in ``mounts``.  Mounts on non-directories (a bind-mounted file)
    are counted as what they look like (``mounts.mounts_at_or_below`` finds
    every mount), but where the file system does not record entry types: an
    entry is then looked at without crossing a mount, and any mount point is
    listed in ``mounts``.
    """
    count = TreeCount()
    traverse.Traversal(parent_fd, name, dir_fd, limits.max_held_fds, fs, max_depth=limits.max_depth,
                       batch=BATCH).run(_Count(count))
    return count
