"""Mounts of a run: a tmpfs on a new directory in /tmp, unmounting it, the
file system a path is on."""

import os
import subprocess
import tempfile
import time
from pathlib import Path


def mount_tmpfs(what, options):
    """Mount a tmpfs with ``options`` on a new directory
    /tmp/locald-bench-<what>-*; returns its path (removed again if the
    mount fails)."""
    top = Path(tempfile.mkdtemp(prefix=f"locald-bench-{what}-", dir="/tmp"))
    try:
        os.chmod(top, 0o755)
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "locald-bench", str(top)], check=True)
    except BaseException:
        os.rmdir(top)
        raise
    return top


def unmount(path):
    if not os.path.ismount(path):
        return
    for _ in range(20):
        if subprocess.run(["umount", str(path)], capture_output=True).returncode == 0:
            return
        time.sleep(0.25)
    subprocess.run(["umount", "-l", str(path)], check=True)


def fs_of(path):
    cp = subprocess.run(["findmnt", "-n", "-o", "FSTYPE,SOURCE,OPTIONS", "-T", str(path)], capture_output=True,
                        text=True)
    return cp.stdout.strip()
