"""locald-admin benchmark (run through scripts/bench, as root).

What it measures (docs/performance.md explains each figure):

1. Deletion, side by side in one run: ``Cleanup`` through the bus (the real
   mechanism as root on a private bus, the polkit mock allowing the action,
   called by the unprivileged user locald-test, timed inside the client from
   just before the call to the reply) vs ``rm -rf`` (timed around the
   subprocess) vs ``shutil.rmtree`` (timed inside its subprocess).  Methods
   alternate per round, each on a freshly built identical tree whose
   ``.locald`` anchor belongs to locald-test and whose contents are
   root-owned.  Trees: (a) 100k files in 1,000 dirs, (b) 1M files in 1,000
   dirs, (c) 100k files in one dir, (d) a 10,000-deep chain; on a tmpfs
   mounted for the run, and with --long on the disk (/var/tmp) as well.
2. Small-call latency: sequential Cleanup calls on a missing target over one
   AdminClient connection, with the polkit mock and with the real polkitd
   (the headless group rule installed for the run); Peer.Ping to the
   mechanism, a bus-driver call and a direct CheckAuthorization for reference.
3. Throughput: 32 client processes (own connections, locald-test) calling
   Cleanup through the mechanism with the real polkitd, vs the same 32
   clients calling polkit's CheckAuthorization directly; alternated.
4. Cold start: spawn the mechanism, time to its first Cleanup reply (the
   client polls for the name), median of 5; also the installed launcher.
5. Idle RSS of the mechanism after a few calls and 1 s idle.
6. Under attack (``harness.attack``): one user at once floods interactive
   checks never answered, 8 MB paths, deletes of two directories of 1,000,000
   entries with 200-byte names and of a 1,000,000-deep chain, and kills a
   caller 0.4 s into a third such delete, while a second user makes small
   calls: their latency against the same calls before the attack, and the
   mechanism's memory (idle, peak, 10 s after).

Everything it starts, mounts, installs or creates is undone in ``finally``.
"""

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import resource
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the test harness, harness/ (not part of the product)

from harness import PROGRAMS, realsystem, trees  # noqa: E402
from harness.attack import Attack, Sampler  # noqa: E402
from harness.buses import PolkitMock, PrivateBus, wait_for_no_owner  # noqa: E402
from harness.mechanism import Mechanism  # noqa: E402
from harness.users import OTHER_USER, TEST_USER, ClientRunner  # noqa: E402
from harness.waiting import terminate  # noqa: E402

DIRF = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILEF = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
NPROC = len(os.sched_getaffinity(0))
BENCH_RULE_NAME = "50-locald-admin-bench.rules"
CLIENTS = 32

TARGETS = {
    # Cleanup / rm -rf, median of the rounds, per tree (issue 12)
    "delete_ratio": {"a": 0.65, "c": 0.95, "d": 0.8, "e": 0.65, "f": 1.0},
    "delete_a_round": 0.7,  # ... and at least QUIET_ROUNDS_NEEDED quiet rounds of (a), each <= 0.7 x
    "delete_peak_mib": 64.0,  # the mechanism's peak RSS during the delete of (f), above its size before
    "over_polkit_ms": 0.35,  # p50 of Cleanup minus p50 of CheckAuthorization direct, real polkitd
    "mech_cpu_us": 350.0,  # mechanism CPU per small call, real polkitd
    "p50_ms": 1.5,  # real polkitd
    "p99_ms": 5.0,
    "throughput_ratio": 0.9,  # >= 0.9 x direct polkit
    "cold_start_ms": 300.0,
    "idle_rss_mb": 30.0,
    "attack_peak_mib": 64.0,  # peak RSS <= idle + 64 MiB under attack
    "attack_after_mib": 5.0,  # <= idle + 5 MiB ten seconds after
}
QUIET_OTHERS_S = 0.05  # a quiet run: other processes used at most this much CPU meanwhile
QUIET_ROUNDS_NEEDED = 5
ATTACK_WIDE = 1_000_000
ATTACK_DEEP = 1_000_000

TREES = {
    "a": {"label": "(a) 100k files in 1,000 dirs", "dirs": 1000, "files": 100},
    "b": {"label": "(b) 1M files in 1,000 dirs", "dirs": 1000, "files": 1000},
    "c": {"label": "(c) 100k files in one dir", "dirs": 0, "files": 100_000},
    "d": {"label": "(d) 10,000-deep chain", "depth": 10_000},
    "e": {"label": "(e) x/{1,000 dirs x 100 files}", "dirs": 1000, "files": 100, "under": "x"},
    "f": {"label": "(f) 1.5M files in one dir", "dirs": 0, "files": 1_500_000},
}
METHODS = ("cleanup", "rm", "rmtree")
METHOD_LABEL = {"cleanup": "Cleanup (bus)", "rm": "rm -rf", "rmtree": "shutil.rmtree"}


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# The client (harness/programs/bench_client.py) runs as the unprivileged user
# with Debian's python3; shutil.rmtree is timed by harness/programs/bench_rmtree.py.

# -- small helpers ------------------------------------------------------------------

def pct(values, q):
    """Nearest-rank percentile."""
    s = sorted(values)
    if not s:
        return None
    return s[max(0, min(len(s) - 1, math.ceil(q * len(s)) - 1))]


def stats(values):
    if not values:
        return None
    return {"n": len(values), "median": statistics.median(values), "min": min(values), "max": max(values)}


def proc_cpu(pid):
    """User+system CPU seconds of process ``pid`` (all its threads), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu():
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = f
    hz = os.sysconf("SC_CLK_TCK")
    busy = user + nice + system + irq + softirq + steal
    return busy / hz, (busy + idle + iowait) / hz


def busy_cores(before, after):
    """Cores kept busy (by anyone) between two machine_cpu() samples."""
    total = after[1] - before[1]
    return (after[0] - before[0]) / total * NPROC if total > 0 else None


def background_load(seconds=1.0):
    """Cores busy with other people's work while we do nothing."""
    a = machine_cpu()
    time.sleep(seconds)
    return busy_cores(a, machine_cpu())


def proc_status(pid):
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads"):
                out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


class Reaper:
    """Every child process bench.py starts; whatever still runs at the end
    is killed by its own pid."""

    procs = []

    @classmethod
    def add(cls, p):
        cls.procs.append(p)
        return p

    @classmethod
    def kill_all(cls):
        for p in cls.procs:
            if p.poll() is None:
                with contextlib.suppress(OSError):
                    p.kill()
                with contextlib.suppress(Exception):
                    p.wait(10)


