"""CPU and memory readings from /proc: a process's CPU and status, the whole
machine's busy time, our waited-for children's CPU."""

import os
import resource
import time
from pathlib import Path

NPROC = len(os.sched_getaffinity(0))


def proc_cpu(pid):
    """User+system CPU seconds of process ``pid`` (all its threads), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu():
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = f
    hz = os.sysconf("SC_CLK_TCK")
    busy = user + nice + system + irq + softirq + steal
    return busy / hz, (busy + idle + iowait) / hz


def busy_cores(before, after):
    """Cores kept busy (by anyone) between two machine_cpu() samples."""
    total = after[1] - before[1]
    return (after[0] - before[0]) / total * NPROC if total > 0 else None


def background_load(seconds=1.0):
    """Cores busy with other people's work while we do nothing."""
    a = machine_cpu()
    time.sleep(seconds)
    return busy_cores(a, machine_cpu())


def proc_status(pid):
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads"):
                out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


def children_cpu():
    """CPU seconds of every waited-for child so far (wait4's rusage)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime
