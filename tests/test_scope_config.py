"""The second anchor kind (~/.local/share/locald) and the administrator's
configuration (allowed/denied roots, the root owner rule).

Config parsing runs as any user; everything that needs other users, homes or
root-owned roots is in the root tier.
"""

import os
import signal
import subprocess
from pathlib import Path

import pytest

from locald_admin import interface as i
from locald_admin.mechanism import config as cfgmod
from locald_admin.mechanism import engine
from locald_admin.mechanism.errors import OutsideScope
from harness import IS_ROOT
from harness.buses import PolkitMock, PrivateBus
from harness.calls import cleanup
from harness.mechanism import Mechanism
from harness.trees import rm_rf, world_tmpdir
from harness.users import OTHER_USER, TEST_USER, ensure_user
from harness.waiting import wait_until

needs_root = pytest.mark.skipif(not IS_ROOT, reason="root tier: needs other users' homes and "
                                "root-owned roots; run the suite as root")


# -- parsing (any user) ------------------------------------------------------------

def test_no_file_means_the_defaults(tmp_path):
    c = cfgmod.load(str(tmp_path / "missing.conf"))
    assert c.allow == ("/home", "/var/home", "/srv", "/tmp", "/var/tmp", "/mnt", "/media", "/run/media", "/dev/shm")
    assert c.deny == ("/proc", "/sys", "/dev", "/run", "/boot", "/etc", "/usr")
    assert c.root_skips_owner_check is True


def test_file_overrides(tmp_path):
    p = tmp_path / "admin.conf"
    p.write_text("[scope]\nallow = /home /srv/projects\n[owner]\nroot_skips_owner_check = no\n")
    c = cfgmod.load(str(p))
    assert c.allow == ("/home", "/srv/projects") and c.deny == cfgmod.DEFAULT_DENY
    assert c.root_skips_owner_check is False and c.source == str(p)


@pytest.mark.parametrize("text,needle", [
    ("[scope\n", "section"),
    ("allow = /\n", "section"),
    ("[scope]\nallow = home\n", "not an absolute path"),
    ("[scope]\nallow = /a/../b\n", "'..'"),
    ("[owner]\nroot_skips_owner_check = maybe\n", "root_skips_owner_check"),
    ("[scopes]\n", "unknown section"),
    ("[scope]\nalow = /\n", "unknown key 'alow'"),
])
def test_malformed_files_name_the_problem(tmp_path, text, needle):
    p = tmp_path / "admin.conf"
    p.write_text(text)
    with pytest.raises(cfgmod.ConfigError) as ei:
        cfgmod.load(str(p))
    assert needle in str(ei.value) and str(p) in str(ei.value)


def test_shipped_example_is_the_defaults():
    """data/locald/admin.conf (installed by make install) is all comments."""
    shipped = Path(__file__).resolve().parent.parent / "data" / "locald" / "admin.conf"
    c = cfgmod.parse(shipped.read_text(), str(shipped))
    assert (c.allow, c.deny, c.root_skips_owner_check) == (cfgmod.DEFAULT_ALLOW, cfgmod.DEFAULT_DENY, True)
    text = shipped.read_text()
    for root in cfgmod.DEFAULT_DENY + cfgmod.DEFAULT_ALLOW:
        assert root in text  # the defaults are spelled out for the admin


# -- the data-directory anchor (root) -----------------------------------------------

HOMES = Path("/var/tmp/locald-admin-test-homes")
HOME_USERS = ("locald-home1", "locald-home2")  # used by no other test: no stray processes
HOMELESS_USER = TEST_USER  # made by ensure_user without a home directory


@pytest.fixture
def homes():
    """Two users with fresh home directories: (user, home), (other, home2)."""
    out = []
    rm_rf(HOMES)
    HOMES.mkdir(mode=0o755)
    for name in HOME_USERS:
        pw = ensure_user(name)
        home = HOMES / name
        if pw.pw_dir != str(home):
            subprocess.run(["usermod", "-d", str(home), name], check=True, capture_output=True)
        home.mkdir()
        os.chown(home, pw.pw_uid, pw.pw_gid)
        out.append((pw, home))
    yield out
    rm_rf(HOMES)


