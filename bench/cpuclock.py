"""CPU time of other processes to the nanosecond, for the A/B
(``--baseline``): a process's CPU-time clock (``clock_gettime`` of
``MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)``, readable for any pid) counts
every thread, also those that have ended; /proc/<pid>/stat counts clock
ticks (10 ms), too coarse to compare a few hundred calls' 0.1 s to 5 %.
And one sequential window of the load protocol (bench/load.py) timed with
it."""

import time

from .sampling import machine_cpu


def process_cpu(pid):
    """User+system CPU seconds of process ``pid`` (all its threads), or None."""
    try:
        return time.clock_gettime_ns(((~pid) << 3) | 2) / 1e9
    except OSError:
        return None


def sequential_window(procs, readers, what, count, watch, lead=0.2):
    """``count`` calls of ``what`` by every client (bench_client.py
    ``load``), after its warm-up calls; returns (client results, CPU seconds
    of each watched process and of everyone else (``others``), wall
    seconds), as bench/load.py's run_load does for a window of a count."""
    start = time.monotonic() + lead
    for p in procs:
        p.stdin.write(f"run {what} {count} {start:.6f} 0\n".encode())
        p.stdin.flush()
    while time.monotonic() < start:
        time.sleep(min(0.01, max(0.0, start - time.monotonic())))
    c0 = {k: process_cpu(pid) for k, pid in watch.items()}
    m0 = machine_cpu()
    t0 = time.monotonic()
    results = [rd.json(900) for rd in readers]
    c1 = {k: process_cpu(pid) for k, pid in watch.items()}
    m1 = machine_cpu()
    t1 = time.monotonic()
    cpu = {k: (c1[k] - c0[k]) if c0[k] is not None and c1[k] is not None else None for k in watch}
    ours = sum(v for v in cpu.values() if v is not None) + sum(r.get("cpu", 0) for r in results)
    cpu["machine_total"] = m1[0] - m0[0]
    cpu["others"] = max(0.0, cpu["machine_total"] - ours)
    return results, cpu, t1 - t0
