"""Directory listings with the entry types the file system records: the
Python walk's ``getdents64`` (the C walk makes the same calls itself).

``listing(fd)`` iterates over the entries of the directory ``fd`` (not
``.`` and ``..``), from its start, as ``Entry`` objects: the name, the
inode number and ``d_type`` exactly as the kernel returned them.  Unlike
``os.scandir`` it never looks further: ``os.DirEntry.is_dir()`` answers an
entry whose type is not recorded (``DT_UNKNOWN``: ext2 made with
``-O ^filetype``, some network and FUSE file systems) with a plain
``fstatat``, which follows a mount point into the mounted file system (a
hung FUSE daemon hangs it) and cannot be told apart from an answer taken
from the listing; and ``os.DirEntry`` does not show ``d_type``.  The walks
look at a ``DT_UNKNOWN`` entry themselves, with ``Fs.lstat_beneath`` (an
O_PATH open that crosses no mount, then ``fstat``).

Reads go into one buffer of ``BUFSZ`` bytes per open listing, on ``fd``
itself (its offset, set to 0 first: a listing of a directory replaces any
earlier one), so that a listing holds no fd of its own.
"""

import ctypes
import errno
import os
import struct
import sys

DT_UNKNOWN, DT_FIFO, DT_CHR, DT_DIR, DT_BLK, DT_REG, DT_LNK, DT_SOCK = 0, 1, 2, 4, 6, 8, 10, 12

BUFSZ = 32768  # as glibc's readdir (and so os.scandir) reads

_ENCODING, _ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()
_libc = ctypes.CDLL(None, use_errno=True)
_getdents64 = _libc.getdents64  # glibc >= 2.30
_getdents64.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t)
_getdents64.restype = ctypes.c_ssize_t
_HEAD = struct.Struct("=QqHB")  # struct linux_dirent64: d_ino, d_off, d_reclen, d_type; then d_name
_NAME = _HEAD.size  # 19


class Entry:
    """One directory entry: ``bname`` (bytes), ``ino`` (``inode()``, as
    ``os.DirEntry``), ``d_type`` (a ``DT_*``; DT_UNKNOWN where the file
    system does not record it).  ``name`` and ``is_dir`` are the
    ``os.DirEntry`` spellings, from the listing alone."""

    __slots__ = ("bname", "ino", "d_type")

    def __init__(self, bname, ino, d_type):
        self.bname, self.ino, self.d_type = bname, ino, d_type

    @property
    def name(self):
        return self.bname.decode(_ENCODING, _ERRORS)

    def inode(self):
        return self.ino

    def is_dir(self, *, follow_symlinks):
        """Whether the listing says it is a directory.  Never stats: an
        entry of unknown type raises ValueError (look at it with
        ``Fs.lstat_beneath``)."""
        if follow_symlinks:
            raise ValueError("a listing does not follow symlinks")
        if self.d_type == DT_UNKNOWN:
            raise ValueError(f"the type of {self.bname!r} is not recorded by its file system")
        return self.d_type == DT_DIR

    def __repr__(self):
        return f"<Entry {self.bname!r} ino={self.ino} d_type={self.d_type}>"


def listing(fd):
    """An iterator over the entries of the directory ``fd`` from its start
    (a generator: ``close()`` ends it).  A failed read raises OSError from
    the iteration, which then ends."""
    os.lseek(fd, 0, os.SEEK_SET)
    return _entries(fd)


def _entries(fd):
    buf = ctypes.create_string_buffer(BUFSZ)
    unpack, name_at = _HEAD.unpack_from, _NAME
    while True:
        got = _getdents64(fd, buf, BUFSZ)
        if got <= 0:
            if got < 0:
                err = ctypes.get_errno() or errno.EIO
                raise OSError(err, os.strerror(err))
            return
        data = ctypes.string_at(buf, got)
        find = data.find
        pos = 0
        while pos < got:
            ino, _, reclen, d_type = unpack(data, pos)
            # The name ends at its NUL; what follows, to the record's end, is
            # padding the kernel does not clear.
            start = pos + name_at
            name = data[start:find(b"\0", start)]
            pos += reclen
            if name == b"." or name == b"..":
                continue
            yield Entry(name, ino, d_type)
