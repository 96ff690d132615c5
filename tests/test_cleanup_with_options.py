"""CleanupWithOptions over a bus: the real mechanism on a private system bus
with python-dbusmock's polkitd, the client library and locald-shim as an
unprivileged user (as the current user when not root); and a mechanism of
InterfaceRevision 1 (a mock that has only Cleanup), which a client meets
after installing a newer library than its mechanism.  The real polkitd's
tier is test_real_bus.py's; what the dry run counts, test_dry_run.py's.
"""

import json
import os
import re
import subprocess
import sys

import dbus
import pytest

from harness import IS_ROOT
from harness.buses import PrivateBus, terminate, wait_for_name
from harness.trees import check_canary, count_entries, plant_canary, rm_rf, world_tmpdir
from locald_admin import interface as i


@pytest.fixture
def project(clients):
    """<tmp>/proj/.locald of the client user: svc/ with a small tree, keep/
    beside it, and a canary beside the project."""
    top = world_tmpdir()
    anchor = top / "proj" / ".locald"
    for d in ("svc/rootfs/run/shm", "svc/rootfs/dev", "keep"):
        (anchor / d).mkdir(parents=True)
    (anchor / "svc" / "config.json").write_text("{}")
    (anchor / "svc" / "rootfs" / "run" / "shm" / "data").write_text("x")
    plant_canary(top)
    subprocess.run(["chown", "-R", f"{clients.uid}:{clients.gid}", str(top / "proj")], check=True)
    yield anchor
    check_canary(top)
    rm_rf(top)


def test_a_cleanup_says_what_it_removed_and_whether_there_was_anything(bus, allowed, clients, project):
    entries = count_entries(project / "svc")
    r = clients.api("options", str(project / "svc"), bus.address)
    assert r["ok"], r
    assert r["result"]["removed"] == entries and r["result"]["existed"] is True
    assert 0 < r["result"]["duration-usec"] < 60_000_000 and "would-remove" not in r["result"]
    assert not (project / "svc").exists() and (project / "keep").is_dir()
    again = clients.api("options", str(project / "svc"), bus.address)
    assert (again["result"]["removed"], again["result"]["existed"]) == (0, False)


def test_a_dry_run_removes_nothing_and_its_count_is_what_the_cleanup_then_removes(bus, allowed, clients, project):
    entries = count_entries(project / "svc")
    dry = clients.api("options", str(project / "svc"), bus.address, dry_run=True)
    assert dry["ok"], dry
    assert dry["result"] == {"removed": 0, "existed": True, "duration-usec": dry["result"]["duration-usec"],
                             "would-remove": entries, "refused": []}
    assert dry["left_behind"] is False
    assert count_entries(project / "svc") == entries  # nothing removed
    assert len(allowed.checks()) == 1  # authorized by the same action
    real = clients.api("options", str(project / "svc"), bus.address)
    assert real["result"]["removed"] == dry["result"]["would-remove"]


