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
(a)/(b) and the bus variant: ``fsops.open_beneath`` or the walk's ``_enter``
following a symlink; (c) with one held fd: ``walk._climb`` accepting a '..'
that is not the recorded parent (the walk then climbs out through canary/out
into canary/); (d): the anchor opened through a symlink without the owner
check on the fd; the anchor-as-target test: the anchor looked up again by
name after its owner check (the bug fixed in 5b88f23).
"""

import collections
import json
import os
import random
import stat
import subprocess
import threading
import time

import pytest

import support
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

# Runs as the unprivileged test user with Debian's python3 (stdlib only).
# argv[1]: JSON config.  Prints "ready" once it runs as that user, attacks
# until stdin becomes readable (EOF), or the iteration or time budget is
# spent, then prints one JSON line of counters.
ATTACKER = r'''
import ctypes, errno, json, os, platform, random, select, stat, sys, time

cfg = json.loads(sys.argv[1])
rng = random.Random(cfg["seed"])
c = dict(iterations=0, swaps=0, met=0, misses=0, moved_while_walked=0, anchor_swaps=0, hunted=0)
RENAME_EXCHANGE = 2
AT_FDCWD = -100
libc = ctypes.CDLL(None, use_errno=True)
if hasattr(libc, "renameat2"):
    _r2 = libc.renameat2
    _r2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    _r2.restype = ctypes.c_int
    def renameat2(a, b, flags):
        return _r2(AT_FDCWD, a, AT_FDCWD, b, flags)
    c["renameat2"] = "libc"
else:
    assert platform.machine() == "x86_64", "no renameat2 in libc and no syscall number for this machine"
    libc.syscall.restype = ctypes.c_long
    def renameat2(a, b, flags):
        return libc.syscall(ctypes.c_long(316), ctypes.c_long(AT_FDCWD), ctypes.c_char_p(a),
                            ctypes.c_long(AT_FDCWD), ctypes.c_char_p(b), ctypes.c_ulong(flags))
    c["renameat2"] = "syscall 316"

def exchange(a, b):
    if renameat2(a.encode(), b.encode(), RENAME_EXCHANGE) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), a)

def dirs_by_level(root, branching):
    levels = [[root]]
    for b in branching:
        levels.append([p + "/d%d" % k for p in levels[-1] for k in range(b)])
    return levels

LEVELS = dirs_by_level(cfg["target_root"], cfg["branching"]) if cfg["target_root"] else [[]]
DIRS = [d for level in LEVELS for d in level]
DESTS = cfg["dests"]
ANCHOR_DESTS = cfg["anchor_dests"]  # resolve from where the anchor is
ANCHOR, DECOY, OUT = cfg["anchor"], cfg["decoy"], cfg["out"]

def hot_dir():
    """A directory two levels above the leaves that the walk is in right now
    (some of its subdirectories removed already, not all)."""
    if len(LEVELS) < 3:
        return None
    for d in rng.sample(LEVELS[-2], min(40, len(LEVELS[-2]))):
        try:
            k = sum(1 for x in os.listdir(d) if "." not in x)
        except OSError:
            continue
        if 0 < k < cfg["branching"][-1]:
            c["hunted"] += 1
            return d
    return None

def hot_leaf(hot):
    """The subdirectory of ``hot`` being emptied right now, if any."""
    try:
        names = [x for x in os.listdir(hot) if x.startswith("d") and "." not in x]
    except OSError:
        return None
    for x in names:
        try:
            k = len(os.listdir(hot + "/" + x))
        except OSError:
            continue
        if 0 < k < cfg["files"]:
            return hot + "/" + x
    return None

def lexists(p):
    try:
        os.lstat(p)
        return True
    except FileNotFoundError:
        return False

def is_link(p):
    try:
        return stat.S_ISLNK(os.lstat(p).st_mode)
    except FileNotFoundError:
        return False

# Each attack does its swap and returns the function that undoes it.

def swap_symlink(d, n):
    """(a) rename the directory away, rename a ready symlink into its place."""
    away, tmp = "%s.away%d" % (d, n), "%s.tmp%d" % (d, n)
    os.symlink(rng.choice(DESTS), tmp)
    try:
        os.rename(d, away)
    except OSError:
        os.unlink(tmp)
        raise
    try:
        os.rename(tmp, d)
    except OSError:
        os.unlink(tmp)
        os.rename(away, d)
        raise
    c["swaps"] += 1
    def undo():
        if not lexists(d):
            c["met"] += 1  # the walk removed our symlink (as a name)
        elif is_link(d):
            os.unlink(d)
        os.rename(away, d)
    return undo

def swap_exchange(d, n):
    """(b) renameat2(RENAME_EXCHANGE) of the directory and a symlink."""
    lnk = "%s.x%d" % (d, n)
    os.symlink(rng.choice(DESTS), lnk)
    try:
        exchange(lnk, d)
    except OSError:
        os.unlink(lnk)
        raise
    c["swaps"] += 1
    def undo():
        try:
            exchange(lnk, d)
        except OSError:
            if not lexists(d):
                c["met"] += 1
                os.rename(lnk, d)
            elif is_link(d):
                os.unlink(d)
            return
        os.unlink(lnk)
    return undo

def move_out(d, n):
    """(c) move the subtree to a directory outside .locald, then back."""
    before = len(os.listdir(d))
    dst = "%s/m%d_%d" % (OUT, n, rng.randrange(1 << 30))
    os.rename(d, dst)
    c["swaps"] += 1
    def undo():
        try:
            if len(os.listdir(dst)) < before:
                c["moved_while_walked"] += 1  # the walk kept deleting in it, by fd
        except FileNotFoundError:
            c["moved_while_walked"] += 1
            return
        os.rename(dst, d)
    return undo

def replace_anchor(_d, n, how=None):
    """(d) the anchor itself: renamed away with a symlink put in its place,
    or exchanged with a symlink, or with another directory of the attacker."""
    how = rng.randrange(3) if how is None else how
    if how == 0:
        away = "%s.away%d" % (ANCHOR, n)
        os.rename(ANCHOR, away)
        try:
            os.symlink(rng.choice(ANCHOR_DESTS), ANCHOR)
        except OSError:
            os.rename(away, ANCHOR)
            raise
        c["swaps"] += 1
        c["anchor_swaps"] += 1
        def undo():
            if is_link(ANCHOR):
                os.unlink(ANCHOR)
            elif not lexists(ANCHOR):
                c["met"] += 1
            os.rename(away, ANCHOR)
        return undo
    if how == 1:
        lnk = "%s.x%d" % (ANCHOR, n)
        os.symlink(rng.choice(ANCHOR_DESTS), lnk)
        try:
            exchange(lnk, ANCHOR)
        except OSError:
            os.unlink(lnk)
            raise
        c["swaps"] += 1
        c["anchor_swaps"] += 1
        def undo():
            try:
                exchange(lnk, ANCHOR)
            except OSError:
                if not lexists(ANCHOR):
                    c["met"] += 1
                    os.rename(lnk, ANCHOR)
                elif is_link(ANCHOR):
                    os.unlink(ANCHOR)
                return
            os.unlink(lnk)
        return undo
    try:
        os.mkdir(DECOY)
    except FileExistsError:
        pass
    exchange(ANCHOR, DECOY)
    c["swaps"] += 1
    c["anchor_swaps"] += 1
    def undo():
        exchange(ANCHOR, DECOY)
    return undo

def exchange_decoy(_d, n):
    """(d') only the exchange of the anchor with another directory, fast;
    a new anchor when the mechanism removed the old one."""
    try:
        exchange(ANCHOR, DECOY)
    except FileNotFoundError:
        if cfg.get("recreate") and not lexists(ANCHOR):
            os.mkdir(ANCHOR)
        raise
    c["swaps"] += 1
    c["anchor_swaps"] += 1
    spin(rng.uniform(0, cfg["spin"]))  # the other directory stays in place a little while
    def undo():
        exchange(ANCHOR, DECOY)
        spin(rng.uniform(0, cfg["spin"]))
    return undo

def spin(seconds):
    """Busy-wait: sleeping would hand the CPU to the mechanism for far longer."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass

ATTACKS = {"symlink": swap_symlink, "exchange": swap_exchange, "moveout": move_out, "anchor": replace_anchor,
           "decoy": exchange_decoy}
kinds = [ATTACKS[k] for k in cfg["kinds"]]
holds = cfg["holds"]
MOVE_HOLDS = [0.001, 0.003, 0.01]  # long enough for the walk to finish a subtree while it is out
deadline = time.monotonic() + cfg["seconds"]
pre = None
if cfg.get("pre"):  # the anchor already replaced when the request is resolved
    try:
        pre = replace_anchor(None, 0, how=rng.randrange(2))  # a symlink
    except OSError:
        c["misses"] += 1
sys.stdout.write("ready\n")
sys.stdout.flush()
if pre is not None:
    time.sleep(rng.choice([0.002, 0.005]))
    try:
        pre()
    except OSError:
        pass
if cfg["delay"]:  # let the walk get going first (the anchor swap then hits it mid-walk)
    time.sleep(rng.uniform(0, cfg["delay"]))
n = 0
while n < cfg["iterations"] and time.monotonic() < deadline:
    if select.select([sys.stdin], [], [], 0)[0]:
        break
    n += 1
    c["iterations"] = n
    attack = rng.choice(kinds)
    if attack in (replace_anchor, exchange_decoy):
        targets = [None]
    else:
        hot = hot_dir() if rng.random() < cfg["hunt"] else None
        if hot is None:
            targets = []
            for _ in range(rng.randint(1, cfg["batch"])):
                if attack is move_out and len(LEVELS) > 3 and rng.random() < 0.6:
                    # Two levels above the leaves: with few fds held, the
                    # walk then climbs '..' out of the scope twice.
                    targets.append(rng.choice(LEVELS[-2]))
                else:
                    targets.append(rng.choice(DIRS))
        elif attack is move_out:
            # Out of the scope with the walk inside it: the directory, or the
            # leaf below it being emptied right now (one level deeper, so
            # that the walk climbs out twice wherever its held fds start).
            leaf = hot_leaf(hot) if rng.random() < 0.5 else None
            targets = [leaf or hot]
        else:
            try:  # its subdirectories the walk has listed but not entered yet
                targets = [hot + "/" + x for x in os.listdir(hot) if x.startswith("d") and "." not in x]
            except OSError:
                targets = []
    undo = []
    for d in targets:
        try:
            undo.append(attack(d, n))
        except OSError:
            c["misses"] += 1  # gone already, or half-way through a swap of ours
    hold = rng.choice(MOVE_HOLDS if attack is move_out else holds)
    if hold:
        time.sleep(hold)
    for u in reversed(undo):
        try:
            u()
        except OSError:
            pass
print(json.dumps(c))
'''


def start_attacker(attacker, cfg):
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.Popen([support.SYSTEM_PYTHON, "-c", ATTACKER, json.dumps(cfg)], env=env, cwd="/",
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
        skip = os.fsencode(self.canary / "out")
        for root in (self.canary, self.top / "other"):
            for dirpath, dirnames, filenames in os.walk(os.fsencode(root)):
                dirnames[:] = [n for n in dirnames if os.path.join(dirpath, n) != skip]
                for name in dirnames + filenames:
                    p = os.path.join(dirpath, name)
                    st = os.lstat(p)
                    data = None
                    if stat.S_ISREG(st.st_mode):
                        with open(p, "rb") as f:
                            data = f.read()
                    snap[p] = (st.st_mode, st.st_uid, st.st_gid, st.st_ino, data)
        return snap

    def check_canaries(self):
        after = self.snapshot()
        missing = sorted(p for p in self.before if p not in after)
        changed = sorted(p for p in self.before if p in after and after[p] != self.before[p])
        assert not missing and not changed, (
            f"canary damaged: {len(missing)} missing (e.g. {missing[:5]}), {len(changed)} changed "
            f"(e.g. {changed[:5]})")

    def remove(self):
        support.rm_rf(self.top)


# -- fixtures ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def racefs():
    """A private tmpfs for the worlds (always unmounted); /tmp if mounting
    is not possible here."""
    d = support.world_tmpdir("locald-admin-race-")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755,size=512m", "locald-admin-race", str(d)],
                             capture_output=True).returncode == 0
    try:
        yield d
    finally:
        if mounted:
            if subprocess.run(["umount", str(d)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(d)])
        support.rm_rf(d)
        print(f"\nrace totals: {dict(sorted(STATS.items()))}")


@pytest.fixture(scope="module")
def users():
    return support.ensure_user(support.TEST_USER), support.ensure_user(support.OTHER_USER)


_round_no = [0]


def next_round():
    _round_no[0] += 1
    return _round_no[0]


def open_fds():
    return sorted(os.listdir("/proc/self/fd"))


def engine_call(path, uid):
    """engine.cleanup in a thread (bounded); the outcome's name, or raise if
    it was anything but success or a named MechanismError."""
    box = {}

    def run():
        try:
            box["removed"] = engine.cleanup(path, uid)
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


@pytest.mark.parametrize("held_fds", [walk.MAX_HELD_FDS, 1], ids=lambda n: f"fds{n}")
@pytest.mark.parametrize("mode", ["openat2", "fallback"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_engine_under_attack(racefs, users, monkeypatch, record_property, kind, mode, held_fds):
    attacker, other = users
    fsops.set_openat2(mode == "openat2")
    assert fsops.openat2_available() == (mode == "openat2")
    monkeypatch.setattr(walk, "MAX_HELD_FDS", held_fds)
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
                outcome = engine_call(str(target), attacker.pw_uid)
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

@pytest.mark.parametrize("mode", ["openat2", "fallback"])
def test_anchor_target_exchanged_with_another_users_dir(racefs, users, record_property, mode):
    attacker, other = users
    fsops.set_openat2(mode == "openat2")
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

@pytest.fixture(scope="module", params=["openat2", "fallback"])
def mechanism(request):
    b = support.PrivateBus()
    p = support.PolkitMock(b)
    p.allow(True)
    m = support.Mechanism(b, *(["--no-openat2"] if request.param == "fallback" else []))
    yield b, m
    m.stop()
    p.stop()
    b.stop()


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
