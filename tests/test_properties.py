"""Property tests (hypothesis) for the lexical rules and for one whole
cleanup request on random trees.

* ``pathrules.parse`` on arbitrary input (str with lone surrogates, bytes,
  NUL, overlong, '.', '..', repeated slashes, both anchor kinds, not even a
  string) raises nothing but ``PathRuleError`` and agrees with a reference
  model written here from the README's rules.
* ``engine.cleanup`` on random trees mixing files (mode 000 too), fifos,
  hard links, directories, symlinks (absolute and relative, into the target,
  out of it, dangling, loops), nested ``.locald`` directories, anchors that
  are symlinks or files, names that are not UTF-8, ordinary symlinks above
  the anchor; the target is any entry of the tree, reached directly or
  through a symlinked prefix, a missing child, or a random path string
  (which may break the lexical rules).  Invariant: nothing outside the
  target's real subtree changed (type, mode, owner, inode, size, mtime,
  content, link text; no entry appeared or vanished), and either the target
  is gone or a named ``MechanismError`` was raised -- never another
  exception.  The reference model also says when the target is in scope and
  exists: then the call must succeed and remove it.
* As root: directories with modes 0500/0555/000, and the same property for an
  unprivileged caller whose anchors are randomly owned by it, another user
  or root (only its own anchors may be touched).

``LOCALD_ADMIN_SOAK=1`` runs many more examples without a deadline.
"""

import contextlib
import os
import pwd
import signal
import stat
import tempfile

import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

from harness import fsmode, trees, users
from locald_admin import pathrules
from locald_admin.interface import MAX_PATH_BYTES
from locald_admin.mechanism import engine
from locald_admin.mechanism.errors import InvalidPath, MechanismError, OutsideScope

IS_ROOT = os.geteuid() == 0
SOAK = os.environ.get("LOCALD_ADMIN_SOAK") == "1"

COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                                     HealthCheck.data_too_large, HealthCheck.filter_too_much])
PARSE_SETTINGS = settings(max_examples=20000 if SOAK else 1500, **COMMON)
TREE_SETTINGS = settings(max_examples=2000 if SOAK else 150, **COMMON)
USER_SETTINGS = settings(max_examples=1000 if SOAK else 60, **COMMON)

# -- pathrules ------------------------------------------------------------------

ANCHOR = pathrules.ANCHOR
DATA = (b".local", b"share", b"locald")

COMPONENTS = [
    "", ".", "..", "...", ".locald", ".localdx", "x.locald", ".LOCALD", ".local", "share", "locald", "a", "b",
    "é", "\udcff", "\udc80", "\ud800", "\x00", " ", "\n", "x (deleted)", "~",
]
component = st.one_of(st.sampled_from(COMPONENTS), st.text(max_size=4))
structured = st.builds(
    lambda lead, parts, sep, trail: lead + sep.join(parts) + trail,
    st.sampled_from(["/", "/", "//", ""]), st.lists(component, max_size=10), st.sampled_from(["/", "//", "///"]),
    st.sampled_from(["", "/", "//"]))
# Mostly valid: absolute, no '.', '..' or NUL; both anchor kinds, often several.
clean_component = st.one_of(
    st.sampled_from(["", ".locald", ".locald", ".locald", ".localdx", "x.locald", ".local", "share", "locald",
                     ".local/share/locald", ".local/share/locald",
                     ".local/share", "share/locald", "a", "é", "\udcff", " ", "\n", "x (deleted)", "..."]),
    st.text(st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)), min_size=1, max_size=4)
    .filter(lambda s: s not in (".", "..")))
clean = st.builds(lambda parts, trail: "/" + "/".join(parts) + trail, st.lists(clean_component, max_size=8),
                  st.sampled_from(["", "/", "//"]))
overlong = st.builds(lambda n, tail: "/" + "a/" * n + tail, st.integers(2040, 2060), st.sampled_from(
    ["", ".locald", ".locald/x", "é/.locald"]))