class Lines:
    """Line reader on a child's stdout with timeouts (never blocks forever)."""

    def __init__(self, proc):
        self.proc = proc
        self.fd = proc.stdout.fileno()
        self.buf = b""
        self.eof = False

    def readline(self, timeout):
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf and not self.eof:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no line from pid {self.proc.pid} within {timeout:g} s")
            r, _, _ = select.select([self.fd], [], [], left)
            if r:
                chunk = os.read(self.fd, 1 << 16)
                if chunk:
                    self.buf += chunk
                else:
                    self.eof = True
        if b"\n" in self.buf:
            line, _, self.buf = self.buf.partition(b"\n")
            return line.decode()
        line, self.buf = self.buf, b""
        if not line:
            raise EOFError(f"pid {self.proc.pid} exited (rc {self.proc.poll()}) without output")
        return line.decode()

    def json(self, timeout):
        return json.loads(self.readline(timeout))


def stop_proc(p, timeout=10):
    if p is None:
        return
    terminate(p, timeout)
    close_pipes(p)


def close_pipes(p):
    for f in (p.stdin, p.stdout):
        if f is not None:
            with contextlib.suppress(OSError):
                f.close()


# -- trees ------------------------------------------------------------------------

def _fill(dfd, nfiles, start=0, step=1):
    for f in range(start, nfiles, step):
        os.close(os.open(f"f{f}", FILEF, 0o644, dir_fd=dfd))


def build_tree(parent, name, spec, workers=NPROC):
    """Create ``parent/name`` per ``spec`` (root-owned, as we are root).
    Subdirectories are filled by ``workers`` forked processes."""
    pfd = os.open(parent, DIRF)
    try:
        os.mkdir(name, 0o755, dir_fd=pfd)
        top = os.open(name, DIRF, dir_fd=pfd)
    finally:
        os.close(pfd)
    if "under" in spec:  # the tree one level down: name/x/...
        os.mkdir(spec["under"], 0o755, dir_fd=top)
        below = os.open(spec["under"], DIRF, dir_fd=top)
        os.close(top)
        top = below
    try:
        if "depth" in spec:
            fd = os.dup(top)
            for _ in range(spec["depth"]):
                os.mkdir("d", 0o755, dir_fd=fd)
                nfd = os.open("d", DIRF, dir_fd=fd)
                os.close(fd)
                fd = nfd
            os.close(fd)
            return
        ndirs, nfiles = spec["dirs"], spec["files"]
        pids = []
        for w in range(workers):
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
                        signal.signal(sig, signal.SIG_DFL)
                    if ndirs == 0:  # one directory: its files shared out
                        _fill(top, nfiles, w, workers)
                    for d in range(w, ndirs, workers):
                        os.mkdir(f"d{d}", 0o755, dir_fd=top)
                        dfd = os.open(f"d{d}", DIRF, dir_fd=top)
                        try:
                            _fill(dfd, nfiles)
                        finally:
                            os.close(dfd)
                    code = 0
                finally:
                    os._exit(code)
            pids.append(pid)
        bad = []
        try:
            while pids:
                if os.waitpid(pids[0], 0)[1] != 0:
                    bad.append(pids[0])
                pids.pop(0)
        finally:
            for pid in pids:  # interrupted: no builder may outlive us
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
        if bad:
            raise RuntimeError(f"tree builder workers failed: {bad}")
    finally:
        os.close(top)


def entries(spec):
    if "depth" in spec:
        return spec["depth"] + 1
    return 1 + ("under" in spec) + spec["dirs"] + max(spec["dirs"], 1) * spec["files"]


