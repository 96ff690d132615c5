"""Mounts seen through a second view of the same tree (threat model M1).

The project is bind-mounted a second time, non-recursively and private, at
``alias``; a volume is mounted in one view only.  Both names reach the same
directories, so ``rmdir`` of the volume's directory fails (EBUSY) through
either view.  A check that compares only the kernel's location of the held
target with mount point strings misses the volume from the other view: the
walk then deletes the target's entries and only afterwards meets the volume.
``mounts.mounts_at_or_below`` compares by identity too (device and path
within the file system, ``mounts.place``), so the request is refused before
anything is deleted, through ``remove.remove_entry`` (both sides) and through
the engine.  Root only (mounts).  Every mount made here is unmounted in
teardown, lazily if busy.
"""

import os
import subprocess

import pytest

from harness import fsmode
from harness.trees import Canary, is_mount_point, make_anchor, snapshot, umount, write
from locald_admin.fs import fsops, inuse, mounts, remove
from locald_admin.mechanism import config as cfgmod
from locald_admin.mechanism import engine
from locald_admin.mechanism.errors import InUse, MountPoint

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="root tier: needs uid 0 to mount --bind and -t tmpfs")

USER = 65534  # nobody: owns the project and its .locald
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


# -- fixtures ----------------------------------------------------------------------

def _mounted_below(path):
    """Mount points at or below ``path`` (strings), deepest first."""
    top = os.fsencode(path)
    return sorted((mp for _, mp in mounts.mount_points() if mp == top or mp.startswith(top + b"/")),
                  key=len, reverse=True)


@pytest.fixture
def tmp(tmp_path):
    """tmp_path, with a guarantee: nothing stays mounted below it (stacked
    mounts are taken off one at a time, deepest first)."""
    try:
        yield tmp_path
    finally:
        for _ in range(20):
            left = _mounted_below(tmp_path)
            if not left:
                break
            for mp in left:
                umount(mp, check=False)
        assert not _mounted_below(tmp_path), "a test mount could not be removed"


@pytest.fixture
def mnt(tmp):
    """mnt(*args, target): mount(8), skipping the test when mounting is not
    possible here; ``mnt.bind(src, target)`` is a non-recursive, private bind
    (a view of its own, that no later mount propagates into)."""
    done = []

    def mount(*args, target):
        cp = subprocess.run(["mount", *args, os.fsdecode(target)], capture_output=True, text=True)
        if cp.returncode != 0:
            pytest.skip(f"cannot mount here ({' '.join(args)}): {cp.stderr.strip()}")
        done.append(target)

    def bind(src, target):
        mount("--bind", os.fsdecode(src), target=target)
        mount("--make-private", target=target)

    mount.bind = bind
    try:
        yield mount
    finally:
        for target in reversed(done):
            if is_mount_point(target):
                umount(target, check=False)


class Views:
    """<tmp>/proj/.locald/<name> with entries around where a mount goes,
    and <tmp>/alias: the same project, bind-mounted again (private)."""

    def __init__(self, tmp, mnt, name="x"):
        self.tmp = tmp
        self.anchor = make_anchor(tmp, USER, USER)
        self.proj = self.anchor.parent
        self.name = name
        x = self.anchor / name
        (x / "a").mkdir(parents=True)
        write(x / "a" / "f", b"in scope, must stay")
        (x / "b" / "c").mkdir(parents=True)
        write(x / "b" / "c" / "g", b"in scope, must stay 2")
        write(x / "before", b"sibling")
        (x / "zzz").mkdir()
        write(x / "zzz" / "f", b"sibling 3")
        (x / "vol").mkdir()
        self.source = Canary(tmp / "src")  # what the volume shows
        self.alias = tmp / "alias"
        self.alias.mkdir()
        mnt.bind(self.proj, self.alias)
        self.mnt = mnt

    def original(self, rel=""):
        return self.anchor / self.name / rel if rel else self.anchor / self.name

    def aliased(self, rel=""):
        return self.alias / ".locald" / self.name / rel if rel else self.alias / ".locald" / self.name

    def state(self):
        """Both views (each descends into the mounts it shows), and the
        volume's source."""
        return snapshot(self.proj), snapshot(self.alias), snapshot(self.source.path)


