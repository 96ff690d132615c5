"""The C walk against the Python walk, the reference (differential tests).

Two identical copies of a random, deterministic tree (hypothesis) are
removed, one with each walk (``walk.remove_tree`` with ``Fs.compiled`` True
and False, both with openat2); both must remove the same entries, leave the
same survivors, report the same failures (paths, errnos, reasons, in the same
order), the same mounts and the same count.  The trees have files, fifos,
empty directories, directories, symlinks to inside and outside (a canary
that must stay untouched), deep chains (past the fd bound), wide directories
(past the first batch), names that are not UTF-8; as root also other users'
directories under the owner rule, immutable files and directories (chattr
+i: EPERM) and mounts inside (left in place, reported).

Then what a random tree does not reach on its own: the fd bound under a low
RLIMIT_NOFILE, the depth limit, MAX_KEPT overflow, keep_dir, cancel from
another thread, progress read while the C walk runs.
"""

import ctypes
import errno
import importlib.util
import os
import resource
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness import IS_ROOT, PROGRAMS
from harness.trees import (Canary, is_mount_point, make_chain, mounted_tmpfs, rm_rf, snapshot, umount, world_tmpdir,
                           write)
from harness.waiting import poll_until
from locald_admin.fs import compiled, count, dirents, fsops, owners, report, split, traverse, walk

pytestmark = pytest.mark.skipif(fsops.compiled_walk() is None or not fsops.kernel_has_openat2(),
                                reason="the compiled walk is not built (scripts/bootstrap builds it) "
                                       "or this kernel has no openat2")

C = fsops.Fs(openat2=True, compiled=True) if fsops.compiled_walk() and fsops.kernel_has_openat2() else None
PY = fsops.Fs(openat2=True, compiled=False)
CALLER, OTHER = 4241, 4242  # the owner rule's caller, and another user

# -- random trees ------------------------------------------------------------------------

NAMES = st.sampled_from([b"a", b"b", b"c", b"dir", b"f", b"\xff\xfe", b"x y", b"\xc3(", b"n" * 120, b".hidden",
                         b"-r", b"\x80"])
LEAVES = ["file", "fifo", "link_in", "link_out", "link_dangling", "empty_dir"] + (
    ["immutable", "immutable_dir", "mount"] if IS_ROOT else [])
# root_shared (1777) and root_group (2775): root's directories others may
# write, trusted only in root's directories that only root may write.
OWNERS = ["caller", "root", "other", "root_shared", "root_group"] if IS_ROOT else ["me"]
OWNER_IDS = {"caller": (CALLER, CALLER, None), "root": (0, 0, None), "other": (OTHER, OTHER, None),
             "root_shared": (0, 0, 0o1777), "root_group": (0, 4343, 0o2775)}
leaf = st.one_of(st.sampled_from(LEAVES),
                 st.tuples(st.just("chain"), st.integers(1, 70)),
                 st.tuples(st.just("wide"), st.integers(250, 400)))
node = st.recursive(leaf, lambda kids: st.tuples(st.just("dir"), st.sampled_from(OWNERS),
                                                 st.dictionaries(NAMES, kids, max_size=5)),
                    max_leaves=24)
trees = st.dictionaries(NAMES, node, min_size=1, max_size=6)


class Built:
    """What a build needs undone: immutable flags, mounts."""

    def __init__(self):
        self.immutable, self.mounts = [], []

    def undo(self):
        for p in self.immutable:
            subprocess.run(["chattr", "-i", p], capture_output=True)
        for m in reversed(self.mounts):
            umount(m, check=False)


def build(root, tree, outside, built):
    os.mkdir(root)
    if IS_ROOT:
        os.chown(root, CALLER, CALLER)
    for name, spec in tree.items():
        _build(os.path.join(root, name), spec, outside, built)


def _build(p, spec, outside, built):
    if spec == "file":
        write(p, b"data")
    elif spec == "fifo":
        os.mkfifo(p)
    elif spec == "link_in":
        os.symlink(".", p)
    elif spec == "link_out":
        os.symlink(outside, p)
    elif spec == "link_dangling":
        os.symlink(b"/nonexistent/x", p)
    elif spec == "empty_dir":
        os.mkdir(p)
    elif spec == "immutable":
        write(p, b"stays")
        subprocess.run(["chattr", "+i", p], check=True, capture_output=True)
        built.immutable.append(p)
    elif spec == "immutable_dir":
        os.mkdir(p)
        write(os.path.join(p, b"in1"))
        write(os.path.join(p, b"in2"))
        subprocess.run(["chattr", "+i", p], check=True, capture_output=True)
        built.immutable.append(p)
    elif spec == "mount":
        os.mkdir(p)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "locald-admin-test", p], check=True,
                       capture_output=True)
        built.mounts.append(p)
        write(os.path.join(p, b"on-the-mount"))
    elif spec[0] == "chain":
        make_chain(os.fsdecode(p), spec[1], leaf="leaf", create_base=True)
    elif spec[0] == "wide":
        os.mkdir(p)
        for i in range(spec[1]):
            write(os.path.join(p, b"w%d" % i))
    else:
        _, owner, kids = spec
        os.mkdir(p)
        if owner != "me":
            uid, gid, mode = OWNER_IDS[owner]
            os.chown(p, uid, gid)
            if mode is not None:
                os.chmod(p, mode)
        for name, sub in kids.items():
            _build(os.path.join(p, name), sub, outside, built)


