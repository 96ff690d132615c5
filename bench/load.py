"""The bench client's load protocol (harness/programs/bench_client.py ``load``):
start N clients, send one timed command to all and collect their results with
the CPU the watched servers and everyone else used meanwhile, quit them."""

import contextlib
import subprocess
import time

from .cpuclock import run_delay
from .procs import Lines, close_pipes
from .sampling import machine_cpu, proc_cpu


def load_clients(ctx, address, n, prefix):
    procs = [ctx.spawn_client(["load", prefix], address, stdin=True) for _ in range(n)]
    readers = [Lines(p) for p in procs]
    for p, rd in zip(procs, readers):
        try:
            rd.json(120)
        except (TimeoutError, EOFError, ValueError) as e:
            raise RuntimeError(f"load client did not start: {e}: {ctx.client_stderr(p)}") from None
    return procs, readers


def run_load(procs, readers, what, count, duration, watch, cpu_of=proc_cpu, waited=None):
    """One command to every client; returns (client results, server CPU
    seconds per watched process, wall seconds of the window).  ``cpu_of``:
    how a watched process's CPU seconds are read (/proc's clock ticks by
    default; ``cpuclock.process_cpu`` to the nanosecond).  ``waited``: a
    dict given is filled with the seconds each watched process spent
    runnable, waiting for a CPU (``cpuclock.run_delay``)."""
    start = time.monotonic() + (1.0 if len(procs) > 1 else 0.2)
    for p in procs:
        p.stdin.write(f"run {what} {count} {start:.6f} {duration:.3f}\n".encode())
        p.stdin.flush()
    while time.monotonic() < start:
        time.sleep(min(0.01, max(0.0, start - time.monotonic())))
    c0 = {k: cpu_of(pid) for k, pid in watch.items()}
    w0 = {k: run_delay(pid) for k, pid in watch.items()}
    m0 = machine_cpu()
    t0 = time.monotonic()
    results = []
    if duration > 0:
        time.sleep(max(0.0, start + duration - time.monotonic()))
        c1 = {k: cpu_of(pid) for k, pid in watch.items()}
        w1 = {k: run_delay(pid) for k, pid in watch.items()}
        m1 = machine_cpu()
        t1 = time.monotonic()
        for p, rd in zip(procs, readers):
            results.append(rd.json(120))
    else:
        for p, rd in zip(procs, readers):
            results.append(rd.json(900))
        c1 = {k: cpu_of(pid) for k, pid in watch.items()}
        w1 = {k: run_delay(pid) for k, pid in watch.items()}
        m1 = machine_cpu()
        t1 = time.monotonic()
    if waited is not None:
        waited.update({k: (w1[k] - w0[k]) if w0[k] is not None and w1[k] is not None else None for k in watch})
    cpu = {k: (c1[k] - c0[k]) if c0[k] is not None and c1[k] is not None else None for k in watch}
    # Everything else the machine did meanwhile: other people's work.
    ours = sum(v for v in cpu.values() if v is not None) + sum(r.get("cpu", 0) for r in results)
    cpu["machine_total"] = m1[0] - m0[0]
    cpu["others"] = max(0.0, cpu["machine_total"] - ours)
    return results, cpu, t1 - t0


def quit_clients(procs):
    for p in procs:
        with contextlib.suppress(OSError):
            p.stdin.write(b"quit\n")
            p.stdin.close()
    for p in procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)
        close_pipes(p)
