"""Faults around the mechanism, end to end through a private bus.

(a) polkit slow or hanging: the caller gets NotAuthorized after
    ``--polkit-timeout``, nothing is deleted, and other callers are served
    meanwhile.
(b) the caller disconnects while its big delete runs: the walk stops, the
    record says cancelled, the next call finishes the job.
(c) the mechanism is SIGKILLed mid-delete: a new instance finishes the job.
(d) immutable and append-only entries: Failed naming them, the rest removed.
(e) a read-only file system: Failed naming the entries (EROFS), nothing lost.
(f) 100,000 entries (1,000,000 with LOCALD_ADMIN_SOAK=1) and a 10,000-deep
    chain, with the mechanism's fd count sampled during the deep walk.
(g) FUSE (mfusepy on libfuse3): a FUSE mount in the target is MountPoint, a
    hung FUSE daemon does not stall the service for other callers.
(h) an unexpected exception inside the service is a plain Failed, a
    traceback in the log, and the service goes on.

Every wait is bounded; the only timing assertions are generous upper bounds
("answered within 10 s").  Clients run as the unprivileged test user.
"""

import contextlib
import functools
import importlib.util
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import dbus
import pytest

from locald_admin import interface as i
from harness import IS_ROOT, PROGRAMS, trees
from harness.calls import cleanup
from harness.mechanism import Mechanism
from harness.trees import (count_entries, is_mount_point, make_anchor, make_chain, make_flat, mounted_tmpfs,
                           plant_canary, rm_rf, umount, world_tmpdir)
from harness.waiting import freeze, poll_until

needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs uid 0 (mounts, chattr, root-owned trees, "
                                "signalling the mechanism); run the suite as root")

ANSWER_BOUND = 10.0  # "answered within 10 s": the only timing assertion used


# -- infrastructure ------------------------------------------------------------------

@pytest.fixture
def allowed(polkit):
    """polkit allows the action; delays and hangs are undone afterwards."""
    polkit.allow(True)
    polkit.mock.SetDelay(0.0)
    polkit.mock.SimulateHang(False)
    polkit.clear()
    yield polkit
    polkit.mock.SimulateHang(False)
    polkit.mock.ReleaseHangingCalls()
    polkit.mock.SetDelay(0.0, timeout=60)  # queued behind a delayed check, if any
    polkit.allow(False)


@pytest.fixture
def mechanism(bus, allowed):
    """A fresh mechanism per test (some tests stop, kill or wedge it)."""
    with Mechanism(bus) as m:
        yield m


def make_project(top, clients):
    """<top>/proj/.locald owned by the client user, and a canary beside it."""
    anchor = make_anchor(top, clients.uid, clients.gid)
    plant_canary(top)
    return anchor


def check_canary(anchor):
    trees.check_canary(anchor.parent.parent)


@pytest.fixture
def tmpfs_project(clients):
    """A project on a tmpfs of its own (the tmpfs is neither the anchor nor
    inside the target).  Always unmounted."""
    if not IS_ROOT:
        pytest.skip("mounting a tmpfs needs root")
    top = world_tmpdir("locald-admin-faults-")
    try:
        with mounted_tmpfs(top / "fs") as fs:
            os.chmod(fs, 0o755)
            anchor = make_project(fs, clients)
            yield anchor
            check_canary(anchor)
    finally:
        rm_rf(top)


raw_call = functools.partial(cleanup, timeout=ANSWER_BOUND)  # as the test process (root skips polkit)


class UserCall:
    """A Cleanup call by the unprivileged client user, in the background."""

    def __init__(self, clients, bus, path, timeout=120):
        self.started = time.monotonic()
        # harness/programs/user_call.py: prints its pid (the audit line names
        # it), then makes one bare Cleanup call and prints the outcome.
        self.proc = clients.popen([clients.program("user_call.py"), "--pid"], bus.address, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.proc.stdin.write((json.dumps({"op": "request", "path": str(path), "timeout": timeout}) + "\n").encode())
        self.proc.stdin.close()
        self._pid = None

    def _readline(self, timeout):
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError("the client printed nothing in time")
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read().decode(errors="replace")
            raise AssertionError(f"client exited with {self.proc.wait()}: {err}")
        return json.loads(line)

    def ready(self, timeout=30):
        """The client's pid, once it is about to call."""
        if self._pid is None:
            self._pid = self._readline(timeout)["pid"]
        return self._pid

    def result(self, timeout):
        """The outcome (dict) and the seconds since the call was started."""
        self.ready()
        r = self._readline(timeout)
        self.proc.wait(10)
        return r, time.monotonic() - self.started

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdout, self.proc.stderr):
            f.close()


