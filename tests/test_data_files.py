"""The installed data files: polkit action, bus policy, activation file, unit.

They are the security boundary around the mechanism as much as the code is,
so their exact content is pinned here.  Tests that need an external tool
(xmllint, dbus-daemon, systemd-analyze) skip with a reason when it is missing.
"""

import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from locald_admin import interface as i

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
POLICY = DATA / "polkit-1" / "actions" / "org.locald.admin1.policy"
BUS_CONF = DATA / "dbus-1" / "system.d" / "org.locald.Admin1.conf"
ACTIVATION = DATA / "dbus-1" / "system-services" / "org.locald.Admin1.service"
UNIT = DATA / "systemd" / "locald-admin.service"

UNIT_NAME = "locald-admin.service"
IDLE_ARG = "--idle-timeout 30"
MAX_EXPOSURE = 2.0

# polkitd ships the DTD; older layouts and the -dev package are fallbacks.
POLKIT_DTDS = [
    Path("/usr/share/polkit-1/policyconfig-1.dtd"),
    Path("/usr/share/polkit-1/policyconfig.dtd"),
]


def _tool(name):
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed")
    return path


def _clean_env():
    env = dict(os.environ)
    env.update(SYSTEMD_COLORS="0", NO_COLOR="1", SYSTEMD_PAGER="", SYSTEMD_LOG_COLOR="0")
    return env


# --------------------------------------------------------------------------
# polkit action
# --------------------------------------------------------------------------

