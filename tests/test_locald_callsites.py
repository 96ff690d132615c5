"""locald's own call sites of ``locald-shim admin cleanup``, run the way
locald-server runs them (docs/locald-integration.md, issue 26 item 5).

locald (github.com/wycats/locald at a4ee968) delegates a failed
``remove_dir_all`` through ``ShimRuntime::cleanup_path``: a tokio
``Command`` with ``LD_LIBRARY_PATH`` removed from locald-server's own
environment, ``admin cleanup <path>``, and only the exit status looked at.
Here each of its call sites gets its exact path below the home directory the
password database gives a test user, with what a container runtime leaves
there as root; the program is the installed launcher (``make install``'s
``usr/bin/locald-shim``, staged), run by absolute path with
``admin cleanup --no-interactive <path>``, as that user, in a session of its
own (no controlling terminal), stdin from /dev/null, stdout and stderr
captured, in locald-server's environment minus ``LD_LIBRARY_PATH``; the
mechanism is the real one on a private bus with polkit's mock.  Then every
failure the guide tells locald how to handle, driven the same way.

The guide's exit-code table is held to ``locald_admin.interface`` here (as
tests/test_contract.py holds the README's), and its call-site table to the
sites this file runs; those two run anywhere.  The rest is root only:
root-owned leftovers, a user whose home is set in the password database
(``locald-callsite``, used by no other test), the private bus.
"""

import contextlib
import hashlib
import json
import os
import pwd
import re
import stat
import subprocess
import uuid
from pathlib import Path

import pytest

from harness import IS_ROOT, ROOT
from harness import runc as runcmod
from harness.buses import PrivateBus
from harness.mechanism import Mechanism
from harness.trees import Canary, full, make_runc_leftovers, rm_rf, snapshot, world_tmpdir, write
from harness.users import SYSTEM_PYTHON, ensure_user, shadow_tool
from harness.waiting import wait_until
from locald_admin import interface as i

GUIDE = ROOT / "docs" / "locald-integration.md"
STAGED_SHIM = "usr/bin/locald-shim"  # below make install's DESTDIR (PREFIX=/usr): /usr/bin/locald-shim
HOME_USER = "locald-callsite"

needs_root = pytest.mark.skipif(
    not IS_ROOT, reason="root tier: root-owned leftovers, a test user's home in the password database and "
                        "the mechanism on a private bus; run the suite as root")


# -- locald-server, as locald-admin sees it ------------------------------------------

class Locald:
    """A user, its home, locald-server's environment, and the way it runs
    a child: ``tokio::process::Command::new(shim).env_remove("LD_LIBRARY_PATH")``
    with ``admin cleanup``, stdin from /dev/null (the guide's advice: today's
    locald inherits its own), no controlling terminal, stdout and stderr
    captured."""

    def __init__(self, pw, home, shim, bus_address):
        self.pw, self.home, self.shim = pw, Path(home), str(shim)
        # locald-server's own environment: the user's login environment,
        # inherited from the `locald` command that started it
        # (spawn_daemon: `setsid locald server start`), with a library path
        # set, as a developer's shell may have it.
        self.env = {
            "HOME": str(home), "USER": pw.pw_name, "LOGNAME": pw.pw_name, "SHELL": "/bin/bash",
            "PATH": f"{home}/.cargo/bin:/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "RUST_LOG": "info",
            "LD_LIBRARY_PATH": f"{home}/.local/lib:/opt/locald/lib",
            # The one addition: the test's private bus stands for the system bus.
            "DBUS_SYSTEM_BUS_ADDRESS": bus_address,
        }

    def run(self, argv, *, cwd=None, env=None):
        parent = self.env if env is None else env
        child = {k: v for k, v in parent.items() if k != "LD_LIBRARY_PATH"}  # .env_remove("LD_LIBRARY_PATH")
        assert "LD_LIBRARY_PATH" in parent and "LD_LIBRARY_PATH" not in child
        return subprocess.run(argv, env=child, cwd=str(cwd or self.home), stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, start_new_session=True, timeout=120,
                              user=self.pw.pw_uid, group=self.pw.pw_gid, extra_groups=[])

    def cleanup(self, path, **kw):
        """``/usr/bin/locald-shim admin cleanup --no-interactive <path>``."""
        return self.run([self.shim, "admin", "cleanup", "--no-interactive", str(path)], **kw)

    def remove_dir_all(self, path):
        """locald's own first attempt, as the user: like Rust's
        ``remove_dir_all``, it stops at the first error."""
        return self.run([SYSTEM_PYTHON, "-c", "import shutil, sys; shutil.rmtree(sys.argv[1])", str(path)])


