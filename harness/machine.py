"""A real systemd: Debian 12 booted with systemd-nspawn, for the installed
product as a distribution user meets it.

On this kind of machine PID 1 is not systemd and /sys/fs/cgroup is a
cgroup-v1 tmpfs.  What works: ``systemd-nspawn -D IMAGE --boot
--register=no --keep-unit --console=pipe`` inside ``unshare -m
--propagation private`` after mounting a tmpfs over /run/systemd (so the
host's /run/systemd is never touched), with the process moved into cgroups
of its own under /sys/fs/cgroup/{systemd,unified}/.  Commands run inside
with ``nsenter -t <its PID 1> -a``.

The base image (debootstrap --variant=minbase with systemd, dbus, polkitd,
libpam-systemd, python3, man-db, locales and dbus-broker (not enabled),
from the configured Debian
mirror, with the locales of ``LOCALES`` generated) is cached in ``CACHE``
under a name made from the package list and the locales, so
that an image built for another list is never taken for it (about a minute
to build on a fresh machine); each ``Machine`` boots a copy of it with the
product staged in by ``make install DESTDIR=... PREFIX=/usr``: the installed
mechanism and client run Debian's python3 and nothing else.
"""

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

from . import ROOT

CACHE = Path(os.environ.get("LOCALD_ADMIN_IMAGE_CACHE", "/var/cache/locald-admin-tests"))
PACKAGES = "systemd,systemd-sysv,dbus,dbus-broker,polkitd,libpam-systemd,python3,man-db,locales"
# Generated in the image beside C.UTF-8: a language polkitd can translate the
# action into (po/), as on a system configured for it.
LOCALES = ("de_DE.UTF-8",)
BASE = CACHE / f"bookworm-minbase-{hashlib.sha256(repr((PACKAGES, LOCALES)).encode()).hexdigest()[:12]}"
# How the product is installed into it.
INSTALL_ARGS = ("DESTDIR={image}", "PREFIX=/usr")
MIRROR = "http://deb.debian.org/debian"
TOOLS = ("systemd-nspawn", "debootstrap", "unshare", "nsenter")
# The system buses a Machine can boot with: Debian's default, and the one
# Fedora and Arch use (its own strictness, its own limits, activation
# through systemd alone).
DAEMON, BROKER = "dbus-daemon", "dbus-broker"

BOOT = r"""
set -e
mount -t tmpfs tmpfs /run/systemd
for h in systemd unified; do
    if [ -d /sys/fs/cgroup/$h ]; then mkdir -p /sys/fs/cgroup/$h/$CG; echo $$ > /sys/fs/cgroup/$h/$CG/cgroup.procs; fi
done
exec systemd-nspawn -D "$IMAGE" --boot --register=no --keep-unit --console=pipe
"""


def unavailable():
    """None when a machine can be booted here, else why not."""
    if os.geteuid() != 0:
        return "booting a machine needs root"
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return f"missing {', '.join(missing)} (Debian packages systemd-container, debootstrap; scripts/bootstrap)"
    if not Path("/sys/fs/cgroup").is_dir():
        return "no /sys/fs/cgroup"
    return None