path_inputs = st.one_of(
    clean, clean, clean, clean.map(lambda s: s.encode("utf-8", "surrogateescape")),
    structured,
    structured.map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.lists(st.sampled_from([b"", b".", b"..", b".locald", b".local", b"share", b"locald", b"\xff", b"\xc3",
                              b"\0", b"a"]) | st.binary(max_size=4), max_size=10).map(lambda ps: b"/" + b"/".join(ps)),
    st.text(), st.binary(), overlong, overlong.map(str.encode),
    st.none(), st.integers(), st.lists(st.text(max_size=3), max_size=2),
)


def reference(path):
    """The README's lexical rules, independently: ('invalid',),
    ('outside',) or (kind, prefix, anchor, below)."""
    if isinstance(path, str):
        try:
            raw = path.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            return ("invalid",)
    elif isinstance(path, bytes):
        raw = path
    else:
        return ("invalid",)
    if not raw or len(raw) > MAX_PATH_BYTES or b"\0" in raw or not raw.startswith(b"/"):
        return ("invalid",)
    parts = [p for p in raw.split(b"/") if p]
    if not parts or any(p in (b".", b"..") for p in parts):
        return ("invalid",)
    first_project = next((j for j, p in enumerate(parts) if p == ANCHOR), None)
    first_data = next((j for j in range(2, len(parts)) if tuple(parts[j - 2:j + 1]) == DATA), None)
    if first_data is not None and (first_project is None or first_data < first_project):
        return ("data", tuple(parts[:first_data]), b"locald", tuple(parts[first_data + 1:]))
    if first_project is None:
        return ("outside",)
    return ("project", tuple(parts[:first_project]), ANCHOR, tuple(parts[first_project + 1:]))


@PARSE_SETTINGS
@given(path_inputs)
def test_parse_raises_only_path_rule_errors_and_matches_the_rules(path):
    want = reference(path)
    try:
        got = pathrules.parse(path)
    except pathrules.PathRuleError as e:
        event(f"parse: {e.kind}")
        assert (e.kind,) == want, (path, e.kind, want)
        return
    # Anything but PathRuleError propagates and fails the test.
    event(f"parse: {got.kind}")
    assert (got.kind, got.prefix, got.anchor, got.below) == want, (path, got, want)
    norm = got.normalized
    assert norm.startswith(b"/") and not norm.endswith(b"/")
    comps = norm[1:].split(b"/")
    assert all(c not in (b"", b".", b"..") for c in comps)
    assert b"\0" not in norm and len(norm) <= MAX_PATH_BYTES
    # The anchor is the first one: no '.locald' and no '.local/share/locald' above it.
    assert ANCHOR not in got.prefix
    assert all(tuple(got.prefix[j - 2:j + 1]) != DATA for j in range(2, len(got.prefix)))
    # Only repeated and trailing slashes were normalised away.
    raw = path.encode("utf-8", "surrogateescape") if isinstance(path, str) else path
    assert norm == b"/" + b"/".join(p for p in raw.split(b"/") if p)
    assert pathrules.parse(norm) == got  # idempotent
    got.display().encode("utf-8")  # always valid text


@PARSE_SETTINGS
@given(path_inputs)
def test_engine_parse_names_every_refusal(path):
    want = reference(path)[0]
    try:
        engine.parse(path)
    except InvalidPath:
        assert want == "invalid"
    except OutsideScope:
        assert want == "outside"
    else:
        assert want in ("project", "data")


# -- random trees ----------------------------------------------------------------------

NAMES = st.one_of(
    st.sampled_from([b"a", b"b", b"c", b".locald", b".localdx", b"x.locald", b".local", b"share", b"locald",
                     b"\xff\xfe", b"caf\xc3\xa9", b"new\nline", b"sp ace", b"x (deleted)", b"-rf", b"\\", b"..."]),
    st.binary(min_size=1, max_size=6).map(
        lambda b: b.replace(b"/", b"_").replace(b"\0", b"_") + (b"_" if b.strip(b".") == b"" else b"")),
)
LINK_PLACES = ["outside", "outside/keep", "outside/d", "proj", "proj/.locald", "proj/.locald/a", "", "missing",
               "proj/.locald/a/.locald"]
