"""The real thing, short of a booted system: a private dbus-daemon whose
policy is Debian's own system-bus policy (default deny) plus the project's
bus policy, the real polkitd (/usr/lib/polkit-1/polkitd) with the project's
polkit action, and bus activation through the activation file that
`make install` lays down.

What it proves:

* bus policy: an unprivileged user cannot own org.locald.Admin1 (AccessDenied)
  but can call Cleanup (the mechanism answers); root owns the name; any other
  interface on the service, and a call without an interface field, is denied
  by the bus, for root as well;
* polkit: pkaction shows the action's defaults (active: yes, any/inactive:
  auth_admin); outside a login session (the only kind of caller here, as on a
  CI runner or over ssh without logind) an unprivileged caller gets
  InteractiveAuthorizationRequired (exit 3) and nothing is deleted; root is
  allowed; the .policy validates against polkit's DTD;
* the headless rule (data/polkit-1/rules.d/50-locald-admin.rules.example): members of the group
  "locald" are allowed without a session, non-members are not, and polkit
  takes membership from the user database, not from the caller's process;
* polkit outage: polkitd gone -> NotAuthorized (exit 3), nothing deleted;
  polkitd back -> calls work again, same mechanism process;
* activation: the first call starts the staged mechanism (the name had no
  owner) and is answered; dbus-daemon itself passes DBUS_SYSTEM_BUS_ADDRESS
  to the activated process; a <servicehelper> cannot activate from a private
  configuration.

Root only: polkitd must start as root (it drops to the user polkitd), it reads
actions only from /usr/share/polkit-1/actions and rules from
/etc/polkit-1/rules.d, and the unprivileged side needs real other users.
The fixtures install a test copy of the action and of the rule there and
always remove them afterwards (a pre-existing identical action is left alone).
"""

import grp
import json
import os
import pwd
import shutil
import signal
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import dbus
import dbus.lowlevel
import pytest

from locald_admin import interface as i
from support import (IS_ROOT, OTHER_USER, POLKIT_NAME, TEST_USER, Mechanism, PrivateBus, ensure_user, rm_rf,
                     stop_process,
                     wait_for_name, world_tmpdir)

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
ACTION_SRC = DATA / "polkit-1" / "actions" / "org.locald.admin1.policy"
BUS_CONF_DIR = DATA / "dbus-1" / "system.d"

POLKITD = Path("/usr/lib/polkit-1/polkitd")
SYSTEM_CONF = Path("/usr/share/dbus-1/system.conf")
SYSTEM_D = Path("/usr/share/dbus-1/system.d")
ACTIONS_DIR = Path("/usr/share/polkit-1/actions")
ACTION_DEST = ACTIONS_DIR / "org.locald.admin1.policy"
RULES_DIR = Path("/etc/polkit-1/rules.d")
RULE_SRC = ROOT / "data" / "polkit-1" / "rules.d" / "50-locald-admin.rules.example"
RULE_DEST = RULES_DIR / "50-locald-admin-test.rules"
POLKIT_DTD = Path("/usr/share/polkit-1/policyconfig-1.dtd")
LAUNCH_HELPER = Path("/usr/lib/dbus-1.0/dbus-daemon-launch-helper")
GROUP = "locald"

STAGED_EXEC = "/usr/lib/locald-admin/locald-admin-mechanism"
STAGED_ACTIVATION = "usr/share/dbus-1/system-services/org.locald.Admin1.service"

ACCESS_DENIED = "org.freedesktop.DBus.Error.AccessDenied"
PATH_ENV = "/usr/sbin:/usr/bin:/sbin:/bin"

pytestmark = [
    pytest.mark.skipif(not IS_ROOT, reason="real-bus tier: polkitd must be started as root (it drops to the "
                       "polkitd user) and the fixtures install the polkit action and a rule system-wide; "
                       "run the suite as root"),
    pytest.mark.skipif(shutil.which("dbus-daemon") is None, reason="dbus-daemon is not installed"),
    pytest.mark.skipif(not os.access(POLKITD, os.X_OK), reason=f"{POLKITD} is missing (package polkitd)"),
    pytest.mark.skipif(not SYSTEM_CONF.is_file(), reason=f"{SYSTEM_CONF} is missing: no real system-bus "
                       "policy to copy"),
]


# -- the real system-bus policy ------------------------------------------------

