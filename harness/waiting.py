"""Waiting with a deadline, and stopping processes.

Two contracts, two names: ``poll_until`` answers whether the predicate came
true in time (the caller asserts or decides); ``wait_until`` fails the test
(AssertionError naming what it waited for) if it did not.
"""

import os
import signal
import subprocess
import time
from pathlib import Path


def poll_until(predicate, timeout, interval=0.01):
    """Call ``predicate`` every ``interval`` s until it is true or
    ``timeout`` s have passed; return its last (truthy or not) value, after
    one final try at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


def wait_until(predicate, timeout, what, interval=0.01):
    """Like ``poll_until``, but raise AssertionError if ``predicate`` is
    still false after ``timeout`` s."""
    if not poll_until(predicate, timeout, interval):
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def terminate(proc, timeout=10):
    """End the subprocess ``proc``: SIGTERM, then SIGKILL if it has not
    exited within ``timeout`` s.  Returns its exit status."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def freeze(pid, timeout=30):
    """SIGSTOP ``pid`` and wait until every one of its threads is stopped
    (the signal is delivered asynchronously: a thread inside unlinkat
    finishes that call first).  SIGCONT thaws it."""
    os.kill(pid, signal.SIGSTOP)

    def all_stopped():
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] not in ("T", "t"):
                return False
        return True

    wait_until(all_stopped, timeout, f"every thread of process {pid} to stop", 0.005)
