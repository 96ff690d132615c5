"""Section 7, the in-use check (issue 21): what the scan of /proc costs the
realistic small request, on a private bus with Debian's system-bus policy,
the real polkitd (the headless group rule) and a fresh mechanism.

Every Cleanup deletes its own small root-owned leftover (bench/leftovers.py:
what runc leaves) below the client user's ``.locald`` on a tmpfs, created as
root before each window (untimed); after each window the section checks
that every call removed one and no client ran out of them.

1. Sequential, one client: Cleanup p50 and the mechanism's CPU per call,
   and a direct CheckAuthorization for reference, without and with
   EXTRA_SLEEPS extra idle root processes and EXTRA_NAMESPACES extra mount
   namespaces (each one more process).
2. 32 clients with those extra processes: Cleanup vs direct
   CheckAuthorization, alternated windows (C P P C).
3. 32 clients (locald-test) without and with OTHER_SLEEPS sleeping
   processes of another login user (without, with, with, without).

The extra processes are forked by a small helper (``HELPER``, Debian's
python3, for the other user under ``setpriv``) that execs them with
PR_SET_PDEATHSIG, kills and reaps them all when its stdin closes (or on
SIGTERM), so none outlives the run.
"""

import os
import statistics
import subprocess
import time
from pathlib import Path

from harness.users import SYSTEM_PYTHON, ensure_login_user

from . import procprofile
from .context import log
from .leftovers import Clients, Leftovers
from .procs import Lines, Reaper, close_pipes
from .sampling import background_load
from .stats import fmt_ms, pct
from .targets import QUIET_OTHERS_CORES

CLIENTS = 32
EXTRA_SLEEPS = 2000
EXTRA_NAMESPACES = 20
OTHER_SLEEPS = 20000

HELPER = r'''
import ctypes, os, signal, sys, time
n, comm, argv = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
libc = ctypes.CDLL(None, use_errno=True)
def stop(*_):
    raise SystemExit(0)
signal.signal(signal.SIGTERM, stop)
null = os.open("/dev/null", os.O_RDWR)
kids = []
try:
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: dies with this helper
                if os.getppid() == 1:
                    os._exit(1)
                os.dup2(null, 0)
                os.dup2(null, 1)
                os.execv(argv[0], argv)
            finally:
                os._exit(127)
        kids.append(pid)
    # Ready once every child runs the final program (unshare has made its namespace).
    deadline = time.monotonic() + 120
    left = list(kids)
    while left and time.monotonic() < deadline:
        still = []
        for pid in left:
            try:
                with open(f"/proc/{pid}/comm") as f:
                    if f.read().strip() != comm:
                        still.append(pid)
            except OSError:
                pass
        left = still
        if left:
            time.sleep(0.05)
    print("ready", len(kids), len(left), flush=True)
    sys.stdin.read()
finally:
    for pid in kids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    for pid in kids:
        try:
            os.waitpid(pid, 0)
        except OSError:
            pass
    print("done", flush=True)
'''


class Sleepers:
    """``n`` processes running ``argv`` (as ``user``, a passwd entry, if
    given), forked by HELPER; ``stop()`` kills and reaps them all."""

    def __init__(self, ctx, what, n, argv, user=None, comm="sleep"):
        self.what, self.n = what, n
        cmd = [SYSTEM_PYTHON, "-I", "-c", HELPER, str(n), comm, *argv]
        if user is not None:
            cmd = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", *cmd]
        t0 = time.monotonic()
        with open(ctx.logdir / f"sleepers-{what.replace(' ', '-')}.stderr", "wb") as err:
            self.proc = Reaper.add(subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                                    stderr=err, cwd="/", start_new_session=True))
        self.stop = ctx.cleanup_cb(f"stop {what}", self._stop)
        self.lines = Lines(self.proc)
        line = self.lines.readline(300).split()
        if len(line) != 3 or line[0] != "ready" or int(line[1]) != n:
            raise RuntimeError(f"{what}: the helper said {line!r}")
        self.not_ready = int(line[2])
        if self.not_ready:
            log(f"  {what}: {self.not_ready} of {n} never reached {comm!r} within 120 s")
        self.start_seconds = time.monotonic() - t0
        log(f"  {what}: {n} started in {self.start_seconds:.1f} s")

    def _stop(self):
        t0 = time.monotonic()
        with_helper = self.proc.poll() is None
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            if with_helper:
                self.lines.readline(300)  # "done": every child killed and reaped
            self.proc.wait(30)
        except (TimeoutError, EOFError, subprocess.TimeoutExpired) as e:
            log(f"  {self.what}: helper did not finish ({e}); killing it (its children die with it)")
            self.proc.kill()
            self.proc.wait(30)
        finally:
            close_pipes(self.proc)
        self.stop_seconds = time.monotonic() - t0
        log(f"  {self.what}: stopped in {self.stop_seconds:.1f} s")


