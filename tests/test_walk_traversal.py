"""The walk's traversal on its own, and the listing that deletes nothing.

``traverse.Traversal`` holds the defences (open_beneath only, bounded fds,
the identity check when climbing ``..``); the removal and ``count.count_tree``
are two visitors of it.  These tests drive the count, and a visitor that asks
for everything to be entered, to show that the defences hold whatever the
visitor does: no symlink followed, no mount entered, fds bounded and all
closed, a moved branch abandoned.  Every test runs with openat2 and with the
forced fallback (``mode``); the mount tests need root.
"""

import errno
import os
import socket
import subprocess

import pytest

from locald_admin.fs import fsops, traverse, walk
from harness import syscalls
from harness import held as harness_held
from harness.held import open_fds
from harness.trees import make_chain, snapshot

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (uid 0) to mount --bind / -t tmpfs")


# -- helpers ----------------------------------------------------------------------

def write(path, data=b"x"):
    with open(path, "wb") as f:
        f.write(data)


@pytest.fixture
def held():
    with harness_held.closing(harness_held.Held) as hold:
        yield hold


@pytest.fixture
def rmrf():
    """Register trees to be removed with rm -rf however the test ends: a
    deep chain left behind defeats pytest's own (recursive) cleanup."""
    paths = []
    yield paths.append
    for p in paths:
        subprocess.run(["rm", "-rf", "--one-file-system", "--", os.fsdecode(p)], check=False)


@pytest.fixture
def outside(tmp_path):
    """A directory outside every target, full of entries that must never be
    counted, and checked by content afterwards."""
    o = tmp_path / "outside"
    (o / "sub" / "deep").mkdir(parents=True)
    for i in range(20):
        write(o / f"f{i}", b"outside")
    write(o / "sub" / "deep" / "file", b"outside deep")
    before = snapshot(o)
    yield o
    assert snapshot(o) == before, "the directory outside the target was changed"


def mixed_tree(t):
    """Files, directories, symlinks and other kinds; returns the counts."""
    (t / "a" / "b" / "c").mkdir(parents=True)
    (t / "empty").mkdir()
    for rel in ("f1", "a/f2", "a/b/f3", "a/b/c/f4", "a/b/c/f5"):
        write(t / rel)
    (t / "dangling").symlink_to("/nonexistent/nowhere")
    (t / "a" / "up").symlink_to("..")
    os.mkfifo(t / "a" / "fifo")
    s = socket.socket(socket.AF_UNIX)
    s.bind(os.fsdecode(t / "a" / "b" / "sock"))
    s.close()
    return {"files": 5, "dirs": 5, "symlinks": 2, "others": 2}  # dirs: t, a, b, c, empty


def counts(c):
    return {"files": c.files, "dirs": c.dirs, "symlinks": c.symlinks, "others": c.others}


# -- the count ---------------------------------------------------------------------

def test_count_sees_every_kind_and_deletes_nothing(mode, tmp_path, held):
    t = tmp_path / "t"
    expected = mixed_tree(t)
    before = snapshot(t)
    baseline = open_fds()
    h = held(t)
    c = h.count()
    assert counts(c) == expected
    assert (c.mounts, c.failures) == ([], {})
    assert snapshot(t) == before
    # What the removal then removes is what was counted.
    r = h.remove()
    assert (r.removed, r.failures, r.mounts) == (c.total, {}, [])
    assert not os.path.lexists(t)
    h.close()
    assert open_fds() == baseline


def test_symlinks_to_outside_are_counted_as_links_never_followed(mode, tmp_path, held, outside):
    t = tmp_path / "t"
    (t / "d").mkdir(parents=True)
    (t / "abs").symlink_to(outside)
    (t / "d" / "rel").symlink_to(os.path.relpath(outside, t / "d"))
    (t / "d" / "file_link").symlink_to(outside / "f0")
    c = held(t).count()
    assert counts(c) == {"files": 0, "dirs": 2, "symlinks": 3, "others": 0}
    assert (c.mounts, c.failures) == ([], {})