def _mount_in_original(v, kind):
    """Mount ``kind`` in the original view only; returns the mount point."""
    mnt = v.mnt
    if kind == "bind":
        where = v.original("vol")
        mnt.bind(v.source.path, where)
    elif kind == "deep":
        where = v.original("b/c/vol")
        where.mkdir()
        mnt.bind(v.source.path, where)
    elif kind == "tmpfs":
        where = v.original("vol")
        mnt("-t", "tmpfs", "-o", "size=1m,mode=0755", "locald-admin-test", target=where)
        write(where / "on-tmpfs", b"tmpfs content")
    elif kind == "file":
        where = v.original("b/file")
        write(where, b"placeholder")
        mnt.bind(v.source.path / "data", where)
    elif kind == "stacked":
        where = v.original("vol")
        mnt.bind(v.source.path, where)
        mnt("-t", "tmpfs", "-o", "size=1m,mode=0755", "locald-admin-test", target=where)
    elif kind == "escaped":
        where = v.original("v o\\040l\tt\nn")
        where.mkdir()
        mnt.bind(v.source.path, where)
    elif kind == "on-target":
        where = v.original()
        mnt.bind(v.source.path, where)
    else:
        raise AssertionError(kind)
    # The reproduction's point: nothing is mounted in the alias view.
    assert _mounted_below(v.alias) == [os.fsencode(v.alias)], "the volume propagated into the alias view"
    return where


KINDS = ["bind", "deep", "tmpfs", "file", "stacked", "escaped", "on-target"]


def _remove(parent, name, fs):
    """remove.remove_entry of ``parent``/``name`` (the client's and the
    mechanism's shared removal), as root."""
    fd = os.open(parent, DIR_FLAGS)
    try:
        return remove.remove_entry(fd, os.fsencode(name), str(parent / name), USER, fs=fs)
    finally:
        os.close(fd)


def _fs(mode):
    return fsmode.fs_for(mode)


def _config(tmp):
    return cfgmod.Config(allow=(str(tmp),), source="test")


# -- the reproduction: a volume of the original view, removal through the alias -----------