@contextlib.contextmanager
def user_call(clients, bus, path, timeout=120):
    c = UserCall(clients, bus, path, timeout)
    try:
        yield c
    finally:
        c.kill()


def bus_has_pid(bus, pid):
    """Whether a connection of process ``pid`` is on the bus."""
    con = bus.connect()
    try:
        daemon = dbus.Interface(con.get_object("org.freedesktop.DBus", "/org/freedesktop/DBus"),
                                "org.freedesktop.DBus")
        for name in daemon.ListNames():
            if name.startswith(":"):
                try:
                    if int(daemon.GetConnectionUnixProcessID(name)) == pid:
                        return True
                except dbus.exceptions.DBusException:
                    pass  # gone meanwhile
        return False
    finally:
        con.close()


def shim(clients, bus, path, timeout=60):
    return clients.shim("admin", "cleanup", "--no-interactive", "--timeout", str(timeout), str(path),
                        bus_address=bus.address, timeout=timeout + 60)


def mechanism_fds(pid):
    """(count, targets) of the open fds of process ``pid``."""
    targets = []
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return 0, targets
    for n in names:
        try:
            targets.append(os.readlink(f"/proc/{pid}/fd/{n}"))
        except OSError:
            pass
    return len(names), targets


def deleting_below(pid, root, per):
    """True once the mechanism holds a directory below ``root`` open that
    has fewer than ``per`` entries left: the walk is removing files."""
    prefix = str(root) + "/"
    for t in mechanism_fds(pid)[1]:
        if t.startswith(prefix):
            try:
                if len(os.listdir(t)) < per:
                    return True
            except OSError:
                pass
    return False


# -- (a) polkit slow or hanging ----------------------------------------------------

@pytest.fixture
def project(clients):
    top = world_tmpdir("locald-admin-faults-")
    anchor = make_project(top, clients)
    (anchor / "run" / "shm").mkdir(parents=True)
    (anchor / "run" / "shm" / "data").write_text("leftover")
    (anchor / "other").mkdir()
    (anchor / "other" / "data").write_text("other")
    yield anchor
    check_canary(anchor)
    rm_rf(top)


def test_slow_polkit_is_not_authorized_after_the_polkit_timeout(bus, allowed, project, clients):
    """polkit answers "yes", but after 5 s; the mechanism waits 1 s: the
    caller gets NotAuthorized well within its own timeout, nothing is
    deleted; once polkit is prompt again the same call succeeds."""
    with Mechanism(bus, "--polkit-timeout", "1") as mech:
        allowed.mock.SetDelay(5.0)
        with user_call(clients, bus, project / "run", timeout=120) as c:
            r, took = c.result(timeout=60)
        assert r["type"] == "NotAuthorizedError", r
        assert "did not answer within 1 s" in r["message"]
        assert took < ANSWER_BOUND
        assert (project / "run" / "shm" / "data").read_text() == "leftover"
        cp = shim(clients, bus, project / "run")
        assert cp.returncode == i.EXIT_NOT_AUTHORIZED and cp.stderr.count("\n") == 1, cp.stderr
        assert (project / "run" / "shm" / "data").read_text() == "leftover"
        allowed.mock.SetDelay(0.0, timeout=60)  # answered once the mock's sleeps are over
        cp = shim(clients, bus, project / "run")
        assert cp.returncode == 0, cp.stderr
        assert not (project / "run").exists() and (project / "other" / "data").exists()
        results = [f["result"] for f in mech.audits(uid=clients.uid)]
        assert results == [i.ERROR_NOT_AUTHORIZED, i.ERROR_NOT_AUTHORIZED, "ok"]
        assert mech.proc.poll() is None


