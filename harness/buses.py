"""A private dbus-daemon of type system and python-dbusmock's polkitd on it.

Both start in the constructor and are context managers (``with
PrivateBus() as bus, PolkitMock(bus) as polkit: ...``); ``stop()`` may also
be called directly and more than once.
"""

import os
import subprocess
import sys
import time

import dbus

from . import trees
from .waiting import terminate

MOCK_IFACE = "org.freedesktop.DBus.Mock"
POLKIT_NAME = "org.freedesktop.PolicyKit1"
POLKIT_PATH = "/org/freedesktop/PolicyKit1/Authority"

PERMISSIVE_POLICY = """
  <policy context="default">
    <allow user="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>"""


class _Stoppable:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class PrivateBus(_Stoppable):
    """A dbus-daemon of type 'system' on a private socket.  ``policy_xml``
    defaults to dbusmock's allow-everything policy plus <allow user="*"/> so
    that an unprivileged client can connect to a bus root started.  Its
    directory (``dir``) also holds the logs of what runs on it; it is
    removed by ``stop``."""

    def __init__(self, policy_xml=PERMISSIVE_POLICY, extra_xml=""):
        self.dir = trees.world_tmpdir("locald-admin-bus-")
        self.socket = self.dir / "system_bus_socket"
        self.config = self.dir / "bus.conf"
        self.log_path = self.dir / "dbus-daemon.log"
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
        with open(self.log_path, "wb") as log:  # the child keeps its own copy
            self.proc = subprocess.Popen(["dbus-daemon", f"--config-file={self.config}", "--nofork",
                                          "--print-address=1"], stdout=subprocess.PIPE, stderr=log)
        line = self.proc.stdout.readline().decode().strip()
        if not line:
            raise RuntimeError("dbus-daemon did not start")
        self.address = f"unix:path={self.socket}"
        self.stopped = False

    def connect(self):
        return dbus.bus.BusConnection(self.address)

    def log(self):
        return self.log_path.read_text(errors="replace")

    def stop(self):
        if self.stopped:
            return
        self.stopped = True
        terminate(self.proc, 5)
        self.proc.stdout.close()
        trees.rm_rf(self.dir)


def has_owner(address, name):
    con = dbus.bus.BusConnection(address)
    try:
        return bool(con.name_has_owner(name))
    finally:
        con.close()


def wait_for_name(address, name, timeout=10.0, proc=None):
    """Until ``name`` has an owner on the bus at ``address``; RuntimeError
    if ``proc`` (the process meant to own it) exits first."""
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


def wait_for_no_owner(address, name, timeout=15.0):
    con = dbus.bus.BusConnection(address)
    try:
        deadline = time.monotonic() + timeout
        while con.name_has_owner(name):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} still has an owner on {address}")
            time.sleep(0.02)
    finally:
        con.close()


def bus_driver(address, member, *args):
    """Call ``member`` of the bus driver (org.freedesktop.DBus)."""
    con = dbus.bus.BusConnection(address)
    try:
        obj = con.get_object("org.freedesktop.DBus", "/org/freedesktop/DBus")
        return getattr(dbus.Interface(obj, "org.freedesktop.DBus"), member)(*args)
    finally:
        con.close()


class PolkitMock(_Stoppable):
    """python-dbusmock's polkitd template (or a local one) on ``bus``;
    denies everything until ``allow()``."""

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
        self.stopped = False

    def allow(self, allowed=True):
        from locald_admin.interface import POLKIT_ACTION
        self.mock.SetAllowed([POLKIT_ACTION] if allowed else [])
        return self

    def checks(self):
        """Logged CheckAuthorization calls as (subject, action, details, flags, cancel_id)."""
        return [tuple(args) for _, args in self.mock.GetMethodCalls("CheckAuthorization")]

    def clear(self):
        self.mock.ClearCalls()

    def stop(self):
        if self.stopped:
            return
        self.stopped = True
        self.con.close()
        terminate(self.proc, 5)