def make_data_dir(pw, home):
    """<home>/.local/share/locald owned by the user, with a root-owned
    0700 image directory inside, as runc leaves it."""
    d = home / ".local" / "share" / "locald"
    (d / "images" / "rootfs").mkdir(parents=True)
    for p in (home / ".local", home / ".local" / "share", d, d / "images"):
        os.chown(p, pw.pw_uid, pw.pw_gid)
    os.chmod(d / "images" / "rootfs", 0o700)
    (d / "images" / "rootfs" / "f").write_text("x")
    return d


@needs_root
def test_own_data_dir_is_an_anchor(homes):
    (pw, home), _ = homes
    d = make_data_dir(pw, home)
    assert engine.cleanup(str(d / "images"), pw.pw_uid) == 3
    assert not (d / "images").exists() and d.is_dir()


@needs_root
def test_another_users_data_dir_is_outside_scope(homes):
    (pw, _), (other, home2) = homes
    d2 = make_data_dir(other, home2)
    with pytest.raises(OutsideScope, match="another user's data directory"):
        engine.cleanup(str(d2 / "images"), pw.pw_uid)
    assert (d2 / "images" / "rootfs" / "f").exists()


@needs_root
def test_home_reached_through_a_symlink_is_compared_by_identity(homes):
    (pw, home), _ = homes
    d = make_data_dir(pw, home)
    alias = home.parent / "alias-home"
    os.symlink(home, alias)  # like /home -> /var/home
    assert engine.cleanup(str(alias / ".local/share/locald/images"), pw.pw_uid) == 3
    assert not (d / "images").exists()


@needs_root
def test_data_dir_replaced_by_a_symlink_is_refused(homes):
    (pw, home), (other, home2) = homes
    victim = make_data_dir(other, home2)
    share = home / ".local" / "share"
    share.mkdir(parents=True)
    os.symlink(victim, share / "locald")
    os.lchown(share / "locald", pw.pw_uid, pw.pw_gid)
    with pytest.raises(OutsideScope, match="symlink"):
        engine.cleanup(str(share / "locald" / "images"), pw.pw_uid)
    assert (victim / "images" / "rootfs" / "f").exists()


@needs_root
def test_symlink_below_the_data_dir_is_refused(homes):
    (pw, home), (other, home2) = homes
    d = make_data_dir(pw, home)
    victim = make_data_dir(other, home2)
    os.symlink(victim / "images", d / "link")
    os.lchown(d / "link", pw.pw_uid, pw.pw_gid)
    with pytest.raises(OutsideScope, match="symlink below the anchor"):
        engine.cleanup(str(d / "link" / "rootfs"), pw.pw_uid)
    assert (victim / "images" / "rootfs" / "f").exists()


def _project_in(pw, data_dir, owner):
    """<data_dir>/projects/p/.locald/build owned by ``owner`` (the .locald
    and what leads to it), holding a root-owned 0700 directory with a file,
    as runc leaves it; returns build."""
    build = data_dir / "projects" / "p" / ".locald" / "build"
    (build / "rootfs").mkdir(parents=True)
    for q in (data_dir / "projects", data_dir / "projects" / "p", build.parent, build):
        os.chown(q, owner.pw_uid, owner.pw_gid)
    os.chmod(build / "rootfs", 0o700)
    (build / "rootfs" / "f").write_text("x")
    return build


@needs_root
def test_a_data_dir_outside_the_callers_home_falls_back_to_its_own_locald(homes):
    """locald run with another HOME keeps its projects' state in
    <HOME>/.local/share/locald/projects/<p>/.locald: that data directory is
    not the caller's (its home is the password database's), so the path's
    .locald is the anchor, with that anchor's rules; a path there with no
    .locald is still refused as not below the caller's home."""
    (pw, home), _ = homes
    elsewhere = HOMES / "elsewhere"
    elsewhere.mkdir()
    os.chown(elsewhere, pw.pw_uid, pw.pw_gid)
    d = make_data_dir(pw, elsewhere)
    build = _project_in(pw, d, pw)
    assert engine.cleanup(str(build), pw.pw_uid) == 3
    assert not build.exists() and build.parent.is_dir()
    with pytest.raises(OutsideScope, match="not below the caller's own home directory"):
        engine.cleanup(str(d / "images"), pw.pw_uid)
    assert (d / "images" / "rootfs" / "f").exists()


