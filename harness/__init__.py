"""Test harness for locald-admin: private buses and polkit, the mechanism as
a subprocess, unprivileged clients, trees and snapshots.

Not part of the product (neither installed nor packaged): the tests
(tests/conftest.py), bench/ and scripts/demo.py put the
repository root on sys.path and import it from there.

  buses       private dbus-daemon, python-dbusmock's polkitd (context managers)
  realsystem  Debian's system-bus policy, the real polkitd, the installed action
  mechanism   the mechanism subprocess, its audit lines, the fault-injection hook
  users       test users and the unprivileged client runner
  calls       the one raw Cleanup caller (dbus-python, as the test process)
  trees       temporary directories, tree builders, snapshots, canaries, mounts
  waiting     polling with a deadline, stopping processes
  programs/   the programs clients and attackers run, as real files
"""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROGRAMS = Path(__file__).resolve().parent / "programs"
IS_ROOT = os.geteuid() == 0