@pytest.fixture(scope="module")
def user_home():
    """``HOME_USER`` with a home of its own in the password database (the
    mechanism's second anchor is that home's .local/share/locald, taken from
    the password database, never from HOME), mode 0700 as Debian 12 makes
    homes; its home is set back to /nonexistent afterwards."""
    top = world_tmpdir("locald-admin-callsites-")
    home = top / HOME_USER
    pw = ensure_user(HOME_USER)
    home.mkdir(mode=0o700)
    os.chown(home, pw.pw_uid, pw.pw_gid)
    cp = shadow_tool("usermod", "-d", str(home), HOME_USER)
    assert cp.returncode == 0, cp.stderr
    try:
        yield pwd.getpwnam(HOME_USER), home
    finally:
        shadow_tool("usermod", "-d", "/nonexistent", HOME_USER)
        rm_rf(top)


@pytest.fixture(scope="module")
def mechanism(bus, polkit, user_home):
    polkit.allow(True)
    with Mechanism(bus, "--config", str(bus.dir / "no-such-admin.conf")) as m:  # the default roots
        yield m


@pytest.fixture
def locald(user_home, staged, bus):
    pw, home = user_home
    shim = staged / STAGED_SHIM
    assert os.path.islink(shim) and os.access(shim, os.X_OK), shim
    yield Locald(pw, home, shim, bus.address)
    for entry in home.iterdir():  # the home stays, empty, for the next test
        rm_rf(entry)


# -- locald's layout -------------------------------------------------------------------

def user_dirs(pw, path):
    """``create_dir_all`` as the user: every directory it makes is the
    user's, mode 0755."""
    path, missing = Path(path), []
    p = path
    while not os.path.lexists(p):
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir()
        os.chmod(d, 0o755)
        os.chown(d, pw.pw_uid, pw.pw_gid)
    return path


def user_file(pw, path, data=b"x"):
    write(path, data, mode=0o644)
    os.chown(path, pw.pw_uid, pw.pw_gid)


@pytest.fixture
def project(locald):
    """The user's project, ``~/src/webapp``: what locald's containers bind-mount."""
    proj = user_dirs(locald.pw, locald.home / "src" / "webapp" / "app").parent
    user_file(locald.pw, proj / "Procfile", b"web: python3 app/main.py\n")
    user_file(locald.pw, proj / "app" / "main.py", b"print('the user's work')\n")
    return proj


def state_dir(locald, project):
    """``locald_utils::project::get_state_dir``: the project's state
    directory below locald's data directory,
    ``~/.local/share/locald/projects/<name>-<sha256 of the canonical path, 8 hex digits>/.locald``."""
    real = os.path.realpath(project)
    short = hashlib.sha256(real.encode()).hexdigest()[:8]
    return locald.home / ".local/share/locald/projects" / f"{os.path.basename(real)}-{short}" / ".locald"


def container_leftovers(pw, bundle, container_id=None):
    """What a container run from ``bundle`` (made by the user, which must
    not exist yet) leaves there: its ``rootfs``, root's, mode 0700, holding
    the image's files (the user's) and the runtime's mount targets (root's:
    ``dev``, ``dev/pts``, ``dev/null``, ``proc``, ``sys``, ``run/shm`` with a
    mode 000 file); the user's ``config.json``; with ``container_id``,
    libcontainer's state as locald's shim keeps it (``run_bundle``:
    ``<bundle>/.locald-shim-state/<id>/`` with ``state.json`` and
    ``notify.sock``, root's, modes of ``create_dir_all`` under umask 022)."""
    make_runc_leftovers(bundle.parent, bundle.name)  # <bundle> the user's; rootfs, rootfs/run, run/shm root's 0700
    rootfs = bundle / "rootfs"
    for d in ("dev", "dev/pts", "proc", "sys"):
        (rootfs / d).mkdir()
        os.chmod(rootfs / d, 0o755)
    write(rootfs / "dev" / "null", b"", mode=0o666)  # a bind-mount target
    user_dirs(pw, rootfs / "etc")  # unpacked from the image by locald, as the user
    user_file(pw, rootfs / "etc" / "hostname", b"webapp\n")
    user_file(pw, bundle / "config.json", b'{"ociVersion": "1.0.2", "root": {"path": "rootfs"}}\n')
    if container_id is not None:
        state = bundle / ".locald-shim-state" / container_id
        state.mkdir(parents=True)
        for d in (state, state.parent):
            os.chmod(d, 0o755)
        write(state / "state.json", json.dumps({"id": container_id, "status": "stopped"}).encode(), mode=0o644)
        os.mknod(state / "notify.sock", 0o755 | stat.S_IFSOCK)
    return bundle