def limits(held=walk.DEFAULT_LIMITS.max_held_fds, depth=None, split_after=walk.DEFAULT_LIMITS.split_after):
    """The walk's ``walk.Limits``: ``held`` fds, ``depth`` levels (None: the
    default), ``split_after`` steps alone before the split."""
    return walk.Limits(held, walk.DEFAULT_LIMITS.max_depth if depth is None else depth, split_after)


SPLIT_FIRST = walk.Limits(split_after=0)  # the parallel split at once, however small the tree


def remove(parent, name, fs, threads=1, **kw):
    """Remove ``parent/name`` with ``fs``'s walk (with ``threads``: the C
    walk alone up to ``limits.split_after`` steps, then the parallel split,
    as remove.remove_entry does: ``walk.remove_with_threads``); the
    WalkResult.  ``kw``: remove_tree's."""
    pfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        dfd = fs.open_beneath(pfd, name)
        try:
            res = kw.pop("result", None) or report.WalkResult()
            limits = kw.pop("limits", walk.DEFAULT_LIMITS)
            return walk.remove_with_threads(pfd, name, dfd, res, threads, fs, limits=limits, **kw)
        finally:
            os.close(dfd)
    finally:
        os.close(pfd)


def outcome(res):
    return {"removed": res.removed, "failures": list(res.failures.items()), "more_failures": res.more_failures,
            "mounts": list(res.mounts), "more_mounts": res.more_mounts, "cancelled": res.cancelled}


def dry_run(parent, name, fs, **kw):
    """The dry run's count of ``parent/name`` (``count.count_tree`` with the
    removal's trust rule, ``keep_dir`` and limits, as remove.remove_entry
    makes it): what a removal with the same ``kw`` would remove."""
    pfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        dfd = fs.open_beneath(pfd, name)
        try:
            return count.count_tree(pfd, name, dfd, fs, limits=kw.get("limits", walk.DEFAULT_LIMITS),
                                    owners=kw.get("owners"), keep_dir=kw.get("keep_dir", False))
        finally:
            os.close(dfd)
    finally:
        os.close(pfd)


def both(base, tree, threads=1, **kw):
    """Build two copies of ``tree`` below ``base``, count each as the dry
    run does, remove one with each walk (the C walk with ``threads``), check
    the canary; (C outcome, C survivors, Python outcome, Python survivors).
    The dry run's count must be what each walk then removed, but where the
    kernel refuses what a count cannot foresee (the immutable entries)."""
    canary = Canary(os.path.join(base, "outside"))
    results = []
    for fs, name in ((C, b"c"), (PY, b"py")):
        kw["threads"] = threads if fs is C else 1
        built = Built()
        try:
            build(os.path.join(os.fsencode(base), name), tree, os.fsencode(canary.path), built)
            before = snapshot(os.path.join(os.fsencode(base), name))
            plan = dry_run(os.fsencode(base), name, PY, **kw)
            assert snapshot(os.path.join(os.fsencode(base), name)) == before  # the dry run removed nothing
            res = remove(os.fsencode(base), name, fs, **kw)
            if not built.immutable:
                assert plan.would_remove == res.removed, (fs, plan.would_remove, res.removed)
                assert plan.left_behind == bool(res.failures or res.mounts or res.more_failures
                                                or res.more_mounts)
            left = snapshot(os.path.join(os.fsencode(base), name)) if os.path.lexists(
                os.path.join(os.fsencode(base), name)) else None
            results += [outcome(res), left]
        finally:
            built.undo()
    canary.check()
    return results


@pytest.fixture
def base():
    d = world_tmpdir("locald-admin-diff-")
    yield d
    subprocess.run(["chattr", "-R", "-i", str(d)], capture_output=True)
    rm_rf(d)


EXAMPLES = int(os.environ.get("LOCALD_ADMIN_DIFF_EXAMPLES", "60"))


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(tree=trees, rule=st.booleans(), keep_dir=st.booleans(), max_depth=st.sampled_from([None, 1, 3, 40]),
       max_held=st.sampled_from([48, 6, 2]), threads=st.sampled_from([1, 1, 2, 3]),
       split_after=st.sampled_from([0, 1, 128, 1024]))
def test_both_walks_remove_the_same_and_report_the_same(base, tree, rule, keep_dir, max_depth, max_held, threads,
                                                        split_after):
    """Single-threaded: the same reports in the same order.  With threads
    (the C walk alone for ``split_after`` steps, then its split; the Python
    walk is single-threaded): the same as sets, the same survivors and
    count."""
    d = base / "round"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir()
    rule = owners.OwnerRule(CALLER) if rule and IS_ROOT else None
    c, c_left, py, py_left = both(d, tree, threads=threads, owners=rule, keep_dir=keep_dir,
                                  limits=limits(max_held, max_depth, split_after))
    if threads > 1:
        for o in (c, py):
            o["failures"], o["mounts"] = set(o["failures"]), set(o["mounts"])
    assert c == py
    assert c_left == py_left
    subprocess.run(["chattr", "-R", "-i", str(d)], capture_output=True)
    rm_rf(d)


