"""The walk's bounds: memory, depth, what it reports, cancellation, and
emptying a directory without removing it.

* Memory: a directory is read in batches (``traverse.DEFAULT_BATCH``) from a listing
  kept open while its fd is held; the tracemalloc peak of removing 200,000
  entries with 200-byte names stays far below what one list of them costs
  (about 300 bytes an entry before).
* Depth: nothing deeper than ``limits.max_depth`` levels below the target is
  entered (65,536 by default); it is named as a failure, left in place, and so are its
  ancestors, nothing outside the tree is touched.
* Termination: a directory whose fd is closed to bound the fd count loses
  its listing and is listed again when the walk comes back; what was left
  in place is passed over then, so an undeletable child deeper than the fd
  bound cannot make the walk loop, and a directory that left too many in
  place is not listed again at all.
* Reports: the first ``report.MAX_FAILURES`` failures are kept, the rest
  counted; the first failure that is not a permission error is kept too
  (the client passes it on); a path 65,537 levels deep is cut in messages.
* Cancellation (``cancel``): the walk stops within a batch, closes its fds,
  and ``remove.Cancelled`` says how much was removed; the next call goes on.
* ``keep_dir``: everything below the directory goes, the directory stays.
"""

import errno
import gc
import os
import threading
import time
import tracemalloc

import pytest

from harness import syscalls
from harness import held as harness_held
from harness.held import open_fds
from harness.trees import Canary, make_chain, rm_rf, snapshot, write
from locald_admin.client import as_user
from locald_admin.fs import count, fsops, remove, report, traverse, walk


@pytest.fixture
def parent():
    with harness_held.closing(harness_held.Parent) as hold:
        yield hold


@pytest.fixture
def roomy(tmp_path, mounter):
    """A directory for 200,000 entries: a tmpfs of its own as root (the
    disk's /tmp would make these tests slow), else tmp_path."""
    if os.geteuid() != 0:
        return tmp_path
    d = tmp_path / "tmpfs"
    d.mkdir()
    mounter("-t", "tmpfs", "-o", "size=1g,mode=700", "tmpfs", target=d)
    return d


@pytest.fixture
def rmrf():
    """Trees removed with rm -rf however the test ends (a deep chain defeats
    pytest's own, recursive, cleanup)."""
    paths = []
    yield paths.append
    for p in paths:
        rm_rf(p)


def chain_at(base, depth):
    """The fd of the directory ``depth`` levels of "d" below ``base``
    (opened fd-relative: beyond PATH_MAX)."""
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(depth):
        nfd = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = nfd
    return fd


# -- memory --------------------------------------------------------------------------

ENTRIES = 200_000
NAME = 200  # bytes
# Measured: about 0.33 MiB with one thread and 0.65 MiB with two (the
# parallel pre-pass reads the top directory too), 2-4 bytes an entry; before
# batches, 57 MiB (297 bytes an entry).  The bound leaves a wide margin and
# is still 14 times below the old figure.
PEAK_LIMIT = 4 * 2**20