def test_policy_validates_against_polkit_dtd():
    xmllint = _tool("xmllint")
    dtd = next((p for p in POLKIT_DTDS if p.is_file()), None)
    if dtd is None:
        pytest.skip("polkit's policyconfig DTD is not installed (package polkitd)")
    r = subprocess.run([xmllint, "--noout", "--nonet", "--dtdvalid", str(dtd), str(POLICY)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_policy_action_and_defaults():
    root = ET.parse(POLICY).getroot()
    assert root.tag == "policyconfig"
    assert root.findtext("vendor") == "locald"
    assert root.findtext("icon_name") == "edit-delete"  # a standard freedesktop icon name
    actions = root.findall("action")
    assert [a.get("id") for a in actions] == [i.POLKIT_ACTION]
    action = actions[0]
    assert action.findtext("description", "").strip()
    message = action.findtext("message", "")
    assert "Authentication is required" in message and ".locald" in message
    # Translatable: every text names the package's gettext domain.
    assert [e.get("gettext-domain") for e in action if e.tag in ("description", "message")] == ["locald-admin"] * 2
    defaults = action.find("defaults")
    assert {child.tag: child.text for child in defaults} == {
        "allow_any": "auth_admin",
        "allow_inactive": "auth_admin",
        "allow_active": "yes",
    }
    # No annotation may widen the action (imply, exec.path, ...).
    assert action.findall("annotate") == []


# --------------------------------------------------------------------------
# D-Bus system bus policy
# --------------------------------------------------------------------------

ALLOWED_SEND_INTERFACES = {
    i.INTERFACE,
    "org.freedesktop.DBus.Introspectable",
    "org.freedesktop.DBus.Properties",
    "org.freedesktop.DBus.Peer",
}


def _rules(policy):
    return [(rule.tag, dict(rule.attrib)) for rule in policy]


def test_bus_conf_exact_rule_set():
    root = ET.parse(BUS_CONF).getroot()
    assert root.tag == "busconfig"
    policies = root.findall("policy")
    assert [child.tag for child in root] == ["policy"] * len(policies), "only <policy> elements"
    by_key = {tuple(sorted(p.attrib.items())): p for p in policies}
    assert set(by_key) == {(("user", "root"),), (("context", "default"),)}

    # Only root may own the name.
    assert _rules(by_key[(("user", "root"),)]) == [("allow", {"own": i.BUS_NAME})]

    # Anyone may send to it, on exactly these interfaces, and nothing else.
    default_rules = _rules(by_key[(("context", "default"),)])
    sends = []
    for tag, attrs in default_rules:
        assert tag == "allow", (tag, attrs)
        assert set(attrs) == {"send_destination", "send_interface"}, attrs
        assert attrs["send_destination"] == i.BUS_NAME
        sends.append(attrs["send_interface"])
    assert sorted(sends) == sorted(ALLOWED_SEND_INTERFACES)
    assert len(sends) == len(set(sends))


def test_bus_conf_has_busconfig_doctype():
    text = BUS_CONF.read_text()
    assert '<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"' in text


def _private_bus_config(tmp_path, extra_default_rules=""):
    tmp_path.chmod(0o755)
    conf_dir = tmp_path / "system.d"
    conf_dir.mkdir()
    shutil.copy(BUS_CONF, conf_dir / BUS_CONF.name)
    config = tmp_path / "bus.conf"
    # Mirrors the defaults of the real system.conf (deny own and method
    # calls unless allowed), then includes the file under test.
    config.write_text(f"""<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={tmp_path}/bus.sock</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    {extra_default_rules}
  </policy>
  <includedir>{conf_dir}</includedir>
</busconfig>
""")
    return config


@pytest.fixture
def private_bus(tmp_path):
    daemon = _tool("dbus-daemon")
    config = _private_bus_config(tmp_path)
    proc = subprocess.Popen([daemon, "--config-file", str(config), "--print-address", "--nofork"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        address = proc.stdout.readline().strip()
        if not address:
            proc.wait(timeout=10)
            pytest.fail(f"dbus-daemon did not start: {proc.stderr.read()}")
        yield address
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_bus_conf_loads_in_dbus_daemon(private_bus):
    assert private_bus.startswith("unix:path=")


def _run_on_bus(address, scenario):
    """``scenario(server, client)`` with two busio connections to ``address``."""
    import asyncio

    from locald_admin.busio import Connection

    async def run():
        server = await Connection.open(address)
        client = await Connection.open(address)
        try:
            await scenario(server, client)
        finally:
            server.close()
            client.close()

    asyncio.run(asyncio.wait_for(run(), 30))


def test_bus_conf_own_rule(private_bus):
    """root may own the name; anybody else is refused by the bus."""
    from locald_admin.busio import BusError

    async def scenario(server, client):
        if os.geteuid() == 0:
            await server.own_name(i.BUS_NAME)
        else:
            with pytest.raises(BusError, match="org.freedesktop.DBus.Error.AccessDenied"):
                await server.own_name(i.BUS_NAME)

    _run_on_bus(private_bus, scenario)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root may own the name the calls go to")
def test_bus_conf_send_rules(private_bus):
    """Calls on the four allowed interfaces pass; any other is refused (by
    the bus: a call that reached the server would be UnknownMethod)."""
    import asyncio

    from locald_admin import messages as m

    async def call(bus, interface, member, signature="", body=()):
        return await bus.call(m.Call(i.BUS_NAME, i.OBJECT_PATH, interface, member, signature, tuple(body)))

    async def scenario(server, client):
        tasks = set()

        def dispatch(incoming):  # Cleanup answers with its path
            if incoming.member != i.METHOD_CLEANUP:
                return False
            task = asyncio.ensure_future(server.reply(incoming, "s", incoming.body))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            return True

        server.serve(dispatch)
        await server.own_name(i.BUS_NAME)

        reply = await call(client, i.INTERFACE, i.METHOD_CLEANUP, "s", ["/x"])
        assert reply.error_name is None and reply.body == ("/x",)
        for interface, member, sig, body in [
                ("org.freedesktop.DBus.Peer", "Ping", "", []),
                ("org.freedesktop.DBus.Introspectable", "Introspect", "", []),
                ("org.freedesktop.DBus.Properties", "GetAll", "s", [i.INTERFACE])]:
            reply = await call(client, interface, member, sig, body)
            assert reply.error_name is None, (interface, reply.body)

        reply = await call(client, "org.example.Other", "Poke")
        assert reply.error_name == "org.freedesktop.DBus.Error.AccessDenied"

    _run_on_bus(private_bus, scenario)


# --------------------------------------------------------------------------
# D-Bus activation file and systemd unit
# --------------------------------------------------------------------------

def _ini(path):
    """[(section, key, value)] in file order, duplicates kept."""
    entries, section = [], None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not a key=value line: {raw!r}"
        entries.append((section, key.strip(), value.strip()))
    return entries


def _only(entries, section, key):
    values = [v for s, k, v in entries if s == section and k == key]
    assert len(values) == 1, f"[{section}] {key}= appears {len(values)} times"
    return values[0]


def test_activation_file():
    entries = _ini(ACTIVATION)
    assert {s for s, _, _ in entries} == {"D-BUS Service"}
    assert _only(entries, "D-BUS Service", "Name") == i.BUS_NAME
    assert _only(entries, "D-BUS Service", "User") == "root"
    assert _only(entries, "D-BUS Service", "SystemdService") == UNIT_NAME
    exec_line = _only(entries, "D-BUS Service", "Exec")
    assert os.path.basename(exec_line.split()[0]) == "locald-admin-mechanism"
    assert IDLE_ARG in exec_line


def test_unit_basics():
    entries = _ini(UNIT)
    assert _only(entries, "Service", "Type") == "dbus"
    assert _only(entries, "Service", "BusName") == i.BUS_NAME
    exec_start = _only(entries, "Service", "ExecStart")
    assert IDLE_ARG in exec_start
    # Bus activation (no systemd) and the unit must start the same thing.
    assert exec_start == _only(_ini(ACTIVATION), "D-BUS Service", "Exec")
    # D-Bus activated only, like systemd-hostnamed.
    assert "Install" not in {s for s, _, _ in entries}


# Settings that would give the service a different /tmp, /var/tmp, /home or
# /root than its caller has (DynamicUser= implies a private /tmp and a
# read-only /home; TemporaryFileSystem=/Root*= replace parts of the tree).
FORBIDDEN_UNIT_SETTINGS = ["PrivateTmp", "ProtectHome", "DynamicUser",
                           "TemporaryFileSystem", "RootDirectory", "RootImage"]


@pytest.mark.parametrize("setting", FORBIDDEN_UNIT_SETTINGS)
def test_unit_keeps_callers_view_of_tmp_and_home(setting):
    keys = {k for _, k, _ in _ini(UNIT)}
    assert setting not in keys, f"{setting}= must not be set: the mechanism must see the caller's paths"
    # Also catch odd spellings on non-comment lines (e.g. "PrivateTmp =yes").
    for line in UNIT.read_text().splitlines():
        if not line.lstrip().startswith(("#", ";")):
            assert setting not in line, line


def test_default_roots_are_exactly_what_the_unit_makes_writable():
    """Finding 5: a default root the sandbox keeps read-only fails every
    deletion below it with EROFS.  /dev/shm is writable under PrivateDevices=."""
    from locald_admin.mechanism import config as cfgmod
    rw = [p.lstrip("-") for p in _only(_ini(UNIT), "Service", "ReadWritePaths").split()]
    assert tuple(rw) + ("/dev/shm",) == cfgmod.DEFAULT_ALLOW


def test_unit_stops_before_the_bus():
    """Units stop in the reverse order of After=: with it, the bus outlives
    the mechanism at shutdown (tests/test_stopping.py has what happens
    without it)."""
    assert "dbus.service" in _only(_ini(UNIT), "Unit", "After").split()


def test_unit_lets_openat2_through_and_forbids_mode_changes():
    """RestrictSUIDSGID= makes systemd block openat2 (ENOSYS): seccomp cannot
    read its flags.  The unit forbids chmod instead."""
    entries = _ini(UNIT)
    assert not [k for _, k, _ in entries if k == "RestrictSUIDSGID"]
    denied = [v[1:].split() for _, k, v in entries if k == "SystemCallFilter" and v.startswith("~")]
    assert any({"chmod", "fchmod", "fchmodat"} <= set(d) for d in denied), denied


def test_unit_capability_bounding_set_is_exact():
    entries = _ini(UNIT)
    caps = _only(entries, "Service", "CapabilityBoundingSet").split()
    assert sorted(caps) == ["CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER"]
    assert not [k for _, k, _ in entries if k == "AmbientCapabilities"]


def test_unit_network_and_filesystem_lockdown():
    entries = _ini(UNIT)
    assert _only(entries, "Service", "ProtectSystem") == "strict"
    assert _only(entries, "Service", "PrivateNetwork") == "yes"
    assert _only(entries, "Service", "RestrictAddressFamilies") == "AF_UNIX"
    assert _only(entries, "Service", "NoNewPrivileges") == "yes"
    rw = _only(entries, "Service", "ReadWritePaths").split()
    assert "-/home" in rw and "-/tmp" in rw and "-/var/tmp" in rw
    assert all(p.startswith("-/") for p in rw), "missing locations must not fail the start"


def test_unit_security_exposure():
    analyze = _tool("systemd-analyze")
    r = subprocess.run([analyze, "security", "--offline=true", "--no-pager", str(UNIT)],
                       capture_output=True, text=True, env=_clean_env())
    out = r.stdout + r.stderr
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", out)
    if m is None and "offline" in out and r.returncode != 0:
        pytest.skip(f"systemd-analyze has no --offline: {out.strip()[:200]}")
    assert m, out
    assert float(m.group(1)) <= MAX_EXPOSURE, out


def test_unit_verifies(tmp_path):
    """systemd-analyze verify, with ExecStart= pointed at an existing binary
    (the mechanism is not installed where the tests run) and the man pages
    laid out as `make install` does (verify opens every Documentation=
    page: each must be one of ours)."""
    analyze = _tool("systemd-analyze")
    true = shutil.which("true") or "/usr/bin/true"
    text = UNIT.read_text()
    text, n = re.subn(r"^ExecStart=\S+", f"ExecStart={true}", text, flags=re.M)
    assert n == 1
    unit = tmp_path / UNIT_NAME
    unit.write_text(text)
    for page in (DATA / "man").glob("*.[158]"):
        section = tmp_path / "man" / f"man{page.suffix[1:]}"
        section.mkdir(parents=True, exist_ok=True)
        shutil.copy(page, section)
    r = subprocess.run([analyze, "verify", "--no-pager", str(unit)],
                       capture_output=True, text=True, env=dict(_clean_env(), MANPATH=str(tmp_path / "man")))
    assert r.returncode == 0, r.stdout + r.stderr
