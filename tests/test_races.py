"""Races against the deletion while it runs: an unprivileged attacker swaps
directories for symlinks, exchanges them atomically, moves subtrees out of
the scope and replaces the anchor, while the mechanism (as root) removes a
20,000-file tree on behalf of that same user.

Each round builds a fresh world on a private tmpfs (always unmounted):

    top/                       root 0755
      canary/                  root 0755: files f00..f49, dirs d0..d7 (root
                               and other-user files), t/ -- the names mirror
                               the tree's, so a walk that ends up in here for
                               any reason finds something to delete
        out/                   attacker 0755: where subtrees are moved to
      other/                   another user's 0755 dir with that user's files
      proj/                    attacker
        decoy/                 attacker
        .locald/t/dA/dB/dC/dD/f00..f49   attacker-owned, 4*4*5*5 leaf dirs,
                               one leaf in ten with runc-style root-owned
                               0700 rootfs/run/shm and a mode 000 file

The attacker (``ATTACKER`` below) is a separate process running as the
unprivileged test user, the uid the cleanup is done for.  Half of its
choices "hunt": it finds the directory the walk is in right now (partly
emptied) and swaps its not yet entered subdirectories, or moves it out.
After every round: every canary file has its content, owner and inode; the
call ended with success or a named ``MechanismError``; the engine leaked no
fd.  The number of rounds, swaps, and swaps the walk demonstrably ran into
("met": our symlink was removed as a name) is printed (``-s``) and recorded
as properties.  ``LOCALD_ADMIN_SOAK=1`` runs more and longer rounds.

What each test catches (checked by breaking the defence in a scratch copy):
(a)/(b) and the bus variant: ``Fs.open_beneath`` in the traversal
following a symlink; (c) with one held fd: ``traverse.Traversal._climb`` accepting a '..'
that is not the recorded parent (the walk then climbs out through canary/out
into canary/); (d): the anchor opened through a symlink without the owner
check on the fd; the anchor-as-target test: the anchor looked up again by
name after its owner check (the bug fixed in 5b88f23).
"""

import collections
import json
import os
import random
import subprocess
import threading
import time

import pytest

from harness import fsmode, trees
from harness.users import OTHER_USER, SYSTEM_PYTHON, TEST_USER, clean_env, ensure_user, program_source
from harness.mechanism import stack as mechanism_stack
from locald_admin import interface as i
from locald_admin.fs import fsops, walk
from locald_admin.mechanism import engine
from locald_admin.mechanism.errors import MechanismError

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="race tier: needs uid 0 (the mechanism deletes as "
                                "root while an unprivileged attacker races it); run the suite as root")

SOAK = os.environ.get("LOCALD_ADMIN_SOAK") == "1"
ROUNDS = 10 if SOAK else 2  # per engine configuration
BUS_ROUNDS = 6 if SOAK else 2  # per mechanism mode
ATTACK_SECONDS = 20.0 if SOAK else 4.0  # the attacker stops by itself after this
ATTACK_ITERATIONS = 200_000 if SOAK else 20_000
VICTIM_SECONDS = 20.0 if SOAK else 2.5  # the repeated anchor race, per mode
CALL_TIMEOUT = 120.0
BRANCHING = (4, 4, 5, 5)  # 4+16+80+400 = 500 directories below the target
FILES_PER_LEAF = 50  # 400 leaves * 50 = 20,000 files
CANARY_DIRS = 8
ALLOWED_EXITS = {i.EXIT_OK, i.EXIT_FAILED, i.EXIT_OUTSIDE_SCOPE, i.EXIT_MOUNT_POINT}

STATS = collections.Counter()  # the whole module, printed at the end

# -- the attacker ----------------------------------------------------------------

# harness/programs/attacker.py, run as the unprivileged test user with
# Debian's python3 (stdlib only), its text given with -c.
ATTACKER = program_source("attacker.py")