SYMLINK = st.tuples(st.just("symlink"), st.one_of(
    st.tuples(st.just("abs"), st.sampled_from(LINK_PLACES)),
    st.tuples(st.just("rel"), st.integers(0, 6), st.sampled_from([b"outside", b"outside/keep", b".locald", b"proj",
                                                                  b"a", b"", b"missing", b"proj/.locald"])),
    st.just(("loop",)),
))
FILE = st.tuples(st.just("file"), st.binary(max_size=12), st.sampled_from([0o644, 0o600, 0o444, 0o000]))
LEAF = st.one_of(FILE, FILE, SYMLINK, SYMLINK, st.just(("fifo",)), st.just(("hardlink",)))
DIR_MODES = [0o755, 0o700] + ([0o500, 0o555, 0o000, 0o1777] if IS_ROOT else [])
TREE = st.recursive(
    LEAF, lambda kids: st.tuples(st.just("dir"), st.sampled_from(DIR_MODES), st.dictionaries(NAMES, kids, max_size=4)),
    max_leaves=10)
CONTENTS = st.dictionaries(NAMES, TREE, max_size=4)
WORLD = st.fixed_dictionaries({
    "outside": CONTENTS,
    "proj": CONTENTS,  # siblings of the anchor
    "anchor": st.sampled_from(["dir"] * 7 + ["symlink", "file", "missing"]),
    "locald": st.dictionaries(NAMES, TREE, min_size=1, max_size=6),  # the anchor's contents, if a directory
})


# Below base: .local/share/locald, a symlink to base itself (build_world).
DATA_ALIAS = b"dd/.local/share/locald"


def _link_text(spec, base, depth):
    if spec[0] == "abs":
        return os.path.join(base, spec[1].encode())
    if spec[0] == "rel":
        text = b"../" * min(spec[1], depth) + spec[2]  # never above base
        return text or b"."
    return None  # loop: filled in by the caller


def _build(dirpath, contents, base, depth, chmods):
    for name, node in contents.items():
        p = os.path.join(dirpath, name)
        if os.path.lexists(p):
            continue
        kind = node[0]
        if kind == "file":
            with open(p, "wb") as f:
                f.write(node[1])
            os.chmod(p, node[2])
        elif kind == "fifo":
            os.mkfifo(p)
        elif kind == "hardlink":
            os.link(os.path.join(base, b"outside", b"hl-src"), p)
        elif kind == "symlink":
            os.symlink(_link_text(node[1], base, depth) or name, p)
        else:
            os.mkdir(p, 0o755)
            _build(p, node[2], base, depth + 1, chmods)
            chmods.append((p, node[1]))  # after its children: 0500/000 only at the end


def build_world(world):
    base = os.fsencode(os.path.realpath(tempfile.mkdtemp(prefix="locald-admin-prop-", dir="/tmp")))
    os.chmod(base, 0o755)
    chmods = []
    outside = os.path.join(base, b"outside")
    os.mkdir(outside)
    with open(os.path.join(outside, b"keep"), "wb") as f:
        f.write(b"keep me")
    with open(os.path.join(outside, b"hl-src"), "wb") as f:
        f.write(b"linked from inside")
    os.mkdir(os.path.join(outside, b"d"))
    with open(os.path.join(outside, b"d", b"f"), "wb") as f:
        f.write(b"outside d/f")
    proj = os.path.join(base, b"proj")
    os.mkdir(proj)
    anchor = os.path.join(proj, ANCHOR)
    if world["anchor"] == "dir":
        os.mkdir(anchor)
        _build(anchor, world["locald"], base, 2, chmods)
    elif world["anchor"] == "symlink":
        os.symlink(b"../outside", anchor)
    elif world["anchor"] == "file":
        with open(anchor, "wb") as f:
            f.write(b"an anchor that is a file")
    _build(proj, world["proj"], base, 1, chmods)
    _build(outside, world["outside"], base, 1, chmods)
    os.symlink(b"proj", os.path.join(base, b"lp"))  # ordinary symlinks above the anchor
    os.symlink(proj, os.path.join(base, b"la"))
    # A data directory that is nobody's home's, leading back to base: a path
    # through it has a '.locald' below it as its anchor, if any.
    os.makedirs(os.path.join(base, DATA_ALIAS[:-len(b"/locald")]))
    os.symlink(base, os.path.join(base, DATA_ALIAS))
    for p, mode in chmods:
        os.chmod(p, mode)
    return base


