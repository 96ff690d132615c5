"""The deletion walk: remove a directory tree through held directory fds.

Safety properties (each one stops a known attack):

* Every directory is entered with ``fsops.open_beneath`` relative to the fd
  of its parent: a symlink swapped in for a directory is never followed
  (CVE-2018-6954, CVE-2022-21658 style), and a mount point is never entered
  (bind mounts share st_dev, so only a mount-aware open can tell).
* Entries are removed with ``unlinkat``/``rmdir`` relative to the held fd of
  the directory that was listed: no path string is ever re-resolved from /.
  ``unlinkat`` on a symlink removes the link, never its target.
* At most ``MAX_HELD_FDS`` directory fds are open, whatever the depth.  A
  parent whose fd was closed is reopened by climbing ``..`` from its child
  and is accepted only if its ``(st_dev, st_ino)`` is the one recorded on the
  way down (as gnulib's fts does).  A mismatch means the tree was moved while
  we walked it: that branch ends with an error, nothing outside is touched.
* Iterative, so a 10,000-deep chain does not hit Python's recursion limit.
* Names are handled as bytes (via surrogateescape), so names that are not
  UTF-8 are removed too; messages escape them.
"""

import errno
import os
import stat
import threading

from . import fsops

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


class _Frame:
    __slots__ = ("fd", "dev", "ino", "name", "pending", "rescans", "incomplete")

    def __init__(self, fd, st, name):
        self.fd = fd
        self.dev, self.ino = st.st_dev, st.st_ino
        self.name = name
        self.pending = None  # names still to handle: list of (name, is_dir)
        self.rescans = 0
        self.incomplete = False  # something below could not be removed


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


def _rel(stack, name=None):
    """The path of ``name`` in the top frame, relative to the removed directory."""
    parts = [f.name for f in stack[2:]]
    if name is not None:
        parts.append(name)
    return b"/".join(parts)


def remove_tree(parent_fd, name, dir_fd, result=None, mnt=None):
    """Remove the directory ``name`` of ``parent_fd`` and everything below it.

    ``dir_fd`` is an open (O_RDONLY) fd of that directory, obtained with
    ``fsops.open_beneath``; it stays owned by the caller, as does
    ``parent_fd``.  Returns a WalkResult; paths in it are relative to the
    removed directory, which itself is ``b""``.
    """
    result = WalkResult() if result is None else result
    if mnt is None and not fsops.openat2_available():
        mnt = fsops.mount_id(dir_fd)  # the fallback compares mount ids
    # stack[0]: the parent, stack[1]: the target (both fds owned by the
    # caller); stack[2:]: directories below, whose fds are ours.  Of those,
    # stack[2:first_open] have had their fds closed to bound the fd count.
    stack = [_Frame(parent_fd, os.fstat(parent_fd), b""), _Frame(dir_fd, os.fstat(dir_fd), name)]
    first_open = 2
    try:
        while len(stack) > 1:
            f = stack[-1]
            if f.pending is None:
                try:
                    f.pending = _list(f.fd)
                except OSError as e:
                    result.fail(_rel(stack), e)
                    f.pending, f.incomplete = [], True
            if f.pending:
                child, is_dir = f.pending.pop()
                if not is_dir:
                    try:
                        os.unlink(child, dir_fd=f.fd)
                        result.removed += 1
                        continue
                    except FileNotFoundError:
                        continue
                    except IsADirectoryError:
                        pass  # it became a directory: handle it as one
                    except OSError as e:
                        result.fail(_rel(stack, child), e)
                        f.incomplete = True
                        continue
                cfd = _enter(f, child, stack, result, mnt)
                if cfd is not None:
                    stack.append(_Frame(cfd, os.fstat(cfd), child))
                    if len(stack) - first_open > MAX_HELD_FDS:
                        os.close(stack[first_open].fd)
                        stack[first_open].fd = None
                        first_open += 1
                continue

            # f is empty as far as we know: remove it from its parent.
            parent = stack[-2]
            if parent.fd is None:
                if not _climb(f, parent):
                    result.fail(_rel(stack[:-1]), None, "directory was moved during removal")
                    # Abandon the branch: every closed ancestor goes with it.
                    os.close(stack.pop().fd)
                    while stack[-1].fd is None:
                        stack.pop()
                    stack[-1].incomplete = True
                    first_open = len(stack)
                    continue
                first_open = len(stack) - 2
            if f.incomplete:
                parent.incomplete = True
            elif len(stack) == 2 and not _same_entry(parent.fd, f):
                # The target's name in its parent now names another
                # directory (swapped after we opened it): leave that alone.
                result.fail(b"", None, "was replaced by another directory during removal")
            else:
                try:
                    os.rmdir(f.name, dir_fd=parent.fd)
                    result.removed += 1
                except FileNotFoundError:
                    pass
                except OSError as e:
                    if e.errno == errno.ENOTEMPTY and f.rescans < MAX_RESCANS:
                        f.rescans += 1  # refilled while we walked: look again
                        f.pending = None
                        continue
                    if e.errno == errno.EBUSY:  # a mount appeared on it
                        result.mounts.append(_rel(stack))
                    else:
                        result.fail(_rel(stack), e)
                    parent.incomplete = True
            stack.pop()
            if len(stack) >= 2:
                os.close(f.fd)
    finally:
        for f in stack[2:]:
            if f.fd is not None:
                os.close(f.fd)
    return result


def _enter(f, child, stack, result, mnt):
    """Open directory ``child`` of frame ``f``; None if it is not entered."""
    try:
        return fsops.open_beneath(f.fd, child, parent_mnt=mnt)
    except OSError as e:
        if e.errno == errno.ENOENT:
            return None
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            # Not a directory any more: a symlink or a file was swapped in.
            # Remove the name itself; never follow it.
            try:
                os.unlink(child, dir_fd=f.fd)
                result.removed += 1
                return None
            except FileNotFoundError:
                return None
            except OSError as e2:
                e = e2
        if e.errno == errno.EXDEV:
            result.mounts.append(_rel(stack, child))
        else:
            result.fail(_rel(stack, child), e)
        f.incomplete = True
        return None


def _same_entry(dirfd, frame):
    """Whether ``frame.name`` in ``dirfd`` is still the directory we hold."""
    try:
        st = fsops.lstat_beneath(dirfd, frame.name)
    except FileNotFoundError:
        return True  # gone already: rmdir will say so
    except OSError:
        return False  # a mount point now, or unreadable: leave it
    return (st.st_dev, st.st_ino) == (frame.dev, frame.ino)


def _climb(f, parent):
    """Reopen ``parent`` through '..' of ``f`` and check it is the directory
    recorded on the way down.  True when ``parent.fd`` is restored."""
    try:
        pfd = os.open(b"..", fsops.DIR_FLAGS, dir_fd=f.fd)
    except OSError:
        return False
    st = os.fstat(pfd)
    if (st.st_dev, st.st_ino) == (parent.dev, parent.ino) and stat.S_ISDIR(st.st_mode):
        parent.fd = pfd
        return True
    os.close(pfd)
    return False