def debian_system_policy():
    """Every <policy> of Debian's system.conf, verbatim: default deny for
    owning names and sending method calls; signals, requested replies and
    calls to the bus driver allowed.  Daemon settings (<user>, <fork>,
    <pidfile>, <syslog>, <listen>, <servicehelper>, service and include
    directories) are left out: PrivateBus supplies its own."""
    policies = ET.parse(SYSTEM_CONF).getroot().findall("policy")
    text = "\n".join(ET.tostring(p, encoding="unicode") for p in policies)
    assert '<deny own="*" />' in text and '<deny send_type="method_call" />' in text, text
    # Already part of Debian's default policy; stated again so that the
    # unprivileged test users can connect whatever system.conf says.
    return text + '\n<policy context="default"><allow user="*"/></policy>'


def includedirs():
    """The project's bus policy, and polkit's own (org.freedesktop.PolicyKit1.conf)."""
    return f"<includedir>{BUS_CONF_DIR}</includedir>\n<includedir>{SYSTEM_D}</includedir>"


def real_bus(extra_xml=""):
    return PrivateBus(policy_xml=debian_system_policy(), extra_xml=includedirs() + "\n" + extra_xml)


def bus_log(bus):
    return (bus.dir / "dbus-daemon.log").read_text(errors="replace")


# -- polkitd ------------------------------------------------------------------

class Polkitd:
    """The real polkitd on a private bus.  Started as root, it drops to the
    polkitd user itself; it owns org.freedesktop.PolicyKit1 by the bus policy
    in /usr/share/dbus-1/system.d."""

    def __init__(self, bus):
        self.bus = bus
        self.log_path = bus.dir / "polkitd.log"
        self.proc = None
        self.start()

    def start(self):
        env = {"PATH": PATH_ENV, "LANG": "C.UTF-8", "DBUS_SYSTEM_BUS_ADDRESS": self.bus.address}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([str(POLKITD)], env=env, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        wait_for_name(self.bus.address, POLKIT_NAME, timeout=30, proc=self.proc)

    def stop(self):
        if self.proc is None:
            return
        stop_process(self.proc, 10)
        self.proc = None
        wait_for_no_owner(self.bus.address, POLKIT_NAME)

    def restart(self):
        self.stop()
        self.start()

    def log(self):
        return self.log_path.read_text(errors="replace")


def wait_for_no_owner(address, name, timeout=15.0):
    con = dbus.bus.BusConnection(address)
    try:
        deadline = time.monotonic() + timeout
        while con.name_has_owner(name):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} still has an owner on {address}")
            time.sleep(0.02)
    finally:
        con.close()


# -- calls ------------------------------------------------------------------

def root_call(address, path, interface=i.INTERFACE, member=i.METHOD_CLEANUP, timeout=60.0):
    """Call as the test process (root).  Returns (error_name, sender or message)."""
    con = dbus.bus.BusConnection(address)
    try:
        msg = dbus.lowlevel.MethodCallMessage(i.BUS_NAME, i.OBJECT_PATH, interface, member)
        msg.append(path, signature="s")
        try:
            reply = con.send_message_with_reply_and_block(msg, timeout)
            return None, reply.get_sender()
        except dbus.exceptions.DBusException as e:
            return e.get_dbus_name(), e.get_dbus_message()
    finally:
        con.close()


def bus_driver(address, member, *args):
    con = dbus.bus.BusConnection(address)
    try:
        obj = con.get_object("org.freedesktop.DBus", "/org/freedesktop/DBus")
        return getattr(dbus.Interface(obj, "org.freedesktop.DBus"), member)(*args)
    finally:
        con.close()


# Raw messages sent by the unprivileged user with dbus-next: a list of
# {destination, path, interface (may be null), member, signature, body}.
RAW_CLIENT = r"""
import asyncio, json, sys
from dbus_next import Message
from locald_admin.busio import connect_system_bus

async def main(spec):
    bus = await connect_system_bus()
    out = []
    for m in spec:
        reply = await bus.call(Message(destination=m["destination"], path=m["path"],
                                       interface=m.get("interface"), member=m["member"],
                                       signature=m.get("signature", ""), body=m.get("body", [])))
        out.append({"type": reply.message_type.name, "error": reply.error_name,
                    "body": [b if isinstance(b, (str, int)) else repr(b) for b in reply.body]})
    bus.disconnect()
    print(json.dumps(out))

asyncio.run(main(json.loads(sys.argv[1])))
"""


