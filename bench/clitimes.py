"""The command line's cost for the A/B (``--baseline``): ``locald-shim
--version`` and ``locald-shim admin cleanup --no-interactive`` of a missing
path below the test user's anchor, run as that user from a tree's staged
client code, alternately; per run the wall time from just before the spawn
to its exit (a pidfd says when) and its peak resident size (``timed``)."""

import os
import select
import subprocess
import tempfile
import time

from harness.users import SHIM

from .cpuclock import process_cpu
from .procs import Reaper
from .sampling import children_cpu, machine_cpu
from .targets import QUIET_OTHERS_CORES

COMMANDS = ("version", "cleanup")
TIMEOUT = 60.0


def argv_for(what, anchor, k):
    if what == "version":
        return ["--version"]
    return ["admin", "cleanup", "--no-interactive", str(anchor / f"cli-missing-{k}")]


def run_once(side, argv, address, errpath):
    """One run of locald-shim ``argv`` from ``side``'s staged client;
    returns {wall_ms, maxrss_kib, rc}."""
    runner = side.runner
    return timed([runner.python, "-c", SHIM, *argv], runner.env(address), runner.uid, runner.gid, errpath)


TIME = "/usr/bin/time"  # GNU time (Debian's package time)
SETPRIV = "/usr/bin/setpriv"


def timed(argv, env, uid, gid, errpath):
    """One run of ``argv`` as ``uid``:``gid`` with exactly ``env``, no
    terminal anywhere; the wall time from just before the spawn to its exit
    (a pidfd says when) and its peak resident size; returns {wall_ms,
    maxrss_kib, rc}.

    The peak is GNU time's ``%M`` of the command, which time forks from its
    own small process and ``setpriv`` turns into the user: the rusage of a
    child of this process would count this process's own size (the kernel
    records the size of the memory a process leaves at ``exec``, and a
    forked child leaves a copy of ours).  Without GNU time, that rusage,
    marked ``maxrss_includes_parent``."""
    as_user = [SETPRIV, f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"]
    rss = None
    if os.access(TIME, os.X_OK):
        fd, rss = tempfile.mkstemp(prefix="locald-bench-rss-")
        os.close(fd)
        argv = [TIME, "-q", "-o", rss, "-f", "%M", *as_user, *argv]
    else:
        argv = [*as_user, *argv]
    try:
        with open(errpath, "ab") as err:
            t0 = time.perf_counter()
            p = subprocess.Popen(argv, env=env, cwd="/", stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=err)
        Reaper.add(p)
        fd = os.pidfd_open(p.pid)
        try:
            ready, _, _ = select.select([fd], [], [], TIMEOUT)
            t1 = time.perf_counter()
            if not ready:
                p.kill()
                p.wait(10)
                return {"wall_ms": None, "maxrss_kib": None, "rc": None, "error": f"no exit within {TIMEOUT:g} s"}
            _, status, usage = os.wait4(p.pid, 0)
        finally:
            os.close(fd)
        p.returncode = os.waitstatus_to_exitcode(status)
        out = {"wall_ms": (t1 - t0) * 1000, "maxrss_kib": usage.ru_maxrss, "rc": p.returncode}
        if rss is None:
            out["maxrss_includes_parent"] = True
        else:
            try:
                out["maxrss_kib"] = int(open(rss).read().split()[-1])
            except (OSError, ValueError, IndexError):
                out["maxrss_kib"] = None
        return out
    finally:
        if rss is not None:
            os.unlink(rss)


def run(side, address, anchor, n, watch):
    """``n`` runs of each command, alternating; returns the runs per
    command and the CPU other processes used meanwhile."""
    errpath = side.logdir / f"{side.label}-cli.stderr"
    out = {what: [] for what in COMMANDS}
    c0 = {k: process_cpu(pid) for k, pid in watch.items()}
    ch0, m0, t0 = children_cpu(), machine_cpu(), time.monotonic()
    for k in range(n):
        for what in (COMMANDS if k % 2 == 0 else COMMANDS[::-1]):
            out[what].append(run_once(side, argv_for(what, anchor, k), address, errpath))
    c1 = {k: process_cpu(pid) for k, pid in watch.items()}
    ch1, m1, wall = children_cpu(), machine_cpu(), time.monotonic() - t0
    ours = sum(c1[k] - c0[k] for k in watch if c0[k] is not None and c1[k] is not None) + (ch1 - ch0)
    others = max(0.0, (m1[0] - m0[0]) - ours)
    out["others_busy_cores"] = others / wall if wall else None
    out["quiet"] = out["others_busy_cores"] is not None and out["others_busy_cores"] <= QUIET_OTHERS_CORES
    bad = [r for what in COMMANDS for r in out[what] if r["rc"] != 0]
    if bad:
        try:
            tail = errpath.read_text(errors="replace")[-500:]
        except OSError:
            tail = ""
        out["errors"] = len(bad)
        out["first_error"] = f"rc {bad[0]['rc']}{': ' + bad[0]['error'] if bad[0].get('error') else ''}; {tail}"
    else:
        out["errors"] = 0
    return out
