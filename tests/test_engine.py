"""The deletion engine without D-Bus: ``engine.cleanup(path, caller_uid)``.

Runs as any user (the caller is ``os.getuid()`` unless a test says otherwise).
Every test that exercises a defence keeps a canary *outside* the target and
checks it by content afterwards, so it fails if that defence is removed.
Tests that touch the file system run twice: with openat2 and with the forced
fallback (O_NOFOLLOW + mount ids), see the ``mode`` fixture.
"""

import errno
import functools
import os
import stat

import pytest

from harness import IS_ROOT, syscalls, trees
from harness.held import open_fds
from harness.trees import Canary, make_chain, rm_rf, write
from locald_admin.fs import fsops, removal, walk
from locald_admin.mechanism import engine
from locald_admin.mechanism.errors import Failed, InvalidPath, MechanismError, OutsideScope

ME = os.getuid()


# -- fixtures and helpers ------------------------------------------------------

snapshot = functools.partial(trees.snapshot, record=trees.kind)


@pytest.fixture
def canary(tmp_path):
    c = Canary(tmp_path / "canary")
    yield c
    c.check()


@pytest.fixture
def anchor(tmp_path):
    """<tmp>/proj/.locald, owned by the current user."""
    a = tmp_path / "proj" / ".locald"
    a.mkdir(parents=True)
    return a


@pytest.fixture
def rmrf():
    """Register trees to be removed with rm -rf (deep trees defeat shutil.rmtree)."""
    paths = []
    yield paths.append
    for p in paths:
        rm_rf(p)


def make_tree(root):
    """A small mixed tree; returns the number of entries below ``root``."""
    root.mkdir()
    write(root / "file", b"a file")
    write(root / "empty")
    (root / "dir" / "sub" / "subsub").mkdir(parents=True)
    write(root / "dir" / "f1")
    write(root / "dir" / "sub" / "f2")
    write(root / "dir" / "sub" / "subsub" / "f3")
    (root / "emptydir").mkdir()
    os.mkfifo(root / "dir" / "fifo")
    os.mknod(root / "dir" / "sock", stat.S_IFSOCK | 0o600)
    (root / "dangling").symlink_to("/nonexistent/nowhere")
    return len(snapshot(root))




# -- ordinary removal ------------------------------------------------------------

def test_dir_tree_removed_with_count(mode, anchor, canary):
    t = anchor / "t"
    n = make_tree(t)
    # Links to the canary inside the tree: unlinked, never followed.
    (t / "to_canary_dir").symlink_to(canary.path)
    (t / "dir" / "to_canary_file").symlink_to(canary.path / "data")
    (t / "dir" / "rel_to_canary").symlink_to(os.path.relpath(canary.path, t / "dir"))
    os.link(canary.path / "passwd", t / "hardlink_to_canary")
    n += 4
    write(anchor / "sibling", b"keep")

    assert engine.cleanup(str(t), ME) == n + 1  # every entry, plus t itself

    assert not os.path.lexists(t)
    assert snapshot(anchor) == {b"sibling": ("file", b"keep")}
    canary.check()
    assert os.stat(canary.path / "passwd").st_nlink == 1


def test_bytes_path_accepted(mode, anchor):
    t = anchor / "t"
    n = make_tree(t)
    assert engine.cleanup(os.fsencode(t), ME) == n + 1
    assert not os.path.lexists(t)


def test_sloppy_slashes_in_request_are_fine(mode, anchor):
    t = anchor / "t"
    make_tree(t)
    assert engine.cleanup("/" + str(t).replace("/", "//") + "///", ME) > 0
    assert not os.path.lexists(t)


def _make_kind(kind, path, canary):
    if kind == "file":
        write(path, b"leftover")
    elif kind == "empty_dir":
        path.mkdir()
    elif kind == "symlink_to_canary_dir":
        path.symlink_to(canary.path)
    elif kind == "symlink_to_canary_file":
        path.symlink_to(canary.path / "data")
    elif kind == "relative_symlink_to_canary":
        path.symlink_to(os.path.relpath(canary.path, path.parent))
    elif kind == "dangling_symlink":
        path.symlink_to("/nonexistent")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        os.mknod(path, stat.S_IFSOCK | 0o600)
    else:
        raise AssertionError(kind)


