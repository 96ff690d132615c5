"""The deletion walk: remove a directory tree through held directory fds.

The tree is walked by ``traverse.Traversal``, which holds the directory fds
and owns the defences of the walk itself: every directory entered with
``Fs.open_beneath`` (never a symlink, never a mount), at most
``MAX_HELD_FDS`` fds open whatever the depth, a closed parent reopened
through ``..`` only if it is the directory recorded on the way down, a moved
branch abandoned, no recursion.  What is done with each entry is a visitor:

* ``remove_tree``: the removal (``_Removal``).  Entries are removed with
  ``unlinkat``/``rmdir`` relative to the held fd of the directory that was
  listed: no path string is ever re-resolved from /, and ``unlinkat`` on a
  symlink removes the link, never its target.  A name that turns out to be a
  symlink or a file when it is entered is unlinked as a name.  A directory
  refilled while we walked it is rescanned at most ``MAX_RESCANS`` times.
  The target's final ``rmdir`` happens only if its name still refers to the
  directory that was emptied.  A mount that appears during the walk is left
  in place and reported.
* ``count_tree``: a listing that deletes nothing (``_Count``): how many
  entries of each kind, and the mounts it did not enter.

Names are handled as bytes (via surrogateescape), so names that are not
UTF-8 are removed too; messages escape them.
"""

import errno
import os
import stat
import threading

from . import fsops, traverse

MAX_HELD_FDS = 48
MAX_RESCANS = 3  # an attacker refilling a directory cannot keep us busy forever


class WalkResult:
    __slots__ = ("removed", "failures", "mounts", "helpers")

    def __init__(self):
        self.removed = 0
        # path (bytes, relative) -> (errno or None, reason).  The errno lets
        # the caller tell "permission denied" (the client then asks the
        # mechanism) from any other failure (which it passes on unchanged).
        self.failures = {}
        self.mounts = []  # paths (bytes, relative) of mounts left in place
        self.helpers = []  # WalkResults of parallel helper threads (counts only)

    def fail(self, rel, err, reason=None):
        """Record the first failure at ``rel``: an OSError, or an errno
        (None for a race the walk detected itself) and its reason."""
        if isinstance(err, OSError):
            err, reason = err.errno, err.strerror
        self.failures.setdefault(rel, (err, reason))

    @property
    def removed_total(self):
        """Entries removed so far by this walk and its helpers; safe to read
        from another thread while they run (each counter has one writer)."""
        return self.removed + sum(h.removed for h in self.helpers)


def remove_subdirs_in_parallel(dir_fd, result, threads, fs=None):
    """Empty and remove the subdirectories of ``dir_fd`` with ``threads``
    threads (this one included) before the ordinary walk of ``dir_fd``.

    Each subdirectory is walked by ``remove_tree`` relative to the same held
    ``dir_fd``, so every safety property of the walk holds per thread.
    Only counts are kept: whatever a helper could not remove is still there
    for the ordinary walk that follows, which finds it again and reports it.
    unlinkat and getdents release the GIL, so the threads overlap in the
    kernel.  Returns the number of entries removed.
    """
    if threads < 2:
        return 0
    names = [name for name, is_dir in _list(dir_fd) if is_dir]
    if len(names) < 2:
        return 0
    fs = fsops.default() if fs is None else fs
    mnt = fs.parent_mount(dir_fd)
    pending = iter(names)
    lock = threading.Lock()
    counts = [WalkResult() for _ in range(min(threads, len(names)))]
    result.helpers.extend(counts)

    def work(mine):
        while True:
            with lock:
                name = next(pending, None)
            if name is None:
                return
            try:
                cfd = fs.open_beneath(dir_fd, name, parent_mnt=mnt)
            except OSError:
                continue  # a symlink, mount or gone: the ordinary walk deals with it
            try:
                remove_tree(dir_fd, name, cfd, result=mine, fs=fs)
            finally:
                os.close(cfd)

    helpers = [threading.Thread(target=work, args=(c,), daemon=True) for c in counts[1:]]
    for h in helpers:
        h.start()
    try:
        work(counts[0])
    finally:
        for h in helpers:
            h.join()
    removed = sum(c.removed for c in counts)
    del result.helpers[-len(counts):]
    result.removed += removed
    return removed


def _list(fd):
    entries = []
    with os.scandir(fd) as it:
        for e in it:
            try:
                is_dir = e.is_dir(follow_symlinks=False)
            except OSError:
                is_dir = False  # gone already; unlink will say ENOENT
            entries.append((os.fsencode(e.name), is_dir))
    return entries


# -- the removal: a visitor of the traversal ---------------------------------------

class _RemovalFrame(traverse.Frame):
    __slots__ = ("rescans", "incomplete")

    def __init__(self, fd, st, name):
        # traverse.Frame.__init__, inlined: this runs once per directory.
        self.fd = fd
        self.dev, self.ino = st.st_dev, st.st_ino
        self.name = name
        self.pending = None
        self.rescans = 0
        self.incomplete = False  # something below could not be removed