def ensure_pid_room(ctx, extra):
    """Raise kernel.pid_max for the run if ``extra`` more tasks might not
    fit beside what runs now (restored at the end)."""
    path = Path("/proc/sys/kernel/pid_max")
    pid_max = int(path.read_text())
    tasks = int(Path("/proc/loadavg").read_text().split()[3].split("/")[1])
    need = tasks + extra + 4096
    if need <= pid_max:
        return None
    new = max(need, 65536)
    log(f"  raising kernel.pid_max {pid_max} -> {new} for the run")
    ctx.cleanup_cb("restore kernel.pid_max", path.write_text, f"{pid_max}\n")
    path.write_text(f"{new}\n")
    return new


def window(res, cpu, wall, duration, check):
    ok = sum(r["ok"] for r in res)
    lat = [r["ms_summary"] for r in res if r["ms_summary"]]
    ms = [x for r in res for x in (r["ms"] or [])]
    return {"ok": ok, "errors": sum(r["errors"] for r in res),
            "first_error": next((r["first_error"] for r in res if r["first_error"]), None),
            "warmup_error": next((r["warmup_error"] for r in res if r.get("warmup_error")), None),
            "calls_per_s": ok / duration if duration else None,
            "p50_ms": pct(ms, 0.50) if ms else None, "p99_ms": pct(ms, 0.99) if ms else None,
            "client_p50_ms_median": statistics.median([x["p50"] for x in lat]) if lat else None,
            "window_s": wall, "cpu_s": cpu,
            "server_cpu_ms_per_call": {k: (v / ok * 1000 if v is not None and ok else None)
                                       for k, v in cpu.items() if k not in ("machine_total", "others")},
            "others_busy_cores": cpu["others"] / wall if wall else None,
            "quiet": bool(wall) and cpu["others"] / wall <= QUIET_OTHERS_CORES,
            "leftovers": check}


def describe(label, w):
    rate = f"{w['calls_per_s']:.0f} calls/s" if w["calls_per_s"] is not None else f"p50 {fmt_ms(w['p50_ms'])}"
    mech = w["server_cpu_ms_per_call"].get("mechanism")
    log(f"  {label}: {rate}, {w['ok']} ok, {w['errors']} errors"
        f"{'; ' + w['first_error'] if w['first_error'] else ''}; mechanism "
        f"{'-' if mech is None else f'{mech * 1000:.0f} us'}/call; others {w['others_busy_cores']:.2f} cores")


def mean_rate(ws):
    rates = [w["calls_per_s"] for w in ws]
    return statistics.mean(rates) if rates else None