@pytest.mark.parametrize("kind", [
    "file", "empty_dir", "symlink_to_canary_dir", "symlink_to_canary_file",
    "relative_symlink_to_canary", "dangling_symlink", "fifo", "socket",
])
def test_single_entry_targets(mode, anchor, canary, kind):
    t = anchor / "x"
    _make_kind(kind, t, canary)
    assert engine.cleanup(str(t), ME) == 1
    assert not os.path.lexists(t)
    assert os.listdir(anchor) == []
    canary.check()


def test_target_symlink_with_trailing_slash_is_not_followed(mode, anchor, canary):
    # '/x/.locald/link/' is normalised to '.../link': the link goes, not the canary.
    (anchor / "link").symlink_to(canary.path)
    assert engine.cleanup(str(anchor / "link") + "/", ME) == 1
    assert not os.path.lexists(anchor / "link")
    canary.check()


def test_anchor_itself_removed(mode, anchor, canary):
    proj = anchor.parent
    n = make_tree(anchor / "t")
    write(anchor / "top")
    (anchor / "to_canary").symlink_to(canary.path)
    write(proj / "keep", b"project file")
    (proj / "src").mkdir()
    write(proj / "src" / "main.c", b"int main;")

    assert engine.cleanup(str(anchor), ME) == n + 3 + 1

    assert not os.path.lexists(anchor)
    assert snapshot(proj) == {b"keep": ("file", b"project file"), b"src": ("dir",),
                              b"src/main.c": ("file", b"int main;")}
    canary.check()


def test_nested_locald_below_the_anchor_is_just_a_name(mode, anchor):
    t = anchor / "a" / ".locald" / "b"
    t.mkdir(parents=True)
    write(t / "f")
    assert engine.cleanup(str(t), ME) == 2
    assert os.listdir(anchor / "a" / ".locald") == []


# -- nothing to do -----------------------------------------------------------------

def test_missing_things_are_success_with_zero(mode, tmp_path, anchor):
    proj = anchor.parent
    write(anchor / "file", b"a file")
    (anchor / "dir").mkdir()
    write(proj / "pfile", b"prefix file")
    (tmp_path / "noanchor").mkdir()
    before = snapshot(tmp_path)
    for p in [
        anchor / "missing",                    # missing target
        anchor / "missing" / "deeper" / "x",   # missing intermediate
        anchor / "dir" / "missing",
        tmp_path / "noanchor" / ".locald" / "x",  # missing anchor
        tmp_path / "noanchor" / ".locald",     # missing anchor as the target
        tmp_path / "nonexistent" / "p" / ".locald" / "x",  # missing prefix
        anchor / "file" / "x",                 # a file where a directory is needed
        anchor / "file" / "x" / "y",
        proj / "pfile" / ".locald" / "x",      # ... in the prefix
    ]:
        assert engine.cleanup(str(p), ME) == 0, p
    assert snapshot(tmp_path) == before


def test_anchor_that_is_a_file_deletes_nothing(mode, tmp_path):
    proj = tmp_path / "proj"
    proj.mkdir()
    write(proj / ".locald", b"not a directory")
    for p in (proj / ".locald" / "x", proj / ".locald"):
        try:
            assert engine.cleanup(str(p), ME) == 0
        except OutsideScope as e:
            assert "not a directory" in e.message
    assert (proj / ".locald").read_bytes() == b"not a directory"


# -- scope: symlinks and owners ----------------------------------------------------

@pytest.mark.parametrize("below", ["", "data", "sub", "sub/deep/file"])
def test_symlink_anchor_is_outside_scope(mode, tmp_path, canary, below):
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / ".locald").symlink_to(canary.path)
    path = str(proj / ".locald") + ("/" + below if below else "")
    with pytest.raises(OutsideScope) as ei:
        engine.cleanup(path, ME)
    assert "symlink" in ei.value.message
    canary.check()
    assert os.path.islink(proj / ".locald")


