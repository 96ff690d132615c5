"""Engine tests that need root: real ownership, mounts, immutable files.

Root-owned leftovers below a ``.locald`` owned by an unprivileged uid, the
owner check with real other uids, and every kind of mount (bind mounts at,
inside and above the target, tmpfs, mounts that appear during the walk), each
with openat2 and with the forced fallback.  Canaries live outside the target
(bind sources, tmpfs contents) and are checked by content.  Every mount made
here is unmounted in teardown, lazily if need be.
"""

import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from harness import syscalls
from harness.trees import Canary, snapshot, umount, write
from locald_admin.fs import mounts, walk
from locald_admin import pathrules
from locald_admin.mechanism import config as cfgmod
from locald_admin.mechanism import engine, scope
from locald_admin.mechanism.errors import Failed, MountPoint, OutsideScope

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0,
    reason="needs root (uid 0): chown to other uids, mount --bind / -t tmpfs, chattr +i")

USER = 65534      # nobody: the unprivileged owner of the .locald
OTHER = 4242      # some other unprivileged uid


# -- fixtures and helpers ---------------------------------------------------------

def _mount_points_below(path):
    prefix = os.fsencode(path).rstrip(b"/") + b"/"
    return sorted((mp for _, mp in mounts.mount_points() if mp.startswith(prefix)),
                  key=len, reverse=True)


@pytest.fixture
def tmp(tmp_path):
    """tmp_path, with a guarantee: nothing stays mounted below it."""
    try:
        yield tmp_path
    finally:
        for mp in _mount_points_below(tmp_path):
            umount(mp, check=False)
        assert not _mount_points_below(tmp_path), "a test mount could not be removed"


@pytest.fixture
def canary(tmp):
    c = Canary(tmp / "canary")
    yield c
    c.check()


@pytest.fixture
def anchor(tmp):
    """<tmp>/proj/.locald owned by USER (the project dir too)."""
    proj = tmp / "proj"
    a = proj / ".locald"
    a.mkdir(parents=True)
    os.chown(proj, USER, USER)
    os.chown(a, USER, USER)
    return a


