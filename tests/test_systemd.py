"""The installed product under a real systemd (issue 9): Debian 12 booted
with systemd-nspawn (harness/machine.py), once with dbus-daemon as the
system bus and once with dbus-broker, the product staged in with
``make install DESTDIR=<image> PREFIX=/usr``, met as a distribution user
meets it: bus activation through ``SystemdService=``, the hardened unit
really running, the real polkitd with the shipped headless rule, deletions
landing on the machine's file system (checked from outside the service),
``openat2`` in use, running containers in use, a clean ``systemctl stop``,
one audit record per request, idle exit and re-activation.  The D-Bus
product there runs on Debian's python3 and its standard library alone
(busio speaks D-Bus itself), so its writer and bounded reader are exercised
as a distribution user meets them.

Root only; skipped with the reason without systemd-nspawn or debootstrap.
The base image is cached (harness.machine.CACHE).
"""

import json
import re
import shlex
import time

import pytest

from locald_admin import __version__
from locald_admin import interface as i
from locald_admin.mechanism import audit
from harness import ROOT
from harness import machine as machines
from harness.users import program_source

pytestmark = pytest.mark.skipif(machines.unavailable() is not None,
                                reason=f"systemd tier: {machines.unavailable()}")

RULE = ROOT / "data" / "polkit-1" / "rules.d" / "50-locald-admin.rules.example"
SUBORDINATE = 300000


@pytest.fixture(scope="module", params=[machines.DAEMON, machines.BROKER])
def machine(request, tmp_path_factory):
    """The installed product, booted once with each system bus: every test
    here runs on dbus-daemon and on dbus-broker."""
    def prepare(image):
        rules = image / "etc" / "polkit-1" / "rules.d"
        rules.mkdir(parents=True, exist_ok=True)
        (rules / "50-locald-admin.rules").write_text(RULE.read_text())

    m = machines.Machine(tmp_path_factory.mktemp("machine"), prepare, bus=request.param)
    try:
        m.sh("groupadd -r locald && useradd -m -G locald tester && useradd -m stranger"
             f" && echo tester:{SUBORDINATE}:65536 >> /etc/subuid", check=True)
        yield m
    finally:
        m.stop()


def shim_as(m, user, path):
    return m.run("setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups",
                 "locald-shim", "admin", "cleanup", "--no-interactive", path)


def leftovers(m, base, owner="tester"):
    """A project of ``owner`` at ``base`` whose .locald/svc holds what runc
    leaves: root-owned 0700 directories and a mode 000 file."""
    svc = f"{base}/.locald/svc"
    m.sh(f"mkdir -p {svc}/rootfs/run/shm && echo x > {svc}/own && chown -R {owner}:{owner} {base}"
         f" && chown root:root {svc}/rootfs/run {svc}/rootfs/run/shm && chmod 700 {svc}/rootfs/run"
         f" && touch {svc}/rootfs/run/shm/secret && chmod 000 {svc}/rootfs/run/shm/secret", check=True)
    return svc


def exists(m, path):
    return m.run("test", "-e", path).returncode == 0


def audits(m):
    return [ln for ln in m.journal("locald-admin.service").splitlines() if ln.startswith("audit ")]


def test_the_system_bus_is_the_one_asked_for(machine):
    """dbus.service is dbus-daemon or dbus-broker, as the fixture asked."""
    unit = machine.run("systemctl", "show", "-p", "Id", "--value", "dbus.service", check=True).stdout.strip()
    assert unit == {machines.DAEMON: "dbus.service", machines.BROKER: "dbus-broker.service"}[machine.bus], unit
    pid = machine.run("systemctl", "show", "-p", "MainPID", "--value", "dbus.service", check=True).stdout.strip()
    exe = machine.run("readlink", f"/proc/{pid}/exe", check=True).stdout.strip()
    assert exe.endswith({machines.DAEMON: "/dbus-daemon", machines.BROKER: "/dbus-broker-launch"}[machine.bus]), exe