@pytest.mark.parametrize("link_at,path_below,absolute", [
    ("link", "link/data", True),                 # THE attack: .locald/link -> /elsewhere
    ("link", "link/data", False),
    ("link", "link/sub/deep", True),
    ("link", "link/sub", True),
    ("a/b/link", "a/b/link/sub/deep/file", True),
    ("a/link", "a/link/sub/data", False),
])
def test_symlink_in_intermediate_component_is_outside_scope(mode, anchor, canary, link_at, path_below, absolute):
    link = anchor / link_at
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(canary.path if absolute else os.path.relpath(canary.path, link.parent))
    with pytest.raises(OutsideScope) as ei:
        engine.cleanup(str(anchor / path_below), ME)
    assert "symlink" in ei.value.message
    canary.check()
    assert os.path.islink(link)


def test_symlink_to_a_file_in_intermediate_component_is_outside_scope(mode, anchor, canary):
    (anchor / "link").symlink_to(canary.path / "data")
    with pytest.raises(OutsideScope):
        engine.cleanup(str(anchor / "link" / "x"), ME)
    canary.check()


def test_ordinary_symlink_above_the_anchor_is_allowed(mode, tmp_path, anchor, canary):
    # /home -> /var/home style: the prefix may go through symlinks.
    alias = tmp_path / "alias"
    alias.symlink_to(anchor.parent)
    make_tree(anchor / "t")
    assert engine.cleanup(str(alias / ".locald" / "t"), ME) > 0
    assert not os.path.lexists(anchor / "t")
    assert os.path.islink(alias)
    canary.check()


def test_magic_link_above_the_anchor_is_refused_with_openat2(anchor):
    if not fsops.kernel_has_openat2():
        pytest.skip("this kernel has no openat2; the fallback cannot refuse magic links")
    t = anchor / "t"
    make_tree(t)
    before = snapshot(t)
    for magic in ("/proc/self/root", f"/proc/{os.getpid()}/root"):
        with pytest.raises(OutsideScope) as ei:
            engine.cleanup(magic + str(t), ME, fs=fsops.Fs(openat2=True))
        assert "magic link" in ei.value.message
    assert snapshot(t) == before


def _foreign_uid(owner):
    """A uid that is neither ``owner`` nor root."""
    return 65534 if owner != 65534 else 65533


def test_anchor_owned_by_someone_else_than_the_caller_is_outside_scope(mode, anchor, canary):
    # Works as any user: the anchor is ours, the *caller* is someone else.
    t = anchor / "t"
    make_tree(t)
    (t / "to_canary").symlink_to(canary.path)
    before = snapshot(anchor)
    owner = os.stat(anchor).st_uid
    caller = _foreign_uid(owner)
    for p in (t, anchor, t / "file", t / "dir"):
        with pytest.raises(OutsideScope) as ei:
            engine.cleanup(str(p), caller)
        assert f"owned by uid {owner}" in ei.value.message
        assert f"uid {caller}" in ei.value.message
    assert snapshot(anchor) == before
    canary.check()


@pytest.mark.skipif(not IS_ROOT, reason="needs root: chown of the anchor to another uid")
def test_anchor_chowned_to_another_uid_is_outside_scope(mode, anchor):
    t = anchor / "t"
    make_tree(t)
    os.chown(anchor, 65534, 65534)
    before = snapshot(anchor)
    with pytest.raises(OutsideScope):
        engine.cleanup(str(t), 4242)
    assert snapshot(anchor) == before
    # ... while its owner may.
    assert engine.cleanup(str(t), 65534) > 0
    assert not os.path.lexists(t)


# -- bad requests delete nothing ---------------------------------------------------

@pytest.mark.parametrize("bad", [
    "{anchor}/../../canary", "{anchor}/t/..", "{anchor}/./t", "relative/.locald/t", "", "/",
    "{anchor}/t\0", "{canary}",
])
def test_bad_requests_delete_nothing(tmp_path, anchor, canary, bad):
    make_tree(anchor / "t")
    before = snapshot(tmp_path)
    with pytest.raises((InvalidPath, OutsideScope)):
        engine.cleanup(bad.format(anchor=anchor, canary=canary.path), ME)
    assert snapshot(tmp_path) == before