def make_root_leftovers(t):
    """Root-owned leftovers as a container runtime leaves them: 0700 and 000
    directories, 000 files, mixed with the user's own files."""
    t.mkdir()
    os.chown(t, USER, USER)
    write(t / "user_file", b"u", uid=USER)
    r = t / "rootdir"
    (r / "inner").mkdir(parents=True)
    write(r / "secret", b"s", mode=0o000)
    write(r / "inner" / "f", b"f", mode=0o000)
    os.chmod(r / "inner", 0o000)
    os.chmod(r, 0o700)
    z = t / "zerodir"
    (z / "sub").mkdir(parents=True)
    write(z / "sub" / "f", b"f", mode=0o000)
    os.chmod(z / "sub", 0o000)
    os.chmod(z, 0o000)
    write(t / "root_file", b"r", mode=0o000)
    os.mkfifo(t / "fifo", 0o000)
    os.mknod(t / "dev_null_copy", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    (t / "link").symlink_to("/etc/shadow")
    os.lchown(t / "link", 0, 0)
    for p in (t / "rootdir", t / "zerodir", t / "root_file"):
        assert os.lstat(p).st_uid == 0
    return len(snapshot(t))


# -- ownership ---------------------------------------------------------------------

def test_root_owned_leftovers_removed_for_the_anchor_owner(mode, anchor):
    t = anchor / "t"
    n = make_root_leftovers(t)
    assert engine.cleanup(str(t), USER) == n + 1
    assert not os.path.lexists(t)
    assert os.listdir(anchor) == []
    st = os.stat(anchor)
    assert (st.st_uid, stat.S_ISDIR(st.st_mode)) == (USER, True)
    assert os.stat("/etc/shadow").st_size > 0


def test_user_owned_anchor_itself_removed_with_root_leftovers(mode, anchor):
    n = make_root_leftovers(anchor / "t")
    assert engine.cleanup(str(anchor), USER) == n + 2
    assert not os.path.lexists(anchor)
    assert anchor.parent.is_dir()


def test_anchor_owned_by_another_uid_is_outside_scope(mode, anchor):
    make_root_leftovers(anchor / "t")
    before = snapshot(anchor.parent)
    for p in (anchor, anchor / "t", anchor / "t" / "rootdir", anchor / "t" / "root_file"):
        with pytest.raises(OutsideScope) as ei:
            engine.cleanup(str(p), OTHER)
        assert f"owned by uid {USER}" in ei.value.message
    assert snapshot(anchor.parent) == before


def test_root_owned_anchor_with_unprivileged_caller_is_outside_scope(mode, anchor):
    """In a root-owned project: a root-made .locald in the caller's own
    project counts as theirs (next tests)."""
    os.chown(anchor, 0, 0)
    os.chown(anchor.parent, 0, 0)
    make_root_leftovers(anchor / "t")
    before = snapshot(anchor.parent)
    for p in (anchor, anchor / "t", anchor / "t" / "user_file"):
        with pytest.raises(OutsideScope) as ei:
            engine.cleanup(str(p), USER)
        assert "owned by uid 0" in ei.value.message
    assert snapshot(anchor.parent) == before


def runc_made_anchor(anchor):
    """The .locald as runc leaves it when it made it itself (``runc --root
    <proj>/.locald/runc-state``): root:root 0700, in the user's project."""
    os.chown(anchor, 0, 0)
    os.chmod(anchor, 0o700)
    os.chmod(anchor.parent, 0o755)
    assert os.stat(anchor.parent).st_uid == USER


def test_a_root_made_anchor_in_the_callers_own_project_counts_as_theirs(mode, anchor):
    runc_made_anchor(anchor)
    n = make_root_leftovers(anchor / "t")
    assert engine.cleanup(str(anchor / "t"), USER) == n + 1
    make_root_leftovers(anchor / "u")
    assert engine.cleanup(str(anchor), USER) > 0  # the anchor itself too
    assert not os.path.lexists(anchor) and anchor.parent.is_dir()


def refused_outside_scope(anchor):
    """Root's leftovers made in anchor/t, then the caller's Cleanup of it:
    refused as OutsideScope with nothing changed; the refusal's message."""
    make_root_leftovers(anchor / "t")
    before = snapshot(anchor.parent)
    with pytest.raises(OutsideScope) as ei:
        engine.cleanup(str(anchor / "t"), USER)
    assert snapshot(anchor.parent) == before
    return ei.value.message


@pytest.mark.parametrize("mode_bits", [0o775, 0o757, 0o1777])
def test_a_root_made_anchor_in_a_project_others_may_write_is_outside_scope(mode, anchor, mode_bits):
    """Someone else could have put it there (or could swap it): refused."""
    runc_made_anchor(anchor)
    os.chmod(anchor.parent, mode_bits)
    message = refused_outside_scope(anchor)
    assert "owned by uid 0" in message and f"{mode_bits:04o}" in message


@pytest.mark.parametrize("mode_bits", [0o775, 0o2775, 0o1777])
def test_a_root_made_anchor_others_may_write_is_outside_scope(mode, anchor, mode_bits):
    """The trust rule's condition for root's directories holds for the
    anchor too: a root-owned .locald that others may write could have been
    moved into the project by one of them (say from a shared group
    directory), root's files with it."""
    runc_made_anchor(anchor)
    os.chown(anchor, 0, 4343)
    os.chmod(anchor, mode_bits)
    assert f"and others may write to it (mode {mode_bits:04o})" in refused_outside_scope(anchor)


def test_a_root_made_anchor_in_another_users_project_is_outside_scope(mode, anchor):
    runc_made_anchor(anchor)
    os.chown(anchor.parent, OTHER, OTHER)
    assert f"holding it is owned by uid {OTHER}" in refused_outside_scope(anchor)


def test_another_users_anchor_in_the_callers_project_stays_outside_scope(mode, anchor):
    """The rule is for root-made anchors only: a .locald of another user in
    the caller's project is still theirs."""
    os.chown(anchor, OTHER, OTHER)
    make_root_leftovers(anchor / "t")
    with pytest.raises(OutsideScope):
        engine.cleanup(str(anchor / "t"), USER)
    assert (anchor / "t" / "root_file").exists()


def test_the_root_made_anchor_rule_can_be_switched_off(mode, anchor):
    runc_made_anchor(anchor)
    make_root_leftovers(anchor / "t")
    off = cfgmod.parse("[owner]\nroot_made_anchor = no\n")
    with pytest.raises(OutsideScope):
        engine.cleanup(str(anchor / "t"), USER, off)
    assert (anchor / "t" / "root_file").exists()
    assert engine.cleanup(str(anchor / "t"), USER, cfgmod.parse("[owner]\nroot_made_anchor = yes\n")) > 0


def test_a_root_made_data_directory_anchor_does_not_count(tmp):
    """~/.local/share/locald is never made by runc: the rule is .locald's
    only.  (The owner rule alone, on held fds: USER has no real home here.)"""
    share = tmp / "home" / ".local" / "share"
    (share / "locald").mkdir(parents=True)
    os.chown(share, USER, USER)
    os.chmod(share, 0o755)
    os.chown(share / "locald", 0, 0)
    parsed = pathrules.parse(str(share / "locald" / "t"))
    assert parsed.kind == pathrules.KIND_DATA
    fd = os.open(share, os.O_PATH)
    try:
        why = scope._not_the_callers(parsed, fd, os.stat(share / "locald"), USER, cfgmod.Config())
    finally:
        os.close(fd)
    assert why is not None and "owned by uid 0" in why


@pytest.mark.parametrize("owner", [USER, OTHER, 0])
def test_root_caller_may_clean_any_anchor(mode, anchor, owner):
    """Root may clean anyone's anchor; the anchor's owner then takes the
    caller's place for the trust rule (S13): USER's directory in OTHER's
    anchor (which OTHER could write) is refused as a target and left in
    place, named, inside the anchor."""
    os.chown(anchor, owner, owner)
    n = make_root_leftovers(anchor / "t")
    if owner == OTHER:
        with pytest.raises(OutsideScope, match=f"owned by uid {USER} \\(nobody\\), not the caller's"):
            engine.cleanup(str(anchor / "t"), 0)
        with pytest.raises(Failed, match=f"t: owned by uid {USER} \\(nobody\\), not the caller's"):
            engine.cleanup(str(anchor), 0)
        assert (anchor / "t" / "user_file").exists()
        return
    assert engine.cleanup(str(anchor / "t"), 0) == n + 1
    assert os.listdir(anchor) == []


def test_anchor_owner_is_checked_on_the_anchor_not_the_target(mode, anchor):
    # Everything below a user-owned anchor is in scope, root's leftovers
    # included, but another user's directory in it is left in place (the
    # caller could have moved it there: the owner rule, S13)...
    t = anchor / "t"
    t.mkdir()
    os.chown(t, USER, USER)
    (t / "theirs").mkdir()
    os.chown(t / "theirs", OTHER, OTHER)
    write(t / "theirs" / "f", uid=OTHER)
    with pytest.raises(Failed, match=f"theirs: owned by uid {OTHER}"):
        engine.cleanup(str(t), USER)
    assert (t / "theirs" / "f").exists()
    shutil.rmtree(t / "theirs")
    write(t / "f", uid=OTHER)
    assert engine.cleanup(str(t), USER) == 2
    # ... and a user-owned directory below a foreign anchor is not.
    os.chown(anchor, OTHER, OTHER)
    (anchor / "u").mkdir()
    os.chown(anchor / "u", USER, USER)
    with pytest.raises(OutsideScope):
        engine.cleanup(str(anchor / "u"), USER)
    assert (anchor / "u").is_dir()


# -- mounts at, inside and above the target ---------------------------------------------

def _tree_with_mount_inside(anchor, where):
    t = anchor / "t"
    (t / "x").mkdir(parents=True)
    write(t / "before", b"sibling")
    write(t / "x" / "f", b"sibling 2")
    (t / "zzz").mkdir()
    write(t / "zzz" / "f", b"sibling 3")
    mp = t / where
    mp.mkdir(parents=True, exist_ok=True)
    return t, mp


@pytest.mark.parametrize("where", ["mnt", "x/mnt", "x/y/z/mnt"])
@pytest.mark.parametrize("target", ["t", "anchor"])
def test_bind_mount_inside_target_nothing_removed(mode, anchor, canary, mounter, where, target):
    t, mp = _tree_with_mount_inside(anchor, where)
    mounter.bind(canary.path, mp)
    if target == "anchor":
        t = anchor
    before = snapshot(t)
    with pytest.raises(MountPoint) as ei:
        engine.cleanup(str(t), USER)
    assert str(mp) in ei.value.message
    assert "nothing was removed" in ei.value.message
    assert snapshot(t) == before
    canary.check()


def test_bind_mount_of_a_file_inside_target(mode, anchor, canary, mounter):
    t, _ = _tree_with_mount_inside(anchor, "x")
    write(t / "x" / "victim", b"placeholder")
    mounter.bind(canary.path / "data", t / "x" / "victim")
    before = snapshot(t)
    with pytest.raises(MountPoint) as ei:
        engine.cleanup(str(t), USER)
    assert str(t / "x" / "victim") in ei.value.message
    assert snapshot(t) == before
    canary.check()


def mount_on(path, kind, mounter, canary):
    """Mount on ``path`` the canary's directory ("bind") or a fresh tmpfs
    with a canary of its own ("tmpfs"); the Canary whose content must survive."""
    if kind == "bind":
        mounter.bind(canary.path, path)
        return canary
    mounter("-t", "tmpfs", "-o", "size=1m", "tmpfs", target=path)
    return Canary(path)


@pytest.mark.parametrize("kind", ["bind", "tmpfs"])
def test_walk_refuses_to_enter_a_mount_the_precheck_missed(mode, anchor, canary, mounter, monkeypatch, kind):
    """The walk's own defence, alone: the mountinfo pre-check is blinded (as
    if the mount appeared right after it); open_beneath must still refuse to
    cross into the mount and the mounted content must survive."""
    t, mp = _tree_with_mount_inside(anchor, "x/mnt")
    inside = mount_on(mp, kind, mounter, canary)
    monkeypatch.setattr(mounts, "mounts_at_or_below", lambda fd, mounts=None: [])
    with pytest.raises(MountPoint) as ei:
        engine.cleanup(str(t), USER)
    assert f"{t}/x/mnt" in ei.value.message
    assert "left in place" in ei.value.message
    inside.check()
    canary.check()
    # Everything not above the mount went; the mount's ancestors stayed.
    assert sorted(os.listdir(t)) == ["x"]
    assert os.listdir(t / "x") == ["mnt"]


def test_tmpfs_mount_inside_target(mode, anchor, mounter):
    t, mp = _tree_with_mount_inside(anchor, "x/tmp")
    mounter("-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", target=mp)
    inside = Canary(mp)
    before = snapshot(t)
    with pytest.raises(MountPoint) as ei:
        engine.cleanup(str(t), USER)
    assert str(mp) in ei.value.message
    assert snapshot(t) == before
    inside.check()


@pytest.mark.parametrize("kind", ["bind", "tmpfs"])
def test_mount_at_the_target_itself(mode, anchor, canary, mounter, kind):
    t = anchor / "t"
    t.mkdir()
    inside = mount_on(t, kind, mounter, canary)
    with pytest.raises(MountPoint) as ei:
        engine.cleanup(str(t), USER)
    assert "mount point" in ei.value.message
    inside.check()
    canary.check()


@pytest.mark.parametrize("below", ["data", "sub", "sub/deep", "sub/deep/file"])
def test_bind_mount_at_an_intermediate_component(mode, anchor, canary, mounter, below):
    mp = anchor / "x"
    mp.mkdir()
    mounter.bind(canary.path, mp)
    with pytest.raises(MountPoint) as ei:
        engine.cleanup(f"{mp}/{below}", USER)
    assert "x is a mount point" in ei.value.message
    canary.check()


def test_bind_mount_at_a_deeper_intermediate_component(mode, anchor, canary, mounter):
    mp = anchor / "a" / "b"
    mp.mkdir(parents=True)
    mounter.bind(canary.path, mp)
    with pytest.raises(MountPoint):
        engine.cleanup(f"{mp}/sub/deep", USER)
    canary.check()


@pytest.mark.parametrize("below", ["", "data", "sub"])
def test_bind_mount_at_the_anchor(mode, tmp, canary, mounter, below):
    proj = tmp / "proj"
    (proj / ".locald").mkdir(parents=True)
    mounter.bind(canary.path, proj / ".locald")
    # Caller root: the owner check would pass, only the mount check stops it.
    with pytest.raises(MountPoint) as ei:
        engine.cleanup(str(proj / ".locald") + ("/" + below if below else ""), 0)
    assert "anchor .locald is a mount point" in ei.value.message
    canary.check()


# -- mounts appearing during the walk --------------------------------------------------

def test_mount_appearing_on_a_subdirectory_not_yet_entered(mode, anchor, canary, mounter):
    t = anchor / "t"
    for d in ("a", "b", "c"):
        (t / d).mkdir(parents=True)
        write(t / d / "f", b"ours")
    t_ino = os.stat(t).st_ino
    done = []

    def race(call):
        if not done and call.on(t_ino, "getdents64"):
            mounter.bind(canary.path, t / "b")  # after the pre-check, before the walk reaches b
            done.append(True)

    with pytest.raises(MountPoint) as ei:
        syscalls.supervised(lambda: engine.cleanup(str(t), USER), race)
    assert done
    assert f"{t}/b" in ei.value.message
    assert "appeared during removal" in ei.value.message
    canary.check()
    assert sorted(os.listdir(t)) == ["b"]


def test_mount_appearing_on_the_directory_being_listed(mode, anchor, canary, mounter):
    """The walk holds b's fd when something is mounted over b: it keeps
    working on the covered directory (fd), never on what is now at the path."""
    t = anchor / "t"
    (t / "b").mkdir(parents=True)
    write(t / "b" / "data", b"ours, covered by the mount")
    write(t / "b" / "other", b"ours")
    b_ino = os.stat(t / "b").st_ino
    done = []

    def race(call):  # as the walk unlinks b's first entry: it holds b's fd and has listed b
        if not done and call.on(b_ino, "unlinkat"):
            mounter.bind(canary.path, t / "b")
            done.append(True)

    with pytest.raises(MountPoint) as ei:
        syscalls.supervised(lambda: engine.cleanup(str(t), USER), race)
    assert done
    assert f"{t}/b" in ei.value.message
    canary.check()
    # The covered directory itself was emptied through the held fd.
    umount(t / "b", check=False)
    assert os.listdir(t / "b") == []


# -- immutable files --------------------------------------------------------------------

@pytest.fixture
def vartmp():
    """A directory on the root file system (tmpfs has no chattr +i)."""
    d = Path(tempfile.mkdtemp(prefix="locald-admin-test-", dir="/var/tmp"))
    immutable = []
    try:
        yield d, immutable
    finally:
        for p in immutable:
            subprocess.run(["chattr", "-i", str(p)], capture_output=True)
        subprocess.run(["rm", "-rf", "--one-file-system", "--", str(d)], check=False)


def test_immutable_file_is_named_and_everything_else_removed(mode, vartmp):
    base, immutable = vartmp
    anchor = base / "proj" / ".locald"
    anchor.mkdir(parents=True)
    os.chown(anchor, USER, USER)
    t = anchor / "t"
    (t / "a").mkdir(parents=True)
    (t / "b").mkdir()
    write(t / "a" / "stuck", b"immutable", mode=0o000)
    write(t / "a" / "other")
    write(t / "b" / "f")
    write(t / "c")
    immutable.append(t / "a" / "stuck")
    r = subprocess.run(["chattr", "+i", str(t / "a" / "stuck")], capture_output=True, text=True)
    if r.returncode != 0:
        immutable.clear()
        pytest.skip(f"chattr +i not supported here: {r.stderr.strip()}")
    with pytest.raises(Failed) as ei:
        engine.cleanup(str(t), USER)
    msg = ei.value.message
    assert f"{t}/a/stuck: {os.strerror(1)}" in msg  # EPERM
    assert "could not remove 1 entries" in msg
    assert "; 4 entries removed" in msg  # a/other, b/f, b, c
    left = snapshot(t)
    assert sorted(left) == [b"a", b"a/stuck"]
    assert left[b"a/stuck"] == ("file", b"immutable")


# -- regressions (bugs found in the engine at a57e550) ----------------------------------

def test_anchor_swapped_after_the_owner_check_is_not_removed(mode, tmp, monkeypatch):
    """TOCTOU: target = the anchor itself; the owner is checked on the held
    fd, then the caller swaps in another uid's directory under the name
    '.locald'.  At a57e550 engine._remove_entry re-resolved the name from the
    prefix fd and removed the victim; it must work on the checked fd."""
    proj = tmp / "proj"
    anchor = proj / ".locald"
    anchor.mkdir(parents=True)
    os.chown(proj, USER, USER)
    os.chown(anchor, USER, USER)
    # Another user's directory in the same (say, group-writable) directory.
    victim = Canary(proj / "victims_project")
    for p in [victim.path, *victim.path.rglob("*")]:
        os.chown(p, OTHER, OTHER)
    victim.before = snapshot(victim.path)
    # Without a race the owner check refuses that directory as an anchor.
    os.rename(anchor, proj / "old")
    os.rename(victim.path, anchor)
    with pytest.raises(OutsideScope):
        engine.cleanup(str(anchor), USER)
    os.rename(anchor, victim.path)
    os.rename(proj / "old", anchor)
    victim.check()

    real_resolve = scope.resolve
    swapped = []

    def racing_resolve(*a, **kw):
        t = real_resolve(*a, **kw)
        os.rename(anchor, proj / "old")          # the caller swaps its checked anchor ...
        os.rename(victim.path, anchor)           # ... for someone else's directory
        swapped.append(True)
        return t

    monkeypatch.setattr(scope, "resolve", racing_resolve)
    try:
        engine.cleanup(str(anchor), USER)
    except (OutsideScope, Failed):
        pass
    assert swapped
    victim.path = anchor
    victim.check()


def test_mount_below_target_named_deleted_removes_nothing(mode, anchor, canary, mounter):
    """At a57e550 mounts.fd_location() took a location ending in ' (deleted)'
    for a removed directory, so the mount pre-check found nothing below a
    target named 'x (deleted)' and the walk removed the mount's siblings."""
    t = anchor / "x (deleted)"
    (t / "mnt").mkdir(parents=True)
    write(t / "keep", b"must stay: nothing is removed when a mount is below")
    mounter.bind(canary.path, t / "mnt")
    before = snapshot(t)
    with pytest.raises(MountPoint):
        engine.cleanup(str(t), USER)
    canary.check()
    assert snapshot(t) == before


# -- the anchor itself in a directory others may write (R8) -----------------------------

@pytest.mark.parametrize("holder_mode,holder_uid,kept", [
    (0o777, 0, True),       # anyone may rename entries of it: exchange the anchor before its rmdir
    (0o775, USER, True),    # the group may
    (0o755, OTHER, True),   # its owner, another user, may
    (0o1777, 0, False),     # sticky: renaming the anchor needs owning it
    (0o755, USER, False),   # only the caller (and root) may
])
def test_the_anchor_is_emptied_and_kept_where_others_could_swap_it(mode, anchor, holder_mode, holder_uid, kept):
    """Removing the anchor itself ends with an rmdir by name in the
    directory holding it: where someone else could exchange the anchor for
    an empty directory of theirs just before, that rmdir would remove their
    directory.  There the contents go and the anchor stays (success, noted
    ``anchor_kept``); elsewhere it goes."""
    holder = anchor.parent
    os.chown(holder, holder_uid, holder_uid)
    os.chmod(holder, holder_mode)
    n = make_root_leftovers(anchor / "t")
    out = engine.Engine().cleanup(str(anchor), USER, cfgmod.Config(), engine.Progress())
    if kept:
        assert out.removed == n + 1 and out.notes == {"anchor_kept": "yes"}  # t and below
        assert anchor.is_dir() and os.listdir(anchor) == []
    else:
        assert out.removed == n + 2 and out.notes == {}  # and the anchor
        assert not os.path.lexists(anchor)