def test_the_first_call_activates_the_hardened_unit_which_uses_openat2(machine):
    cp = shim_as(machine, "tester", "/home/tester/none/.locald/x")
    assert cp.returncode == 0, cp.stderr
    state = machine.run("systemctl", "show", "-p", "ActiveState", "-p", "MainPID", "locald-admin.service").stdout
    assert "ActiveState=active" in state, state
    log = machine.journal("locald-admin.service")
    assert "(openat2: True, compiled walk: " in log, log  # finding 4: RestrictSUIDSGID= had made it False
    intro = machine.run("busctl", "introspect", "org.locald.Admin1", "/org/locald/Admin1").stdout
    assert "Cleanup" in intro and "Progress" in intro, intro


@pytest.mark.parametrize("base", ["/home/tester/proj", "/tmp/proj", "/var/tmp/proj", "/dev/shm/proj"])
def test_leftovers_are_removed_on_the_machines_file_system(machine, base):
    svc = leftovers(machine, base)
    cp = shim_as(machine, "tester", svc)
    assert cp.returncode == 0, cp.stderr
    assert not exists(machine, svc) and exists(machine, f"{base}/.locald")


def test_a_caller_with_no_session_and_no_group_is_refused(machine):
    svc = leftovers(machine, "/home/stranger/proj", owner="stranger")
    cp = shim_as(machine, "stranger", svc)
    assert cp.returncode == 3, (cp.returncode, cp.stderr)
    assert exists(machine, f"{svc}/rootfs/run/shm/secret")


@pytest.mark.parametrize("uid", [0, SUBORDINATE + 7], ids=["root", "subordinate"])
def test_a_running_stand_in_container_is_in_use_under_the_unit(machine, uid):
    """Its own mount namespace (unshare), a tmpfs on a directory of the
    target, then running as root or as one of the caller's subordinate uids
    (which ProtectProc=invisible hid from the service)."""
    svc = leftovers(machine, f"/home/tester/c{uid}")
    pidfile = f"/run/standin-{uid}.pid"
    machine.sh(f"setsid -f unshare -m --propagation private sh -c 'echo $$ > {pidfile} && "
               f"mount -t tmpfs none {svc}/rootfs/run/shm && "
               f"exec setpriv --reuid={uid} --regid={uid} --clear-groups sleep 300' </dev/null >/dev/null 2>&1",
               check=True)
    try:
        deadline = time.monotonic() + 10
        while machine.sh(f"p=$(cat {pidfile}) && grep -q '^Uid:.{uid}' /proc/$p/status && "
                         f"grep -q 'sleep' /proc/$p/comm").returncode != 0:
            assert time.monotonic() < deadline, "the stand-in container did not start"
            time.sleep(0.05)
        cp = shim_as(machine, "tester", svc)
        assert cp.returncode == 8, (cp.returncode, cp.stderr)
        assert "in use" in cp.stderr
        assert exists(machine, f"{svc}/rootfs/run/shm")
    finally:
        machine.sh(f"kill $(cat {pidfile})", check=True)


def test_projects_in_opt_take_one_step_admin_conf_and_daemon_reload(machine):
    """Finding 5: /opt is neither a default root nor writable in the unit's
    sandbox.  Listed in admin.conf alone it is refused up front with the fix
    named (not EROFS noise); after systemctl daemon-reload the generator has
    made it writable and the cleanup lands."""
    svc = leftovers(machine, "/opt/proj")
    cp = shim_as(machine, "tester", svc)
    assert cp.returncode == 5 and "not below any allowed root" in cp.stderr, (cp.returncode, cp.stderr)
    shipped = machine.run("cat", "/etc/locald/admin.conf", check=True).stdout
    machine.run("tee", "/etc/locald/admin.conf", check=True, input="[scope]\nallow = "
                "/home /var/home /srv /tmp /var/tmp /mnt /media /run/media /dev/shm /opt\n")
    try:
        machine.run("systemctl", "stop", "locald-admin.service", check=True)  # the next call starts afresh
        cp = shim_as(machine, "tester", svc)
        assert cp.returncode == 5 and "read-only for locald-admin" in cp.stderr and "daemon-reload" in cp.stderr, \
            (cp.returncode, cp.stderr)
        assert "Read-only file system" not in cp.stderr
        machine.run("systemctl", "daemon-reload", check=True)
        machine.run("systemctl", "stop", "locald-admin.service", check=True)
        cp = shim_as(machine, "tester", svc)
        assert cp.returncode == 0, cp.stderr
        assert not exists(machine, svc) and exists(machine, "/opt/proj/.locald")
    finally:
        machine.run("tee", "/etc/locald/admin.conf", check=True, input=shipped)
        machine.run("systemctl", "daemon-reload", check=True)
        machine.run("systemctl", "stop", "locald-admin.service", check=True)