def test_a_dry_run_is_audited_as_one(bus, mechanism, allowed, clients, project):
    before = len(mechanism.audit_lines())
    r = clients.api("options", str(project / "svc"), bus.address, dry_run=True)
    assert r["ok"], r
    lines = mechanism.audit_lines()[before:]
    assert len(lines) == 1
    fields = dict(re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', lines[0]))
    assert (fields["result"], fields["dry_run"], fields["removed"]) == ("ok", "yes", "0")
    assert int(fields["would_remove"]) == count_entries(project / "svc")


@pytest.mark.parametrize("options,named", [
    ({"dry_run": ["b", True]}, "'dry_run'"),
    ({"verbose": ["b", True], "dry-run": ["b", True]}, "'verbose'"),
    ({"dry-run": ["s", "yes"]}, "'dry-run'"),
    ({"interactive": ["u", 1]}, "'interactive'"),
])
def test_an_unknown_or_mistyped_option_is_invalid_args_before_anything_is_asked(bus, mechanism, allowed, clients,
                                                                                project, options, named):
    """An option this mechanism would pass over could change what the call
    means (a dry run done for real): refused, naming it, before polkit is
    asked or anything touched."""
    entries = count_entries(project / "svc")
    r = clients.api("raw", str(project / "svc"), bus.address, options=options)
    assert (r["ok"], r["error"]) == (False, i.ERROR_INVALID_ARGS), r
    assert named in r["message"] and "\n" not in r["message"]
    assert count_entries(project / "svc") == entries and allowed.checks() == []
    record = mechanism.audit_lines()[-1]  # audited with its reason, in its own field under systemd
    assert f"result={i.ERROR_INVALID_ARGS}" in record and "reason=" in record and named in record


def test_the_interactive_option_decides_over_the_message_flag(bus, allowed, clients, project):
    r = clients.api("raw", str(project / "nothing"), bus.address, options={"interactive": ["b", True]}, flag=False)
    assert r["ok"], r
    r = clients.api("raw", str(project / "nothing"), bus.address, options={"interactive": ["b", False]}, flag=True)
    assert r["ok"], r
    r = clients.api("raw", str(project / "nothing"), bus.address, options={}, flag=True)  # absent: the flag
    assert r["ok"], r
    assert [int(c[3]) for c in allowed.checks()] == [i.POLKIT_ALLOW_USER_INTERACTION, 0,
                                                      i.POLKIT_ALLOW_USER_INTERACTION]


def test_a_denied_dry_run_is_not_authorized(bus, mechanism, polkit, clients, project):
    polkit.allow(False)
    r = clients.api("options", str(project / "svc"), bus.address, dry_run=True)
    assert r["type"] == "NotAuthorizedError", r


# -- locald-shim --json and --dry-run -----------------------------------------------------------------

def test_shim_json_prints_the_result_object(bus, allowed, clients, project):
    entries = count_entries(project / "svc")
    cp = clients.shim("admin", "cleanup", "--no-interactive", "--json", str(project / "svc"), bus_address=bus.address)
    assert (cp.returncode, cp.stderr) == (0, "")
    out = json.loads(cp.stdout)
    assert out["removed"] == entries and out["existed"] is True and set(out) == {"removed", "existed",
                                                                                   "duration-usec"}


def test_shim_without_a_terminal_or_json_prints_nothing_and_makes_the_plain_call(bus, allowed, clients, project):
    """How locald runs it: nothing on stdout, the RFC's Cleanup(s)."""
    cp = clients.shim("admin", "cleanup", "--no-interactive", str(project / "svc"), bus_address=bus.address)
    assert (cp.returncode, cp.stdout, cp.stderr) == (0, "", "")
    assert not (project / "svc").exists()


def test_shim_dry_run_exits_0_when_nothing_would_be_left_and_removes_nothing(bus, allowed, clients, project):
    entries = count_entries(project / "svc")
    cp = clients.shim("admin", "cleanup", "--dry-run", "--json", str(project / "svc"), bus_address=bus.address)
    assert cp.returncode == i.EXIT_OK, cp.stderr
    assert json.loads(cp.stdout)["would-remove"] == entries and count_entries(project / "svc") == entries


@pytest.mark.skipif(not IS_ROOT, reason="needs a mount, which only root can make")
def test_shim_dry_run_is_refused_by_a_mount_as_the_cleanup_is(bus, allowed, clients, project, mounter):
    """Every check of a cleanup refuses a dry run the same way: a mount
    below the target is MountPoint (exit 6), nothing counted."""
    mounter("-t", "tmpfs", "tmpfs", target=project / "svc" / "rootfs" / "dev")
    cp = clients.shim("admin", "cleanup", "--dry-run", str(project / "svc"), bus_address=bus.address)
    assert cp.returncode == i.EXIT_MOUNT_POINT, cp.stderr


@pytest.mark.skipif(not IS_ROOT, reason="needs another user's directory")
def test_shim_dry_run_names_what_would_be_left_and_exits_1(bus, allowed, clients, project):
    from harness.users import LOGIN_USER, ensure_login_user

    stranger = ensure_login_user(LOGIN_USER)
    theirs = project / "svc" / "theirs"
    theirs.mkdir()
    (theirs / "private-name").write_text("x")
    subprocess.run(["chown", "-R", f"{stranger.pw_uid}:{stranger.pw_gid}", str(theirs)], check=True)
    cp = clients.shim("admin", "cleanup", "--dry-run", "--json", str(project / "svc"), bus_address=bus.address)
    assert cp.returncode == i.EXIT_LEFT_BEHIND, cp.stderr
    out = json.loads(cp.stdout)
    assert [p for p, _ in out["refused"]] == [str(theirs)] and "private-name" not in cp.stdout
    assert (theirs / "private-name").exists()


# -- a mechanism of InterfaceRevision 1 ---------------------------------------------------------------

@pytest.fixture(scope="module")
def old_bus():
    """A private bus whose org.locald.Admin1 has only Cleanup (revision 1),
    which succeeds: python-dbusmock's object with that one method."""
    with PrivateBus() as b:
        env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=b.address)
        proc = subprocess.Popen([sys.executable, "-m", "dbusmock", "--system", i.BUS_NAME, i.OBJECT_PATH, i.INTERFACE],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for_name(b.address, i.BUS_NAME, proc=proc)
            con = b.connect()
            mock = dbus.Interface(con.get_object(i.BUS_NAME, i.OBJECT_PATH), "org.freedesktop.DBus.Mock")
            mock.AddMethod(i.INTERFACE, "Cleanup", "s", "", "")
            con.close()
            yield b
        finally:
            terminate(proc, 5)


def test_an_older_mechanism_gets_cleanup_for_a_plain_call(old_bus, clients, project):
    r = clients.api("options", str(project / "svc"), old_bus.address)
    assert r["ok"], r
    assert r["result"] == {}  # it says nothing but success
    cp = clients.shim("admin", "cleanup", "--json", str(project / "svc"), bus_address=old_bus.address)
    assert (cp.returncode, json.loads(cp.stdout)) == (0, {})


def test_an_older_mechanism_fails_a_dry_run_clearly(old_bus, clients, project):
    r = clients.api("options", str(project / "svc"), old_bus.address, dry_run=True)
    assert r["type"] == "UnsupportedError" and "dry run" in r["message"], r
    cp = clients.shim("admin", "cleanup", "--dry-run", str(project / "svc"), bus_address=old_bus.address)
    assert cp.returncode == i.EXIT_UNSUPPORTED
    assert "update locald-admin" in cp.stderr and cp.stderr.count("\n") == 1