def raw_as_user(clients, address, *messages):
    cp = clients.python_code(RAW_CLIENT, json.dumps(list(messages)), bus_address=address)
    assert cp.returncode == 0, cp.stderr.decode(errors="replace")
    return json.loads(cp.stdout)


def to_admin(member, interface=i.INTERFACE, signature="", body=()):
    return {"destination": i.BUS_NAME, "path": i.OBJECT_PATH, "interface": interface, "member": member,
            "signature": signature, "body": list(body)}


def as_user(clients, user, argv, address, extra_groups=()):
    """Run ``argv`` as ``user`` (a passwd entry) the way ClientRunner does
    (Debian's python3, its world-readable copy of the code, a clean
    environment), but with the supplementary groups chosen here."""
    env = {"PATH": PATH_ENV, "LANG": "C.UTF-8", "PYTHONPATH": clients.pythonpath,
           "PYTHONDONTWRITEBYTECODE": "1", "DBUS_SYSTEM_BUS_ADDRESS": address}
    return subprocess.run(argv, env=env, cwd="/", capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL, user=user.pw_uid, group=user.pw_gid,
                          extra_groups=list(extra_groups))


def shim_as(clients, user, path, address, extra_groups=()):
    """locald-shim, non-interactive (stdin is not a terminal)."""
    return as_user(clients, user, [clients.python, "-c", "import sys; from locald_admin.client.shim import main; "
                                   "sys.exit(main())", "admin", "cleanup", path], address, extra_groups)


def probe_as(clients, user, path, address, extra_groups=()):
    """request_cleanup through the client library; returns the probe's report."""
    cp = as_user(clients, user, [clients.python, clients.probe, "request", path, "{}"], address, extra_groups)
    assert cp.returncode == 0, cp.stderr
    return json.loads(cp.stdout)


def audit_for(mechanism, path):
    return [ln for ln in mechanism.audit_lines() if f" path={path} " in ln]


# -- fixtures -----------------------------------------------------------------

@pytest.fixture(scope="module")
def action_installed():
    """A test copy of the project's action where polkitd reads actions; always
    removed afterwards unless it was there before (then it is left alone)."""
    if not ACTIONS_DIR.is_dir():
        pytest.skip(f"{ACTIONS_DIR} is missing")
    existed = ACTION_DEST.exists() or ACTION_DEST.is_symlink()
    if existed and ACTION_DEST.read_bytes() != ACTION_SRC.read_bytes():
        pytest.skip(f"{ACTION_DEST} exists and differs from the project's action; not touching it")
    if not existed:
        shutil.copyfile(ACTION_SRC, ACTION_DEST)
        os.chmod(ACTION_DEST, 0o644)
    try:
        yield ACTION_DEST
    finally:
        if not existed:
            ACTION_DEST.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def bus():
    b = real_bus()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def polkitd(bus, action_installed):
    p = Polkitd(bus)
    yield p
    p.stop()


@pytest.fixture
def polkit_running(polkitd):
    if polkitd.proc is None or polkitd.proc.poll() is not None:
        polkitd.start()
    return polkitd


@pytest.fixture(scope="module")
def mechanism(bus):
    m = Mechanism(bus, "--polkit-timeout", "10")
    yield m
    m.stop()


def make_project(owner):
    """<tmp>/proj/.locald owned by ``owner`` (a passwd entry) holding what runc
    leaves: root-owned 0700 directories and a mode 000 file.  Returns
    (top, anchor, secret)."""
    top = world_tmpdir()
    anchor = top / "proj" / ".locald"
    shm = anchor / "svc" / "rootfs" / "run" / "shm"
    shm.mkdir(parents=True)
    subprocess.run(["chown", "-R", f"{owner.pw_uid}:{owner.pw_gid}", str(top / "proj")], check=True)
    for d in (anchor / "svc" / "rootfs", anchor / "svc" / "rootfs" / "run", shm):
        os.chown(d, 0, 0)
        os.chmod(d, 0o700)
    secret = shm / "secret"
    secret.write_text("x")
    os.chmod(secret, 0)
    return top, anchor, secret


@pytest.fixture
def projects():
    made = []

    def factory(owner):
        top, anchor, secret = make_project(owner)
        made.append(top)
        return anchor, secret

    yield factory
    for top in made:
        rm_rf(top)


@pytest.fixture
def user(clients):
    return clients.user


