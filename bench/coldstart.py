"""Section 4, cold start: spawn the mechanism and time its first Cleanup reply
(the client polls for the name), from the venv and from the installed
launcher's layout; the interpreter's own start-up for reference."""

import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import ROOT, trees
from harness.buses import wait_for_no_owner

from .context import log
from .procs import Lines, Reaper, stop_proc
from .stats import stats


def cold_starts(ctx, label, address, argv, env, n):
    trials = []
    for k in range(n):
        client = ctx.spawn_client(["coldstart", str(ctx.small_anchor / f"cold-{k}")], address)
        rd = Lines(client)
        mech = None
        try:
            rd.json(60)  # connected
            with open(ctx.logdir / f"cold-{label}-{k}.stderr", "wb") as err:
                t0 = time.monotonic()
                mech = Reaper.add(subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=err,
                                                   stderr=err, cwd="/"))
            r = rd.json(60)
            if r.get("error"):
                trials.append({"error": r["error"]})
            else:
                trials.append({"to_name_ms": (r["t_name"] - t0) * 1000, "to_reply_ms": (r["t_reply"] - t0) * 1000})
                log(f"  [{label}] trial {k}: name after {trials[-1]['to_name_ms']:.0f} ms, "
                    f"first reply after {trials[-1]['to_reply_ms']:.0f} ms")
        except Exception as e:
            trials.append({"error": f"{type(e).__name__}: {e}"})
            log(f"  [{label}] trial {k}: FAILED: {e}")
        finally:
            stop_proc(client)
            stop_proc(mech)
            with contextlib.suppress(Exception):
                wait_for_no_owner(address, "org.locald.Admin1")
    ok = [t for t in trials if "to_reply_ms" in t]
    out = {"argv": argv, "trials": trials,
           "to_reply_ms": stats([t["to_reply_ms"] for t in ok]),
           "to_name_ms": stats([t["to_name_ms"] for t in ok])}
    ctx.results.setdefault("cold_start", {})[label] = out
    ctx.flush()
    return out


def launcher_stage(ctx):
    """The installed layout (launcher + private site dir, compiled) in a
    temporary directory, as `make install` lays it in /usr/lib/locald-admin."""
    d = Path(tempfile.mkdtemp(prefix="locald-bench-launcher-", dir="/tmp"))
    ctx.cleanup_cb("remove launcher stage", trees.rm_rf, d)
    site = d / "site"
    site.mkdir()
    stage = Path(ctx.runner.stage)
    for pkg in ("locald_admin",):
        shutil.copytree(stage / pkg, site / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(["/usr/bin/python3", "-m", "compileall", "-q", str(site)], check=True,
                   stdout=subprocess.DEVNULL)
    text = (ROOT / "data" / "launcher" / "launcher.in").read_text()
    launcher = d / "locald-admin-mechanism"
    launcher.write_text(text.replace("@PYTHON@", "/usr/bin/python3")
                        .replace("@MODULE@", "locald_admin.mechanism.start"))
    os.chmod(launcher, 0o755)
    return launcher


def startup_reference(ctx, n=5):
    """Interpreter start-up and import cost, for reading the cold start."""
    env = dict(os.environ)
    out = {}
    for label, argv in (("python3 -c pass", ["/usr/bin/python3", "-c", "pass"]),
                        ("python3 -I -S -c pass", ["/usr/bin/python3", "-I", "-S", "-c", "pass"]),
                        ("venv python: import locald_admin.mechanism.main",
                         [sys.executable, "-c", "import locald_admin.mechanism.main"])):
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            subprocess.run(argv, env=env, check=True, stdin=subprocess.DEVNULL)
            times.append((time.perf_counter() - t0) * 1000)
        out[label] = stats(times)
        log(f"  reference: {label}: {statistics.median(times):.0f} ms")
    ctx.results.setdefault("cold_start", {})["reference_ms"] = out


def run(ctx, bus):
    """Both cold starts on ``bus`` (the real polkitd), then the reference."""
    log("cold start (real polkitd; the first call comes from locald-test)")
    env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=bus.address)
    cold_starts(ctx, "python -m locald_admin.mechanism", bus.address,
                [sys.executable, "-m", "locald_admin.mechanism"], env, 5)
    try:
        launcher = launcher_stage(ctx)
        env2 = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
                "DBUS_SYSTEM_BUS_ADDRESS": bus.address}
        cold_starts(ctx, "installed launcher", bus.address, [str(launcher)], env2, 5)
    except Exception as e:
        ctx.note_error("cold start of the installed launcher", e)
    startup_reference(ctx)
