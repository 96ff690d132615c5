"""The bad-input catalogue, at the D-Bus surface and at the command line.

Every case goes through three callers against the real mechanism on a
private bus (python-dbusmock's polkitd allows the action):

* ``raw``: a direct dbus-python call from the test process.  As root it
  skips polkit and the anchor owner check, so only the lexical rules and the
  fd-based scope resolution stand between the string and the file system.
* ``api``: ``request_cleanup`` (the bare call: it sends the string as is) run
  as the unprivileged client user (harness/programs/user_call.py); the path
  travels on stdin, so 1 MiB and
  control characters reach the bus unchanged.
* ``shim``: ``locald-shim admin cleanup PATH`` as the unprivileged user;
  exit codes from the README's table (the shim checks the lexical rules
  itself before the bus).

Each case runs against both resolution modes (``openat2`` and the forced
``--no-openat2`` fallback).  After every call the whole test tree (project,
siblings, a canary directory beside the project) is compared with a snapshot
taken before: an error must change nothing, a success must remove exactly the
target and what is below it.
"""

import errno
import json
import os
import re
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from locald_admin import interface as i
from locald_admin.mechanism import config as cfgmod
from locald_admin.mechanism import engine
from harness import IS_ROOT
from harness.calls import cleanup
from harness.mechanism import stack as mechanism_stack
from harness.trees import check_canary, listing, plant_canary, rm_rf, world_tmpdir

INVALID = i.ERROR_INVALID_PATH
OUTSIDE = i.ERROR_OUTSIDE_SCOPE
FAILED = i.ERROR_FAILED
OK = None

ERROR_BY_CLIENT_TYPE = {
    "CleanupFailedError": i.ERROR_FAILED,
    "NotAuthorizedError": i.ERROR_NOT_AUTHORIZED,
    "InteractiveAuthorizationRequiredError": i.ERROR_INTERACTIVE_AUTH_REQUIRED,
    "InvalidPathError": i.ERROR_INVALID_PATH,
    "OutsideScopeError": i.ERROR_OUTSIDE_SCOPE,
    "MountPointError": i.ERROR_MOUNT_POINT,
}
ERROR_BY_EXIT = {code: name for name, code in i.EXIT_CODE_BY_ERROR.items()
                 if name != i.ERROR_INTERACTIVE_AUTH_REQUIRED}

CALLERS = ["raw", "api", "shim"]

# A single argv string is limited to MAX_ARG_STRLEN (32 pages, 131072 bytes
# with its NUL): a 1 MiB path cannot be given to the shim at all (execve
# fails with E2BIG), so the CLI gets the longest string that can be passed.
SHIM_MAX_ARG = 131071


# -- the stack -------------------------------------------------------------------

@pytest.fixture(scope="module", params=["openat2", "fallback"])
def stack(request):
    with mechanism_stack(*(["--no-openat2"] if request.param == "fallback" else [])) as (bus, _, mech):
        bus.mode = request.param
        bus.mechanism = mech
        yield bus
        alive = mech.proc.poll() is None
        log = mech.log()
    assert alive, "the mechanism died during the bad-input catalogue"
    assert "Traceback" not in log, log[-3000:]


@pytest.fixture
def project(clients):
    """<top>/proj/.locald owned by the client user, root-owned leftovers in
    it (as runc leaves them), look-alike directories beside the anchor, and a
    canary directory beside the project.  Yields the anchor; ``top`` is
    ``anchor.parent.parent``."""
    top = world_tmpdir("locald-admin-badinput-")
    proj = top / "proj"
    anchor = proj / ".locald"
    (anchor / "run" / "shm").mkdir(parents=True)
    (anchor / "run" / "shm" / "data").write_text("leftover")
    (anchor / "keep").mkdir()
    (anchor / "keep" / "file").write_text("keep")
    for lookalike in ("x.locald", ".localdx", ".LOCALD", "locald", ".locald."):
        (proj / lookalike / "y").mkdir(parents=True)
        (proj / lookalike / "y" / "data").write_text("look-alike")
    subprocess.run(["chown", f"{clients.uid}:{clients.gid}", str(proj), str(anchor)], check=True)
    plant_canary(top)
    yield anchor
    check_canary(top)
    rm_rf(top)