def snapshot(base):
    """Every entry below base (bytes paths, never following a symlink):
    type, mode, owner, inode, and for files size, mtime and content, for
    symlinks their text.  Directory mtimes are left out: removing the target
    changes its parent's."""
    return trees.snapshot(base, record=trees.full, relative=False)


def changes(before, after, region):
    def inside(p):
        return region is not None and (p == region or p.startswith(region + b"/"))

    out = []
    for p, rec in before.items():
        if inside(p):
            continue
        if p not in after:
            out.append(("vanished", p))
        elif after[p] != rec:
            out.append(("changed", p, rec, after[p]))
    out += [("appeared", p) for p in after if p not in before and not inside(p)]
    return out


def _callers_anchor(holder, st_, caller_uid):
    """The README's owner rule: the caller's own anchor (uid 0 exempt), or a
    root-owned one in a directory the caller owns and nobody else may write."""
    if caller_uid == 0 or st_.st_uid == caller_uid:
        return True
    h = os.stat(holder)
    return (st_.st_uid == 0 and not st_.st_mode & 0o022 and h.st_uid == caller_uid
            and not h.st_mode & 0o022)


def tree_owner(anchor_st, caller_uid):
    """Whose tree the rule protects others from: the caller, or for a root
    caller the anchor's owner (0: root's own tree, no rule)."""
    return anchor_st.st_uid if caller_uid == 0 else caller_uid


def owner_groups(owner):
    try:
        pw = pwd.getpwuid(owner)
        return set(os.getgrouplist(pw.pw_name, pw.pw_gid))
    except KeyError:
        return set()


def untrusted(st_, parent_st, owner, groups):
    """This test's own reading of the trust rule (threat model, "The trust
    rule") for a directory ``st_`` in the trusted directory ``parent_st``
    (stat results or (mode, uid, gid) records); no subordinate ids or ACLs
    in these trees."""
    mode, uid = st_[0], st_[1]
    pmode, puid, pgid = parent_st
    if owner == 0 or uid == owner:
        return False
    if uid == 0:
        return bool(mode & 0o022) and not (puid == 0 and not pmode & 0o022)
    parent_writable = puid == owner or pmode & 0o002 or (pmode & 0o020 and pgid in groups)
    return bool(parent_writable)


def _mug(st_):
    return (st_.st_mode, st_.st_uid, st_.st_gid)


def expected_region(target, caller_uid):
    """What the target really is, by this test's own reading of the README:
    the real path of the entry the request may remove (with everything below
    it), or None when nothing at all may change (lexically invalid, no
    anchor, a data-directory anchor with no '.locald' below it -- never the
    caller's home here, so one with a '.locald' below has that as its anchor
    --, an anchor that is not a real directory owned by the caller, a
    symlink or a non-directory below the anchor, or simply nothing there)."""
    try:
        parsed = pathrules.parse(target)
    except pathrules.PathRuleError:
        return None
    if parsed.kind != pathrules.KIND_PROJECT:
        comps = parsed.prefix + (parsed.anchor,) + parsed.below
        first = len(parsed.prefix) + 1  # the first '.locald' below the data directory's 'locald'
        if ANCHOR not in comps[first:]:
            return None
        j = comps.index(ANCHOR, first)
        parsed = pathrules.ParsedPath(prefix=comps[:j], below=comps[j + 1:])
    prefix = b"/" + b"/".join(parsed.prefix)
    try:
        cur = os.path.realpath(prefix, strict=True)  # ordinary symlinks above the anchor are fine
    except OSError:
        return None
    if not os.path.isdir(cur):
        return None
    comps = (parsed.anchor,) + parsed.below
    owner = groups = parent_st = None
    for i, comp in enumerate(comps):
        p = os.path.join(cur, comp)
        try:
            st_ = os.lstat(p)
        except OSError:
            return None
        if i == 0:
            if not stat.S_ISDIR(st_.st_mode) or not _callers_anchor(cur, st_, caller_uid):
                return None  # the anchor: a real directory owned by the caller (or a root-made one)
            owner = tree_owner(st_, caller_uid)
            groups = owner_groups(owner)
        elif stat.S_ISDIR(st_.st_mode) and untrusted(_mug(st_), parent_st, owner, groups):
            return None  # an untrusted directory on the way, or as the target: refused
        if i == len(comps) - 1:
            return p
        if not stat.S_ISDIR(st_.st_mode):
            return None  # a symlink (refused) or a file (nothing there) on the way
        cur, parent_st = p, _mug(st_)
    raise AssertionError("unreachable")