def test_hanging_polkit_is_not_authorized_and_others_are_served(bus, allowed, project, clients):
    """polkit never answers.  With --polkit-timeout 1 the caller gets
    NotAuthorized within seconds, nothing deleted; a root caller (which
    skips polkit) is answered meanwhile; afterwards ReleaseHangingCalls and
    the service works as before."""
    if not IS_ROOT:
        pytest.skip("needs a root caller next to the unprivileged one")
    with Mechanism(bus, "--polkit-timeout", "1") as mech:
        allowed.mock.SimulateHang(True)
        with user_call(clients, bus, project / "run") as c:
            c.ready()
            t0 = time.monotonic()
            assert raw_call(bus, str(project / "other")) == (None, None)
            assert time.monotonic() - t0 < ANSWER_BOUND
            r, took = c.result(timeout=60)
        assert r["type"] == "NotAuthorizedError" and "did not answer" in r["message"], r
        assert took < ANSWER_BOUND
        assert (project / "run" / "shm" / "data").read_text() == "leftover"
        assert not (project / "other").exists()
        assert allowed.mock.HaveHangingCalls()
        allowed.mock.SimulateHang(False)
        allowed.mock.ReleaseHangingCalls()  # the late "yes" reaches a call that is long over
        cp = shim(clients, bus, project / "run")
        assert cp.returncode == 0, cp.stderr
        assert not (project / "run").exists()
        assert mech.proc.poll() is None and "Traceback" not in mech.log()


def test_calls_hanging_in_polkit_do_not_block_anyone_else(bus, allowed, project, clients):
    """With a long polkit timeout, two user calls hang in polkit at once;
    meanwhile root's call, introspection and a bad-signature call are all
    answered (the polkit wait is async, no worker is held).  Released, the
    hanging calls get polkit's "yes" and do their work."""
    if not IS_ROOT:
        pytest.skip("needs a root caller next to the unprivileged ones")
    (project / "third").mkdir()
    with Mechanism(bus, "--polkit-timeout", "120") as mech:
        allowed.mock.SimulateHang(True)
        with user_call(clients, bus, project / "run") as a, user_call(clients, bus, project / "other") as b:
            a.ready(), b.ready()
            assert poll_until(lambda: len(allowed.checks()) >= 2, 30, 0.05)
            assert allowed.mock.HaveHangingCalls()
            t0 = time.monotonic()
            assert raw_call(bus, str(project / "third")) == (None, None)
            con = bus.connect()
            try:
                obj = con.get_object(i.BUS_NAME, i.OBJECT_PATH)
                assert "Cleanup" in obj.Introspect(dbus_interface="org.freedesktop.DBus.Introspectable",
                                                   timeout=ANSWER_BOUND)
                with pytest.raises(dbus.exceptions.DBusException) as ei:
                    obj.get_dbus_method(i.METHOD_CLEANUP, i.INTERFACE)(1, signature="i", timeout=ANSWER_BOUND)
                assert ei.value.get_dbus_name() == "org.freedesktop.DBus.Error.InvalidArgs"
            finally:
                con.close()
            assert time.monotonic() - t0 < ANSWER_BOUND
            assert not (project / "third").exists()
            # Still waiting for polkit (120 s): nothing of theirs is gone.
            assert a.proc.poll() is None and b.proc.poll() is None
            assert (project / "run" / "shm" / "data").exists() and (project / "other" / "data").exists()
            allowed.mock.ReleaseHangingCalls()
            ra, _ = a.result(timeout=60)
            rb, _ = b.result(timeout=60)
        assert ra["ok"] and rb["ok"], (ra, rb)
        assert not (project / "run").exists() and not (project / "other").exists()
        assert mech.proc.poll() is None


# -- (b) the caller disconnects mid-call ---------------------------------------------

DIRS, PER = 200, 1000  # 200,201 entries: long enough to be caught mid-walk