snapshot = listing  # every path below ``top`` (bytes, relative), symlinks not followed


def subtree(snap, rel):
    rel = os.fsencode(rel)
    return {p for p in snap if p == rel or p.startswith(rel + b"/")}


# -- calling -----------------------------------------------------------------------

class Outcome:
    def __init__(self, error, message, raw=None):
        self.error, self.message, self.raw = error, message, raw

    def __repr__(self):
        return f"Outcome({self.error!r}, {self.message!r})"


def call(caller, bus, clients, path, timeout=60):
    """Cleanup(path) through ``caller``; the outcome as a D-Bus error name
    (None for success) and the one-line message."""
    if caller == "raw":
        error, message = cleanup(bus, path, timeout=timeout)
        return Outcome(error, message or "")
    if caller in ("api", "force"):
        req = {"op": "request" if caller == "api" else "force", "path": path, "timeout": timeout}
        cp = clients.run_program("user_call.py", bus_address=bus.address, input=json.dumps(req).encode(),
                                 timeout=timeout + 30)
        assert cp.returncode == 0, cp.stderr.decode(errors="replace")
        r = json.loads(cp.stdout)
        if r["ok"]:
            return Outcome(None, "", r)
        assert r["type"] in ERROR_BY_CLIENT_TYPE, r
        return Outcome(ERROR_BY_CLIENT_TYPE[r["type"]], r["message"], r)
    if caller == "shim":
        cp = clients.shim("admin", "cleanup", "--no-interactive", path, bus_address=bus.address,
                          timeout=timeout + 30)
        if cp.returncode == 0:
            assert cp.stderr == "", cp.stderr
            return Outcome(None, "", cp)
        assert cp.returncode in ERROR_BY_EXIT, (cp.returncode, cp.stderr)
        assert cp.stderr.startswith("locald-shim: ") and cp.stderr.endswith("\n"), cp.stderr
        return Outcome(ERROR_BY_EXIT[cp.returncode], cp.stderr[len("locald-shim: "):-1], cp)
    raise AssertionError(caller)


def check_message(out):
    assert "\n" not in out.message and "\r" not in out.message, out
    assert "Traceback" not in out.message, out


# -- lexical rules: refused before anything is opened ---------------------------

def _long(anchor, total, tail="run"):
    """``<anchor>////...///run``, exactly ``total`` bytes long: repeated
    slashes are normalised, so the target is ``run`` whatever the length."""
    head = str(anchor)
    pad = total - len(head.encode()) - len(tail)
    assert pad >= 1
    return head + "/" * pad + tail