def children_cpu():
    """CPU seconds of every waited-for child so far (wait4's rusage)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


# -- the benchmark -------------------------------------------------------------------

class Bench:
    def __init__(self, args, stack):
        self.args = args
        self.stack = stack
        self.results = {"errors": []}
        self.runner = None
        self.client_script = None
        self.logdir = None
        self.n_clients = 0
        self.mech = None
        self.delete_watch = {}  # the processes a Cleanup run uses besides its client

    # -- setup ----------------------------------------------------------------
    def cleanup_cb(self, what, fn, *a, **kw):
        """Register an undo step, run at the end unless run earlier through
        the returned function; failures are logged, never stop the others."""
        done = []

        def run():
            if done:
                return
            done.append(True)
            try:
                fn(*a, **kw)
            except Exception as e:
                log(f"cleanup: {what} failed: {type(e).__name__}: {e}")
                self.results["errors"].append(f"cleanup {what}: {e}")

        self.stack.callback(run)
        return run

    def enter(self, what, cm):
        """Enter the context manager ``cm``; its exit is an undo step."""
        value = cm.__enter__()
        self.cleanup_cb(what, cm.__exit__, None, None, None)
        return value

    def setup_common(self):
        self.logdir = Path(tempfile.mkdtemp(prefix="locald-bench-logs-", dir="/tmp"))
        self.cleanup_cb("remove logs", trees.rm_rf, self.logdir)
        log("staging the client code for the unprivileged user locald-test")
        self.runner = ClientRunner()
        self.cleanup_cb("remove client stage", self.runner.close)
        stage = Path(self.runner.stage)
        self.client_script = self.runner.program("bench_client.py")
        # Precompile, as an installed package would be: the 32 clients would
        # otherwise each compile the pure-Python modules (locald_admin, dbus-fast's
        # uncompiled parts) from source at start-up.
        subprocess.run([self.runner.python, "-m", "compileall", "-q", str(stage)], check=True,
                       stdout=subprocess.DEVNULL)
        subprocess.run(["chmod", "-R", "a+rX", str(stage)], check=True)
        # An anchor owned by the test user for the small calls (missing targets).
        self.small_top = trees.world_tmpdir("locald-bench-small-")
        self.cleanup_cb("remove small anchor", trees.rm_rf, self.small_top)
        self.small_anchor = trees.make_anchor(self.small_top, self.runner.uid, self.runner.gid)

    def tmpfs(self, what, options):
        """A tmpfs mounted for the run on a new directory in /tmp; returns
        (its path, the undo step that unmounts it)."""
        top = Path(tempfile.mkdtemp(prefix=f"locald-bench-{what}-", dir="/tmp"))
        os.chmod(top, 0o755)
        self.cleanup_cb(f"remove {what} mount point", os.rmdir, top)
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "locald-bench", str(top)], check=True)
        return top, self.cleanup_cb(f"unmount {what} tmpfs", unmount, top)

    def spawn_client(self, argv, address, stdin=False):
        self.n_clients += 1
        errpath = self.logdir / f"client-{self.n_clients}.stderr"
        with open(errpath, "wb") as err:
            p = self.runner.popen([self.client_script, *argv], address,
                                  stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=err)
        p.errpath = errpath
        return Reaper.add(p)

    def client_stderr(self, p):
        try:
            return p.errpath.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    # -- 1. deletion ------------------------------------------------------------
    def delete_cleanup(self, address, path):
        p = self.spawn_client(["delete", str(path)], address)
        try:
            r = Lines(p).json(3600)
        except (TimeoutError, EOFError, ValueError) as e:
            raise RuntimeError(f"delete client: {e}: {self.client_stderr(p)}") from None
        finally:
            stop_proc(p)
        return r["seconds"], r["error"]

    @staticmethod
    def delete_rm(path):
        t0 = time.perf_counter()
        cp = subprocess.run(["rm", "-rf", "--", str(path)], stdin=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, timeout=3600)
        seconds = time.perf_counter() - t0
        return seconds, (None if cp.returncode == 0 else f"rc {cp.returncode}: {cp.stderr.decode()[:200]}")

    @staticmethod
    def delete_rmtree(path):
        cp = subprocess.run([sys.executable, str(PROGRAMS / "bench_rmtree.py"), str(path)], stdin=subprocess.DEVNULL,
                            capture_output=True, timeout=3600)
        try:
            r = json.loads(cp.stdout)
        except ValueError:
            return None, f"rc {cp.returncode}: {cp.stderr.decode()[-300:]}"
        return r["seconds"], r["error"]

    def deletion_suite(self, fs, base, address, shapes, prebuild=False):
        """Alternate the methods per round on fresh identical trees below an
        anchor in ``base`` (owned by the test user; the trees are root's).

        ``prebuild``: build every tree of the suite first, then delete.  On
        ext4 a file created right after a mass deletion costs ~1 ms instead
        of ~15 us (the inode allocator skips and re-reads every recently
        deleted inode: perf shows recently_deleted/find_inode_bit), so
        building each tree just before its deletion would take most of the
        run; building all first keeps the trees identical and the build fast.
        """
        anchor = base / "proj" / ".locald"
        anchor.mkdir(parents=True)
        os.chmod(base / "proj", 0o755)
        os.chown(base / "proj", self.runner.uid, self.runner.gid)
        os.chown(anchor, self.runner.uid, self.runner.gid)
        out = self.results.setdefault("deletion", {}).setdefault(fs, {})
        plan = []
        for key, rounds in shapes:
            spec = TREES[key]
            out[key] = {"label": spec["label"], "entries": entries(spec), "rounds": rounds,
                        "methods": {m: {"seconds": [], "errors": [], "by_round": [], "busy_cores": [],
                                        "others_cpu_s": []}
                                    for m in METHODS},
                        "cleanup_in_mechanism_seconds": [], "build_seconds": [], "order": [],
                        "mechanism_peak_above_mib": [],
                        "built": "all trees first" if prebuild else "each just before its deletion"}
            for r in range(rounds):
                order = [METHODS[(j + r) % len(METHODS)] for j in range(len(METHODS))]
                out[key]["order"].append(order)
                plan += [(key, r, m) for m in order]

        def build(key, r, m):
            t0 = time.perf_counter()
            build_tree(anchor, f"{key}-{r}-{m}", TREES[key])
            out[key]["build_seconds"].append(time.perf_counter() - t0)

        if prebuild:
            log(f"[{fs}] building {len(plan)} trees first "
                f"({sum(entries(TREES[k]) for k, _, _ in plan):,} entries)")
            t0 = time.perf_counter()
            for step in plan:
                build(*step)
            t1 = time.perf_counter()
            os.sync()
            self.results.setdefault("build_sync_seconds", {})[fs] = time.perf_counter() - t1
            log(f"[{fs}] built in {t1 - t0:.1f} s, sync {time.perf_counter() - t1:.1f} s")
        current = None
        for key, r, m in plan:
            rec = out[key]
            if key != current:
                current = key
                log(f"[{fs}] {rec['label']}: {rec['rounds']} round(s) x {len(METHODS)} methods")
            path = anchor / f"{key}-{r}-{m}"
            if not prebuild:
                build(key, r, m)
            if fs == "disk":
                os.sync()  # untimed: no write-back of the build during the timed run
            watch = self.delete_watch if m == "cleanup" else {}
            # The mechanism's memory is the target of (f) only; sampling it
            # every 10 ms elsewhere would only add other processes' CPU.
            sampler = Sampler(watch["mechanism"]) if "mechanism" in watch and key == "f" else None
            rss_before = proc_status(watch["mechanism"]).get("VmRSS") if sampler else None
            before, kids0 = machine_cpu(), children_cpu()
            w0 = {k: proc_cpu(pid) for k, pid in watch.items()}
            if sampler:
                sampler.start()
            try:
                if m == "cleanup":
                    seconds, err = self.delete_cleanup(address, path)
                elif m == "rm":
                    seconds, err = self.delete_rm(path)
                else:
                    seconds, err = self.delete_rmtree(path)
            finally:
                peak = sampler.stop() if sampler else None
            after, kids1 = machine_cpu(), children_cpu()
            w1 = {k: proc_cpu(pid) for k, pid in watch.items()}
            # Cores busy (anyone's) during the run, client start-up included,
            # and the CPU of every process that is not part of this run
            # (machine busy time minus the method's processes: its waited-for
            # children, and for Cleanup the mechanism, the bus and polkit's
            # mock): a run is quiet when that stays under QUIET_OTHERS_S.
            rec["methods"][m]["busy_cores"].append(busy_cores(before, after))
            ours = (kids1 - kids0) + sum(w1[k] - w0[k] for k in watch if w0[k] is not None and w1[k] is not None)
            rec["methods"][m]["others_cpu_s"].append(max(0.0, (after[0] - before[0]) - ours))
            if peak and rss_before:
                rec["mechanism_peak_above_mib"].append((peak - rss_before) / 1024)
            if m == "cleanup":
                inside = self.audit_duration(path)
                if inside is not None:
                    rec["cleanup_in_mechanism_seconds"].append(inside)
            if err is None and os.path.lexists(path):
                err = "reported success but the tree is still there"
            if err is not None:
                rec["methods"][m]["errors"].append(err)
                rec["methods"][m]["by_round"].append(None)
                log(f"  round {r} {METHOD_LABEL[m]}: FAILED: {err[:160]}")
                trees.rm_rf(path)
            else:
                rec["methods"][m]["seconds"].append(seconds)
                rec["methods"][m]["by_round"].append(seconds)
                log(f"  round {r} {METHOD_LABEL[m]}: {seconds:.3f} s")
        for key, rec in out.items():
            if key not in dict(shapes):
                continue
            base_rm = rec["methods"]["rm"]["seconds"]
            for m in METHODS:
                mr = rec["methods"][m]
                mr["stats"] = stats(mr["seconds"])
                mr["ratio_to_rm"] = (mr["stats"]["median"] / statistics.median(base_rm)
                                     if mr["stats"] and base_rm else None)
                # Ratios within each round (same round, same machine noise).
                paired = [x / y for x, y in zip(mr["by_round"], rec["methods"]["rm"]["by_round"])
                          if x is not None and y]
                mr["paired_ratio_median"] = statistics.median(paired) if paired else None
                # Quiet rounds: neither this method's run nor rm's saw others
                # use more than QUIET_OTHERS_S of CPU.
                quiet = [x / y for x, y, ox, oy in zip(mr["by_round"], rec["methods"]["rm"]["by_round"],
                                                       mr["others_cpu_s"], rec["methods"]["rm"]["others_cpu_s"])
                         if x is not None and y and ox <= QUIET_OTHERS_S and oy <= QUIET_OTHERS_S]
                mr["quiet_round_ratios"] = quiet
            rec["cleanup_in_mechanism"] = stats(rec["cleanup_in_mechanism_seconds"])
            rec["build"] = stats(rec["build_seconds"])
            rec["build_us_per_entry"] = (statistics.median(rec["build_seconds"]) / rec["entries"] * 1e6
                                         if rec["build_seconds"] else None)
        self.flush()

    def audit_duration(self, path):
        """The mechanism's own duration for the request on ``path`` (its
        audit line), in seconds: the deletion without the bus round trips."""
        if self.mech is None:
            return None
        for line in reversed(self.mech.audit_lines()):
            if f" path={path} " in line:
                for field in line.split():
                    if field.startswith("duration_ms="):
                        return float(field.split("=", 1)[1]) / 1000
        return None

    # -- load clients -----------------------------------------------------------------
    def load_clients(self, address, n, prefix):
        procs = [self.spawn_client(["load", prefix], address, stdin=True) for _ in range(n)]
        readers = [Lines(p) for p in procs]
        for p, rd in zip(procs, readers):
            try:
                rd.json(120)
            except (TimeoutError, EOFError, ValueError) as e:
                raise RuntimeError(f"load client did not start: {e}: {self.client_stderr(p)}") from None
        return procs, readers

    def run_load(self, procs, readers, what, count, duration, watch):
        """One command to every client; returns (client results, server CPU
        seconds per watched process, wall seconds of the window)."""
        start = time.monotonic() + (1.0 if len(procs) > 1 else 0.2)
        for p in procs:
            p.stdin.write(f"run {what} {count} {start:.6f} {duration:.3f}\n".encode())
            p.stdin.flush()
        while time.monotonic() < start:
            time.sleep(min(0.01, max(0.0, start - time.monotonic())))
        c0 = {k: proc_cpu(pid) for k, pid in watch.items()}
        m0 = machine_cpu()
        t0 = time.monotonic()
        results = []
        if duration > 0:
            time.sleep(max(0.0, start + duration - time.monotonic()))
            c1 = {k: proc_cpu(pid) for k, pid in watch.items()}
            m1 = machine_cpu()
            t1 = time.monotonic()
            for p, rd in zip(procs, readers):
                results.append(rd.json(120))
        else:
            for p, rd in zip(procs, readers):
                results.append(rd.json(900))
            c1 = {k: proc_cpu(pid) for k, pid in watch.items()}
            m1 = machine_cpu()
            t1 = time.monotonic()
        cpu = {k: (c1[k] - c0[k]) if c0[k] is not None and c1[k] is not None else None for k in watch}
        # Everything else the machine did meanwhile: other people's work.
        ours = sum(v for v in cpu.values() if v is not None) + sum(r.get("cpu", 0) for r in results)
        cpu["machine_total"] = m1[0] - m0[0]
        cpu["others"] = max(0.0, cpu["machine_total"] - ours)
        return results, cpu, t1 - t0

    def quit_clients(self, procs):
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

    # -- 2. latency -----------------------------------------------------------------
    def latency(self, label, address, watch, calls):
        procs, readers = self.load_clients(address, 1, str(self.small_anchor / "missing"))
        out = {}
        try:
            for what in ("cleanup", "ping", "driver", "polkit"):
                res, cpu, wall = self.run_load(procs, readers, what, calls, 0, watch)
                r = res[0]
                ms = r["ms"] or []
                out[what] = {"calls": len(ms), "errors": r["errors"], "first_error": r["first_error"],
                             "p50_ms": pct(ms, 0.50), "p90_ms": pct(ms, 0.90), "p99_ms": pct(ms, 0.99),
                             "max_ms": max(ms) if ms else None, "mean_ms": statistics.mean(ms) if ms else None,
                             "client_cpu_ms_per_call": r["cpu"] / max(1, len(ms)) * 1000,
                             "server_cpu_ms_per_call": {k: (v / max(1, len(ms)) * 1000 if v is not None else None)
                                                        for k, v in cpu.items()
                                                        if k not in ("machine_total", "others")},
                             "others_busy_cores": cpu["others"] / wall if wall else None}
                log(f"  [{label}] {what}: p50 {fmt_ms(out[what]['p50_ms'])}, p99 {fmt_ms(out[what]['p99_ms'])}"
                    f" ({len(ms)} calls, {r['errors']} errors{'; ' + r['first_error'] if r['first_error'] else ''})")
        finally:
            self.quit_clients(procs)
        self.results.setdefault("latency", {})[label] = out
        self.flush()
        return out

    # -- 3. throughput ------------------------------------------------------------------
    def throughput(self, address, watch, duration, pairs):
        log(f"throughput: {CLIENTS} clients, {duration:g} s windows, cleanup/polkit alternated x{pairs}")
        procs, readers = self.load_clients(address, CLIENTS, str(self.small_anchor / "tp"))
        runs = {"cleanup": [], "polkit": []}
        try:
            order = []
            for k in range(pairs):
                order += ["cleanup", "polkit"] if k % 2 == 0 else ["polkit", "cleanup"]
            for what in order:
                res, cpu, wall = self.run_load(procs, readers, what, 0, duration, watch)
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
            self.quit_clients(procs)
        out = {"clients": CLIENTS, "duration_s": duration, "runs": runs}
        for what in runs:
            rates = [r["calls_per_s"] for r in runs[what]]
            out[what] = {"calls_per_s_mean": statistics.mean(rates) if rates else None, "calls_per_s": rates}
        if out["cleanup"]["calls_per_s_mean"] and out["polkit"]["calls_per_s_mean"]:
            out["ratio"] = out["cleanup"]["calls_per_s_mean"] / out["polkit"]["calls_per_s_mean"]
        self.results["throughput"] = out
        self.flush()
        return out

    # -- 4. cold start ------------------------------------------------------------------
    def cold_starts(self, label, address, argv, env, n):
        trials = []
        for k in range(n):
            client = self.spawn_client(["coldstart", str(self.small_anchor / f"cold-{k}")], address)
            rd = Lines(client)
            mech = None
            try:
                rd.json(60)  # connected
                with open(self.logdir / f"cold-{label}-{k}.stderr", "wb") as err:
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
        self.results.setdefault("cold_start", {})[label] = out
        self.flush()
        return out

    def launcher_stage(self):
        """The installed layout (launcher + private site dir, compiled) in a
        temporary directory, as `make install` lays it in /usr/lib/locald-admin."""
        d = Path(tempfile.mkdtemp(prefix="locald-bench-launcher-", dir="/tmp"))
        self.cleanup_cb("remove launcher stage", trees.rm_rf, d)
        site = d / "site"
        site.mkdir()
        stage = Path(self.runner.stage)
        for pkg in ("locald_admin", "dbus_fast"):
            shutil.copytree(stage / pkg, site / pkg, ignore=shutil.ignore_patterns("__pycache__"))
        subprocess.run(["/usr/bin/python3", "-m", "compileall", "-q", str(site)], check=True,
                       stdout=subprocess.DEVNULL)
        text = (ROOT / "data" / "launcher" / "launcher.in").read_text()
        launcher = d / "locald-admin-mechanism"
        launcher.write_text(text.replace("@PYTHON@", "/usr/bin/python3")
                            .replace("@MODULE@", "locald_admin.mechanism.start"))
        os.chmod(launcher, 0o755)
        return launcher

    def startup_reference(self, n=5):
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
        self.results.setdefault("cold_start", {})["reference_ms"] = out

    # -- 5. RSS ------------------------------------------------------------------------
    def rss(self, label, pid, address=None, calls=10):
        if address is not None:
            procs, readers = self.load_clients(address, 1, str(self.small_anchor / "rss"))
            try:
                self.run_load(procs, readers, "cleanup", calls, 0, {})
            finally:
                self.quit_clients(procs)
        time.sleep(1.0)
        st = proc_status(pid)
        out = {"VmRSS_kB": st.get("VmRSS"), "VmHWM_kB": st.get("VmHWM"), "RssAnon_kB": st.get("RssAnon"),
               "RssFile_kB": st.get("RssFile"), "Threads": st.get("Threads"),
               "VmRSS_MB": st["VmRSS"] / 1024 if "VmRSS" in st else None}
        self.results.setdefault("rss", {})[label] = out
        log(f"  RSS [{label}]: {out['VmRSS_MB']:.1f} MB (peak {st.get('VmHWM', 0) / 1024:.1f} MB, "
            f"{st.get('Threads')} threads)")
        self.flush()
        return out

    # -- 6. under attack ------------------------------------------------------------------
    def phase_attack(self):
        """Private bus, the silent-agent polkit mock, a fresh mechanism, a tmpfs."""
        log("phase 3: under attack (building 3 x 1,000,000 entries and a 1,000,000-deep chain)")
        top, do_unmount = self.tmpfs("attack", "size=12g,nr_inodes=8m,mode=755")
        victim = ClientRunner(OTHER_USER)
        self.cleanup_cb("remove victim stage", victim.close)
        bus = self.enter("attack bus", PrivateBus())
        self.enter("silent-agent polkit mock",
                   PolkitMock(bus, str(ROOT / "tests" / "templates" / "polkitd_silent_agent.py")))
        mech = self.enter("attack mechanism", Mechanism(bus))
        attack = Attack(bus, mech, self.runner, victim, top, wide=ATTACK_WIDE, deep=ATTACK_DEEP)
        log("  attacking")
        out = attack.run()
        lat = [t for _, t in out.victim]
        res = {"idle_mib": out.idle_kib / 1024, "peak_mib": out.peak_kib / 1024, "after_mib": out.after_kib / 1024,
               "victim_ms": stats([t * 1000 for t in lat]),
               "victim_quiet_ms": stats([t * 1000 for t in out.victim_quiet]),
               "victim_errors": [r for r, _ in out.victim if not r["ok"]],
               "walks": out.walks, "killed_walk_stopped": out.wide_left > 0}
        self.results["attack"] = res
        log(f"  memory: idle {res['idle_mib']:.1f} MiB, peak {res['peak_mib']:.1f} MiB, "
            f"10 s after {res['after_mib']:.1f} MiB; victim p50 {res['victim_ms']['median']:.0f} ms "
            f"(quiet {res['victim_quiet_ms']['median']:.0f} ms)")
        self.flush()
        do_unmount()

    # -- phases -----------------------------------------------------------------------
    def want(self, section):
        return self.args.only is None or section in self.args.only

    def phase_mock(self):
        """Private permissive bus, polkit mock allowing the action, the mechanism."""
        log("phase 1: private bus + polkit mock + mechanism")
        bus = PrivateBus()
        Reaper.add(bus.proc)
        stop_bus = self.cleanup_cb("stop mock bus", bus.stop)
        mock = PolkitMock(bus)
        Reaper.add(mock.proc)
        stop_mock = self.cleanup_cb("stop polkit mock", mock.stop)
        mock.allow()
        mech = Mechanism(bus)
        Reaper.add(mech.proc)
        stop_mech = self.cleanup_cb("stop mechanism (mock bus)", mech.stop)
        self.mech = mech
        watch = {"mechanism": mech.proc.pid, "polkit_mock": mock.proc.pid, "dbus-daemon": bus.proc.pid}
        self.delete_watch = watch
        if self.want("latency"):
            log("latency with the polkit mock")
            self.latency("mock", bus.address, watch, self.args.calls)
        if self.want("delete"):
            self.deletions(bus.address)
        self.rss("mock-bus mechanism after the phase", mech.proc.pid)
        self.mech = None
        stop_mech()
        stop_mock()
        stop_bus()

    def deletions(self, address):
        rounds = self.args.rounds
        b_rounds = 3 if self.args.long else 1
        shapes = [("a", rounds), ("b", b_rounds), ("c", rounds), ("d", rounds), ("e", rounds), ("f", b_rounds)]
        top, do_unmount = self.tmpfs("deletion", "size=4g,nr_inodes=4m,mode=755")
        self.deletion_suite("tmpfs", top, address, shapes)
        do_unmount()
        if self.args.long:
            disk = Path(tempfile.mkdtemp(prefix="locald-bench-disk-", dir="/var/tmp"))
            os.chmod(disk, 0o755)
            remove_disk = self.cleanup_cb("remove disk trees", trees.rm_rf, disk)
            st = os.statvfs(disk)
            disk_rounds = min(rounds, 3)
            disk_trees = [("a", disk_rounds), ("b", 1), ("c", disk_rounds), ("d", disk_rounds)]
            need = sum(entries(TREES[k]) * n * len(METHODS) for k, n in disk_trees)
            mem_kb = int(Path("/proc/meminfo").read_text().split("MemAvailable:")[1].split()[0])
            # ~1.5 kB of inode and dentry cache per entry while all trees exist
            if st.f_favail < need * 1.2 or mem_kb * 1024 < need * 1536 * 2:
                log("disk: not enough free inodes or memory to hold every tree at once: skipping (b) on disk")
                disk_trees = [t for t in disk_trees if t[0] != "b"]
            self.results["disk_fs"] = fs_of(disk)
            self.deletion_suite("disk", disk, address, disk_trees, prebuild=True)
            remove_disk()

    def phase_real(self):
        """Debian's system-bus policy, the real polkitd, the group rule."""
        log("phase 2: private bus with the real system-bus policy + real polkitd + headless group rule")
        if not os.access(realsystem.POLKITD, os.X_OK):
            raise RuntimeError(f"{realsystem.POLKITD} is missing")
        # The action, where polkitd reads actions (left alone if identical).
        why = realsystem.action_conflict()
        if why:
            raise RuntimeError(why)
        if realsystem.ACTION_DEST.exists():
            log(f"{realsystem.ACTION_DEST} already installed (identical); leaving it")
        self.enter("remove polkit action", realsystem.installed_action())
        self.enter("remove polkit rule", realsystem.installed_rule(BENCH_RULE_NAME))
        self.group = realsystem.GroupMembership(TEST_USER)
        self.cleanup_cb("restore group", self.group.restore)
        self.group.ensure()

        bus = realsystem.real_bus()
        Reaper.add(bus.proc)
        stop_bus = self.cleanup_cb("stop real bus", bus.stop)
        polkitd = realsystem.Polkitd(bus)
        Reaper.add(polkitd.proc)
        stop_polkitd = self.cleanup_cb("stop polkitd", polkitd.stop)

        if self.want("coldstart"):
            log("cold start (real polkitd; the first call comes from locald-test)")
            env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=bus.address)
            self.cold_starts("python -m locald_admin.mechanism", bus.address,
                             [sys.executable, "-m", "locald_admin.mechanism"], env, 5)
            try:
                launcher = self.launcher_stage()
                env2 = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
                        "DBUS_SYSTEM_BUS_ADDRESS": bus.address}
                self.cold_starts("installed launcher", bus.address, [str(launcher)], env2, 5)
            except Exception as e:
                self.note_error("cold start of the installed launcher", e)
            self.startup_reference()

        mech = Mechanism(bus, "--polkit-timeout", "10")
        Reaper.add(mech.proc)
        stop_mech = self.cleanup_cb("stop mechanism (real bus)", mech.stop)
        watch = {"mechanism": mech.proc.pid, "polkitd": polkitd.proc.pid, "dbus-daemon": bus.proc.pid}
        if self.want("rss"):
            log("idle RSS of a fresh mechanism after 10 calls and 1 s idle")
            self.rss("fresh mechanism, 10 calls, 1 s idle", mech.proc.pid, bus.address, 10)
        if self.want("latency"):
            self.group.ensure()
            log("latency with the real polkitd")
            self.latency("real polkitd", bus.address, watch, self.args.calls)
        if self.want("throughput"):
            self.group.ensure()
            self.throughput(bus.address, watch, self.args.duration, self.args.pairs)
        if self.want("rss"):
            self.rss("real-bus mechanism after the phase", mech.proc.pid)
        stop_mech()
        stop_polkitd()
        stop_bus()

    def note_error(self, what, e):
        log(f"{what}: FAILED: {type(e).__name__}: {e}")
        self.results["errors"].append(f"{what}: {type(e).__name__}: {e}")
        self.results.setdefault("tracebacks", []).append(traceback.format_exc())

    def flush(self):
        """Write what we have so far (a crash later still leaves numbers)."""
        tmp = Path(str(self.args.out) + ".partial")
        tmp.write_text(json.dumps(self.results, indent=1, default=str))

    def run(self):
        self.results["machine"] = machine_info()
        self.results["config"] = {"long": self.args.long, "rounds": self.args.rounds, "calls": self.args.calls,
                                  "duration_s": self.args.duration, "pairs": self.args.pairs,
                                  "only": sorted(self.args.only) if self.args.only else None,
                                  "clients": CLIENTS, "targets": TARGETS}
        t0 = time.monotonic()
        self.results["machine"]["background_busy_cores_start"] = background_load()
        log(f"background load: {self.results['machine']['background_busy_cores_start']:.2f} of {NPROC} cores busy "
            "before we start")
        self.setup_common()
        if self.want("latency") or self.want("delete"):
            try:
                self.phase_mock()
            except Exception as e:
                self.note_error("phase 1 (polkit mock)", e)
        if any(self.want(s) for s in ("latency", "throughput", "coldstart", "rss")):
            try:
                self.phase_real()
            except Exception as e:
                self.note_error("phase 2 (real polkitd)", e)
        if self.want("attack"):
            try:
                self.phase_attack()
            except Exception as e:
                self.note_error("phase 3 (under attack)", e)
        self.results["machine"]["loadavg_end"] = os.getloadavg()
        self.results["machine"]["background_busy_cores_end"] = background_load()
        self.results["wall_seconds"] = time.monotonic() - t0