def start_attacker(attacker, cfg):
    proc = subprocess.Popen([SYSTEM_PYTHON, "-c", ATTACKER, json.dumps(cfg)], env=clean_env(), cwd="/",
                            user=attacker.pw_uid, group=attacker.pw_gid, extra_groups=[],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # The machine may be busy: let the attacker have the CPU whenever it
    # wants it, as if the scheduler always favoured it at the worst moment.
    os.setpriority(os.PRIO_PROCESS, proc.pid, -15)
    line = proc.stdout.readline()
    if line != b"ready\n":
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"attacker did not start: {line!r} {err.decode(errors='replace')}")
    return proc


def stop_attacker(proc):
    """Tell the attacker to stop (EOF on its stdin); return its counters."""
    try:
        out, err = proc.communicate(timeout=ATTACK_SECONDS + 30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError("the attacker did not stop")
    assert proc.returncode == 0, f"attacker failed: {err.decode(errors='replace')}"
    return json.loads(out.decode().strip().splitlines()[-1])


# -- worlds ------------------------------------------------------------------------

DIR_OPEN = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _read_at(dfd, name):
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
    try:
        return os.read(fd, 4096)
    finally:
        os.close(fd)


def mkdir_at(dfd, name, uid, gid, mode=0o755):
    os.mkdir(name, mode, dir_fd=dfd)
    fd = os.open(name, DIR_OPEN, dir_fd=dfd)
    os.fchown(fd, uid, gid)
    os.fchmod(fd, mode)
    return fd


def mkfile_at(dfd, name, uid, gid, mode=0o644, data=b""):
    fd = os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, mode, dir_fd=dfd)
    try:
        if data:
            os.write(fd, data)
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def build_tree(dfd, level, uid, gid, counter):
    for k in range(BRANCHING[level]):
        fd = mkdir_at(dfd, f"d{k}", uid, gid)
        try:
            if level + 1 < len(BRANCHING):
                build_tree(fd, level + 1, uid, gid, counter)
                continue
            for j in range(FILES_PER_LEAF):
                mkfile_at(fd, f"f{j:02d}", uid, gid)
            counter[0] += 1
            if counter[0] % 10 == 1:  # runc's leftovers: root-owned 0700 dirs and a mode 000 file
                r = mkdir_at(fd, "rootfs", 0, 0, 0o700)
                run = mkdir_at(r, "run", 0, 0, 0o700)
                shm = mkdir_at(run, "shm", 0, 0, 0o700)
                mkfile_at(shm, "secret", 0, 0, 0o000, b"x")
                for x in (shm, run, r):
                    os.close(x)
        finally:
            os.close(fd)


