"""Idle exit (`--idle-timeout`), as bus activation uses it: the mechanism
exits 0 once no call has been in flight for the timeout and gives its name
back; it never exits while a call is in flight, and that call is answered;
and calls that arrive right at the timeout are never lost: each one is
answered, either by the instance that is about to leave (it drains what
reached it before its release) or by a freshly activated one.

Runs as any user on the permissive private bus with dbusmock's polkitd (the
mechanism then runs as the current user, and non-root callers are allowed
by the mock); activation uses the activation file staged by `make install`
with only its Exec= program (and the timeout) changed, which also works as
any user because a private dbus-daemon without <servicehelper> execs the
service itself.
"""

import concurrent.futures
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from locald_admin import interface as i
from harness.buses import PolkitMock, PrivateBus, has_owner
from harness.calls import cleanup
from harness.mechanism import Mechanism
from harness.trees import rm_rf, world_tmpdir
from harness.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
STAGED_EXEC = "/usr/lib/locald-admin/locald-admin-mechanism"
STAGED_ACTIVATION = "usr/share/dbus-1/system-services/org.locald.Admin1.service"

pytestmark = pytest.mark.skipif(shutil.which("dbus-daemon") is None, reason="dbus-daemon is not installed")


@pytest.fixture
def bus():
    with PrivateBus() as b:
        yield b


@pytest.fixture
def polkit(bus):
    with PolkitMock(bus) as p:
        yield p.allow(True)


@pytest.fixture
def own_anchor():
    """<tmp>/proj/.locald owned by the test process itself (the caller)."""
    top = world_tmpdir()
    anchor = top / "proj" / ".locald"
    anchor.mkdir(parents=True)
    yield anchor
    rm_rf(top)


# -- a started mechanism ----------------------------------------------------------

def test_exits_zero_when_idle_and_releases_the_name(bus, polkit):
    m = Mechanism(bus, "--idle-timeout", "1")
    try:
        assert m.proc.wait(timeout=30) == 0, m.log()  # generous: the timeout is 1 s
        assert not has_owner(bus.address, i.BUS_NAME)
        assert f"idle: releasing {i.BUS_NAME}" in m.log()
    finally:
        m.stop()


def test_exits_zero_when_idle_after_serving_a_call(bus, polkit, own_anchor):
    m = Mechanism(bus, "--idle-timeout", "1")
    try:
        (own_anchor / "leftover").write_text("x")
        con = bus.connect()
        try:
            r = cleanup(con, own_anchor / "leftover", timeout=60.0)  # on con: auto-start allowed
        finally:
            con.close()
        assert r.error is None, r.message
        assert not (own_anchor / "leftover").exists()
        assert m.proc.wait(timeout=30) == 0, m.log()
        assert not has_owner(bus.address, i.BUS_NAME)
        assert len(m.audit_lines()) == 1 and " result=ok " in m.audit_lines()[0]
    finally:
        m.stop()


def test_does_not_exit_while_a_call_is_in_flight(bus, polkit, clients):
    """polkit (the mock) holds the authorization of a call for three idle
    timeouts: the mechanism keeps its name and stays, answers the call once
    polkit does, and only then goes idle and exits 0."""
    top = world_tmpdir()
    anchor = top / "proj" / ".locald"
    (anchor / "run" / "shm").mkdir(parents=True)
    (anchor / "run" / "shm" / "data").write_text("leftover")
    subprocess.run(["chown", "-R", f"{clients.uid}:{clients.gid}", str(top / "proj")], check=True)
    m = Mechanism(bus, "--idle-timeout", "1", "--polkit-timeout", "120")
    polkit.mock.SimulateHang(True)
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            # The client is unprivileged (root would skip polkit).
            fut = pool.submit(clients.api, "request", str(anchor / "run"), bus.address)
            wait_until(lambda: polkit.mock.HaveHangingCalls(), 60, "the call to reach polkit", 0.05)
            held = time.monotonic()
            while time.monotonic() - held < 3.0:
                assert m.proc.poll() is None, m.log()
                assert has_owner(bus.address, i.BUS_NAME)
                time.sleep(0.1)
            polkit.mock.ReleaseHangingCalls()
            r = fut.result(timeout=120)
        assert r["ok"], r
        assert not (anchor / "run").exists() and anchor.is_dir()
        [line] = m.audit_lines()
        assert " result=ok " in line
        assert m.proc.wait(timeout=30) == 0, m.log()
        assert not has_owner(bus.address, i.BUS_NAME)
    finally:
        polkit.mock.SimulateHang(False)
        polkit.mock.ReleaseHangingCalls()
        m.stop()
        rm_rf(top)