# -- big and strange trees ---------------------------------------------------------

def test_10000_deep_chain_is_removed_without_recursion_error(mode, anchor, rmrf):
    rmrf(anchor.parent)
    t = anchor / "deep"
    t.mkdir()
    make_chain(t, 10_000, leaf="leaf")
    assert engine.cleanup(str(t), ME) == 10_000 + 1 + 1  # dirs, the leaf, deep itself
    assert os.listdir(anchor) == []


@pytest.mark.parametrize("max_fds", [None, 4])
def test_fds_stay_bounded_during_a_deep_walk(mode, anchor, rmrf, max_fds):
    """The walk's fds, counted as it starts each listing (from outside:
    harness.syscalls), stay within max_held_fds however deep the tree."""
    limits = walk.DEFAULT_LIMITS if max_fds is None else walk.Limits(max_held_fds=max_fds)
    limit = limits.max_held_fds
    depth = 3000
    assert depth > 10 * limit
    rmrf(anchor.parent)
    t = anchor / "deep"
    t.mkdir()
    make_chain(t, depth, leaf="leaf")

    removed, baseline, after, seen, listed = syscalls.fds_at_listings(
        lambda: engine.cleanup(str(t), ME, limits=limits), os.stat(t).st_dev)
    assert removed == depth + 2
    assert len(listed) == depth + 1  # every directory was listed
    # The resolver's fds (prefix, anchor, target) + at most max_held_fds
    # directories + a little slack; without the bound this would be ~depth.
    assert max(seen) - baseline <= limit + 6, (max(seen), baseline, limit)
    assert max(seen) - baseline >= limit  # the bound was actually reached
    assert after == baseline  # and nothing leaked


def test_parallel_walk_keeps_fds_bounded_per_thread(mode, anchor, rmrf):
    """Two deep chains side by side: both threads walk one each (the
    parallel split, in compiled mode), and each holds at most max_held_fds
    directory fds."""
    limits = walk.Limits(max_held_fds=8)
    rmrf(anchor.parent)
    t = anchor / "deep"
    for side in ("a", "b"):
        (t / side).mkdir(parents=True)
        make_chain(t / side, 500, leaf="leaf")
    removed, baseline, after, seen, _ = syscalls.fds_at_listings(
        lambda: engine.cleanup(str(t), ME, threads=2, limits=limits), os.stat(t).st_dev)
    assert removed == 2 * (500 + 1 + 1) + 1
    assert max(seen) - baseline <= 2 * limits.max_held_fds + 8, (max(seen), baseline)
    assert after == baseline


def test_bushy_tree_with_few_fds_is_removed_completely(mode, anchor):
    # Many re-climbs through '..' with identity checks, all legitimate.
    few = walk.Limits(max_held_fds=2)
    t = anchor / "t"
    d = t
    for i in range(30):
        d = d / f"level{i}"
        (d / "side" / "sideside").mkdir(parents=True)
        write(d / "side" / "sideside" / "f")
        write(d / "f")
    n = len(snapshot(t))
    baseline = open_fds()
    assert engine.cleanup(str(t), ME, limits=few) == n + 1
    assert not os.path.lexists(t)
    assert open_fds() == baseline


def test_names_that_are_not_utf8_are_removed(mode, anchor, canary):
    a = os.fsencode(anchor)
    t = a + b"/t\xff\xfe"
    os.mkdir(t)
    os.mkdir(t + b"/\x80dir\xc3")
    write(t + b"/\x80dir\xc3/\xff", b"1")
    write(t + b"/\xfe\xfd", b"2")
    write(t + b"/ok-\xe9t\xe9", b"3")
    os.symlink(os.fsencode(canary.path), t + b"/\xc0link")
    os.mkdir(t + b"/sub")
    write(t + b"/sub/new\nline", b"4")
    write(t + b"/sub/\x01\x1b[31m", b"5")
    assert engine.cleanup(t, ME) == 8 + 1
    assert os.listdir(a) == []
    canary.check()


