"""The file-system mode (openat2 or the fallback) of the tests' in-process
calls.

The product chooses once and passes an ``fsops.Fs`` down (the mechanism from
``--no-openat2``, the client by probing the kernel).  Tests that call the
engine, the walk or the client's own attempt in-process take the default
Fs; ``forced(openat2)`` swaps that default for the duration of a block.
"""

import contextlib

from locald_admin.fs import fsops


@contextlib.contextmanager
def forced(openat2):
    """Within the block, ``fsops.default()`` is ``Fs(openat2=openat2)``.
    Asking for openat2 on a kernel without it raises LookupError."""
    if openat2 and not fsops.kernel_has_openat2():
        raise LookupError("this kernel has no openat2 (ENOSYS)")
    fs = fsops.Fs(openat2=bool(openat2))
    real = fsops.default
    fsops.default = lambda: fs
    try:
        yield fs
    finally:
        fsops.default = real
