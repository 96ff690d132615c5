"""Section 1, deletion: Cleanup through the bus vs rm -rf vs shutil.rmtree,
alternated per round on fresh identical trees, on a tmpfs (and with --long
on the disk)."""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import PROGRAMS, trees
from harness.attack import Sampler

from .context import log
from .mounts import fs_of
from .procs import Lines, stop_proc
from .sampling import busy_cores, children_cpu, machine_cpu, proc_cpu, proc_status
from .shapes import TREES, build_tree, entries
from .stats import stats
from .targets import QUIET_OTHERS_S

METHODS = ("cleanup", "rm", "rmtree")
METHOD_LABEL = {"cleanup": "Cleanup (bus)", "rm": "rm -rf", "rmtree": "shutil.rmtree"}


def delete_cleanup(ctx, address, path):
    p = ctx.spawn_client(["delete", str(path)], address)
    try:
        r = Lines(p).json(3600)
    except (TimeoutError, EOFError, ValueError) as e:
        raise RuntimeError(f"delete client: {e}: {ctx.client_stderr(p)}") from None
    finally:
        stop_proc(p)
    return r["seconds"], r["error"]


def delete_rm(path):
    t0 = time.perf_counter()
    cp = subprocess.run(["rm", "-rf", "--", str(path)], stdin=subprocess.DEVNULL,
                        stderr=subprocess.PIPE, timeout=3600)
    seconds = time.perf_counter() - t0
    return seconds, (None if cp.returncode == 0 else f"rc {cp.returncode}: {cp.stderr.decode()[:200]}")


def delete_rmtree(path):
    cp = subprocess.run([sys.executable, str(PROGRAMS / "bench_rmtree.py"), str(path)], stdin=subprocess.DEVNULL,
                        capture_output=True, timeout=3600)
    try:
        r = json.loads(cp.stdout)
    except ValueError:
        return None, f"rc {cp.returncode}: {cp.stderr.decode()[-300:]}"
    return r["seconds"], r["error"]


def audit_duration(ctx, path):
    """The mechanism's own duration for the request on ``path`` (its
    audit line), in seconds: the deletion without the bus round trips."""
    if ctx.mech is None:
        return None
    for line in reversed(ctx.mech.audit_lines()):
        if f" path={path} " in line:
            for field in line.split():
                if field.startswith("duration_ms="):
                    return float(field.split("=", 1)[1]) / 1000
    return None


def deletion_suite(ctx, fs, base, address, shapes, prebuild=False):
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
    os.chown(base / "proj", ctx.runner.uid, ctx.runner.gid)
    os.chown(anchor, ctx.runner.uid, ctx.runner.gid)
    out = ctx.results.setdefault("deletion", {}).setdefault(fs, {})
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
        ctx.results.setdefault("build_sync_seconds", {})[fs] = time.perf_counter() - t1
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
        watch = ctx.delete_watch if m == "cleanup" else {}
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
                seconds, err = delete_cleanup(ctx, address, path)
            elif m == "rm":
                seconds, err = delete_rm(path)
            else:
                seconds, err = delete_rmtree(path)
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
            inside = audit_duration(ctx, path)
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
    ctx.flush()


def run(ctx, address):
    """The deletion suites: every tree on a tmpfs; with --long some on the disk too."""
    rounds = ctx.args.rounds
    b_rounds = 3 if ctx.args.long else 1
    shapes = [("a", rounds), ("b", b_rounds), ("c", rounds), ("d", rounds), ("e", rounds), ("f", b_rounds)]
    top, do_unmount = ctx.tmpfs("deletion", "size=4g,nr_inodes=4m,mode=755")
    deletion_suite(ctx, "tmpfs", top, address, shapes)
    do_unmount()
    if ctx.args.long:
        disk = Path(tempfile.mkdtemp(prefix="locald-bench-disk-", dir="/var/tmp"))
        os.chmod(disk, 0o755)
        remove_disk = ctx.cleanup_cb("remove disk trees", trees.rm_rf, disk)
        st = os.statvfs(disk)
        disk_rounds = min(rounds, 3)
        disk_trees = [("a", disk_rounds), ("b", 1), ("c", disk_rounds), ("d", disk_rounds)]
        need = sum(entries(TREES[k]) * n * len(METHODS) for k, n in disk_trees)
        mem_kb = int(Path("/proc/meminfo").read_text().split("MemAvailable:")[1].split()[0])
        # ~1.5 kB of inode and dentry cache per entry while all trees exist
        if st.f_favail < need * 1.2 or mem_kb * 1024 < need * 1536 * 2:
            log("disk: not enough free inodes or memory to hold every tree at once: skipping (b) on disk")
            disk_trees = [t for t in disk_trees if t[0] != "b"]
        ctx.results["disk_fs"] = fs_of(disk)
        deletion_suite(ctx, "disk", disk, address, disk_trees, prebuild=True)
        remove_disk()
