"""The removal walks alone (no bus): rm -rf vs the C walk vs the Python walk.

    sudo .venv/bin/python scripts/bench_walk.py [--rounds N] [--shapes a,one,chain,targetx] [--threads N]

Each round builds a fresh tree per method on a tmpfs mounted for the run
(and unmounted at the end), and times the methods one after the other,
their order rotated per round.  The walks run in this process as
remove.remove_entry does (the split with --threads, then the walk); rm -rf
is a child.  Each measurement records the CPU other processes used
meanwhile (/proc/stat busy time minus ours and our children's): a round is
quiet when that is under 0.05 s (bench.targets.QUIET_OTHERS_S) for every
method.  Ratios are to rm -rf of the same round.  The trees, the tmpfs and
the CPU readings are the benchmark's (bench/: shapes, mounts, sampling).
"""

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from locald_admin.fs import fsops, report, split, walk

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the benchmark's pieces, bench/ (not part of the product)

from bench.mounts import mount_tmpfs, unmount  # noqa: E402
from bench.sampling import machine_cpu  # noqa: E402
from bench.shapes import TREES, build_tree  # noqa: E402
from bench.targets import QUIET_OTHERS_S  # noqa: E402

# The shapes by their names here, as bench's trees: (a), (c), (d), (e).
SHAPES = {"a": "a", "one": "c", "chain": "d", "targetx": "e"}


def own_cpu():
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def build(parent, name, shape):
    """``parent/name`` in ``shape``: a (100,000 empty files in 1,000
    directories), one (100,000 files in one directory), chain (10,000 deep),
    targetx (target/x/{1,000 dirs x 100 files})."""
    if shape not in SHAPES:
        raise SystemExit(f"unknown shape {shape}")
    build_tree(parent, name, TREES[SHAPES[shape]])


def run_walk(parent, name, fs, threads):
    pfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    dfd = fs.open_beneath(pfd, name)
    try:
        res = report.WalkResult()
        split.remove_in_parallel(dfd, res, threads, fs, limits=walk.DEFAULT_LIMITS)
        walk.remove_tree(pfd, name, dfd, result=res, fs=fs)
        assert not res.failures and not res.mounts, (res.failures, res.mounts)
    finally:
        os.close(dfd)
        os.close(pfd)


def measure(method, parent, name, threads):
    path = os.path.join(parent, name)
    b0, c0, t0 = machine_cpu()[0], own_cpu(), time.perf_counter()
    if method == "rm":
        subprocess.run(["rm", "-rf", "--", path], check=True)
    elif method in ("c", "c1"):  # the C walk with --threads, and with one thread
        run_walk(parent, name.encode(), fsops.Fs(openat2=True, compiled=True), threads if method == "c" else 1)
    else:
        run_walk(parent, name.encode(), fsops.Fs(openat2=True, compiled=False), 1)
    t1, c1, b1 = time.perf_counter(), own_cpu(), machine_cpu()[0]
    assert not os.path.lexists(path)
    return t1 - t0, max(0.0, (b1 - b0) - (c1 - c0))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--shapes", default="a,one,chain,targetx")
    ap.add_argument("--threads", type=int, default=max(1, min(os.cpu_count() or 1, 4)))
    ap.add_argument("--methods", default="rm,c,c1,py")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench_walk: needs root (mounts a tmpfs)")
    mnt = mount_tmpfs("walk", "size=2g,nr_inodes=4m")
    methods = args.methods.split(",")
    print(f"cpus {os.cpu_count()}, threads {args.threads}, kernel {os.uname().release}")
    try:
        for shape in args.shapes.split(","):
            rows = []
            for r in range(args.rounds):
                order = methods[r % len(methods):] + methods[:r % len(methods)]
                got = {}
                for m in order:
                    name = f"{shape}-{r}-{m}"
                    build(mnt, name, shape)
                    got[m] = measure(m, mnt, name, args.threads)
                rows.append(got)
                quiet = all(o < QUIET_OTHERS_S for _, o in got.values())
                print(f"{shape} round {r}: " + "  ".join(
                    f"{m} {got[m][0]:.3f}s (others {got[m][1]:.2f})" for m in methods)
                    + "  " + "  ".join(f"{m}/rm {got[m][0] / got['rm'][0]:.2f}" for m in methods if m != "rm")
                    + ("  quiet" if quiet else ""), flush=True)
            for m in methods:
                if m == "rm":
                    continue
                allr = [g[m][0] / g["rm"][0] for g in rows]
                q = [g[m][0] / g["rm"][0] for g in rows if all(o < QUIET_OTHERS_S for _, o in g.values())]
                qs = (f"quiet {len(q)}: median {statistics.median(q):.2f} (min {min(q):.2f}, max {max(q):.2f})"
                      if q else "no quiet round")
                print(f"== {shape} {m}/rm: all {len(allr)}: median {statistics.median(allr):.2f} "
                      f"(min {min(allr):.2f}, max {max(allr):.2f}); {qs}", flush=True)
    finally:
        unmount(mnt)
        os.rmdir(mnt)


if __name__ == "__main__":
    sys.exit(main())
