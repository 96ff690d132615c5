"""Hostile local users, through the bus: one user must not be able to deny
the service to another, grow the root daemon's memory or log with huge
arguments, forge audit records, or keep work going after leaving the bus.

Each attack runs as the unprivileged test user against the real mechanism on
a private bus; a second user (``locald-test2``) is the victim where one is
needed.  Every wait is bounded; timing appears only as generous bounds
("answered within 5 s").
"""

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import dbus
import pytest

from locald_admin import interface as i
from harness import IS_ROOT, trees
from harness.attack import rss_kib
from harness.buses import PolkitMock
from harness.calls import cleanup as raw_call
from harness.mechanism import Mechanism, audit_fields
from harness.users import OTHER_USER, SHIM, ClientRunner
from harness.waiting import poll_until

TEMPLATES = Path(__file__).resolve().parent / "templates"
SERVED_WITHIN = 5.0

needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs uid 0: two unprivileged users, their projects")


@pytest.fixture(scope="module")
def victims():
    """Client runner for the second user (the victim of the flood)."""
    if not IS_ROOT:
        pytest.skip("a second unprivileged user needs root to create and run as")
    runner = ClientRunner(OTHER_USER)
    yield runner
    runner.close()


def project_of(top, runner, name):
    anchor = trees.make_anchor(top, runner.uid, runner.gid, name=name)
    os.chown(anchor.parent, runner.uid, runner.gid)
    return anchor


