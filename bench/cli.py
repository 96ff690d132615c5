"""Section cli: ``locald-shim admin cleanup`` as locald runs it, against the
interpreter's own start.

locald runs the command line as a subprocess for every delegated delete:
``locald-shim admin cleanup --no-interactive PATH``, no terminal, without
``LD_LIBRARY_PATH``, the mechanism already running.  Measured here from the
installed launcher's layout (``data/launcher/launcher.in`` filled in as
``make install`` does: ``/usr/bin/python3 -IB`` and the private ``site``
directory beside it, here the staged client code), as the test user, on the
real polkitd's stack: RUNS rounds, each running, in alternating order,

* ``python3 -I -S -c pass`` (the interpreter alone: the reference),
* ``locald-shim --version``,
* ``locald-shim admin cleanup --no-interactive`` of a fresh small
  root-owned leftover (bench/leftovers.py, made before the round),

each's wall time to exit and peak RSS (bench/clitimes.py ``timed``: GNU
time's, so that the benchmark's own size is not counted).  The
figures: the medians, and cleanup's median minus the reference's.
"""

import os
import statistics
import time
from pathlib import Path

from harness import ROOT
from harness.users import SYSTEM_PYTHON, clean_env

from . import clitimes, leftovers
from .context import log
from .cpuclock import process_cpu
from .sampling import children_cpu, machine_cpu
from .targets import QUIET_OTHERS_CORES

RUNS = 20
COMMANDS = ("python", "version", "cleanup")


def install_launcher(stage):
    """``<stage>/bin/locald-shim``, the launcher ``make install`` writes,
    with ``<stage>/bin/site`` the staged package's directory; its path."""
    bindir = Path(stage) / "bin"
    bindir.mkdir(exist_ok=True)
    text = (ROOT / "data" / "launcher" / "launcher.in").read_text()
    text = text.replace("@PYTHON@", SYSTEM_PYTHON).replace("@MODULE@", "locald_admin.client.shim")
    launcher = bindir / "locald-shim"
    launcher.write_text(text)
    launcher.chmod(0o755)
    site = bindir / "site"
    if not site.exists():
        site.symlink_to(Path(stage))
    return launcher


def run(ctx, address, watch):
    runner = ctx.runner
    if runner.stage is None:
        log("cli: skipped (not root: the launcher needs the staged client)")
        return None
    runs = RUNS * (2 if ctx.args.long else 1)
    launcher = install_launcher(runner.stage)
    made = leftovers.Leftovers(leftovers.anchor(ctx, "cli"))
    made.create([0], 0, runs)
    _, names = made.names(0, 0, runs)
    env = clean_env(address)  # PATH, LANG and the bus: no LD_LIBRARY_PATH, nothing of ours
    errpath = ctx.logdir / "cli.stderr"
    argv = {"python": lambda k: [SYSTEM_PYTHON, "-I", "-S", "-c", "pass"],
            "version": lambda k: [str(launcher), "--version"],
            "cleanup": lambda k: [str(launcher), "admin", "cleanup", "--no-interactive", str(made.anchor / names[k])]}
    out = {what: [] for what in COMMANDS}
    c0 = {k: process_cpu(pid) for k, pid in watch.items()}
    ch0, m0, t0 = children_cpu(), machine_cpu(), time.monotonic()
    for k in range(runs):
        order = COMMANDS if k % 2 == 0 else COMMANDS[::-1]
        for what in order:
            out[what].append(clitimes.timed(argv[what](k), env, runner.uid, runner.gid, errpath))
    c1 = {k: process_cpu(pid) for k, pid in watch.items()}
    ch1, m1, wall = children_cpu(), machine_cpu(), time.monotonic() - t0
    ours = sum(c1[k] - c0[k] for k in watch if c0[k] is not None and c1[k] is not None) + (ch1 - ch0)
    others = max(0.0, (m1[0] - m0[0]) - ours)
    left = sum(os.path.lexists(made.anchor / name) for name in names)
    res = {"runs": runs, "launcher": str(launcher), "leftover_shape": leftovers.SHAPE, "leftovers_left": left,
           "others_busy_cores": others / wall if wall else None}
    for what in COMMANDS:
        ok = [r for r in out[what] if r["rc"] == 0]
        res[what] = {"wall_ms_median": statistics.median(r["wall_ms"] for r in ok) if ok else None,
                     "wall_ms": [r["wall_ms"] for r in out[what]],
                     "maxrss_kib_median": statistics.median(r["maxrss_kib"] for r in ok) if ok else None,
                     "maxrss_kib_max": max(r["maxrss_kib"] for r in ok) if ok else None,
                     "errors": len(out[what]) - len(ok)}
    py, cl = res["python"]["wall_ms_median"], res["cleanup"]["wall_ms_median"]
    res["cleanup_over_python_ms"] = cl - py if cl is not None and py is not None else None
    res["quiet"] = res["others_busy_cores"] is not None and res["others_busy_cores"] <= QUIET_OTHERS_CORES
    if any(res[w]["errors"] for w in COMMANDS) or left:
        try:
            tail = errpath.read_text(errors="replace")[-500:]
        except OSError:
            tail = ""
        res["first_error"] = tail
    log(f"  cli: python3 -I -S {_ms(py)}, --version {_ms(res['version']['wall_ms_median'])}, admin cleanup "
        f"{_ms(cl)} (over python {_ms(res['cleanup_over_python_ms'])}), peak RSS cleanup "
        f"{(res['cleanup']['maxrss_kib_max'] or 0) / 1024:.1f} MiB; {left} leftovers left; errors "
        f"{[res[w]['errors'] for w in COMMANDS]}")
    ctx.results["cli"] = res
    ctx.flush()
    return res


def _ms(v):
    return "-" if v is None else f"{v:.1f} ms"
