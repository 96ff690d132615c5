"""Root tier, end to end through the bus: root-owned leftovers as runc
leaves them, other users' anchors, bind mounts, and the forced no-openat2
fallback.  The mechanism runs as root, clients as the unprivileged test user.
Skipped unless the suite runs as root.
"""

import os
import subprocess

import pytest

from locald_admin import interface as i
from harness import IS_ROOT
from harness.mechanism import stack as mechanism_stack
from harness.trees import (check_canary, make_anchor, make_runc_leftovers, plant_canary, rm_rf, umount,
                           world_tmpdir)
from harness.users import OTHER_USER, ensure_user

pytestmark = pytest.mark.skipif(not IS_ROOT, reason="root tier: needs uid 0 (root-owned files, "
                                "other users, mounts); run the suite as root, as CI does")


@pytest.fixture(scope="module", params=["openat2", "fallback"])
def stack(request):
    args = ["--no-openat2"] if request.param == "fallback" else []
    with mechanism_stack(*args) as (b, _, _):
        yield b


@pytest.fixture
def tree(clients):
    """A project owned by the client user whose .locald holds what runc
    leaves: root-owned 0700 directories and mode 000 files.  Canaries outside
    the target are checked by content after each test."""
    top = world_tmpdir()
    anchor = make_anchor(top, clients.uid, clients.gid)
    make_runc_leftovers(anchor)
    plant_canary(top)
    yield anchor
    check_canary(top)
    rm_rf(top)


def test_client_delegates_root_owned_leftovers(stack, tree, clients):
    r = clients.api("force", str(tree / "svc"), stack.address)
    assert r["ok"], r
    assert not (tree / "svc").exists()
    assert tree.is_dir()


def test_async_client_delegates_too(stack, tree, clients):
    r = clients.api("force_async", str(tree / "svc"), stack.address)
    assert r["ok"], r
    assert not (tree / "svc").exists()


def test_without_the_mechanism_the_user_gets_permission_denied(tree, clients):
    """The problem itself: the client user cannot remove runc's leftovers."""
    r = clients.api("force", str(tree / "svc"), "unix:path=/nonexistent")
    assert r["type"] == "PermissionError"
    assert (tree / "svc" / "rootfs" / "run" / "shm" / "secret").exists()


def test_another_users_anchor_is_outside_scope(stack, tree, clients):
    other = ensure_user(OTHER_USER)
    subprocess.run(["chown", f"{other.pw_uid}:{other.pw_gid}", str(tree)], check=True)
    r = clients.api("request", str(tree / "svc"), stack.address)
    assert r["type"] == "OutsideScopeError", r
    assert (tree / "svc" / "rootfs" / "run" / "shm" / "secret").exists()


def test_root_owned_anchor_in_a_root_owned_project_is_outside_scope_for_a_user(stack, tree, clients):
    os.chown(tree, 0, 0)
    os.chown(tree.parent, 0, 0)  # a root-made .locald in the user's own project would count
    cp = clients.shim("admin", "cleanup", str(tree / "svc"), bus_address=stack.address)
    assert cp.returncode == i.EXIT_OUTSIDE_SCOPE, cp.stderr
    assert (tree / "svc" / "rootfs" / "run" / "shm" / "secret").exists()


def test_symlinked_anchor_to_another_users_dir_is_outside_scope(stack, tree, clients):
    """A user points their own .locald at someone else's directory."""
    victim = tree.parent.parent / "victim"
    victim.mkdir()
    (victim / "data").write_text("victim")
    alias = tree.parent.parent / "alias"
    alias.mkdir()
    os.symlink(victim, alias / ".locald")
    subprocess.run(["chown", "-hR", f"{clients.uid}:{clients.gid}", str(alias)], check=True)
    cp = clients.shim("admin", "cleanup", str(alias / ".locald" / "data"), bus_address=stack.address)
    assert cp.returncode == i.EXIT_OUTSIDE_SCOPE, cp.stderr
    assert (victim / "data").read_text() == "victim"


def test_symlink_below_the_anchor_to_a_root_canary(stack, tree, clients):
    canary = tree.parent.parent / "canary"
    os.symlink(canary, tree / "link")
    os.lchown(tree / "link", clients.uid, clients.gid)
    cp = clients.shim("admin", "cleanup", str(tree / "link" / "precious"), bus_address=stack.address)
    assert cp.returncode == i.EXIT_OUTSIDE_SCOPE, cp.stderr
    cp = clients.shim("admin", "cleanup", str(tree / "link"), bus_address=stack.address)
    assert cp.returncode == 0  # the link itself goes, never its target
    assert not os.path.lexists(tree / "link")


@pytest.fixture
def bind_mount(tree):
    """A bind mount inside the target, as a container's volume would be;
    its source's canaries must survive.  Always unmounted."""
    src = tree.parent.parent / "volume"
    src.mkdir()
    (src / "db").write_text("volume data")
    mnt = tree / "svc" / "rootfs" / "data"
    mnt.mkdir()
    subprocess.run(["mount", "--bind", str(src), str(mnt)], check=True)
    try:
        yield mnt
    finally:
        umount(mnt, check=False)
        assert (src / "db").read_text() == "volume data"


def test_bind_mount_inside_the_target_is_refused(stack, tree, bind_mount, clients):
    cp = clients.shim("admin", "cleanup", str(tree / "svc"), bus_address=stack.address)
    assert cp.returncode == i.EXIT_MOUNT_POINT, cp.stderr
    assert str(bind_mount) in cp.stderr
    assert (tree / "svc" / "rootfs" / "run" / "shm" / "secret").exists()  # nothing removed


def test_bind_mount_at_the_target_and_above_it(stack, tree, bind_mount, clients):
    for target in (bind_mount, bind_mount / "db"):
        cp = clients.shim("admin", "cleanup", str(target), bus_address=stack.address)
        assert cp.returncode == i.EXIT_MOUNT_POINT, (target, cp.stderr)
