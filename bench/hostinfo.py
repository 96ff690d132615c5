"""The machine the figures come from: CPU, memory, kernel, versions, git head, load."""

import contextlib
import datetime
import os
import platform
import subprocess
from pathlib import Path

from harness import ROOT

from .sampling import NPROC


def machine_info():
    def cmd(*argv):
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
        except Exception:
            return None

    cpu = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = None
    with contextlib.suppress(OSError, IndexError):
        mem = int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1]) // 1024
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "nproc": NPROC,
        "kernel": platform.release(),
        "cpu_model": cpu,
        "mem_total_MB": mem,
        "python": platform.python_version(),
        "python_client": cmd("/usr/bin/python3", "-c", "import platform; print(platform.python_version())"),
        "dbus_daemon": cmd("dpkg-query", "-W", "-f=${Version}", "dbus-daemon"),
        "polkitd": cmd("dpkg-query", "-W", "-f=${Version}", "polkitd"),
        "os": cmd("sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"),
        "git_head": cmd("git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"),
        "git_dirty_code": bool(cmd("git", "-C", str(ROOT), "status", "--porcelain", "--", "mechanism", "client",
                                   "locald_admin")),
        "loadavg_start": os.getloadavg(),
    }