class _Removal(traverse.Visitor):
    """Unlink what is not a directory, rmdir a directory after its entries;
    everything relative to the held fd of the directory that was listed."""

    Frame = _RemovalFrame

    def __init__(self, result):
        self.result = result

    def list(self, fd):
        return _list(fd)  # looked up per call: the tests replace it

    def on_list_failed(self, t, f, err):
        self.result.fail(t.rel(), err)
        f.incomplete = True

    def on_entry(self, t, f, child, is_dir):
        if is_dir:
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
            self.result.fail(t.rel(child), e)
            f.incomplete = True
        return False

    def on_enter_failed(self, t, f, child, e):
        if fsops.refusal(e) is fsops.NOT_FOLLOWED:
            # Not a directory any more: a symlink or a file was swapped in
            # (R1).  Remove the name itself; never follow it.
            try:
                os.unlink(child, dir_fd=f.fd)
                self.result.removed += 1
                return
            except FileNotFoundError:
                return
            except OSError as e2:
                e = e2
        if fsops.refusal(e) is fsops.MOUNT:  # a mount appeared on it (M3): left in place
            self.result.mounts.append(t.rel(child))
        else:
            self.result.fail(t.rel(child), e)
        f.incomplete = True

    def on_leave(self, t, f, parent):
        result = self.result
        if f.incomplete:
            parent.incomplete = True
        elif f is t.target and not _same_entry(t.fs, parent.fd, f):
            # The target's name in its parent now names another directory
            # (swapped after we opened it, R4): leave that alone.
            result.fail(b"", None, "was replaced by another directory during removal")
        else:
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
                    result.mounts.append(t.rel())
                else:
                    result.fail(t.rel(), e)
                parent.incomplete = True
        return False

    def on_abandon(self, t, survivor, rel):
        self.result.fail(rel, None, "directory was moved during removal")
        survivor.incomplete = True


def remove_tree(parent_fd, name, dir_fd, result=None, fs=None):
    """Remove the directory ``name`` of ``parent_fd`` and everything below it.

    ``dir_fd`` is an open (O_RDONLY) fd of that directory, obtained with
    ``Fs.open_beneath``; it stays owned by the caller, as does
    ``parent_fd``.  Returns a WalkResult; paths in it are relative to the
    removed directory, which itself is ``b""``.
    """
    result = WalkResult() if result is None else result
    traverse.Traversal(parent_fd, name, dir_fd, MAX_HELD_FDS, fs).run(_Removal(result))
    return result


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

class TreeCount:
    """What ``count_tree`` saw.  ``dirs`` counts the directories listed to
    the end, the target included, so on a quiet tree ``total`` is what
    ``remove_tree`` would remove.  ``mounts`` and ``failures`` as in
    WalkResult (paths relative to the target)."""

    __slots__ = ("files", "dirs", "symlinks", "others", "mounts", "failures")

    def __init__(self):
        self.files = self.dirs = self.symlinks = self.others = 0
        self.mounts = []  # directories that are mount points: not entered
        self.failures = {}

    fail = WalkResult.fail

    @property
    def total(self):
        return self.files + self.dirs + self.symlinks + self.others


_DIR, _FILE, _SYMLINK, _OTHER = "dir", "file", "symlink", "other"


def _list_kinds(fd):
    """Like ``_list``, with the kind of each entry (from the directory entry
    itself where the file system records it; None: gone meanwhile)."""
    entries = []
    with os.scandir(fd) as it:
        for e in it:
            try:
                if e.is_dir(follow_symlinks=False):
                    kind = _DIR
                elif e.is_symlink():
                    kind = _SYMLINK
                elif e.is_file(follow_symlinks=False):
                    kind = _FILE
                else:
                    kind = _OTHER
            except OSError:
                kind = None
            entries.append((os.fsencode(e.name), kind))
    return entries


def _kind_of(mode):
    if stat.S_ISREG(mode):
        return _FILE
    if stat.S_ISLNK(mode):
        return _SYMLINK
    return _DIR if stat.S_ISDIR(mode) else _OTHER


class _Count(traverse.Visitor):
    def __init__(self, count):
        self.count = count

    def list(self, fd):
        return _list_kinds(fd)

    def on_list_failed(self, t, f, err):
        self.count.fail(t.rel(), err)

    def on_entry(self, t, f, child, kind):
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
                    c.fail(t.rel(child), None, "kept changing type while being listed")
                else:
                    self.on_entry(t, f, child, kind)
                return
        why = fsops.refusal(e)
        if why is fsops.GONE:
            return
        if why is fsops.MOUNT:
            c.mounts.append(t.rel(child))
        else:
            c.fail(t.rel(child), e)

    def on_leave(self, t, f, parent):
        self.count.dirs += 1
        return False

    def on_abandon(self, t, survivor, rel):
        self.count.fail(rel, None, "directory was moved during listing")


def count_tree(parent_fd, name, dir_fd, fs=None):
    """Count the entries of the directory ``name`` of ``parent_fd`` and
    everything below it, deleting nothing; return a TreeCount.

    ``dir_fd`` as for ``remove_tree``: the directory opened with
    ``Fs.open_beneath``, owned by the caller.  The walk is the removal's
    (same defences, same fd bound): no symlink is followed and no mount
    entered; a directory that is a mount point is listed in ``mounts``.
    Mounts on non-directories (a bind-mounted file) are counted as what
    they look like: ``mounts.mounts_at_or_below`` finds every mount.
    """
    count = TreeCount()
    traverse.Traversal(parent_fd, name, dir_fd, MAX_HELD_FDS, fs).run(_Count(count))
    return count
