"""The dbusmock tier: the real mechanism on a private system bus with
python-dbusmock's polkitd mock.  Clients run as an unprivileged user when the
suite runs as root (uid 0 would bypass polkit and prove nothing), as the
current user otherwise.  Runs anywhere, as any user.
"""

import asyncio
import json
import os
import re
import stat
import subprocess
import threading
import xml.etree.ElementTree as ET
from pathlib import Path

import dbus
import pytest

from locald_admin import busio
from locald_admin import interface as i
from locald_admin import messages as m
from locald_admin.client import AdminClient, blocking
from locald_admin.client.errors import InvalidPathError, MechanismUnavailable, OutsideScopeError
from harness import IS_ROOT
from harness.buses import PolkitMock, PrivateBus
from harness.calls import cleanup
from harness.mechanism import Mechanism, stack
from harness.trees import check_canary, make_anchor, make_chain, plant_canary, rm_rf, world_tmpdir
from harness.waiting import poll_until

TEMPLATES = Path(__file__).resolve().parent / "templates"


@pytest.fixture
def project(clients):
    """<tmp>/proj/.locald owned by the client user, with leftovers and a
    canary directory beside the project that must survive every test."""
    top = world_tmpdir()
    anchor = top / "proj" / ".locald"
    (anchor / "run" / "shm").mkdir(parents=True)
    (anchor / "run" / "shm" / "data").write_text("leftover")
    (anchor / "keep").mkdir()
    plant_canary(top)
    subprocess.run(["chown", "-R", f"{clients.uid}:{clients.gid}", str(top / "proj")], check=True)
    yield anchor
    check_canary(top)
    rm_rf(top)


def test_introspection_names_cleanup_with_a_path_argument(bus, mechanism):
    con = bus.connect()
    xml = con.get_object(i.BUS_NAME, i.OBJECT_PATH).Introspect(
        dbus_interface="org.freedesktop.DBus.Introspectable")
    con.close()
    iface = ET.fromstring(xml).find(f"interface[@name='{i.INTERFACE}']")
    args = iface.find("method[@name='Cleanup']").findall("arg")
    assert [(a.get("name"), a.get("type"), a.get("direction", "in")) for a in args] == [("path", "s", "in")]


def test_busctl_call_works(bus, mechanism, project, allowed):
    if not IS_ROOT:
        pytest.skip("busctl runs as this user; covered by the client tests when not root")
    target = project / "run"
    cp = subprocess.run(["busctl", f"--address={bus.address}", "call", i.BUS_NAME, i.OBJECT_PATH,
                         i.INTERFACE, i.METHOD_CLEANUP, "s", str(target)], capture_output=True, text=True)
    assert cp.returncode == 0, cp.stderr
    assert not target.exists()


def test_authorized_caller_removes_the_tree(bus, mechanism, project, allowed, clients):
    cp = clients.shim("admin", "cleanup", str(project / "run"), bus_address=bus.address)
    assert (cp.returncode, cp.stderr) == (0, "")
    assert not (project / "run").exists()
    assert (project / "keep").is_dir()  # a sibling of the target stays


def test_denied_caller_gets_not_authorized_and_nothing_is_deleted(bus, mechanism, project, polkit, clients):
    polkit.allow(False)
    cp = clients.shim("admin", "cleanup", str(project / "run"), bus_address=bus.address)
    assert cp.returncode == i.EXIT_NOT_AUTHORIZED
    assert "polkit denied" in cp.stderr and cp.stderr.count("\n") == 1
    # what a person can do about it: the two ways in, with the shipped rule's file
    assert "active local session" in cp.stderr and "50-locald-admin.rules.example" in cp.stderr
    assert (project / "run" / "shm" / "data").read_text() == "leftover"
    r = clients.api("request", str(project / "run"), bus.address)
    assert r["type"] == "NotAuthorizedError" and "PermissionError" in r["mro"]


