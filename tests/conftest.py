import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# The test harness (not part of the product) lives in <repository>/harness.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# scripts/sanitize: the C walk, the C scan of /proc and the C reader of
# D-Bus values built with ASan/UBSan, loaded in place of the installed ones
# before anything imports them.
for _var, _name in (("LOCALD_ADMIN_CWALK", "locald_admin.fs._cwalk"),
                    ("LOCALD_ADMIN_CPROCSCAN", "locald_admin.fs._cprocscan"),
                    ("LOCALD_ADMIN_CWIRE", "locald_admin._cwire")):
    if os.environ.get(_var):
        import importlib.util

        _spec = importlib.util.spec_from_file_location(_name, os.environ[_var])
        _mod = importlib.util.module_from_spec(_spec)
        _spec.loader.exec_module(_mod)
        sys.modules[_name] = _mod

from harness import IS_ROOT  # noqa: E402
from harness import fsmode, syscalls  # noqa: E402
from harness import mechanism as started_mechanisms  # noqa: E402
from harness.buses import PolkitMock, PrivateBus  # noqa: E402
from harness.mechanism import Mechanism  # noqa: E402
from harness.trees import rm_rf, umount, world_tmpdir  # noqa: E402
from harness.users import ClientRunner  # noqa: E402

from locald_admin.fs import fsops, removal, walk  # noqa: E402

needs_root = pytest.mark.skipif(
    not IS_ROOT, reason="root tier: needs uid 0 (root-owned files, other users, mounts); run the suite as root")


@pytest.fixture
def top():
    """A directory every user can reach (the tests' other users make and
    remove trees in it), removed with whatever is left after the test."""
    t = world_tmpdir()
    yield t
    rm_rf(t)


@pytest.fixture(scope="session")
def clients():
    runner = ClientRunner()
    yield runner
    runner.close()


@pytest.fixture(params=fsmode.MODES)
def mode(request):
    """Run the test with the compiled walk, with the Python walk and
    openat2, and with the Python walk and the forced fallback.

    In fallback mode openat2 is made unusable (any call fails the test), so
    the fallback code path is provably the one exercised; in openat2 mode the
    calls are counted, so openat2 is provably used.  In compiled mode the C
    walk's calls are counted and the Python walk is made unusable, so the C
    walk provably ran (whenever the test asked for a removal walk at all: a
    listing-only test runs the same in compiled and openat2 mode); in the
    other two the C walk is unusable.
    """
    param = request.param
    real = fsops._raw_openat2
    cwalk = fsops.compiled_walk()
    real_cwalk = cwalk.remove_tree if cwalk is not None else None
    real_python, real_remove = removal.python_remove_tree, walk.remove_tree
    calls, cwalks, removals = [], [], []
    if param in ("openat2", "compiled") and not fsops.kernel_has_openat2():
        pytest.skip("this kernel has no openat2 (ENOSYS)")
    if param == "compiled" and cwalk is None:
        pytest.skip("the compiled walk is not built (locald_admin.fs._cwalk: no gcc or Python headers "
                    "at install time; scripts/bootstrap builds it)")
    if param == "fallback":
        def forbidden(*a):
            raise AssertionError("openat2 was called in forced-fallback mode")
        fsops._raw_openat2 = forbidden
    else:
        def counting(*a):
            calls.append(a)
            return real(*a)
        fsops._raw_openat2 = counting
    if param == "compiled":
        def counting_cwalk(*a):
            cwalks.append(a[1])
            return real_cwalk(*a)

        def python_forbidden(*a):
            raise AssertionError("the Python walk ran in compiled mode")
        cwalk.remove_tree = counting_cwalk
        removal.python_remove_tree = python_forbidden
    elif cwalk is not None:
        def cwalk_forbidden(*a):
            raise AssertionError(f"the C walk ran in {param} mode")
        cwalk.remove_tree = cwalk_forbidden
    def counting_remove(*a, **kw):
        removals.append(a[1])
        return real_remove(*a, **kw)
    walk.remove_tree = counting_remove
    try:
        # (share: what a test's supervised child counts, harness.syscalls, counts here too)
        with fsmode.forced(param != "fallback", param == "compiled"), syscalls.share(calls, cwalks, removals):
            yield param
    finally:
        fsops._raw_openat2 = real
        removal.python_remove_tree, walk.remove_tree = real_python, real_remove
        if cwalk is not None:
            cwalk.remove_tree = real_cwalk
    if param == "openat2":
        assert calls, "openat2 mode, but openat2 was never called"
    if param == "compiled" and removals:  # (a listing-only test asks for none)
        assert cwalks, "compiled mode, but the C walk never ran"


