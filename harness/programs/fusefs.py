"""A FUSE file system for tests/test_faults.py, run as root by the test's
interpreter (mfusepy on libfuse3).

Usage: fusefs.py MODE MOUNTPOINT

MODE ok: a trivial file system (/hello).  MODE hang: every operation
sleeps for an hour.  Dies with the test (PR_SET_PDEATHSIG) and after 600 s.
"""
import ctypes, errno, os, signal, stat, sys, threading, time
import mfusepy as fuse

ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: never outlive the test
threading.Timer(600, lambda: os._exit(3)).start()  # nor a stuck run
mode, mountpoint = sys.argv[1], sys.argv[2]


def hang(self, *args, **kw):
    time.sleep(3600)


class Trivial(fuse.Operations):
    use_ns = True

    def getattr(self, path, fh=None):
        if path == "/":
            return dict(st_mode=stat.S_IFDIR | 0o755, st_nlink=2)
        if path == "/hello":
            return dict(st_mode=stat.S_IFREG | 0o644, st_nlink=1, st_size=6)
        raise fuse.FuseOSError(errno.ENOENT)

    def readdir(self, path, fh):
        return [".", "..", "hello"]

    def read(self, path, size, offset, fh):
        return b"hello\n"[offset:offset + size]


class Hung(fuse.Operations):
    use_ns = True
    getattr = readdir = opendir = open = access = statfs = read = hang


fuse.FUSE(Hung() if mode == "hang" else Trivial(), mountpoint, foreground=True)