def _shadow_tool(*argv):
    """groupadd/gpasswd/groupdel, retried while another process holds the
    /etc/group lock (other test sessions create users concurrently)."""
    for _ in range(20):
        cp = subprocess.run(list(argv), capture_output=True, text=True)
        if cp.returncode == 0 or "lock" not in (cp.stderr + cp.stdout).lower():
            return cp
        time.sleep(0.25)
    return cp


@pytest.fixture
def group_rule(polkitd, clients):
    """The headless rule installed for the real polkitd, the group "locald"
    (created if missing) with the test user as member; all undone afterwards.
    polkitd is restarted both ways so that it has certainly (re)read the
    rules (it also watches the directory, but on its own schedule)."""
    if not RULES_DIR.is_dir():
        pytest.skip(f"{RULES_DIR} is missing")
    created = False
    try:
        grp.getgrnam(GROUP)
    except KeyError:
        cp = _shadow_tool("groupadd", "--system", GROUP)
        assert cp.returncode == 0, cp.stderr
        created = True
    was_member = TEST_USER in grp.getgrnam(GROUP).gr_mem
    shutil.copyfile(RULE_SRC, RULE_DEST)
    os.chmod(RULE_DEST, 0o644)
    try:
        if not was_member:
            cp = _shadow_tool("gpasswd", "--add", TEST_USER, GROUP)
            assert cp.returncode == 0, cp.stderr
        polkitd.restart()
        yield grp.getgrnam(GROUP).gr_gid
    finally:
        RULE_DEST.unlink(missing_ok=True)
        if not was_member:
            _shadow_tool("gpasswd", "--delete", TEST_USER, GROUP)
        if created:
            _shadow_tool("groupdel", GROUP)
        polkitd.restart()


# -- bus policy ---------------------------------------------------------------

def test_an_unprivileged_user_cannot_own_the_name(bus, clients):
    request_name = {"destination": "org.freedesktop.DBus", "path": "/org/freedesktop/DBus",
                    "interface": "org.freedesktop.DBus", "member": "RequestName", "signature": "su",
                    "body": [i.BUS_NAME, 4]}  # DBUS_NAME_FLAG_DO_NOT_QUEUE
    [r] = raw_as_user(clients, bus.address, request_name)
    assert (r["type"], r["error"]) == ("ERROR", ACCESS_DENIED), r


def test_root_owns_the_name(bus, mechanism):
    assert bus_driver(bus.address, "GetConnectionUnixUser", i.BUS_NAME) == 0
    assert bus_driver(bus.address, "GetConnectionUnixProcessID", i.BUS_NAME) == mechanism.proc.pid


def test_an_unprivileged_user_can_call_cleanup(bus, mechanism, polkit_running, clients, user, projects):
    """The bus lets the call through; the answer is the mechanism's (polkit's
    verdict), not the bus' AccessDenied."""
    anchor, secret = projects(user)
    [r] = raw_as_user(clients, bus.address, to_admin(i.METHOD_CLEANUP, signature="s", body=[str(anchor / "svc")]))
    assert r["type"] == "ERROR" and r["error"] != ACCESS_DENIED, r
    assert r["error"] == i.ERROR_INTERACTIVE_AUTH_REQUIRED, r
    assert len(audit_for(mechanism, anchor / "svc")) == 1  # it reached the mechanism
    assert secret.exists()


def test_other_interfaces_and_no_interface_are_denied_by_the_bus(bus, mechanism, clients, user, projects):
    anchor, secret = projects(user)
    target = str(anchor / "svc")
    before = len(mechanism.audit_lines())
    other, no_iface, ping, introspect = raw_as_user(
        clients, bus.address,
        to_admin(i.METHOD_CLEANUP, interface="org.example.Other", signature="s", body=[target]),
        to_admin(i.METHOD_CLEANUP, interface=None, signature="s", body=[target]),
        to_admin("Ping", interface="org.freedesktop.DBus.Peer"),
        to_admin("Introspect", interface="org.freedesktop.DBus.Introspectable"))
    assert (other["type"], other["error"]) == ("ERROR", ACCESS_DENIED), other
    assert (no_iface["type"], no_iface["error"]) == ("ERROR", ACCESS_DENIED), no_iface
    assert ping["type"] == "METHOD_RETURN", ping
    assert introspect["type"] == "METHOD_RETURN" and 'name="Cleanup"' in introspect["body"][0], introspect
    # root is held to the same policy: Debian's default denies method calls
    # to everybody; only the project's allow rules open them.
    err, _ = root_call(bus.address, target, interface="org.example.Other")
    assert err == ACCESS_DENIED
    assert len(mechanism.audit_lines()) == before  # none of them reached the mechanism
    assert secret.exists()


