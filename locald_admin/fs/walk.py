"""The removal walk's entry points: ``remove_tree``, ``remove_with_threads``,
and ``Limits``, how far a walk may go.

``remove_tree`` removes a directory tree through held directory fds, with
the C walk or the Python walk as ``Fs.compiled`` says.
``remove_with_threads`` is the whole removal with threads: the C walk alone
first, for at most ``Limits.split_after`` steps (a small tree, what runc
leaves, is then gone without a thread started: starting and joining them
cost a small request more than its walk), then the parallel split and
``remove_tree``.  The rest of the walk is one module per concern, each below
this one (none imports it):

* ``report``: what a walk reports, bounded (``Findings``, ``WalkResult``,
  ``MAX_FAILURES``, the reasons both walks give);
* ``removal``: the Python walk, the reference: the ``_Removal`` visitor of
  ``traverse.Traversal`` (``python_remove_tree``);
* ``compiled``: the C walk (``_cwalk.c``) called with what it shares with
  the Python one (``compiled_remove_tree``);
* ``split``: the C walk in several threads before the ordinary walk
  (``remove_in_parallel``);
* ``count``: a listing that deletes nothing (``count_tree``).

The traversal (``traverse.Traversal``) holds the directory fds and owns the
defences of the walk itself: every directory entered with
``Fs.open_beneath`` (never a symlink, never a mount), at most
``limits.max_held_fds`` fds open whatever the depth, a closed parent
reopened through ``..`` only if it is the directory recorded on the way
down, a moved branch abandoned, nothing deeper than ``limits.max_depth``
levels entered, every directory read in batches, no recursion.  The two
limits are a ``Limits``, given to every walk (the mechanism's from its
settings, ``--max-held-fds`` and ``--max-depth``; ``DEFAULT_LIMITS``
otherwise).
"""

import dataclasses

from . import compiled, fsops, removal, report, split, traverse


@dataclasses.dataclass(frozen=True)
class Limits:
    """How far one walk may go; every walk is given one (no module global
    holds them, so nothing patches them either).

    ``max_held_fds``: fds of ours open at once, whatever the depth and
    width: the oldest are closed and reopened through ``..`` with the
    identity check, so a deep chain cannot exhaust the fd table (V1).  Per
    walk: each parallel helper holds as many.  ``max_depth``: levels below
    the target that are entered; a directory deeper is named and left in
    place, so the state kept per level stays bounded (V13).
    ``split_after``: with threads (``split.remove_with_threads``), the C
    walk first goes this many steps alone (entries and directories), so that
    a small tree, a runc leftover, is removed by one walk without starting
    a thread; past it the parallel split takes over (0: the split first)."""

    max_held_fds: int = 48
    max_depth: int = traverse.DEFAULT_MAX_DEPTH
    split_after: int = 1024

    def __post_init__(self):
        # What both walks can work with (the C walk refuses the same): the
        # current directory's fd is never closed, so one is enough; depth 0
        # enters nothing below the target.
        if self.max_held_fds < 1 or self.max_depth < 0 or self.split_after < 0:
            raise ValueError(f"walk limits: max_held_fds >= 1, max_depth >= 0 and split_after >= 0, not {self}")


DEFAULT_LIMITS = Limits()  # the client's own attempt, and the mechanism's defaults


def remove_tree(parent_fd, name, dir_fd, result=None, fs=None, owners=None, cancel=None, keep_dir=False,
                limits=DEFAULT_LIMITS):
    """Remove the directory ``name`` of ``parent_fd`` and everything below it.

    ``dir_fd`` is an open (O_RDONLY) fd of that directory, obtained with
    ``Fs.open_beneath``; it stays owned by the caller, as does
    ``parent_fd``.  ``owners``: an ``owners.OwnerRule`` applied to every
    directory entered, this one included (None: no rule).  ``cancel``: an
    object with ``is_set()``; once set the walk stops and
    ``result.cancelled`` is True.  ``keep_dir``: remove everything below
    the directory but not the directory itself.  ``limits``: the fds held
    at once and the levels below it that are entered (``Limits``).  Returns
    a ``report.WalkResult`` (``result`` if given); paths in it are relative
    to the removed directory, which itself is ``b""``.

    ``fs.compiled`` chooses the walk: the C one (``compiled.compiled_remove_tree``)
    or the Python one (``removal.python_remove_tree``, the reference); same
    semantics, same reports (tests/test_walk_differential.py).
    """
    result = report.WalkResult() if result is None else result
    fs = fsops.default() if fs is None else fs
    # Looked up through their modules at every call: the tests' mode
    # fixture replaces them to prove which walk ran.
    if fs.compiled:
        compiled.compiled_remove_tree(parent_fd, name, dir_fd, result, owners, cancel, keep_dir, limits)
    else:
        removal.python_remove_tree(parent_fd, name, dir_fd, result, fs, owners, cancel, keep_dir, limits)
    return result


class _Alone:
    """The cancel flag of the first walk alone: set once the walk has gone
    about ``steps`` steps (it looks every ``compiled.CANCEL_EVERY``), or
    when the request's own flag (``cancel``) is.  ``spent``: it stopped the walk for
    its steps, not for the request."""

    __slots__ = ("cancel", "looks", "spent")

    def __init__(self, cancel, steps):
        self.cancel = cancel
        self.looks = -(-steps // compiled.CANCEL_EVERY)
        self.spent = False

    def is_set(self):
        if self.cancel is not None and self.cancel.is_set():
            return True
        self.looks -= 1
        if self.looks < 0:
            self.spent = True
        return self.spent


def remove_with_threads(parent_fd, name, dir_fd, result, threads, fs, owners=None, cancel=None, keep_dir=False,
                        *, limits):
    """Remove the tree ``dir_fd`` (``name`` of ``parent_fd``) with up to
    ``threads`` threads, the arguments as for ``remove_tree``.

    With the C walk and two threads or more, the walk first goes alone for
    ``limits.split_after`` steps: a tree that small is removed by it, and
    what it found is the report.  A bigger one it leaves part-removed, its
    findings dropped, as the split's helpers' are (the walks that follow
    find whatever it left again):
    ``remove_in_parallel``, then the ordinary walk (``remove_tree``),
    which reports.  Returns ``result``."""
    if cancel is not None and cancel.is_set():
        result.cancelled = True
        return result
    if threads >= 2 and fs.compiled and limits.split_after > 0:
        alone = _Alone(cancel, limits.split_after)
        findings = report.Findings()
        compiled.compiled_remove_tree(parent_fd, name, dir_fd, result, owners, alone, keep_dir, limits,
                                      findings=findings)
        if not alone.spent or (cancel is not None and cancel.is_set()):
            result.merge(findings)
            return result
        result.cancelled = False  # stopped for its steps: the tree is big
    # (With one thread or the Python walk the split does nothing.)
    split.remove_in_parallel(dir_fd, result, threads, fs, owners=owners, cancel=cancel, limits=limits)
    if not result.cancelled:
        remove_tree(parent_fd, name, dir_fd, result=result, fs=fs, owners=owners, cancel=cancel, keep_dir=keep_dir,
                    limits=limits)
    return result
