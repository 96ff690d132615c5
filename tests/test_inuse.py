"""Whose mount namespaces count for "in use" (``locald_admin/fs/inuse.py``).

Stand-in containers: a process in a mount namespace of its own holding a
bind mount of (or a tmpfs below) the target, then running as a given uid.
Those of root, of the caller and of the caller's subordinate uids
(``/etc/subuid``) make the target in use; another user's (``unshare -Urm``
and a bind mount of their own) must not block anyone.  Real runc containers
are in tests/test_runc.py.  Root only (mount namespaces, other uids).
"""

import os
import subprocess
import time

import pytest

from harness import IS_ROOT
from harness.trees import rm_rf, snapshot, world_tmpdir
from locald_admin.fs import inuse
from locald_admin.mechanism import engine
from locald_admin.mechanism.errors import InUse

pytestmark = pytest.mark.skipif(not IS_ROOT, reason="needs root: mount namespaces and other uids")

CALLER = 4300  # the request's uid
SUBORDINATE = 200000  # in CALLER's /etc/subuid range (a test file)
STRANGER = 4301  # nobody of CALLER's


@pytest.fixture
def world(monkeypatch):
    top = world_tmpdir("locald-admin-inuse-")
    anchor = top / "proj" / ".locald"
    target = anchor / "svc"
    (target / "rootfs" / "run").mkdir(parents=True)
    (target / "data").write_text("x")
    for d in (top / "proj", anchor):
        os.chown(d, CALLER, CALLER)
    subuid = top / "subuid"
    subuid.write_text(f"{CALLER}:{SUBORDINATE}:65536\n")
    monkeypatch.setattr(inuse, "SUBUID", str(subuid))
    procs = []
    yield top, target, procs
    for p in procs:
        p.kill()
        p.wait()
    rm_rf(top)


def hold(procs, uid, script, userns=False):
    """A process that runs ``script`` (sh) in a mount namespace of its own,
    then sleeps as ``uid``; returns its pid once it runs as ``uid``."""
    if userns:  # an unprivileged user's own namespaces
        argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                "unshare", "-Urm", "sh", "-c", f"{script} && exec sleep 60"]
    else:
        argv = ["unshare", "-m", "--propagation", "private", "sh", "-c",
                f"{script} && exec setpriv --reuid={uid} --regid={uid} --clear-groups sleep 60"]
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
    procs.append(p)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{p.pid}/cmdline", "rb") as f:
                if f.read().startswith(b"sleep") and os.stat(f"/proc/{p.pid}").st_uid == uid:
                    return p.pid
        except OSError:
            pass
        assert p.poll() is None, f"the stand-in container exited with {p.returncode}"
        time.sleep(0.01)
    raise AssertionError("the stand-in container did not start")


def bind_of(target, where):
    os.makedirs(where, exist_ok=True)
    return f"mount --bind {target} {where}"


@pytest.mark.parametrize("uid, named", [(0, True), (CALLER, True), (SUBORDINATE + 5, False)],
                         ids=["root", "caller", "subordinate"])
def test_a_bind_of_the_target_in_a_namespace_that_counts_makes_it_in_use(world, uid, named):
    top, target, procs = world
    pid = hold(procs, uid, bind_of(target / "rootfs", top / f"m{uid}"))
    before = snapshot(target)
    with pytest.raises(InUse) as ei:
        engine.cleanup(str(target), CALLER)
    assert "another mount namespace" in ei.value.message and "nothing was removed" in ei.value.message
    assert (f"pid {pid}" in ei.value.message) == named, ei.value.message
    assert snapshot(target) == before


def test_a_tmpfs_below_the_target_in_roots_namespace_makes_it_in_use(world):
    top, target, procs = world
    hold(procs, 0, f"mount -t tmpfs none {target / 'rootfs' / 'run'}")
    with pytest.raises(InUse) as ei:
        engine.cleanup(str(target), CALLER)
    assert "a mount point of a container" in ei.value.message, ei.value.message
    assert (target / "data").exists()


def test_another_users_namespace_does_not_count(world):
    top, target, procs = world
    hold(procs, STRANGER, f"mount -t tmpfs none {target / 'rootfs' / 'run'}")
    assert engine.cleanup(str(target), CALLER) > 0
    assert not os.path.lexists(target)


def test_another_users_own_unshare_cannot_make_a_victims_target_in_use(world):
    """unshare -Urm needs no privilege; their bind mount of the victim's
    (world-readable) directory must not block the victim's cleanup."""
    top, target, procs = world
    where = top / "theirs"
    where.mkdir()
    os.chown(where, STRANGER, STRANGER)
    try:
        hold(procs, STRANGER, f"mount --bind {target} {where}", userns=True)
    except AssertionError as e:
        pytest.skip(f"unprivileged user namespaces are not available here: {e}")
    assert engine.cleanup(str(target), CALLER) > 0
    assert not os.path.lexists(target)
