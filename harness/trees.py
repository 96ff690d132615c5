"""Temporary directories, test trees, snapshots, canaries and mounts."""

import contextlib
import os
import re
import stat
import subprocess
import tempfile
from pathlib import Path

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY


def world_tmpdir(prefix="locald-admin-test-"):
    """A temporary directory every user can traverse (pytest's tmp_path is
    mode 700 when run as root)."""
    d = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    os.chmod(d, 0o755)
    return Path(d)


def rm_rf(path):
    """Remove fixture trees with rm -rf: deep trees defeat shutil.rmtree."""
    subprocess.run(["rm", "-rf", "--one-file-system", "--", os.fsdecode(path)], check=False)


def write(path, data=b"x", mode=None, uid=None):
    with open(path, "wb") as f:
        f.write(data)
    if mode is not None:
        os.chmod(path, mode)
    if uid is not None:
        os.chown(path, uid, uid)


# -- builders ------------------------------------------------------------------------

def make_anchor(top, uid, gid, name="proj"):
    """<top>/<name>/.locald, both directories owned by ``uid``:``gid``."""
    anchor = Path(top) / name / ".locald"
    anchor.mkdir(parents=True)
    os.chown(anchor.parent, uid, gid)
    os.chown(anchor, uid, gid)
    return anchor


def make_runc_leftovers(anchor, svc="svc", secret="secret"):
    """What runc leaves in ``anchor``: <svc> owned like the anchor, below it
    root-owned 0700 directories rootfs/run/shm, and in shm a mode 000 file
    (returned)."""
    st = os.stat(anchor)
    (anchor / svc).mkdir()
    os.chown(anchor / svc, st.st_uid, st.st_gid)
    shm = anchor / svc / "rootfs" / "run" / "shm"
    for d in (anchor / svc / "rootfs", anchor / svc / "rootfs" / "run", shm):
        d.mkdir()
        os.chown(d, 0, 0)
        os.chmod(d, 0o700)
    (shm / secret).write_text("x")
    os.chmod(shm / secret, 0)
    return shm / secret


def plant_canary(top):
    """<top>/canary/precious, which every test that must not delete outside
    its target checks with ``check_canary``."""
    (Path(top) / "canary").mkdir()
    (Path(top) / "canary" / "precious").write_text("canary")


def check_canary(top):
    assert (Path(top) / "canary" / "precious").read_text() == "canary"


def make_flat(root, dirs, per):
    """root/d<k>/f<n>: ``dirs`` * ``per`` files; returns the number of
    entries, root included."""
    os.mkdir(root)
    for d in range(dirs):
        p = os.path.join(root, f"d{d}")
        os.mkdir(p)
        fd = os.open(p, DIR_FLAGS)
        try:
            for n in range(per):
                os.close(os.open(f"f{n}", os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600, dir_fd=fd))
        finally:
            os.close(fd)
    return 1 + dirs + dirs * per


def make_wide(root, count, name_len=200):
    """One directory ``root`` holding ``count`` empty files whose names are
    ``name_len`` bytes long; returns the number of entries, root included."""
    os.mkdir(root)
    fd = os.open(root, DIR_FLAGS)
    try:
        for n in range(count):
            name = f"{n:08d}".ljust(name_len, "x")
            os.close(os.open(name, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600, dir_fd=fd))
    finally:
        os.close(fd)
    return count + 1


