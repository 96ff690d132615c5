"""Faults around the mechanism, end to end through a private bus.

(a) polkit slow or hanging: the caller gets NotAuthorized after
    ``--polkit-timeout``, nothing is deleted, and other callers are served
    meanwhile.
(b) the caller disconnects while its big delete runs: the mechanism survives,
    finishes, logs the audit line, serves the next call.
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
import importlib.util
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import dbus
import pytest

from locald_admin import interface as i
from support import IS_ROOT, Mechanism, rm_rf, wait_for_name, world_tmpdir

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


@contextlib.contextmanager
def running_mechanism(bus, *args):
    m = Mechanism(bus, *args)
    try:
        yield m
    finally:
        m.stop()


@pytest.fixture
def mechanism(bus, allowed):
    """A fresh mechanism per test (some tests stop, kill or wedge it)."""
    with running_mechanism(bus) as m:
        yield m


def make_project(top, clients):
    """<top>/proj/.locald owned by the client user, and a canary beside it."""
    anchor = top / "proj" / ".locald"
    anchor.mkdir(parents=True)
    subprocess.run(["chown", f"{clients.uid}:{clients.gid}", str(top / "proj"), str(anchor)], check=True)
    (top / "canary").mkdir()
    (top / "canary" / "precious").write_text("canary")
    return anchor


def check_canary(anchor):
    assert (anchor.parent.parent / "canary" / "precious").read_text() == "canary"


@contextlib.contextmanager
def mounted_tmpfs(where, options="size=4g,nr_inodes=4m,mode=755"):
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "locald-admin-test", str(where)],
                   check=True, capture_output=True)
    try:
        yield where
    finally:
        umount(where)


def umount(where):
    if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)
    assert not is_mount_point(where), f"{where} is still mounted"


def is_mount_point(path):
    """From /proc/self/mountinfo only: never stats (a hung FUSE mount)."""
    target = os.fsencode(str(path))
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            mp = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), line.split(b" ")[4])
            if mp == target:
                return True
    return False


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


def make_flat_tree(base, dirs, per):
    """base/d<k>/f<n>: dirs * per files; returns the number of entries
    including base."""
    os.mkdir(base)
    for d in range(dirs):
        p = os.path.join(base, f"d{d}")
        os.mkdir(p)
        fd = os.open(p, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for n in range(per):
                os.close(os.open(f"f{n}", os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600, dir_fd=fd))
        finally:
            os.close(fd)
    return 1 + dirs + dirs * per


def count_entries(path):
    if not os.path.lexists(path):
        return 0
    n = 1
    for _, dirnames, filenames in os.walk(path):
        n += len(dirnames) + len(filenames)
    return n


def wait_until(predicate, timeout, interval=0.002):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def audit_fields(line):
    return {k: v.strip('"') for k, v in re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', line)}


def audit_for(mech, **match):
    """Audit lines of ``mech`` whose fields include ``match``."""
    out = []
    for ln in mech.audit_lines():
        f = audit_fields(ln)
        if all(f.get(k) == str(v) for k, v in match.items()):
            out.append(f)
    return out


def raw_call(bus, path, timeout=ANSWER_BOUND):
    """Cleanup as the test process (root skips polkit); (error, message)."""
    con = bus.connect()
    try:
        method = con.get_object(i.BUS_NAME, i.OBJECT_PATH).get_dbus_method(i.METHOD_CLEANUP, i.INTERFACE)
        try:
            method(path, signature="s", timeout=timeout)
            return None, None
        except dbus.exceptions.DBusException as e:
            return e.get_dbus_name(), e.get_dbus_message()
    finally:
        con.close()


# Runs as the client user: prints its pid (the audit line names it), then
# makes one bare Cleanup call with the public API and prints the outcome;
# both as JSON lines.
USER_CALL = r"""
import asyncio, json, os, sys
from locald_admin import client
req = json.loads(sys.stdin.readline())
print(json.dumps({"pid": os.getpid()}), flush=True)
try:
    asyncio.run(client.request_cleanup(req["path"], timeout=req["timeout"]))
    out = {"ok": True}
except Exception as e:
    out = {"ok": False, "type": type(e).__name__, "message": str(e)}
