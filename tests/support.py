"""Test infrastructure: private buses, the mechanism as a subprocess, and
clients running as an unprivileged user.

When the suite runs as root (as in CI), clients run as the dedicated user
``locald-test`` with Debian's /usr/bin/python3 and a world-readable copy of
the client code (the venv's interpreter may live under /root, mode 700).
Otherwise clients run as the current user with the current interpreter.
"""

import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dbus

import locald_admin
import locald_admin.client
import locald_admin.mechanism

HERE = Path(__file__).resolve().parent
IS_ROOT = os.geteuid() == 0
TEST_USER = "locald-test"
OTHER_USER = "locald-test2"
SYSTEM_PYTHON = "/usr/bin/python3"

MOCK_IFACE = "org.freedesktop.DBus.Mock"
POLKIT_NAME = "org.freedesktop.PolicyKit1"
POLKIT_PATH = "/org/freedesktop/PolicyKit1/Authority"


def world_tmpdir(prefix="locald-admin-test-"):
    """A temporary directory every user can traverse (pytest's tmp_path is
    mode 700 when run as root)."""
    d = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    os.chmod(d, 0o755)
    return Path(d)


def rm_rf(path):
    """Remove fixture trees with rm -rf: deep trees defeat shutil.rmtree."""
    subprocess.run(["rm", "-rf", "--one-file-system", "--", str(path)], check=False)


def stop_process(proc, timeout=10):
    """SIGTERM, then SIGKILL if ``proc`` has not exited within ``timeout`` s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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


def snapshot(root):
    """relpath -> kind and content of everything below ``root`` (follows no
    symlinks; does descend into mounts, which is what we want to compare)."""
    root = os.fsencode(root)
    out = {}
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(d, n)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", st.st_uid, stat.S_IMODE(st.st_mode))
            elif stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    out[rel] = ("file", f.read())
            else:
                out[rel] = ("other", stat.S_IFMT(st.st_mode))
    return out


# -- buses ---------------------------------------------------------------------

PERMISSIVE_POLICY = """
  <policy context="default">
    <allow user="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>"""


class PrivateBus:
    """A dbus-daemon of type 'system' on a private socket.  ``policy_xml``
    defaults to dbusmock's allow-everything policy plus <allow user="*"/> so
    that an unprivileged client can connect to a bus root started."""

    def __init__(self, policy_xml=PERMISSIVE_POLICY, extra_xml=""):
        self.dir = world_tmpdir("locald-admin-bus-")
        self.socket = self.dir / "system_bus_socket"
        self.config = self.dir / "bus.conf"
        self.config.write_text(f"""<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={self.socket}</listen>
  <auth>EXTERNAL</auth>
  {policy_xml}
  {extra_xml}
</busconfig>
""")
        with open(self.dir / "dbus-daemon.log", "wb") as log:  # the child keeps its own copy
            self.proc = subprocess.Popen(["dbus-daemon", f"--config-file={self.config}", "--nofork",
                                          "--print-address=1"], stdout=subprocess.PIPE, stderr=log)
        line = self.proc.stdout.readline().decode().strip()
        if not line:
            raise RuntimeError("dbus-daemon did not start")
        self.address = f"unix:path={self.socket}"

    def connect(self):
        return dbus.bus.BusConnection(self.address)

    def stop(self):
        stop_process(self.proc, 5)
        self.proc.stdout.close()
        rm_rf(self.dir)


def wait_for_name(address, name, timeout=10.0, proc=None):
    con = dbus.bus.BusConnection(address)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if con.name_has_owner(name):
                return
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"process owning {name} exited with {proc.returncode}")
            time.sleep(0.02)
        raise TimeoutError(f"{name} did not appear on {address}")
    finally:
        con.close()


class PolkitMock:
    """python-dbusmock's polkitd template (or a local one) on ``bus``."""

    def __init__(self, bus, template="polkitd"):
        self.bus = bus
        env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=bus.address)
        self.log = bus.dir / "polkit-mock.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "dbusmock", "--system", "--template", template],
                                         env=env, stdout=log, stderr=subprocess.STDOUT)
        wait_for_name(bus.address, POLKIT_NAME, proc=self.proc)
        self.con = bus.connect()
        self.mock = dbus.Interface(self.con.get_object(POLKIT_NAME, POLKIT_PATH), MOCK_IFACE)

    def allow(self, allowed=True):
        from locald_admin.interface import POLKIT_ACTION
        self.mock.SetAllowed([POLKIT_ACTION] if allowed else [])

    def checks(self):
        """Logged CheckAuthorization calls as (subject, action, details, flags, cancel_id)."""
        return [tuple(args) for _, args in self.mock.GetMethodCalls("CheckAuthorization")]

    def clear(self):
        self.mock.ClearCalls()

    def stop(self):
        self.con.close()
        stop_process(self.proc, 5)


