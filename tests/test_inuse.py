"""Whose mount namespaces count for "in use" (``locald_admin/fs/inuse.py``).

Stand-in containers: a process in a mount namespace of its own holding a
bind mount of (or a tmpfs below, or an overlay root with its layers in) the
target, then running as a given uid.  Those of root, of the caller, of the
caller's subordinate uids (``/etc/subuid``) and of any uid that is no login
user in the initial user namespace (a rootful container's USER 65534) make
the target in use; another login user's (``unshare -Urm``, or a setuid
helper's namespace, simulated as root with ``unshare -m`` and ``setpriv``)
and anyone's own user namespace must not block anyone.  Real runc
containers are in tests/test_runc.py.  Root only (mount namespaces, other
uids).
"""

import os
import pwd
import shutil
import subprocess
import time

import pytest

from harness import IS_ROOT
from harness.mechanism import stack as mechanism_stack
from harness.trees import rm_rf, snapshot, world_tmpdir
from harness.users import ensure_login_user
from locald_admin.fs import inuse, procscan
from locald_admin.mechanism import engine
from locald_admin import interface as i
from locald_admin.mechanism.errors import InUse

pytestmark = pytest.mark.skipif(not IS_ROOT, reason="needs root: mount namespaces and other uids")

CALLER = 4300  # the request's uid
SUBORDINATE = 200000  # in CALLER's /etc/subuid range (a test file)
IMAGE_USER = 4301  # no login user (unknown to the password database): a container image's USER


@pytest.fixture(scope="module")
def stranger():
    """Another login user (UID_MIN..UID_MAX, in the password database)."""
    return ensure_login_user().pw_uid


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
    yield from _held(top, target)


def _held(top, target):
    """(top, target, procs) for a test; its stand-in containers killed and
    its tree removed after it."""
    procs = []
    yield top, target, procs
    for p in procs:
        p.kill()
        p.wait()
    rm_rf(top)


def hold(procs, uid, script, userns=False, then=None):
    """A process that runs ``script`` (sh) in a mount namespace of its own,
    then sleeps as ``uid``; returns its pid once it runs as ``uid``.
    ``then``: the command that sleeps instead (its argv[0] starts with
    ``sleep`` or ends with ``busybox``)."""
    if userns:  # an unprivileged user's own namespaces
        argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                "unshare", "-Urm", "sh", "-c", f"{script} && exec {then or 'sleep 60'}"]
    else:
        argv = ["unshare", "-m", "--propagation", "private", "sh", "-c",
                f"{script} && exec {then or f'setpriv --reuid={uid} --regid={uid} --clear-groups sleep 60'}"]
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
    procs.append(p)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{p.pid}/cmdline", "rb") as f:
                argv0 = f.read().split(b"\0")[0]
            if (argv0.startswith(b"sleep") or argv0.endswith(b"busybox")) and os.stat(f"/proc/{p.pid}").st_uid == uid:
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


@pytest.mark.parametrize("uid", [65534, IMAGE_USER], ids=["nobody", "an-image-uid"])
def test_a_rootful_containers_namespace_of_a_user_who_is_no_login_user_counts(world, uid):
    """A rootful container whose image runs as USER 65534 (or any id that
    is no login user): its process is in the initial user namespace."""
    top, target, procs = world
    hold(procs, uid, bind_of(target / "rootfs", top / "m"))
    with pytest.raises(InUse):
        engine.cleanup(str(target), CALLER)
    assert (target / "data").exists()


def test_another_login_users_namespace_does_not_count(world, stranger):
    """As a setuid helper (bubblewrap, Apptainer's starter) gives it: a
    stranger's process in the initial user namespace, in a mount namespace
    of its own holding a bind of the victim's directory (simulated as root:
    unshare -m, the bind, then setpriv to the stranger)."""
    top, target, procs = world
    hold(procs, stranger, bind_of(target, top / "theirs"))
    hold(procs, stranger, f"mount -t tmpfs none {target / 'rootfs' / 'run'}")
    assert engine.cleanup(str(target), CALLER) > 0
    assert not os.path.lexists(target)