def test_a_tree_of_every_kind_gives_the_same_nonempty_reports(base):
    """The differential test compares reports that are not empty (a walk
    that reports nothing would agree with a walk that reports nothing)."""
    kinds = {b"f": "file", b"l": "link_out", b"\xff": ("chain", 60), b"w": ("wide", 300)}
    if IS_ROOT:
        kinds.update({b"i": "immutable", b"m": "mount", b"o": ("dir", "other", {b"x": "file"}),
                      b"id": "immutable_dir", b"t": ("dir", "root_group", {b"r": ("dir", "root", {b"x": "file"})}),
                      b"r": ("dir", "root", {b"tmp": ("dir", "root_shared", {b"y": "file"})})})
    rule = owners.OwnerRule(CALLER) if IS_ROOT else None
    c, c_left, py, py_left = both(base, kinds, owners=rule, limits=limits(4, 40))
    assert c == py and c_left == py_left
    reasons = [why for _, (_, why) in c["failures"]]
    assert report.too_deep(40) in reasons
    if IS_ROOT:
        assert c["mounts"] == [b"m"]
        assert (b"i", (errno.EPERM, os.strerror(errno.EPERM))) in c["failures"]
        assert any(why.startswith(f"owned by uid {OTHER}") for why in reasons)
        assert (b"t", (None, "owned by root and writable by others (mode 2775) in a directory that is not "
                             "root's alone: left in place")) in c["failures"]
        assert c_left[b"t/r/x"] and b"r" not in c_left  # root's tmp in root's 0755 directory went


# -- what a random tree does not reach ----------------------------------------------------

@pytest.mark.parametrize("fs", [C, PY], ids=["compiled", "python"])
def test_the_fd_bound_holds_under_a_tight_rlimit(base, fs):
    """A 3,000-deep chain removed with RLIMIT_NOFILE just above the open fds
    plus the default max_held_fds: a walk holding more would fail with EMFILE."""
    make_chain(str(base / "t"), 3000, leaf="leaf", create_base=True)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    used = len(os.listdir("/proc/self/fd"))
    pfd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
    dfd = fs.open_beneath(pfd, b"t")
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(fd for fd in map(int, os.listdir("/proc/self/fd")))
                                                    + walk.DEFAULT_LIMITS.max_held_fds + 4, hard))
        try:
            res = walk.remove_tree(pfd, b"t", dfd, fs=fs)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    finally:
        os.close(dfd)
        os.close(pfd)
    assert (res.failures, res.removed) == ({}, 3000 + 2)
    assert not (base / "t").exists()
    assert len(os.listdir("/proc/self/fd")) == used


@pytest.mark.parametrize("fs", [C, PY], ids=["compiled", "python"])
def test_nothing_deeper_than_max_depth_is_entered(base, fs):
    make_chain(str(base / "t"), 150, leaf="leaf", create_base=True)
    res = remove(os.fsencode(base), b"t", fs, limits=limits(depth=100))
    deep = b"/".join([b"d"] * 101)
    assert list(res.failures.items()) == [(deep, (None, report.too_deep(100)))]
    assert os.path.isdir(os.path.join(os.fsencode(base), b"t", deep))
    assert not os.path.exists(os.path.join(os.fsencode(base), b"t", b"leaf"))


@pytest.mark.skipif(not IS_ROOT, reason="chattr +i needs root")
def test_a_directory_that_left_more_than_max_kept_in_place_is_not_listed_again(base):
    """33 immutable files between two deep chains, between two files, in D
    on a tmpfs (listing order is creation order, one way or the other: a
    chain comes after the immutable files, and a file after it);
    D's fd is closed while a chain is walked, and then it has too many kept
    entries to be listed again: both walks say so."""
    def tree(top):
        os.mkdir(top)
        root = os.path.join(top, "D")
        os.mkdir(root)
        write(os.path.join(root, "file-first"))
        make_chain(os.path.join(root, "chain-first"), 20, create_base=True)
        for i in range(traverse.MAX_KEPT + 1):
            write(os.path.join(root, f"imm{i}"))
            subprocess.run(["chattr", "+i", os.path.join(root, f"imm{i}")], check=True)
        make_chain(os.path.join(root, "chain-last"), 20, create_base=True)
        write(os.path.join(root, "file-last"))

    with mounted_tmpfs(base / "tmp", "size=64m,mode=755"):
        try:
            outs = []
            for fs, name in ((C, "c"), (PY, "py")):
                tree(str(base / "tmp" / name))
                outs.append(outcome(remove(os.fsencode(base / "tmp"), name.encode(), fs, limits=limits(4))))
            assert outs[0] == outs[1]
            assert (b"D", (None, report.kept_overflow(traverse.MAX_KEPT))) in outs[0]["failures"]
            assert os.path.exists(base / "tmp" / "c" / "D" / "imm0")
        finally:
            subprocess.run(["chattr", "-R", "-i", str(base / "tmp")], capture_output=True)


@pytest.mark.parametrize("fs", [C, PY], ids=["compiled", "python"])
@pytest.mark.parametrize("filled", [False, True])
def test_keep_dir_empties_and_keeps_the_target(base, fs, filled):
    t = base / "t"
    t.mkdir()
    if filled:
        (t / "sub").mkdir()
        write(t / "sub" / "f")
        write(t / "g")
    res = remove(os.fsencode(base), b"t", fs, keep_dir=True)
    assert (res.failures, res.removed) == ({}, 3 if filled else 0)
    assert t.is_dir() and os.listdir(t) == []


