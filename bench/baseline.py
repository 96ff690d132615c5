"""The A/B against another commit (``--baseline REV``, issue 22): the
small-call path of REV's code and of the working tree's (or of
``--against REV2``'s), alternately, on the same stack in the same run.

``prepare``: each side's code staged as ``make install`` lays it out
(bench/staging.py: REV's from a detached git worktree, removed as soon as it
is staged; the working tree's from this checkout, as its files are at that
moment), with its own client code and bench client for the unprivileged
user, and an import check that each side really runs its own code.

``rounds``: on one stack (the phases module's bus with the polkit mock or
with the real polkitd), rounds A B B A A B B A ... (A the baseline), each
with a fresh mechanism started from that side's staged code and a fresh
client of that side: sequential ``Cleanup`` calls of small root-owned
leftovers (bench/leftovers.py's, on a tmpfs) and of missing targets below the
caller's anchor; client p50/p99 and the mechanism's CPU per call (its
CPU-time clock, bench/cpuclock.py); with the real polkitd also the command
line (bench/clitimes.py).  After each round the mechanism's mapped
extension modules and working directory are checked to be that side's.

``summarize``: per figure each side's median over its rounds, the ratio
working / baseline, whether every window was quiet, and the verdict "no
worse" when the ratio is at most NO_WORSE.
"""

import os
import statistics
import tempfile
from pathlib import Path
from types import SimpleNamespace

from harness import PROGRAMS, ROOT, trees
from harness.buses import wait_for_no_owner
from locald_admin import interface as i

from . import clitimes, cpuclock, deps, latency, leftovers, staging, worktree
from .context import ClientSide, log
from .sampling import background_load
from .stats import fmt_ms
from .targets import QUIET_OTHERS_CORES

NO_WORSE = 1.05  # working / baseline at most this: "no worse" (within the noise of a quiet machine)
SIDES = ("baseline", "working")
CLI_RUNS = 20  # runs of each command per side and stack (--long: twice as many), spread over the rounds


def plan(rounds):
    """A B B A A B B A ...: ``rounds`` per side."""
    order = []
    for k in range(rounds):
        order += list(SIDES) if k % 2 == 0 else list(SIDES[::-1])
    return order


def _stage_side(ctx, top, key, rev, built):
    """One side: its staged site, client code and import checks."""
    site = top / f"site-{key}"
    if rev is None:
        src, undo = ROOT, None
        info = {"source": "working tree", **worktree.describe_working_tree()}
    else:
        commit = worktree.resolve(rev)
        src = top / f"tree-{key}"
        log(f"  {key}: git worktree of {rev} ({commit[:12]})")
        undo = worktree.add(ctx, commit, src)
        info = {"source": "commit", "rev": rev, "commit": commit}
    try:
        info["staged"] = staging.stage_site(src, site, built, what=info.get("rev", "the working tree"))
        info["dependencies"] = deps.place(src, site)
        staging.compile_bytecode(site)
        programs = src / "harness" / "programs"
        info["own_bench_client"] = (programs / "bench_client.py").is_file()
        clients = ClientSide.stage(ctx, f"{key} client stage", key, site=site,
                                   programs=programs if info["own_bench_client"] else PROGRAMS)
    finally:
        if undo is not None:
            undo()  # nothing more is read from the worktree
    info["mechanism_imports"] = staging.mechanism_check(site)
    runner = clients.runner
    info["client_imports"] = staging.import_check(None, None, None, runner.stage or site,
                                                  run=lambda argv: runner.run(argv, None))
    info["version"] = info["mechanism_imports"].get("version")
    log(f"  {key}: {info['staged']['files']} files, extensions {info['staged']['extensions']}, dependencies "
        f"{', '.join(d['name'] + ' ' + d['version'] + ' (' + d['how'] + ')' for d in info['dependencies']) or 'none'}"
        f", version {info['version']}, digest {info['staged']['digest'][:12]}")
    return SimpleNamespace(key=key, site=site, clients=clients, info=info)