@needs_root
def test_caller_killed_mid_delete_stops_its_walk(bus, mechanism, tmpfs_project, clients):
    """The caller is killed while its walk runs (the mechanism frozen so the
    kill lands mid-delete): the bus reports it gone, the walk stops, the
    record says cancelled with the entries removed so far, the rest of the
    tree is still there, and the next call finishes the job."""
    big = tmpfs_project / "big"
    total = make_flat(big, DIRS, PER)
    (tmpfs_project / "keep").write_text("keep")
    pid = mechanism.proc.pid
    with user_call(clients, bus, big, timeout=300) as c:
        client_pid = c.ready()
        assert poll_until(lambda: deleting_below(pid, big, PER), 60, 0.002), "the walk never started"
        freeze(pid)  # freeze the walk so the kill lands mid-delete
        try:
            left = count_entries(big)
            assert 0 < left < total
            assert bus_has_pid(bus, client_pid)
            c.kill()
            assert poll_until(lambda: not bus_has_pid(bus, client_pid), 30, 0.05)  # the bus saw it go
        finally:
            os.kill(pid, signal.SIGCONT)
    assert poll_until(lambda: mechanism.audits(pid=client_pid), 120, 0.05), mechanism.log()[-2000:]
    [line] = mechanism.audits(pid=client_pid)
    assert line["result"] == "cancelled", line
    assert line["path"] == str(big)
    remaining = count_entries(big)
    assert remaining > 0 and int(line["removed"]) + remaining == total, (line, remaining)
    assert (tmpfs_project / "keep").read_text() == "keep"
    assert mechanism.proc.poll() is None
    assert "Traceback" not in mechanism.log()
    # The next call finishes the job; root's calls work too.
    cp = shim(clients, bus, big, timeout=300)
    assert cp.returncode == 0, cp.stderr
    assert not os.path.lexists(big)
    assert raw_call(bus, str(tmpfs_project / "keep")) == (None, None)
    assert not os.path.lexists(tmpfs_project / "keep")


# -- (c) the mechanism is killed mid-delete ---------------------------------------------

@needs_root
def test_mechanism_killed_mid_delete_next_instance_finishes(bus, allowed, tmpfs_project, clients):
    big = tmpfs_project / "big"
    total = make_flat(big, DIRS, PER)
    (tmpfs_project / "keep").write_text("keep")
    first = Mechanism(bus)
    try:
        with user_call(clients, bus, big, timeout=300) as c:
            c.ready()
            assert poll_until(lambda: deleting_below(first.proc.pid, big, PER), 60, 0.002), "the walk never started"
            freeze(first.proc.pid)
            left = count_entries(big)
            assert 0 < left < total
            first.proc.kill()  # SIGKILL, also of a stopped process
            first.proc.wait(10)
            r, _ = c.result(timeout=ANSWER_BOUND)
        # The caller learns promptly that it failed (the bus answers for the
        # dead mechanism), not after its own timeout.
        assert r["type"] == "CleanupFailedError" and "NoReply" in r["message"], r
    finally:
        first.stop()
    assert count_entries(big) == left  # nothing moved while no one ran
    with Mechanism(bus) as second:
        cp = shim(clients, bus, big, timeout=300)
        assert cp.returncode == 0, cp.stderr
        [line] = second.audits(path=str(big))
        assert line["result"] == "ok" and int(line["removed"]) == left
    assert not os.path.lexists(big)
    assert (tmpfs_project / "keep").read_text() == "keep"


# -- (d) immutable and append-only entries ---------------------------------------------

@pytest.fixture
def ext4_project(clients):
    """A project on the root file system (ext4 supports chattr) under
    /var/tmp.  Every attribute is cleared in teardown."""
    if not IS_ROOT:
        pytest.skip("chattr +i/+a needs root (CAP_LINUX_IMMUTABLE)")
    top = Path(tempfile.mkdtemp(prefix="locald-admin-faults-", dir="/var/tmp"))
    os.chmod(top, 0o755)
    try:
        yield make_project(top, clients)
        check_canary(top / "proj" / ".locald")
    finally:
        subprocess.run(["chattr", "-R", "-i", "-a", str(top)], capture_output=True)
        rm_rf(top)