# -- the call sites ----------------------------------------------------------------------
#
# Each builds its layout and returns the path locald passes.

def cnb_build_dir(locald, project):
    """``prepare_cnb_container``: ``<state>/build``, the service's OCI bundle."""
    st = user_dirs(locald.pw, state_dir(locald, project))
    user_dirs(locald.pw, st / "cache" / "layers")
    user_file(locald.pw, st / "cache" / "layers" / "sha256-0a1b", b"cached layer")
    build = container_leftovers(locald.pw, st / "build", f"locald-{uuid.uuid4()}")
    user_dirs(locald.pw, build / "oci-layout" / "index.docker.io" / "library" / "locald-webapp" / "latest")
    return build


def cnb_rootfs(locald, project):
    """``LocalLayoutBundleSource::prepare_rootfs(<state>/build)``: the
    bundle's ``rootfs``; the bundle's state directory (root's) stays."""
    return cnb_build_dir(locald, project) / "rootfs"


def container_rootfs(locald, project):
    """``ContainerImage::prepare_rootfs(<state>/containers/<service>)``, from
    ``prepare_container``."""
    st = user_dirs(locald.pw, state_dir(locald, project))
    containers = user_dirs(locald.pw, st / "containers")
    container_leftovers(locald.pw, containers / "redis", f"locald-{uuid.uuid4()}")
    return container_leftovers(locald.pw, containers / "web", f"locald-{uuid.uuid4()}") / "rootfs"


def adhoc_bundle(locald, project):
    """``ContainerManager::run``: ``<data_local_dir>/bundles/<uuid>``, the
    container's id being the same uuid; in scope through the home's
    ``.local/share/locald`` alone (no ``.locald`` on the path)."""
    data = user_dirs(locald.pw, locald.home / ".local/share/locald")
    user_dirs(locald.pw, data / "oci-layout" / "blobs" / "sha256")
    container_leftovers(locald.pw, user_dirs(locald.pw, data / "bundles") / str(uuid.uuid4()), None)
    cid = str(uuid.uuid4())
    return container_leftovers(locald.pw, data / "bundles" / cid, cid)


def postgres_reset(locald, project):
    """``ProcessManager::reset``: ``<project>/.locald/services/postgres/<short name>``."""
    pg = user_dirs(locald.pw, project / ".locald" / "services" / "postgres")
    user_dirs(locald.pw, pg / "analytics")
    user_file(locald.pw, pg / "analytics" / "PG_VERSION", b"15\n")
    return container_leftovers(locald.pw, pg / "db")


class Site:
    def __init__(self, id, file, function, build):
        self.id, self.file, self.function, self.build = id, file, function, build


# (the test's id, locald's file and function, as the guide's table names them)
CALL_SITES = [
    Site("cnb-build-dir", "crates/locald-server/src/runtime/process.rs", "ProcessRuntime::prepare_cnb_container",
         cnb_build_dir),
    Site("cnb-rootfs", "crates/locald-builder/src/bundle_source.rs", "LocalLayoutBundleSource::prepare_rootfs",
         cnb_rootfs),
    Site("container-rootfs", "crates/locald-builder/src/image.rs", "ContainerImage::prepare_rootfs",
         container_rootfs),
    Site("adhoc-bundle", "crates/locald-server/src/container.rs", "ContainerManager::run", adhoc_bundle),
    Site("postgres-reset", "crates/locald-server/src/manager.rs", "ProcessManager::reset", postgres_reset),
]