class World:
    def __init__(self, base, n, attacker, other, tree=True, depth=0):
        self.top = base / f"round{n}"
        self.attacker, self.other = attacker, other
        a, o = (attacker.pw_uid, attacker.pw_gid), (other.pw_uid, other.pw_gid)
        self.top.mkdir()
        os.chmod(self.top, 0o755)
        top = os.open(self.top, DIR_OPEN)
        fds = [top]
        try:
            canary = mkdir_at(top, "canary", 0, 0)
            fds.append(canary)
            for j in range(FILES_PER_LEAF):
                mkfile_at(canary, f"f{j:02d}", 0, 0, data=b"canary f%02d" % j)
            for k in range(CANARY_DIRS):
                d = mkdir_at(canary, f"d{k}", 0, 0)
                for j in range(10):
                    mkfile_at(d, f"f{j:02d}", 0, 0, data=b"canary d%d/f%02d" % (k, j))
                for j in range(5):
                    mkfile_at(d, f"g{j:02d}", *o, data=b"other's d%d/g%02d" % (k, j))
                os.close(d)
            t = mkdir_at(canary, "t", 0, 0)
            mkfile_at(t, "f00", 0, 0, data=b"canary t/f00")
            os.close(t)
            os.close(mkdir_at(canary, "out", *a))
            oth = mkdir_at(top, "other", *o)
            fds.append(oth)
            for j in range(10):
                mkfile_at(oth, f"f{j:02d}", *o, data=b"other's f%02d" % j)
            for sub in ("d0", "t"):
                d = mkdir_at(oth, sub, *o)
                mkfile_at(d, "f00", *o, data=b"other's %s/f00" % sub.encode())
                os.close(d)
            above = top
            for _ in range(depth):  # the project deep down: root-owned p/p/p/...
                above = mkdir_at(above, "p", 0, 0)
                fds.append(above)
            proj = mkdir_at(above, "proj", *a)
            fds.append(proj)
            decoy = mkdir_at(proj, "decoy", *a)
            mkfile_at(decoy, "mine", *a, data=b"attacker's own")
            os.close(decoy)
            anchor = mkdir_at(proj, ".locald", *a)
            fds.append(anchor)
            if tree:
                t = mkdir_at(anchor, "t", *a)
                try:
                    build_tree(t, 0, *a, [0])
                finally:
                    os.close(t)
        finally:
            for fd in reversed(fds):
                os.close(fd)
        self.canary = self.top / "canary"
        self.depth = depth
        self.proj = self.top.joinpath(*["p"] * depth, "proj")
        self.anchor = self.proj / ".locald"
        self.target = self.anchor / "t"
        self.before = self.snapshot()

    def attacker_config(self, kinds, seed, target_root=True, holds=(0, 0, 0.0002, 0.001, 0.003), delay=0.0):
        canary = str(self.canary)
        return {"seed": seed, "kinds": list(kinds), "branching": list(BRANCHING),
                "target_root": str(self.target) if target_root else "",
                "anchor": str(self.anchor), "decoy": str(self.proj / "decoy"),
                "out": str(self.canary / "out"),
                # absolute and relative symlinks to the canaries (a directory,
                # another user's directory, a subdirectory, a file)
                "dests": [canary, str(self.top / "other"), canary + "/d0", canary + "/f00"]
                + ["../" * k + "canary" for k in range(1, 8)],
                "anchor_dests": [canary, str(self.top / "other"), "../" * (self.depth + 1) + "canary",
                                 "../" * (self.depth + 1) + "other"],
                "seconds": ATTACK_SECONDS, "iterations": ATTACK_ITERATIONS, "batch": 8, "holds": list(holds),
                "hunt": 0.5, "spin": 0.0, "files": FILES_PER_LEAF, "delay": delay}

    def snapshot(self):
        """Every canary entry (not canary/out, the attacker's): type, owner,
        mode, inode, content."""
        snap = {}
        for root in (self.canary, self.top / "other"):
            snap.update(trees.snapshot(root, record=trees.inode, relative=False, skip=[self.canary / "out"]))
        return snap

    def check_canaries(self):
        after = self.snapshot()
        missing = sorted(p for p in self.before if p not in after)
        changed = sorted(p for p in self.before if p in after and after[p] != self.before[p])
        assert not missing and not changed, (
            f"canary damaged: {len(missing)} missing (e.g. {missing[:5]}), {len(changed)} changed "
            f"(e.g. {changed[:5]})")

    def remove(self):
        trees.rm_rf(self.top)


# -- fixtures ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def racefs():
    """A private tmpfs for the worlds (always unmounted); /tmp if mounting
    is not possible here."""
    d = trees.world_tmpdir("locald-admin-race-")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755,size=512m", "locald-admin-race", str(d)],
                             capture_output=True).returncode == 0
    try:
        yield d
    finally:
        if mounted:
            if subprocess.run(["umount", str(d)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(d)])
        trees.rm_rf(d)
        print(f"\nrace totals: {dict(sorted(STATS.items()))}")


@pytest.fixture(scope="module")
def users():
    return ensure_user(TEST_USER), ensure_user(OTHER_USER)


_round_no = [0]


def next_round():
    _round_no[0] += 1
    return _round_no[0]


def open_fds():
    return sorted(os.listdir("/proc/self/fd"))