@pytest.mark.parametrize("threads", [1, 2])
def test_memory_stays_bounded_for_a_directory_of_200000_long_names(roomy, parent, threads):
    t = roomy / "huge"
    t.mkdir()
    fd = os.open(t, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(ENTRIES - 30):
            name = f"{i:010d}".ljust(NAME, "x")
            os.close(os.open(name, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600, dir_fd=fd))
        for i in range(10):  # a few subdirectories, so that the parallel pre-pass runs
            d = f"sub{i:03d}".ljust(NAME, "y")
            os.mkdir(d, dir_fd=fd)
            for j in range(2):
                os.close(os.open(f"{d}/f{j}", os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600, dir_fd=fd))
    finally:
        os.close(fd)
    p = parent(t)
    gc.collect()
    tracemalloc.start()
    try:
        removed = p.remove(threads=threads)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert removed == ENTRIES + 1
    assert not os.path.lexists(t)
    assert peak < PEAK_LIMIT, f"peak {peak} bytes, {peak / ENTRIES:.1f} bytes an entry"


# -- depth ---------------------------------------------------------------------------

def test_a_real_chain_of_65537_levels_stops_at_the_limit(tmp_path, parent, rmrf):
    limit = walk.DEFAULT_LIMITS.max_depth
    assert limit == 65536
    canary = Canary(tmp_path / "canary")
    t = tmp_path / "deep"
    t.mkdir()
    rmrf(t)
    depth = limit + 1
    make_chain(t, depth, leaf="leaf", data=b"deepest")
    for level in (1, limit):  # files next to the chain go
        fd = chain_at(t, level)
        os.close(os.open("f", os.O_CREAT | os.O_WRONLY, 0o600, dir_fd=fd))
        os.close(fd)
    p = parent(t)
    baseline = open_fds()
    with pytest.raises(remove.RemoveFailed) as ei:
        p.remove()
    e = ei.value
    assert open_fds() == baseline
    assert e.removed == 2
    [(path, err)] = e.failures
    assert err is None
    assert path == str(t) + "/d" * depth  # the directory that would be deeper
    assert f"deeper than {limit} levels; left in place" in e.message
    assert "\n" not in e.message and len(e.message) < 2 * remove.MAX_SHOWN_PATH + 300
    # The directory at the limit and everything above it stay (not empty);
    # what is below the limit was never entered.
    fd = chain_at(t, depth)
    try:
        assert os.listdir(fd) == ["leaf"]
        assert os.read(lfd := os.open("leaf", os.O_RDONLY, dir_fd=fd), 100) == b"deepest"
        os.close(lfd)
    finally:
        os.close(fd)
    for level in (1, limit):
        fd = chain_at(t, level)
        assert os.listdir(fd) == ["d"]
        os.close(fd)
    canary.check()


@pytest.mark.parametrize("threads", [1, 2])
def test_nothing_deeper_than_max_depth_is_entered(mode, tmp_path, parent, threads):
    """With max_depth 5: t/x/c/d/e/f are levels 1 to 5 and are emptied; g,
    level 6, is not entered.  The depth counts from the target with the
    parallel helpers too (each walks a subdirectory of it)."""
    limits = walk.Limits(max_depth=5)
    canary = Canary(tmp_path / "canary")
    t = tmp_path / "t"
    for x in ("a", "b"):
        d = t / x
        for name in ("c", "d", "e", "f", "g"):
            d = d / name
        (d / "h").mkdir(parents=True)
        write(d / "h" / "leaf", b"not entered")
        d = t / x
        for name in ("c", "d", "e", "f"):
            d = d / name
            write(d / "file")
    write(t / "top")
    with pytest.raises(remove.RemoveFailed) as ei:
        parent(t).remove(threads=threads, limits=limits)
    e = ei.value
    assert sorted(e.failures) == [(f"{t}/a/c/d/e/f/g", None), (f"{t}/b/c/d/e/f/g", None)]
    assert "deeper than 5 levels; left in place" in e.message
    assert e.removed == 9  # top, and c/file d/file e/file f/file in a and b
    expected = set()
    for x in ("a", "b"):
        parts = [x, "c", "d", "e", "f", "g", "h", "leaf"]
        expected |= {"/".join(parts[:k]).encode() for k in range(1, len(parts) + 1)}
    assert set(snapshot(t)) == expected
    canary.check()
    # The count keeps to the same limit.
    pfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    dfd = fsops.default().open_beneath(pfd, b"t")
    try:
        c = count.count_tree(pfd, b"t", dfd, limits=limits)
    finally:
        os.close(dfd)
        os.close(pfd)
    assert sorted(c.failures) == [b"a/c/d/e/f/g", b"b/c/d/e/f/g"]
    # in the removal's words: the dry run says what a cleanup would leave in place
    assert c.failures[b"a/c/d/e/f/g"] == (None, "deeper than 5 levels; left in place")
    assert c.would_remove == 0  # what the removal left is all kept by the limit: another one removes nothing


# -- termination when listings are lost ------------------------------------------------

def undeletable_children(p, n, depth):
    """``n`` chains p/c<k>/d/d/... ``depth`` levels deep, and 20 files."""
    for k in range(n):
        (p / f"c{k:02d}").mkdir(parents=True)
        make_chain(p / f"c{k:02d}", depth)
    for k in range(20):
        write(p / f"f{k:02d}")


def counting_listings_of(path, limit):
    """(on_call, reads): ``reads`` counts the walk's getdents64 calls on the
    directory ``path`` (harness.syscalls: a listing is one or more, the last
    finding its end); more than ``limit`` fail the test and end the walk
    instead of looping."""
    ino = os.stat(path).st_ino
    reads = []

    def on_call(call):
        if call.on(ino, "getdents64"):
            reads.append(True)
            if len(reads) > limit:
                raise AssertionError(f"{path} read more than {limit} times: the walk loops")

    return on_call, reads


def test_an_undeletable_child_deeper_than_the_fd_bound_cannot_make_the_walk_loop(mode, tmp_path, parent):
    """p's children c00..c02 are chains deeper than max_depth (6) below the target:
    none can be emptied, and walking each closes p's fd (max_held_fds 2), so
    p loses its listing every time and is listed again from the start.
    Without the entries left in place being passed over, c00 would be found
    and walked again each time, forever."""
    limits = walk.Limits(max_held_fds=2, max_depth=6)
    t = tmp_path / "t"
    p = t / "p"
    undeletable_children(p, 3, 6)  # c<k> is level 2, its chain reaches level 8
    on_call, reads = counting_listings_of(p, 40)
    held = parent(t)

    def remove_counting_fds():
        baseline = open_fds()
        try:
            held.remove(limits=limits)
        except remove.RemoveFailed as e:
            return e, open_fds() - baseline
        raise AssertionError("the walk removed what it could not")

    e, leaked = syscalls.supervised(remove_counting_fds, on_call, syscalls=("getdents64",))
    assert leaked == 0
    too_deep = [f"{p}/c{k:02d}/d/d/d/d/d" for k in range(3)]
    assert sorted(path for path, _ in e.failures) == too_deep
    # p was listed once, and once more for each child that closed its fd
    # while entries were left to visit (at least the first child listed):
    # each listing one or two reads.
    assert 2 <= len(reads) <= 2 * (1 + 3 + 1)
    assert sorted(os.listdir(p)) == ["c00", "c01", "c02"]  # every file went
    assert e.removed == 20


def test_a_directory_that_left_too_many_in_place_is_not_listed_again(mode, tmp_path, parent):
    """More than MAX_KEPT undeletable children that each close p's fd: p's
    listing cannot be resumed without retrying one of them, so it ends
    there, named; the walk ends."""
    limits = walk.Limits(max_held_fds=2, max_depth=4)
    t = tmp_path / "t"
    p = t / "p"
    n = traverse.MAX_KEPT + 3
    undeletable_children(p, n, 4)
    on_call, reads = counting_listings_of(p, 6 * n)
    held = parent(t)
    with pytest.raises(remove.RemoveFailed) as ei:
        syscalls.supervised(lambda: held.remove(limits=limits), on_call, syscalls=("getdents64",))
    e = ei.value
    # The first MAX_KEPT + 1 children were tried (each closed p's fd); then p.
    assert len(e.failures) == traverse.MAX_KEPT + 2
    assert all(path.endswith("/d/d/d") for path, _ in e.failures[:-1])
    assert e.failures[-1] == (str(p), None)
    assert len(reads) <= 4 * (traverse.MAX_KEPT + 3)  # p: once, then once or twice a resumption, 1-2 reads each
    res = report.WalkResult()
    pfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    dfd = fsops.default().open_beneath(pfd, b"t")
    try:
        walk.remove_tree(pfd, b"t", dfd, result=res, limits=limits)  # again: the same end
    finally:
        os.close(dfd)
        os.close(pfd)
    assert res.failures[b"p"] == (None, f"more than {traverse.MAX_KEPT} of its entries could not be removed, "
                                        "too many to list it again; the rest left in place")


def test_many_failures_in_a_directory_that_keeps_its_fd_are_each_tried(mode, tmp_path, parent):
    """The bound on what a listing remembers only matters when the listing
    is lost: a directory that keeps its fd tries every entry."""
    limits = walk.Limits(max_depth=2)
    t = tmp_path / "t"
    p = t / "p"
    n = traverse.MAX_KEPT + 8
    undeletable_children(p, n, 1)  # p/c<k>/d is level 3
    with pytest.raises(remove.RemoveFailed) as ei:
        parent(t).remove(limits=limits)
    e = ei.value
    assert len(e.failures) == n
    assert "too many to list it again" not in e.message
    assert sorted(os.listdir(p)) == [f"c{k:02d}" for k in range(n)]


# -- what is reported ---------------------------------------------------------------------

def test_failures_are_bounded_and_counted(mode, tmp_path, parent):
    t = tmp_path / "t"
    n = report.MAX_FAILURES + 36
    for k in range(n):
        (t / f"x{k:03d}" / "y").mkdir(parents=True)
    with pytest.raises(remove.RemoveFailed) as ei:
        parent(t).remove(limits=walk.Limits(max_depth=1))
    e = ei.value
    assert len(e.failures) == report.MAX_FAILURES
    assert f"could not remove {n} entries: " in e.message
    assert f"(and {n - remove.MAX_NAMED_FAILURES} more)" in e.message


def test_the_first_failure_that_is_not_a_permission_error_is_kept_among_many():
    res = report.WalkResult()
    for k in range(report.MAX_FAILURES + 6):
        res.fail(b"denied%d" % k, errno.EACCES, os.strerror(errno.EACCES))
    res.fail(b"readonly", errno.EROFS, os.strerror(errno.EROFS))
    res.fail(b"later", errno.EIO, os.strerror(errno.EIO))
    assert len(res.failures) == report.MAX_FAILURES + 1
    assert res.failures[b"readonly"] == (errno.EROFS, os.strerror(errno.EROFS))
    assert res.failure_count == report.MAX_FAILURES + 8
    with pytest.raises(remove.RemoveFailed) as ei:
        remove._raise_for("/x", res)
    # The client passes on the error more privilege would not fix.
    err = as_user._first_error(ei.value)
    assert (err.errno, err.filename) == (errno.EROFS, "/x/readonly")


def test_mounts_left_in_place_are_bounded_and_counted():
    res = report.WalkResult()
    for k in range(report.MAX_FAILURES + 3):
        res.mount(b"m%d" % k)
    assert len(res.mounts) == report.MAX_FAILURES and res.mount_count == report.MAX_FAILURES + 3
    with pytest.raises(remove.MountInTheWay) as ei:
        remove._raise_for("/x", res)
    assert f"(and {report.MAX_FAILURES + 3 - remove.MAX_NAMED_FAILURES} more)" in ei.value.message


# -- cancellation ---------------------------------------------------------------------------

DIRS, PER = 200, 1000  # 200,200 entries below the target


def big_tree(t):
    t.mkdir()
    fd = os.open(t, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for d in range(DIRS):
            os.mkdir(f"d{d:03d}", dir_fd=fd)
            dfd = os.open(f"d{d:03d}", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            try:
                for n in range(PER):
                    wfd = os.open(f"f{n:04d}", os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600, dir_fd=dfd)
                    os.write(wfd, b"%d/%d" % (d, n))
                    os.close(wfd)
            finally:
                os.close(dfd)
    finally:
        os.close(fd)
    return DIRS * (PER + 1) + 1


@pytest.mark.parametrize("threads", [1, 2])
def test_cancel_stops_the_walk_promptly_and_the_next_call_finishes(roomy, parent, threads):
    t = roomy / "t"
    total = big_tree(t)
    p = parent(t)
    progress, cancel = report.WalkResult(), threading.Event()
    at_set = []

    def watch():
        while not cancel.is_set():
            n = progress.removed_total
            if n > 1000:
                at_set.append(n)
                cancel.set()
                return
            time.sleep(0.0002)

    watcher = threading.Thread(target=watch, daemon=True)
    baseline = open_fds()
    watcher.start()
    try:
        with pytest.raises(remove.Cancelled) as ei:
            p.remove(threads=threads, progress=progress, cancel=cancel)
    finally:
        cancel.set()
        watcher.join()
    assert open_fds() == baseline
    removed = ei.value.removed
    assert at_set and 1000 < at_set[0] <= removed < total
    assert removed - at_set[0] <= threads * (traverse.DEFAULT_BATCH + 64), "the walk went on after the cancel"
    assert "cancelled" in ei.value.message and f"{removed} entries removed" in ei.value.message
    # What is left is intact: every remaining file with its content.
    left = snapshot(t)
    assert len(left) + 1 == total - removed
    for rel, what in left.items():
        if what[0] == "file":
            d, n = rel.split(b"/")
            assert what == ("file", b"%d/%d" % (int(d[1:]), int(n[1:])))
    # The next call finishes the job.
    assert p.remove(threads=threads) == total - removed
    assert not os.path.lexists(t)


def test_cancel_set_before_the_call_removes_nothing(mode, tmp_path, parent):
    t = tmp_path / "t"
    (t / "a" / "b").mkdir(parents=True)
    write(t / "a" / "f")
    cancel = threading.Event()
    cancel.set()
    before = snapshot(t)
    with pytest.raises(remove.Cancelled) as ei:
        parent(t).remove(threads=2, cancel=cancel)
    assert ei.value.removed == 0
    assert snapshot(t) == before


# -- keep_dir --------------------------------------------------------------------------------

def tree(t):
    (t / "a" / "b").mkdir(parents=True)
    (t / "c").mkdir()
    write(t / "f")
    write(t / "a" / "g")
    write(t / "a" / "b" / "h")
    (t / "link").symlink_to("/etc/passwd")
    return 7  # a, b, c, f, g, h, link


@pytest.mark.parametrize("threads", [1, 2])
def test_keep_dir_removes_everything_below_and_keeps_the_directory(mode, tmp_path, parent, threads):
    t = tmp_path / "t"
    n = tree(t)
    ino = os.stat(t).st_ino
    assert parent(t).remove(keep_dir=True, threads=threads) == n
    assert os.listdir(t) == [] and os.stat(t).st_ino == ino
    assert parent(t).remove(keep_dir=True) == 0  # empty already
    assert os.path.isdir(t)


def test_keep_dir_with_a_held_fd_as_the_mechanism_removes_an_anchor(mode, tmp_path):
    anchor = tmp_path / "proj" / ".locald"
    n = tree(anchor)
    ino = os.stat(anchor).st_ino
    fs = fsops.default()
    prefix_fd = fs.open_prefix(os.fsencode(anchor.parent).lstrip(b"/").split(b"/"))  # O_PATH, as scope holds it
    anchor_fd = fs.open_beneath(prefix_fd, b".locald")
    try:
        assert remove.remove_entry(prefix_fd, b".locald", str(anchor), os.getuid(), held_fd=anchor_fd,
                                   keep_dir=True, fs=fs) == n
    finally:
        os.close(anchor_fd)
        os.close(prefix_fd)
    assert os.listdir(anchor) == [] and os.stat(anchor).st_ino == ino


def test_keep_dir_looks_again_at_a_directory_refilled_during_the_walk(mode, tmp_path, parent):
    """A file appears in t as the walk unlinks each of the first two
    entries it listed: the kept directory is still emptied."""
    t = tmp_path / "t"
    t.mkdir()
    write(t / "first")
    ino = os.stat(t).st_ino
    p = parent(t)
    refills = []

    def refill(call):
        if call.on(ino, "unlinkat") and len(refills) < 2:
            refills.append(True)
            write(t / f"late{len(refills)}")

    assert syscalls.supervised(lambda: p.remove(keep_dir=True), refill) == 3
    assert len(refills) == 2
    assert os.listdir(t) == []


def test_keep_dir_leaves_a_non_directory_target_to_the_ordinary_removal(mode, tmp_path, parent):
    f = tmp_path / "file"
    write(f)
    assert parent(f).remove(keep_dir=True) == 1
    assert not os.path.lexists(f)