@needs_root
def test_immutable_and_append_only_entries_fail_by_name_the_rest_goes(bus, mechanism, ext4_project, clients):
    t = ext4_project / "svc"
    (t / "rootfs" / "run").mkdir(parents=True)
    for n in ("a", "b", "rootfs/run/c"):
        (t / n).write_text("x")
    for d in ("immdir", "appdir", "rootfs/plain"):
        (t / d).mkdir()
        (t / d / "f").write_text("x")
    (t / "imm").write_text("x")
    (t / "app").write_text("x")
    stuck = ["imm", "app", "immdir/f", "appdir/f"]
    for flag, names in (("+i", ["imm", "immdir"]), ("+a", ["app", "appdir"])):
        cp = subprocess.run(["chattr", flag, *(str(t / n) for n in names)], capture_output=True, text=True)
        if cp.returncode != 0:
            pytest.skip(f"chattr {flag} is not supported here: {cp.stderr.strip()}")
    cp = shim(clients, bus, t)
    assert cp.returncode == i.EXIT_FAILED, cp.stderr
    assert cp.stderr.count("\n") == 1
    for n in stuck:
        assert f"{t / n}: Operation not permitted" in cp.stderr, (n, cp.stderr)
    assert "could not remove 4 entries" in cp.stderr
    left = sorted(str(p.relative_to(t)) for p in t.rglob("*"))
    assert left == sorted(["app", "appdir", "appdir/f", "imm", "immdir", "immdir/f"])
    assert t.is_dir()
    # Cleared, the same call finishes the job.
    subprocess.run(["chattr", "-i", "-a", *(str(t / n) for n in ("imm", "immdir", "app", "appdir"))], check=True)
    cp = shim(clients, bus, t)
    assert cp.returncode == 0, cp.stderr
    assert not t.exists() and ext4_project.is_dir()