def base_image():
    """The cached base image, built on first use."""
    if (BASE / "usr/lib/systemd/systemd").exists():
        return BASE
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = BASE.with_name(BASE.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    r = subprocess.run(["debootstrap", "--variant=minbase", f"--include={PACKAGES}", "bookworm", str(tmp), MIRROR],
                       capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        raise RuntimeError(f"debootstrap failed: {r.stdout[-2000:]}{r.stderr[-2000:]}")
    # Installing dbus-broker makes it the system bus (its unit's
    # Alias=dbus.service, enabled by its postinst); the image keeps Debian's
    # default, dbus-daemon, and a Machine(bus=BROKER) switches.
    for alias in (tmp / "etc/systemd/system/dbus.service", tmp / "etc/systemd/user/dbus.service"):
        if alias.is_symlink():
            alias.unlink()
    for name in LOCALES:
        lang, charset = name.split(".")
        r = subprocess.run(["chroot", str(tmp), "localedef", "-i", lang, "-f", charset, name], capture_output=True,
                           text=True, timeout=300)
        if r.returncode != 0:
            raise RuntimeError(f"localedef {name} failed: {r.stdout[-2000:]}{r.stderr[-2000:]}")
    tmp.rename(BASE)
    return BASE


class Machine:
    """A booted copy of the base image with the product installed: by
    ``make install`` into the image, or, with ``deb=PATH``, by ``apt-get
    install`` of that package file inside the booted machine, the README's
    command (its maintainer scripts run under the machine's systemd, as on
    a real system; the image already holds every dependency).  ``bus``:
    the system bus it boots with, DAEMON (Debian's default) or BROKER."""

    def __init__(self, workdir, prepare=None, deb=None, bus=DAEMON):
        self.image = Path(workdir) / "image"
        self.bus = bus
        subprocess.run(["cp", "-a", str(base_image()), str(self.image)], check=True)
        if bus == BROKER:  # what `systemctl enable dbus-broker` does
            os.symlink("/lib/systemd/system/dbus-broker.service", self.image / "etc/systemd/system/dbus.service")
        elif bus != DAEMON:
            raise ValueError(f"no such system bus: {bus}")
        if deb is None:
            r = subprocess.run(["make", "-C", str(ROOT), "install",
                                *(a.format(image=self.image) for a in INSTALL_ARGS)],
                               capture_output=True, text=True, timeout=600)
            if r.returncode != 0:
                raise RuntimeError(f"make install failed: {r.stderr[-3000:]}")
        else:
            shutil.copy(deb, self.image / "var/tmp" / Path(deb).name)
            os.chmod(self.image / "var/tmp" / Path(deb).name, 0o644)
        if prepare is not None:
            prepare(self.image)
        self.cgroup = f"locald-admin-nspawn-{os.getpid()}-{time.monotonic_ns()}"
        self.log_path = Path(workdir) / "nspawn.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", BOOT],
                                         env=dict(os.environ, IMAGE=str(self.image), CG=self.cgroup),
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        self.leader = None
        try:
            self.leader = self._wait_for_leader()
            self.wait_running()
        except BaseException:
            # Nobody holds this object to stop it: a machine that did not
            # boot in time would run on, unseen, taking a core from what
            # comes next (it did, for 25 minutes of a CI run and an A/B).
            self.stop()
            raise
        if deb is not None:
            # From a directory apt's unprivileged helper (_apt) may read (not
            # /root, 0700).  Not --no-download: apt then skips fetching the
            # local file too and fails ("Pathname to install is not absolute");
            # there is nothing else to fetch, every dependency is in the image.
            self.install_output = self.run("sh", "-c", f"cd /var/tmp && apt-get install --yes "
                                           f"./{Path(deb).name}", check=True, timeout=300)

    def _wait_for_leader(self, timeout=60):
        """PID 1 of the machine (the nspawn process's child)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited: {self.log_path.read_text(errors='replace')[-3000:]}")
            for pid in _children(self.proc.pid):
                for child in _children(pid):
                    if _comm(child) == "systemd":
                        return child
                if _comm(pid) == "systemd":
                    return pid
            time.sleep(0.05)
        raise RuntimeError("the machine's systemd never started")

    def run(self, *argv, check=False, timeout=120, input=None):
        """Run ``argv`` inside the machine (as root, outside any service)."""
        r = subprocess.run(["nsenter", "-t", str(self.leader), "-a", *argv], capture_output=True, text=True,
                           timeout=timeout, input=input)
        if check and r.returncode != 0:
            raise AssertionError(f"{argv} failed ({r.returncode}): {r.stdout}{r.stderr}")
        return r

    def sh(self, script, **kw):
        return self.run("sh", "-c", script, **kw)

    def wait_running(self, timeout=180):
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            r = self.run("systemctl", "is-system-running")
            state = r.stdout.strip() or r.stderr.strip()
            if state in ("running", "degraded"):
                return state
            time.sleep(0.2)
        raise RuntimeError(f"the machine did not finish booting ({state}); its console:\n"
                           f"{self.log_path.read_text(errors='replace')[-3000:]}")

    def journal(self, unit):
        return self.run("journalctl", "-u", unit, "--no-pager", "-o", "cat").stdout

    def stop(self):
        """Power the machine off (killed if it does not go within a minute,
        or never had a PID 1 to ask)."""
        if self.proc.poll() is None:
            try:
                if self.leader is not None:
                    self.run("systemctl", "poweroff", timeout=30)
                self.proc.wait(60 if self.leader is not None else 0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for h in ("systemd", "unified"):
            d = Path("/sys/fs/cgroup") / h / self.cgroup
            for sub in sorted(d.glob("**/"), key=lambda p: len(str(p)), reverse=True):
                try:
                    sub.rmdir()
                except OSError:
                    pass


def _children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def _comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""
