"""The removal walk's entry point: ``remove_tree``, and ``Limits``, how far a walk may go.

``remove_tree`` removes a directory tree through held directory fds, with
the C walk or the Python walk as ``Fs.compiled`` says; the rest of the walk
is one module per concern, each below this one (none imports it):

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

from . import compiled, fsops, removal, report, traverse


@dataclasses.dataclass(frozen=True)
class Limits:
    """How far one walk may go; every walk is given one (no module global
    holds them, so nothing patches them either).

    ``max_held_fds``: fds of ours open at once, whatever the depth and
    width: the oldest are closed and reopened through ``..`` with the
    identity check, so a deep chain cannot exhaust the fd table (V1).  Per
    walk: each parallel helper holds as many.  ``max_depth``: levels below
    the target that are entered; a directory deeper is named and left in
    place, so the state kept per level stays bounded (V13)."""

    max_held_fds: int = 48
    max_depth: int = traverse.DEFAULT_MAX_DEPTH

    def __post_init__(self):
        # What both walks can work with (the C walk refuses the same): the
        # current directory's fd is never closed, so one is enough; depth 0
        # enters nothing below the target.
        if self.max_held_fds < 1 or self.max_depth < 0:
            raise ValueError(f"walk limits: max_held_fds >= 1 and max_depth >= 0, not {self}")


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