def main_pid(m):
    return int(m.run("systemctl", "show", "-p", "MainPID", "--value", "locald-admin.service").stdout.strip())


def vm_hwm_kib(m, pid):
    status = m.run("cat", f"/proc/{pid}/status", check=True).stdout
    return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.M).group(1))


def test_the_installed_mechanism_needs_no_d_bus_library(machine):
    """No D-Bus library is in the machine's image, none is installed with
    the product, and the running mechanism maps nothing but Python, its
    standard library's extensions and our own compiled walk, scan and
    reader of D-Bus values."""
    assert shim_as(machine, "tester", "/home/tester/none/.locald/lib").returncode == 0
    for pkg in ("python3-dbus-fast", "python3-dbus-next", "python3-jeepney", "python3-dbus"):
        assert machine.run("dpkg-query", "-W", "-f=${Status}", pkg).stdout.strip() != "install ok installed", pkg
    maps = machine.run("cat", f"/proc/{main_pid(machine)}/maps", check=True).stdout
    libs = {ln.split()[-1] for ln in maps.splitlines() if ln.split()[-1].endswith(".so") or ".so." in ln}
    ours = {p for p in libs if p.startswith("/usr/lib/locald-admin/site/")}
    assert ours and all("/locald_admin/fs/_c" in p or "/locald_admin/_cwire" in p for p in ours), ours
    assert not [p for p in libs if "dbus" in p.rsplit("/", 1)[-1]], libs


def test_pipelined_and_oversized_calls_on_the_installed_product(machine):
    """1,000 calls of 4 KB pipelined on one connection (client and mechanism
    both installed: without busio's writer a full socket buffer ends the
    connection), then one call of 8 MB: answered InvalidPath from its
    header, naming its size, read in chunks (the mechanism's peak memory
    does not grow by the call), one record with ``message_bytes``."""
    assert shim_as(machine, "tester", "/home/tester/none/.locald/warm").returncode == 0
    pid = main_pid(machine)
    before = vm_hwm_kib(machine, pid)
    records = len(audits(machine))
    cp = machine.run("python3", "-I", "-c", program_source("burst.py"), "/usr/lib/locald-admin/site",
                     "1000", "8000000", timeout=400)
    assert cp.returncode == 0, cp.stderr
    out = json.loads(cp.stdout)
    assert out["library"].startswith("/usr/lib/locald-admin/site/locald_admin/"), out
    assert sum(out["answers"].values()) == 1000 and len(out["answers"]) == 1, out["answers"]
    name, message = out["big"]
    assert name == i.ERROR_INVALID_PATH and any(int(n) > 8_000_000 for n in re.findall(r"\d+", message)), out["big"]
    assert main_pid(machine) == pid  # the same process answered everything
    assert vm_hwm_kib(machine, pid) - before < 16 * 1024
    new = audits(machine)[records:]
    assert len(new) == 1001 and "message_bytes=" in new[-1], new[-1:]
    assert "Traceback" not in machine.journal("locald-admin.service")


def test_one_audit_record_per_request_and_a_clean_stop(machine):
    before = len(audits(machine))
    for k in range(3):
        assert shim_as(machine, "tester", f"/home/tester/none/.locald/a{k}").returncode == 0
    assert len(audits(machine)) == before + 3
    machine.run("systemctl", "stop", "locald-admin.service", check=True)
    result = machine.run("systemctl", "show", "-p", "Result", "-p", "ActiveState", "locald-admin.service").stdout
    assert "Result=success" in result and "ActiveState=inactive" in result, result
    assert "Traceback" not in machine.journal("locald-admin.service")