def test_directory_swapped_for_a_symlink_to_outside_is_not_entered(mode, tmp_path, held, outside):
    """Listed as a directory, a symlink to outside by the time it is entered
    (CVE-2022-21658 style; swapped just before the walk's open of it runs):
    counted as the link, outside never listed."""
    t = tmp_path / "t"
    (t / "sub").mkdir(parents=True)
    write(t / "sub" / "data")
    t_ino = os.stat(t).st_ino
    h = held(t)
    listed, swapped = [], []

    def race(call):
        st = call.fd_stat(0)
        if call.name == "getdents64":
            listed.append((st.st_dev, st.st_ino))
        elif not swapped and call.on(t_ino, "openat2", "openat") and call.string(1) == b"sub":
            os.rename(t / "sub", tmp_path / "moved_away")
            (t / "sub").symlink_to(outside)
            swapped.append(True)

    c = syscalls.supervised(lambda: counts(h.count()), race)
    assert swapped
    assert c == {"files": 0, "dirs": 1, "symlinks": 1, "others": 0}
    st = os.stat(outside)
    assert (st.st_dev, st.st_ino) not in listed
    assert {ino for _, ino in listed} == {t_ino}  # only t itself was listed
    assert (tmp_path / "moved_away" / "data").exists()


@pytest.mark.parametrize("max_fds", [None, 4])
def test_10000_deep_chain_is_counted_with_bounded_fds(mode, tmp_path, held, rmrf, monkeypatch, max_fds):
    limits = walk.DEFAULT_LIMITS if max_fds is None else walk.Limits(max_held_fds=max_fds)
    limit = limits.max_held_fds
    depth = 10_000
    t = tmp_path / "deep"
    t.mkdir()
    rmrf(t)
    make_chain(t, depth, leaf="leaf")
    h = held(t)
    c, baseline, after, seen, listed = syscalls.fds_at_listings(
        lambda: (lambda c: (counts(c), c.mounts, c.failures, c.total))(h.count(limits)), os.stat(t).st_dev)
    c_counts, mounts, failures, total = c
    assert c_counts == {"files": 1, "dirs": depth + 1, "symlinks": 0, "others": 0}
    assert (mounts, failures) == ([], {})
    assert len(listed) == depth + 1  # every directory listed
    assert limit <= max(seen) - baseline <= limit + 4, (max(seen), baseline, limit)
    assert after == baseline
    # The same traversal removes it, within the same bound.
    assert h.remove(limits).removed == total


def test_branch_moved_out_while_its_fds_are_closed_is_abandoned(mode, tmp_path, held, outside):
    """With 2 held fds, a and b are closed while the walk lists d, and b is
    moved into outside/ as that listing starts.  Climbing from c reaches b
    (moved, but b); climbing from b reaches outside/, not a: the identity
    check refuses it, what is left of the branch (a) is abandoned, nothing
    of outside is listed.  (Files only in d: a listing's order is the file
    system's, and a file next to a directory would be counted or not by it.)"""
    few = walk.Limits(max_held_fds=2)
    t = tmp_path / "t"
    (t / "a" / "b" / "c" / "d").mkdir(parents=True)
    write(t / "a/b/c/d/f")
    d_ino = os.stat(t / "a/b/c/d").st_ino
    h = held(t)
    listed, moved = [], []

    def race(call):
        ino = call.fd_stat(0).st_ino
        listed.append(ino)
        if not moved and ino == d_ino:
            os.rename(t / "a" / "b", outside / "b")
            moved.append(True)

    try:
        c, failures, baseline, after = syscalls.supervised(
            lambda: (lambda before, c: (counts(c), c.failures, before, len(os.listdir("/proc/self/fd"))))(
                len(os.listdir("/proc/self/fd")), h.count(few)), race, syscalls=("getdents64",))
        assert moved
        assert failures == {b"a": (None, "directory was moved during listing")}
        assert os.stat(outside).st_ino not in listed
        # Not b, c, d's file: they went with b, but were listed before the
        # walk could tell (d/f); b is not counted, it was not left the
        # ordinary way (its parent was not found).
        assert c == {"files": 1, "dirs": 3, "symlinks": 0, "others": 0}
        assert after == baseline  # every fd of the walk closed
    finally:
        os.rename(outside / "b", t / "a" / "b")  # the outside fixture checks its content


