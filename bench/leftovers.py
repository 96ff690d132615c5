"""The request locald really makes: a small root-owned leftover per call.

locald delegates a delete only after its own failed, so its request always
has something to remove.  ``Leftovers`` makes, as root and before the timed
window, one runc-style bundle per call below the client user's ``.locald``:
a root 0700 directory holding ``config.json`` (0600), a mode 000 file and a
root 0700 ``rootfs`` with ``dev``, ``proc`` and ``run/shm`` in it (0700 each,
the mount points runc leaves), ``SHAPE_ENTRIES`` entries in all.  The
clients (harness/programs/bench_client.py ``load``) name their targets
``<prefix>-<pid>-<n>-<k>`` (warm-up ``<prefix>-<pid>-w<n>-<k>``, ``n`` the
client's command number), so exactly those are made, and after each window
``check`` says whether each call removed one and no client ran out.

``Clients``: load clients whose pids are known, each window's leftovers made
before it.  ``anchor(ctx, what)``: a ``.locald`` of the test user on a tmpfs
of its own for them.
"""

import os
import subprocess
import time

from harness import trees

from .context import log
from .load import quit_clients, run_load
from .procs import Lines

WARMUP = 3  # warm-up calls per command (bench_client.py)
PER_CLIENT_RATE = 100  # leftovers per client per second of a window (32 x 100/s: far above any rate seen)
PREFIX = "lo"
# The bundle, below its top directory: (relative path, mode); None: a file.
DIRS = (("rootfs", 0o700), ("rootfs/dev", 0o700), ("rootfs/proc", 0o700), ("rootfs/run", 0o700),
        ("rootfs/run/shm", 0o700))
FILES = (("config.json", 0o600, b"{}\n"), ("state", 0o000, b""))
SHAPE_ENTRIES = 1 + len(DIRS) + len(FILES)
SHAPE = ("a root 0700 bundle: config.json (0600), a mode 000 file, rootfs/{dev,proc,run/shm} (0700 each); "
         f"{SHAPE_ENTRIES} entries")


def anchor(ctx, what):
    """``<tmpfs>/proj/.locald`` owned by the test user, on a tmpfs mounted
    for the run (unmounted at its end)."""
    top, _ = ctx.tmpfs(what, "size=256m,nr_inodes=400k,mode=755")
    return trees.make_anchor(top, ctx.runner.uid, ctx.runner.gid)


class Leftovers:
    """The leftovers the clients name, created as root in ``anchor``."""

    def __init__(self, anchor):
        self.anchor = anchor
        self.created = 0
        self.create_seconds = 0.0
        self.problems = []

    def names(self, pid, n, count):
        return ([f"{PREFIX}-{pid}-w{n}-{k}" for k in range(WARMUP)],
                [f"{PREFIX}-{pid}-{n}-{k}" for k in range(count)])

    def create(self, pids, n, count):
        t0 = time.monotonic()
        fd = os.open(self.anchor, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for pid in pids:
                warm, timed = self.names(pid, n, count)
                for name in warm + timed:
                    os.mkdir(name, 0o700, dir_fd=fd)
                    for sub, mode in DIRS:
                        os.mkdir(f"{name}/{sub}", mode, dir_fd=fd)
                    for sub, mode, data in FILES:
                        f = os.open(f"{name}/{sub}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode, dir_fd=fd)
                        if data:
                            os.write(f, data)
                        os.close(f)
                    self.created += 1
        finally:
            os.close(fd)
        self.create_seconds += time.monotonic() - t0

    def check(self, pids, n, count, results, exact):
        """Every client's leftovers after window ``n``: deleted ones vs its
        calls, and whether it ran out (its last one is gone)."""
        out = {"per_client": count, "deleted": 0, "left": 0, "ran_out": 0, "mismatch": 0, "warm_left": 0}
        for pid, r in zip(pids, results):
            warm, timed = self.names(pid, n, count)
            left = sum(os.path.lexists(self.anchor / name) for name in timed)
            out["warm_left"] += sum(os.path.lexists(self.anchor / name) for name in warm)
            deleted = count - left
            out["deleted"] += deleted
            out["left"] += left
            calls = r["ok"] + r["errors"]
            if not exact and left == 0:
                out["ran_out"] += 1
            # Duration windows: the call that ends after the window deletes one more, uncounted.
            if not (calls <= deleted <= calls + (0 if exact else 1)):
                out["mismatch"] += 1
        if out["ran_out"] or out["mismatch"] or out["warm_left"]:
            self.problems.append(f"window {n}: {out}")
            log(f"  leftovers: PROBLEM in window {n}: {out}")
        self._clear(name for pid in pids for group in self.names(pid, n, count) for name in group)
        return out

    def _clear(self, names):
        """Remove what a window left (a duration window makes more than its
        calls take), so that the tmpfs's inodes last the run."""
        left = [name for name in names if os.path.lexists(self.anchor / name)]
        for k in range(0, len(left), 2000):
            subprocess.run(["rm", "-rf", "--", *left[k:k + 2000]], cwd=self.anchor, check=True)

    def summary(self):
        return {"shape": SHAPE, "created": self.created, "create_seconds": self.create_seconds,
                "us_per_leftover": self.create_seconds / self.created * 1e6 if self.created else None,
                "problems": self.problems}


class Clients:
    """Load clients (harness/programs/bench_client.py ``load``) whose pids
    are known, the command number each is at, and their leftovers: a
    duration window makes ``rate`` per client and second of it (and 200)."""

    def __init__(self, ctx, address, n, anchor, watch, made, rate=PER_CLIENT_RATE):
        self.anchor, self.watch, self.made, self.rate = anchor, watch, made, rate
        self.procs = [ctx.spawn_client(["load", str(anchor / PREFIX)], address, stdin=True) for _ in range(n)]
        self.readers = [Lines(p) for p in self.procs]
        self.pids = []
        for p, rd in zip(self.procs, self.readers):
            try:
                ready = rd.json(120)
            except (TimeoutError, EOFError, ValueError) as e:
                raise RuntimeError(f"load client did not start: {e}: {ctx.client_stderr(p)}") from None
            if "pid" not in ready:
                raise RuntimeError("the bench client does not report its pid (harness/programs/bench_client.py)")
            self.pids.append(ready["pid"])
        self.n = 0  # every client's command number (all get the same commands)
        self.waited = {}  # the last window's seconds each watched process waited for a CPU

    def quit(self):
        quit_clients(self.procs)

    def run(self, what, count, duration, cpu_of=None, leftovers=True):
        """One window; returns (results, cpu, wall, leftover check).  A
        ``cleanup`` window removes a fresh leftover per call, or with
        ``leftovers=False`` names targets that do not exist (nothing made:
        the missing path)."""
        n = self.n
        per_client = count if count else int(duration * self.rate) + 200
        made = what == "cleanup" and leftovers
        if made:
            self.made.create(self.pids, n, per_client)
        self.n += 1
        kw = {} if cpu_of is None else {"cpu_of": cpu_of}
        self.waited = {}
        res, cpu, wall = run_load(self.procs, self.readers, what, count, duration, self.watch, waited=self.waited, **kw)
        check = self.made.check(self.pids, n, per_client, res, exact=bool(count)) if made else None
        return res, cpu, wall, check