def test_non_utf8_target_given_as_surrogateescaped_str(mode, anchor):
    a = os.fsencode(anchor)
    os.mkdir(a + b"/\xff")
    write(a + b"/\xff/\xfe")
    assert engine.cleanup(os.fsdecode(a + b"/\xff"), ME) == 2
    assert os.listdir(a) == []


def test_5000_files(mode, anchor):
    t = anchor / "many"
    t.mkdir()
    for i in range(5000):
        write(t / f"f{i:05d}", b"")
    assert engine.cleanup(str(t), ME) == 5001
    assert not os.path.lexists(t)


# -- races during the walk -----------------------------------------------------------

@pytest.mark.parametrize("moved", ["d", "b"])
def test_tree_moved_during_walk_climb_identity_check(mode, tmp_path, anchor, moved):
    """A directory above the walk's open fds is renamed out of the target.

    With only 2 held fds, a, b, c are closed while the walk is in e (the
    move happens as the walk starts listing e).  Renaming ``moved`` to
    <outside>/ makes '..' of it lead to <outside>.  Without the (st_dev,
    st_ino) check the walk would take <outside> for the closed parent: list
    it and unlink its names, or rmdir ``moved`` there by its name.
    """
    few = walk.Limits(max_held_fds=2)
    t = anchor / "t"
    chain = ["a", "b", "c", "d", "e"]
    d = t
    for name in chain:
        d = d / name
        d.mkdir(parents=True)
        write(d / "f1", b"ours")
        write(d / "f2", b"ours")
    write(t / "f1", b"ours")
    e_ino = os.stat(t / "a/b/c/d/e").st_ino
    src = t / "/".join(chain[:chain.index(moved) + 1])

    outside = tmp_path / "outside"
    outside.mkdir()
    for n in ("f1", "f2", "keep"):
        write(outside / n, b"canary " + n.encode())
    (outside / "sub").mkdir()
    write(outside / "sub" / "f1", b"canary sub")
    canary_before = snapshot(outside)

    done = []

    def race(call):
        if not done and call.on(e_ino, "getdents64"):
            os.rename(src, outside / moved)  # the attacker moves the tree
            done.append(True)

    with pytest.raises(Failed) as ei:  # (one thread: the walk's own listing of e, not the parallel split's)
        syscalls.supervised(lambda: engine.cleanup(str(t), ME, threads=1, limits=few), race)
    assert done, "the rename never happened: the test did not test anything"
    msg = ei.value.message
    assert "moved" in msg
    parent_of_moved = "/".join(chain[:chain.index(moved)])
    assert f"{t}/{parent_of_moved}: directory was moved during removal" in msg

    # Nothing that was outside the target at the start was deleted.
    after = snapshot(outside)
    for rel, what in canary_before.items():
        assert after.get(rel) == what, rel
    # The moved directory (ours) is still there, somewhere outside.
    assert (outside / moved).is_dir()
    # The abandoned branch inside the target is reported, not silently lost.
    assert (t / "a").is_dir()


def _entering(ino, name):
    """A call that opens ``name`` in the directory ``ino`` (the walk
    entering it: it was listed as a directory)."""
    return lambda call: call.on(ino, "openat2", "openat") and call.string(1) == name


@pytest.mark.parametrize("threads", [1, 2], ids=["walk", "split"])
def test_directory_swapped_for_symlink_during_walk(mode, tmp_path, anchor, canary, threads):
    """CVE-2022-21658 style: listed as a directory, a symlink by the time it
    is entered (swapped just before the first open of it runs: the walk's,
    or with two threads in compiled mode the parallel split's as it looks
    for subdirectories).  The link is removed; its target is never entered."""
    t = anchor / "t"
    (t / "sub").mkdir(parents=True)
    write(t / "sub" / "data", b"ours")
    write(t / "file")
    entering_sub = _entering(os.stat(t).st_ino, b"sub")
    moved_away = tmp_path / "moved_away"
    done = []

    def race(call):
        if not done and entering_sub(call):
            os.rename(t / "sub", moved_away)
            (t / "sub").symlink_to(canary.path)
            done.append(True)

    assert syscalls.supervised(lambda: engine.cleanup(str(t), ME, threads=threads), race) == 3  # file, link, t
    assert done
    assert not os.path.lexists(t)
    canary.check()
    assert (moved_away / "data").read_bytes() == b"ours"


def test_directory_swapped_for_symlink_to_file_during_walk(mode, tmp_path, anchor, canary):
    t = anchor / "t"
    (t / "sub").mkdir(parents=True)
    entering_sub = _entering(os.stat(t).st_ino, b"sub")
    done = []

    def race(call):
        if not done and entering_sub(call):
            os.rename(t / "sub", tmp_path / "moved_away")
            (t / "sub").symlink_to(canary.path / "data")
            done.append(True)

    assert syscalls.supervised(lambda: engine.cleanup(str(t), ME, threads=1), race) == 2
    assert done
    canary.check()


def _removing(ino, name):
    """A call that unlinks or rmdirs ``name`` in the directory ``ino``."""
    return lambda call: call.on(ino, "unlinkat") and call.string(1) == name


def test_directory_refilled_during_walk_is_rescanned(mode, anchor):
    """A file appears in sub just before the walk's rmdir of it (twice):
    the rmdir fails (ENOTEMPTY), sub is listed again and emptied."""
    t = anchor / "t"
    (t / "sub").mkdir(parents=True)
    write(t / "sub" / "f0")
    removing_sub = _removing(os.stat(t).st_ino, b"sub")
    refills = []

    def refill(call):
        if removing_sub(call) and len(refills) < 2:
            refills.append(True)
            write(t / "sub" / f"late{len(refills)}")

    assert syscalls.supervised(lambda: engine.cleanup(str(t), ME), refill) == 5  # f0, late1, late2, sub, t
    assert len(refills) == 2
    assert not os.path.lexists(t)


def test_a_directory_whose_listing_fails_is_named_and_the_rest_removed(mode, anchor):
    """The kernel fails the listing of a (EIO, chosen at its getdents64):
    a is named with the error and left, its sibling b and b's files go."""
    t = anchor / "t"
    for d in ("a", "b"):
        (t / d).mkdir(parents=True)
        write(t / d / "f")
    a_ino = os.stat(t / "a").st_ino
    failed = []

    def fail_a(call):
        if call.on(a_ino, "getdents64"):
            failed.append(True)
            return errno.EIO

    with pytest.raises(Failed) as ei:
        syscalls.supervised(lambda: engine.cleanup(str(t), ME, threads=1), fail_a)
    assert failed
    assert f"{t}/a" in ei.value.message and os.strerror(errno.EIO) in ei.value.message
    assert sorted(os.listdir(t)) == ["a"] and os.listdir(t / "a") == ["f"]


def test_endless_refill_gives_up_after_max_rescans(mode, anchor):
    """A file appears in sub before every rmdir of it: after MAX_RESCANS
    listings again the walk gives up and names sub."""
    t = anchor / "t"
    (t / "sub").mkdir(parents=True)
    removing_sub = _removing(os.stat(t).st_ino, b"sub")
    calls = []

    def refill(call):
        if removing_sub(call):
            calls.append(True)
            assert len(calls) <= 10 * removal.MAX_RESCANS, "the walk keeps listing sub again: no bound"
            write(t / "sub" / f"late{len(calls)}")

    with pytest.raises(Failed) as ei:
        syscalls.supervised(lambda: engine.cleanup(str(t), ME), refill)
    assert len(calls) == removal.MAX_RESCANS + 1  # the first rmdir, and one after each listing again
    assert f"{t}/sub" in ei.value.message
    assert os.strerror(errno.ENOTEMPTY) in ei.value.message


# -- messages -------------------------------------------------------------------------

LINE_BREAKS = ["\n", "\r", "\r\n", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]


@pytest.mark.parametrize("brk", LINE_BREAKS, ids=[repr(b) for b in LINE_BREAKS])
def test_error_messages_are_one_line_whatever_the_names(mode, anchor, canary, brk):
    # The audit log and the caller print the message: a name must not be able
    # to forge a second line.
    name = f"evil{brk}FORGED LINE{brk}"
    (anchor / name).symlink_to(canary.path)
    errors = []
    for path in (f"{anchor}/{name}/data", f"/no{brk}anchor{brk}here"):
        with pytest.raises(MechanismError) as ei:
            engine.cleanup(path, ME)
        errors.append(ei.value)
    for e in errors:
        assert len(e.message.splitlines()) == 1, repr(e.message)
        assert len(str(e).splitlines()) == 1
    canary.check()


