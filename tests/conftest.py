import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support import IS_ROOT, ClientRunner  # noqa: E402

needs_root = pytest.mark.skipif(
    not IS_ROOT, reason="root tier: needs uid 0 (root-owned files, other users, mounts); run the suite as root")


@pytest.fixture(scope="session")
def clients():
    runner = ClientRunner()
    yield runner
    runner.close()


@pytest.fixture(autouse=True)
def _restore_openat2():
    yield
    from locald_admin.mechanism import fsops
    fsops.set_openat2(True)


def pytest_report_header(config):
    who = "root: root tier enabled" if IS_ROOT else f"uid {os.getuid()}: root tier skipped"
    return f"locald-admin tests as {who}"
