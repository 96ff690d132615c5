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

import functools
import grp
import json
import os
import pwd
import shutil
import signal
import subprocess
import time
from pathlib import Path

import dbus
import pytest

from locald_admin import interface as i
from harness import IS_ROOT, realsystem
from harness.buses import bus_driver, wait_for_no_owner
from harness.calls import cleanup
from harness.mechanism import Mechanism
from harness.realsystem import (ACTION_SRC, GROUP, POLKITD, RULES_DIR, SYSTEM_CONF, GroupMembership, Polkitd,
                                installed_rule, real_bus)
from harness.trees import make_anchor, make_runc_leftovers, rm_rf, world_tmpdir
from harness.users import OTHER_USER, PATH_ENV, SHIM, TEST_USER, ensure_user

RULE_NAME = "50-locald-admin-test.rules"
POLKIT_DTD = Path("/usr/share/polkit-1/policyconfig-1.dtd")
LAUNCH_HELPER = Path("/usr/lib/dbus-1.0/dbus-daemon-launch-helper")

STAGED_EXEC = "/usr/lib/locald-admin/locald-admin-mechanism"
STAGED_ACTIVATION = "usr/share/dbus-1/system-services/org.locald.Admin1.service"

ACCESS_DENIED = "org.freedesktop.DBus.Error.AccessDenied"

pytestmark = [
    pytest.mark.skipif(not IS_ROOT, reason="real-bus tier: polkitd must be started as root (it drops to the "
                       "polkitd user) and the fixtures install the polkit action and a rule system-wide; "
                       "run the suite as root"),
    pytest.mark.skipif(shutil.which("dbus-daemon") is None, reason="dbus-daemon is not installed"),
    pytest.mark.skipif(not os.access(POLKITD, os.X_OK), reason=f"{POLKITD} is missing (package polkitd)"),
    pytest.mark.skipif(not SYSTEM_CONF.is_file(), reason=f"{SYSTEM_CONF} is missing: no real system-bus "
                       "policy to copy"),
]


# -- calls ------------------------------------------------------------------

root_call = functools.partial(cleanup, timeout=60.0)  # as the test process (root)


# Raw messages sent by the unprivileged user through busio
# (harness/programs/raw_client.py): a list of {destination, path, interface
# (may be null), member, signature, body}.
def raw_as_user(clients, address, *messages):
    cp = clients.run_program("raw_client.py", json.dumps(list(messages)), bus_address=address)
    assert cp.returncode == 0, cp.stderr.decode(errors="replace")
    return json.loads(cp.stdout)


def to_admin(member, interface=i.INTERFACE, signature="", body=()):
    return {"destination": i.BUS_NAME, "path": i.OBJECT_PATH, "interface": interface, "member": member,
            "signature": signature, "body": list(body)}


def as_user(clients, user, args, address, extra_groups=()):
    """Run ``python args...`` as ``user`` (a passwd entry) the way
    ClientRunner does (Debian's python3, its world-readable copy of the code,
    a clean environment), but with the supplementary groups chosen here."""
    return clients.run(args, address, user=user, extra_groups=extra_groups, timeout=120, text=True)


def shim_as(clients, user, path, address, extra_groups=()):
    """locald-shim, non-interactive (stdin is not a terminal)."""
    return as_user(clients, user, ["-c", SHIM, "admin", "cleanup", path], address, extra_groups)


def probe_as(clients, user, path, address, extra_groups=()):
    """request_cleanup through the client library; returns the probe's report."""
    cp = as_user(clients, user, [clients.probe, "request", path, "{}"], address, extra_groups)
    assert cp.returncode == 0, cp.stderr
    return json.loads(cp.stdout)


# -- fixtures -----------------------------------------------------------------

@pytest.fixture(scope="module")
def action_installed():
    """A test copy of the project's action where polkitd reads actions; always
    removed afterwards unless it was there before (then it is left alone)."""
    why = realsystem.action_conflict()
    if why:
        pytest.skip(why)
    with realsystem.installed_action() as dest:
        yield dest


@pytest.fixture(scope="module")
def bus():
    with real_bus() as b:
        yield b


@pytest.fixture(scope="module")
def polkitd(bus, action_installed):
    with Polkitd(bus) as p:
        yield p


@pytest.fixture
def polkit_running(polkitd):
    if polkitd.proc is None or polkitd.proc.poll() is not None:
        polkitd.start()
    return polkitd


@pytest.fixture(scope="module")
def mechanism(bus):
    with Mechanism(bus, "--polkit-timeout", "10") as m:
        yield m


def make_project(owner):
    """<tmp>/proj/.locald owned by ``owner`` (a passwd entry) holding what runc
    leaves: root-owned 0700 directories and a mode 000 file.  Returns
    (top, anchor, secret)."""
    top = world_tmpdir()
    anchor = make_anchor(top, owner.pw_uid, owner.pw_gid)
    secret = make_runc_leftovers(anchor)
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


