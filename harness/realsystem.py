"""The real thing, short of a booted system: a private bus with Debian's own
system-bus policy plus the project's, the real polkitd, the project's
polkit action and headless rule installed where polkitd reads them, and the
group that rule names.  Root only (polkitd drops to its own user; actions
and rules are read from system directories)."""

import contextlib
import grp
import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

from . import ROOT
from .buses import POLKIT_NAME, PrivateBus, _Stoppable, wait_for_name, wait_for_no_owner
from .users import PATH_ENV, shadow_tool
from .waiting import terminate

DATA = ROOT / "data"
ACTION_SRC = DATA / "polkit-1" / "actions" / "org.locald.admin1.policy"
BUS_CONF_DIR = DATA / "dbus-1" / "system.d"
RULE_SRC = DATA / "polkit-1" / "rules.d" / "50-locald-admin.rules.example"

POLKITD = Path("/usr/lib/polkit-1/polkitd")
SYSTEM_CONF = Path("/usr/share/dbus-1/system.conf")
SYSTEM_D = Path("/usr/share/dbus-1/system.d")
ACTIONS_DIR = Path("/usr/share/polkit-1/actions")
ACTION_DEST = ACTIONS_DIR / "org.locald.admin1.policy"
RULES_DIR = Path("/etc/polkit-1/rules.d")
GROUP = "locald"


def debian_system_policy():
    """Every <policy> of Debian's system.conf, verbatim: default deny for
    owning names and sending method calls; signals, requested replies and
    calls to the bus driver allowed.  Daemon settings (<user>, <fork>,
    <pidfile>, <syslog>, <listen>, <servicehelper>, service and include
    directories) are left out: PrivateBus supplies its own."""
    policies = ET.parse(SYSTEM_CONF).getroot().findall("policy")
    text = "\n".join(ET.tostring(p, encoding="unicode") for p in policies)
    assert '<deny own="*" />' in text and '<deny send_type="method_call" />' in text, text
    # Already part of Debian's default policy; stated again so that the
    # unprivileged test users can connect whatever system.conf says.
    return text + '\n<policy context="default"><allow user="*"/></policy>'


def includedirs():
    """The project's bus policy, and polkit's own (org.freedesktop.PolicyKit1.conf)."""
    return f"<includedir>{BUS_CONF_DIR}</includedir>\n<includedir>{SYSTEM_D}</includedir>"


def real_bus(extra_xml=""):
    return PrivateBus(policy_xml=debian_system_policy(), extra_xml=includedirs() + "\n" + extra_xml)


class Polkitd(_Stoppable):
    """The real polkitd on a private bus.  Started as root, it drops to the
    polkitd user itself; it owns org.freedesktop.PolicyKit1 by the bus policy
    in /usr/share/dbus-1/system.d."""

    def __init__(self, bus):
        self.bus = bus
        self.log_path = bus.dir / "polkitd.log"
        self.proc = None
        self.start()

    def start(self):
        env = {"PATH": PATH_ENV, "LANG": "C.UTF-8", "DBUS_SYSTEM_BUS_ADDRESS": self.bus.address}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([str(POLKITD)], env=env, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        wait_for_name(self.bus.address, POLKIT_NAME, timeout=30, proc=self.proc)

    def stop(self):
        if self.proc is None:
            return
        terminate(self.proc, 10)
        self.proc = None
        wait_for_no_owner(self.bus.address, POLKIT_NAME)

    def restart(self):
        self.stop()
        self.start()

    def log(self):
        return self.log_path.read_text(errors="replace")


def action_conflict():
    """Why the project's action cannot be installed for polkitd here, or None."""
    if not ACTIONS_DIR.is_dir():
        return f"{ACTIONS_DIR} is missing"
    if (ACTION_DEST.exists() or ACTION_DEST.is_symlink()) and ACTION_DEST.read_bytes() != ACTION_SRC.read_bytes():
        return f"{ACTION_DEST} exists and differs from the project's action; not touching it"
    return None


@contextlib.contextmanager
def installed_action():
    """A copy of the project's action where polkitd reads actions; always
    removed afterwards unless it was there before (then it is left alone).
    Check ``action_conflict()`` first."""
    why = action_conflict()
    if why:
        raise RuntimeError(why)
    existed = ACTION_DEST.exists() or ACTION_DEST.is_symlink()
    if not existed:
        shutil.copyfile(ACTION_SRC, ACTION_DEST)
        os.chmod(ACTION_DEST, 0o644)
    try:
        yield ACTION_DEST
    finally:
        if not existed:
            ACTION_DEST.unlink(missing_ok=True)


@contextlib.contextmanager
def installed_rule(name):
    """The headless rule as RULES_DIR/``name``; always removed afterwards."""
    dest = RULES_DIR / name
    shutil.copyfile(RULE_SRC, dest)
    os.chmod(dest, 0o644)
    try:
        yield dest
    finally:
        dest.unlink(missing_ok=True)


class GroupMembership:
    """``user`` in ``group`` (the group created if missing); ``restore``
    undoes exactly what ``ensure`` changed.  ``ensure`` may be called again
    (a concurrent test run may have restored its own view meanwhile)."""

    def __init__(self, user, group=GROUP):
        self.user, self.group = user, group
        self.created = self.added = False

    def ensure(self):
        try:
            grp.getgrnam(self.group)
        except KeyError:
            cp = shadow_tool("groupadd", "--system", self.group)
            if cp.returncode != 0:
                raise RuntimeError(f"groupadd {self.group}: {cp.stderr}") from None
            self.created = True
        if self.user not in grp.getgrnam(self.group).gr_mem:
            cp = shadow_tool("gpasswd", "--add", self.user, self.group)
            if cp.returncode != 0:
                raise RuntimeError(f"gpasswd --add {self.user} {self.group}: {cp.stderr}")
            self.added = True
        return grp.getgrnam(self.group).gr_gid

    def restore(self):
        if self.added:
            shadow_tool("gpasswd", "--delete", self.user, self.group)
            self.added = False
        if self.created:
            shadow_tool("groupdel", self.group)
            self.created = False