def test_unauthorized_caller_learns_nothing_about_paths(bus, mechanism, polkit, clients):
    """Authorization comes before the file system: a denied caller gets
    NotAuthorized for an invalid, an out-of-scope and a missing path alike."""
    polkit.allow(False)
    for path in ("/nonexistent/.locald/x", "/etc", "/a/../b/.locald", "relative"):
        r = clients.api("request", path, bus.address)  # request_cleanup sends as is
        assert r["type"] == "NotAuthorizedError", (path, r)


def test_polkit_gets_the_callers_bus_name_as_subject_and_no_interaction_flag(bus, mechanism, project,
                                                                              allowed, clients):
    r = clients.api("request", str(project / "run"), bus.address)
    assert r["ok"], r
    checks = allowed.checks()
    assert len(checks) == 1
    subject, action, details, flags, _cancel = checks[0]
    assert subject[0] == "system-bus-name"
    assert dict(subject[1]) == {"name": r["sender"]}
    assert (action, dict(details), int(flags)) == (i.POLKIT_ACTION, {}, 0)


def test_interactive_call_sets_allow_user_interaction(bus, mechanism, project, allowed, clients):
    r = clients.api("request", str(project / "run"), bus.address, interactive=True)
    assert r["ok"], r
    assert [int(c[3]) for c in allowed.checks()] == [i.POLKIT_ALLOW_USER_INTERACTION]


def test_each_call_asks_polkit_again(bus, mechanism, project, allowed, clients):
    for _ in range(3):
        assert clients.api("request", str(project / "nothing-here"), bus.address)["ok"]
    assert len(allowed.checks()) == 3


@pytest.mark.skipif(not IS_ROOT, reason="needs a root caller next to an unprivileged one")
def test_root_caller_skips_polkit(bus, mechanism, project, polkit):
    polkit.allow(False)
    polkit.clear()
    assert cleanup(bus, str(project / "run")) == (None, None)
    assert not (project / "run").exists()
    assert polkit.checks() == []


@pytest.mark.parametrize("path,error", [
    ("", i.ERROR_INVALID_PATH),
    ("relative/.locald/x", i.ERROR_INVALID_PATH),
    ("/", i.ERROR_INVALID_PATH),
    ("/tmp/.locald/../etc", i.ERROR_INVALID_PATH),
    ("/tmp/./.locald/x", i.ERROR_INVALID_PATH),
    ("/tmp/.locald/" + "x" * 4097, i.ERROR_INVALID_PATH),
    ("/etc/passwd", i.ERROR_OUTSIDE_SCOPE),
    ("/tmp/x.locald/y", i.ERROR_OUTSIDE_SCOPE),
    ("/tmp/.localdx/y", i.ERROR_OUTSIDE_SCOPE),
])
def test_bad_paths_get_named_errors_over_the_bus(bus, mechanism, allowed, clients, path, error):
    """The client checks too, so the raw bus surface is exercised with a
    direct call (as root it would skip polkit; lexical rules apply anyway)."""
    name, message = cleanup(bus, path)
    assert name == error
    assert "\n" not in message and "Traceback" not in message


def test_wrong_signature_is_invalid_args(bus, mechanism):
    con = bus.connect()
    try:
        obj = con.get_object(i.BUS_NAME, i.OBJECT_PATH)
        with pytest.raises(dbus.exceptions.DBusException) as ei:
            obj.get_dbus_method(i.METHOD_CLEANUP, i.INTERFACE)(42, signature="i")
    finally:
        con.close()
    assert ei.value.get_dbus_name() == "org.freedesktop.DBus.Error.InvalidArgs"
    assert "Traceback" not in ei.value.get_dbus_message()


def test_missing_targets_are_success(bus, mechanism, project, allowed, clients):
    for p in (project / "no" / "such" / "dir", project.parent / "nope" / ".locald" / "x",
              project / "run" / "shm" / "data" / "below-a-file"):
        cp = clients.shim("admin", "cleanup", str(p), bus_address=bus.address)
        assert cp.returncode == 0, (p, cp.stderr)
    assert (project / "run" / "shm" / "data").read_text() == "leftover"


def test_symlink_below_the_anchor_is_outside_scope(bus, mechanism, project, allowed, clients):
    canary = project.parent.parent / "canary"
    os.symlink(canary, project / "link")
    os.lchown(project / "link", clients.uid, clients.gid)
    cp = clients.shim("admin", "cleanup", str(project / "link" / "precious"), bus_address=bus.address)
    assert cp.returncode == i.EXIT_OUTSIDE_SCOPE, cp.stderr
    assert (canary / "precious").read_text() == "canary"


def test_anchor_symlink_is_outside_scope(bus, mechanism, project, allowed, clients):
    other = project.parent / "elsewhere"
    other.mkdir()
    (other / "x").write_text("keep")
    subprocess.run(["chown", "-R", f"{clients.uid}:{clients.gid}", str(other)], check=True)
    alias = project.parent / "alias"
    alias.mkdir()
    os.symlink(other, alias / ".locald")
    cp = clients.shim("admin", "cleanup", str(alias / ".locald" / "x"), bus_address=bus.address)
    assert cp.returncode == i.EXIT_OUTSIDE_SCOPE, cp.stderr
    assert (other / "x").read_text() == "keep"


def test_file_fifo_and_socket_targets(bus, mechanism, project, allowed, clients):
    import socket
    f = project / "file"
    f.write_text("x")
    fifo = project / "fifo"
    os.mkfifo(fifo)
    sock_path = project / "sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(sock_path))
    s.close()
    for p in (f, fifo, sock_path):
        os.lchown(p, clients.uid, clients.gid)
        cp = clients.shim("admin", "cleanup", str(p), bus_address=bus.address)
        assert cp.returncode == 0, cp.stderr
        assert not os.path.lexists(p)


def test_the_anchor_itself_can_be_removed(bus, mechanism, project, allowed, clients):
    cp = clients.shim("admin", "cleanup", str(project) + "//", bus_address=bus.address)
    assert cp.returncode == 0, cp.stderr
    assert not project.exists() and project.parent.is_dir()


def test_failed_names_the_entry(bus, mechanism, project, allowed, clients):
    """An entry the mechanism cannot remove: Failed, naming it; the rest goes."""
    stuck = project / "run" / "stuck"
    stuck.mkdir()
    (stuck / "f").write_text("x")
    (project / "run" / "other").write_text("x")
    os.chown(stuck, clients.uid, clients.gid)
    if IS_ROOT:
        if subprocess.run(["chattr", "+i", str(stuck / "f")], capture_output=True).returncode != 0:
            pytest.skip("chattr +i is not supported on this file system")
    else:
        os.chmod(stuck, stat.S_IRUSR | stat.S_IXUSR)  # the mechanism runs as us
    try:
        cp = clients.shim("admin", "cleanup", str(project / "run"), bus_address=bus.address)
    finally:
        if IS_ROOT:
            subprocess.run(["chattr", "-i", str(stuck / "f")])
        os.chmod(stuck, 0o755)
    assert cp.returncode == i.EXIT_FAILED
    assert str(stuck / "f") in cp.stderr and cp.stderr.count("\n") == 1
    assert not (project / "run" / "other").exists()
    assert not (project / "run" / "shm").exists()