def _big(root, dirs=300, per=60):
    os.mkdir(root)
    for i in range(dirs):
        d = os.path.join(root, f"d{i}")
        os.mkdir(d)
        for j in range(per):
            write(os.path.join(d, f"f{j}"))
    return dirs * (per + 1) + 1


def test_cancel_from_another_thread_stops_the_c_walk_and_touches_nothing_outside(base):
    total = _big(str(base / "t"))
    canary = Canary(base / "outside")
    res, cancel = report.WalkResult(), threading.Event()
    seen = []

    def watch():
        while not cancel.is_set():
            n = res.removed_total
            seen.append(n)
            if n >= 2000:
                cancel.set()

    w = threading.Thread(target=watch)
    w.start()
    try:
        remove(os.fsencode(base), b"t", C, result=res, cancel=cancel)
    finally:
        cancel.set()
        w.join()
    assert res.cancelled
    assert 2000 <= res.removed < total, res.removed
    assert res.removed - max(seen) <= traverse.DEFAULT_BATCH + 64  # it stopped within a batch of the cancel
    assert res.helpers == []  # the C walk's counter was folded in
    assert len(snapshot(base / "t")) + res.removed == total - 1  # the target itself is still there
    canary.check()
    # The next call finishes it.
    again = remove(os.fsencode(base), b"t", C)
    assert (again.failures, again.removed + res.removed) == ({}, total)


def test_progress_is_readable_while_the_c_walk_runs(base):
    total = _big(str(base / "t"))
    res = report.WalkResult()
    seen, done = [], threading.Event()

    def watch():
        while not done.is_set():
            seen.append(res.removed_total)

    w = threading.Thread(target=watch)
    w.start()
    try:
        remove(os.fsencode(base), b"t", C, result=res)
    finally:
        done.set()
        w.join()
    assert res.removed == total
    assert any(0 < n < total for n in seen), "no count seen while the walk ran"
    assert all(a <= b for a, b in zip(seen, seen[1:])), "the count stepped back"


# -- the C walk's parallel split ------------------------------------------------------------

def _recording(monkeypatch):
    calls = []
    real = compiled.compiled_remove_tree

    def rec(parent_fd, name, *a, **kw):
        calls.append((name, threading.get_ident(), kw.get("findings") is not None))
        return real(parent_fd, name, *a, **kw)

    monkeypatch.setattr(compiled, "compiled_remove_tree", rec)
    return calls


def test_the_split_descends_to_the_first_level_with_two_subdirectories(base, monkeypatch):
    y = base / "t" / "x" / "y"
    y.mkdir(parents=True)
    write(base / "t" / "file")
    for i in range(10):
        (y / f"d{i}").mkdir()
        for j in range(5):
            write(y / f"d{i}" / f"f{j}")
    calls = _recording(monkeypatch)
    res = remove(os.fsencode(base), b"t", C, threads=2, limits=SPLIT_FIRST)
    assert (res.failures, res.removed) == ({}, 10 * 6 + 2 + 1 + 1)
    helpers = {name for name, _, helper in calls if helper}
    assert helpers == {f"d{i}".encode() for i in range(10)}  # y's subdirectories, each by a helper walk
    assert [name for name, _, helper in calls if not helper] == [b"t"]  # then the ordinary walk
    assert not (base / "t").exists()


@pytest.mark.skipif(not IS_ROOT, reason="needs other users' directories")
def test_the_split_does_not_enter_a_directory_the_owner_rule_refuses(base, monkeypatch):
    t = base / "t"
    (t / "x" / "a").mkdir(parents=True)
    (t / "x" / "b").mkdir()
    write(t / "x" / "a" / "f")
    for p in (t, t / "x" / "a", t / "x" / "b", t / "x" / "a" / "f"):
        os.chown(p, CALLER, CALLER)
    os.chown(t / "x", OTHER, OTHER)  # another user's, in the caller's t
    calls = _recording(monkeypatch)
    res = remove(os.fsencode(base), b"t", C, threads=2, owners=owners.OwnerRule(CALLER), limits=SPLIT_FIRST)
    assert [name for name, _, helper in calls] == [b"t"]  # no helper walked below x
    assert list(res.failures) == [b"x"] and res.removed == 0
    assert (t / "x" / "a" / "f").exists()


def _no_threads(monkeypatch):
    """Make starting a thread fail the test."""
    def refuse(self):
        raise AssertionError("a thread was started")
    monkeypatch.setattr(threading.Thread, "start", refuse)


def test_a_small_tree_is_removed_by_one_walk_without_a_thread(base, monkeypatch):
    """A runc leftover's size (well under ``split_after`` steps): with
    threads, one C walk alone removes it and reports (no split, no thread
    started: they cost a small request more than its walk)."""
    t = base / "t"
    for d in ("rootfs/dev", "rootfs/proc", "rootfs/run/shm"):
        (t / d).mkdir(parents=True)
    write(t / "config.json")
    write(t / "state")
    calls = _recording(monkeypatch)
    _no_threads(monkeypatch)
    res = remove(os.fsencode(base), b"t", C, threads=2)
    assert (res.failures, res.removed, res.cancelled) == ({}, 8, False)
    assert calls == [(b"t", threading.get_ident(), True)]  # one walk, its findings its own until it finished
    assert not t.exists()


