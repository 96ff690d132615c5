"""CPU time of other processes to the nanosecond, for the A/B
(``--baseline``): a process's CPU-time clock (``clock_gettime`` of
``MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)``, readable for any pid) counts
every thread, also those that have ended; /proc/<pid>/stat counts clock
ticks (10 ms), too coarse to compare a few hundred calls' 0.1 s to 5 %
(``load.run_load(..., cpu_of=process_cpu)``)."""

import os
import time


def process_cpu(pid):
    """User+system CPU seconds of process ``pid`` (all its threads), or None."""
    try:
        return time.clock_gettime_ns(((~pid) << 3) | 2) / 1e9
    except OSError:
        return None


def run_delay(pid):
    """Seconds the threads of process ``pid`` now alive have spent runnable
    but waiting for a CPU (the second field of /proc/<pid>/task/*/schedstat),
    or None: what a process lost to the others on a busy machine."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[1])
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended meanwhile
    return total / 1e9