# -- the traversal's own defences, whatever the visitor asks -------------------------

class EnterEverything(traverse.Visitor):
    """A visitor without a policy: it asks to enter every entry."""

    def __init__(self):
        self.entered, self.refused, self.left = [], [], []

    def on_entry(self, t, f, name, entry):
        return True

    def on_enter_failed(self, t, f, name, err):
        self.refused.append((t.rel(name), err.errno))

    def on_leave(self, t, f, parent):
        self.left.append(t.rel())
        return False


def test_traversal_never_enters_a_symlink_or_a_file_whatever_the_visitor_asks(mode, tmp_path, outside):
    t = tmp_path / "t"
    (t / "d").mkdir(parents=True)
    (t / "to_outside").symlink_to(outside)
    (t / "d" / "to_sub").symlink_to(outside / "sub")
    write(t / "d" / "file")
    v = EnterEverything()
    baseline = open_fds()
    pfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    dfd = fsops.default().open_beneath(pfd, b"t")
    try:
        traverse.Traversal(pfd, b"t", dfd, max_held=8).run(v)
    finally:
        os.close(dfd)
        os.close(pfd)
    assert open_fds() == baseline
    assert sorted(v.left) == [b"", b"d"]  # children before parents, once each
    assert v.left[-1] == b""
    assert sorted(r for r, _ in v.refused) == [b"d/file", b"d/to_sub", b"to_outside"]
    assert {e for _, e in v.refused} <= {errno.ELOOP, errno.ENOTDIR}


def test_a_failing_visitor_leaves_no_fd_open(mode, tmp_path):
    t = tmp_path / "t"
    t.mkdir()
    make_chain(t, 200, leaf="leaf")

    class Boom(EnterEverything):
        def on_entry(self, tr, f, name, entry):
            if name == b"leaf":
                raise RuntimeError("visitor failed")
            return True

    baseline = open_fds()
    pfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    dfd = fsops.default().open_beneath(pfd, b"t")
    try:
        with pytest.raises(RuntimeError):
            traverse.Traversal(pfd, b"t", dfd, max_held=16).run(Boom())
        assert open_fds() == baseline + 2  # the caller's two, still open
    finally:
        os.close(dfd)
        os.close(pfd)


# -- mounts (root) -----------------------------------------------------------------

@needs_root
@pytest.mark.parametrize("kind", ["bind", "tmpfs"])
def test_count_reports_a_mount_and_does_not_enter_it(mode, tmp_path, held, outside, mounter, kind):
    t = tmp_path / "t"
    (t / "x" / "mnt").mkdir(parents=True)
    write(t / "x" / "f")
    if kind == "bind":
        mounter("--bind", os.fsdecode(outside), target=t / "x" / "mnt")
    else:
        mounter("-t", "tmpfs", "-o", "size=1m", "tmpfs", target=t / "x" / "mnt")
        for i in range(5):
            write(t / "x" / "mnt" / f"in_tmpfs{i}")
    before = snapshot(t)
    c = held(t).count()
    assert c.mounts == [b"x/mnt"]
    assert c.failures == {}
    # The mount point itself is not listed, nor anything in it.
    assert counts(c) == {"files": 1, "dirs": 2, "symlinks": 0, "others": 0}
    assert snapshot(t) == before


@needs_root
def test_count_reports_a_mount_that_appears_during_the_listing(mode, tmp_path, held, outside, mounter):
    t = tmp_path / "t"
    for d in ("a", "b", "c"):
        (t / d).mkdir(parents=True)
        write(t / d / "f")
    t_ino = os.stat(t).st_ino
    h = held(t)
    done = []

    def race(call):
        if not done and call.on(t_ino, "getdents64"):
            mounter("--bind", os.fsdecode(outside), target=t / "b")
            done.append(True)

    mounts, c = syscalls.supervised(lambda: (lambda c: (c.mounts, counts(c)))(h.count()), race)
    assert done
    assert mounts == [b"b"]
    assert c == {"files": 2, "dirs": 3, "symlinks": 0, "others": 0}
