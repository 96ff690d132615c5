"""Section 2, small-call latency: sequential Cleanup calls on a missing
target over one connection, with Peer.Ping, a bus-driver call and a direct
CheckAuthorization for reference."""

import statistics

from .context import log
from .load import load_clients, quit_clients, run_load
from .stats import fmt_ms, pct


def summary(r, cpu, wall):
    """One client's sequential window (its bench_client.py ``load`` result
    ``r``; ``cpu``: seconds each watched process used, ``others`` too) as
    the figures this section and the A/B (bench/baseline.py) report."""
    ms = r["ms"] or []
    return {"calls": len(ms), "errors": r["errors"], "first_error": r["first_error"],
            "p50_ms": pct(ms, 0.50), "p90_ms": pct(ms, 0.90), "p99_ms": pct(ms, 0.99),
            "max_ms": max(ms) if ms else None, "mean_ms": statistics.mean(ms) if ms else None,
            "client_cpu_ms_per_call": r["cpu"] / max(1, len(ms)) * 1000,
            "server_cpu_ms_per_call": {k: (v / max(1, len(ms)) * 1000 if v is not None else None)
                                       for k, v in cpu.items()
                                       if k not in ("machine_total", "others")},
            "others_busy_cores": cpu["others"] / wall if wall else None}


def run(ctx, label, address, watch, calls):
    procs, readers = load_clients(ctx, address, 1, str(ctx.small_anchor / "missing"))
    out = {}
    try:
        for what in ("cleanup", "ping", "driver", "polkit"):
            res, cpu, wall = run_load(procs, readers, what, calls, 0, watch)
            r = res[0]
            ms = r["ms"] or []
            out[what] = summary(r, cpu, wall)
            log(f"  [{label}] {what}: p50 {fmt_ms(out[what]['p50_ms'])}, p99 {fmt_ms(out[what]['p99_ms'])}"
                f" ({len(ms)} calls, {r['errors']} errors{'; ' + r['first_error'] if r['first_error'] else ''})")
    finally:
        quit_clients(procs)
    ctx.results.setdefault("latency", {})[label] = out
    ctx.flush()
    return out