RANDOM_SUFFIX = st.lists(st.sampled_from([b"proj", b"lp", b"la", b".locald", b"a", b"b", b"outside", b".", b"..",
                                          b"", b"missing", b"\xff\xfe", b".local", b"share", b"locald"]),
                         min_size=1, max_size=6)


def candidates(base):
    """Request paths for this tree: (those with an anchor, all the others).
    Every entry, the same through the symlinked prefixes, a missing child of
    each, a trailing slash, repeated slashes."""
    out = []
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            out += [p, p + b"/missing", p + b"/"]
            for alias in (b"lp", b"la"):
                if p.startswith(base + b"/proj/"):
                    out.append(base + b"/" + alias + p[len(base) + len(b"/proj"):])
            if p.startswith(base + b"/proj/"):
                out.append(base + b"/" + DATA_ALIAS + p[len(base):])
    out.append(base.replace(b"/", b"//", 1) + b"/proj/.locald//a///")
    out = sorted(set(out))
    anchored = [p for p in out if ANCHOR in p.split(b"/")] or out
    dirs = [p for p in anchored if os.path.isdir(p) and not os.path.islink(p.rstrip(b"/"))] or anchored
    return dirs, anchored, out


CALL_SECONDS = 10  # these trees are tiny: a call that takes longer is stuck (a cycle followed?)


class EngineStuck(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds):
    """Interrupt the call (SIGALRM, main thread) instead of hanging the run."""
    def expired(signum, frame):
        raise EngineStuck(f"engine.cleanup did not finish within {seconds} s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def owner_rule_keeps(before, region, caller_uid):
    """The directories in ``region`` that the trust rule leaves in place
    (each with everything below it): untrusted ones, for the tree's owner
    (the caller, or for a root caller the anchor's owner)."""
    if region is None or region not in before or before[region][0] != stat.S_IFDIR:
        return []
    parts = region.split(b"/")
    anchor = b"/".join(parts[:parts.index(ANCHOR) + 1])  # the first component that is exactly .locald
    arec = before.get(anchor) or full_record(anchor)
    owner = arec[2] if caller_uid == 0 else caller_uid
    groups = owner_groups(owner)

    def mug(rec):
        return (rec[0] | rec[1], rec[2], rec[3])  # (mode with type, uid, gid) from a record

    kept = []
    for p, rec in before.items():
        if rec[0] != stat.S_IFDIR or not p.startswith(region + b"/"):
            continue
        parent = os.path.dirname(p)
        prec = before.get(parent) or full_record(parent)
        if untrusted(mug(rec), mug(prec), owner, groups):
            kept.append(p)
    return kept


def anchor_is_kept(before, region, caller_uid):
    """Whether the target is an anchor whose holder others could write (not
    sticky): its contents go, the anchor stays (threat model R8)."""
    if region is None or not region.endswith(b"/.locald") or region not in before:
        return False
    holder = os.path.dirname(region)
    rec = before.get(holder) or full_record(holder)
    _, mode, uid, _ = rec[:4]
    owner = caller_uid if caller_uid != 0 else before[region][2]
    if mode & stat.S_ISVTX:
        return False
    return bool((uid not in (0, owner) and mode & 0o200) or mode & 0o022)


def full_record(path):
    return trees.full(path, os.lstat(path))


def check_cleanup(data, base, caller_uid):
    dirs, anchored, every = candidates(base)
    how = data.draw(st.sampled_from(["directory"] * 5 + ["anchored"] * 3 + ["entry"] * 2 + ["random", "relative"]),
                    label="how")
    if how == "random":
        target = base + b"/" + b"/".join(data.draw(RANDOM_SUFFIX, label="suffix"))
    else:
        pool = {"directory": dirs, "anchored": anchored}.get(how, every)
        target = data.draw(st.sampled_from(pool), label="entry")
        if how == "relative":
            target = target.lstrip(b"/")
    if data.draw(st.booleans(), label="as str"):
        target = os.fsdecode(target)
    mode = data.draw(st.sampled_from(fsmode.available()), label="mode")
    region = expected_region(target, caller_uid)
    note(f"target={target!r} region={region!r} mode={mode}")
    before = snapshot(base)
    kept = owner_rule_keeps(before, region, caller_uid)
    err = None
    try:
        with time_limit(CALL_SECONDS):
            engine.cleanup(target, caller_uid, fs=fsmode.fs_for(mode))
    except MechanismError as e:  # a named refusal; anything else fails the test
        err = e
        assert "\n" not in str(e)
    after = snapshot(base)
    event(f"{'in scope' if region else 'nothing to touch'}: {type(err).__name__ if err else 'ok'}")
    if region is not None and region in before and stat.S_ISDIR(before[region][0]):
        links = sum(1 for p in before if p.startswith(region + b"/") and stat.S_ISLNK(before[p][0]))
        event(f"in scope: a directory {'with' if links else 'without'} symlinks below it")
    diff = changes(before, after, region)
    assert not diff, f"{target!r} (region {region!r}, result {err!r}) changed things outside: {diff[:5]}"
    keep_anchor = anchor_is_kept(before, region, caller_uid)
    if err is None and keep_anchor:
        assert os.listdir(region) == [], f"{target!r}: the kept anchor is not empty"
    elif err is None:
        t = os.fsencode(target)
        assert not (t.startswith(b"/") and os.path.lexists(t)), f"{target!r}: success but it is still there"
    if region is not None and kept:
        # Other users' directories the caller could have put there stay,
        # with everything in them, and the answer names the rule.
        assert "not the caller's" in str(err) or "writable by others" in str(err), \
            f"{target!r}: {kept[:3]} should be left in place; got {err!r}"
        for d in kept:
            assert all(after.get(p) == rec for p, rec in before.items() if p == d or p.startswith(d + b"/")), d
    elif region is not None:
        assert err is None, f"{target!r} is in scope and exists, yet: {err!r}"
        assert keep_anchor or not os.path.lexists(region)


@TREE_SETTINGS
@given(world=WORLD, data=st.data())
def test_cleanup_touches_nothing_outside_the_target(world, data):
    base = build_world(world)
    try:
        check_cleanup(data, base, os.getuid())
    finally:
        trees.rm_rf(os.fsdecode(base))


@pytest.mark.skipif(not IS_ROOT, reason="needs uid 0: anchors owned by other users")
@USER_SETTINGS
@given(world=WORLD, data=st.data())
def test_cleanup_for_a_user_touches_only_its_own_anchors(world, data):
    """The mechanism (root) acting for an unprivileged caller: every
    '.locald' in the tree is owned by the caller, another user or root, and
    everything else by anyone of them, so root-owned leftovers are inside."""
    user = users.ensure_user(users.TEST_USER)
    other = users.ensure_user(users.OTHER_USER)
    owners = [(user.pw_uid, user.pw_gid), (other.pw_uid, other.pw_gid), (0, 0)]
    base = build_world(world)
    try:
        for dirpath, dirnames, filenames in os.walk(base):
            for name in dirnames + filenames:
                p = os.path.join(dirpath, name)
                if name == ANCHOR:
                    uid, gid = data.draw(st.sampled_from(owners), label=f"owner of {p!r}")
                else:
                    uid, gid = data.draw(st.sampled_from(owners[:1] * 3 + owners), label="owner")
                os.lchown(p, uid, gid)
        check_cleanup(data, base, user.pw_uid)
    finally:
        trees.rm_rf(os.fsdecode(base))
