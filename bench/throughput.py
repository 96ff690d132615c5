"""Section 3, throughput: CLIENTS client processes calling Cleanup through
the mechanism vs the same clients calling polkit's CheckAuthorization
directly, in alternated windows.  The headline's Cleanup removes a fresh
small root-owned leftover per call (bench/leftovers.py: the request locald
makes); a window of missing targets (it stops after scope resolution) is the
secondary line."""

import statistics

from . import leftovers
from .context import log

CLIENTS = 32
RATE = 40  # leftovers per client and second of a window: 1,280 calls/s in all, far above what 2 cores serve
# result key -> (what the bench client calls, a fresh leftover per call)
WINDOWS = {"cleanup": ("cleanup", True), "polkit": ("polkit", False), "cleanup_missing": ("cleanup", False)}


def plan(pairs):
    """Each pair of windows once in either order: C P M, M P C, ..."""
    order = []
    for k in range(pairs):
        order += list(WINDOWS) if k % 2 == 0 else list(WINDOWS)[::-1]
    return order


def run(ctx, address, watch, duration, pairs):
    log(f"throughput: {CLIENTS} clients, {duration:g} s windows, cleanup (small leftovers) / polkit / cleanup "
        f"(missing targets) alternated x{pairs}")
    made = leftovers.Leftovers(leftovers.anchor(ctx, "throughput"))
    clients = leftovers.Clients(ctx, address, CLIENTS, made.anchor, watch, made, rate=RATE)
    runs = {key: [] for key in WINDOWS}
    try:
        for key in plan(pairs):
            what, fresh = WINDOWS[key]
            res, cpu, wall, check = clients.run(what, 0, duration, leftovers=fresh)
            ok = sum(r["ok"] for r in res)
            errors = sum(r["errors"] for r in res)
            lat = [r["ms_summary"] for r in res if r["ms_summary"]]
            first = next((r["first_error"] for r in res if r["first_error"]), None)
            run = {"calls_per_s": ok / duration, "ok": ok, "errors": errors, "first_error": first,
                   "client_p50_ms_median": statistics.median([x["p50"] for x in lat]) if lat else None,
                   "client_p99_ms_max": max(x["p99"] for x in lat) if lat else None,
                   "cpu_s": cpu, "window_s": wall,
                   "clients_cpu_s": sum(r["cpu"] for r in res),
                   "others_busy_cores": cpu["others"] / wall if wall else None,
                   "server_cpu_ms_per_call": {k: (v / ok * 1000 if v is not None and ok else None)
                                              for k, v in cpu.items()
                                              if k not in ("machine_total", "others")},
                   "client_cpu_ms_per_call": sum(r["cpu"] for r in res) / ok * 1000 if ok else None,
                   # Runnable but waiting for a CPU, per call: what each
                   # server lost to the others on the machine's 2 cores.
                   "server_wait_ms_per_call": {k: (v / ok * 1000 if v is not None and ok else None)
                                               for k, v in clients.waited.items()},
                   "leftovers": check}
            runs[key].append(run)
            log(f"  {key}: {run['calls_per_s']:.0f} calls/s ({errors} errors"
                f"{'; ' + first if first else ''}); CPU s: clients {run['clients_cpu_s']:.2f}, "
                + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items() if v is not None)
                + "; waited for a CPU, ms per call: "
                + ", ".join(f"{k} {v:.2f}" for k, v in run["server_wait_ms_per_call"].items() if v is not None))
    finally:
        clients.quit()
    out = {"clients": CLIENTS, "duration_s": duration, "runs": runs, "leftovers": made.summary()}
    for key in runs:
        rates = [r["calls_per_s"] for r in runs[key]]
        out[key] = {"calls_per_s_mean": statistics.mean(rates) if rates else None, "calls_per_s": rates}
    polkit = out["polkit"]["calls_per_s_mean"]
    for key, name in (("cleanup", "ratio"), ("cleanup_missing", "ratio_missing")):
        if out[key]["calls_per_s_mean"] and polkit:
            out[name] = out[key]["calls_per_s_mean"] / polkit
    ctx.results["throughput"] = out
    ctx.flush()
    return out