def _journal_value(v):
    """A field of ``journalctl -o json``: text, or (holding a newline or other
    control characters) an array of its bytes."""
    return bytes(v).decode() if isinstance(v, list) else v


def test_audit_records_are_journal_entries_with_their_own_fields(machine):
    """Under systemd each request is one entry sent with the native protocol:
    ``journalctl MESSAGE_ID=`` lists exactly the audit records, each field
    its own, the priority the error table's; a path holding newlines and a
    forged MESSAGE_ID line stays one field of one entry."""
    forged = f"/home/tester/none/.locald/j\nMESSAGE_ID={audit.MESSAGE_ID}\nLOCALD_PATH=/etc/shadow"
    assert shim_as(machine, "tester", forged).returncode == 0
    assert shim_as(machine, "tester", "/etc/locald-admin-test").returncode == i.OUTSIDE_SCOPE.exit_code
    uid = machine.run("id", "-u", "tester", check=True).stdout.strip()
    # --all: a field over 4096 bytes (the 4 KB paths of the burst test) is
    # otherwise shown as null.
    out = machine.run("journalctl", f"MESSAGE_ID={audit.MESSAGE_ID}", "-o", "json", "--all", "--no-pager",
                      check=True).stdout
    entries = [{k: _journal_value(v) for k, v in json.loads(line).items()} for line in out.splitlines()]
    assert entries and all(e["MESSAGE"].startswith("audit ") for e in entries)
    assert all(e["_SYSTEMD_UNIT"] == "locald-admin.service" for e in entries)
    mine = [e for e in entries if e.get("LOCALD_PATH") == forged]
    assert len(mine) == 1 and not any(e.get("LOCALD_PATH") == "/etc/shadow" for e in entries), entries[-3:]
    assert mine[0]["LOCALD_RESULT"] == "ok" and mine[0]["PRIORITY"] == "6" and mine[0]["LOCALD_UID"] == uid
    assert "\n" not in mine[0]["MESSAGE"]
    [refused] = [e for e in entries if e.get("LOCALD_PATH") == "/etc/locald-admin-test"]
    assert refused["LOCALD_RESULT"] == i.ERROR_OUTSIDE_SCOPE and refused["PRIORITY"] == "5"
    # Not also on stderr: the unit's stream got no audit line of its own.
    stream = machine.run("journalctl", "-u", "locald-admin.service", "_TRANSPORT=stdout", "-o", "cat",
                         "--no-pager").stdout
    assert not any(ln.startswith("audit ") for ln in stream.splitlines()), stream[-2000:]


def test_journalctl_x_explains_a_record_and_journald_attaches_the_caller(machine):
    """The installed catalog entry, once built into the database (what make
    install runs on the system itself), is what journalctl -x shows below
    an audit record, with the record's own path, uid and result; and from
    OBJECT_PID journald attaches the caller's uid and command itself (the
    caller stays a moment after its answer: journald reads /proc/<pid>)."""
    machine.run("journalctl", "--update-catalog", check=True)
    path = "/home/tester/none/.locald/catalog"
    script = ("import os, sys, time; sys.path.insert(0, '/usr/lib/locald-admin/site'); "
              "from locald_admin.client import blocking; blocking.cleanup(sys.argv[1]); "
              "print(os.getpid(), flush=True); time.sleep(3)")
    r = machine.run("setpriv", "--reuid=tester", "--regid=tester", "--init-groups", "python3", "-I", "-c", script,
                    path, check=True)
    pid, uid = r.stdout.strip(), machine.run("id", "-u", "tester", check=True).stdout.strip()
    out = machine.run("journalctl", f"MESSAGE_ID={audit.MESSAGE_ID}", f"LOCALD_PATH={path}", "-o", "json",
                      "--no-pager", check=True).stdout
    [entry] = [json.loads(line) for line in out.splitlines()]
    assert entry["OBJECT_PID"] == pid == entry["LOCALD_PID"], entry
    assert entry["OBJECT_UID"] == uid and entry["OBJECT_COMM"] == "python3", entry
    text = machine.run("journalctl", "-x", f"MESSAGE_ID={audit.MESSAGE_ID}", f"LOCALD_PATH={path}", "--no-pager",
                       check=True).stdout
    assert f"Subject: Cleanup of {path} for uid {uid} ended: ok" in text, text
    assert "Documentation: man:locald-admin-mechanism(8)" in text and "LOCALD_REASON" in text, text