def _differences(a, b):
    """The package's sources that differ between two sides' staging."""
    ha, hb = a["staged"]["sha256"], b["staged"]["sha256"]
    return sorted(f for f in set(ha) | set(hb) if ha.get(f) != hb.get(f))


def prepare(ctx):
    """Both sides staged, and a tmpfs anchor of the test user for their
    calls; returns the A/B's state (sides, anchor, leftovers)."""
    args = ctx.args
    top = Path(tempfile.mkdtemp(prefix="locald-bench-ab-", dir="/tmp"))
    ctx.cleanup_cb("remove A/B stage", trees.rm_rf, top)
    built = {}
    sides = {key: _stage_side(ctx, top, key, rev, built)
             for key, rev in (("baseline", args.baseline), ("working", args.against))}
    differ = _differences(sides["baseline"].info, sides["working"].info)
    anchor = leftovers.anchor(ctx, "ab")
    calls = 1500 if args.long else 500
    ctx.results["baseline"] = {
        "rule": f"no worse: working median <= {NO_WORSE} x baseline median", "no_worse_ratio": NO_WORSE,
        "rounds_per_side": args.ab_rounds, "calls_per_window": calls,
        "cli_runs_per_side": CLI_RUNS * (2 if args.long else 1),
        "sides": {k: s.info for k, s in sides.items()}, "files_differing": differ,
        "identical_code": not differ and (sides["baseline"].info["dependencies"]
                                          == sides["working"].info["dependencies"]),
        "stacks": {}}
    log(f"  {len(differ)} staged files differ" + (f": {', '.join(differ[:8])}{' ...' if len(differ) > 8 else ''}"
                                                  if differ else " (identical code)"))
    ctx.flush()
    return SimpleNamespace(sides=sides, anchor=anchor, made=leftovers.Leftovers(anchor), calls=calls)


def host_processes():
    """Processes on the host now: the in-use check of a leftover scans each."""
    return sum(name.isdigit() for name in os.listdir("/proc"))


def _window(clients, calls, leftover):
    """One sequential window: a fresh leftover per call, or (``leftover``
    False) missing targets."""
    before = host_processes()
    res, cpu, wall, check = clients.run("cleanup", calls, 0, cpu_of=cpuclock.process_cpu, leftovers=leftover)
    w = latency.summary(res[0], cpu, wall)
    w["host_processes"] = [before, host_processes()]
    w["warmup_error"] = res[0].get("warmup_error")
    w["quiet"] = w["others_busy_cores"] is not None and w["others_busy_cores"] <= QUIET_OTHERS_CORES
    if check is not None:
        w["leftovers"] = check
    return w


def _check_code(pid, site):
    """The running mechanism's extension modules and working directory are
    its side's (RuntimeError otherwise)."""
    mapped, foreign = staging.mapped_from(pid, site)
    cwd = os.readlink(f"/proc/{pid}/cwd")
    if foreign or os.path.realpath(cwd) != os.path.realpath(site):
        raise RuntimeError(f"mechanism {pid} is not running {site}'s code: cwd {cwd}, mapped {foreign or mapped}")
    return mapped


def one_round(ctx, address, watch, start, side, ab, cli_runs):
    rec = {}
    mech, stop_mech = start(side.site)
    try:
        w = {"mechanism": mech.proc.pid, **watch}
        try:
            clients = leftovers.Clients(side.clients, address, 1, ab.anchor, w, ab.made)
        except RuntimeError as e:
            raise RuntimeError(f"the {side.key} side's client ({side.info.get('rev') or 'working tree'}): {e}") from e
        try:
            rec["leftover"] = _window(clients, ab.calls, leftover=True)
            rec["missing"] = _window(clients, ab.calls, leftover=False)
        finally:
            clients.quit()
        if cli_runs:
            rec["cli"] = clitimes.run(side.clients, address, ab.anchor, cli_runs, w)
        rec["mapped"] = _check_code(mech.proc.pid, side.site)
    finally:
        stop_mech()  # an undo step: logs its failure, never masks what is under way (KeyboardInterrupt)
    wait_for_no_owner(address, i.BUS_NAME)  # the next round's mechanism must not meet this one's name
    return rec