@needs_root
def test_immutable_file_as_the_target(bus, mechanism, ext4_project, clients):
    """A single immutable file as the target: Failed naming it."""
    f = ext4_project / "locked"
    f.write_text("x")
    if subprocess.run(["chattr", "+i", str(f)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not supported here")
    cp = shim(clients, bus, f)
    assert cp.returncode == i.EXIT_FAILED and f"could not remove {f}: Operation not permitted" in cp.stderr, cp.stderr
    assert f.exists()


# -- (e) a read-only file system ----------------------------------------------------------

@needs_root
def test_read_only_file_system_is_refused_up_front_naming_the_fix(bus, mechanism, clients):
    """The project lives on a tmpfs remounted read-only (the anchor is not
    the mount point, the target contains no mount).  Every unlink would fail
    with EROFS (Failed naming entries, as before finding 5 of issue 9); now
    the read-only anchor is refused before anything is tried: OutsideScope,
    one line naming the fix, nothing removed, for a tree and a single entry."""
    top = world_tmpdir("locald-admin-faults-")
    try:
        with mounted_tmpfs(top / "rofs", "size=16m,mode=755") as fs:
            anchor = make_project(fs, clients)
            t = anchor / "svc"
            (t / "rootfs" / "run").mkdir(parents=True)
            for n in ("a", "b", "rootfs/run/c", "rootfs/d"):
                (t / n).write_text("x")
            (anchor / "single").write_text("x")
            subprocess.run(["mount", "-o", "remount,ro", str(fs)], check=True, capture_output=True)
            before = sorted(p for p in anchor.rglob("*"))
            for target in (t, anchor / "single"):
                cp = shim(clients, bus, target)
                assert cp.returncode == i.EXIT_OUTSIDE_SCOPE, cp.stderr
                assert cp.stderr.count("\n") == 1 and "read-only for locald-admin" in cp.stderr, cp.stderr
                assert "daemon-reload" in cp.stderr and "Read-only file system" not in cp.stderr
            assert raw_call(bus, str(t))[0] == i.ERROR_OUTSIDE_SCOPE
            assert sorted(p for p in anchor.rglob("*")) == before
            check_canary(anchor)
    finally:
        rm_rf(top)


# -- (f) huge and deep ---------------------------------------------------------------------

@needs_root
def test_100k_entries_on_a_tmpfs(bus, mechanism, tmpfs_project, clients):
    big = tmpfs_project / "big"
    total = make_flat(big, 100, 1000)
    (tmpfs_project / "keep").write_text("keep")
    cp = shim(clients, bus, big, timeout=600)
    assert cp.returncode == 0, cp.stderr
    assert not os.path.lexists(big) and (tmpfs_project / "keep").exists()
    [line] = mechanism.audits(path=str(big))
    assert line["result"] == "ok" and int(line["removed"]) == total


@needs_root
@pytest.mark.soak
@pytest.mark.skipif(os.environ.get("LOCALD_ADMIN_SOAK") != "1", reason="soak: set LOCALD_ADMIN_SOAK=1")
def test_1m_entries_on_a_tmpfs(bus, mechanism, tmpfs_project, clients):
    big = tmpfs_project / "big"
    total = make_flat(big, 1000, 1000)
    cp = shim(clients, bus, big, timeout=1800)
    assert cp.returncode == 0, cp.stderr
    assert not os.path.lexists(big)
    [line] = mechanism.audits(path=str(big))
    assert line["result"] == "ok" and int(line["removed"]) == total


DEPTH = 10_000


class FdSampler(threading.Thread):
    """Samples the fd count of ``pid`` until stopped; notes whether any
    sample caught the walk inside ``root``."""

    def __init__(self, pid, root):
        super().__init__(daemon=True)
        self.pid, self.prefix = pid, str(root) + "/"
        self.max = 0
        self.samples = 0
        self.saw_walk = False
        self.halt = threading.Event()

    def run(self):
        while not self.halt.is_set():
            n, targets = mechanism_fds(self.pid)
            self.max = max(self.max, n)
            self.samples += 1
            if any(t.startswith(self.prefix) for t in targets):
                self.saw_walk = True
            time.sleep(0.0005)

    def stop(self):
        self.halt.set()
        self.join(10)


@needs_root
def test_10000_deep_chain_with_bounded_fds(bus, mechanism, tmpfs_project, clients):
    deep = tmpfs_project / "deep"
    deep.mkdir()
    make_chain(deep, DEPTH, leaf="bottom", data=b"")  # fd-relative: the full path is far beyond PATH_MAX
    (tmpfs_project / "keep").write_text("keep")
    sampler = FdSampler(mechanism.proc.pid, deep)
    sampler.start()
    try:
        cp = shim(clients, bus, deep, timeout=600)
    finally:
        sampler.stop()
    assert cp.returncode == 0, cp.stderr
    assert not os.path.lexists(deep) and (tmpfs_project / "keep").exists()
    [line] = mechanism.audits(path=str(deep))
    assert line["result"] == "ok" and int(line["removed"]) == DEPTH + 2
    assert sampler.samples > 0
    assert sampler.saw_walk, "no sample caught the walk"
    assert sampler.max < 200, sampler.max


# -- (g) FUSE ------------------------------------------------------------------------------

def fuse_unavailable():
    if not IS_ROOT:
        return "mounting FUSE here needs root"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse on this machine"
    if shutil.which("fusermount3") is None:
        return "libfuse3 is not installed (Debian package fuse3)"
    if importlib.util.find_spec("mfusepy") is None:
        return "the Python FUSE binding mfusepy is not installed in this environment (pip install mfusepy)"
    return None


@contextlib.contextmanager
def fuse_mount(mountpoint, mode, workdir):
    """Mount the trivial (mode 'ok') or hung (mode 'hang') FUSE fs at
    ``mountpoint`` (harness/programs/fusefs.py; its log in ``workdir``).  Teardown: kill
    the daemon first (that aborts every request it left hanging), then
    unmount.  Nothing here stats the mount."""
    mountpoint.mkdir(parents=True)
    logpath = workdir / "fusefs.log"
    with open(logpath, "wb") as log:
        proc = subprocess.Popen([sys.executable, str(PROGRAMS / "fusefs.py"), mode, str(mountpoint)],
                                stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        poll_until(lambda: is_mount_point(mountpoint) or proc.poll() is not None, 20, 0.02)
        if not is_mount_point(mountpoint):
            pytest.skip(f"the FUSE file system did not mount: {logpath.read_text(errors='replace')[-500:]}")
        yield proc
    finally:
        proc.kill()
        proc.wait()
        umount(mountpoint)


def threads_waiting_on_fuse(pid):
    """How many threads of ``pid`` sleep in the kernel waiting for a FUSE
    daemon's answer (wchan request_wait_answer)."""
    n = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tids:
        try:
            wchan = Path(f"/proc/{pid}/task/{tid}/wchan").read_text()
        except OSError:
            continue
        if "request_wait_answer" in wchan or "fuse" in wchan:
            n += 1
    return n


@pytest.fixture
def fuse_mech(request, bus, allowed):
    """The mechanism with 2 workers, openat2 or fallback (indirect param)."""
    why = fuse_unavailable()
    if why:
        pytest.skip(why)
    mode = getattr(request, "param", "openat2")
    args = ["--no-openat2"] if mode == "fallback" else []
    with Mechanism(bus, "--workers", "2", *args) as m:
        m.mode = mode
        yield m


BOTH_MODES = pytest.mark.parametrize("fuse_mech", ["openat2", "fallback"], indirect=True)


@pytest.fixture
def fuse_project(clients):
    """A project whose .locald/svc will hold a FUSE mount; the daemon's
    files live in <top>/work, outside the project."""
    top = world_tmpdir("locald-admin-fuse-")
    anchor = make_project(top, clients)
    (anchor / "svc").mkdir()
    (anchor / "svc" / "keep").write_text("keep")
    (anchor / "elsewhere").mkdir()
    (top / "work").mkdir()  # the FUSE daemon's script and log
    yield anchor
    check_canary(anchor)
    rm_rf(top)


@BOTH_MODES
def test_fuse_mount_in_the_target_is_mount_point(bus, fuse_mech, fuse_project, clients):
    """A live, trivial FUSE file system inside the target: MountPoint for
    the anchor and the directory above the mount, the mount point itself and
    a path below it; the FUSE fs and the siblings are untouched."""
    mnt = fuse_project / "svc" / "fuse"
    with fuse_mount(mnt, "ok", fuse_project.parent.parent / "work"):
        assert (mnt / "hello").read_text() == "hello\n"
        for target in (fuse_project, fuse_project / "svc", mnt, mnt / "hello"):
            cp = shim(clients, bus, target, timeout=30)
            assert cp.returncode == i.EXIT_MOUNT_POINT, (target, cp.stderr)
            assert cp.stderr.count("\n") == 1
        assert (mnt / "hello").read_text() == "hello\n"
    assert (fuse_project / "svc" / "keep").read_text() == "keep"


@BOTH_MODES
@pytest.mark.parametrize("where", ["above", "anchor", "at", "below"])
def test_hung_fuse_mount_is_mount_point_without_hanging(bus, fuse_mech, fuse_project, clients, where):
    """The daemon never answers.  Whether the target contains the mount
    (the directory above it, the anchor), is the mount point, or lies below
    it, the call is refused with MountPoint promptly: nothing asks the FUSE
    daemon (no stat, no open into the mount), and no worker thread is left
    waiting on it."""
    mnt = fuse_project / "svc" / "fuse"
    target = {"above": fuse_project / "svc", "anchor": fuse_project, "at": mnt, "below": mnt / "x"}[where]
    with fuse_mount(mnt, "hang", fuse_project.parent.parent / "work"):
        cp = shim(clients, bus, target, timeout=ANSWER_BOUND)
        assert cp.returncode == i.EXIT_MOUNT_POINT, (target, cp.returncode, cp.stderr)
        assert cp.stderr.count("\n") == 1
        assert threads_waiting_on_fuse(fuse_mech.proc.pid) == 0
    assert (fuse_project / "svc" / "keep").read_text() == "keep"
    assert fuse_mech.proc.poll() is None


@BOTH_MODES
def test_calls_at_a_hung_fuse_mount_do_not_stall_other_callers(bus, fuse_mech, fuse_project, clients):
    """Twice as many calls at the hung mount as the mechanism has workers
    (2 here), all at once; meanwhile a root call and a user call elsewhere
    are answered within the bound, every call at the mount gets MountPoint,
    and after the daemon is gone the service is fine."""
    mnt = fuse_project / "svc" / "fuse"
    (fuse_project / "elsewhere" / "x").mkdir()
    with fuse_mount(mnt, "hang", fuse_project.parent.parent / "work"):
        with contextlib.ExitStack() as calls:
            at_mount = [calls.enter_context(user_call(clients, bus, t, timeout=120))
                        for t in (mnt, mnt / "x", mnt, mnt / "x")]
            for c in at_mount:
                c.ready()
            t0 = time.monotonic()
            assert raw_call(bus, str(fuse_project / "elsewhere" / "x")) == (None, None)
            assert time.monotonic() - t0 < ANSWER_BOUND
            (fuse_project / "elsewhere" / "y").mkdir()
            cp = shim(clients, bus, fuse_project / "elsewhere" / "y", timeout=ANSWER_BOUND)
            assert cp.returncode == 0, (cp.returncode, cp.stderr)
            results = [c.result(timeout=3 * ANSWER_BOUND)[0] for c in at_mount]
        assert [r.get("type") for r in results] == ["MountPointError"] * 4, results
        assert threads_waiting_on_fuse(fuse_mech.proc.pid) == 0
    assert fuse_mech.proc.poll() is None
    assert raw_call(bus, str(mnt)) == (None, None)  # unmounted now: an empty directory
    assert (fuse_project / "svc" / "keep").read_text() == "keep"


# -- (h) unexpected exceptions inside the service ---------------------------------------------

LOGGED = {"runtime": "RuntimeError: injected failure", "zero": "ZeroDivisionError",
          "oserror": "injected I/O error", "keyerror": "KeyError"}


@pytest.mark.parametrize("where", ["parse", "walk"])
@pytest.mark.parametrize("fault", sorted(LOGGED))
def test_unexpected_exception_is_a_plain_failed_and_the_service_goes_on(bus, allowed, project, clients,
                                                                        where, fault):
    """An exception the service does not expect (raised by a wrapper around
    the real mechanism, in the lexical parse or inside the walk) reaches the
    caller as org.locald.Admin1.Error.Failed with a plain one-line message;
    the traceback is in the mechanism's log; the service keeps serving."""
    name = f"boom-{where}-{fault}"
    (project / name).mkdir()
    (project / name / "data").write_text("x")
    mech = Mechanism(bus, faults=True)  # harness/programs/hooked_mechanism.py
    try:
        # As the unprivileged user, through the client library ...
        with user_call(clients, bus, project / name) as c:
            r, took = c.result(timeout=60)
        assert r["type"] == "CleanupFailedError", r
        assert r["message"] and "\n" not in r["message"], r
        assert "Traceback" not in r["message"] and 'File "' not in r["message"], r
        assert took < ANSWER_BOUND
        # ... and as root on the raw bus: the D-Bus error name is Failed.
        err, message = raw_call(bus, str(project / name))
        assert err == i.ERROR_FAILED, (err, message)
        assert "\n" not in message and "Traceback" not in message
        log = mech.log()
        assert "Traceback" in log and LOGGED[fault] in log, log[-3000:]
        lines = mech.audits(path=str(project / name))
        assert [ln["result"] for ln in lines] == [i.ERROR_FAILED, i.ERROR_FAILED]
        # Nothing was removed, and the next calls work.
        assert (project / name / "data").exists()
        cp = shim(clients, bus, project / "run")
        assert cp.returncode == 0, cp.stderr
        assert not (project / "run").exists() and (project / "other" / "data").exists()
        assert raw_call(bus, str(project / "other")) == (None, None)
        assert mech.proc.poll() is None
    finally:
        mech.stop()