def test_audit_line_per_request(bus, mechanism, project, allowed, clients):
    before = len(mechanism.audit_lines())
    r = clients.api("request", str(project / "run"), bus.address)
    assert r["ok"]
    lines = mechanism.audit_lines()[before:]
    assert len(lines) == 1
    fields = dict(re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', lines[0]))
    assert fields["sender"] == r["sender"] and fields["uid"] == str(clients.uid)
    assert fields["result"] == "ok" and int(fields["removed"]) == 3
    assert fields["path"].strip('"') == str(project / "run")
    assert int(fields["pid"]) > 0 and float(fields["duration_ms"]) >= 0


def test_audit_line_cannot_be_forged_by_a_newline_in_the_path(bus, mechanism, allowed, clients):
    before = len(mechanism.audit_lines())
    r = clients.api("request", "/tmp/x/.locald/a\naudit sender=forged result=ok", bus.address)
    assert r["ok"]
    lines = mechanism.audit_lines()[before:]
    assert len(lines) == 1 and "sender=forged" not in lines[0].split('path=')[0]
    assert not any(ln.startswith("audit sender=forged") for ln in mechanism.log().splitlines())


# -- the client's delegate and fallback paths -----------------------------------

def test_client_refuses_dotdot_before_touching_anything(bus, clients, project):
    r = clients.api("force", str(project / "run" / ".." / "keep"), bus.address)
    assert r["type"] == "InvalidPathError" and "ValueError" in r["mro"]
    assert (project / "keep").is_dir() and (project / "run").is_dir()


def test_client_relative_path_is_joined_to_the_working_directory(bus, clients, project):
    r = clients.api("force", ".locald/run", bus.address, cwd=str(project.parent))
    assert r["ok"], r
    assert not (project / "run").exists() and (project / "keep").is_dir()


def test_shim_refuses_a_relative_path_itself(bus, clients, project):
    cp = clients.shim("admin", "cleanup", ".locald/run", bus_address=bus.address, cwd=str(project.parent))
    assert cp.returncode == i.EXIT_INVALID_PATH
    assert (project / "run").is_dir()


def test_shim_usage_error_is_exit_2(bus, clients):
    assert clients.shim("admin", bus_address=bus.address).returncode == i.EXIT_USAGE
    assert clients.shim("admin", "cleanup", bus_address=bus.address).returncode == i.EXIT_USAGE


def test_no_service_keeps_the_original_permission_error_with_a_hint(clients, project):
    """No bus at all: the caller's own PermissionError comes back, with a
    hint; the shim exits 7."""
    blocked = project / "run" / "blocked"
    blocked.mkdir()
    (blocked / "f").write_text("x")
    os.chmod(blocked, 0o555)
    if IS_ROOT:
        os.chown(blocked, 0, 0)  # root-owned, as runc leaves it
    try:
        r = clients.api("force", str(project / "run"), "unix:path=/nonexistent/socket")
        cp = clients.shim("admin", "cleanup", str(project / "run"), bus_address="unix:path=/nonexistent/socket")
    finally:
        os.chmod(blocked, 0o755)
    assert r["type"] == "PermissionError", r
    assert "locald-admin" in r["hint"] and any("locald-admin" in n for n in r["notes"])
    assert cp.returncode == i.EXIT_NO_SERVICE and cp.stderr.count("\n") == 1
    assert (blocked / "f").exists()


def test_bus_without_the_mechanism_is_no_service(clients, project):
    with PrivateBus() as empty:
        cp = clients.shim("admin", "cleanup", str(project / "run"), bus_address=empty.address)
    assert cp.returncode == i.EXIT_NO_SERVICE, cp.stderr
    assert "ServiceUnknown" in cp.stderr or "not available" in cp.stderr
    assert "apt install locald-admin" in cp.stderr  # what installs it


@pytest.fixture(scope="class")
def challenge_bus():
    """A bus of its own whose polkit answers every check with a challenge."""
    with stack(allow=False, template=str(TEMPLATES / "polkitd_challenge.py")) as (b, _, _):
        yield b


class TestInteractiveChallenge:
    """polkit answers with a challenge: without the interactive flag the
    caller gets InteractiveAuthorizationRequired (exit 3)."""

    @pytest.fixture
    def stack(self, challenge_bus):
        return challenge_bus

    def test_challenge_without_interaction(self, stack, project, clients):
        r = clients.api("request", str(project / "run"), stack.address)
        assert r["type"] == "InteractiveAuthorizationRequiredError", r
        assert "NotAuthorizedError" in r["mro"] and "PermissionError" in r["mro"]
        cp = clients.shim("admin", "cleanup", "--no-interactive", str(project / "run"), bus_address=stack.address)
        assert cp.returncode == i.EXIT_NOT_AUTHORIZED
        assert (project / "run" / "shm" / "data").exists()

    def test_challenge_with_interaction(self, stack, project, clients):
        r = clients.api("request", str(project / "run"), stack.address, interactive=True)
        assert r["ok"], r
        assert not (project / "run").exists()


# -- the blocking client (client/blocking.py, locald-shim's path) ---------------------
#
# The shim's other cases run through it too: the errors and exit codes above,
# the bad-input catalogue (tests/test_bad_input.py), the interrupted shim, its
# agent and Busy (tests/test_hostile.py).

# locald-shim's main as the client user, then what it loaded: its last line.
LOADED = """
import json, sys
from locald_admin.client.shim import main
try:
    code = main(sys.argv[1:])
except SystemExit as e:
    code = e.code
loaded = sorted(sys.modules)
print(json.dumps({"code": code, "modules": loaded}))
"""
# Loaded only by the asyncio client and the user's own removal; argparse only
# for what the shim's quick reading of locald's forms does not take.
NOT_FOR_THE_SHIM = ("asyncio", "dataclasses", "locald_admin.busio", "locald_admin.client.cleanup",
                    "locald_admin.client.as_user", "subprocess", "argparse")


@pytest.mark.parametrize("argv", [["--version"], ["admin", "cleanup", "--no-interactive", "{project}/run"]],
                         ids=["version", "cleanup"])
def test_the_shim_loads_neither_asyncio_nor_dataclasses_nor_argparse(bus, allowed, clients, project, argv):
    argv = [a.format(project=project) for a in argv]
    cp = clients.run(["-c", LOADED, *argv], bus.address, text=True)
    assert cp.returncode == 0, cp.stderr
    out = json.loads(cp.stdout.splitlines()[-1])
    assert out["code"] in (0, None), (out["code"], cp.stderr)
    assert "locald_admin.client.blocking" in out["modules"] or argv == ["--version"]
    assert [name for name in NOT_FOR_THE_SHIM if name in out["modules"]] == []
    if argv != ["--version"]:
        assert not (project / "run").exists()


def test_blocking_success_and_answers_in_process(bus, allowed, clients, project):
    """``blocking.cleanup`` in this process (root skips polkit; otherwise the
    mock allows): success, OutsideScope, InvalidPath from the mechanism
    (the lexical check is the caller's, skipped here), a missing target."""
    if os.geteuid() != 0 and os.geteuid() != clients.uid:
        pytest.skip("the anchor belongs to another user")
    blocking.cleanup(str(project / "run"), address=bus.address)
    assert not (project / "run").exists()
    blocking.cleanup(str(project / "missing"), address=bus.address)
    with pytest.raises(OutsideScopeError):
        blocking.cleanup("/tmp/no-anchor-here/x", address=bus.address)
    with pytest.raises(InvalidPathError, match="'..'"):
        blocking.cleanup(str(project / ".." / ".locald" / "x"), address=bus.address)


@pytest.mark.parametrize("address", ["unix:path=/nonexistent/socket", "tcp:host=localhost,port=1"],
                         ids=["no-socket", "no-unix-address"])
def test_blocking_without_a_bus_is_mechanism_unavailable(address):
    with pytest.raises(MechanismUnavailable, match="cannot connect to the system bus"):
        blocking.cleanup("/x/.locald/y", address=address)


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), float("inf")])
def test_a_timeout_that_is_no_positive_number_of_seconds_is_refused_before_the_bus(timeout):
    """Both clients refuse it before connecting (the address would fail
    otherwise): a nan deadline is never past, an infinite one never ends."""
    with pytest.raises(ValueError, match="timeout must be a positive number of seconds"):
        blocking.cleanup("/x/.locald/y", address="unix:path=/nonexistent/socket", timeout=timeout)
    with pytest.raises(ValueError, match="timeout must be a positive number of seconds"):
        asyncio.run(AdminClient().cleanup("/x/.locald/y", timeout=timeout))  # never connected


