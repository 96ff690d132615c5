import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support import IS_ROOT, ClientRunner  # noqa: E402

from locald_admin.mechanism import fsops  # noqa: E402

needs_root = pytest.mark.skipif(
    not IS_ROOT, reason="root tier: needs uid 0 (root-owned files, other users, mounts); run the suite as root")


@pytest.fixture(scope="session")
def clients():
    runner = ClientRunner()
    yield runner
    runner.close()


@pytest.fixture(params=["openat2", "fallback"])
def mode(request):
    """Run the test with openat2, then with the forced fallback.

    In fallback mode openat2 is made unusable (any call fails the test), so
    the fallback code path is provably the one exercised; in openat2 mode the
    calls are counted, so openat2 is provably used.
    """
    real = fsops._raw_openat2
    calls = []
    if request.param == "openat2":
        fsops.set_openat2(True)
        if not fsops.openat2_available():
            pytest.skip("this kernel has no openat2 (ENOSYS)")

        def counting(*a):
            calls.append(a)
            return real(*a)
        fsops._raw_openat2 = counting
    else:
        fsops.set_openat2(False)

        def forbidden(*a):
            raise AssertionError("openat2 was called in forced-fallback mode")
        fsops._raw_openat2 = forbidden
    try:
        yield request.param
    finally:
        fsops._raw_openat2 = real
        fsops.set_openat2(True)
    if request.param == "openat2":
        assert calls, "openat2 mode, but openat2 was never called"


@pytest.fixture(autouse=True)
def _restore_openat2():
    yield
    fsops.set_openat2(True)


def pytest_report_header(config):
    who = "root: root tier enabled" if IS_ROOT else f"uid {os.getuid()}: root tier skipped"
    return f"locald-admin tests as {who}"
