"""Give freed memory back to the system.

CPython's allocator and glibc's malloc keep what a big walk or a flood of
calls freed: the service stays at its peak size while idle.  ``trim`` asks
glibc to return free heap pages (``malloc_trim(0)``); the service calls it
once it has been idle for ``TRIM_AFTER`` seconds.  ``one_arena`` (called
once at start, before any thread) makes every thread allocate from glibc's
one main arena: with an arena per worker thread, what a walk in one thread
freed stayed mapped there (4 MiB after a 65,536-deep walk, against under
2 MiB with one arena; the GIL serialises the allocations anyway).
Elsewhere (musl, no glibc) both do nothing.
"""

import ctypes
import ctypes.util
import gc

TRIM_AFTER = 1.0  # seconds without a call in flight

M_ARENA_MAX = -8  # mallopt's parameter (glibc malloc.h)

_libc = None


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
