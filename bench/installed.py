"""Section 8, the in-use check under the installed unit (issue 21,
``--installed``): Debian 12 booted with systemd-nspawn
(``harness.machine``), the product installed by ``make install``, the
shipped group rule, the hardened unit with ``PrivateMounts=yes``: there the
service has a mount namespace of its own, so every process of the machine
is in "another namespace" for it.

Per call, as a distribution user meets it: ``locald-shim admin cleanup`` of
a small root-owned leftover (what runc leaves) run as the user ``tester``
(in the group ``locald``), timed around the whole command; for reference in
the same windows, ``pkcheck`` of the same action as the same user (polkit's
own time plus a process start).  Windows alternate without and with
EXTRA idle root processes in the machine (without, with, with, without);
the mechanism's CPU per call is read from its ``/proc/<MainPID>/stat``.
The leftovers are made as root before each window (untimed) and checked
gone after it.
"""

import json
import statistics

from harness import ROOT
from harness import machine as machines

from . import procprofile
from .context import log
from .sampling import background_load
from .stats import fmt_ms
from .targets import QUIET_OTHERS_CORES

EXTRA = 1000
CALLS = 50
RULE = ROOT / "data" / "polkit-1" / "rules.d" / "50-locald-admin.rules.example"
IDLE = "/usr/local/bin/bench-idle"  # a copy of sleep, so that only ours are killed by name
# The image has no procps (minbase): kill by /proc/<pid>/comm, and say how many are left.
KILL_IDLE = ('for d in /proc/[0-9]*; do [ "$(cat $d/comm 2>/dev/null)" = bench-idle ] && kill -9 "${d#/proc/}"; '
             'done; sleep 0.5; n=0; for d in /proc/[0-9]*; do [ "$(cat $d/comm 2>/dev/null)" = bench-idle ] && '
             'n=$((n+1)); done; echo $n')
PROJECT = "/home/tester/bench"

# Runs inside the machine, as root, with its python3: one window of calls.
DRIVER = r'''
import json, os, shutil, subprocess, sys, time
calls, tag, project = int(sys.argv[1]), sys.argv[2], sys.argv[3]
anchor = project + "/.locald"
as_tester = ["setpriv", "--reuid=tester", "--regid=tester", "--init-groups"]

def mech():
    pid = subprocess.run(["systemctl", "show", "-p", "MainPID", "--value", "locald-admin.service"],
                         capture_output=True, text=True).stdout.strip()
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(pid), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None, None

def leftover(name):
    d = f"{anchor}/{name}"
    os.makedirs(f"{d}/rootfs/run/shm", mode=0o700)
    with open(f"{d}/config.json", "w") as f:
        f.write("{}\n")
    return d

def timed(argv):
    t = time.perf_counter()
    cp = subprocess.run(argv, capture_output=True, text=True)
    return (time.perf_counter() - t) * 1000, cp

os.makedirs(anchor, exist_ok=True)
shutil.chown(project, "tester", "tester")
shutil.chown(anchor, "tester", "tester")
os.chmod(anchor, 0o755)
# Warm-up: activates the mechanism if it exited idle, and polkitd.
for k in range(2):
    timed(as_tester + ["locald-shim", "admin", "cleanup", "--no-interactive", leftover(f"{tag}-w{k}")])
targets = [leftover(f"{tag}-{k}") for k in range(calls)]
pid0, cpu0 = mech()
shim, pk, errors = [], [], []
for t in targets:
    ms, cp = timed(as_tester + ["locald-shim", "admin", "cleanup", "--no-interactive", t])
    shim.append(ms)
    if cp.returncode != 0 or os.path.lexists(t):
        errors.append(f"{t}: exit {cp.returncode}: {cp.stderr.strip()[:300]}")
    ms, cp = timed(as_tester + ["sh", "-c", "exec pkcheck --action-id org.locald.admin1.cleanup --process $$"])
    pk.append(ms)
    if cp.returncode != 0:
        errors.append(f"pkcheck: exit {cp.returncode}: {cp.stderr.strip()[:300]}")
pid1, cpu1 = mech()
processes = sum(1 for e in os.listdir("/proc") if e.isdigit())
print(json.dumps({"shim_ms": shim, "pkcheck_ms": pk, "errors": errors, "processes": processes,
                  "mech_cpu_s": cpu1 - cpu0 if pid0 is not None and pid0 == pid1 else None}))
'''


