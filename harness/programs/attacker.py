"""The attacker of tests/test_races.py: runs as the unprivileged test user
with Debian's python3 (stdlib only).  argv[1]: JSON config.  Prints "ready"
once it runs as that user, attacks until stdin becomes readable (EOF), or
the iteration or time budget is spent, then prints one JSON line of
counters.
"""
import ctypes, json, os, platform, random, select, stat, sys, time

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