def engine_call(path, uid, limits=walk.DEFAULT_LIMITS):
    """engine.cleanup in a thread (bounded), with the walk's ``limits``; the
    outcome's name, or raise if it was anything but success or a named
    MechanismError."""
    box = {}

    def run():
        try:
            box["removed"] = engine.cleanup(path, uid, limits=limits)
        except BaseException as e:  # noqa: B036 -- judged below
            box["exc"] = e

    th = threading.Thread(target=run, name="cleanup-under-attack", daemon=True)
    th.start()
    th.join(CALL_TIMEOUT)
    assert not th.is_alive(), f"engine.cleanup({path!r}) did not finish within {CALL_TIMEOUT} s"
    e = box.get("exc")
    if e is None:
        return "ok"
    if isinstance(e, MechanismError):
        assert "\n" not in str(e)
        if os.environ.get("LOCALD_ADMIN_RACE_DEBUG"):
            print(f"  {type(e).__name__}: {str(e)[:300]}")
        return type(e).__name__
    raise AssertionError(f"engine.cleanup raised a non-named exception: {e!r}") from e


def report(record_property, name, stats, outcomes):
    for k, v in stats.items():
        if isinstance(v, int):
            STATS[k] += v
            record_property(k, v)
    record_property("outcomes", dict(outcomes))
    print(f"\n{name}: {dict(stats)} outcomes={dict(outcomes)}")


# -- the engine, called directly, under attack -------------------------------------------

KINDS = {
    "a-symlink-swap": ["symlink"],
    "b-rename-exchange": ["exchange"],
    "c-move-subtree-out": ["moveout"],
    "d-replace-anchor": ["anchor"],
    "mixed": ["symlink", "exchange", "moveout", "anchor"],
}


@pytest.mark.parametrize("held_fds", [walk.DEFAULT_LIMITS.max_held_fds, 1], ids=lambda n: f"fds{n}")
@pytest.mark.parametrize("mode", fsmode.MODES)
@pytest.mark.parametrize("kind", list(KINDS))
def test_engine_under_attack(racefs, users, monkeypatch, record_property, kind, mode, held_fds):
    attacker, other = users
    fs = fsmode.fs_for(mode)
    if fs.openat2 and not fsops.kernel_has_openat2():
        pytest.skip("this kernel has no openat2 (ENOSYS)")
    monkeypatch.setattr(fsops, "default", lambda: fs)
    limits = walk.Limits(max_held_fds=held_fds)
    stats, outcomes = collections.Counter(), collections.Counter()
    anchor_kind = kind == "d-replace-anchor"
    for r in range(max(ROUNDS, 4) if anchor_kind else ROUNDS):
        n = next_round()
        w = World(racefs, n, attacker, other)
        try:
            # Half the rounds let the walk start before the first swap (for
            # (d): the anchor swapped while it is resolved, or mid-walk), and
            # (d) targets both a directory below the anchor and the anchor.
            late = r % 2 == 1
            target = w.anchor if (anchor_kind and r % 4 in (1, 2)) else w.target
            fds = open_fds()
            cfg = w.attacker_config(KINDS[kind], seed=n, delay=0.05 if late else 0.0)
            cfg["pre"] = anchor_kind and not late
            proc = start_attacker(attacker, cfg)
            t0 = time.monotonic()
            try:
                outcome = engine_call(str(target), attacker.pw_uid, limits)
            finally:
                stats["call_ms"] += round((time.monotonic() - t0) * 1000)
                counters = stop_attacker(proc)
            assert open_fds() == fds, "the engine leaked file descriptors"
            w.check_canaries()
            outcomes[outcome] += 1
            stats.update({k: v for k, v in counters.items() if isinstance(v, int)})
            stats["rounds"] += 1
        finally:
            w.remove()
    report(record_property, f"{kind}/{mode}/fds{held_fds}", stats, outcomes)
    assert stats["swaps"] > 0, "the attacker never managed a swap: this round proved nothing"


# -- the anchor as the target, exchanged with another user's directory ----------------

# Until 5b88f23 the anchor as target was looked up again by name after its
# owner check (scope.resolve checked the fd, engine._remove_entry reopened
# '.locald' from the prefix), so this race emptied the other user's
# directory.  Now the anchor is removed through its held fd and the walk's
# final rmdir checks the name still refers to it.  The attacker makes a new
# anchor itself whenever the mechanism removed the old one: root creating it
# by path here would be a TOCTOU of the test's own (a chown that lands on the
# victim swapped in meanwhile).

