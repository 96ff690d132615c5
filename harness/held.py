"""Directories held open the way the walks take them, for the tests that
call the removal, the walks and the count directly; and the count of open
fds those tests compare before and after.

``Parent(target)`` holds the target's parent (what ``remove.remove_entry``
is given); ``Held(target)`` holds the parent and the target opened beneath
it (what ``walk.remove_tree`` and ``count.count_tree`` are given).
``closing()`` makes the fixture that hands them out and closes them all.
"""

import contextlib
import gc
import os

from locald_admin.fs import count, fsops, remove, walk


def open_fds():
    """How many fds this process has open (not counting the listing's own).
    Collects first: sockets leaked by earlier tests' bus connections would
    otherwise be closed by the garbage collector in the middle of a count."""
    gc.collect()
    return len(os.listdir("/proc/self/fd")) - 1


class Parent:
    """The held parent directory of a target, as the mechanism and the
    client hold it."""

    def __init__(self, target):
        self.target = target
        self.name = os.fsencode(target.name)
        self.fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)

    def remove(self, **kw):
        return remove.remove_entry(self.fd, self.name, str(self.target), os.getuid(), **kw)

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class Held:
    """The fds ``count_tree``/``remove_tree`` take: the parent and the
    target opened beneath it."""

    def __init__(self, target):
        self.name = os.fsencode(target.name)
        self.parent_fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
        self.dir_fd = fsops.default().open_beneath(self.parent_fd, self.name)

    def count(self, limits=walk.DEFAULT_LIMITS):
        return count.count_tree(self.parent_fd, self.name, self.dir_fd, limits=limits)

    def remove(self, limits=walk.DEFAULT_LIMITS):
        return walk.remove_tree(self.parent_fd, self.name, self.dir_fd, limits=limits)

    def close(self):
        if self.dir_fd is not None:
            os.close(self.dir_fd)
            os.close(self.parent_fd)
            self.dir_fd = self.parent_fd = None


@contextlib.contextmanager
def closing(kind):
    """A function ``hold(target) -> kind(target)``; everything it made is
    closed when the block ends (a fixture yields it)."""
    made = []

    def hold(target):
        made.append(kind(target))
        return made[-1]

    try:
        yield hold
    finally:
        for obj in made:
            obj.close()