# -- polkit -----------------------------------------------------------------

def test_the_action_validates_against_polkits_dtd():
    if shutil.which("xmllint") is None:
        pytest.skip("xmllint is not installed (package libxml2-utils)")
    if not POLKIT_DTD.is_file():
        pytest.skip(f"{POLKIT_DTD} is missing")
    cp = subprocess.run(["xmllint", "--noout", "--nonet", "--dtdvalid", str(POLKIT_DTD), str(ACTION_SRC)],
                        capture_output=True, text=True)
    assert cp.returncode == 0, cp.stderr


def test_pkaction_shows_the_actions_defaults(bus, polkit_running):
    if shutil.which("pkaction") is None:
        pytest.skip("pkaction is not installed (package polkitd)")
    cp = subprocess.run(["pkaction", "--verbose", "--action-id", i.POLKIT_ACTION], capture_output=True, text=True,
                        timeout=30, env={"PATH": PATH_ENV, "LANG": "C.UTF-8",
                                         "DBUS_SYSTEM_BUS_ADDRESS": bus.address})
    assert cp.returncode == 0, cp.stderr
    fields = {}
    for line in cp.stdout.splitlines():
        key, sep, value = line.strip().partition(":")
        if sep:
            fields[key] = value.strip()
    assert fields["implicit active"] == "yes", cp.stdout
    assert fields["implicit any"] == "auth_admin", cp.stdout
    assert fields["implicit inactive"] == "auth_admin", cp.stdout
    assert fields["vendor"] == "locald"


def test_an_unprivileged_caller_outside_a_session_is_refused(bus, mechanism, polkit_running, clients, user,
                                                               projects):
    """No login session (no logind here, as on a CI runner): polkit applies
    allow_any = auth_admin and, the call not allowing interaction, answers with
    a challenge, which the mechanism passes on as
    InteractiveAuthorizationRequired (exit 3)."""
    anchor, secret = projects(user)
    target = anchor / "svc"
    cp = shim_as(clients, user, str(target), bus.address)
    assert cp.returncode == i.EXIT_NOT_AUTHORIZED, cp.stderr
    assert "authentication is required" in cp.stderr
    r = probe_as(clients, user, str(target), bus.address)
    assert r["type"] == "InteractiveAuthorizationRequiredError", r
    results = [ln.split(" result=")[1].split()[0] for ln in audit_for(mechanism, target)]
    assert results == [i.ERROR_INTERACTIVE_AUTH_REQUIRED] * 2
    assert secret.exists()


def test_an_interactive_call_without_an_agent_is_not_authorized(bus, mechanism, polkit_running, clients, user,
                                                                 projects):
    """With interaction allowed but no agent polkit can reach (the shim's
    pkttyagent has no terminal), polkit cannot ask: NotAuthorized, exit 3."""
    anchor, secret = projects(user)
    cp = as_user(clients, user, [clients.python, "-c", "import sys; from locald_admin.client.shim import main; "
                                 "sys.exit(main())", "admin", "cleanup", "--interactive", "--timeout", "60",
                                 str(anchor / "svc")], bus.address)
    assert cp.returncode == i.EXIT_NOT_AUTHORIZED, cp.stderr
    [line] = audit_for(mechanism, anchor / "svc")
    assert f"result={i.ERROR_NOT_AUTHORIZED}" in line
    assert secret.exists()


def test_root_is_allowed(bus, mechanism, polkit_running, projects):
    anchor, secret = projects(pwd.getpwuid(0))
    err, sender = root_call(bus.address, str(anchor / "svc"))
    assert err is None, sender
    assert not (anchor / "svc").exists() and anchor.is_dir()
    [line] = audit_for(mechanism, anchor / "svc")
    assert " uid=0 " in line and " result=ok " in line


# -- the headless rule ----------------------------------------------------------

def test_group_member_outside_a_session_is_allowed(bus, mechanism, group_rule, clients, user, projects):
    anchor, secret = projects(user)
    cp = shim_as(clients, user, str(anchor / "svc"), bus.address, extra_groups=[group_rule])
    assert cp.returncode == 0, cp.stderr
    assert not (anchor / "svc").exists() and anchor.is_dir()


