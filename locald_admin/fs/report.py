"""What a walk reports, bounded: the failures and mounts it found.

Both removal walks (the Python one, ``removal.py``, and the C one,
``_cwalk.c`` through ``compiled.py``) and the count (``count.py``) report
into a ``Findings``; a removal's is a ``WalkResult``, which also counts what
was removed.  However large the tree and whatever an attacker puts in it,
the report holds at most ``MAX_FAILURES`` failures and as many mounts with
their paths, and counts the rest (V14): a path is built only when it is
kept (``Findings.keeps``), since a deep one costs its depth to build.  The
first failure that more privilege cannot fix is kept even beyond that, so
that the client passes it on rather than asking the mechanism (C2).

The reasons a removal gives where it decided itself (errno None) are here
too, the same words from both walks (the C walk is given them).  This
module imports nothing of the walk: every part of it may import this one.
"""

import errno
import threading

MAX_FAILURES = 64  # failures (and mounts) kept with their paths; the rest are counted
# Failures that more privilege can fix: the client asks the mechanism.
PERMISSION_ERRNOS = frozenset({errno.EACCES, errno.EPERM})

# What the removal says where it decided itself (errno None), the same words
# from both walks (``removal.py`` and ``_cwalk.c``, which is given them).
MOVED = "directory was moved during removal"
REPLACED = "was replaced by another directory during removal"


def too_deep(max_depth):
    return f"deeper than {max_depth} levels; left in place"


def kept_overflow(max_kept):
    return (f"more than {max_kept} of its entries could not be removed, too many to list it again; "
            "the rest left in place")


class Findings:
    """Failures and mounts found by a walk, bounded.  ``failures``: path
    (bytes, relative) -> (errno or None, reason), the first MAX_FAILURES
    and the first that is not EACCES/EPERM; ``more_failures`` counts the
    rest.  ``mounts``: paths of mounts left in place, the first
    MAX_FAILURES; ``more_mounts`` counts the rest."""

    __slots__ = ("failures", "more_failures", "mounts", "more_mounts", "_other")

    def __init__(self):
        # The errno lets the caller tell "permission denied" (the client then
        # asks the mechanism) from any other failure (which it passes on
        # unchanged).
        self.failures = {}
        self.more_failures = 0
        self.mounts = []
        self.more_mounts = 0
        self._other = False  # a failure that is not a permission error is kept

    def keeps(self, err):
        """Whether a failure with errno ``err`` would be kept with its path
        (rather than only counted): a walk builds a deep path only then."""
        return len(self.failures) < MAX_FAILURES or (not self._other and err not in PERMISSION_ERRNOS)

    def keeps_mount(self):
        return len(self.mounts) < MAX_FAILURES

    def fail(self, rel, err, reason=None):
        """Record the first failure at ``rel`` (bytes, or a function that
        makes them: a deep path costs its depth to build, so it is built only
        when kept): an OSError, or an errno (None for a race the walk
        detected itself) and its reason."""
        if isinstance(err, OSError):
            err, reason = err.errno, err.strerror
        other = err not in PERMISSION_ERRNOS
        if len(self.failures) >= MAX_FAILURES and (self._other or not other):
            self.more_failures += 1
            return
        if callable(rel):
            rel = rel()
        if rel in self.failures:
            return
        self.failures[rel] = (err, reason)
        self._other = self._other or other

    def mount(self, rel):
        """Record a mount left in place at ``rel`` (as for ``fail``)."""
        if len(self.mounts) >= MAX_FAILURES:
            self.more_mounts += 1
        else:
            self.mounts.append(rel() if callable(rel) else rel)

    def merge(self, other):
        """Add what another walk (``other``, a Findings) found, within the
        same bounds."""
        for rel, (err, reason) in other.failures.items():
            self.fail(rel, err, reason)
        self.more_failures += other.more_failures
        for rel in other.mounts:
            self.mount(rel)
        self.more_mounts += other.more_mounts

    @property
    def failure_count(self):
        return len(self.failures) + self.more_failures

    @property
    def mount_count(self):
        return len(self.mounts) + self.more_mounts


class WalkResult(Findings):
    """What a removal found, and how many entries it removed (``removed``,
    with ``removed_total`` the count while C walks are still under way)."""

    __slots__ = ("removed", "helpers", "cancelled", "_fold")

    def __init__(self):
        super().__init__()
        self.removed = 0
        # Counters of walks under way (a C walk's _cwalk.Counter, counts
        # only), each folded into ``removed`` when it ends (``fold``).
        self.helpers = []
        self.cancelled = False  # the walk stopped because ``cancel`` was set
        self._fold = threading.Lock()

    @property
    def removed_total(self):
        """Entries removed so far by this walk and its helpers; safe to read
        from another thread while they run (each counter has one writer; a
        counter is folded under the lock, so the total never steps back)."""
        with self._fold:
            return self.removed + sum(h.removed for h in self.helpers)

    def start(self, counter):
        """``counter`` (a ``_cwalk.Counter``) counts a walk that starts now."""
        with self._fold:
            self.helpers.append(counter)

    def fold(self, counter):
        """``counter`` (in ``helpers``) has stopped: add it to ``removed``."""
        with self._fold:
            self.helpers.remove(counter)
            self.removed += counter.removed