def run(ctx, address, watch, top):
    """The section; ``top`` is a tmpfs for the leftovers (root 0755)."""
    calls = 1000 if ctx.args.long else 300
    duration, pairs = ctx.args.duration, ctx.args.pairs
    out = ctx.results["inuse"] = {"extra_sleeps": EXTRA_SLEEPS, "extra_namespaces": EXTRA_NAMESPACES,
                                  "extra_processes": EXTRA_SLEEPS + EXTRA_NAMESPACES, "other_sleeps": OTHER_SLEEPS,
                                  "clients": CLIENTS, "sequential_calls": calls, "duration_s": duration,
                                  "background_busy_cores": {}, "spawn_seconds": {}, "stop_seconds": {}}
    anchor = top / "proj" / ".locald"
    anchor.mkdir(parents=True)
    os.chown(anchor.parent, ctx.runner.uid, ctx.runner.gid)
    os.chown(anchor, ctx.runner.uid, ctx.runner.gid)
    made = Leftovers(anchor)

    def bg(label):
        out["background_busy_cores"][label] = background_load()
        log(f"  background load before {label}: {out['background_busy_cores'][label]:.2f} cores busy")

    # -- 1. sequential, without and with the extra processes ------------------
    log(f"in-use check: sequential small leftovers, {calls} calls, without and with {EXTRA_SLEEPS} idle root "
        f"processes and {EXTRA_NAMESPACES} mount namespaces")
    seq = out["sequential"] = {}
    extras = []
    one = Clients(ctx, address, 1, anchor, watch, made)
    try:
        for label in ("without", "with"):
            if label == "with":
                ensure_pid_room(ctx, EXTRA_SLEEPS + EXTRA_NAMESPACES)
                extras.append(Sleepers(ctx, "extra root sleeps", EXTRA_SLEEPS, ["/usr/bin/sleep", "600"]))
                extras.append(Sleepers(ctx, "extra namespaces", EXTRA_NAMESPACES,
                                       ["/usr/bin/unshare", "-m", "--propagation", "private", "/usr/bin/sleep", "600"]))
                out["spawn_seconds"]["extra"] = sum(s.start_seconds for s in extras)
            bg(f"sequential {label}")
            seq[label] = {}
            for what in ("cleanup", "polkit"):
                res, cpu, wall, check = one.run(what, calls, 0)
                w = seq[label][what] = window(res, cpu, wall, 0, check)
                describe(f"[{label} extras] {what}", w)
        out["profile"] = procprofile.profile()
        log(f"  profile: {procprofile.describe(out['profile'])}")
        ctx.flush()
    finally:
        one.quit()
    if seq.get("with", {}).get("cleanup") and seq.get("without", {}).get("cleanup"):
        c0, c1 = seq["without"]["cleanup"], seq["with"]["cleanup"]
        if c0["p50_ms"] is not None and c1["p50_ms"] is not None:
            seq["p50_added_ms"] = c1["p50_ms"] - c0["p50_ms"]
        m0, m1 = c0["server_cpu_ms_per_call"].get("mechanism"), c1["server_cpu_ms_per_call"].get("mechanism")
        if m0 is not None and m1 is not None:
            seq["mech_cpu_us_per_extra_process"] = (m1 - m0) * 1000 / out["extra_processes"]

    # -- 2. 32 clients with the extra processes -------------------------------
    log(f"in-use check: {CLIENTS} clients with the extra processes, {duration:g} s windows, cleanup/polkit x{pairs}")
    many = Clients(ctx, address, CLIENTS, anchor, watch, made)
    try:
        tp = out["throughput_extras"] = {"cleanup": [], "polkit": []}
        bg("throughput with extras")
        order = []
        for k in range(pairs):
            order += ["cleanup", "polkit"] if k % 2 == 0 else ["polkit", "cleanup"]
        for what in order:
            res, cpu, wall, check = many.run(what, 0, duration)
            w = window(res, cpu, wall, duration, check)
            tp[what].append(w)
            describe(f"[extras, {CLIENTS} clients] {what}", w)
        c, p = mean_rate(tp["cleanup"]), mean_rate(tp["polkit"])
        tp["ratio"] = c / p if c and p else None
        for s in extras:
            s.stop()
        out["stop_seconds"]["extra"] = sum(getattr(s, "stop_seconds", 0) for s in extras)
        ctx.flush()

        # -- 3. another user's 20,000 sleeping processes -----------------------
        stranger = ensure_login_user()
        log(f"in-use check: {CLIENTS} clients of {ctx.runner.user.pw_name} without and with {OTHER_SLEEPS} "
            f"sleeping processes of {stranger.pw_name} (uid {stranger.pw_uid})")
        ou = out["other_user"] = {"user": stranger.pw_name, "uid": stranger.pw_uid, "without": [], "with": []}
        plan = []
        for k in range(pairs):
            plan += ["without", "with"] if k % 2 == 0 else ["with", "without"]
        sleepers = None
        for label in plan:
            if label == "with" and sleepers is None:
                ou["pid_max_raised_to"] = ensure_pid_room(ctx, OTHER_SLEEPS)
                sleepers = Sleepers(ctx, f"{stranger.pw_name}'s sleeps", OTHER_SLEEPS, ["/usr/bin/sleep", "600"],
                                    user=stranger)
                out["spawn_seconds"]["other_user"] = sleepers.start_seconds
                bg("other user's sleeps present")
            if label == "without" and sleepers is not None:
                sleepers.stop()
                out["stop_seconds"]["other_user"] = sleepers.stop_seconds
                sleepers = None
                bg("other user's sleeps gone")
            if label == "without" and not ou["without"]:
                bg("other user's sleeps absent")
            res, cpu, wall, check = many.run("cleanup", 0, duration)
            w = window(res, cpu, wall, duration, check)
            ou[label].append(w)
            describe(f"[{label} {OTHER_SLEEPS} sleeps] cleanup", w)
        if sleepers is not None:
            sleepers.stop()
            out["stop_seconds"]["other_user"] = sleepers.stop_seconds
        c1, c0 = mean_rate(ou["with"]), mean_rate(ou["without"])
        ou["ratio"] = c1 / c0 if c1 and c0 else None
        # For reference: the same 32 clients' Cleanup without any extra processes.
        if c0 and tp.get("polkit"):
            tp["ratio_without_extras"] = c0 / mean_rate(tp["polkit"])
    finally:
        many.quit()
        out["leftovers"] = made.summary()
        ctx.flush()
    log(f"  leftovers: {made.created:,} created in {made.create_seconds:.1f} s (not timed), "
        f"{len(made.problems)} problems")
    return out