# -- how the child runs ---------------------------------------------------------------------

PROBE = r"""
import errno, json, os
try:
    os.close(os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY))
    tty = "opened"
except OSError as e:
    tty = errno.errorcode[e.errno]
print(json.dumps({"env": dict(os.environ), "stdin": os.readlink("/proc/self/fd/0"),
                  "ttys": [os.isatty(fd) for fd in (0, 1, 2)], "session_leader": os.getsid(0) == os.getpid(),
                  "controlling_tty": tty, "ids": [os.getuid(), os.geteuid(), os.getgid(), os.getegid()],
                  "groups": os.getgroups(), "cwd": os.getcwd()}))
"""


@needs_root
def test_the_child_runs_as_locald_runs_it(locald):
    """What every shim below sees: locald-server's environment without
    LD_LIBRARY_PATH (which the parent had), stdin /dev/null, no terminal on
    any of its fds and none controlling, a session of its own, the user's
    ids and no supplementary group of root's."""
    cp = locald.run([SYSTEM_PYTHON, "-c", PROBE])
    assert cp.returncode == 0, cp.stderr
    seen = json.loads(cp.stdout)
    assert "LD_LIBRARY_PATH" in locald.env and "LD_LIBRARY_PATH" not in seen["env"]
    assert seen["env"] == {k: v for k, v in locald.env.items() if k != "LD_LIBRARY_PATH"}
    assert seen["stdin"] == "/dev/null" and seen["ttys"] == [False, False, False]
    assert seen["session_leader"] and seen["controlling_tty"] == "ENXIO"
    pw = locald.pw
    assert seen["ids"] == [pw.pw_uid, pw.pw_uid, pw.pw_gid, pw.pw_gid] and seen["groups"] == []
    assert seen["cwd"] == str(locald.home)


# -- each call site ------------------------------------------------------------------------

@needs_root
@pytest.mark.parametrize("site", CALL_SITES, ids=lambda s: s.id)
def test_call_site(locald, mechanism, project, site):
    """locald's own remove_dir_all fails (root's leftovers); the shim, run
    as locald runs it, removes the target through the mechanism for the
    user: exit 0, nothing printed, one audit record of the user's, and
    nothing outside the target changed, a canary beside it included."""
    target = site.build(locald, project)
    canary = Canary(target.parent / "canary")
    outside = snapshot(locald.home, full, skip=[target])
    own = locald.remove_dir_all(target)
    assert own.returncode != 0 and "Permission denied" in own.stderr, own.stderr  # so locald delegates
    before = len(mechanism.audit_lines())

    cp = locald.cleanup(target)

    assert (cp.returncode, cp.stdout, cp.stderr) == (i.EXIT_OK, "", "")
    assert not os.path.lexists(target)
    records = [r for r in mechanism.audits()[before:] if r.get("path") == str(target)]
    assert len(records) == 1, mechanism.audit_lines()[before:]
    assert records[0]["uid"] == str(locald.pw.pw_uid) and records[0]["result"] == "ok"
    assert int(records[0]["removed"]) > 0
    assert snapshot(locald.home, full, skip=[target]) == outside, "something outside the target changed"
    canary.check()


# -- each failure the guide documents --------------------------------------------------------

@needs_root
@pytest.mark.skipif(runcmod.available() is not None, reason=f"runc tier: {runcmod.available()}")
def test_a_running_container_is_in_use_until_it_is_stopped(locald, mechanism, project):
    """A real container (runc) still running from the service's build
    directory, its bundle, with its state in ``.locald-shim-state`` as
    locald's shim keeps it and the project bind-mounted: InUse (exit 8), one
    line naming the container's pid, nothing removed, its mounts intact.
    What the guide says to do: stop the container, then retry; that
    succeeds, and the project survives."""
    build = user_dirs(locald.pw, state_dir(locald, project)) / "build"
    c = runcmod.Container(build, build / ".locald-shim-state", project, locald.pw.pw_uid, locald.pw.pw_gid,
                          name=f"locald-{uuid.uuid4()}")
    source = snapshot(project, full)
    try:
        pid = c.run()
        mounts = runcmod.mount_count(pid)
        before = snapshot(build, full)

        cp = locald.cleanup(build)

        assert cp.returncode == i.EXIT_IN_USE, (cp.returncode, cp.stderr)
        assert cp.stderr.startswith("locald-shim: ") and cp.stderr.count("\n") == 1, cp.stderr
        assert "another mount namespace" in cp.stderr and f"pid {pid}" in cp.stderr, cp.stderr
        assert snapshot(build, full) == before
        assert runcmod.mount_count(pid) == mounts and os.path.exists(f"/proc/{pid}")

        c.stop()
        wait_until(lambda: not os.path.exists(f"/proc/{pid}"), 10, f"the container's init (pid {pid}) to exit")
        cp = locald.cleanup(build)
        assert (cp.returncode, cp.stdout, cp.stderr) == (i.EXIT_OK, "", "")
        assert not os.path.lexists(build)
    finally:
        c.stop()
    assert snapshot(project, full) == source