def test_blocking_on_a_bus_without_the_mechanism_is_mechanism_unavailable():
    with PrivateBus() as empty:
        with pytest.raises(MechanismUnavailable, match="ServiceUnknown|NameHasNoOwner"):
            blocking.cleanup("/x/.locald/y", address=empty.address, timeout=10)


def test_shim_no_answer_within_the_timeout_is_failed_and_the_call_is_dropped(bus, polkit, mechanism, clients,
                                                                            project):
    """polkit hangs: the shim gives up after --timeout (exit 1, one line),
    and the mechanism, seeing its caller leave, records the call as
    cancelled."""
    polkit.allow(True)
    polkit.mock.SimulateHang(True)
    try:
        before = len(mechanism.audits(result="cancelled"))
        cp = clients.shim("admin", "cleanup", "--no-interactive", "--timeout", "1", str(project / "run"),
                          bus_address=bus.address)
        assert cp.returncode == i.EXIT_FAILED, cp.stderr
        assert cp.stderr == f"locald-shim: no answer from {i.BUS_NAME} within 1 s\n"
        assert poll_until(lambda: len(mechanism.audits(result="cancelled")) > before, 10, 0.05), \
            mechanism.log()[-2000:]
    finally:
        polkit.mock.SimulateHang(False)
        polkit.mock.ReleaseHangingCalls()
        polkit.allow(False)
    assert (project / "run" / "shm" / "data").exists()