print(json.dumps(out), flush=True)
"""


class UserCall:
    """A Cleanup call by the unprivileged client user, in the background."""

    def __init__(self, clients, bus, path, timeout=120):
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "PYTHONPATH": clients.pythonpath,
               "PYTHONDONTWRITEBYTECODE": "1", "DBUS_SYSTEM_BUS_ADDRESS": bus.address}
        kw = dict(user=clients.uid, group=clients.gid, extra_groups=[]) if IS_ROOT else {}
        self.started = time.monotonic()
        self.proc = subprocess.Popen([clients.python, "-c", USER_CALL], env=env, cwd="/", stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)
        self.proc.stdin.write((json.dumps({"path": str(path), "timeout": timeout}) + "\n").encode())
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


def stop_process(pid):
    """SIGSTOP ``pid`` and wait until every one of its threads is stopped
    (the signal is delivered asynchronously: a thread inside unlinkat
    finishes that call first)."""
    os.kill(pid, signal.SIGSTOP)

    def all_stopped():
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] not in ("T", "t"):
                return False
        return True

    assert wait_until(all_stopped, 30, 0.005), f"process {pid} did not stop"


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
    with running_mechanism(bus, "--polkit-timeout", "1") as mech:
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
        results = [f["result"] for f in audit_for(mech, uid=clients.uid)]
        assert results == [i.ERROR_NOT_AUTHORIZED, i.ERROR_NOT_AUTHORIZED, "ok"]
        assert mech.proc.poll() is None


def test_hanging_polkit_is_not_authorized_and_others_are_served(bus, allowed, project, clients):
    """polkit never answers.  With --polkit-timeout 1 the caller gets
    NotAuthorized within seconds, nothing deleted; a root caller (which
    skips polkit) is answered meanwhile; afterwards ReleaseHangingCalls and
    the service works as before."""
    if not IS_ROOT:
        pytest.skip("needs a root caller next to the unprivileged one")
    with running_mechanism(bus, "--polkit-timeout", "1") as mech:
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
    with running_mechanism(bus, "--polkit-timeout", "120") as mech:
        allowed.mock.SimulateHang(True)
        with user_call(clients, bus, project / "run") as a, user_call(clients, bus, project / "other") as b:
            a.ready(), b.ready()
            assert wait_until(lambda: len(allowed.checks()) >= 2, 30, 0.05)
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
def test_caller_killed_mid_delete(bus, mechanism, tmpfs_project, clients):
    big = tmpfs_project / "big"
    total = make_flat_tree(big, DIRS, PER)
    (tmpfs_project / "keep").write_text("keep")
    pid = mechanism.proc.pid
    with user_call(clients, bus, big, timeout=300) as c:
        client_pid = c.ready()
        assert wait_until(lambda: deleting_below(pid, big, PER), 60), "the walk never started"
        stop_process(pid)  # freeze the walk so the kill lands mid-delete
        try:
            left = count_entries(big)
            assert 0 < left < total
            assert bus_has_pid(bus, client_pid)
            c.kill()
            assert wait_until(lambda: not bus_has_pid(bus, client_pid), 30, 0.05)  # the bus saw it go
        finally:
            os.kill(pid, signal.SIGCONT)
    assert wait_until(lambda: audit_for(mechanism, pid=client_pid), 120, 0.05), mechanism.log()[-2000:]
    [line] = audit_for(mechanism, pid=client_pid)
    assert line["result"] == "ok" and int(line["removed"]) == total, line
    assert line["path"] == str(big)
    assert not os.path.lexists(big)  # the deletion completed
    assert (tmpfs_project / "keep").read_text() == "keep"
    assert mechanism.proc.poll() is None
    assert "Traceback" not in mechanism.log()
    # The next calls work, for the user and for root.
    (tmpfs_project / "next").mkdir()
    cp = shim(clients, bus, tmpfs_project / "next")
    assert cp.returncode == 0, cp.stderr
    assert raw_call(bus, str(tmpfs_project / "keep")) == (None, None)
    assert not os.path.lexists(tmpfs_project / "next") and not os.path.lexists(tmpfs_project / "keep")


# -- (c) the mechanism is killed mid-delete ---------------------------------------------

@needs_root
def test_mechanism_killed_mid_delete_next_instance_finishes(bus, allowed, tmpfs_project, clients):
    big = tmpfs_project / "big"
    total = make_flat_tree(big, DIRS, PER)
    (tmpfs_project / "keep").write_text("keep")
    first = Mechanism(bus)
    try:
        with user_call(clients, bus, big, timeout=300) as c:
            c.ready()
            assert wait_until(lambda: deleting_below(first.proc.pid, big, PER), 60), "the walk never started"
            stop_process(first.proc.pid)
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
    with running_mechanism(bus) as second:
        cp = shim(clients, bus, big, timeout=300)
        assert cp.returncode == 0, cp.stderr
        [line] = audit_for(second, path=str(big))
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
def test_read_only_file_system_is_failed_naming_entries(bus, mechanism, clients):
    """The project lives on a tmpfs remounted read-only (the anchor is not
    the mount point, the target contains no mount): every unlink fails with
    EROFS, Failed names the entries, nothing is removed."""
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
            cp = shim(clients, bus, t)
            assert cp.returncode == i.EXIT_FAILED, cp.stderr
            assert cp.stderr.count("\n") == 1 and "Read-only file system" in cp.stderr
            named = re.findall(r"(/\S+): Read-only file system", cp.stderr)
            assert named and all(Path(n).is_relative_to(t) and Path(n).exists() for n in named), cp.stderr
            assert "0 entries removed" in cp.stderr
            cp = shim(clients, bus, anchor / "single")
            assert cp.returncode == i.EXIT_FAILED and "Read-only file system" in cp.stderr, cp.stderr
            assert raw_call(bus, str(t))[0] == i.ERROR_FAILED
            assert sorted(p for p in anchor.rglob("*")) == before
            check_canary(anchor)
    finally:
        rm_rf(top)


# -- (f) huge and deep ---------------------------------------------------------------------

@needs_root
def test_100k_entries_on_a_tmpfs(bus, mechanism, tmpfs_project, clients):
    big = tmpfs_project / "big"
    total = make_flat_tree(big, 100, 1000)
    (tmpfs_project / "keep").write_text("keep")
    cp = shim(clients, bus, big, timeout=600)
    assert cp.returncode == 0, cp.stderr
    assert not os.path.lexists(big) and (tmpfs_project / "keep").exists()
    [line] = audit_for(mechanism, path=str(big))
    assert line["result"] == "ok" and int(line["removed"]) == total


@needs_root
@pytest.mark.soak
@pytest.mark.skipif(os.environ.get("LOCALD_ADMIN_SOAK") != "1", reason="soak: set LOCALD_ADMIN_SOAK=1")
def test_1m_entries_on_a_tmpfs(bus, mechanism, tmpfs_project, clients):
    big = tmpfs_project / "big"
    total = make_flat_tree(big, 1000, 1000)
    cp = shim(clients, bus, big, timeout=1800)
    assert cp.returncode == 0, cp.stderr
    assert not os.path.lexists(big)
    [line] = audit_for(mechanism, path=str(big))
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
    # mkdir + chdir in a child: the full path is far beyond PATH_MAX.
    subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import os
        os.chdir({str(deep)!r})
        for _ in range({DEPTH}):
            os.mkdir("d")
            os.chdir("d")
        open("bottom", "w").close()
    """)], check=True, timeout=120)
    (tmpfs_project / "keep").write_text("keep")
    sampler = FdSampler(mechanism.proc.pid, deep)
    sampler.start()
    try:
        cp = shim(clients, bus, deep, timeout=600)
    finally:
        sampler.stop()
    assert cp.returncode == 0, cp.stderr
    assert not os.path.lexists(deep) and (tmpfs_project / "keep").exists()
    [line] = audit_for(mechanism, path=str(deep))
    assert line["result"] == "ok" and int(line["removed"]) == DEPTH + 2
    assert sampler.samples > 0
    assert sampler.saw_walk, "no sample caught the walk"
    assert sampler.max < 200, sampler.max