LEXICAL = [
    # (id, path(anchor), error)
    ("empty", lambda a: "", INVALID),
    ("relative", lambda a: "proj/.locald/run", INVALID),
    ("relative-dot-first", lambda a: "./.locald/run", INVALID),
    ("relative-anchor-first", lambda a: ".locald/run", INVALID),
    ("root", lambda a: "/", INVALID),
    ("many-slashes-only", lambda a: "////", INVALID),
    ("slash-dot", lambda a: "/.", INVALID),
    ("slash-dotdot", lambda a: "/..", INVALID),
    ("dot-first", lambda a: "/." + str(a / "run"), INVALID),
    ("dotdot-first", lambda a: "/.." + str(a / "run"), INVALID),
    ("dot-above-anchor", lambda a: f"{a.parent.parent}/./proj/.locald/run", INVALID),
    ("dotdot-above-anchor", lambda a: f"{a.parent}/../proj/.locald/run", INVALID),
    ("dot-right-after-anchor", lambda a: f"{a}/./run", INVALID),
    ("dotdot-right-after-anchor", lambda a: f"{a}/../.locald/run", INVALID),
    ("dotdot-escaping-the-anchor", lambda a: f"{a}/../../canary/precious", INVALID),
    ("dot-middle-below-anchor", lambda a: f"{a}/run/./shm", INVALID),
    ("dotdot-middle-below-anchor", lambda a: f"{a}/run/../keep", INVALID),
    ("dot-last", lambda a: f"{a}/run/.", INVALID),
    ("dotdot-last", lambda a: f"{a}/run/..", INVALID),
    ("anchor-then-dot-last", lambda a: f"{a}/.", INVALID),
    ("anchor-then-dotdot-last", lambda a: f"{a}/..", INVALID),
    ("dotdot-with-trailing-slash", lambda a: f"{a}/run/../", INVALID),
    ("dotdot-among-slashes", lambda a: f"{a}//..//keep", INVALID),
    ("4097-bytes", lambda a: _long(a, 4097), INVALID),
    ("1-MiB", lambda a: _long(a, 1 << 20), INVALID),
    ("no-anchor", lambda a: str(a.parent.parent / "canary" / "precious"), OUTSIDE),
    ("etc-passwd", lambda a: "/etc/passwd", OUTSIDE),
    ("x.locald", lambda a: str(a.parent / "x.locald" / "y"), OUTSIDE),
    (".localdx", lambda a: str(a.parent / ".localdx" / "y"), OUTSIDE),
    (".LOCALD", lambda a: str(a.parent / ".LOCALD" / "y"), OUTSIDE),
    ("locald-without-dot", lambda a: str(a.parent / "locald" / "y"), OUTSIDE),
    (".locald.", lambda a: str(a.parent / ".locald." / "y"), OUTSIDE),
]


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("case,make,error", LEXICAL, ids=[c[0] for c in LEXICAL])
def test_refused_paths_change_nothing(stack, project, clients, caller, case, make, error):
    top = project.parent.parent
    path = make(project)
    if caller == "shim" and len(path.encode()) > SHIM_MAX_ARG:
        path = _long(project, SHIM_MAX_ARG)  # the longest the CLI can carry
    before = snapshot(top)
    out = call(caller, stack, clients, path)
    assert out.error == error, (case, out)
    check_message(out)
    assert snapshot(top) == before
    assert (project / "run" / "shm" / "data").read_text() == "leftover"


def test_a_1_mib_path_really_crosses_the_bus(stack, project, clients):
    """1 MiB is far below D-Bus' 128 MiB message limit: the mechanism itself
    answers InvalidPath, for root and user.  Its message quotes the length
    of the call (longer than the service reads: busio.MAX_INCOMING), and
    the audit record does not carry the path."""
    path = _long(project, 1 << 20)
    for caller in ("raw", "api"):
        out = call(caller, stack, clients, path)
        assert out.error == INVALID, out
        sizes = [int(n) for n in re.findall(r"\d+", out.message)]
        assert any(n >= 1 << 20 for n in sizes) and str(i.MAX_PATH_BYTES) in out.message, out
        assert len(out.message) < 1000
    assert (project / "run").is_dir()


def test_an_argv_too_long_for_execve_is_the_callers_problem(clients, project):
    """The CLI cannot even be started with a 1 MiB argument (E2BIG): nothing
    is sent; documented here so that nobody expects exit 4 for it."""
    with pytest.raises(OSError) as ei:
        clients.shim("admin", "cleanup", _long(project, 1 << 20), bus_address="unix:path=/nonexistent")
    assert ei.value.errno == errno.E2BIG
    assert (project / "run").is_dir()


