"""The trees the benchmark deletes: their shapes, their entry counts, and a
builder that fills a tree's directories from forked worker processes."""

import contextlib
import os
import signal

from .sampling import NPROC

DIRF = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILEF = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

TREES = {
    "a": {"label": "(a) 100k files in 1,000 dirs", "dirs": 1000, "files": 100},
    "b": {"label": "(b) 1M files in 1,000 dirs", "dirs": 1000, "files": 1000},
    "c": {"label": "(c) 100k files in one dir", "dirs": 0, "files": 100_000},
    "d": {"label": "(d) 10,000-deep chain", "depth": 10_000},
    "e": {"label": "(e) x/{1,000 dirs x 100 files}", "dirs": 1000, "files": 100, "under": "x"},
    "f": {"label": "(f) 1.5M files in one dir", "dirs": 0, "files": 1_500_000},
}


def _fill(dfd, nfiles, start=0, step=1):
    for f in range(start, nfiles, step):
        os.close(os.open(f"f{f}", FILEF, 0o644, dir_fd=dfd))


def build_tree(parent, name, spec, workers=NPROC):
    """Create ``parent/name`` per ``spec`` (root-owned, as we are root).
    Subdirectories are filled by ``workers`` forked processes."""
    pfd = os.open(parent, DIRF)
    try:
        os.mkdir(name, 0o755, dir_fd=pfd)
        top = os.open(name, DIRF, dir_fd=pfd)
    finally:
        os.close(pfd)
    if "under" in spec:  # the tree one level down: name/x/...
        os.mkdir(spec["under"], 0o755, dir_fd=top)
        below = os.open(spec["under"], DIRF, dir_fd=top)
        os.close(top)
        top = below
    try:
        if "depth" in spec:
            fd = os.dup(top)
            for _ in range(spec["depth"]):
                os.mkdir("d", 0o755, dir_fd=fd)
                nfd = os.open("d", DIRF, dir_fd=fd)
                os.close(fd)
                fd = nfd
            os.close(fd)
            return
        ndirs, nfiles = spec["dirs"], spec["files"]
        pids = []
        for w in range(workers):
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
                        signal.signal(sig, signal.SIG_DFL)
                    if ndirs == 0:  # one directory: its files shared out
                        _fill(top, nfiles, w, workers)
                    for d in range(w, ndirs, workers):
                        os.mkdir(f"d{d}", 0o755, dir_fd=top)
                        dfd = os.open(f"d{d}", DIRF, dir_fd=top)
                        try:
                            _fill(dfd, nfiles)
                        finally:
                            os.close(dfd)
                    code = 0
                finally:
                    os._exit(code)
            pids.append(pid)
        bad = []
        try:
            while pids:
                if os.waitpid(pids[0], 0)[1] != 0:
                    bad.append(pids[0])
                pids.pop(0)
        finally:
            for pid in pids:  # interrupted: no builder may outlive us
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
        if bad:
            raise RuntimeError(f"tree builder workers failed: {bad}")
    finally:
        os.close(top)


def entries(spec):
    if "depth" in spec:
        return spec["depth"] + 1
    return 1 + ("under" in spec) + spec["dirs"] + max(spec["dirs"], 1) * spec["files"]