def test_the_unit_may_hold_as_many_descriptors_as_its_hard_limit(machine):
    """systemd starts the unit with 1024 descriptors (soft) of its hard
    limit; the service raises its own soft limit to the hard one
    (mechanism/fdlimit.py, threat model V1)."""
    assert shim_as(machine, "tester", "/home/tester/none/.locald/fds").returncode == 0
    pid = machine.run("systemctl", "show", "-p", "MainPID", "--value", "locald-admin.service",
                      check=True).stdout.strip()
    assert pid not in ("", "0"), pid
    limits = machine.run("cat", f"/proc/{pid}/limits", check=True).stdout
    [line] = [ln for ln in limits.splitlines() if ln.startswith("Max open files")]
    soft, hard = line.split()[3:5]
    assert soft == hard and int(hard) > 1024, line


def test_polkitd_shows_the_action_in_the_callers_language(machine):
    """The installed .mo of po/de.po is what the real polkitd reads for the
    action's declared gettext-domain: asked for the actions in a German
    locale (generated in the image, harness.machine.LOCALES), it gives the
    German description; in the C locale, the English one."""
    def described(locale):
        out = machine.run("busctl", "--json=short", "call", "org.freedesktop.PolicyKit1",
                          "/org/freedesktop/PolicyKit1/Authority", "org.freedesktop.PolicyKit1.Authority",
                          "EnumerateActions", "s", locale, check=True).stdout
        [action] = [a for a in json.loads(out)["data"][0] if a[0] == i.POLKIT_ACTION]
        return action[1]
    english = described("C")
    assert english.startswith("Remove root-owned leftovers"), english
    if not (ROOT / "po" / "de.po").exists():
        pytest.skip("no German translation in po/")
    assert described("de_DE.UTF-8").startswith("Überreste des Benutzers root"), described("de_DE.UTF-8")


def test_what_an_administrator_meets_version_property_man_pages_and_docs(machine):
    """busctl reads the Version (activating the service as a user's call
    would), --version says the same, and the unit's Documentation= pages
    are installed where man finds them."""
    got = machine.run("setpriv", "--reuid=tester", "--regid=tester", "--init-groups", "busctl", "get-property",
                      i.BUS_NAME, i.OBJECT_PATH, i.INTERFACE, "Version", check=True).stdout
    assert got == f's "{__version__}"\n', got
    revision = machine.run("busctl", "get-property", i.BUS_NAME, i.OBJECT_PATH, i.INTERFACE, "InterfaceRevision",
                           check=True).stdout
    assert revision == f"u {i.INTERFACE_REVISION}\n", revision
    assert machine.run("locald-shim", "--version", check=True).stdout == f"locald-shim {__version__}\n"
    docs = machine.run("systemctl", "show", "-p", "Documentation", "--value", "locald-admin.service",
                       check=True).stdout
    pages = [d.split(":", 1)[1] for d in shlex.split(docs)]
    assert pages, docs
    for page in pages:  # man -w: where the page is; it fails if man cannot find it
        name, section = page.rstrip(")").split("(")
        where = machine.run("man", "-w", section, name).stdout.strip()
        assert where.endswith(f"/man{section}/{name}.{section}") and exists(machine, where), (page, where)


def test_idle_exit_after_30_seconds_and_reactivation(machine):
    assert shim_as(machine, "tester", "/home/tester/none/.locald/idle").returncode == 0
    deadline = time.monotonic() + 50
    state = ""
    while time.monotonic() < deadline:
        state = machine.run("systemctl", "show", "-p", "ActiveState", "locald-admin.service").stdout.strip()
        if state == "ActiveState=inactive":
            break
        time.sleep(1)
    assert state == "ActiveState=inactive", state
    result = machine.run("systemctl", "show", "-p", "Result", "locald-admin.service").stdout.strip()
    assert result == "Result=success", result
    assert shim_as(machine, "tester", "/home/tester/none/.locald/again").returncode == 0
