"""Give freed memory back to the system.

CPython's allocator and glibc's malloc keep what a big walk or a flood of
calls freed: the service stays at its peak size while idle.

``exec_under_system_malloc`` (the entry point's first step, start.py) runs
the interpreter again with ``PYTHONMALLOC=malloc``: every object then comes
from glibc's malloc instead of pymalloc's 1 MiB arenas.  An arena is given
back only when every object in it is gone, and a few objects that outlive a
request (a task's weak reference, a cached credential, a dict that grew) pin
arenas that are otherwise empty; glibc's ``malloc_trim`` returns each free
page wherever it lies.  After every attack of threat-model V17 at once the
service stayed 5.7-13 MiB above its idle size with pymalloc, 3.2-3.5 MiB
with malloc (the Python objects still alive were 83 kB: tracemalloc), at
the same idle size.  ``trim`` asks
glibc to return free heap pages (``malloc_trim(0)``); ``IdleTrim`` calls it
once the service has been idle for ``TRIM_AFTER`` seconds.  ``one_arena`` (called
once at start, before any thread) makes every thread allocate from glibc's
one main arena: with an arena per worker thread, what a walk in one thread
freed stayed mapped there (4 MiB after a 65,536-deep walk, against under
2 MiB with one arena; the GIL serialises the allocations anyway).
Elsewhere (musl, no glibc) both do nothing.
"""

import asyncio
import ctypes
import ctypes.util
import gc
import os
import sys
import time

TRIM_AFTER = 1.0  # seconds without a call in flight

M_ARENA_MAX = -8  # mallopt's parameter (glibc malloc.h)

# Set in the environment of the interpreter started again, so that a start
# where the variable cannot take effect execs only once.
REEXEC_MARK = "LOCALD_ADMIN_REEXEC"

_libc = None


def exec_under_system_malloc(argv=None):
    """Replace this process by the same program under ``PYTHONMALLOC=malloc``
    (see above), unless that is already in effect or was already tried.

    Started with ``-I`` (the installed launcher), whose ``-E`` would ignore
    the variable, the new interpreter gets ``-s -P`` (and ``-B``, the
    launcher's: no bytecode written) and an environment
    without any other PYTHON* variable instead: the same isolation.  The
    process keeps its pid, so systemd and the bus see one service.  Returns
    (changing nothing) when it cannot exec: the service runs on, with
    pymalloc's figures.
    """
    argv = sys.argv if argv is None else argv
    isolated = sys.flags.ignore_environment
    if os.environ.get(REEXEC_MARK) or (os.environ.get("PYTHONMALLOC") == "malloc" and not isolated):
        return
    env = dict(os.environ)
    if isolated:
        env = {k: v for k, v in env.items() if not k.startswith("PYTHON")}
    env.update(PYTHONMALLOC="malloc", **{REEXEC_MARK: "1"})
    flags = [*(["-s"] if sys.flags.no_user_site or isolated else []),
             *(["-P"] if getattr(sys.flags, "safe_path", False) or (isolated and sys.version_info >= (3, 11)) else []),
             *(["-S"] if sys.flags.no_site else []),
             # The launcher's -B (no bytecode written as root), which the
             # environment does not carry when -I ignored it.
             *(["-B"] if sys.flags.dont_write_bytecode and (isolated or not os.environ.get("PYTHONDONTWRITEBYTECODE"))
               else [])]
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None:  # python -m PACKAGE: run the package again, not its __main__.py's path
        program = ["-m", spec.name[:-len(".__main__")] if spec.name.endswith(".__main__") else spec.name]
    else:  # a script: the launcher or a console script
        program = [argv[0]]
    try:
        os.execve(sys.executable, [sys.executable, *flags, *program, *argv[1:]], env)
    except OSError as e:
        print(f"locald-admin-mechanism: warning: cannot start again under PYTHONMALLOC=malloc ({e}); "
              "freed memory is returned less well", file=sys.stderr)


def _glibc():
    global _libc
    if _libc is None:
        try:
            lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            lib.malloc_trim.argtypes = (ctypes.c_size_t,)
            lib.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
            _libc = lib
        except (OSError, AttributeError):
            _libc = False
    return _libc or None


def one_arena():
    """Allocate from one malloc arena in every thread (see above)."""
    lib = _glibc()
    if lib is not None:
        lib.mallopt(M_ARENA_MAX, 1)


def trim():
    """Collect garbage, then return free heap memory to the system."""
    gc.collect()
    lib = _glibc()
    if lib is not None:
        lib.malloc_trim(0)


class IdleTrim:
    """``trim`` once nothing has been in flight for ``after`` seconds, so
    that the memory of a big walk or a flood goes back to the system once
    things have been quiet for a moment.  ``busy()`` says whether a call is
    in flight; ``idle()`` is told when the last one ended.  One timer, moved
    on while calls keep coming (not one per call)."""

    def __init__(self, busy, after=TRIM_AFTER):
        self._busy = busy
        self._after = after
        self._since = time.monotonic()  # when the service last became idle
        self._timer = None

    def idle(self):
        """The last call in flight has ended (on the event loop)."""
        self._since = time.monotonic()
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._after, self._fire)

    def _fire(self):
        self._timer = None
        if self._busy():
            return  # the last of those calls calls idle() again
        remaining = self._since + self._after - time.monotonic()
        if remaining > 0:
            self._timer = asyncio.get_running_loop().call_later(remaining, self._fire)
        else:
            trim()