def make_chain(base, depth, name="d", leaf=None, data=b"leaf", create_base=False):
    """``depth`` nested directories ``name`` below the directory ``base``
    (made first with ``create_base``), built fd-relative (the path may be far
    beyond PATH_MAX), with the file ``leaf`` (holding ``data``) at the bottom
    if given.  Slow to delete for its size (every level is entered and left
    again), cheap to create.  Returns the number of entries created."""
    if create_base:
        os.mkdir(base)
    fd = os.open(base, DIR_FLAGS)
    try:
        for _ in range(depth):
            os.mkdir(name, dir_fd=fd)
            nfd = os.open(name, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nfd
        if leaf:
            wfd = os.open(leaf, os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd)
            os.write(wfd, data)
            os.close(wfd)
    finally:
        os.close(fd)
    return int(create_base) + depth + (1 if leaf else 0)


def count_entries(path):
    """Entries at and below ``path`` (0 if it does not exist)."""
    if not os.path.lexists(path):
        return 0
    n = 1
    for _, dirnames, filenames in os.walk(path):
        n += len(dirnames) + len(filenames)
    return n


# -- snapshots -----------------------------------------------------------------------

def walk_entries(root, skip=()):
    """(path, lstat) of every entry below ``root`` (bytes paths), never
    following a symlink; descends into mounts; directories in ``skip``
    (paths) are neither listed nor entered."""
    skip = {os.fsencode(s) for s in skip}
    for dirpath, dirnames, filenames in os.walk(os.fsencode(root)):
        dirnames[:] = [n for n in dirnames if os.path.join(dirpath, n) not in skip]
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            yield p, os.lstat(p)


def _content(p):
    with open(p, "rb") as f:
        return f.read()


def kind(p, st):
    """Type and content: link text, file bytes, the type of anything else."""
    if stat.S_ISLNK(st.st_mode):
        return ("link", os.readlink(p))
    if stat.S_ISDIR(st.st_mode):
        return ("dir",)
    if stat.S_ISREG(st.st_mode):
        return ("file", _content(p))
    return ("other", stat.S_IFMT(st.st_mode))


def kind_owner(p, st):
    """``kind``, and for directories their owner and mode."""
    if stat.S_ISDIR(st.st_mode):
        return ("dir", st.st_uid, stat.S_IMODE(st.st_mode))
    return kind(p, st)


def inode(p, st):
    """Mode, owner, group, inode and (files) content."""
    return (st.st_mode, st.st_uid, st.st_gid, st.st_ino, _content(p) if stat.S_ISREG(st.st_mode) else None)


def full(p, st):
    """Type, mode, owner, group, inode; for files size, mtime and content
    (``"<unreadable>"`` if we may not read it), for symlinks their text.
    Directory mtimes are left out: removing a target changes its parent's."""
    rec = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_ino)
    if stat.S_ISREG(st.st_mode):
        try:
            data = _content(p)
        except PermissionError:
            data = "<unreadable>"
        return rec + (st.st_size, st.st_mtime_ns, data)
    if stat.S_ISLNK(st.st_mode):
        return rec + (os.readlink(p),)
    return rec


def snapshot(root, record=kind_owner, relative=True, skip=()):
    """path -> ``record(path, lstat)`` for everything below ``root`` (bytes
    paths, relative to ``root`` unless ``relative`` is false; never follows
    a symlink; does descend into mounts, which is what we want to compare)."""
    base = os.fsencode(root)
    return {os.path.relpath(p, base) if relative else p: record(p, st) for p, st in walk_entries(root, skip)}


def listing(root):
    """The set of relative paths (bytes) below ``root``, symlinks not
    followed; nothing is read or stat'ed (so paths beyond PATH_MAX do)."""
    base = os.fsencode(root)
    return {os.path.relpath(os.path.join(dirpath, n), base)
            for dirpath, dirnames, filenames in os.walk(base) for n in dirnames + filenames}


class Canary:
    """A directory outside every target (six entries), checked by kind,
    content and the directories' owner and mode."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.mkdir(exist_ok=True)
        write(self.path / "data", b"precious data\n")
        write(self.path / "passwd", b"root:x:0:0::/root:/bin/sh\n")
        (self.path / "sub" / "deep").mkdir(parents=True)
        write(self.path / "sub" / "deep" / "file", b"deep precious\n")
        write(self.path / "sub" / "data", b"sub precious\n")
        self.before = snapshot(self.path)
        assert len(self.before) == 6

    def check(self):
        assert snapshot(self.path) == self.before, f"the canary {self.path} outside the target was modified"


# -- mounts --------------------------------------------------------------------------

def is_mount_point(path):
    """From /proc/self/mountinfo only: never stats (a hung FUSE mount)."""
    target = os.fsencode(path)
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            mp = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), line.split(b" ")[4])
            if mp == target:
                return True
    return False


def umount(where, check=True):
    """Unmount ``where`` (lazily if it is busy); with ``check``, assert it
    is no longer a mount point."""
    if subprocess.run(["umount", os.fsdecode(where)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", os.fsdecode(where)], capture_output=True)
    if check:
        assert not is_mount_point(where), f"{where} is still mounted"


@contextlib.contextmanager
def mounted_tmpfs(where, options="size=4g,nr_inodes=4m,mode=755"):
    """A tmpfs at ``where`` (created if missing), always unmounted."""
    where = Path(where)
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "locald-admin-test", str(where)],
                   check=True, capture_output=True)
    try:
        yield where
    finally:
        umount(where)
