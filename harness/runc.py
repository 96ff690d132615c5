"""Real containers made by Debian's runc, for the leftovers it really leaves.

``Container(bundle, state, src)`` writes an OCI bundle at ``bundle`` (a
static busybox rootfs, owned like locald leaves it: by the project's user),
with runc's default mounts plus a bind mount of ``src`` at ``/app`` and a
tmpfs at ``/run/shm``, and runs it detached with ``runc --root state``
(stdin, stdout and stderr on /dev/null: pipes would be held open by the
container).  runc creates the mount targets inside the rootfs as root, and
its state directory, as root, which is what the project's user then cannot
remove.  ``user=(uid, gid)`` runs its process as that user (an image's
``USER``), otherwise as root.  ``stop()`` deletes the container (``runc delete --force``) and its
cgroups, whatever state it is in.
"""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

RUNC = shutil.which("runc") or "/usr/sbin/runc"
BUSYBOX = "/bin/busybox"
CGROUP_PARENT = "locald-admin-test"


def available():
    """None when runc and a static busybox are here, else why not."""
    if not os.path.exists(RUNC):
        return "runc is not installed (Debian package runc; scripts/bootstrap installs it)"
    if not os.path.exists(BUSYBOX):
        return "a static busybox is not installed (Debian package busybox-static)"
    return None


class Container:
    def __init__(self, bundle, state, src, uid, gid, name="web", user=None):
        self.bundle, self.state, self.name = Path(bundle), Path(state), name
        rootfs = self.bundle / "rootfs"
        (rootfs / "bin").mkdir(parents=True, exist_ok=True)
        shutil.copy2(BUSYBOX, rootfs / "bin" / "busybox")
        for tool in ("sh", "sleep"):
            os.symlink("busybox", rootfs / "bin" / tool)
        subprocess.run([RUNC, "spec", "--bundle", str(self.bundle)], check=True, capture_output=True)
        spec = json.loads((self.bundle / "config.json").read_text())
        spec["process"]["terminal"] = False
        spec["process"]["args"] = ["/bin/sleep", "100000"]
        if user is not None:  # the image's USER: (uid, gid); runc's default is root
            spec["process"]["user"] = {"uid": user[0], "gid": user[1]}
        spec["root"]["readonly"] = False
        spec["mounts"].append({"destination": "/app", "type": "bind", "source": str(src), "options": ["rbind", "rw"]})
        spec["mounts"].append({"destination": "/run/shm", "type": "tmpfs", "source": "tmpfs",
                               "options": ["nosuid", "nodev", "mode=1777"]})
        spec["linux"]["cgroupsPath"] = f"/{CGROUP_PARENT}/{name}-{os.getpid()}-{time.monotonic_ns()}"
        self.cgroups_path = spec["linux"]["cgroupsPath"]
        (self.bundle / "config.json").write_text(json.dumps(spec, indent=1))
        # locald unpacks the bundle as the project's user; runc adds the rest as root.
        subprocess.run(["chown", "-hR", f"{uid}:{gid}", str(self.bundle)], check=True)

    def runc(self, *args, check=True):
        """Run ``runc --root STATE args``; its stderr goes to a file, never a
        pipe (a container started by it would hold a pipe open)."""
        with tempfile.TemporaryFile() as err:
            r = subprocess.run([RUNC, "--root", str(self.state), *args], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=err, timeout=60)
            err.seek(0)
            r.stderr = err.read().decode(errors="replace")
        if check and r.returncode != 0:
            raise RuntimeError(f"runc {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
        return r

    def run(self):
        """Start it detached; returns its init's pid."""
        self.runc("run", "-d", "--bundle", str(self.bundle), self.name)
        return self.pid()

    def pid(self):
        out = subprocess.run([RUNC, "--root", str(self.state), "state", self.name], capture_output=True,
                             check=True, timeout=60).stdout
        return json.loads(out)["pid"]

    def kill_init(self):
        """SIGKILL the container's init, as a crash would, and wait for it:
        its mount namespace goes with it; runc's state stays behind."""
        pid = self.pid()
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.01)

    def stop(self):
        if self.state.exists():
            self.runc("delete", "--force", self.name, check=False)
        for root in Path("/sys/fs/cgroup").glob("*"):
            d = root / self.cgroups_path.lstrip("/")
            for p in (d, d.parent):
                try:
                    p.rmdir()
                except OSError:
                    pass


def mount_count(pid):
    with open(f"/proc/{pid}/mountinfo", "rb") as f:
        return len(f.read().splitlines())