def test_non_member_is_refused_even_with_the_gid_in_its_process(bus, mechanism, group_rule, clients, projects):
    """polkit asks the user database (getgrouplist) whether the subject is in
    the group, not the caller's credentials: a process carrying the gid as a
    supplementary group is still no member."""
    other = ensure_user(OTHER_USER)
    assert OTHER_USER not in grp.getgrnam(GROUP).gr_mem
    for extra in ([], [group_rule]):
        anchor, secret = projects(other)
        cp = shim_as(clients, other, str(anchor / "svc"), bus.address, extra_groups=extra)
        assert cp.returncode == i.EXIT_NOT_AUTHORIZED, (extra, cp.stderr)
        assert "authentication is required" in cp.stderr
        assert secret.exists()


def test_membership_counts_without_the_gid_in_the_callers_process(bus, mechanism, group_rule, clients, user,
                                                                   projects):
    """...and a member whose process lacks the supplementary group (as right
    after usermod -aG, before logging in again) is allowed."""
    anchor, secret = projects(user)
    cp = shim_as(clients, user, str(anchor / "svc"), bus.address, extra_groups=[])
    assert cp.returncode == 0, cp.stderr
    assert not (anchor / "svc").exists()


# -- polkit outage --------------------------------------------------------------

def test_polkit_outage_denies_and_recovery_needs_no_mechanism_restart(bus, mechanism, polkitd, group_rule,
                                                                        clients, user, projects):
    pid = mechanism.proc.pid
    polkitd.stop()
    try:
        anchor, secret = projects(user)
        cp = shim_as(clients, user, str(anchor / "svc"), bus.address, extra_groups=[group_rule])
        assert cp.returncode == i.EXIT_NOT_AUTHORIZED, cp.stderr
        assert "polkit is unavailable" in cp.stderr and "ServiceUnknown" in cp.stderr, cp.stderr
        r = probe_as(clients, user, str(anchor / "svc"), bus.address)
        assert r["type"] == "NotAuthorizedError", r
        assert secret.exists()
        [first, second] = audit_for(mechanism, anchor / "svc")
        assert f"result={i.ERROR_NOT_AUTHORIZED}" in first and f"result={i.ERROR_NOT_AUTHORIZED}" in second
    finally:
        polkitd.start()
    cp = shim_as(clients, user, str(anchor / "svc"), bus.address, extra_groups=[group_rule])
    assert cp.returncode == 0, cp.stderr
    assert not (anchor / "svc").exists()
    assert mechanism.proc.poll() is None and mechanism.proc.pid == pid
    assert bus_driver(bus.address, "GetConnectionUnixProcessID", i.BUS_NAME) == pid


# -- bus activation -------------------------------------------------------------

def staged_activation_dir(staged):
    """A service directory holding the staged activation file with only its
    Exec= program changed to the staged launcher (the real one would be
    /usr/lib/locald-admin/..., which exists only inside the stage).  The file
    name stays org.locald.Admin1.service: a system bus requires name.service."""
    src = staged / STAGED_ACTIVATION
    launcher = staged / STAGED_EXEC.lstrip("/")
    out = []
    for line in src.read_text().splitlines():
        if line.startswith("Exec="):
            argv = line[len("Exec="):].split()
            assert argv[0] == STAGED_EXEC, line
            line = "Exec=" + " ".join([str(launcher), *argv[1:]])
        out.append(line)
    d = world_tmpdir("locald-admin-services-")
    (d / "org.locald.Admin1.service").write_text("\n".join(out) + "\n")
    return d, launcher


@pytest.fixture(scope="module")
def activation(staged, action_installed):
    """A real-policy bus with the staged activation file in a <servicedir>
    and no <servicehelper>: dbus-daemon then forks and execs Exec= itself
    (as root, the user it runs as; User= only matters to the helper).
    A polkitd of its own, so that unprivileged callers get polkit's answer."""
    services, launcher = staged_activation_dir(staged)
    b = real_bus(f"<servicedir>{services}</servicedir>")
    p = None
    try:
        p = Polkitd(b)
        yield b, launcher
        _stop_activated(b)
    finally:
        if p is not None:
            p.stop()
        b.stop()
        rm_rf(services)