@needs_root
def test_a_caller_without_a_home_directory_falls_back_to_its_own_locald_too(top):
    """No home at all is not this data directory's home either: its '.locald'
    is the anchor (found by the property test's data-directory alias)."""
    pw = ensure_user(HOMELESS_USER)
    if os.path.exists(pw.pw_dir):
        pytest.skip(f"{HOMELESS_USER} has a home directory here ({pw.pw_dir})")
    os.chown(top, pw.pw_uid, pw.pw_gid)
    build = _project_in(pw, top / ".local" / "share" / "locald", pw)
    assert engine.cleanup(str(build), pw.pw_uid) == 3
    assert not build.exists()


@needs_root
def test_the_fallback_to_locald_gives_no_way_into_another_users_data_dir(homes):
    """Another user's data directory, with a .locald of theirs below it: the
    fallback is that .locald, which is not the caller's: refused, nothing
    removed."""
    (pw, _), (other, home2) = homes
    build = _project_in(other, make_data_dir(other, home2), other)
    with pytest.raises(OutsideScope, match="the anchor is owned by uid"):
        engine.cleanup(str(build), pw.pw_uid)
    assert (build / "rootfs" / "f").exists()


@needs_root
def test_the_first_anchor_on_the_path_is_used(homes):
    """A project inside the data dir: the data dir (first) is the anchor,
    so its .locald need not be the caller's own."""
    (pw, home), _ = homes
    d = make_data_dir(pw, home)
    inner = d / "proj" / ".locald" / "x"
    inner.mkdir(parents=True)
    os.chown(d / "proj", pw.pw_uid, pw.pw_gid)  # .locald below stays root's
    assert engine.cleanup(str(inner), pw.pw_uid) == 1
    assert not inner.exists()


# -- configured roots (root) --------------------------------------------------------

@pytest.fixture
def roots():
    top = world_tmpdir()
    for name in ("ok", "ok/no", "other"):
        (top / name).mkdir()
    yield top
    rm_rf(top)


def anchor_in(base, uid):
    a = base / "proj" / ".locald"
    (a / "x").mkdir(parents=True)
    os.chown(a, uid, uid)
    return a


@needs_root
def test_anchor_outside_the_allowed_roots_is_refused(roots):
    c = cfgmod.Config(allow=(str(roots / "ok"),), source="test.conf")
    assert engine.cleanup(str(anchor_in(roots / "ok", 0) / "x"), 0, c) == 1
    a = anchor_in(roots / "other", 0)
    with pytest.raises(OutsideScope, match=r"administrator's configuration \(test.conf\).*not below any allowed"):
        engine.cleanup(str(a / "x"), 0, c)
    assert (a / "x").is_dir()


@needs_root
def test_nearest_root_decides(roots):
    c = cfgmod.Config(allow=(str(roots / "ok"),), deny=(str(roots / "ok" / "no"),))
    a = anchor_in(roots / "ok" / "no", 0)
    with pytest.raises(OutsideScope, match="where cleanup is denied"):
        engine.cleanup(str(a / "x"), 0, c)
    assert (a / "x").is_dir()


@needs_root
def test_symlinked_prefix_cannot_move_a_path_into_an_allowed_root(roots):
    c = cfgmod.Config(allow=(str(roots / "ok"),), deny=(str(roots / "other"),))
    a = anchor_in(roots / "other", 0)
    os.symlink(roots / "other" / "proj", roots / "ok" / "door")
    with pytest.raises(OutsideScope, match="denied"):
        engine.cleanup(str(roots / "ok" / "door" / ".locald" / "x"), 0, c)
    assert (a / "x").is_dir()


@needs_root
def test_symlinked_prefix_into_an_allowed_root_is_allowed(roots):
    c = cfgmod.Config(allow=(str(roots / "ok"),), deny=(str(roots / "other"),))
    a = anchor_in(roots / "ok", 0)
    os.symlink(roots / "ok" / "proj", roots / "other" / "door")
    assert engine.cleanup(str(roots / "other" / "door" / ".locald" / "x"), 0, c) == 1
    assert not (a / "x").exists()


