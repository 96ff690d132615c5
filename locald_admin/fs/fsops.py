"""Low-level, fd-relative file system primitives.

``Fs.open_beneath(dirfd, name)`` is the one way anything below an anchor is
opened.  With ``openat2`` (Linux 5.6+) the kernel itself refuses
symlinks (RESOLVE_NO_SYMLINKS), magic links (RESOLVE_NO_MAGICLINKS), escapes
from ``dirfd`` (RESOLVE_BENEATH) and mount crossings (RESOLVE_NO_XDEV), without
ever looking into the mounted file system.  Without ``openat2`` (ENOSYS, or
chosen with ``Fs(openat2=False)``, which ``--no-openat2`` and the tests do) the fallback is
``O_NOFOLLOW`` on a single component plus a comparison of the mount id from
``/proc/self/fdinfo``.

The ``Fs`` also says which removal walk runs (``compiled``): the C one
(``_cwalk.c``, which makes its own openat2 calls with the same flags) only
with openat2; the Python one otherwise, or when ``--python-walk`` asks.
"""

import ctypes
import errno
import os
import struct
from dataclasses import dataclass

# <linux/openat2.h>
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
SYS_openat2 = 437  # the same number on every architecture (>= 424 are unified)

BENEATH = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV | RESOLVE_NO_MAGICLINKS

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
PATH_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC

# What a failed ``open_beneath`` or ``lstat_beneath`` says about the entry,
# the same for every caller (scope resolution, removal, the walk).  The part
# of a path above an anchor is opened with ordinary resolution and means
# something else (see scope.py).
GONE = "gone"  # ENOENT: nothing there (any more)
NOT_FOLLOWED = "not followed"  # ELOOP, ENOTDIR: a symlink (never followed), or not a directory
MOUNT = "mount"  # EXDEV: a mount point (never crossed)
FAILED = "failed"  # anything else: a real error, reported with its errno
_REFUSALS = {errno.ENOENT: GONE, errno.ELOOP: NOT_FOLLOWED, errno.ENOTDIR: NOT_FOLLOWED, errno.EXDEV: MOUNT}


def refusal(e):
    """GONE, NOT_FOLLOWED, MOUNT or FAILED for the OSError ``e``."""
    return _REFUSALS.get(e.errno, FAILED)


_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


def _raw_openat2(dirfd, path, flags, resolve):
    how = ctypes.create_string_buffer(struct.pack("QQQ", flags, 0, resolve), 24)
    fd = _syscall(ctypes.c_long(SYS_openat2), ctypes.c_int(dirfd), ctypes.c_char_p(path),
                  how, ctypes.c_size_t(24))
    if fd < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), path.decode("utf-8", "backslashreplace"))
    return fd


_kernel = {}  # the probe's answer, once known (a fact about this kernel, not a setting)


def kernel_has_openat2():
    """Whether this kernel (and seccomp filter) lets us use openat2; probed once."""
    if "openat2" not in _kernel:
        try:
            os.close(_raw_openat2(-100, b"/", PATH_FLAGS, 0))  # AT_FDCWD
            _kernel["openat2"] = True
        except OSError as e:
            if e.errno not in (errno.ENOSYS, errno.EPERM):  # EPERM: seccomp
                raise
            _kernel["openat2"] = False
    return _kernel["openat2"]


def mount_id(fd):
    """The mount id of ``fd`` (``mnt_id:`` of /proc/self/fdinfo/<fd>)."""
    with open(f"/proc/self/fdinfo/{fd}", "rb") as f:
        for line in f:
            if line.startswith(b"mnt_id:"):
                return int(line.split()[1])
    raise OSError(errno.EIO, "no mnt_id in fdinfo")


ENTRY_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


def compiled_walk():
    """The compiled walk (the ``_cwalk`` extension module), or None when it
    was not built (no gcc or Python headers at install time)."""
    try:
        from . import _cwalk
    except ImportError:
        return None
    return _cwalk