@pytest.fixture
def mounter(tmp_path):
    """mount(*args, target): run mount(8); ``mount.bind(src, target)``.
    Everything it mounted is unmounted in teardown, lazily if busy."""
    done = []

    def mount(*args, target):
        subprocess.run(["mount", *args, os.fsdecode(target)], check=True, capture_output=True)
        done.append(target)

    def bind(src, target):
        mount("--bind", os.fsdecode(src), target=target)

    mount.bind = bind
    try:
        yield mount
    finally:
        for target in reversed(done):
            umount(target, check=False)


@pytest.fixture(scope="module")
def bus():
    """A private system bus (permissive policy) per test module; modules that
    need another policy define their own ``bus``."""
    with PrivateBus() as b:
        yield b


@pytest.fixture(scope="module")
def polkit(bus):
    """python-dbusmock's polkitd on ``bus``; denies everything until told."""
    with PolkitMock(bus) as p:
        yield p


@pytest.fixture(scope="module")
def mechanism(bus, polkit):
    """The real mechanism on ``bus`` with the polkit mock (the dbusmock
    tier's); modules that need another define their own ``mechanism``."""
    with Mechanism(bus, "--polkit-timeout", "2") as m:
        yield m


@pytest.fixture
def allowed(polkit, mechanism):
    """The polkit mock allowing the action for one test, its calls cleared."""
    polkit.allow(True)
    polkit.clear()
    yield polkit
    polkit.allow(False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test's report carries the log of every mechanism that ran
    during it (started by it or by a fixture it uses), so that a CI failure
    shows what the mechanism said.  Named "Captured log ...": shown with the
    captured output, and written to JUnit XML as the test's log."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for m in started_mechanisms.STARTED:
            report.sections.append((f"Captured log {call.when}: mechanism {m.describe()}", m.log_tail()))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    yield
    started_mechanisms.forget_stopped()


def pytest_report_header(config):
    who = "root: root tier enabled" if IS_ROOT else f"uid {os.getuid()}: root tier skipped"
    return f"locald-admin tests as {who}"


@pytest.fixture(scope="session")
def staged():
    """`make install DESTDIR=<tmp>` as tests/test_install.py does, but run in a
    copy of the source tree: pip writes build metadata beside the sources,
    which a user who cannot write to the repository cannot do, and which
    concurrent runs should not share.  World readable, so that any test's
    dbus-daemon can exec from it."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    top = world_tmpdir("locald-admin-stage-")
    src, dest = top / "src", top / "root"
    ignore = shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__", ".pytest_cache",
                                    ".hypothesis", "tests", "harness")
    shutil.copytree(Path(__file__).resolve().parent.parent, src, ignore=ignore)
    cp = subprocess.run(["make", "-C", str(src), "install", f"DESTDIR={dest}"], capture_output=True, text=True,
                        timeout=300)
    try:
        if cp.returncode != 0 and "No module named pip" in cp.stderr:
            pytest.skip("Debian's python3-pip is not installed (scripts/bootstrap installs it as root)")
        assert cp.returncode == 0, cp.stderr
        yield dest
    finally:
        rm_rf(top)