def unmount(path):
    if not os.path.ismount(path):
        return
    for _ in range(20):
        if subprocess.run(["umount", str(path)], capture_output=True).returncode == 0:
            return
        time.sleep(0.25)
    subprocess.run(["umount", "-l", str(path)], check=True)


def fs_of(path):
    cp = subprocess.run(["findmnt", "-n", "-o", "FSTYPE,SOURCE,OPTIONS", "-T", str(path)], capture_output=True,
                        text=True)
    return cp.stdout.strip()


def machine_info():
    def cmd(*argv):
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
        except Exception:
            return None

    cpu = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = None
    with contextlib.suppress(OSError, IndexError):
        mem = int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1]) // 1024
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "nproc": NPROC,
        "kernel": platform.release(),
        "cpu_model": cpu,
        "mem_total_MB": mem,
        "python": platform.python_version(),
        "python_client": cmd("/usr/bin/python3", "-c", "import platform; print(platform.python_version())"),
        "dbus_daemon": cmd("dpkg-query", "-W", "-f=${Version}", "dbus-daemon"),
        "polkitd": cmd("dpkg-query", "-W", "-f=${Version}", "polkitd"),
        "os": cmd("sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"),
        "git_head": cmd("git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"),
        "git_dirty_code": bool(cmd("git", "-C", str(ROOT), "status", "--porcelain", "--", "mechanism", "client",
                                   "locald_admin")),
        "loadavg_start": os.getloadavg(),
    }


