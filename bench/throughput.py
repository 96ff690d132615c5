"""Section 3, throughput: CLIENTS client processes calling Cleanup through
the mechanism vs the same clients calling polkit's CheckAuthorization
directly, in alternated windows."""

import statistics

from .context import log
from .load import load_clients, quit_clients, run_load

CLIENTS = 32


def run(ctx, address, watch, duration, pairs):
    log(f"throughput: {CLIENTS} clients, {duration:g} s windows, cleanup/polkit alternated x{pairs}")
    procs, readers = load_clients(ctx, address, CLIENTS, str(ctx.small_anchor / "tp"))
    runs = {"cleanup": [], "polkit": []}
    try:
        order = []
        for k in range(pairs):
            order += ["cleanup", "polkit"] if k % 2 == 0 else ["polkit", "cleanup"]
        for what in order:
            res, cpu, wall = run_load(procs, readers, what, 0, duration, watch)
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
                   "client_cpu_ms_per_call": sum(r["cpu"] for r in res) / ok * 1000 if ok else None}
            runs[what].append(run)
            log(f"  {what}: {run['calls_per_s']:.0f} calls/s ({errors} errors"
                f"{'; ' + first if first else ''}); CPU s: clients {run['clients_cpu_s']:.2f}, "
                + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items() if v is not None))
    finally:
        quit_clients(procs)
    out = {"clients": CLIENTS, "duration_s": duration, "runs": runs}
    for what in runs:
        rates = [r["calls_per_s"] for r in runs[what]]
        out[what] = {"calls_per_s_mean": statistics.mean(rates) if rates else None, "calls_per_s": rates}
    if out["cleanup"]["calls_per_s_mean"] and out["polkit"]["calls_per_s_mean"]:
        out["ratio"] = out["cleanup"]["calls_per_s_mean"] / out["polkit"]["calls_per_s_mean"]
    ctx.results["throughput"] = out
    ctx.flush()
    return out