class Mechanism:
    """The real mechanism, started as a subprocess on ``bus``."""

    def __init__(self, bus, *args):
        self.bus = bus
        self.stderr_path = bus.dir / f"mechanism-{time.monotonic_ns()}.log"
        env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=bus.address)
        with open(self.stderr_path, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "locald_admin.mechanism", *args],
                                         env=env, stdin=subprocess.DEVNULL, stderr=log)
        wait_for_name(bus.address, "org.locald.Admin1", proc=self.proc)

    def log(self):
        return self.stderr_path.read_text(errors="replace")

    def audit_lines(self):
        return [ln for ln in self.log().splitlines() if ln.startswith("audit ")]

    def stop(self):
        stop_process(self.proc, 10)


# -- clients -------------------------------------------------------------------

class ClientRunner:
    """Runs client code as the unprivileged test user (root) or as the
    current user (otherwise)."""

    def __init__(self, user=TEST_USER):
        self.stage = None
        if IS_ROOT:
            self.user = ensure_user(user)
            self.stage = world_tmpdir("locald-admin-client-")
            pkg = self.stage / "locald_admin"
            ignore = shutil.ignore_patterns("__pycache__")
            shutil.copytree(Path(locald_admin.__file__).parent, pkg, ignore=ignore)
            shutil.copytree(Path(locald_admin.client.__file__).parent, pkg / "client", ignore=ignore)
            shutil.copytree(Path(locald_admin.mechanism.__file__).parent, pkg / "mechanism", ignore=ignore)
            import dbus_next
            shutil.copytree(Path(dbus_next.__file__).parent, self.stage / "dbus_next", ignore=ignore)
            shutil.copy(HERE / "client_probe.py", self.stage / "client_probe.py")
            subprocess.run(["chmod", "-R", "a+rX", str(self.stage)], check=True)
            self.python = SYSTEM_PYTHON
            self.pythonpath = str(self.stage)
            self.probe = str(self.stage / "client_probe.py")
        else:
            self.user = pwd.getpwuid(os.getuid())
            self.python = sys.executable
            self.pythonpath = os.pathsep.join(str(Path(m.__file__).parent.parent) for m in (locald_admin,))
            self.probe = str(HERE / "client_probe.py")

    @property
    def uid(self):
        return self.user.pw_uid

    @property
    def gid(self):
        return self.user.pw_gid

    def _run(self, argv, bus_address, cwd="/", timeout=60, input=None):
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
               "PYTHONPATH": self.pythonpath, "PYTHONDONTWRITEBYTECODE": "1"}
        if bus_address is not None:
            env["DBUS_SYSTEM_BUS_ADDRESS"] = bus_address
        kw = {}
        if IS_ROOT:
            kw = dict(user=self.uid, group=self.gid, extra_groups=[])
        return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, timeout=timeout,
                              stdin=subprocess.DEVNULL if input is None else None, input=input, **kw)

    def python_code(self, code, *args, bus_address, **kw):
        """Run ``python -c code args...`` as the client user."""
        return self._run([self.python, "-c", code, *args], bus_address, **kw)

    def shim(self, *args, bus_address, **kw):
        """Run locald-shim; returns CompletedProcess (text)."""
        cp = self._run([self.python, "-c", "import sys; from locald_admin.client.shim import main; "
                        "sys.exit(main())", *args], bus_address, **kw)
        cp.stdout, cp.stderr = cp.stdout.decode(errors="replace"), cp.stderr.decode(errors="replace")
        return cp

    def api(self, op, path, bus_address, **options):
        """Run a client API call in the probe; returns its JSON report."""
        cwd = options.pop("cwd", "/")
        cp = self._run([self.python, self.probe, op, path, json.dumps(options)], bus_address, cwd=cwd)
        if cp.returncode != 0:
            raise AssertionError(f"probe crashed: {cp.stderr.decode(errors='replace')}")
        return json.loads(cp.stdout)

    def close(self):
        if self.stage is not None:
            rm_rf(self.stage)
