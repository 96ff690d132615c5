"""Give freed memory back to the system.

CPython's allocator and glibc's malloc keep what a big walk or a flood of
calls freed: the service stays at its peak size while idle.  ``trim`` asks
glibc to return free heap pages (``malloc_trim(0)``); the service calls it
once it has been idle for ``TRIM_AFTER`` seconds.  Elsewhere (musl, no
glibc) it does nothing.
"""

import ctypes
import ctypes.util
import gc

TRIM_AFTER = 1.0  # seconds without a call in flight

_libc = None


def _malloc_trim():
    global _libc
    if _libc is None:
        try:
            lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _libc = lib.malloc_trim
            _libc.argtypes = (ctypes.c_size_t,)
            _libc.restype = ctypes.c_int
        except (OSError, AttributeError):
            _libc = False
    return _libc or None


def trim():
    """Collect garbage, then return free heap memory to the system."""
    gc.collect()
    fn = _malloc_trim()
    if fn is not None:
        fn(0)