def test_a_tree_bigger_than_split_after_is_split_after_the_walk_alone_stops(base, monkeypatch):
    """Past ``split_after`` steps the walk alone stops (its findings
    dropped), the split's helpers take the rest and the ordinary walk
    reports: everything removed once, counted once, a failure reported
    once."""
    if not IS_ROOT:
        pytest.skip("chattr +i needs root")
    t = base / "t"
    for i in range(8):
        for j in range(3):
            (t / f"d{i}" / f"e{j}").mkdir(parents=True)
            for k in range(20):
                write(t / f"d{i}" / f"e{j}" / f"f{k}")
    total = 8 * (1 + 3 * 21) + 1
    subprocess.run(["chattr", "+i", str(t / "d0" / "e0" / "f0"), str(t / "d7" / "e2" / "f19")], check=True)
    calls = _recording(monkeypatch)
    try:
        res = remove(os.fsencode(base), b"t", C, threads=2, limits=limits(split_after=300))
    finally:
        subprocess.run(["chattr", "-i", str(t / "d0" / "e0" / "f0"), str(t / "d7" / "e2" / "f19")], check=True)
    assert sorted(res.failures) == [b"d0/e0/f0", b"d7/e2/f19"]
    assert res.more_failures == 0 and not res.cancelled
    # What is left: the two files and the directories holding them.
    assert res.removed == total - 2 - 2 * 2 - 1
    first, *rest = calls
    assert first[0] == b"t" and first[2]  # the walk alone, its findings its own
    assert any(helper and name != b"t" for name, _, helper in rest)  # then the split's helpers
    assert rest[-1][0] == b"t" and not rest[-1][2]  # and the ordinary walk, which reports


def test_a_cancel_during_the_walk_alone_stops_without_a_split(base, monkeypatch):
    t = base / "t"
    for i in range(40):
        (t / f"d{i}").mkdir(parents=True)
        for k in range(40):
            write(t / f"d{i}" / f"f{k}")

    class After:
        """Set once looked at three times (the removal's own look before it
        starts, then the walk's, every 128 steps)."""
        looks = 0

        def is_set(self):
            self.looks += 1
            return self.looks > 3

    calls = _recording(monkeypatch)
    _no_threads(monkeypatch)
    res = remove(os.fsencode(base), b"t", C, threads=2, cancel=After())
    assert res.cancelled and 0 < res.removed < 40 * 41
    assert [name for name, _, _ in calls] == [b"t"]  # neither the split nor another walk


@pytest.mark.parametrize("alone", [True, False], ids=["walk-alone", "split"])
def test_a_failure_in_a_small_tree_is_reported_once(base, monkeypatch, alone):
    """By the walk alone (a small tree: no thread started), or with the
    split first by the ordinary walk after the helper that met it."""
    if not IS_ROOT:
        pytest.skip("chattr +i needs root")
    t = base / "t"
    for i in range(4):
        (t / f"d{i}").mkdir(parents=True)
        write(t / f"d{i}" / "f")
    subprocess.run(["chattr", "+i", str(t / "d2" / "f")], check=True)
    if alone:
        _no_threads(monkeypatch)
    try:
        res = remove(os.fsencode(base), b"t", C, threads=2, limits=walk.DEFAULT_LIMITS if alone else SPLIT_FIRST)
    finally:
        subprocess.run(["chattr", "-i", str(t / "d2" / "f")], check=True)
    assert list(res.failures.items()) == [(b"d2/f", (errno.EPERM, os.strerror(errno.EPERM)))]
    assert res.removed == 3 * 2
    assert sorted(os.listdir(t)) == ["d2"]


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]


