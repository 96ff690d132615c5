"""The client's own first attempt (``client/as_user.py``): a tree removed as
the calling user with the mechanism's fd-anchored walk.

It used to be ``shutil.rmtree``, which walked into a container's bind mount
of the project's source (``<proj>/src`` at ``.locald/services/web/rootfs/app``)
and deleted the user's files through it, then raised EBUSY, which is no
PermissionError, so the mechanism (which would have refused the tree with
MountPoint) was never asked.  Now a mount at or below the target is refused
before anything is deleted, no symlink is followed, and only EACCES/EPERM
are delegated; every other error reaches the caller unchanged.

In-process tests run anywhere (both with openat2 and the forced fallback);
mounts need root.  The end-to-end tests run the client API as the
unprivileged test user against the real mechanism and check, from its audit
log, whether it was asked.
"""

import errno
import os
import subprocess

import pytest

from locald_admin.client import MountPointError, as_user
from harness import IS_ROOT
from harness.mechanism import Mechanism
from harness.trees import make_chain, snapshot, umount

needs_root = pytest.mark.skipif(not IS_ROOT, reason="root tier: mounts need uid 0; run the suite as root")


def _chown_tree(path, clients):
    subprocess.run(["chown", "-R", f"{clients.uid}:{clients.gid}", str(path)], check=True)


@pytest.fixture
def canary(top):
    """A directory outside every target; its content must survive."""
    c = top / "canary"
    (c / "sub").mkdir(parents=True)
    (c / "precious").write_text("canary")
    (c / "sub" / "deep").write_text("deep canary")
    before = snapshot(c)
    yield c
    assert snapshot(c) == before, "the canary outside the target was changed"


# -- anywhere, any user ----------------------------------------------------------------

def test_a_tree_with_every_kind_of_entry_is_removed(mode, top, canary):
    t = top / "proj" / ".locald" / "svc"
    (t / "a" / "b" / "c").mkdir(parents=True)
    (t / "a" / "file").write_text("x")
    (t / "a" / "b" / "c" / "deep").write_text("y")
    os.mkfifo(t / "fifo")
    (t / "abs-link").symlink_to(canary)
    (t / "a" / "rel-link").symlink_to("../../../../canary/precious")
    (t / "a" / "b" / "c" / "dir-link").symlink_to(canary / "sub")
    as_user.remove(str(t))
    assert not os.path.lexists(t)
    assert (top / "proj" / ".locald").is_dir()


def test_a_symlink_target_is_unlinked_never_followed(mode, top, canary):
    link = top / "link"
    link.symlink_to(canary)
    as_user.remove(str(link))
    assert not os.path.lexists(link)


def test_missing_entries_and_files_in_the_way_are_success(mode, top):
    (top / "file").write_text("x")
    as_user.remove(str(top / "missing"))
    as_user.remove(str(top / "missing" / "deeper"))
    as_user.remove(str(top / "file" / "below-a-file"))
    assert (top / "file").read_text() == "x"


def test_a_10000_deep_chain_is_removed(mode, top):
    make_chain(top, 10_000)  # deeper than PATH_MAX: built relative to fds
    as_user.remove(str(top / "d"))
    assert os.listdir(top) == []


# -- root: mounts ---------------------------------------------------------------------

@pytest.fixture
def web(top, clients):
    """A project of the client user whose container is still set up: runc
    made the mount target ``rootfs/app`` (as root) and bind-mounted the
    project's ``src`` there, visible in this mount namespace.  Unmounted in
    teardown, always."""
    proj = top / "proj"
    src = proj / "src"
    (src / "lib").mkdir(parents=True)
    (src / "main.py").write_text("print('the user's work')\n")
    (src / "lib" / "util.py").write_text("X = 1\n")
    web = proj / ".locald" / "services" / "web"
    app = web / "rootfs" / "app"
    app.mkdir(parents=True)
    (web / "config.json").write_text("{}")
    _chown_tree(proj, clients)
    os.chown(app, 0, 0)  # before mounting: afterwards it would chown src
    mounted = []
    try:
        subprocess.run(["mount", "--bind", str(src), str(app)], check=True, capture_output=True)
        mounted.append(app)
        yield web, src, app
    finally:
        for m in mounted:
            umount(m, check=False)