@pytest.mark.parametrize("name", ["x", "x (deleted)"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_mount_in_the_original_view_refuses_removal_through_the_alias(mode, tmp, mnt, kind, name):
    v = Views(tmp, mnt, name)
    where = _mount_in_original(v, kind)
    before = v.state()
    with pytest.raises(remove.MountInTheWay) as ei:
        _remove(v.alias / ".locald", name, _fs(mode))
    assert "nothing was removed" in ei.value.message, ei.value.message
    assert ei.value.removed == 0
    if kind != "escaped":  # (messages escape control characters)
        assert str(where) in ei.value.message, ei.value.message
    assert v.state() == before
    v.source.check()


@pytest.mark.parametrize("kind", KINDS)
def test_the_engine_refuses_the_alias_with_mount_point_and_removes_nothing(mode, tmp, mnt, kind):
    v = Views(tmp, mnt)
    where = _mount_in_original(v, kind)
    before = v.state()
    with pytest.raises(MountPoint) as ei:
        engine.cleanup(str(v.aliased()), USER, _config(tmp))
    assert "nothing was removed" in ei.value.message, ei.value.message
    if kind != "escaped":
        assert str(where) in ei.value.message, ei.value.message
    assert v.state() == before
    v.source.check()


def test_the_engine_refuses_the_alias_anchor_itself(mode, tmp, mnt):
    v = Views(tmp, mnt)
    _mount_in_original(v, "bind")
    before = v.state()
    with pytest.raises(MountPoint):
        engine.cleanup(str(v.alias / ".locald"), USER, _config(tmp))
    assert v.state() == before


def test_a_mount_in_the_alias_view_refuses_removal_through_the_original(mode, tmp, mnt):
    """The other way round: a tmpfs mounted below the alias is on the
    original's directory too."""
    v = Views(tmp, mnt)
    where = v.aliased("b/tmp")
    where.mkdir()
    mnt("-t", "tmpfs", "-o", "size=1m,mode=0755", "locald-admin-test", target=where)
    inside = Canary(where)
    assert _mounted_below(v.proj) == [], "the tmpfs propagated into the original view"
    before = v.state()
    with pytest.raises(MountPoint) as ei:
        engine.cleanup(str(v.original()), USER, _config(tmp))
    assert str(where) in ei.value.message
    assert v.state() == before
    inside.check()


def test_a_mount_below_the_alias_itself_is_still_found(mode, tmp, mnt):
    """What the location comparison found before is found still."""
    v = Views(tmp, mnt)
    where = v.aliased("b/tmp")
    where.mkdir()
    mnt("-t", "tmpfs", "-o", "size=1m,mode=0755", "locald-admin-test", target=where)
    before = v.state()
    with pytest.raises(remove.MountInTheWay) as ei:
        _remove(v.alias / ".locald", "x", _fs(mode))
    assert str(where) in ei.value.message
    assert v.state() == before


def test_a_tmpfs_of_the_original_view_is_seen_via_the_alias(tmp, mnt):
    v = Views(tmp, mnt)
    where = _mount_in_original(v, "tmpfs")
    fd = os.open(v.aliased(), DIR_FLAGS)
    try:
        assert mounts.mounts_at_or_below(fd) == [os.fsencode(where)]
    finally:
        os.close(fd)


# -- what must not change -----------------------------------------------------------------

def test_siblings_of_the_volume_are_removed_through_either_view(mode, tmp, mnt):
    """No refusal for what holds no mount in any view, a prefix-named
    sibling (x2 next to x) included."""
    v = Views(tmp, mnt)
    where = _mount_in_original(v, "bind")
    for name in ("x2", "y"):
        (v.anchor / name / "sub").mkdir(parents=True)
        write(v.anchor / name / "sub" / "f", b"to be removed")
    assert _remove(v.alias / ".locald", "x2", _fs(mode)) == 3
    assert engine.cleanup(str(v.original("zzz")), USER, _config(tmp)) == 2
    assert engine.cleanup(str(v.alias / ".locald" / "y"), USER, _config(tmp)) == 3
    assert not os.path.lexists(v.anchor / "x2") and not os.path.lexists(v.anchor / "y")
    assert not os.path.lexists(v.original("zzz"))
    assert is_mount_point(where)
    v.source.check()


def test_an_alias_without_mounts_is_removed(mode, tmp, mnt):
    v = Views(tmp, mnt)
    n = len(snapshot(v.aliased()))
    assert engine.cleanup(str(v.aliased()), USER, _config(tmp)) == n + 1
    assert not os.path.lexists(v.original())
    assert os.listdir(v.anchor) == []


# -- the same in another mount namespace (M7) ------------------------------------------------

@pytest.fixture
def container(tmp):
    """container(script): a stand-in container, root's process in a private
    mount namespace of its own that has run ``script`` (sh) and sleeps;
    killed in teardown, which takes its mounts with it."""
    procs = []

    def start(script):
        p = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c",
                              f"{script} && echo ready && exec sleep 60"],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        procs.append(p)
        if p.stdout.readline() != b"ready\n":
            p.wait()
            pytest.skip(f"cannot make a mount namespace with mounts here: {p.stderr.read().decode().strip()}")
        return p.pid

    try:
        yield start
    finally:
        for p in procs:
            p.kill()
            p.wait()
            p.stdout.close()
            p.stderr.close()


@pytest.mark.parametrize("kind", ["bind", "tmpfs"])
def test_a_volume_inside_a_containers_bind_of_the_project_makes_the_target_in_use(mode, tmp, container, kind):
    """The container binds .locald at /app-like place (its source is above
    the target, so it is not "the source of a mount") and mounts a volume at
    app/x/vol: its mount point is not below the container's / either, but the
    directory it is mounted on is the target's x/vol."""
    anchor = make_anchor(tmp, USER, USER)
    x = anchor / "x"
    (x / "vol").mkdir(parents=True)
    write(x / "keep", b"in scope, must stay")
    src = Canary(tmp / "src")
    app = tmp / "app"
    app.mkdir()
    volume = f"--bind {src.path}" if kind == "bind" else "-t tmpfs none"
    pid = container(f"mount --bind {anchor} {app} && mount {volume} {app}/x/vol")
    before = snapshot(tmp)
    with pytest.raises(InUse) as ei:
        engine.cleanup(str(x), USER, _config(tmp))
    assert f"mounted at {app}/x/vol" in ei.value.message and f"pid {pid}" in ei.value.message, ei.value.message
    assert "nothing was removed" in ei.value.message
    assert snapshot(tmp) == before
    src.check()


# -- the comparison itself ------------------------------------------------------------------

def _held(path):
    return os.open(path, DIR_FLAGS)


def test_a_target_that_is_the_root_of_a_bind_is_placed_by_its_root(tmp, mnt):
    """The target held through a bind of itself (mountinfo root != "/"):
    its own mount (at the location) and the volume of the original view
    (by identity) are both found; the rest of the table is not."""
    v = Views(tmp, mnt)
    where = _mount_in_original(v, "bind")
    view = tmp / "xview"
    view.mkdir()
    mnt.bind(v.original(), view)
    fd, orig = _held(view), _held(v.original())
    try:
        table = mounts.table()
        assert next(m for m in table if m.mount_point == os.fsencode(view)).root != b"/"
        here = mounts.place(fd, table)
        assert here == mounts.place(orig, table) == inuse.place(fd, table)
        assert mounts.mounts_at_or_below(fd, table) == sorted([os.fsencode(view), os.fsencode(where)])
    finally:
        os.close(fd)
        os.close(orig)


def test_mounts_on_top_of_and_inside_a_volume_found_by_identity_are_named(tmp, mnt):
    v = Views(tmp, mnt)
    where = _mount_in_original(v, "stacked")
    (where / "sub").mkdir()  # on the top of the stack: only the original view shows it
    mnt("-t", "tmpfs", "-o", "size=1m", "locald-admin-test", target=where / "sub")
    fd = _held(v.aliased())
    try:
        table = mounts.table()
        found = mounts.mounts_at_or_below(fd, table)
        assert found == [os.fsencode(where), os.fsencode(where / "sub")]
        stack = [m for m in table if m.mount_point == os.fsencode(where)]
        assert len(stack) == 2 and stack[1].parent == stack[0].id
    finally:
        os.close(fd)


def _fake(table, **kw):
    """A Mount with an id no real one has."""
    big = max(m.id for m in table) + 1000
    f = dict(id=big, parent=big + 1, dev=b"0:0", root=b"/", mount_point=b"/nowhere")
    f.update(kw)
    return mounts.Mount(**f)


def test_mounts_that_cannot_be_placed_are_compared_by_location(tmp, mnt):
    """The root mount (its parent is not in the table), a mount whose
    parent is not in the table, a parent whose directory was removed
    ("//deleted"): no error, no false finding; the location still counts."""
    v = Views(tmp, mnt)
    fd = _held(v.aliased())
    try:
        table = mounts.table()
        dev, rel = mounts.place(fd, table)
        loc = os.fsencode(v.aliased())
        roots = [m for m in table if m.parent == m.id or m.parent not in {n.id for n in table}]
        assert roots, "no mount of this table has its parent outside it"
        orphan_in_place = _fake(table, dev=dev, root=rel + b"/vol")  # its root is in place: not its mount point
        orphan_at_loc = _fake(table, id=orphan_in_place.id + 10, mount_point=loc + b"/vol")
        dead = _fake(table, id=orphan_in_place.id + 20, dev=dev, root=rel + b"//deleted",
                     mount_point=os.fsencode(tmp / "dead"))
        on_dead = _fake(table, id=dead.id + 1, parent=dead.id, dev=b"0:1", mount_point=os.fsencode(tmp / "dead"))
        selfish = _fake(table, id=dead.id + 2, parent=dead.id + 2, dev=dev, mount_point=b"/")
        extra = [orphan_in_place, orphan_at_loc, dead, on_dead, selfish]
        assert mounts.mounts_at_or_below(fd, table + extra) == [loc + b"/vol"]
        assert mounts.mounts_at_or_below(fd, table) == []
    finally:
        os.close(fd)


def test_mountinfo_escapes_are_undone():
    raw = (b"40 27 254:0 /tmp/a\\134040b /tmp/v\\040o\\134040l\\011t\\012n rw,relatime shared:1 - ext4 /dev/vda rw\n"
           b"41 40 0:50 / /tmp/v\\040o\\134040l\\011t\\012n/in rw - tmpfs none rw\n")
    a, b = mounts.parse(raw)
    assert a == mounts.Mount(40, 27, b"254:0", b"/tmp/a\\040b", b"/tmp/v o\\040l\tt\nn", b"ext4", b"rw")
    assert b.parent == 40 and b.mount_point == b"/tmp/v o\\040l\tt\nn/in"
    assert mounts.mount_point_place(b, {40: a}) == (b"254:0", b"/tmp/a\\040b/in")


def test_one_check_reads_the_mount_table_once(tmp, monkeypatch):
    """remove._remove_dir asks mounts_at_or_below, then inuse.uses: with a
    table given, neither reads mountinfo again."""
    anchor = make_anchor(tmp, USER, USER)
    table = mounts.table()
    reads = []
    real = mounts.table
    monkeypatch.setattr(mounts, "table", lambda *a: reads.append(a) or real(*a))
    fd = _held(anchor)
    try:
        assert mounts.mounts_at_or_below(fd, table) == []
        assert inuse.uses(fd, USER, own=table) == []
        assert reads == []
        assert mounts.mounts_at_or_below(fd) == []
        assert len(reads) == 1
    finally:
        os.close(fd)


def test_a_removed_target_has_no_mounts_and_an_unplaceable_one_is_unknown(tmp):
    d = tmp / "gone"
    d.mkdir()
    fd = _held(d)
    try:
        table = mounts.table()
        d.rmdir()
        assert mounts.mounts_at_or_below(fd, table) == []  # st_nlink 0 (M4)
    finally:
        os.close(fd)
    fd = _held(tmp)
    try:
        mine = fsops.mount_id(fd)
        with pytest.raises(mounts.LocationUnknown):  # M5: refuse, do not guess
            mounts.mounts_at_or_below(fd, [m for m in mounts.table() if m.id != mine])
    finally:
        os.close(fd)