@dataclass(frozen=True)
class Fs:
    """How this process opens things below a held fd: with ``openat2``
    (``openat2`` True) or with the fallback; and which removal walk runs:
    the compiled one (``compiled`` True: ``_cwalk.c``, openat2 only) or the
    Python one (``removal.py``, the reference and the fallback's;
    ``walk.remove_tree`` dispatches on it).  Immutable; made once where the
    choice is made (the mechanism's settings, ``choose``) and passed down."""

    openat2: bool
    compiled: bool = False

    def __post_init__(self):
        if self.compiled and not self.openat2:
            raise ValueError("the compiled walk needs openat2")
        if self.compiled and compiled_walk() is None:
            raise ValueError("the compiled walk (locald_admin.fs._cwalk) is not built")

    def parent_mount(self, dirfd):
        """What the fallback compares entries of ``dirfd`` with (its mount
        id); None with openat2, which needs nothing."""
        return None if self.openat2 else mount_id(dirfd)

    def open_prefix(self, components):
        """Open the directory ``/a/b/c`` (the part of a path above the anchor).

        Ordinary symlinks are allowed here (``/home -> /var/home``); magic links
        (``/proc/<pid>/root``, ``/proc/<pid>/cwd``) are not, where openat2 exists.
        Returns an O_PATH fd.
        """
        path = b"/" + b"/".join(components)
        if self.openat2:
            return _raw_openat2(-100, path, PATH_FLAGS, RESOLVE_NO_MAGICLINKS)
        return os.open(path, PATH_FLAGS)

    def open_path_at(self, dirfd, relpath):
        """Open the directory ``relpath`` below ``dirfd`` as an O_PATH fd,
        following ordinary symlinks but (with openat2) no magic links.  For the
        fixed part of a prefix such as ``.local/share``."""
        if self.openat2:
            return _raw_openat2(dirfd, relpath, PATH_FLAGS, RESOLVE_NO_MAGICLINKS)
        return os.open(relpath, PATH_FLAGS, dir_fd=dirfd)

    def open_entry(self, dirfd, name, parent_mnt=None):
        """An O_PATH fd of the single entry ``name`` of ``dirfd``, whatever it
        is, never following it (a symlink gives the link itself) and refusing
        (EXDEV) a mount point.

        Nothing is asked of the file system the entry is: the entry is opened
        O_PATH without crossing a mount (openat2's RESOLVE_NO_XDEV stops
        before the mounted file system; the fallback compares mount ids from
        fdinfo), so a hung FUSE daemon mounted there cannot hang us.  The fd
        pins that one inode: ``fstat`` it, or ``reopen_dir`` a directory,
        without looking the name up again.
        """
        if self.openat2:
            return _raw_openat2(dirfd, name, ENTRY_FLAGS, BENEATH)
        if b"/" in name or name in (b".", b".."):
            raise OSError(errno.EXDEV, "not a single component", name)
        fd = os.open(name, ENTRY_FLAGS, dir_fd=dirfd)
        try:
            if parent_mnt is None:
                parent_mnt = mount_id(dirfd)
            if mount_id(fd) != parent_mnt:
                raise OSError(errno.EXDEV, "is a mount point", name)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def lstat_beneath(self, dirfd, name, parent_mnt=None):
        """``lstat`` of the single entry ``name`` of ``dirfd``, refusing (EXDEV)
        to look at a mount point.

        A plain ``fstatat`` of a mount point reports the root of the mounted file
        system, which means asking that file system: a hung FUSE daemon would
        hang us.  Here the entry is opened O_PATH without crossing the mount
        (``open_entry``) and that fd is ``fstat``ed.
        """
        fd = self.open_entry(dirfd, name, parent_mnt)
        try:
            return os.fstat(fd)
        finally:
            os.close(fd)

    @staticmethod
    def reopen_dir(path_fd, flags=DIR_FLAGS):
        """The directory an O_PATH fd (``open_entry``'s) holds, opened for
        reading: through ``/proc/self/fd``, which reopens exactly that inode
        on that mount, with the permission check of a plain open and no
        lookup of any name (the entry cannot have been swapped meanwhile)."""
        return os.open(f"/proc/self/fd/{path_fd}", flags & ~os.O_NOFOLLOW)

    def open_beneath(self, dirfd, name, flags=DIR_FLAGS, parent_mnt=None):
        """Open the single component ``name`` relative to ``dirfd``.

        Never follows a symlink (ELOOP, or ENOTDIR for O_DIRECTORY on some
        kernels) and never crosses into another mount (EXDEV).  ``parent_mnt`` is
        ``dirfd``'s mount id, used by the fallback only (computed when None).
        """
        if self.openat2:
            return _raw_openat2(dirfd, name, flags | os.O_NOFOLLOW, BENEATH)
        if b"/" in name or name in (b".", b".."):
            raise OSError(errno.EXDEV, "not a single component", name)
        # First an O_PATH fd, whose mount id can be read without asking the file
        # system anything (a hung FUSE mount cannot stall us); only then the real
        # open, through /proc/self/fd: that reopens exactly the checked inode on
        # the checked mount, with no second lookup of the name.
        pfd = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
        try:
            if parent_mnt is None:
                parent_mnt = mount_id(dirfd)
            if mount_id(pfd) != parent_mnt:
                raise OSError(errno.EXDEV, "is a mount point", name)
            return os.open(f"/proc/self/fd/{pfd}", flags & ~os.O_NOFOLLOW)
        finally:
            os.close(pfd)


def choose(openat2=True, compiled=True):
    """The Fs to use: openat2 where asked for and the kernel has it, else the
    fallback; the compiled walk where asked for, openat2 is used and the
    extension is built, else the Python walk."""
    o = bool(openat2) and kernel_has_openat2()
    return Fs(openat2=o, compiled=o and bool(compiled) and compiled_walk() is not None)


def default():
    """The Fs of callers that were given none (the client's own attempt, direct
    calls of the engine): openat2 where the kernel has it, the compiled walk
    where it is built."""
    return choose(True, True)
