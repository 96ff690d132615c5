"""The mechanism runs under glibc's malloc (``PYTHONMALLOC=malloc``), which
gives freed memory back after an attack where pymalloc's arenas did not
(mechanism/memory.py: exec_under_system_malloc, threat model V17).  It gets
there by executing itself again, once, keeping its pid; started isolated
(the installed launcher's ``-I``), the new interpreter is just as isolated.

What is asserted is what the kernel shows of the running process: its
environment and its command line.  The memory figure itself is the
benchmark's (docs/performance.md, ``attack``)."""

import os
import subprocess
from pathlib import Path

from locald_admin import interface as i
from harness.buses import PrivateBus, wait_for_name
from harness.mechanism import Mechanism
from harness.waiting import terminate

STAGED_EXEC = "usr/lib/locald-admin/locald-admin-mechanism"


def _environ(pid):
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def _cmdline(pid):
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def test_python_m_mechanism_runs_again_under_system_malloc():
    with PrivateBus() as bus, Mechanism(bus) as mech:
        env, argv = _environ(mech.proc.pid), _cmdline(mech.proc.pid)
        assert env.get("PYTHONMALLOC") == "malloc", env
        assert argv[1:3] == ["-m", "locald_admin.mechanism"], argv


def test_installed_launcher_runs_again_isolated_under_system_malloc(staged):
    """The launcher's -I ignores PYTHONMALLOC; the new interpreter honours
    the environment, so every other PYTHON* variable is dropped first: a
    PYTHONPATH still cannot choose the code (tests/test_install.py), and the
    caller's own PYTHONMALLOC does not win."""
    launcher = staged / STAGED_EXEC
    hostile = {"PYTHONPATH": "/nonexistent/evil", "PYTHONWARNINGS": "error", "PYTHONMALLOC": "debug",
               "PYTHONINSPECT": "1"}
    with PrivateBus() as bus:
        proc = subprocess.Popen([str(launcher), "--address", bus.address], stdin=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, env={"PATH": "/usr/bin:/bin", **hostile})
        try:
            wait_for_name(bus.address, i.BUS_NAME, proc=proc)
            env, argv = _environ(proc.pid), _cmdline(proc.pid)
            assert env.get("PYTHONMALLOC") == "malloc", env
            assert not {k for k in env if k.startswith("PYTHON")} - {"PYTHONMALLOC"}, env
            # The launcher's -I as -s -P (-E dropped for PYTHONMALLOC), its -S and -B kept.
            assert argv[1:6] == ["-s", "-P", "-S", "-B", str(launcher)] and argv[6:] == ["--address", bus.address], argv
        finally:
            terminate(proc)
        assert b"Traceback" not in proc.stderr.read()
