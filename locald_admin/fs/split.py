"""The parallel split: the C walk in several threads, before the ordinary walk.

``remove_in_parallel`` descends from the target through levels with a
single subdirectory to the first level with two or more, and removes each
of its subdirectories with one C walk (``compiled.compiled_remove_tree``,
the GIL released inside) in one of a few Python threads.  It only counts:
whatever a helper leaves, and every refusal, is found again and reported by
the ordinary single-threaded walk (``walk.remove_tree``) that follows.  The
Python walk is single-threaded (it is the fallback and the reference): with
it this does nothing.

It opens what it descends through as the walk would (``Fs.open_beneath``,
the owner rule applied, the depth counted) and reads every level in
batches, looking at no more than ``SPLIT_SCAN`` entries of a level for its
first two subdirectories (V14).
"""

import contextlib
import dataclasses
import os
import stat
import threading
from itertools import chain, islice

from . import compiled, dirents, fsops, report, traverse

SPLIT_DESCENT = 64  # single-subdirectory levels the parallel split descends through, at most
SPLIT_SCAN = 2048  # entries of a level the split reads looking for two subdirectories, at most
_WITH_OPENAT2 = fsops.Fs(openat2=True)  # the split's: it runs with the C walk only


def _is_dir(dir_fd, entry):
    """For the parallel split: whether ``entry`` (of ``dir_fd``) is a
    directory: its ``d_type``, or where the file system does not record it
    (DT_UNKNOWN) an ``lstat_beneath`` of it (O_PATH, RESOLVE_NO_XDEV: never
    a plain ``fstatat``); False when that fails (gone, a mount point: the
    walk that follows finds out for itself)."""
    d_type = entry.d_type
    if d_type != dirents.DT_UNKNOWN:
        return d_type == dirents.DT_DIR
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
        n = min(traverse.DEFAULT_BATCH, 2 * n)


def remove_in_parallel(dir_fd, result, threads, fs, owners=None, cancel=None, *, limits):
    """Before the ordinary walk of the target ``dir_fd``: with the C walk
    (``fs.compiled``) and ``threads`` >= 2, remove the subdirectories of
    the first level that has two or more with ``threads`` threads.

    From ``dir_fd`` down through levels with a single subdirectory (at most
    SPLIT_DESCENT, and looking at no more than SPLIT_SCAN entries of a level
    for its first two; each opened with ``Fs.open_beneath`` and the owner rule
    applied, as the walk would) to the first level with two or more; each
    of its subdirectories is then removed by one C walk (GIL released)
    relative to that level's held fd, in one of ``threads`` Python threads,
    with the owner rule and ``limits`` (the caller's ``walk.Limits``, always
    given: each helper holds up to ``max_held_fds``, and goes as deep as is
    left of ``max_depth``, which counts from ``dir_fd``).  The names come from one listing shared by the
    threads, in batches.  Only counts are kept (into ``result``, a
    ``report.WalkResult``, readable while they run): whatever a helper could not remove, and every refusal,
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
    """Remove each subdirectory of the held ``level`` that ``pending`` (an
    iterator of names, shared by the threads under a lock) names with one C
    walk, in ``threads`` threads, this one among them; raise the first
    exception any of them raised."""
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
                    compiled.compiled_remove_tree(level, name, cfd, result, owners, cancel, False, limits,
                                                  findings=report.Findings())
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