def test_the_c_walks_memory_stays_bounded_for_a_directory_of_long_names(base):
    """tracemalloc does not see the C walk's memory: glibc's count of what
    malloc handed out (mallinfo2: in use plus mmapped) is sampled while it
    removes 100,000 entries of 200-byte names (20 MB of names; a walk that
    held the listing would need at least that)."""
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "mallinfo2"):
        pytest.skip("glibc without mallinfo2")
    libc.mallinfo2.restype = _Mallinfo2

    def used():
        m = libc.mallinfo2()
        return m.uordblks + m.hblkhd

    t = base / "t"
    t.mkdir()
    fd = os.open(t, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(100_000):
            os.close(os.open(b"%0200d" % i, os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
    finally:
        os.close(fd)
    baseline = used()
    peak, done = [baseline], threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], used())

    w = threading.Thread(target=watch)
    w.start()
    try:
        res = remove(os.fsencode(base), b"t", C)
    finally:
        done.set()
        w.join()
    assert (res.failures, res.removed) == ({}, 100_001)
    assert peak[0] - baseline < 4 * 2 ** 20, (peak[0] - baseline)


def test_the_split_does_not_read_a_whole_directory_of_files(base, monkeypatch):
    """A directory of many files whose subdirectories come late in the
    listing is not split: the split stops looking after SPLIT_SCAN entries
    (and the walk alone does it all, faster than a split reading it whole).
    On a tmpfs, listing order is creation order, one way or the other."""
    if not IS_ROOT:
        pytest.skip("mounts a tmpfs")
    with mounted_tmpfs(base / "tmp", "size=64m,mode=755"):
        t = base / "tmp" / "t"
        t.mkdir()
        (t / "d1").mkdir()
        (t / "d2").mkdir()
        for i in range(split.SPLIT_SCAN * 3):
            write(t / f"f{i}")
        names = os.listdir(t)  # the listing's order
        if min(names.index("d1"), names.index("d2")) < split.SPLIT_SCAN + traverse.DEFAULT_BATCH:
            pytest.skip("this tmpfs lists the subdirectories first")
        read = []
        real = split._subdirs

        def counting(fd, it, scan=None):
            yield from real(fd, (read.append(1) or e for e in it), scan)

        monkeypatch.setattr(split, "_subdirs", counting)
        res = report.WalkResult()
        pfd = os.open(base / "tmp", os.O_RDONLY | os.O_DIRECTORY)
        dfd = C.open_beneath(pfd, b"t")
        try:
            split.remove_in_parallel(dfd, res, 2, C, limits=walk.DEFAULT_LIMITS)
        finally:
            os.close(dfd)
            os.close(pfd)
        assert len(read) <= split.SPLIT_SCAN + traverse.DEFAULT_BATCH
        assert res.removed == 0 and len(os.listdir(t)) == len(names)


# -- a file system that does not record entry types (d_type) --------------------------------
#
# ext2 made with -O ^filetype lists every entry as DT_UNKNOWN.  Both walks
# look at such an entry first, through an O_PATH fd that crosses no mount,
# and fstat it (never a plain fstatat, which would ask a mounted file
# system): a directory is entered however it is flagged (issue 19, finding
# 4: the C walk used to unlink first, and an immutable or append-only entry
# or parent said EPERM before EISDIR, so the directory was never entered),
# and a mount point of any type is reported and left in place.

def _why_no_ext2_without_d_type():
    if not IS_ROOT:
        return "loop-mounting an ext2 image needs root"
    for tool, package in (("mkfs.ext2", "e2fsprogs"), ("losetup", "util-linux"), ("chattr", "e2fsprogs")):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian package {package})"
    cp = subprocess.run(["losetup", "-f"], capture_output=True, text=True)
    if cp.returncode != 0:
        return f"this machine has no free loop device (losetup -f: {cp.stderr.strip() or cp.returncode})"
    return None


@pytest.fixture
def no_d_type(base):
    """An ext2 file system made with ``-O ^filetype``, loop-mounted at
    ``base/ext2``: getdents64 says DT_UNKNOWN for every entry (checked)."""
    why = _why_no_ext2_without_d_type()
    if why:
        pytest.skip(why)
    image, mnt = base / "ext2.img", base / "ext2"
    with open(image, "wb") as f:
        f.truncate(64 << 20)
    subprocess.run(["mkfs.ext2", "-q", "-F", "-O", "^filetype", str(image)], check=True, capture_output=True)
    mnt.mkdir()
    cp = subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], capture_output=True, text=True)
    if cp.returncode != 0:
        pytest.skip(f"cannot loop-mount an ext2 image here: {cp.stderr.strip()}")
    try:
        os.chmod(mnt, 0o755)
        (mnt / "probe").mkdir()
        fd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
        try:
            types = {e.bname: e.d_type for e in dirents.listing(fd)}
        finally:
            os.close(fd)
        assert types[b"probe"] == dirents.DT_UNKNOWN, types
        os.rmdir(mnt / "probe")
        yield mnt
    finally:
        subprocess.run(["chattr", "-R", "-i", "-a", str(mnt)], capture_output=True)
        umount(mnt, check=False)  # -o loop: the loop device goes with it


def _flagged(built, flag, *paths):
    subprocess.run(["chattr", flag, *map(str, paths)], check=True, capture_output=True)
    built.immutable.extend(paths)  # Built.undo clears +i; the fixture clears +a too


def _mount(built, *args):
    subprocess.run(["mount", *map(str, args)], check=True, capture_output=True)
    built.mounts.append(args[-1])


def _every_kind_without_d_type(root, outside, built):
    """Files, directories, symlinks (inside, to a directory and a file
    outside, dangling), fifos; an immutable and an append-only directory,
    each holding a file, a symlink, a fifo, a subdirectory with entries and
    a mount point; an immutable and an append-only file and directory; a
    tmpfs on a directory and a file outside bind-mounted on a file."""
    root = Path(root)
    root.mkdir()
    write(root / "f")
    os.mkfifo(root / "fifo")
    os.symlink(".", root / "link_in")
    os.symlink(outside, root / "link_out")
    os.symlink(outside / "data", root / "link_file")
    os.symlink("/nonexistent/x", root / "link_dangling")
    (root / "d" / "e" / "g").mkdir(parents=True)
    for rel in ("d/x", "d/e/y", "d/e/g/z"):
        write(root / rel)
    for flag, name in (("+i", "imm"), ("+a", "app")):
        p = root / name
        (p / "sub" / "deeper").mkdir(parents=True)
        for rel in ("f", "sub/f", "sub/deeper/g"):
            write(p / rel)
        os.symlink(outside, p / "link")
        os.mkfifo(p / "fifo")
        (p / "mnt").mkdir()
        _mount(built, "-t", "tmpfs", "-o", "size=1m", "locald-admin-test", p / "mnt")
        write(p / "mnt" / "on-the-mount")
        write(root / f"{name}_file")
        (root / f"{name}_dir").mkdir()
        write(root / f"{name}_dir" / "f")
        _flagged(built, flag, p, root / f"{name}_file", root / f"{name}_dir")
    (root / "mnt").mkdir()
    _mount(built, "-t", "tmpfs", "-o", "size=1m", "locald-admin-test", root / "mnt")
    write(root / "mnt" / "on-the-mount")
    write(root / "bound")
    _mount(built, "--bind", outside / "data", root / "bound")