def _us(w):
    v = (w.get("server_cpu_ms_per_call") or {}).get("mechanism")
    return None if v is None else v * 1000


def rounds(ctx, label, address, watch, start, ab, cli):
    """The rounds on one stack; ``start(site)`` starts a mechanism from a
    staged site on it, returning (mechanism, stop)."""
    order = plan(ctx.args.ab_rounds)
    n_sides = ctx.args.ab_rounds
    per_side = CLI_RUNS * (2 if ctx.args.long else 1)
    cli_runs = -(-per_side // n_sides) if cli else 0
    out = ctx.results["baseline"]["stacks"][label] = {"order": order, "background_busy_cores": background_load(),
                                                      "rounds": []}
    log(f"A/B [{label}]: {len(order)} rounds ({' '.join('A' if s == 'baseline' else 'B' for s in order)}), "
        f"{ab.calls} small leftovers and {ab.calls} missing targets per round"
        + (f", {cli_runs} runs of each command line" if cli_runs else "")
        + f"; background {out['background_busy_cores']:.2f} cores busy")
    for k, key in enumerate(order):
        rec = one_round(ctx, address, watch, start, ab.sides[key], ab, cli_runs)
        rec.update(round=k, side=key)
        out["rounds"].append(rec)
        log(_describe(label, rec))
        ctx.flush()


def _describe(label, rec):
    lo, mi, c = rec["leftover"], rec["missing"], rec.get("cli")
    others = max(w["others_busy_cores"] or 0.0 for w in (lo, mi))
    msg = (f"  [{label}] round {rec['round']} {rec['side']}: leftover p50 {fmt_ms(lo['p50_ms'])} "
           f"p99 {fmt_ms(lo['p99_ms'])} mechanism {_us(lo) or 0:.0f} us; missing p50 {fmt_ms(mi['p50_ms'])} "
           f"p99 {fmt_ms(mi['p99_ms'])} mechanism {_us(mi) or 0:.0f} us; others {others:.2f} cores")
    if c:
        msg += (f"; --version {fmt_ms(_median(r['wall_ms'] for r in c['version']))}"
                f" {_median(r['maxrss_kib'] for r in c['version']) or 0:.0f} KiB,"
                f" cleanup {fmt_ms(_median(r['wall_ms'] for r in c['cleanup']))}"
                f" {_median(r['maxrss_kib'] for r in c['cleanup']) or 0:.0f} KiB")
    errs = lo["errors"] + mi["errors"] + (c or {}).get("errors", 0)
    if errs:
        msg += f"; {errs} ERRORS: {lo['first_error'] or mi['first_error'] or c.get('first_error')}"
    return msg


# -- the summary ----------------------------------------------------------------

def _window_figures():
    """(key, name, unit, value of a window) of the sequential windows."""
    for kind, name in (("leftover", "small leftover"), ("missing", "missing target")):
        yield (f"{kind}_p50_ms", f"Cleanup of a {name}: client p50", "ms", kind, lambda w: w["p50_ms"])
        yield (f"{kind}_p99_ms", f"Cleanup of a {name}: client p99", "ms", kind, lambda w: w["p99_ms"])
        yield (f"{kind}_mech_cpu_us", f"Cleanup of a {name}: mechanism CPU per call", "us", kind, _us)


def _cli_figures():
    for what, name in (("version", "locald-shim --version"),
                       ("cleanup", "locald-shim admin cleanup --no-interactive (missing path)")):
        yield (f"cli_{what}_wall_ms", f"{name}: start to exit", "ms", what, "wall_ms")
        yield (f"cli_{what}_maxrss_kib", f"{name}: peak RSS", "KiB", what, "maxrss_kib")


def _leftover_problem(w):
    """A leftover window whose deletes did not match its calls."""
    check = w.get("leftovers") or {}
    return bool(check.get("mismatch") or check.get("warm_left") or check.get("left"))


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _figure(stack, key, name, unit, per_round, quiet, others, errors):
    """``per_round``: [(side, value of that round)] in round order."""
    med = {s: _median(v for side, v in per_round if side == s) for s in SIDES}
    b, w = med["baseline"], med["working"]
    ratio = w / b if b and w is not None else None
    pairs = []
    for k in range(0, len(per_round) - 1, 2):
        vals = dict(per_round[k:k + 2])
        if vals.get("baseline") and vals.get("working") is not None:
            pairs.append(vals["working"] / vals["baseline"])
    if errors:
        verdict = "errors"
    elif ratio is None:
        verdict = "-"
    else:
        verdict = "no worse" if ratio <= NO_WORSE else "WORSE"
    return {"stack": stack, "key": key, "figure": name, "unit": unit,
            "baseline": {"median": b, "values": [v for s, v in per_round if s == "baseline"]},
            "working": {"median": w, "values": [v for s, v in per_round if s == "working"]},
            "ratio": ratio, "pair_ratios": pairs, "pair_ratio_median": _median(pairs),
            "quiet": quiet, "others_max_cores": max(others) if others else None, "errors": errors,
            "verdict": verdict}


def summarize(ctx):
    ab = ctx.results.get("baseline")
    if not ab:
        return
    figures = ab["figures"] = []
    for stack, st in ab["stacks"].items():
        rs = st["rounds"]
        for key, name, unit, kind, get in _window_figures():
            ws = [(r["side"], r[kind]) for r in rs if kind in r]
            others = [w["others_busy_cores"] for _, w in ws if w["others_busy_cores"] is not None]
            errors = sum(w["errors"] for _, w in ws) + sum(_leftover_problem(w) for _, w in ws)
            fig = _figure(stack, key, name, unit, [(s, get(w)) for s, w in ws], all(w["quiet"] for _, w in ws),
                          others, errors)
            counts = [c for _, w in ws for c in w.get("host_processes", ())]
            fig["host_processes"] = [min(counts), max(counts)] if counts else None
            figures.append(fig)
        cli = [(r["side"], r["cli"]) for r in rs if r.get("cli")]
        if not cli:
            continue
        for key, name, unit, what, field in _cli_figures():
            per_round = [(s, _median(run[field] for run in c[what])) for s, c in cli]
            fig = _figure(stack, key, name, unit, per_round, all(c["quiet"] for _, c in cli),
                          [c["others_busy_cores"] for _, c in cli if c["others_busy_cores"] is not None],
                          sum(c["errors"] for _, c in cli))
            for s in SIDES:  # the CLI's figure: the median of all the side's runs, not of the rounds' medians
                runs = [run[field] for side, c in cli if side == s for run in c[what]]
                fig[s]["median"], fig[s]["runs"] = _median(runs), len(runs)
            b, w = fig["baseline"]["median"], fig["working"]["median"]
            fig["ratio"] = w / b if b and w is not None else None
            if not fig["errors"] and fig["ratio"] is not None:
                fig["verdict"] = "no worse" if fig["ratio"] <= NO_WORSE else "WORSE"
            figures.append(fig)
    worse = ab["worse"] = [f"[{f['stack']}] {f['figure']}" for f in figures if f["verdict"] == "WORSE"]
    if worse:
        ab["verdict"] = f"WORSE ({len(worse)} of {len(figures)})"
    elif figures and all(f["verdict"] == "no worse" for f in figures):
        ab["verdict"] = "no worse"
    else:
        ab["verdict"] = "incomplete" if not any(f["errors"] for f in figures) else "errors"
    log(f"A/B verdict: {ab['verdict']}{': ' + '; '.join(worse) if worse else ''}")
    ctx.flush()
