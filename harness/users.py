"""Test users and the runner for client code as an unprivileged user.

When the tests run as root (as in CI), clients run as the dedicated user
``locald-test`` with Debian's /usr/bin/python3 and a world-readable copy of
the client code and of programs/ (the venv's interpreter and the checkout
may live under /root, mode 700).  Otherwise clients run as the current user
with the current interpreter.  ``ClientRunner(site=..., programs=...)`` takes
the client code from a staged site directory (another tree's package, as
``make install`` lays it out: bench/staging.py) instead of the imported one.
"""

import json
import os
import pwd
import shutil
import subprocess
import sys
import time
from pathlib import Path

import locald_admin
import locald_admin.client
import locald_admin.mechanism

from . import IS_ROOT, PROGRAMS, trees

TEST_USER = "locald-test"
OTHER_USER = "locald-test2"
SYSTEM_PYTHON = "/usr/bin/python3"
PATH_ENV = "/usr/sbin:/usr/bin:/sbin:/bin"
SHIM = "import sys; from locald_admin.client.shim import main; sys.exit(main())"


def ensure_user(name):
    """Create a system user for the tests (root only); return its passwd."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                    "--shell", "/usr/sbin/nologin", "--user-group", name],
                   check=True, capture_output=True)
    return pwd.getpwnam(name)


LOGIN_USER = "locald-stranger"


def ensure_login_user(name=LOGIN_USER):
    """A login user for the tests (root only): a uid from UID_MIN to UID_MAX
    of /etc/login.defs, as useradd gives one without --system; its passwd."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    cp = None
    for _ in range(20):  # another test session may hold the passwd lock
        cp = subprocess.run(["useradd", "--no-create-home", "--home-dir", "/nonexistent", "--shell",
                             "/usr/sbin/nologin", "--user-group", name], capture_output=True, text=True)
        if cp.returncode in (0, 9):  # 9: it exists (made meanwhile)
            return pwd.getpwnam(name)
        time.sleep(0.25)
    raise RuntimeError(f"useradd {name}: {cp.stderr.strip()}")


def shadow_tool(*argv):
    """groupadd/gpasswd/groupdel, retried while another process holds the
    /etc/group lock (other test sessions create users concurrently)."""
    for _ in range(20):
        cp = subprocess.run(list(argv), capture_output=True, text=True)
        if cp.returncode == 0 or "lock" not in (cp.stderr + cp.stdout).lower():
            return cp
        time.sleep(0.25)
    return cp


def clean_env(bus_address=None, pythonpath=None):
    """The whole environment of a client or attacker process: nothing of
    the test process's leaks in."""
    env = {"PATH": PATH_ENV, "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    if bus_address is not None:
        env["DBUS_SYSTEM_BUS_ADDRESS"] = bus_address
    return env


def program_source(name):
    """The text of programs/<name> (for ``python -c`` as a user who need
    not be able to read the checkout)."""
    return (PROGRAMS / name).read_text()


class ClientRunner:
    """Runs client code as the unprivileged test user (root) or as the
    current user (otherwise).

    ``site``: a staged site directory holding a ``locald_admin`` package
    (client/ and mechanism/ inside it) and the libraries it needs, all
    copied instead of the imported package;
    ``programs``: the programs directory to use instead of this harness's
    (another tree's harness/programs)."""

    def __init__(self, user=TEST_USER, *, site=None, programs=None):
        self.stage = None
        programs = Path(programs) if programs is not None else PROGRAMS
        if IS_ROOT:
            self.user = ensure_user(user)
            self.stage = trees.world_tmpdir("locald-admin-client-")
            pkg = self.stage / "locald_admin"
            ignore = shutil.ignore_patterns("__pycache__")
            if site is not None:
                # The package and the libraries staged beside it (its dependencies).
                for entry in Path(site).iterdir():
                    if entry.is_dir() and entry.name != "__pycache__":
                        shutil.copytree(entry, self.stage / entry.name, ignore=ignore)
                    elif entry.is_file():
                        shutil.copy2(entry, self.stage / entry.name)
            else:
                # locald_admin/ (fs/ included); client/ and mechanism/ are mapped
                # into it by the packaging, so they are copied into it here.
                shutil.copytree(Path(locald_admin.__file__).parent, pkg, ignore=ignore)
                shutil.copytree(Path(locald_admin.client.__file__).parent, pkg / "client", ignore=ignore)
                shutil.copytree(Path(locald_admin.mechanism.__file__).parent, pkg / "mechanism", ignore=ignore)
                # Nothing else: the client needs no library (busio speaks D-Bus itself).
            shutil.copytree(programs, self.stage / "programs", ignore=ignore)
            subprocess.run(["chmod", "-R", "a+rX", str(self.stage)], check=True)
            self.python = SYSTEM_PYTHON
            self.pythonpath = str(self.stage)
            self.programs = self.stage / "programs"
        else:
            self.user = pwd.getpwuid(os.getuid())
            self.python = sys.executable
            self.pythonpath = str(site) if site is not None else str(Path(locald_admin.__file__).parent.parent)
            self.programs = programs
        self.probe = self.program("client_probe.py")

    @property
    def uid(self):
        return self.user.pw_uid

    @property
    def gid(self):
        return self.user.pw_gid

    def program(self, name):
        """Where programs/<name> is for the client user."""
        return str(self.programs / name)

    def env(self, bus_address):
        return clean_env(bus_address, self.pythonpath)

    def _as_user(self, user=None, extra_groups=()):
        if not IS_ROOT and user is None:
            return {}
        user = user or self.user
        return dict(user=user.pw_uid, group=user.pw_gid, extra_groups=list(extra_groups))

    def popen(self, argv, bus_address, *, user=None, extra_groups=(), cwd="/", **kw):
        """Start ``argv`` (the interpreter is prepended) as the client user
        (or ``user``, a passwd entry, with ``extra_groups``) in the background."""
        return subprocess.Popen([self.python, *argv], env=self.env(bus_address), cwd=cwd,
                                **self._as_user(user, extra_groups), **kw)

    def run(self, argv, bus_address, *, user=None, extra_groups=(), cwd="/", timeout=60, input=None,
            text=False):
        """Run ``argv`` (the interpreter is prepended) as the client user (or
        ``user`` with ``extra_groups``) to the end; CompletedProcess."""
        return subprocess.run([self.python, *argv], env=self.env(bus_address), cwd=cwd, capture_output=True,
                              timeout=timeout, stdin=subprocess.DEVNULL if input is None else None, input=input,
                              text=text, **self._as_user(user, extra_groups))

    def run_program(self, name, *args, bus_address, **kw):
        """Run programs/<name> ``args``... as the client user."""
        return self.run([self.program(name), *args], bus_address, **kw)

    def shim(self, *args, bus_address, **kw):
        """Run locald-shim; returns CompletedProcess (text)."""
        cp = self.run(["-c", SHIM, *args], bus_address, **kw)
        if isinstance(cp.stdout, bytes):
            cp.stdout, cp.stderr = cp.stdout.decode(errors="replace"), cp.stderr.decode(errors="replace")
        return cp

    def api(self, op, path, bus_address, **options):
        """Run a client API call in the probe; returns its JSON report."""
        cwd = options.pop("cwd", "/")
        cp = self.run([self.probe, op, path, json.dumps(options)], bus_address, cwd=cwd)
        if cp.returncode != 0:
            raise AssertionError(f"probe crashed: {cp.stderr.decode(errors='replace')}")
        return json.loads(cp.stdout)

    def close(self):
        if self.stage is not None:
            trees.rm_rf(self.stage)