@needs_root
def test_bind_mount_of_the_source_is_refused_before_anything_is_deleted(mode, web):
    target, src, app = web
    src_before, tree_before = snapshot(src), snapshot(target)
    with pytest.raises(MountPointError) as ei:
        as_user.remove(str(target))
    assert str(app) in str(ei.value) and "nothing was removed" in str(ei.value)
    assert snapshot(src) == src_before
    assert snapshot(target) == tree_before


@needs_root
def test_the_mount_point_itself_and_a_path_inside_it_are_refused(mode, web):
    target, src, app = web
    before = snapshot(src)
    with pytest.raises(MountPointError):
        as_user.remove(str(app))
    assert snapshot(src) == before
    as_user.remove(str(app / "lib"))  # inside the mount, nothing is mounted below: the caller's to delete
    assert not (src / "lib").exists() and (src / "main.py").exists()


@needs_root
def test_a_tmpfs_inside_the_target_is_refused(mode, top):
    t = top / "proj" / ".locald" / "svc"
    shm = t / "rootfs" / "run" / "shm"
    shm.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(shm)], check=True)
    try:
        (shm / "data").write_text("in the tmpfs")
        before = snapshot(t)
        with pytest.raises(MountPointError):
            as_user.remove(str(t))
        assert snapshot(t) == before
    finally:
        umount(shm, check=False)


# -- root, end to end: the client API as the user, the real mechanism on a bus ---------

@pytest.fixture(scope="module")
def mechanism(bus, polkit):
    polkit.allow(True)
    with Mechanism(bus) as m:
        yield m


@needs_root
@pytest.mark.parametrize("op", ["force", "force_async"])
def test_force_remove_dir_all_keeps_the_bind_mounted_source_and_does_not_delegate(op, web, clients, bus,
                                                                                   mechanism):
    target, src, app = web
    src_before, tree_before = snapshot(src), snapshot(target)
    asked = len(mechanism.audit_lines())
    r = clients.api(op, str(target), bus.address)
    assert r["type"] == "MountPointError", r
    assert str(app) in r["message"], r
    assert snapshot(src) == src_before, "the user's source was deleted through the bind mount"
    assert snapshot(target) == tree_before
    assert len(mechanism.audit_lines()) == asked, "the mechanism was asked"


@needs_root
@pytest.mark.parametrize("op", ["force", "force_async"])
def test_a_read_only_file_system_error_reaches_the_caller_unchanged(op, top, clients, bus, mechanism):
    """EROFS is not a permission problem: more privilege would not help, so
    it is raised as it is and the mechanism is not asked."""
    ro = top / "ro"
    ro.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(ro)], check=True)
    try:
        t = ro / "proj" / ".locald" / "svc"
        (t / "sub").mkdir(parents=True)
        (t / "sub" / "file").write_text("x")
        _chown_tree(ro / "proj", clients)
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        asked = len(mechanism.audit_lines())
        r = clients.api(op, str(t), bus.address)
        assert (r["type"], r["errno"]) == ("OSError", errno.EROFS), r
        assert r["filename"] == str(t / "sub" / "file"), r
        assert r["cause"] is None and not r["notes"], r
        assert (t / "sub" / "file").read_text() == "x"
        assert len(mechanism.audit_lines()) == asked, "the mechanism was asked"
    finally:
        umount(ro, check=False)


@needs_root
@pytest.mark.parametrize("op", ["force", "force_async"])
def test_root_owned_leftovers_next_to_the_users_files_are_delegated(op, top, clients, bus, mechanism):
    """The other side of the rule: EACCES (root-owned 0700 leftovers) goes to
    the mechanism, which removes the rest."""
    t = top / "proj" / ".locald" / "svc"
    shm = t / "rootfs" / "run" / "shm"
    shm.mkdir(parents=True)
    (t / "own-file").write_text("the user's")
    _chown_tree(top / "proj", clients)
    for d in (shm.parent, shm):
        os.chown(d, 0, 0)
        os.chmod(d, 0o700)
    (shm / "secret").write_text("x")
    asked = len(mechanism.audit_lines())
    r = clients.api(op, str(t), bus.address)
    assert r["ok"], r
    assert not os.path.lexists(t)
    assert len(mechanism.audit_lines()) == asked + 1