@pytest.mark.parametrize("caller", CALLERS)
def test_the_4096_byte_boundary(stack, project, clients, caller):
    """4096 bytes pass the lexical rules (the same target with one more slash
    is InvalidPath); the slashes are normalised and ``run`` is removed."""
    top = project.parent.parent
    before = snapshot(top)
    assert subtree(before, "proj/.locald/run")
    out = call(caller, stack, clients, _long(project, 4097))
    assert out.error == INVALID and snapshot(top) == before
    out = call(caller, stack, clients, _long(project, 4096))
    assert out.error is OK, out
    assert snapshot(top) == before - subtree(before, "proj/.locald/run")


def _mkdirs_fd_relative(base, names):
    """Create base/n1/n2/... relative to held fds (the full path may be longer
    than the kernel accepts in one string)."""
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for n in names:
            os.mkdir(n, dir_fd=fd)
            nfd = os.open(n, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        os.close(os.open("leaf", os.O_CREAT | os.O_WRONLY, 0o600, dir_fd=fd))
    finally:
        os.close(fd)


@pytest.mark.parametrize("caller", CALLERS)
def test_a_real_entry_at_a_4096_byte_path_is_removed(stack, project, clients, caller):
    """A path of exactly 4096 bytes naming an entry that exists (made with
    fd-relative mkdirs; no single syscall could take the whole string): the
    mechanism resolves it component by component and removes the target."""
    head = len(str(project).encode()) + 1
    names, used = [], head
    while 4096 - used > 201:
        names.append("d" * 200)
        used += 201
    last = "e" * (4096 - used - 1 - len("/leaf") + 1)
    assert 1 <= len(last) <= 255
    names.append(last)
    _mkdirs_fd_relative(str(project), names)
    path = str(project) + "/" + "/".join(names) + "/leaf"
    assert len(path.encode()) == 4096
    top = project.parent.parent
    before = snapshot(top)
    out = call(caller, stack, clients, path)
    assert out.error is OK, out
    rel = os.fsencode("proj/.locald/" + "/".join(names) + "/leaf")
    assert rel in before
    assert snapshot(top) == before - {rel}


def test_a_component_longer_than_name_max_is_failed(stack, project, clients):
    """A last component longer than NAME_MAX (255) passes the lexical rules
    (they bound the whole path only) and then fails in the kernel: Failed
    with ENAMETOOLONG's text, nothing touched.  A longer component *above*
    the last is the same."""
    top = project.parent.parent
    before = snapshot(top)
    for path in (f"{project}/{'n' * 256}", f"{project}/{'n' * 300}/x"):
        for caller in CALLERS:
            out = call(caller, stack, clients, path)
            assert out.error == FAILED and "too long" in out.message, (caller, path, out)
            check_message(out)
    assert snapshot(top) == before


# -- valid, odd paths: exactly the target goes ------------------------------------

def _mk_dir_with_content(anchor, name):
    d = os.path.join(os.fsencode(anchor), os.fsencode(name))
    os.mkdir(d)
    os.mkdir(os.path.join(d, b"sub"))
    with open(os.path.join(d, b"sub", b"f"), "w") as f:
        f.write("x")
    os.chmod(os.path.join(d, b"sub"), 0o700)  # root-owned 0700, as runc leaves them
    return name


def _mk_nested_anchor(anchor):
    """sub/.locald below the anchor: only the first .locald is the anchor,
    the second is an ordinary name."""
    (anchor / "sub").mkdir()
    return _mk_dir_with_content(anchor, "sub/.locald")


def _mk_file(anchor, name):
    Path(anchor, name).write_text("x")
    os.chmod(Path(anchor, name), 0)
    return name


def _mk_fifo(anchor, name):
    os.mkfifo(Path(anchor, name))
    return name


def _mk_socket(anchor, name):
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind(str(Path(anchor, name)))
    finally:
        s.close()
    return name


def _mk_chardev(anchor, name):
    os.mknod(Path(anchor, name), 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # like /dev/null
    return name


def _mk_symlink_to_canary(anchor, name):
    os.symlink(anchor.parent.parent / "canary", Path(anchor, name))
    return name


def _mk_hardlink_to_canary(anchor, name):
    os.link(anchor.parent.parent / "canary" / "precious", Path(anchor, name))
    return name


# (id, make(anchor) -> name below the anchor, path(anchor, name) -> str, needs root)
VALID = [
    ("plain-dir", lambda a: _mk_dir_with_content(a, "plain"), None, False),
    ("trailing-slash", lambda a: _mk_dir_with_content(a, "ts"), lambda a, n: f"{a}/{n}/", False),
    ("trailing-slashes", lambda a: _mk_dir_with_content(a, "ts"), lambda a, n: f"{a}/{n}///", False),
    ("many-slashes", lambda a: _mk_dir_with_content(a, "ms"),
     lambda a, n: "//" + str(a.parent.parent).replace("/", "///") + "//proj////.locald/////" + n, False),
    ("three-dots", lambda a: _mk_dir_with_content(a, "..."), None, False),
    ("dotdot-prefix", lambda a: _mk_dir_with_content(a, "..x"), None, False),
    ("dot-prefix", lambda a: _mk_dir_with_content(a, ".x"), None, False),
    ("dash-name", lambda a: _mk_dir_with_content(a, "-rf"), None, False),
    ("space-only", lambda a: _mk_dir_with_content(a, " "), None, False),
    ("newline", lambda a: _mk_dir_with_content(a, "a\nb"), None, False),
    ("newline-audit-forgery", lambda a: _mk_dir_with_content(a, "x\naudit sender=forged result=ok"), None, False),
    ("tab-cr", lambda a: _mk_dir_with_content(a, "t\tc\rr"), None, False),
    ("control-chars", lambda a: _mk_dir_with_content(a, "c\x01\x02\x1f\x7f"), None, False),
    ("escape-sequence", lambda a: _mk_dir_with_content(a, "\x1b[31mred\x1b[0m"), None, False),
    ("quotes-backslash", lambda a: _mk_dir_with_content(a, "q\"'\\ =x"), None, False),
    ("non-ascii", lambda a: _mk_dir_with_content(a, "日本語-café"), None, False),
    ("emoji", lambda a: _mk_dir_with_content(a, "🎉"), None, False),
    ("rtl-override", lambda a: _mk_dir_with_content(a, "abc\u202edcb"), None, False),
    ("unicode-line-separator", lambda a: _mk_dir_with_content(a, "ls\u2028ps\u2029"), None, False),
    ("nested-locald-below-anchor", lambda a: _mk_nested_anchor(a), None, False),
    ("file-mode-000", lambda a: _mk_file(a, "victim"), None, False),
    ("file-with-trailing-slash", lambda a: _mk_file(a, "victim"), lambda a, n: f"{a}/{n}/", False),
    ("fifo", lambda a: _mk_fifo(a, "fifo"), None, False),
    ("socket", lambda a: _mk_socket(a, "sock"), None, False),
    ("char-device", lambda a: _mk_chardev(a, "null"), None, True),
    ("symlink-to-canary", lambda a: _mk_symlink_to_canary(a, "link"), None, False),
    ("hardlink-to-canary", lambda a: _mk_hardlink_to_canary(a, "hl"), None, False),
    ("missing", lambda a: "no/such/entry", None, False),
]


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("case,make,mkpath,needs_root", VALID, ids=[c[0] for c in VALID])
def test_odd_but_valid_targets_remove_exactly_the_target(stack, project, clients, caller, case, make, mkpath,
                                                         needs_root):
    if needs_root and not IS_ROOT:
        pytest.skip("mknod of a device node needs root")
    name = make(project)
    path = mkpath(project, name) if mkpath else f"{project}/{name}"
    top = project.parent.parent
    before = snapshot(top)
    out = call(caller, stack, clients, path)
    assert out.error is OK, (case, out)
    expected = before - subtree(before, "proj/.locald/" + name)
    assert bool(subtree(before, "proj/.locald/" + name)) == (case != "missing")
    if case == "missing":
        assert subtree(before, "proj/.locald/" + name) == set()
    else:
        assert not os.path.lexists(os.path.join(os.fsencode(project), os.fsencode(name)))
    assert snapshot(top) == expected
    assert (project / "run" / "shm" / "data").read_text() == "leftover"  # the siblings stay
    assert (top / "canary" / "precious").read_text() == "canary"  # links: the target never followed


@pytest.mark.parametrize("caller", CALLERS)
def test_names_that_are_not_utf8_go_with_their_parent(stack, project, clients, caller):
    """D-Bus strings are UTF-8, so such a name cannot be sent; it is removed
    when its parent is the target."""
    d = os.path.join(os.fsencode(project), b"parent")
    os.mkdir(d)
    for n in (b"\xff\xfe", b"latin1-\xe9", b"a\nb\xff"):
        os.mkdir(os.path.join(d, n))
        with open(os.path.join(d, n, b"f\x80"), "w") as f:
            f.write("x")
    top = project.parent.parent
    before = snapshot(top)
    out = call(caller, stack, clients, f"{project}/parent")
    assert out.error is OK, out
    assert snapshot(top) == before - subtree(before, "proj/.locald/parent")


def test_a_name_that_is_not_utf8_is_refused_by_the_shim(stack, project, clients):
    """The CLI gets bytes from argv; one that D-Bus cannot carry is exit 4,
    before the bus, nothing removed."""
    d = os.path.join(os.fsencode(project), b"\xff")
    os.mkdir(d)
    cp = clients.shim("admin", "cleanup", os.path.join(os.fsencode(project), b"\xff"), bus_address=stack.address)
    assert cp.returncode == i.EXIT_INVALID_PATH, cp.stderr
    assert "UTF-8" in cp.stderr and cp.stderr.count("\n") == 1
    assert os.path.isdir(d)


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("suffix", ["", "/", "//"])
def test_the_anchor_itself_is_removed(stack, project, clients, caller, suffix):
    top = project.parent.parent
    before = snapshot(top)
    out = call(caller, stack, clients, str(project) + suffix)
    assert out.error is OK, out
    assert not project.exists() and project.parent.is_dir()
    assert snapshot(top) == before - subtree(before, "proj/.locald")


# -- NUL: no caller can send it ------------------------------------------------------

def test_a_nul_byte_never_reaches_the_mechanism(stack, project, clients):
    """D-Bus strings cannot hold NUL: dbus-python refuses to marshal it;
    ``force_remove_dir_all`` refuses it lexically (InvalidPathError).  (The
    bare ``request_cleanup`` hands it to busio, whose codec refuses to
    encode it (BusError): MechanismUnavailable, which the public helpers
    turn into the caller's own PermissionError.)"""
    path = f"{project}/run\0/x"
    con = stack.connect()
    try:
        method = con.get_object(i.BUS_NAME, i.OBJECT_PATH).get_dbus_method(i.METHOD_CLEANUP, i.INTERFACE)
        with pytest.raises((ValueError, TypeError)):
            method(path, signature="s")
    finally:
        con.close()
    out = call("force", stack, clients, path)
    assert out.error == INVALID and "NUL" in out.message, out
    assert (project / "run" / "shm" / "data").read_text() == "leftover"
    assert stack.mechanism.proc.poll() is None
    assert call("raw", stack, clients, f"{project}/nothing-here").error is OK


# -- the CLI's own messages ------------------------------------------------------------

@pytest.mark.parametrize("path", ["rel\nx/.locald/run", "/tmp/x/.locald/a\nb/../c"], ids=["relative", "dotdot"])
def test_shim_refusal_is_one_line_even_with_a_newline_in_the_path(stack, clients, path):
    cp = clients.shim("admin", "cleanup", path, bus_address=stack.address)
    assert cp.returncode == i.EXIT_INVALID_PATH
    assert cp.stderr.count("\n") == 1, cp.stderr


# -- /.locald: the anchor at the root -------------------------------------------------

@pytest.mark.parametrize("caller", CALLERS)
def test_root_level_anchor_that_does_not_exist_is_success(stack, clients, caller):
    if os.path.lexists("/.locald"):
        pytest.skip("/.locald exists on this machine; not touching it")
    for path in ("/.locald", "/.locald/x", "//.locald//x/y/"):
        out = call(caller, stack, clients, path)
        assert out.error is OK, (path, out)
    assert not os.path.lexists("/.locald")


@pytest.mark.skipif(not IS_ROOT, reason="creating /.locald needs root")
def test_root_level_anchor_that_exists(stack, clients):
    """A root-owned /.locald: outside a user's scope (OutsideScope, nothing
    removed).  "/" is no default allowed root (the defaults are what the
    unit makes writable), so root's raw call is refused too, by the
    configuration; allowed, it removes below it and the anchor itself."""
    try:
        os.mkdir("/.locald", 0o755)
    except FileExistsError:
        pytest.skip("/.locald exists on this machine; not touching it")
    try:
        os.mkdir("/.locald/x")
        Path("/.locald/x/f").write_text("x")
        for caller in ("api", "shim"):
            out = call(caller, stack, clients, "/.locald/x")
            assert out.error == OUTSIDE, (caller, out)
            assert Path("/.locald/x/f").exists()
        out = call("raw", stack, clients, "/.locald/x")
        assert out.error == OUTSIDE and "not below any allowed root" in out.message, out
        assert Path("/.locald/x/f").exists()
        everywhere = cfgmod.parse("[scope]\nallow = /\n")
        assert engine.cleanup("/.locald/x", 0, everywhere) == 2
        assert os.listdir("/.locald") == []
        assert engine.cleanup("/.locald", 0, everywhere) == 1
        assert not os.path.lexists("/.locald")
    finally:
        if os.path.lexists("/.locald"):
            rm_rf("/.locald")


# -- magic links above the anchor ------------------------------------------------------

@pytest.mark.parametrize("caller", CALLERS)
def test_proc_self_root_magic_link_above_the_anchor(stack, project, clients, caller):
    """``/proc/self/root/<project>/.locald/x`` names a real project through a
    magic link.  openat2 (RESOLVE_NO_MAGICLINKS on the prefix): OutsideScope,
    nothing removed.  The fallback cannot tell a magic link from a symlink
    and resolves it to the mechanism's own root, the same directory: the
    anchor owner check on the fd still holds (the anchor is the caller's),
    so it is a success and removes exactly the target - the defined
    behaviour of the fallback."""
    top = project.parent.parent
    name = _mk_dir_with_content(project, "x")
    path = f"/proc/self/root{project}/{name}"
    before = snapshot(top)
    assert subtree(before, "proj/.locald/x")
    out = call(caller, stack, clients, path)
    check_message(out)
    if stack.mode == "openat2":
        assert out.error == OUTSIDE and "magic link" in out.message, out
        assert snapshot(top) == before
    else:
        assert out.error is OK, out
        assert snapshot(top) == before - subtree(before, "proj/.locald/x")


@pytest.mark.skipif(not IS_ROOT, reason="needs another user's anchor")
def test_proc_self_root_does_not_widen_scope_in_either_mode(stack, project, clients):
    """Whatever the mode, the magic link cannot reach an anchor the caller
    does not own: root-owned anchor through /proc/self/root is OutsideScope
    for the user, nothing removed.  (Its project directory is root's too:
    a root-made .locald in the caller's own project would count as theirs.)"""
    os.chown(project, 0, 0)
    os.chown(project.parent, 0, 0)
    top = project.parent.parent
    before = snapshot(top)
    for caller in ("api", "shim"):
        out = call(caller, stack, clients, f"/proc/self/root{project}/run")
        assert out.error == OUTSIDE, (caller, out)
    assert snapshot(top) == before