@pytest.mark.parametrize("who", ["login user", "no login user"])
def test_anyones_own_unshare_cannot_make_a_victims_target_in_use(world, stranger, who):
    """unshare -Urm needs no privilege; a bind mount of the victim's
    (world-readable) directory in a user namespace of one's own (not the
    initial one) must not block the victim's cleanup, whatever the uid."""
    top, target, procs = world
    uid = stranger if who == "login user" else IMAGE_USER
    where = top / "theirs"
    where.mkdir()
    os.chown(where, uid, uid)
    try:
        hold(procs, uid, f"mount --bind {target} {where}", userns=True)
    except AssertionError as e:
        pytest.skip(f"unprivileged user namespaces are not available here: {e}")
    assert engine.cleanup(str(target), CALLER) > 0
    assert not os.path.lexists(target)


def test_the_login_uid_range_comes_from_login_defs(tmp_path):
    defs = tmp_path / "login.defs"
    defs.write_text("# comment\nUID_MIN\t\t 2000\nUID_MAX 0x7000\nGID_MIN 5\n")
    assert procscan.login_uid_range(str(defs)) == (2000, 0x7000)
    assert procscan.login_uid_range(str(tmp_path / "missing")) == procscan.LOGIN_UID_DEFAULT


def test_the_password_database_is_listed_again_when_its_files_change_or_the_listing_is_old(tmp_path, monkeypatch):
    """getpwall costs a scan 0.1 ms: its listing is used again while
    login.defs and the files the database depends on are unchanged, and for
    at most LISTED_FOR seconds (a directory service changes without them)."""
    defs, passwd = tmp_path / "login.defs", tmp_path / "passwd"
    defs.write_text("UID_MIN 0\nUID_MAX 60000\n")
    passwd.write_text("one\n")
    calls = []
    real = pwd.getpwall
    monkeypatch.setattr(pwd, "getpwall", lambda: calls.append(1) or real())
    users = lambda: procscan.LoginUsers(str(defs), passwd_files=(str(passwd),)).listed()  # noqa: E731
    everyone = frozenset(p.pw_uid for p in real() if p.pw_uid <= 60000)
    assert users() == users() == everyone
    assert len(calls) == 1
    passwd.write_text("two\n")  # a user added or removed
    assert users() == everyone and len(calls) == 2
    now = time.monotonic()
    monkeypatch.setattr(time, "monotonic", lambda: now + procscan.LISTED_FOR + 1)
    assert users() == everyone and len(calls) == 3


def test_login_defs_is_parsed_again_only_when_it_changed(tmp_path, monkeypatch):
    """Every scan asks for the range: the file is parsed once, and again as
    soon as it was changed (even to the same size) or replaced."""
    defs = tmp_path / "login.defs"
    defs.write_text("UID_MIN 2000\nUID_MAX 3000\n")
    parsed = []
    real = procscan._parse_login_defs
    monkeypatch.setattr(procscan, "_parse_login_defs", lambda f: parsed.append(1) or real(f))
    assert [procscan.login_uid_range(str(defs)) for _ in range(3)] == [(2000, 3000)] * 3
    assert len(parsed) == 1
    with open(defs, "r+") as f:  # the same size, written in place
        f.write("UID_MIN 2001")
    assert procscan.login_uid_range(str(defs)) == (2001, 3000)
    new = tmp_path / "new"
    new.write_text("UID_MIN 4000\nUID_MAX 5000\n")
    os.replace(new, defs)
    assert procscan.login_uid_range(str(defs)) == (4000, 5000)
    assert len(parsed) == 3


# -- overlay roots: the layers are named only in the super options -------------------------

def overlay_root(target, uid=0):
    """A container's root as an overlay whose layers are in the target
    (lower with a static busybox, upper, work), after pivot_root: its
    mountinfo shows only 'overlay / ... lowerdir=...,upperdir=...'."""
    lower, upper, work, merged = (target / n for n in ("lower", "upper", "work", "merged"))
    for d in (lower / "bin", upper, work, merged):
        d.mkdir(parents=True)
    shutil.copy2("/bin/busybox", lower / "bin" / "busybox")
    (lower / "old").mkdir()
    if uid:
        for d in (target, upper, work, merged, lower / "old"):
            os.chown(d, uid, uid)
    script = (f"mount -t overlay overlay -o lowerdir={lower},upperdir={upper},workdir={work} {merged} && "
              f"cd {merged} && pivot_root . old")
    # After pivot_root, only the overlay's own busybox: detach the old root, sleep.
    then = "/bin/busybox sh -c 'umount -l /old && exec /bin/busybox sleep 60'"
    return script, then


