"""The real mechanism with test hooks, run by harness.mechanism.Mechanism
(as root, with the test's interpreter) in place of
``python -m locald_admin.mechanism``:

    hooked_mechanism.py [--faults] -- MECHANISM-ARGS...

--faults               fault injection: a target whose last component is
                       ``boom-parse-KIND`` makes the lexical parse raise,
                       ``boom-walk-KIND`` makes the deletion walk raise when
                       it reaches that entry (after scope resolution, in a
                       worker); KIND is one of FAULTS below.

Then the mechanism's own main() runs with MECHANISM-ARGS.
"""

import argparse
import errno
import sys

from locald_admin import pathrules
from locald_admin.fs import walk
from locald_admin.mechanism import main

FAULTS = {
    "runtime": lambda: RuntimeError("injected failure\nwith a second line"),
    "zero": lambda: ZeroDivisionError("division by zero"),
    "oserror": lambda: OSError(errno.EIO, "injected I/O error"),
    "keyerror": lambda: KeyError("no such key"),
}


def _fault(name, where):
    prefix = f"boom-{where}-"
    if name.startswith(prefix):
        raise FAULTS[name[len(prefix):]]()


def install_faults():
    real_parse = pathrules.parse
    real_remove = walk.remove_with_threads

    def parse(path):
        """The first thing the mechanism does with a path (lexical rules)."""
        text = path.decode("utf-8", "replace") if isinstance(path, bytes) else path
        _fault(text.rstrip("/").rsplit("/", 1)[-1], "parse")
        return real_parse(path)

    def remove_with_threads(parent_fd, name, dir_fd, *args, **kwargs):
        """The walk of a directory, after scope resolution and the mount and
        in-use checks, in a worker (``remove._remove_dir`` calls it)."""
        _fault(name.decode("utf-8", "replace"), "walk")
        return real_remove(parent_fd, name, dir_fd, *args, **kwargs)

    pathrules.parse = parse
    walk.remove_with_threads = remove_with_threads


def run(argv):
    ours, theirs = argv, []
    if "--" in argv:
        k = argv.index("--")
        ours, theirs = argv[:k], argv[k + 1:]
    parser = argparse.ArgumentParser(prog="hooked_mechanism.py")
    parser.add_argument("--faults", action="store_true")
    opts = parser.parse_args(ours)
    if opts.faults:
        install_faults()
    return main.main(theirs)


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