FORGED = 987654321  # the count every forged Progress carries


class Forger:
    """Another connection that sends a Progress signal for ``path`` to
    every connection that joins the bus, every few milliseconds, as anyone
    on the bus may; the mechanism's name is not its own."""

    def __init__(self, address, path):
        self.address, self.path = address, path
        self.sent = 0
        self._names = set()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "the forger did not connect"

    async def _run(self):
        con = await busio.Connection.open(self.address)
        con.on_signal(self._joined)
        rule = ("type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',"
                "member='NameOwnerChanged',arg1=''")
        await con.call(m.add_match(rule))
        self._ready.set()
        while not self._stop.is_set():
            for name in list(self._names):
                con.post(m.progress(name, self.path, FORGED, 0.5))
                self.sent += 1
            await asyncio.sleep(0.005)
        con.close()

    def _joined(self, signal):
        if signal.member == "NameOwnerChanged" and signal.body[0].startswith(":"):
            self._names.add(signal.body[0])

    def stop(self):
        self._stop.set()
        self._thread.join(10)


def test_blocking_believes_progress_only_from_the_services_owner(top):
    """A delete of about a second with a 0.05 s Progress interval, while
    another connection sends Progress for the same path to every newcomer:
    the callback sees the mechanism's counts, never the forged one."""
    anchor = make_anchor(top, os.geteuid(), os.getegid())
    target = anchor / "big"
    target.mkdir()
    for k in range(2):
        make_chain(target / f"chain{k}", 20_000, create_base=True)
    seen = []
    with stack(progress_interval=0.05) as (b, _, _):
        forger = Forger(b.address, str(target))
        try:
            blocking.cleanup(str(target), address=b.address, timeout=120,
                             on_progress=lambda removed, elapsed: seen.append(removed))
        finally:
            forger.stop()
    assert not target.exists()
    assert forger.sent > 0
    assert seen and FORGED not in seen, seen
    assert seen == sorted(seen)


# -- staying on the bus ----------------------------------------------------------

def test_a_burst_of_pipelined_calls_on_one_connection_is_all_answered(bus, mechanism, allowed):
    """Hundreds of calls pipelined on one connection fill the socket buffers;
    a writer that treats EAGAIN as the end of the connection (dbus-next's,
    dbus-fast's) drops it: busio's waits (client and service both use it)."""
    import asyncio
    from locald_admin import messages as m
    from locald_admin.busio import Connection

    async def burst(n):
        b = await Connection.open(bus.address)
        # The system bus allows 128 pending replies per connection.
        window = asyncio.Semaphore(120)

        async def one(k):
            async with window:
                return await b.call(m.cleanup(f"/nonexistent/{k}/.locald/" + "x" * 4000))

        replies = await asyncio.wait_for(asyncio.gather(*(one(k) for k in range(n))), 120)
        b.close()
        return replies

    replies = asyncio.run(burst(1000))
    assert len(replies) == 1000
    assert all(r.error_name is None for r in replies)
    assert mechanism.proc.poll() is None


def test_mechanism_exits_nonzero_when_the_bus_goes_away(clients):
    b = PrivateBus()
    p = PolkitMock(b)
    m = Mechanism(b)
    try:
        b.proc.kill()
        b.proc.wait()
        assert m.proc.wait(10) != 0
        assert "lost the bus connection" in m.log()
    finally:
        m.stop()
        p.proc.kill()
        p.proc.wait()
        b.stop()