@needs_root
def test_default_roots_deny_run_but_allow_dev_shm():
    made = []
    try:
        for base in ("/run", "/dev/shm"):
            d = Path(base) / f"locald-admin-test-{os.getpid()}"
            (d / ".locald" / "x").mkdir(parents=True)
            made.append(d)
        with pytest.raises(OutsideScope, match="/run, where cleanup is denied"):
            engine.cleanup(str(made[0] / ".locald" / "x"), 0)
        assert (made[0] / ".locald" / "x").is_dir()
        assert engine.cleanup(str(made[1] / ".locald" / "x"), 0) == 1
    finally:
        for d in made:
            rm_rf(d)


@needs_root
def test_root_owner_rule_can_be_turned_off(roots):
    other = ensure_user(OTHER_USER)
    a = anchor_in(roots / "ok", other.pw_uid)
    strict = cfgmod.Config(root_skips_owner_check=False)
    with pytest.raises(OutsideScope, match="owned by uid"):
        engine.cleanup(str(a / "x"), 0, strict)
    assert (a / "x").is_dir()
    assert engine.cleanup(str(a / "x"), 0) == 1  # the default lets root through


# -- through the bus: fail closed, SIGHUP (root) -------------------------------------

@pytest.fixture
def conf_stack():
    with PrivateBus() as b, PolkitMock(b) as p:
        p.allow(True)
        yield b, b.dir / "admin.conf"


def wait_log(mech, needle, timeout=10):
    """(A failed test's report carries the mechanism's log.)"""
    wait_until(lambda: needle in mech.log(), timeout, f"{needle!r} in the mechanism log", 0.05)


@needs_root
def test_malformed_config_fails_closed_and_sighup_recovers(conf_stack, roots):
    bus, conf = conf_stack
    conf.write_text("[scope]\nallow = relative/path\n")
    m = Mechanism(bus, "--config", str(conf))
    try:
        a = anchor_in(roots / "ok", 0)
        name, msg = cleanup(bus, str(a / "x"))
        assert name == i.ERROR_FAILED and "not an absolute path" in msg and "\n" not in msg
        assert (a / "x").is_dir()
        conf.write_text(f"[scope]\nallow = {roots / 'ok'}\n")
        m.proc.send_signal(signal.SIGHUP)
        wait_log(m, "configuration reloaded")
        assert cleanup(bus, str(a / "x")) == (None, None)
        b = anchor_in(roots / "other", 0)
        name, msg = cleanup(bus, str(b / "x"))
        assert name == i.ERROR_OUTSIDE_SCOPE and "administrator's configuration" in msg
    finally:
        m.stop()


@needs_root
def test_malformed_config_at_sighup_keeps_the_old_one(conf_stack, roots):
    bus, conf = conf_stack
    conf.write_text(f"[scope]\nallow = {roots / 'ok'}\n")
    m = Mechanism(bus, "--config", str(conf))
    try:
        conf.write_text("[scope\n")
        m.proc.send_signal(signal.SIGHUP)
        wait_log(m, "previous one stays in force")
        assert cleanup(bus, str(anchor_in(roots / "ok", 0) / "x")) == (None, None)
        name, _ = cleanup(bus, str(anchor_in(roots / "other", 0) / "x"))
        assert name == i.ERROR_OUTSIDE_SCOPE  # the old roots still apply
    finally:
        m.stop()


@needs_root
def test_an_allowed_root_that_is_read_only_here_is_refused_up_front_naming_the_fix(tmp_path):
    """Finding 5: under the unit a root outside ReadWritePaths= is read-only
    for the service; every entry failed with EROFS.  Now nothing is tried."""
    ro = tmp_path / "ro"
    t = ro / "proj" / ".locald" / "svc"
    (t / "d").mkdir(parents=True)
    (t / "d" / "f").write_text("x")
    subprocess.run(["mount", "--bind", str(ro), str(ro)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(ro)], check=True)
        allow = cfgmod.parse(f"[scope]\nallow = {tmp_path}\n")
        with pytest.raises(OutsideScope) as ei:
            engine.cleanup(str(t), 0, allow)
        assert "read-only for locald-admin" in ei.value.message and "daemon-reload" in ei.value.message
        assert (t / "d" / "f").read_text() == "x"
    finally:
        subprocess.run(["umount", str(ro)], check=True)