@pytest.mark.parametrize("mode", fsmode.MODES)
def test_anchor_target_exchanged_with_another_users_dir(racefs, users, record_property, monkeypatch, mode):
    attacker, other = users
    fs = fsmode.fs_for(mode)
    if fs.openat2 and not fsops.kernel_has_openat2():
        pytest.skip("this kernel has no openat2 (ENOSYS)")
    monkeypatch.setattr(fsops, "default", lambda: fs)
    w = World(racefs, next_round(), attacker, other, tree=False)
    proj = w.proj
    victim = proj / "victim"
    victim.mkdir()
    for j in range(5):
        (victim / f"v{j}").write_bytes(b"victim %d" % j)
        os.chown(victim / f"v{j}", other.pw_uid, other.pw_gid)
    os.chown(victim, other.pw_uid, other.pw_gid)
    mine = w.anchor / "mine"
    mine.write_text("attacker's")
    os.chown(mine, attacker.pw_uid, attacker.pw_gid)

    # Judged through an fd held on the victim directory: the exchange keeps
    # moving it between two names, but the fd follows the inode.
    vfd = os.open(victim, DIR_OPEN)

    def victim_intact():
        try:
            return os.fstat(vfd).st_nlink > 0 and all(os.stat(f"v{j}", dir_fd=vfd).st_uid == other.pw_uid
                       and _read_at(vfd, f"v{j}") == b"victim %d" % j for j in range(5))
        except FileNotFoundError:
            return False

    cfg = w.attacker_config(["decoy"], seed=1, target_root=False, holds=[0])
    cfg.update(decoy=str(victim), recreate=True, spin=0.0001, iterations=10 ** 7)
    rng = random.Random(2)
    stats, outcomes = collections.Counter(), collections.Counter()
    proc = start_attacker(attacker, cfg)
    deadline = time.monotonic() + VICTIM_SECONDS
    try:
        while time.monotonic() < deadline and victim_intact():
            time.sleep(rng.uniform(0, 0.0005))  # out of step with the attacker's own rhythm
            outcomes[engine_call(str(w.anchor), attacker.pw_uid)] += 1
            stats["calls"] += 1
    finally:
        stats.update({k: v for k, v in stop_attacker(proc).items() if isinstance(v, int)})
        report(record_property, f"anchor-target-vs-victim/{mode}", stats, outcomes)
    try:
        w.check_canaries()
        assert victim_intact(), f"another user's directory was emptied after {stats['calls']} calls"
    finally:
        os.close(vfd)
        w.remove()


# -- through the bus: the real mechanism subprocess, an unprivileged client ---------------

@pytest.fixture(scope="module", params=fsmode.MODES)
def mechanism(request):
    with mechanism_stack(*fsmode.mechanism_args(request.param)) as (b, _, m):
        yield b, m


def test_mechanism_over_the_bus_under_attack(racefs, users, clients, mechanism, record_property):
    bus, mech = mechanism
    attacker, other = users
    assert clients.uid == attacker.pw_uid  # the caller and the attacker are one user
    stats, outcomes = collections.Counter(), collections.Counter()
    for r in range(BUS_ROUNDS):
        n = next_round()
        w = World(racefs, n, attacker, other)
        try:
            target = w.anchor if r % 3 == 2 else w.target
            proc = start_attacker(attacker, w.attacker_config(KINDS["mixed"], seed=n))
            try:
                cp = clients.shim("admin", "cleanup", "--no-interactive", "--timeout", str(CALL_TIMEOUT),
                                  str(target), bus_address=bus.address, timeout=CALL_TIMEOUT + 30)
            finally:
                counters = stop_attacker(proc)
            w.check_canaries()
            assert cp.returncode in ALLOWED_EXITS, (cp.returncode, cp.stderr)
            assert "internal error" not in cp.stderr, cp.stderr
            assert mech.proc.poll() is None, "the mechanism died"
            outcomes[cp.returncode] += 1
            stats.update({k: v for k, v in counters.items() if isinstance(v, int)})
            stats["rounds"] += 1
        finally:
            w.remove()
    log = mech.log()
    assert "Traceback" not in log and "internal error" not in log, log[-3000:]
    report(record_property, "bus", stats, outcomes)
    assert stats["swaps"] > 0