# -- regressions -------------------------------------------------------------------------

def test_target_whose_real_location_exceeds_path_max(mode, tmp_path, rmrf):
    """The kernel cannot name a directory deeper than PATH_MAX: the engine
    must not crash on it with a non-MechanismError."""
    rmrf(tmp_path / "long")
    (tmp_path / "long").mkdir()
    comp = "L" * 250
    fd = os.open(tmp_path / "long", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(20):
            os.mkdir(comp, dir_fd=fd)
            nfd = os.open(comp, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        os.makedirs(f"/proc/self/fd/{fd}/proj/.locald/t/sub")
        write(f"/proc/self/fd/{fd}/proj/.locald/t/sub/f")
    finally:
        os.close(fd)
    # Two relative symlinks of 10 components each: a request path of a few
    # dozen bytes for a directory whose real path is ~5000 bytes.
    os.symlink("/".join([comp] * 10), tmp_path / "long" / "l1")
    os.symlink("/".join([comp] * 10), tmp_path / "long" / "l1" / "l2")
    t = f"{tmp_path}/long/l1/l2/proj/.locald/t"
    assert len(t) < 4096
    # Regression (found at a57e550): a raw OSError(ENAMETOOLONG) from
    # readlink(/proc/self/fd/N) in the mount pre-check escaped cleanup().
    # Either outcome is fine: removed, or refused with nothing removed
    # (mounts below cannot be ruled out without a location).
    try:
        removed = engine.cleanup(t, ME)
    except MechanismError:
        assert os.path.isfile(t + "/sub/f"), "refused, but something was removed"
        return
    assert removed == 3
    assert not os.path.lexists(t)


def test_anchor_swapped_after_resolution_is_not_what_gets_removed(mode, tmp_path, anchor, monkeypatch):
    """Target = the anchor itself.  Its owner is checked on the held fd; if
    the caller then renames it away and puts another directory in its place,
    that other directory must not be removed (regression, found at a57e550:
    the engine re-resolved '.locald' by name after the check).  As root,
    test_engine_root.py does the same with a victim owned by another uid."""
    proj = anchor.parent
    make_tree(anchor / "t")
    victim = Canary(proj / "victim")  # e.g. another user's dir, same parent

    real_resolve = engine.scope.resolve
    swapped = []

    def racing_resolve(*a, **kw):
        t = real_resolve(*a, **kw)
        os.rename(anchor, proj / "old")
        os.rename(victim.path, anchor)
        swapped.append(True)
        return t

    monkeypatch.setattr(engine.scope, "resolve", racing_resolve)
    try:
        engine.cleanup(str(anchor), ME)
    except MechanismError:
        pass
    assert swapped
    victim.path = anchor
    victim.check()


@pytest.mark.parametrize("which", ["t", "anchor"])
def test_target_replaced_during_walk_by_an_empty_directory_is_left_alone(mode, tmp_path, anchor, which):
    """The walk empties the directory it holds; its final rmdir goes by name.
    If the name was given to another directory meanwhile (even an empty one,
    which rmdir would happily remove), that directory must stay."""
    t = anchor / "t"
    make_tree(t)
    target = t if which == "t" else anchor
    target_ino = os.stat(target).st_ino
    swapped = []

    def swap(call):  # as the walk first lists the target: it holds the target's fd by then
        if not swapped and call.on(target_ino, "getdents64"):
            os.rename(target, tmp_path / "renamed_away")
            os.mkdir(target)  # somebody else's empty directory
            swapped.append(os.stat(target).st_ino)

    try:
        syscalls.supervised(lambda: engine.cleanup(str(target), ME), swap)
    except MechanismError as e:
        assert "replaced" in e.message
    assert swapped
    assert os.path.isdir(target) and os.stat(target).st_ino == swapped[0]