@needs_root
def test_polkit_denying_is_not_authorized(locald, mechanism, polkit, project):
    """No active session and no rule (polkit says no): exit 3, one line that
    tells the user the two ways in, nothing removed."""
    target = cnb_build_dir(locald, project)
    before = snapshot(target, full)
    polkit.allow(False)
    try:
        cp = locald.cleanup(target)
    finally:
        polkit.allow(True)
    assert cp.returncode == i.EXIT_NOT_AUTHORIZED, (cp.returncode, cp.stderr)
    assert cp.stderr.startswith("locald-shim: polkit denied") and cp.stderr.count("\n") == 1, cp.stderr
    assert "active local session" in cp.stderr and "50-locald-admin.rules.example" in cp.stderr
    assert snapshot(target, full) == before


@needs_root
@pytest.mark.parametrize("where", ["no-bus", "no-mechanism"])
def test_no_mechanism_is_exit_7(locald, project, where):
    """locald-admin absent: no system bus at all, or a bus where nothing
    provides org.locald.Admin1 (ServiceUnknown: not installed).  Exit 7,
    one line saying how to install it, nothing removed."""
    target = cnb_build_dir(locald, project)
    before = snapshot(target, full)
    with contextlib.ExitStack() as stack:
        address = ("unix:path=/nonexistent/system_bus_socket" if where == "no-bus"
                   else stack.enter_context(PrivateBus()).address)
        cp = locald.cleanup(target, env=dict(locald.env, DBUS_SYSTEM_BUS_ADDRESS=address))
    assert cp.returncode == i.EXIT_NO_SERVICE, (cp.returncode, cp.stderr)
    assert cp.stderr.startswith("locald-shim: locald-admin is not available (") and cp.stderr.count("\n") == 1
    assert "apt install locald-admin" in cp.stderr
    assert ("cannot connect to the system bus" if where == "no-bus" else "ServiceUnknown") in cp.stderr
    assert snapshot(target, full) == before


@needs_root
@pytest.mark.parametrize("relative", [".locald/build", "build"])
def test_a_relative_path_is_refused(locald, mechanism, project, relative):
    """A relative path is exit 4 (InvalidPath), never resolved against the
    working directory, here the one where it would name the build directory;
    the mechanism is not even asked."""
    target = cnb_build_dir(locald, project)
    cwd = target.parent.parent if relative.startswith(".locald") else target.parent
    assert (cwd / relative).resolve() == target
    before, records = snapshot(target, full), len(mechanism.audit_lines())
    cp = locald.cleanup(relative, cwd=cwd)
    assert cp.returncode == i.EXIT_INVALID_PATH, (cp.returncode, cp.stderr)
    assert cp.stderr == f"locald-shim: path must be absolute: {relative}\n"
    assert snapshot(target, full) == before and len(mechanism.audit_lines()) == records


@needs_root
def test_data_dir_outside_the_home_is_outside_scope(locald, mechanism, project, top):
    """``ContainerManager::run`` with ``XDG_DATA_HOME`` outside the home
    (locald's data directory is ``$XDG_DATA_HOME/locald``): the bundle has
    no ``.locald`` and is not below the home's ``.local/share/locald``, so it
    is under no anchor: exit 5, nothing removed."""
    data_home = user_dirs(locald.pw, top / "data")
    bundles = user_dirs(locald.pw, data_home / "locald" / "bundles")
    cid = str(uuid.uuid4())
    bundle = container_leftovers(locald.pw, bundles / cid, cid)
    before = snapshot(bundle, full)
    cp = locald.cleanup(bundle, env=dict(locald.env, XDG_DATA_HOME=str(data_home)))
    assert cp.returncode == i.EXIT_OUTSIDE_SCOPE, (cp.returncode, cp.stderr)
    assert "has no '.locald' component" in cp.stderr and cp.stderr.count("\n") == 1, cp.stderr
    assert snapshot(bundle, full) == before


