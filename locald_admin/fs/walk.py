"""The deletion walk: remove a directory tree through held directory fds.

The tree is walked by ``traverse.Traversal``, which holds the directory fds
and owns the defences of the walk itself: every directory entered with
``fsops.open_beneath`` (never a symlink, never a mount), at most
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

Names are handled as bytes (via surrogateescape), so names that are not
UTF-8 are removed too; messages escape them.
"""

import errno
import os
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


def remove_subdirs_in_parallel(dir_fd, result, threads, mnt=None):
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
    if mnt is None and not fsops.openat2_available():
        mnt = fsops.mount_id(dir_fd)
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
                cfd = fsops.open_beneath(dir_fd, name, parent_mnt=mnt)
            except OSError:
                continue  # a symlink, mount or gone: the ordinary walk deals with it
            try:
                remove_tree(dir_fd, name, cfd, result=mine, mnt=mnt)
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
        super().__init__(fd, st, name)
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
            # unlinkat relative to the held fd: a symlink goes as a name,
            # its target is never touched (S4, S11).
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
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
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
        if e.errno == errno.EXDEV:  # a mount appeared on it (M3): left in place
            self.result.mounts.append(t.rel(child))
        else:
            self.result.fail(t.rel(child), e)
        f.incomplete = True

    def on_leave(self, t, f, parent):
        result = self.result
        if f.incomplete:
            parent.incomplete = True
        elif f is t.target and not _same_entry(parent.fd, f):
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
                if e.errno == errno.EBUSY:  # a mount appeared on it
                    result.mounts.append(t.rel())
                else:
                    result.fail(t.rel(), e)
                parent.incomplete = True
        return False

    def on_abandon(self, t, survivor, rel):
        self.result.fail(rel, None, "directory was moved during removal")
        survivor.incomplete = True


def remove_tree(parent_fd, name, dir_fd, result=None, mnt=None):
    """Remove the directory ``name`` of ``parent_fd`` and everything below it.

    ``dir_fd`` is an open (O_RDONLY) fd of that directory, obtained with
    ``fsops.open_beneath``; it stays owned by the caller, as does
    ``parent_fd``.  Returns a WalkResult; paths in it are relative to the
    removed directory, which itself is ``b""``.
    """
    result = WalkResult() if result is None else result
    traverse.Traversal(parent_fd, name, dir_fd, MAX_HELD_FDS, mnt).run(_Removal(result))
    return result


def _same_entry(dirfd, frame):
    """Whether ``frame.name`` in ``dirfd`` is still the directory we hold."""
    try:
        st = fsops.lstat_beneath(dirfd, frame.name)
    except FileNotFoundError:
        return True  # gone already: rmdir will say so
    except OSError:
        return False  # a mount point now, or unreadable: leave it
    return (st.st_dev, st.st_ino) == (frame.dev, frame.ino)