def test_an_overlay_root_container_of_root_has_its_layers_in_use(world):
    top, target, procs = world
    script, then = overlay_root(target)
    pid = hold(procs, 0, script, then=then)
    table = open(f"/proc/{pid}/mountinfo", "rb").read()
    assert b" / / " in table and b"upperdir=" in table and os.fsencode(str(target)) not in table.split(b" - ")[0]
    for t in (target, target / "upper"):
        before = snapshot(target)
        with pytest.raises(InUse) as ei:
            engine.cleanup(str(t), CALLER)
        assert "a layer of an overlay mount" in ei.value.message, ei.value.message
        assert snapshot(target) == before


def test_the_callers_own_rootless_overlay_container_has_its_layers_in_use(world):
    top, target, procs = world
    os.chown(target, CALLER, CALLER)
    script, then = overlay_root(target, uid=CALLER)
    try:
        hold(procs, CALLER, script, userns=True, then=then)
    except AssertionError as e:
        pytest.skip(f"an overlay in an unprivileged user namespace is not possible here: {e}")
    with pytest.raises(InUse) as ei:
        engine.cleanup(str(target / "upper"), CALLER)
    assert "a layer of an overlay mount" in ei.value.message


def test_an_overlay_of_our_own_namespace_with_its_layers_in_the_target_is_in_use(world, mounter):
    top, target, procs = world
    lower, upper, work = (target / n for n in ("lower", "upper", "work"))
    for d in (lower, upper, work):
        d.mkdir()
    merged = top / "merged"
    merged.mkdir()
    mounter("-t", "overlay", "overlay", "-o", f"lowerdir={lower},upperdir={upper},workdir={work}", target=merged)
    with pytest.raises(InUse) as ei:
        engine.cleanup(str(target), CALLER)
    assert "in this mount namespace" in ei.value.message
    assert upper.is_dir()


# -- through the bus: the real mechanism, the client user ---------------------------------

@pytest.fixture(scope="module")
def bus_stack():
    with mechanism_stack() as (b, _, mech):
        yield b, mech


@pytest.fixture
def users_tree(clients):
    """A project of the client user with a root-owned leftover directory."""
    top = world_tmpdir("locald-admin-inuse-bus-")
    anchor = top / "proj" / ".locald"
    target = anchor / "svc"
    (target / "rootfs").mkdir(parents=True)
    for d in (top / "proj", anchor, target):
        os.chown(d, clients.uid, clients.gid)
    yield from _held(top, target)


def test_an_overlay_root_container_is_in_use_through_the_bus(bus_stack, clients, users_tree):
    top, target, procs = users_tree
    script, then = overlay_root(target / "rootfs")
    hold(procs, 0, script, then=then)
    before = snapshot(target)
    cp = clients.shim("admin", "cleanup", str(target), bus_address=bus_stack[0].address)
    assert cp.returncode == i.EXIT_IN_USE, cp.stderr
    assert "a layer of an overlay mount" in cp.stderr
    assert snapshot(target) == before


def test_a_mount_with_a_carriage_return_in_its_path_breaks_no_request(bus_stack, clients, users_tree, mounter):
    """The kernel does not escape \\r in mountinfo: a mount under such a
    path, in our namespace and in another (root's stand-in), and every
    other request is still served."""
    top, target, procs = users_tree
    odd = top / "odd\rname"
    odd.mkdir()
    mounter("-t", "tmpfs", "none", target=odd)
    other = top / "other\rns"
    other.mkdir()
    hold(procs, 0, f"mount -t tmpfs none '{other}'")
    (target / "rootfs" / "root-made").mkdir()
    cp = clients.shim("admin", "cleanup", str(target), bus_address=bus_stack[0].address)
    assert cp.returncode == 0, cp.stderr
    assert not target.exists()