# -- the table ------------------------------------------------------------------------

def fmt_ms(v):
    return "-" if v is None else (f"{v:.2f} ms" if v < 10 else f"{v:.0f} ms")


def fmt_s(st):
    if not st:
        return "-"
    return f"{st['median']:.3f} s ({st['min']:.3f}-{st['max']:.3f})" if st["n"] > 1 else f"{st['median']:.3f} s"


def verdict(ok):
    return "-" if ok is None else ("met" if ok else "NOT MET")


def table(res):
    rows = []  # (figure, value, vs rm -rf / note, target, verdict)
    for fs, shapes in res.get("deletion", {}).items():
        for key, rec in shapes.items():
            for m in METHODS:
                mr = rec["methods"][m]
                ratio = mr.get("ratio_to_rm")
                val = fmt_s(mr.get("stats"))
                if mr["errors"] and not mr["seconds"]:
                    val = "failed: " + mr["errors"][0].split(":")[0]
                elif mr["errors"]:
                    val += f" [{len(mr['errors'])} failed]"
                target, ok = "", None
                goal = TARGETS["delete_ratio"].get(key)
                if goal is not None and m == "cleanup":
                    target = f"<= {goal}x rm -rf"
                    ok = ratio is not None and ratio <= goal
                note = f"{ratio:.2f}x" if ratio is not None else "-"
                if mr.get("paired_ratio_median") is not None and m != "rm" and rec["rounds"] > 1:
                    note += f" (per round {mr['paired_ratio_median']:.2f}x)"
                if m == "cleanup" and rec.get("cleanup_in_mechanism"):
                    note += f"; in mechanism {rec['cleanup_in_mechanism']['median']:.3f} s"
                quiet = mr.get("quiet_round_ratios") or []
                if m != "rm" and rec["rounds"] > 1:
                    note += (f"; quiet rounds {len(quiet)}, median {statistics.median(quiet):.2f}x" if quiet
                             else "; no quiet round")
                rows.append((f"[{fs}] {rec['label']}: {METHOD_LABEL[m]}", val, note, target,
                             verdict(ok) if fs == "tmpfs" else ("(" + verdict(ok) + ")" if ok is not None else "-")))
                if key == "a" and m == "cleanup":
                    good = sum(q <= TARGETS["delete_a_round"] for q in quiet)
                    rows.append((f"[{fs}] {rec['label']}: quiet rounds <= {TARGETS['delete_a_round']}x",
                                 f"{good} of {len(quiet)} quiet ({rec['rounds']} rounds)",
                                 f"quiet: others used <= {QUIET_OTHERS_S} s CPU",
                                 f">= {QUIET_ROUNDS_NEEDED} quiet, each <= {TARGETS['delete_a_round']}x",
                                 verdict(len(quiet) >= QUIET_ROUNDS_NEEDED and good == len(quiet))
                                 if fs == "tmpfs" else "-"))
            peaks = rec.get("mechanism_peak_above_mib") or []
            if key == "f" and peaks:
                rows.append((f"[{fs}] {rec['label']}: mechanism peak RSS above its size before", f"{max(peaks):.1f} MiB",
                             "", f"<= {TARGETS['delete_peak_mib']:.0f} MiB",
                             verdict(max(peaks) <= TARGETS["delete_peak_mib"])))
            if rec.get("build"):
                rows.append((f"[{fs}] {rec['label']}: build (not timed above)", fmt_s(rec["build"]),
                             f"{rec['build_us_per_entry']:.1f} us/entry", "", "-"))
    for label, lat in res.get("latency", {}).items():
        real = label == "real polkitd"
        for what, name in (("cleanup", "Cleanup"), ("polkit", "CheckAuthorization direct"),
                           ("ping", "Peer.Ping to the mechanism"), ("driver", "bus driver GetId")):
            if what not in lat:
                continue
            r = lat[what]
            err = f" [{r['errors']} errors]" if r["errors"] else ""
            if what == "cleanup" and real:
                rows.append((f"latency p50, Cleanup, {label}", fmt_ms(r["p50_ms"]) + err, "",
                             f"<= {TARGETS['p50_ms']} ms",
                             verdict(r["p50_ms"] is not None and r["p50_ms"] <= TARGETS["p50_ms"] and not r["errors"])))
                rows.append((f"latency p99, Cleanup, {label}", fmt_ms(r["p99_ms"]) + err, "",
                             f"<= {TARGETS['p99_ms']} ms",
                             verdict(r["p99_ms"] is not None and r["p99_ms"] <= TARGETS["p99_ms"] and not r["errors"])))
            else:
                rows.append((f"latency p50/p99, {name}, {label}",
                             f"{fmt_ms(r['p50_ms'])} / {fmt_ms(r['p99_ms'])}{err}", "", "", "-"))
        if real and "cleanup" in lat and "polkit" in lat:
            c, k = lat["cleanup"], lat["polkit"]
            if c["p50_ms"] is not None and k["p50_ms"] is not None:
                over = c["p50_ms"] - k["p50_ms"]
                rows.append((f"latency p50 Cleanup minus p50 CheckAuthorization direct, {label}", fmt_ms(over), "",
                             f"<= {TARGETS['over_polkit_ms']} ms", verdict(over <= TARGETS["over_polkit_ms"])))
            cpu = (c.get("server_cpu_ms_per_call") or {}).get("mechanism")
            if cpu is not None:
                rows.append((f"mechanism CPU per small call, {label}", f"{cpu * 1000:.0f} us",
                             f"polkitd {c['server_cpu_ms_per_call'].get('polkitd', 0) * 1000:.0f} us",
                             f"<= {TARGETS['mech_cpu_us']:.0f} us", verdict(cpu * 1000 <= TARGETS["mech_cpu_us"])))
    tp = res.get("throughput")
    if tp:
        for what, name in (("cleanup", "Cleanup via mechanism"), ("polkit", "CheckAuthorization direct")):
            v = tp[what]["calls_per_s_mean"]
            errs = sum(r["errors"] for r in tp["runs"][what])
            rows.append((f"throughput, {tp['clients']} clients, {name}",
                         ("-" if v is None else f"{v:.0f} calls/s") + (f" [{errs} errors]" if errs else ""),
                         "", "", "-"))
        ratio = tp.get("ratio")
        rows.append(("throughput ratio Cleanup / direct polkit", "-" if ratio is None else f"{ratio:.2f}x", "",
                     f">= {TARGETS['throughput_ratio']}x",
                     verdict(None if ratio is None else ratio >= TARGETS["throughput_ratio"])))
    for label, cs in res.get("cold_start", {}).items():
        if label == "reference_ms":
            for what, st in cs.items():
                rows.append((f"reference: {what}", fmt_ms(st["median"]) if st else "-", "", "", "-"))
            continue
        st = cs.get("to_reply_ms")
        nm = cs.get("to_name_ms")
        rows.append((f"cold start to first reply, {label} (median of {st['n'] if st else 0})",
                     fmt_ms(st["median"]) if st else "failed",
                     f"name after {fmt_ms(nm['median'])}" if nm else "", f"<= {TARGETS['cold_start_ms']:.0f} ms",
                     verdict(None if not st else st["median"] <= TARGETS["cold_start_ms"])))
    for label, r in res.get("rss", {}).items():
        target, ok = "", None
        if label.startswith("fresh"):
            target = f"<= {TARGETS['idle_rss_mb']:.0f} MB"
            ok = r["VmRSS_MB"] is not None and r["VmRSS_MB"] <= TARGETS["idle_rss_mb"]
        rows.append((f"idle RSS, {label}", "-" if r["VmRSS_MB"] is None else f"{r['VmRSS_MB']:.1f} MB",
                     f"peak {r['VmHWM_kB'] / 1024:.1f} MB" if r.get("VmHWM_kB") else "", target, verdict(ok)))
    a = res.get("attack")
    if a:
        rows.append(("under attack: mechanism peak RSS above idle", f"{a['peak_mib'] - a['idle_mib']:.1f} MiB",
                     f"idle {a['idle_mib']:.1f} MiB, peak {a['peak_mib']:.1f} MiB",
                     f"<= {TARGETS['attack_peak_mib']:.0f} MiB",
                     verdict(a["peak_mib"] - a["idle_mib"] <= TARGETS["attack_peak_mib"])))
        rows.append(("under attack: RSS above idle 10 s after", f"{a['after_mib'] - a['idle_mib']:.1f} MiB", "",
                     f"<= {TARGETS['attack_after_mib']:.0f} MiB",
                     verdict(a["after_mib"] - a["idle_mib"] <= TARGETS["attack_after_mib"])))
        rows.append(("under attack: another user's small call", fmt_ms(a["victim_ms"]["median"]),
                     f"quiet {fmt_ms(a['victim_quiet_ms']['median'])}, {len(a['victim_errors'])} errors", "no error",
                     verdict(not a["victim_errors"])))
    head = ("figure", "value (median (min-max))", "vs rm -rf / note", "target", "met?")
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(5)]
    lines = [" | ".join(str(c).ljust(w) for c, w in zip(head, widths)),
             "-+-".join("-" * w for w in widths)]
    lines += [" | ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--long", action="store_true",
                   help="more rounds, tree (b) 3x, the disk (/var/tmp) too, longer latency and throughput runs "
                        "(up to ~20 min)")
    p.add_argument("--rounds", type=int, help="rounds per method for trees (a), (c), (d) (default 5; --long 9)")
    p.add_argument("--out", type=Path, default=ROOT / "bench-results.json",
                   help="JSON results (default bench-results.json in the repository, git-ignored)")
    p.add_argument("--only", help="comma-separated sections to run: delete, latency, throughput, coldstart, rss, "
                                  "attack")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench: must run as root (tmpfs mount, real polkitd, installed polkit action and rule, clients "
              "as the user locald-test); try: sudo scripts/bench", file=sys.stderr)
        return 1
    if args.rounds is None:
        args.rounds = 9 if args.long else 5
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    args.calls = 5000 if args.long else 1000
    args.duration = 15.0 if args.long else 5.0
    args.pairs = 3 if args.long else 2
    if args.only:
        args.only = {s.strip() for s in args.only.split(",") if s.strip()}
        unknown = args.only - {"delete", "latency", "throughput", "coldstart", "rss", "attack"}
        if unknown:
            p.error(f"unknown sections: {', '.join(sorted(unknown))}")
    args.out = args.out.resolve()

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    os.umask(0o022)

    interrupted = None
    with contextlib.ExitStack() as stack:
        stack.callback(Reaper.kill_all)  # runs last: anything a step left running
        bench = Bench(args, stack)
        try:
            bench.run()
        except BaseException as e:  # noqa: B036 -- undo everything, keep the numbers
            bench.note_error("benchmark", e)
            if not isinstance(e, Exception):
                interrupted = e
        finally:
            bench.results.setdefault("machine", machine_info())
    res = bench.results
    lines = table(res)
    res["table"] = lines
    args.out.write_text(json.dumps(res, indent=1, default=str) + "\n")
    with contextlib.suppress(OSError):
        Path(str(args.out) + ".partial").unlink()
    m = res["machine"]
    print()
    print(f"locald-admin benchmark, {m['date']}: {m['nproc']} CPUs ({m['cpu_model']}), kernel {m['kernel']}, "
          f"Python {m['python']}, polkitd {m['polkitd']}, dbus-daemon {m['dbus_daemon']}, "
          f"load {m['loadavg_start'][0]:.2f} -> {m.get('loadavg_end', [0])[0]:.2f}, background "
          f"{m.get('background_busy_cores_start') or 0:.2f}/{m.get('background_busy_cores_end') or 0:.2f} cores busy, "
          f"{res.get('wall_seconds', 0):.0f} s")
    print("\n".join(lines))
    if res["errors"]:
        print("\nerrors:")
        for e in res["errors"]:
            print(f"  {e}")
    print(f"\nresults: {args.out}")
    if isinstance(interrupted, SystemExit):
        return interrupted.code
    if interrupted is not None:
        return 130
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