FALLBACK = fsops.Fs(openat2=False)  # the Python walk without openat2: mount ids from fdinfo


@pytest.mark.parametrize("threads", [1, 2])
def test_both_walks_decide_the_same_on_a_file_system_without_d_type(no_d_type, threads):
    """The same tree removed by the C walk (with ``threads``: the split
    first), the Python walk and the Python walk without openat2: the same
    removals, failures, mounts and survivors; nothing outside touched; and
    the directories below immutable and append-only ones were entered."""
    canary = Canary(no_d_type.parent / "outside")
    outcomes, lefts = [], []
    for fs, name in ((C, "c"), (PY, "py"), (FALLBACK, "fallback")):
        built = Built()
        try:
            _every_kind_without_d_type(no_d_type / name, canary.path, built)
            res = remove(os.fsencode(no_d_type), name.encode(), fs, threads=threads if fs is C else 1,
                         limits=SPLIT_FIRST)
            lefts.append(snapshot(no_d_type / name))
            outcomes.append(outcome(res))
        finally:
            built.undo()
            subprocess.run(["chattr", "-R", "-a", str(no_d_type / name)], capture_output=True)
    canary.check()
    if threads > 1:
        for o in outcomes:
            o["failures"], o["mounts"] = set(o["failures"]), set(o["mounts"])
    assert outcomes[0] == outcomes[1] == outcomes[2]
    assert lefts[0] == lefts[1] == lefts[2]
    perm = (errno.EPERM, os.strerror(errno.EPERM))
    assert dict(outcomes[0]["failures"]) == {rel: perm for rel in (
        b"imm/f", b"imm/sub", b"imm/link", b"imm/fifo", b"imm_file", b"imm_dir/f",
        b"app/f", b"app/sub", b"app/link", b"app/fifo", b"app_file", b"app_dir/f")}
    assert set(outcomes[0]["mounts"]) == {b"imm/mnt", b"app/mnt", b"mnt", b"bound"}
    assert set(lefts[0]) == {
        b"imm", b"imm/f", b"imm/sub", b"imm/link", b"imm/fifo", b"imm/mnt", b"imm/mnt/on-the-mount",
        b"imm_file", b"imm_dir", b"imm_dir/f",
        b"app", b"app/f", b"app/sub", b"app/link", b"app/fifo", b"app/mnt", b"app/mnt/on-the-mount",
        b"app_file", b"app_dir", b"app_dir/f",
        b"mnt", b"mnt/on-the-mount", b"bound"}


@pytest.mark.parametrize("fs", [C, PY, FALLBACK], ids=["compiled", "python", "python-fallback"])
def test_directories_below_an_immutable_or_append_only_one_are_entered_without_d_type(no_d_type, fs):
    """Issue 19, finding 4, as measured there: with no d_type the C walk
    unlinked ``imm/sub`` first, got EPERM (its parent is immutable) and
    never entered it: 8 entries left where the Python walk left 4."""
    t = no_d_type / "t"
    for name in ("imm", "app"):
        (t / name / "sub").mkdir(parents=True)
        write(t / name / "sub" / "f")
        write(t / name / "sub" / "g")
    built = Built()
    try:
        _flagged(built, "+i", t / "imm")
        _flagged(built, "+a", t / "app")
        res = remove(os.fsencode(no_d_type), b"t", fs)
        left = snapshot(t)
    finally:
        built.undo()
        subprocess.run(["chattr", "-a", str(t / "app")], capture_output=True)
    perm = (errno.EPERM, os.strerror(errno.EPERM))
    assert sorted(left) == [b"app", b"app/sub", b"imm", b"imm/sub"]
    assert list(res.failures.items()) == [(b"imm/sub", perm), (b"app/sub", perm)] or \
        list(res.failures.items()) == [(b"app/sub", perm), (b"imm/sub", perm)]
    assert (res.removed, res.mounts) == (4, [])


