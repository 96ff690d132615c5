"""Where a census's time per process goes: each system call the scan makes
for one process (``fs/procscan.py``: the owner of ``/proc/<pid>``, then the
first bytes of its mountinfo), timed on every process of ``/proc``,
medians in microseconds, and the first line of PID 1's mountinfo (the
kernel prints that whole line to give the first bytes, so its file system's
options printer is part of the cost).

``SOURCE`` runs with any python3 and nothing else (inside the nspawn
machine through ``python3 -I -c``); ``profile()`` runs it here.
"""

import json
import subprocess
import sys

SOURCE = r'''
import json, os, statistics, time
ns = time.perf_counter_ns
steps = {"lstat <pid>": [], "open mountinfo": [], "read 64 bytes": [], "close": []}
for _ in range(5):
    for e in os.listdir("/proc"):
        if not e.isdigit():
            continue
        try:
            t0 = ns(); os.lstat(f"/proc/{e}"); t1 = ns()
            fd = os.open(f"/proc/{e}/mountinfo", os.O_RDONLY | os.O_CLOEXEC); t2 = ns()
        except OSError:
            continue
        try:
            os.read(fd, 64); t3 = ns()
        except OSError:
            os.close(fd)
            continue
        os.close(fd); t4 = ns()
        for k, a, b in (("lstat <pid>", t0, t1), ("open mountinfo", t1, t2), ("read 64 bytes", t2, t3),
                        ("close", t3, t4)):
            steps[k].append((b - a) / 1000)
with open("/proc/1/mountinfo", "rb") as f:
    first = f.readline().decode(errors="replace").strip()
out = {k: statistics.median(v) for k, v in steps.items() if v}
out["total"] = sum(out.values())
out["processes"] = len(steps["close"]) // 5
out["first line of /proc/1/mountinfo"] = first
print(json.dumps(out))
'''


def profile(run=None):
    """The profile here (``run`` None) or through ``run(argv)`` (returning
    its stdout), e.g. inside a machine."""
    argv = [sys.executable, "-I", "-c", SOURCE]
    if run is None:
        return json.loads(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)
    return json.loads(run(["python3", "-I", "-c", SOURCE]))


def describe(p):
    steps = ", ".join(f"{k} {v:.1f}" for k, v in p.items()
                      if k not in ("total", "processes", "first line of /proc/1/mountinfo"))
    return (f"{p['total']:.1f} us per process ({steps}; {p['processes']} processes); PID 1's first mount: "
            f"{p['first line of /proc/1/mountinfo'][:120]}")
