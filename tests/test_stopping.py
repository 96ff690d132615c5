"""Stopping while the bus goes away (issue 9, finding 6).

At poweroff systemd stops the service and the system bus at about the same
time: the journal showed "lost the bus connection; exiting", a multi-line
"Task exception was never retrieved ... EOFError" traceback and "Failed with
result 'exit-code'".  Being stopped is not a failure: after SIGTERM, or when
the bus closes while a SIGTERM is on its way, the mechanism exits 0 with one
plain line.  A bus lost at any other time still exits non-zero (so that
activation or systemd starts a fresh one: test_dbusmock_tier.py).

Runs anywhere, any user: a private bus, the polkit mock, the real mechanism.
"""

import signal
import time

import pytest

from harness.buses import PolkitMock, PrivateBus
from harness.mechanism import Mechanism

NOISE = ("Traceback", "never retrieved", "EOFError", "lost the bus connection")


@pytest.fixture
def running():
    """A bus, polkit and a mechanism of the test's own (the test kills the bus)."""
    bus = PrivateBus()
    polkit = PolkitMock(bus)
    mech = Mechanism(bus)
    try:
        yield bus, mech
    finally:
        mech.stop()
        polkit.stop()
        bus.stop()


def _kill_bus(bus):
    bus.proc.kill()
    bus.proc.wait()


def _after_start(mech):
    """The log lines written after the start-up lines."""
    return [ln for ln in mech.log().splitlines() if not ln.startswith("audit ")][2:]


def _assert_quiet_stop(mech):
    assert mech.proc.wait(15) == 0, mech.log()
    log = mech.log()
    assert not any(n in log for n in NOISE), log
    stopping = _after_start(mech)
    assert len(stopping) == 1, stopping  # one plain line


def test_sigterm_then_the_bus_goes_away(running):
    bus, mech = running
    mech.proc.send_signal(signal.SIGTERM)
    _kill_bus(bus)
    _assert_quiet_stop(mech)


def test_the_bus_goes_away_just_before_sigterm(running):
    """The shutdown race the journal showed: the bus's EOF is seen first."""
    bus, mech = running
    _kill_bus(bus)
    time.sleep(0.2)
    mech.proc.send_signal(signal.SIGTERM)
    _assert_quiet_stop(mech)


def test_sigterm_with_the_bus_up_is_one_line_too(running):
    bus, mech = running
    mech.proc.send_signal(signal.SIGTERM)
    _assert_quiet_stop(mech)
