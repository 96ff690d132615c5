"""Real runc, real leftovers (issue 9): containers started by Debian's runc
in a test user's project, then cleaned up the way locald does, through the
client library as that user and the mechanism on a private bus.

Leftovers made with mkdir passed where the real thing failed, so here runc
itself makes them: the mount targets it creates in the rootfs as root
(``proc``, ``dev``, ``sys``, ``app``, ``run/shm``), its state directory, and
``.locald`` itself when it creates that for its state.  In every case the
project's bind-mounted source must survive.

Root only (runc runs as root); skipped with the reason without runc or a
static busybox.  Containers and their cgroups are removed afterwards.
"""

import os
import subprocess

import pytest

from harness import IS_ROOT
from harness import runc as runcmod
from harness.mechanism import Mechanism
from harness.trees import rm_rf, snapshot, world_tmpdir
from locald_admin import interface as i

pytestmark = [
    pytest.mark.skipif(not IS_ROOT, reason="runc tier: runc runs as root; run the suite as root"),
    pytest.mark.skipif(runcmod.available() is not None, reason=f"runc tier: {runcmod.available()}"),
]


@pytest.fixture(scope="module")
def mechanism(bus, polkit):
    polkit.allow(True)
    with Mechanism(bus, "--config", str(bus.dir / "no-such-admin.conf")) as m:
        yield m


@pytest.fixture
def project(clients):
    """A project of the client user with its source in src/."""
    top = world_tmpdir("locald-admin-runc-")
    proj = top / "proj"
    (proj / "src" / "lib").mkdir(parents=True)
    (proj / "src" / "main.py").write_text("print('the user's work')\n")
    (proj / "src" / "lib" / "util.py").write_text("X = 1\n")
    subprocess.run(["chown", "-R", f"{clients.uid}:{clients.gid}", str(proj)], check=True)
    source = snapshot(proj / "src")
    containers = []

    def container(bundle, state, name="web", user=None):
        c = runcmod.Container(bundle, state, proj / "src", clients.uid, clients.gid, name, user=user)
        containers.append(c)
        return c

    try:
        yield proj, container
    finally:
        for c in containers:
            c.stop()
        assert snapshot(proj / "src") == source, "the project's source was changed"
        rm_rf(top)


def _make_locald(proj, clients):
    (proj / ".locald" / "services").mkdir(parents=True)
    subprocess.run(["chown", "-R", f"{clients.uid}:{clients.gid}", str(proj / ".locald")], check=True)


def _root_owned(path):
    return [p for p in path.rglob("*") if not p.is_symlink() and os.lstat(p).st_uid == 0]


@pytest.mark.parametrize("op", ["force", "force_async"])
def test_a_killed_container_is_cleaned_up_and_the_source_survives(project, clients, bus, mechanism, op):
    """Killed with SIGKILL and never deleted: its mounts went with its
    namespace; runc's mount targets (root-owned) and state stay behind."""
    proj, container = project
    _make_locald(proj, clients)
    web = proj / ".locald" / "services" / "web"
    c = container(web, proj / ".locald" / "runc-state")
    c.run()
    c.kill_init()
    assert _root_owned(web / "rootfs"), "runc made no root-owned mount targets"
    for target in (web, proj / ".locald" / "runc-state"):
        r = clients.api(op, str(target), bus.address)
        assert r["ok"], r
        assert not os.path.lexists(target)
    assert (proj / ".locald").is_dir()


def test_runc_kill_and_delete_then_cleanup(project, clients, bus, mechanism):
    proj, container = project
    _make_locald(proj, clients)
    web = proj / ".locald" / "services" / "web"
    c = container(web, proj / ".locald" / "runc-state")
    c.run()
    c.runc("kill", "web", "KILL")
    for _ in range(200):
        if c.runc("delete", "web", check=False).returncode == 0:
            break
    cp = clients.shim("admin", "cleanup", str(web), bus_address=bus.address)
    assert cp.returncode == 0, cp.stderr
    assert not os.path.lexists(web)
    r = clients.api("force", str(proj / ".locald" / "runc-state"), bus.address)
    assert r["ok"], r


def test_the_locald_runc_made_itself_is_the_users_to_clean(project, clients, bus, mechanism):
    """runc --root <proj>/.locald/runc-state with no .locald makes .locald
    itself, root:root 0700: the user cannot even look inside.  It counts as
    their anchor (their project, writable by nobody else)."""
    proj, container = project
    c = container(proj / "bundle", proj / ".locald" / "runc-state")
    c.run()
    st = os.lstat(proj / ".locald")
    assert (st.st_uid, st.st_mode & 0o777) == (0, 0o700), oct(st.st_mode)
    c.runc("delete", "--force", "web")
    r = clients.api("force", str(proj / ".locald" / "runc-state"), bus.address)
    assert r["ok"], r
    r = clients.api("force", str(proj / ".locald"), bus.address)
    assert r["ok"], r
    assert not os.path.lexists(proj / ".locald")


@pytest.mark.parametrize("where", ["service", "rootfs", "rootfs/run"])
def test_a_running_container_is_in_use_and_keeps_its_mounts(project, clients, bus, mechanism, where):
    """Still running: its mounts live in its own namespace, invisible to the
    mechanism's mount check.  Removing the mount-point directories would
    detach its /proc, /dev, /sys, bind mounts and tmpfs under it (27 mounts
    went to 1).  In use: refused, through the mechanism and the client's own
    attempt, with nothing removed."""
    proj, container = project
    _make_locald(proj, clients)
    web = proj / ".locald" / "services" / "web"
    c = container(web, proj / ".locald" / "runc-state")
    pid = c.run()
    mounts_before = runcmod.mount_count(pid)
    target = {"service": web, "rootfs": web / "rootfs", "rootfs/run": web / "rootfs" / "run"}[where]
    before = snapshot(web)
    cp = clients.shim("admin", "cleanup", str(target), bus_address=bus.address)
    assert cp.returncode == i.EXIT_IN_USE, (cp.returncode, cp.stderr)
    assert "another mount namespace" in cp.stderr and f"pid {pid}" in cp.stderr, cp.stderr  # root's container
    r = clients.api("force", str(target), bus.address)
    assert r["type"] == "InUseError", r
    assert snapshot(web) == before
    assert runcmod.mount_count(pid) == mounts_before
    assert os.path.exists(f"/proc/{pid}")


@pytest.mark.parametrize("user", [(65534, 65534), (4999, 4999)], ids=["nobody", "an-image-uid"])
def test_a_rootful_container_whose_process_is_not_root_is_in_use(project, clients, bus, mechanism, user):
    """A rootful container (runc run by root) whose image runs as USER 65534
    or an id the host does not know: its process is in the initial user namespace and is no login
    user, so its namespace counts; before, only root's, the caller's and
    subordinate uids' namespaces did, and its live rootfs was removed."""
    proj, container = project
    _make_locald(proj, clients)
    web = proj / ".locald" / "services" / "web"
    c = container(web, proj / ".locald" / "runc-state", user=user)
    pid = c.run()
    assert os.stat(f"/proc/{pid}").st_uid == user[0]
    before = snapshot(web)
    cp = clients.shim("admin", "cleanup", str(web / "rootfs"), bus_address=bus.address)
    assert cp.returncode == i.EXIT_IN_USE, (cp.returncode, cp.stderr)
    assert "another mount namespace" in cp.stderr and f"pid {pid}" not in cp.stderr, cp.stderr
    assert snapshot(web) == before
    assert os.path.exists(f"/proc/{pid}")
