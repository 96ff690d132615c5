"""Section 2, small-call latency: sequential Cleanup calls over one
connection, each of a fresh small root-owned leftover (bench/leftovers.py:
the request locald makes, the headline), then of missing targets (the
secondary line: it stops after scope resolution), with Peer.Ping, a
bus-driver call and a direct CheckAuthorization for reference."""

import statistics

from . import cpuclock, leftovers
from .context import log
from .stats import fmt_ms, pct
from .targets import QUIET_OTHERS_CORES

# result key -> (what the bench client calls, a fresh leftover per call)
WINDOWS = {"cleanup": ("cleanup", True), "cleanup_missing": ("cleanup", False), "polkit": ("polkit", False),
           "ping": ("ping", False), "driver": ("driver", False)}


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
    made = leftovers.Leftovers(leftovers.anchor(ctx, "latency-" + label.replace(" ", "-")))
    clients = leftovers.Clients(ctx, address, 1, made.anchor, watch, made)
    out = {}
    try:
        for key, (what, fresh) in WINDOWS.items():
            res, cpu, wall, check = clients.run(what, calls, 0, cpu_of=cpuclock.process_cpu, leftovers=fresh)
            r = res[0]
            ms = r["ms"] or []
            w = out[key] = summary(r, cpu, wall)
            w["quiet"] = w["others_busy_cores"] is not None and w["others_busy_cores"] <= QUIET_OTHERS_CORES
            if check is not None:
                w["leftovers"] = check
            log(f"  [{label}] {key}: p50 {fmt_ms(w['p50_ms'])}, p99 {fmt_ms(w['p99_ms'])}"
                f" ({len(ms)} calls, {r['errors']} errors{'; ' + r['first_error'] if r['first_error'] else ''};"
                f" others {w['others_busy_cores']:.2f} cores)")
    finally:
        clients.quit()
    out["leftover_shape"] = leftovers.SHAPE
    out["leftover_problems"] = made.problems
    ctx.results.setdefault("latency", {})[label] = out
    ctx.flush()
    return out