def _stop_activated(bus, timeout=20.0):
    """SIGTERM the activated mechanism (it releases the name, drains, exits 0)."""
    con = dbus.bus.BusConnection(bus.address)
    try:
        if not con.name_has_owner(i.BUS_NAME):
            return
        pid = bus_driver(bus.address, "GetConnectionUnixProcessID", i.BUS_NAME)
    finally:
        con.close()
    os.kill(pid, signal.SIGTERM)
    wait_for_no_owner(bus.address, i.BUS_NAME, timeout)
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z"):
                break
        except (FileNotFoundError, IndexError):
            break
        time.sleep(0.05)


def _proc_strings(pid, name):
    return Path(f"/proc/{pid}/{name}").read_bytes().decode(errors="replace").split("\0")


def test_first_call_activates_the_staged_mechanism(activation, projects):
    b, launcher = activation
    _stop_activated(b)
    con = b.connect()
    try:
        assert i.BUS_NAME in con.list_activatable_names()
        assert not con.name_has_owner(i.BUS_NAME)
    finally:
        con.close()
    anchor, secret = projects(pwd.getpwuid(0))
    err, sender = root_call(b.address, str(anchor / "svc"))
    assert err is None, (err, sender, bus_log(b))
    assert not (anchor / "svc").exists() and anchor.is_dir()
    assert "Successfully activated service 'org.locald.Admin1'" in bus_log(b)
    pid = bus_driver(b.address, "GetConnectionUnixProcessID", i.BUS_NAME)
    assert bus_driver(b.address, "GetConnectionUnixUser", i.BUS_NAME) == 0
    assert bus_driver(b.address, "GetNameOwner", i.BUS_NAME) == sender
    cmdline = [a for a in _proc_strings(pid, "cmdline") if a]
    assert str(launcher) in cmdline and cmdline[-2:] == ["--idle-timeout", "30"], cmdline
    # dbus-daemon hands the activated process the bus address under both
    # names: DBUS_STARTER_ADDRESS, and (type system) DBUS_SYSTEM_BUS_ADDRESS,
    # which is what the mechanism reads.  No env wrapper in Exec= is needed.
    environ = dict(kv.partition("=")[::2] for kv in _proc_strings(pid, "environ") if kv)
    for key in ("DBUS_SYSTEM_BUS_ADDRESS", "DBUS_STARTER_ADDRESS"):
        assert environ.get(key, "").startswith(b.address + ","), (key, environ.get(key))
    assert environ.get("DBUS_STARTER_BUS_TYPE") == "system"


def test_an_unprivileged_first_call_activates_it_too(activation, clients, user, projects):
    b, _ = activation
    _stop_activated(b)
    anchor, secret = projects(user)
    r = probe_as(clients, user, str(anchor / "svc"), b.address)
    # Answered by the freshly activated mechanism after asking polkit; not the
    # bus' ServiceUnknown / AccessDenied, nor the client's "no service".
    assert r["type"] == "InteractiveAuthorizationRequiredError", (r, bus_log(b))
    assert secret.exists()
    assert bus_driver(b.address, "GetConnectionUnixUser", i.BUS_NAME) == 0


def test_a_servicehelper_cannot_activate_from_a_private_config(staged, action_installed, projects):
    """What the real system bus does (<servicehelper>) does not work for a
    private bus: the setuid launch helper ignores the private config and
    looks the name up in the real system's service directories only."""
    if not os.access(LAUNCH_HELPER, os.F_OK):
        pytest.skip(f"{LAUNCH_HELPER} is missing")
    try:
        pwd.getpwnam("messagebus")
    except KeyError:
        pytest.skip("no messagebus user")
    if Path("/usr/share/dbus-1/system-services/org.locald.Admin1.service").exists():
        pytest.skip("org.locald.Admin1 is installed system-wide; the helper would find it")
    services, _ = staged_activation_dir(staged)
    # The helper only runs for the bus user (else "permission of the setuid
    # helper is not correct"), hence <user>messagebus</user>.
    b = real_bus(f"<user>messagebus</user>\n<servicehelper>{LAUNCH_HELPER}</servicehelper>\n"
                 f"<servicedir>{services}</servicedir>")
    try:
        con = b.connect()
        try:
            assert i.BUS_NAME in con.list_activatable_names()
        finally:
            con.close()
        anchor, secret = projects(pwd.getpwuid(0))
        err, message = root_call(b.address, str(anchor / "svc"), timeout=40)
        assert err == "org.freedesktop.DBus.Error.Spawn.ServiceNotFound", (err, message)
        assert "(using servicehelper)" in bus_log(b)
        assert secret.exists()
    finally:
        b.stop()
        rm_rf(services)