@pytest.fixture
def group_rule(polkitd, clients):
    """The headless rule installed for the real polkitd, the group "locald"
    (created if missing) with the test user as member; all undone afterwards.
    polkitd is restarted both ways so that it has certainly (re)read the
    rules (it also watches the directory, but on its own schedule)."""
    if not RULES_DIR.is_dir():
        pytest.skip(f"{RULES_DIR} is missing")
    membership = GroupMembership(TEST_USER, GROUP)
    try:
        gid = membership.ensure()
        with installed_rule(RULE_NAME):
            polkitd.restart()
            yield gid
    finally:
        membership.restore()
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
    assert len(mechanism.audit_lines(path=anchor / "svc")) == 1  # it reached the mechanism
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
    assert fields["icon"] == "edit-delete"
    assert fields["description"].startswith("Remove root-owned leftovers"), cp.stdout  # read through its domain


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
    results = [ln.split(" result=")[1].split()[0] for ln in mechanism.audit_lines(path=target)]
    assert results == [i.ERROR_INTERACTIVE_AUTH_REQUIRED] * 2
    assert secret.exists()


def test_an_interactive_call_without_an_agent_is_not_authorized(bus, mechanism, polkit_running, clients, user,
                                                                 projects):
    """With interaction allowed but no agent polkit can reach (the shim's
    pkttyagent has no terminal), polkit cannot ask: NotAuthorized, exit 3."""
    anchor, secret = projects(user)
    cp = as_user(clients, user, ["-c", SHIM, "admin", "cleanup", "--interactive", "--timeout", "60",
                                 str(anchor / "svc")], bus.address)
    assert cp.returncode == i.EXIT_NOT_AUTHORIZED, cp.stderr
    [line] = mechanism.audit_lines(path=anchor / "svc")
    assert f"result={i.ERROR_NOT_AUTHORIZED}" in line
    assert secret.exists()


def test_root_is_allowed(bus, mechanism, polkit_running, projects):
    anchor, secret = projects(pwd.getpwuid(0))
    err, sender = root_call(bus.address, str(anchor / "svc"))
    assert err is None, sender
    assert not (anchor / "svc").exists() and anchor.is_dir()
    [line] = mechanism.audit_lines(path=anchor / "svc")
    assert " uid=0 " in line and " result=ok " in line


# -- the headless rule ----------------------------------------------------------

def test_group_member_outside_a_session_is_allowed(bus, mechanism, group_rule, clients, user, projects):
    anchor, secret = projects(user)
    cp = shim_as(clients, user, str(anchor / "svc"), bus.address, extra_groups=[group_rule])
    assert cp.returncode == 0, cp.stderr
    assert not (anchor / "svc").exists() and anchor.is_dir()


def test_cleanup_with_options_and_its_dry_run_with_the_real_polkitd(bus, mechanism, group_rule, clients, user,
                                                                   projects):
    """CleanupWithOptions through Debian's bus policy and the real polkitd:
    the dry run removes nothing and counts what the cleanup then removes;
    a caller polkit refuses gets InteractiveAuthorizationRequired for a dry
    run as for a cleanup."""
    anchor, secret = projects(user)
    target = str(anchor / "svc")
    cp = as_user(clients, user, ["-c", SHIM, "admin", "cleanup", "--no-interactive", "--dry-run", "--json", target],
                 bus.address, extra_groups=[group_rule])
    assert cp.returncode == 0, cp.stderr
    dry = json.loads(cp.stdout)
    assert dry["would-remove"] > 0 and dry["refused"] == [] and secret.exists()
    cp = as_user(clients, user, ["-c", SHIM, "admin", "cleanup", "--no-interactive", "--json", target],
                 bus.address, extra_groups=[group_rule])
    assert cp.returncode == 0, cp.stderr
    assert json.loads(cp.stdout)["removed"] == dry["would-remove"] and not secret.exists()
    other = ensure_user(OTHER_USER)
    anchor, secret = projects(other)
    cp = as_user(clients, other, ["-c", SHIM, "admin", "cleanup", "--no-interactive", "--dry-run", str(anchor / "svc")],
                 bus.address)
    assert cp.returncode == i.EXIT_NOT_AUTHORIZED and secret.exists(), cp.stderr


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
        [first, second] = mechanism.audit_lines(path=anchor / "svc")
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
    try:
        with real_bus(f"<servicedir>{services}</servicedir>") as b, Polkitd(b):
            yield b, launcher
            _stop_activated(b)
    finally:
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
    r = root_call(b.address, str(anchor / "svc"))
    err, sender = r.error, r.sender
    assert err is None, (err, r.message, b.log())
    assert not (anchor / "svc").exists() and anchor.is_dir()
    assert "Successfully activated service 'org.locald.Admin1'" in b.log()
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
    assert r["type"] == "InteractiveAuthorizationRequiredError", (r, b.log())
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
        assert "(using servicehelper)" in b.log()
        assert secret.exists()
    finally:
        b.stop()
        rm_rf(services)
