"""The file-system mode of the tests' in-process calls: the compiled walk
(openat2), the Python walk with openat2, or the Python walk with the
fallback.

The product chooses once and passes an ``fsops.Fs`` down (the mechanism from
``--no-openat2``, the client by probing the kernel).  Tests that call the
engine, the walk or the client's own attempt in-process take the default
Fs; ``forced(openat2)`` swaps that default for the duration of a block.
"""

import contextlib

from locald_admin.fs import fsops


MODES = ("compiled", "openat2", "fallback")


def available():
    """The MODES this machine can run (openat2 in the kernel, the C walk built)."""
    return [m for m in MODES if (m == "fallback" or fsops.kernel_has_openat2())
            and (m != "compiled" or fsops.compiled_walk() is not None)]


def fs_for(mode):
    """The Fs of a mode (one of MODES); skips the test if it is not available."""
    if mode not in available():
        import pytest
        pytest.skip(f"{mode} mode is not available here (no openat2, or the C walk is not built)")
    return fsops.Fs(openat2=mode != "fallback", compiled=mode == "compiled")


def mechanism_args(mode):
    """The mechanism's command-line flags for a mode."""
    return {"compiled": [], "openat2": ["--python-walk"], "fallback": ["--no-openat2"]}[mode]


@contextlib.contextmanager
def forced(openat2, compiled=False):
    """Within the block, ``fsops.default()`` is ``Fs(openat2=openat2,
    compiled=compiled)``.  Asking for openat2 on a kernel without it, or for
    the compiled walk where it is not built, raises LookupError."""
    if openat2 and not fsops.kernel_has_openat2():
        raise LookupError("this kernel has no openat2 (ENOSYS)")
    if compiled and fsops.compiled_walk() is None:
        raise LookupError("the compiled walk (locald_admin.fs._cwalk) is not built")
    fs = fsops.Fs(openat2=bool(openat2), compiled=bool(compiled))
    real = fsops.default
    fsops.default = lambda: fs
    try:
        yield fs
    finally:
        fsops.default = real