# -- (g) FUSE ------------------------------------------------------------------------------

FUSE_FS = r"""
import ctypes, errno, os, signal, stat, sys, threading, time
import mfusepy as fuse

ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: never outlive the test
threading.Timer(600, lambda: os._exit(3)).start()  # nor a stuck run
mode, mountpoint = sys.argv[1], sys.argv[2]


def hang(self, *args, **kw):
    time.sleep(3600)


class Trivial(fuse.Operations):
    use_ns = True

    def getattr(self, path, fh=None):
        if path == "/":
            return dict(st_mode=stat.S_IFDIR | 0o755, st_nlink=2)
        if path == "/hello":
            return dict(st_mode=stat.S_IFREG | 0o644, st_nlink=1, st_size=6)
        raise fuse.FuseOSError(errno.ENOENT)

    def readdir(self, path, fh):
        return [".", "..", "hello"]

    def read(self, path, size, offset, fh):
        return b"hello\n"[offset:offset + size]


class Hung(fuse.Operations):
    use_ns = True
    getattr = readdir = opendir = open = access = statfs = read = hang


fuse.FUSE(Hung() if mode == "hang" else Trivial(), mountpoint, foreground=True)
"""


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
    ``mountpoint`` (daemon script and log in ``workdir``).  Teardown: kill
    the daemon first (that aborts every request it left hanging), then
    unmount.  Nothing here stats the mount."""
    mountpoint.mkdir(parents=True)
    script = workdir / "fusefs.py"
    script.write_text(FUSE_FS)
    logpath = workdir / "fusefs.log"
    with open(logpath, "wb") as log:
        proc = subprocess.Popen([sys.executable, str(script), mode, str(mountpoint)], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: is_mount_point(mountpoint) or proc.poll() is not None, 20, 0.02)
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
    with running_mechanism(bus, "--workers", "2", *args) as m:
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

WRAPPER = r'''
import errno, sys
from locald_admin import pathrules
from locald_admin.fs import walk
from locald_admin.mechanism import main

FAULTS = {
    "runtime": lambda: RuntimeError("injected failure\nwith a second line"),
    "zero": lambda: ZeroDivisionError("division by zero"),
    "oserror": lambda: OSError(errno.EIO, "injected I/O error"),
    "keyerror": lambda: KeyError("no such key"),
}


def _fault(name, where):
    prefix = f"boom-{where}-"
    if name.startswith(prefix):
        raise FAULTS[name[len(prefix):]]()


_real_parse = pathrules.parse


def parse(path):
    """The first thing the mechanism does with a path (lexical rules)."""
    text = path.decode("utf-8", "replace") if isinstance(path, bytes) else path
    _fault(text.rstrip("/").rsplit("/", 1)[-1], "parse")
    return _real_parse(path)


_real_remove_tree = walk.remove_tree


def remove_tree(parent_fd, name, dir_fd, *args, **kwargs):
    """Deep inside the deletion, after scope resolution, in a worker."""
    _fault(name.decode("utf-8", "replace"), "walk")
    return _real_remove_tree(parent_fd, name, dir_fd, *args, **kwargs)


pathrules.parse = parse
walk.remove_tree = remove_tree
sys.exit(main.main(sys.argv[1:]))
'''


class WrappedMechanism(Mechanism):
    """The real mechanism started through a wrapper script that makes the
    lexical parse or the deletion walk raise for a few magic names."""

    def __init__(self, bus, script, *args):
        self.bus = bus
        self.stderr_path = bus.dir / f"mechanism-wrapped-{time.monotonic_ns()}.log"
        env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=bus.address)
        with open(self.stderr_path, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, str(script), *args], env=env,
                                         stdin=subprocess.DEVNULL, stderr=log)
        wait_for_name(bus.address, i.BUS_NAME, proc=self.proc)


LOGGED = {"runtime": "RuntimeError: injected failure", "zero": "ZeroDivisionError",
          "oserror": "injected I/O error", "keyerror": "KeyError"}


@pytest.mark.parametrize("where", ["parse", "walk"])
@pytest.mark.parametrize("fault", sorted(LOGGED))
def test_unexpected_exception_is_a_plain_failed_and_the_service_goes_on(bus, allowed, project, clients,
                                                                        tmp_path, where, fault):
    """An exception the service does not expect (raised by a wrapper around
    the real mechanism, in the lexical parse or inside the walk) reaches the
    caller as org.locald.Admin1.Error.Failed with a plain one-line message;
    the traceback is in the mechanism's log; the service keeps serving."""
    script = tmp_path / "wrapped_mechanism.py"
    script.write_text(WRAPPER)
    name = f"boom-{where}-{fault}"
    (project / name).mkdir()
    (project / name / "data").write_text("x")
    mech = WrappedMechanism(bus, script)
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
        lines = audit_for(mech, path=str(project / name))
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