def prepare(image):
    rules = image / "etc" / "polkit-1" / "rules.d"
    rules.mkdir(parents=True, exist_ok=True)
    (rules / "50-locald-admin.rules").write_text(RULE.read_text())


def stop_idle(m):
    left = m.sh(KILL_IDLE, check=True, timeout=120).stdout.split()[-1]
    if left != "0":
        raise RuntimeError(f"{left} idle processes are still running in the machine")


def window(m, tag, extra):
    """One window of CALLS calls in the machine; its figures."""
    bg = background_load()
    r = m.run("python3", "-I", "-c", DRIVER, str(CALLS), tag, PROJECT, check=True, timeout=600)
    w = json.loads(r.stdout)
    w.update(extra=extra, background_busy_cores=bg, quiet=bg <= QUIET_OTHERS_CORES,
             shim_p50_ms=statistics.median(w["shim_ms"]), pkcheck_p50_ms=statistics.median(w["pkcheck_ms"]),
             mech_cpu_ms_per_call=w["mech_cpu_s"] * 1000 / CALLS if w["mech_cpu_s"] is not None else None)
    mech = w["mech_cpu_ms_per_call"]
    log(f"  [{tag}] {w['processes']} processes in the machine: locald-shim p50 {fmt_ms(w['shim_p50_ms'])}, "
        f"pkcheck p50 {fmt_ms(w['pkcheck_p50_ms'])}, mechanism {'-' if mech is None else f'{mech:.2f} ms'}/call, "
        f"{len(w['errors'])} errors; background {bg:.2f} cores")
    for e in w["errors"][:3]:
        log(f"    {e}")
    return w


def run(ctx):
    why = machines.unavailable()
    out = ctx.results["installed"] = {"extra": EXTRA, "calls": CALLS, "windows": []}
    if why:
        out["skipped"] = why
        log(f"installed unit: skipped: {why}")
        return out
    log(f"installed unit: booting Debian 12 with systemd-nspawn; {CALLS} calls per window, without and with "
        f"{EXTRA} idle root processes in the machine")
    workdir = ctx.logdir / "machine"
    workdir.mkdir()
    m = machines.Machine(workdir, prepare)
    ctx.cleanup_cb("stop the machine", m.stop)
    m.sh(f"groupadd -r locald && useradd -m -G locald tester && cp /usr/bin/sleep {IDLE}", check=True)
    plan = ["without", "with", "with", "without"]
    running = False
    for k, label in enumerate(plan):
        if label == "with" and not running:
            m.sh(f"for i in $(seq {EXTRA}); do setsid -f {IDLE} 600 </dev/null >/dev/null 2>&1; done", check=True,
                 timeout=300)
            running = True
        if label == "without" and running:
            stop_idle(m)
            running = False
        out["windows"].append(window(m, f"{label}{k}", EXTRA if label == "with" else 0))
        if label == "with" and "profile" not in out:
            out["profile"] = procprofile.profile(lambda argv: m.run(*argv, check=True, timeout=300).stdout)
            log(f"  profile in the machine: {procprofile.describe(out['profile'])}")
        ctx.flush()
    if running:
        stop_idle(m)
    by = {lab: [w for w in out["windows"] if (w["extra"] > 0) == (lab == "with")] for lab in ("without", "with")}
    if by["with"] and by["without"]:
        p50 = {lab: statistics.median([x for w in ws for x in w["shim_ms"]]) for lab, ws in by.items()}
        pk = {lab: statistics.median([x for w in ws for x in w["pkcheck_ms"]]) for lab, ws in by.items()}
        out["shim_p50_ms"], out["pkcheck_p50_ms"] = p50, pk
        out["added_ms"] = p50["with"] - p50["without"]
        cpu = {lab: [w["mech_cpu_ms_per_call"] for w in ws if w["mech_cpu_ms_per_call"] is not None]
               for lab, ws in by.items()}
        if cpu["with"] and cpu["without"]:
            out["mech_cpu_ms_per_call"] = {lab: statistics.median(v) for lab, v in cpu.items()}
            out["mech_cpu_us_per_extra_process"] = ((statistics.median(cpu["with"]) - statistics.median(cpu["without"]))
                                                    * 1000 / EXTRA)
    out["errors"] = sum(len(w["errors"]) for w in out["windows"])
    m.stop()
    return out