@needs_root
def test_a_home_other_than_the_password_databases_keeps_the_projects_and_loses_the_bundles(locald, mechanism,
                                                                                          project, top):
    """locald run with another ``HOME``: its data directory is
    ``<HOME>/.local/share/locald``, not below the user's home in the
    password database.  A path there with a ``.locald`` (the project's
    state directory: sites 1 to 3) is anchored at that ``.locald`` instead,
    with its rules, and removed; a bundle (site 4, no ``.locald``) is under
    no anchor: exit 5, "not below the caller's own home directory", nothing
    removed."""
    other_home = user_dirs(locald.pw, top / "other-home")
    elsewhere = Locald(locald.pw, other_home, locald.shim, locald.env["DBUS_SYSTEM_BUS_ADDRESS"])
    target = cnb_build_dir(elsewhere, project)
    assert target.is_relative_to(other_home / ".local/share/locald") and ".locald" in target.parts
    cp = elsewhere.cleanup(target)
    assert cp.returncode == 0, (cp.returncode, cp.stderr)
    assert not target.exists() and target.parent.is_dir()
    bundle = adhoc_bundle(elsewhere, project)
    before = snapshot(bundle, full)
    cp = elsewhere.cleanup(bundle)
    assert cp.returncode == i.EXIT_OUTSIDE_SCOPE, (cp.returncode, cp.stderr)
    assert "not below the caller's own home directory" in cp.stderr and cp.stderr.count("\n") == 1, cp.stderr
    assert snapshot(bundle, full) == before


# -- the guide's tables (anywhere) -----------------------------------------------------------

def _section(title):
    text = GUIDE.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else len(text)]


EXIT_ROW = re.compile(r"\| (\d+) \| (–|`[\w.]+`) \| `(EXIT_\w+)` \|")


def test_the_guides_exit_code_table_is_the_contracts():
    """Every error of ``interface.ERRORS`` once, with its exit code and the
    constant that names it; every other ``EXIT_*`` constant with its value;
    nothing else (a new error or constant needs its row here)."""
    rows = [(int(m[1]), None if m[2] == "–" else m[2].strip("`"), m[3])
            for m in map(EXIT_ROW.match, _section("Exit codes and errors").splitlines()) if m]
    errors = [(code, name, const) for code, name, const in rows if name is not None]
    others = [(code, const) for code, name, const in rows if name is None]

    assert sorted(name for _, name, _ in errors) == sorted(s.dbus_name for s in i.ERRORS)
    for code, name, const in errors:
        assert code == i.ERROR_BY_NAME[name].exit_code == getattr(i, const), name
    # The constants of the error table's rows (EXIT_FAILED for ERROR_FAILED, ...) ...
    of_errors = {k for k, v in vars(i).items() if k.startswith("EXIT_") and hasattr(i, "ERROR_" + k[5:])}
    assert {const for _, _, const in errors} == of_errors
    # ... and those of no error (success, usage, no service, interrupted, ...)
    own = {k for k, v in vars(i).items() if k.startswith("EXIT_") and type(v) is int and k not in of_errors}
    assert sorted(const for _, const in others) == sorted(own)
    for code, const in others:
        assert code == getattr(i, const), const
    assert {code for code, _, _ in rows} == {code for code, _ in i.exit_statuses()}


def test_the_guide_names_each_call_site_this_file_runs():
    rows = [line for line in _section("The call sites").splitlines() if line.startswith("| ")]
    tested = {m[1] for line in rows for m in [re.search(r"`test_call_site\[([\w-]+)\]`", line)] if m}
    assert tested == {s.id for s in CALL_SITES}
    for site in CALL_SITES:
        [row] = [line for line in rows if f"`test_call_site[{site.id}]`" in line]
        assert f"`{site.file}`" in row and f"`{site.function}`" in row, row
