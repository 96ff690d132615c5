"""The real mechanism, started as a subprocess on a private bus.

``Mechanism(bus, *args)`` runs ``python -m locald_admin.mechanism *args``
(``progress_interval=`` adds ``--progress-interval``).  With
``journal=PATH`` its stderr counts as the journal (``JOURNAL_STREAM`` names
the log file) and ``--journal-socket PATH`` is passed: records and log
messages then go to the datagram socket the test binds at PATH, as under
systemd, and the log file gets nothing.  With ``faults=True``
it runs programs/hooked_mechanism.py instead, which patches the mechanism
before calling the same main(): injected exceptions for a few magic names
(see that file).  With ``site=DIR`` it runs the package staged in DIR (a
site directory as ``make install`` lays it out, e.g. another commit's:
bench/staging.py) instead of this checkout's: the interpreter starts in DIR
with ``PYTHONPATH=DIR``, so that package is found before the venv's editable
install of this checkout (whose finder comes after the path on
``sys.meta_path``).

Every mechanism started is listed in ``STARTED`` until it is stopped and
reported on; tests/conftest.py attaches the logs of those that ran during a
failed test to its report.
"""

import contextlib
import json
import os
import re
import subprocess
import sys
import time

from locald_admin import interface as i

from . import PROGRAMS
from .buses import PolkitMock, PrivateBus, _Stoppable, wait_for_name
from .waiting import terminate

HOOKED = PROGRAMS / "hooked_mechanism.py"
AUDIT_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')
LOG_TAIL = 20_000  # characters of a log attached to a failed test's report

STARTED = []


def audit_fields(line):
    """The key=value fields of one audit line (quoted values unquoted)."""
    return {k: json.loads(v) if v.startswith('"') else v for k, v in AUDIT_FIELD.findall(line)}


def _matches(fields, match):
    return all(fields.get(k) == str(v) for k, v in match.items())


class Mechanism(_Stoppable):
    """The real mechanism on ``bus``; its stderr (log and audit lines) goes
    to a file in the bus's directory."""

    def __init__(self, bus, *args, progress_interval=None, faults=False, journal=None, site=None):
        if faults and site is not None:
            raise ValueError("the fault hook runs this checkout's mechanism: faults and site exclude each other")
        self.bus = bus
        self.site = site
        self.stderr_path = bus.dir / f"mechanism-{time.monotonic_ns()}.log"
        if progress_interval is not None:
            args += ("--progress-interval", repr(progress_interval))
        argv = ([sys.executable, str(HOOKED), "--faults", "--"] if faults
                else [sys.executable, "-m", "locald_admin.mechanism"])
        if journal is not None:
            args += ("--journal-socket", str(journal))
        env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=bus.address)
        cwd = None
        if site is not None:
            env["PYTHONPATH"] = cwd = str(site)
        with open(self.stderr_path, "wb") as log:
            if journal is not None:
                st = os.fstat(log.fileno())
                env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
            self.proc = subprocess.Popen([*argv, *args], env=env, cwd=cwd, stdin=subprocess.DEVNULL, stderr=log)
        self.args = args
        self._final_log = None
        STARTED.append(self)
        try:
            wait_for_name(bus.address, i.BUS_NAME, proc=self.proc)
        except Exception as e:
            # Not left running (nobody holds this object to stop it), and
            # what it said is in the error.
            self.stop()
            tail = self.log_tail(2000).strip() or "(empty)"
            raise RuntimeError(f"the mechanism did not start ({type(e).__name__}: {e}); its log: {tail}") from e

    def log(self):
        if self._final_log is not None:
            return self._final_log
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:  # the bus's directory is gone
            return ""

    def audit_lines(self, **match):
        """The audit lines (text), those whose fields include ``match`` if
        given (values compared as strings)."""
        lines = [ln for ln in self.log().splitlines() if ln.startswith("audit ")]
        return [ln for ln in lines if _matches(audit_fields(ln), match)] if match else lines

    def audits(self, **match):
        """The audit lines as dicts, in the order the replies were sent;
        those whose fields include ``match`` if given."""
        return [f for f in map(audit_fields, self.audit_lines()) if _matches(f, match)]

    def describe(self):
        site = f", site {self.site}" if self.site is not None else ""
        return f"pid {self.proc.pid}, args {list(self.args)}{site}, exit {self.proc.returncode}"

    def stop(self):
        terminate(self.proc, 10)
        if self._final_log is None:
            # Kept: a failure report (or the test) may read it after the bus's
            # directory is removed.
            self._final_log = self.log()

    def log_tail(self, limit=LOG_TAIL):
        text = self.log()
        return text if len(text) <= limit else f"[... {len(text) - limit} characters left out ...]\n" + text[-limit:]


def forget_stopped():
    """Drop the stopped mechanisms from ``STARTED`` (after their test is
    reported)."""
    STARTED[:] = [m for m in STARTED if m.proc.poll() is None]


@contextlib.contextmanager
def stack(*args, allow=True, template="polkitd", **kw):
    """A private bus, the polkit mock on it (allowing the action, unless
    ``allow`` is false) and a mechanism started with ``args``; yields
    (bus, polkit, mechanism), then stops them in the reverse order."""
    with PrivateBus() as bus, PolkitMock(bus, template) as polkit:
        if allow:
            polkit.allow(True)
        with Mechanism(bus, *args, **kw) as mech:
            yield bus, polkit, mech