# -- bus activation --------------------------------------------------------------

@pytest.fixture
def activating_bus(staged):
    """A private bus that activates the staged mechanism with
    --idle-timeout 1: the staged activation file, Exec= pointing at the staged
    launcher, everything else kept.  No <servicehelper>, so dbus-daemon execs
    it directly; it sets DBUS_SYSTEM_BUS_ADDRESS for the child itself (see
    tests/test_real_bus.py), so no env wrapper is needed."""
    launcher = staged / STAGED_EXEC.lstrip("/")
    out = []
    for line in (staged / STAGED_ACTIVATION).read_text().splitlines():
        if line.startswith("Exec="):
            argv = line[len("Exec="):].split()
            assert argv == [STAGED_EXEC, "--idle-timeout", "30"], line
            line = f"Exec={launcher} --idle-timeout 1"
        out.append(line)
    services = world_tmpdir("locald-admin-services-")
    (services / "org.locald.Admin1.service").write_text("\n".join(out) + "\n")
    b = PrivateBus(extra_xml=f"<servicedir>{services}</servicedir>")
    p = None
    try:
        p = PolkitMock(b)
        p.allow(True)  # for a non-root test process; root skips polkit
        yield b
        # let the last instance leave by itself before the bus goes
        wait_until(lambda: not has_owner(b.address, i.BUS_NAME), 30, "the last instance to go idle", 0.05)
    finally:
        if p is not None:
            p.stop()
        b.stop()
        rm_rf(services)


def test_calls_straddling_the_idle_timeout_are_never_lost(activating_bus, own_anchor):
    """Calls with pauses of 0.90 to 1.10 s between a reply and the next call,
    so that many arrive right around the 1 s idle deadline: while the instance
    is deciding to leave, releasing its name, draining, or already gone.
    Every call must get a method return (no NoReply, no ServiceUnknown, no
    activation failure), its file must be gone, and the later calls must have
    been served by re-activated instances."""
    b = activating_bus
    pauses = [0.9 + 0.02 * ((k * 7) % 11) for k in range(33)]  # 0.90 ... 1.10, shuffled
    senders, failures = [], []
    con = b.connect()
    try:
        assert i.BUS_NAME in con.list_activatable_names()
        assert not con.name_has_owner(i.BUS_NAME)
        for k, pause in enumerate(pauses):
            target = own_anchor / f"f{k}"
            target.write_text("x")
            r = cleanup(con, target, timeout=60.0)  # on con: auto-start allowed
            if r.error is not None:
                failures.append((k, pause, r.error, r.message))
            else:
                senders.append(r.sender)
                if target.exists():
                    failures.append((k, pause, "answered but not deleted", r.sender))
            time.sleep(pause)
    finally:
        con.close()
    # The last instance leaves by itself too; then every instance has logged
    # its release (and nothing went wrong in any of them).
    wait_until(lambda: not has_owner(b.address, i.BUS_NAME), 30, "the last instance to go idle", 0.05)
    log = b.log()
    assert failures == [], log[-4000:]
    assert len(senders) == len(pauses)
    activations = log.count(f"Successfully activated service '{i.BUS_NAME}'")
    assert "Failed to activate" not in log and "failed:" not in log, log[-4000:]
    # At least one re-activation: the first call activated the service, and
    # later ones were answered by other instances (distinct unique names).
    assert len(set(senders)) >= 2 and activations >= 2, (senders, activations)
    assert len(set(senders)) == activations, (senders, activations)
    assert log.count(f"serving {i.BUS_NAME} as ") == activations
    assert log.count(f"idle: releasing {i.BUS_NAME}") == activations, log[-4000:]
    assert "Traceback" not in log and ": ERROR: " not in log, log[-4000:]
    assert sum(1 for ln in log.splitlines() if ln.startswith("audit ") and " result=ok " in ln) == len(pauses)