@contextlib.contextmanager
def flood(clients, bus, **cfg):
    """harness/programs/flood.py as the client user: ``calls`` pipelined
    Cleanup calls.  Yields the process (its first line already read: the
    unique names); on exit, its stdin is closed (it disconnects) and it is
    reaped."""
    proc = clients.popen([clients.program("flood.py"), json.dumps(cfg)], bus.address, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        first = json.loads(proc.stdout.readline() or b"null")
        assert first is not None, proc.stderr.read().decode(errors="replace")
        proc.names = first["names"]
        yield proc
    finally:
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.close()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def tally(proc, timeout=60):
    """The flood's final line, once every call is answered:
    {"answers": {...}, "unanswered": 0}."""
    line = proc.stdout.readline()
    proc.wait(timeout)
    return json.loads(line)


def user_cleanup(runner, bus, path, interactive=False, timeout=60):
    """One Cleanup through the client API as ``runner``'s user: (report, seconds)."""
    t0 = time.monotonic()
    r = runner.api("request", str(path), bus.address, interactive=interactive, timeout=timeout)
    return r, time.monotonic() - t0


# -- 1. polkit check slots are per uid, and freed when the caller leaves ------------------

@needs_root
def test_an_interactive_flood_of_one_user_does_not_deny_another(bus, clients, victims, top):
    """The attacker's agent never answers: 100 interactive calls.  At most 4
    of their checks reach polkit; the victim's calls are answered at once,
    without error; when the attacker leaves, polkit is told to cancel each
    of their checks, the slots are free again, and every record says
    cancelled."""
    mine = project_of(top, clients, "attacker")
    theirs = project_of(top, victims, "victim")
    (theirs / "x").mkdir()
    with PolkitMock(bus, str(TEMPLATES / "polkitd_silent_agent.py")) as polkit, Mechanism(bus) as mech:
        with flood(clients, bus, calls=100, connections=2, interactive=True, path=str(mine / "a")) as attacker:
            assert poll_until(lambda: len(polkit.mock.Waiting()) == 4, 30, 0.05), polkit.mock.Waiting()
            time.sleep(0.5)
            assert len(polkit.mock.Waiting()) == 4  # the other 96 wait for the attacker's own slots
            for k in range(3):
                (theirs / "x" / str(k)).mkdir(parents=True, exist_ok=True)
                r, took = user_cleanup(victims, bus, theirs / "x" / str(k))
                assert r["ok"], r
                assert took < SERVED_WITHIN
                assert not (theirs / "x" / str(k)).exists()
            waiting = polkit.mock.Waiting()
            attacker.stdin.close()  # it disconnects
            assert poll_until(lambda: set(waiting) <= set(polkit.mock.CancelledIds()), 10, 0.05), (
                waiting, polkit.mock.CancelledIds())
            assert poll_until(lambda: len(mech.audits(uid=clients.uid)) == 100, 20, 0.1), len(mech.audits(uid=clients.uid))
        assert {f["result"] for f in mech.audits(uid=clients.uid)} == {"cancelled"}
        assert polkit.mock.Waiting() == []
        # The slots were given back: a new interactive check of the same
        # user reaches polkit at once.
        with flood(clients, bus, calls=1, interactive=True, path=str(mine / "b")):
            assert poll_until(lambda: len(polkit.mock.Waiting()) == 1, 10, 0.05)
        assert mech.proc.poll() is None and "Traceback" not in mech.log()


# -- 2. huge arguments, and one user's queue --------------------------------------------

@needs_root
def test_a_path_over_4096_bytes_is_refused_on_arrival(bus, polkit, clients, top):
    """Refused before the credentials or polkit are asked (the record has no
    uid, polkit saw no check), whether the path is a little over the limit
    or 8 MB; the record is short; the mechanism's memory does not grow with
    the argument."""
    anchor = project_of(top, clients, "p")
    polkit.allow(True)
    polkit.clear()
    with Mechanism(bus) as mech:
        idle = rss_kib(mech.proc.pid)
        with flood(clients, bus, calls=1, path=str(anchor / "a"), pad_to=i.MAX_PATH_BYTES + 1) as p:
            assert tally(p)["answers"] == {i.ERROR_INVALID_PATH: 1}
        with flood(clients, bus, calls=12, connections=4, path=str(anchor / "a"), pad_to=8_000_000) as p:
            assert tally(p, 120)["answers"] == {i.ERROR_INVALID_PATH: 12}
        # Read in bounded chunks, never whole: a few MiB at most.
        assert rss_kib(mech.proc.pid, "VmHWM") - idle < 16 * 1024
        assert polkit.checks() == []
        records = mech.audit_lines()
        assert len(records) == 13
        for line in records:
            f = audit_fields(line)
            assert f["uid"] == "-" and f["result"] == i.ERROR_INVALID_PATH, line
            assert len(line) < 500, line[:200]
        assert int(audit_fields(records[0])["path_bytes"]) == i.MAX_PATH_BYTES + 1
        assert all(int(audit_fields(ln)["message_bytes"]) > 8_000_000 for ln in records[1:])
        assert mech.proc.poll() is None and "Traceback" not in mech.log()


@needs_root
def test_one_users_queue_is_bounded_and_the_rest_are_busy(bus, polkit, clients, top):
    """polkit hangs; one user sends 200 calls: 128 are queued, 72 are told
    Busy at once; released, the 128 are all served."""
    anchor = project_of(top, clients, "p")
    polkit.allow(True)
    with Mechanism(bus, "--polkit-timeout", "60") as mech:
        polkit.mock.SimulateHang(True)
        try:
            with flood(clients, bus, calls=200, connections=2, path=str(anchor / "gone")) as p:
                assert poll_until(lambda: len(mech.audits(result=i.ERROR_BUSY)) == 200 - i.MAX_QUEUED_PER_UID,
                                  30, 0.1), len(mech.audits(result=i.ERROR_BUSY))
                time.sleep(0.5)
                assert len(mech.audit_lines()) == 200 - i.MAX_QUEUED_PER_UID  # the others still queued
                polkit.mock.SimulateHang(False)
                polkit.mock.ReleaseHangingCalls()
                out = tally(p, 120)
        finally:
            polkit.mock.SimulateHang(False)
            polkit.mock.ReleaseHangingCalls()
        assert out["answers"] == {i.ERROR_BUSY: 200 - i.MAX_QUEUED_PER_UID, "ok": i.MAX_QUEUED_PER_UID}, out
        assert mech.proc.poll() is None


@needs_root
@pytest.mark.parametrize("client", ["api", "shim"])
def test_the_client_library_retries_busy_with_backoff(bus, polkit, clients, top, client):
    """The user's queue is full (128 calls hanging in polkit): the client's
    own call is told Busy, retries, and succeeds once the queue drains;
    through the asyncio API (``request_cleanup``) and through locald-shim
    (the blocking client)."""
    anchor = project_of(top, clients, "p")
    (anchor / "mine").mkdir()
    os.chown(anchor / "mine", clients.uid, clients.gid)
    polkit.allow(True)
    with Mechanism(bus, "--polkit-timeout", "60") as mech:
        polkit.mock.SimulateHang(True)
        try:
            with flood(clients, bus, calls=i.MAX_QUEUED_PER_UID, connections=2, path=str(anchor / "gone")) as p:
                assert poll_until(lambda: polkit.mock.HaveHangingCalls(), 30, 0.05)
                if client == "api":
                    argv = [clients.probe, "request", str(anchor / "mine"), json.dumps({"timeout": 60})]
                else:
                    argv = ["-c", SHIM, "admin", "cleanup", "--no-interactive", "--timeout", "60", str(anchor / "mine")]
                proc = clients.popen(argv, bus.address, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                assert poll_until(lambda: mech.audits(result=i.ERROR_BUSY), 30, 0.05)
                polkit.mock.SimulateHang(False)
                polkit.mock.ReleaseHangingCalls()
                out, err = proc.communicate(timeout=60)
                tally(p, 120)
        finally:
            polkit.mock.SimulateHang(False)
            polkit.mock.ReleaseHangingCalls()
        if client == "api":
            report = json.loads(out)
            assert report["ok"], report
        else:
            assert proc.returncode == 0 and err == b"", err
        assert not (anchor / "mine").exists()
        busy = {f["sender"] for f in mech.audits(result=i.ERROR_BUSY)}
        assert busy & {f["sender"] for f in mech.audits(path=str(anchor / "mine"), result="ok")}


# -- 6. audit records cannot be forged ---------------------------------------------------

FORGERIES = ["\n", "\r", "\u2028", "\u2029", "\u0085", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e"]


@pytest.mark.parametrize("sep", FORGERIES, ids=lambda s: f"U+{ord(s):04X}")
def test_an_audit_line_is_one_line_whatever_the_path_holds(sep):
    from locald_admin.mechanism.audit import audit_line
    path = f"/p/.locald/x{sep}audit sender=:1.1 uid=0 pid=1 path=/etc/shadow result=ok removed=1"
    line = audit_line(sender=":1.9", uid=1000, path=path, result="ok")
    assert len(line.splitlines()) == 1 and len(line.encode().splitlines()) == 1
    assert line.isprintable()
    assert audit_fields(line)["path"] == path  # and it reads back exactly


def test_an_audit_line_keeps_printable_names_readable_and_escapes_the_rest():
    from locald_admin.mechanism.audit import audit_line
    path = "/p/.locald/caf\u00e9 \u2603 \U0001f600 \U000e0001 \udc80"
    line = audit_line(path=path)
    assert "caf\u00e9 \u2603 \U0001f600" in line and "\\udb40\\udc01" in line and "\\udc80" in line
    assert audit_fields(line)["path"] == path


def test_audit_records_through_the_bus_cannot_be_forged(bus, polkit, clients):
    polkit.allow(True)
    with Mechanism(bus) as mech:
        paths = [f"/nowhere/.locald/x{sep}audit sender=:1.1 uid=0 pid=1 path=/etc/shadow result=ok removed=1"
                 for sep in ("\u2028", "\u2029", "\u0085")]
        for path in paths:
            raw_call(bus, path)
        lines = mech.audit_lines()  # str.splitlines: it splits on all three
        assert len(lines) == 3, lines
        assert [audit_fields(ln)["path"] for ln in lines] == paths
        assert not any(audit_fields(ln).get("sender") == ":1.1" for ln in lines)


# -- 8. Properties and calls without an interface ------------------------------------------

def test_properties_are_answered_without_a_traceback_and_no_interface_is_refused(bus, polkit, top):
    anchor = top / "p" / ".locald"
    (anchor / "keep").mkdir(parents=True)
    with Mechanism(bus) as mech:
        con = bus.connect()
        try:
            obj = con.get_object(i.BUS_NAME, i.OBJECT_PATH)
            props = dbus.Interface(obj, "org.freedesktop.DBus.Properties")
            assert set(props.GetAll(i.INTERFACE)) == {p.name for p in i.PROPERTIES}
            for call, error in ((lambda: props.Set(i.INTERFACE, "Version", "9"), "PropertyReadOnly"),
                                (lambda: props.Get(i.INTERFACE, "X"), "UnknownProperty")):
                with pytest.raises(dbus.exceptions.DBusException) as e:
                    call()
                assert e.value.get_dbus_name() == "org.freedesktop.DBus.Error." + error
            with pytest.raises(dbus.exceptions.DBusException) as e:
                props.GetAll("org.example.Nothing")
            assert e.value.get_dbus_name() == "org.freedesktop.DBus.Error.UnknownInterface"
            with pytest.raises(dbus.exceptions.DBusException) as e:
                obj.get_dbus_method(i.METHOD_CLEANUP, None)(str(anchor / "keep"))
            assert e.value.get_dbus_name() == "org.freedesktop.DBus.Error.AccessDenied"
        finally:
            con.close()
        assert (anchor / "keep").is_dir()
        assert "Traceback" not in mech.log()


# -- 7. locald-shim interrupted --------------------------------------------------------------

@pytest.mark.parametrize("sig,code", [(signal.SIGINT, i.EXIT_SIGINT), (signal.SIGTERM, i.EXIT_SIGTERM)],
                         ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_shim_exits_128_plus_the_signal_and_its_call_is_cancelled(bus, polkit, clients, sig,
                                                                                  code):
    polkit.allow(True)
    with Mechanism(bus) as mech:
        polkit.mock.SimulateHang(True)
        try:
            proc = clients.popen(["-c", SHIM,
                                  "admin", "cleanup", "--no-interactive", "/nowhere/.locald/x"], bus.address,
                                 stderr=subprocess.PIPE)
            assert poll_until(lambda: polkit.mock.HaveHangingCalls(), 30, 0.05)
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=10)
        finally:
            polkit.mock.SimulateHang(False)
            polkit.mock.ReleaseHangingCalls()
        assert proc.returncode == code, err
        assert err.decode().count("\n") == 1, err
        assert poll_until(lambda: mech.audits(result="cancelled"), 10, 0.05), mech.log()[-2000:]


def test_the_shim_stops_the_agent_it_started_when_terminated(tmp_path, monkeypatch):
    """A stand-in pkttyagent on PATH records its pid; the shim, terminated
    mid-call, stops it before it exits 143."""
    agent = tmp_path / "pkttyagent"
    pidfile = tmp_path / "agent.pid"
    agent.write_text("#!/usr/bin/python3\nimport os, sys, time\n"
                     f"open({str(pidfile)!r}, 'w').write(str(os.getpid()))\n"
                     "os.close(int(sys.argv[sys.argv.index('--notify-fd') + 1]))  # registered\n"
                     "time.sleep(300)\n")
    agent.chmod(0o755)
    script = ("import sys, os, signal, threading, time\n"
              "from locald_admin.client import blocking, shim\n"
              "def hang(*a, **k):\n"
              "    time.sleep(60)\n"
              "blocking.cleanup = hang\n"
              "threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()\n"
              "sys.exit(shim.main(['admin', 'cleanup', '--interactive', '/nowhere/.locald/x']))\n")
    env = dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}")
    cp = subprocess.run([os.sys.executable, "-c", script], env=env, capture_output=True, timeout=30)
    assert cp.returncode == i.EXIT_SIGTERM, cp.stderr
    pid = int(pidfile.read_text())
    assert poll_until(lambda: not Path(f"/proc/{pid}").exists() or
                      Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z", 5, 0.05)


# -- 5. the anchor in a directory others may write -------------------------------------------

@needs_root
def test_an_anchor_others_could_swap_is_emptied_kept_and_the_record_says_so(bus, polkit, clients, top):
    anchor = project_of(top, clients, "shared")
    os.chown(anchor.parent, 0, 0)
    os.chmod(anchor.parent, 0o777)  # anyone may rename entries here (not sticky)
    (anchor / "run" / "shm").mkdir(parents=True)
    polkit.allow(True)
    with Mechanism(bus) as mech:
        cp = clients.shim("admin", "cleanup", "--no-interactive", str(anchor), bus_address=bus.address)
        assert cp.returncode == 0, cp.stderr
        [record] = mech.audits(path=str(anchor))
    assert record["result"] == "ok" and record["anchor_kept"] == "yes" and record["removed"] == "2", record
    assert anchor.is_dir() and os.listdir(anchor) == []