def test_count_tree_looks_at_entries_without_d_type_as_the_removal_does(no_d_type):
    canary = Canary(no_d_type.parent / "outside")
    built = Built()
    try:
        _every_kind_without_d_type(no_d_type / "t", canary.path, built)
        counts = []
        for fs in (PY, FALLBACK):
            pfd = os.open(no_d_type, os.O_RDONLY | os.O_DIRECTORY)
            dfd = fs.open_beneath(pfd, b"t")
            try:
                c = count.count_tree(pfd, b"t", dfd, fs=fs, limits=walk.DEFAULT_LIMITS)
            finally:
                os.close(dfd)
                os.close(pfd)
            counts.append((c.files, c.dirs, c.symlinks, c.others, sorted(c.mounts), c.failures))
    finally:
        built.undo()
        subprocess.run(["chattr", "-R", "-a", str(no_d_type / "t")], capture_output=True)
    canary.check()
    # files: f, d/x, d/e/y, d/e/g/z, and per flag f, sub/f, sub/deeper/g, <flag>_file, <flag>_dir/f;
    # dirs: t, d, d/e, d/e/g, and per flag the directory, sub, sub/deeper, <flag>_dir
    assert counts[0] == counts[1] == (4 + 2 * 5, 4 + 2 * 4, 4 + 2, 1 + 2,
                                      [b"app/mnt", b"bound", b"imm/mnt", b"mnt"], {})


def _hung_fuse(mountpoint, workdir):
    """The hung FUSE file system of harness/programs/fusefs.py at
    ``mountpoint`` (every request it gets sleeps); None if it did not mount."""
    log = open(workdir / "fusefs.log", "wb")
    proc = subprocess.Popen([sys.executable, str(PROGRAMS / "fusefs.py"), "hang", str(mountpoint)],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    poll_until(lambda: is_mount_point(mountpoint) or proc.poll() is not None, 20, 0.02)
    return proc


@pytest.mark.parametrize("what", ["remove-compiled", "remove-python", "remove-python-fallback", "count",
                                  "count-fallback"])
def test_a_hung_fuse_mount_without_d_type_is_reported_not_asked(no_d_type, what):
    """A FUSE mount whose daemon never answers, on a directory of a tree
    without d_type: os.DirEntry.is_dir() would fstatat it and wait for the
    daemon forever; the walks see a mount point and leave it."""
    if importlib.util.find_spec("mfusepy") is None or shutil.which("fusermount3") is None \
            or not os.path.exists("/dev/fuse"):
        pytest.skip("no FUSE here (/dev/fuse, fusermount3 and the Python binding mfusepy)")
    t = no_d_type / "t"
    (t / "fuse").mkdir(parents=True)
    (t / "sub").mkdir()
    write(t / "sub" / "f")
    write(t / "z")
    proc = _hung_fuse(t / "fuse", no_d_type.parent)
    try:
        if not is_mount_point(t / "fuse"):
            pytest.skip(f"the FUSE file system did not mount: {(no_d_type.parent / 'fusefs.log').read_text()[-500:]}")
        fs = {"compiled": C, "fallback": FALLBACK}.get(what.rsplit("-", 1)[-1], PY)
        done = []

        def run():
            if what.startswith("count"):
                pfd = os.open(no_d_type, os.O_RDONLY | os.O_DIRECTORY)
                dfd = fs.open_beneath(pfd, b"t")
                try:
                    done.append(count.count_tree(pfd, b"t", dfd, fs=fs, limits=walk.DEFAULT_LIMITS))
                finally:
                    os.close(dfd)
                    os.close(pfd)
            else:
                done.append(remove(os.fsencode(no_d_type), b"t", fs, threads=2 if fs is C else 1,
                                   limits=SPLIT_FIRST))  # the split too

        walker = threading.Thread(target=run, daemon=True)
        walker.start()
        walker.join(20)
        hung = walker.is_alive()
    finally:
        proc.kill()  # aborts whatever request it left waiting
        proc.wait()
        umount(t / "fuse", check=False)
    walker.join(20)
    assert not hung, "the walk waited for the FUSE daemon: it looked into a mount"
    assert done and done[0].mounts == [b"fuse"] and done[0].failures == {}
    if what.startswith("count"):
        assert (done[0].files, done[0].dirs) == (2, 2)
    else:
        assert sorted(os.listdir(t)) == ["fuse"]


def test_the_python_walks_listing_says_what_scandir_says(base):
    """``dirents.listing`` (getdents64 through ctypes) against
    ``os.scandir``: the same names (every length from 1 to 255 bytes, not
    UTF-8 too, read after longer ones through the same buffer: the kernel
    does not clear a record's padding), inode numbers and types."""
    t = base / "t"
    t.mkdir()
    names = [b"n" * n for n in range(255, 0, -1)] + [b"\xff\xfe", b"\x80dir", b"x y", b".hidden", b"..."]
    for n in names:
        write(os.path.join(os.fsencode(t), n))
    for kind in ("dir", "link", "fifo"):
        p = os.path.join(os.fsencode(t), kind.encode() + b"\xc3(")
        {"dir": os.mkdir, "link": lambda p: os.symlink(b"/nonexistent", p), "fifo": os.mkfifo}[kind](p)
    fd = os.open(t, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with os.scandir(fd) as it:
            want = {os.fsencode(e.name): (e.inode(), e.is_dir(follow_symlinks=False), e.is_symlink(),
                                          e.is_file(follow_symlinks=False)) for e in it}
        for _ in range(2):  # and again from the start
            got = {e.bname: (e.ino, e.d_type == dirents.DT_DIR, e.d_type == dirents.DT_LNK,
                             e.d_type == dirents.DT_REG) for e in dirents.listing(fd)}
            assert got == want
    finally:
        os.close(fd)
    assert len(want) == len(names) + 3
