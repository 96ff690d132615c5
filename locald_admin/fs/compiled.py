"""The C walk, called from Python: ``compiled_remove_tree``.

The removal walk in C (``_cwalk.c``, the extension ``locald_admin.fs._cwalk``
that ``fsops.compiled_walk`` imports) makes the same decisions as the
Python one (``removal.py``, the reference) and is handed here what it
shares with it: the report to fill (a ``report.Findings``, called with the
GIL), the reason strings (``report``), the numbers (``removal.MAX_RESCANS``,
``traverse.MAX_KEPT``, the walk's ``Limits``), the owner rule's question
for the directories it does not decide itself, and the cancel flag.  The
GIL is released while it runs.
"""

import os

from . import fsops, removal, report, traverse

CANCEL_EVERY = 128  # steps of the C walk between its looks at the cancel flag (_cwalk.c's CANCEL_EVERY)


def compiled_remove_tree(parent_fd, name, dir_fd, result, owners, cancel, keep_dir, limits, findings=None):
    """The C walk (``_cwalk.remove_tree``), with the GIL released while it
    runs.  Its count is a ``_cwalk.Counter`` in ``result.helpers`` while it
    runs (so ``removed_total`` is current), folded into ``result.removed``
    at the end.  The owner rule stays in Python: the C walk enters root's
    and the caller's directories itself and asks ``owners.refusal`` about
    any other.  ``findings``: where failures and mounts go if not into
    ``result`` (the parallel helpers': dropped).  The other arguments as
    for ``walk.remove_tree``, all given."""
    cwalk = fsops.compiled_walk()
    counter = cwalk.Counter()
    refuse = None if owners is None else (lambda pfd, cfd: owners.refusal(pfd, os.fstat(cfd)))
    reasons = (report.too_deep(limits.max_depth), report.kept_overflow(traverse.MAX_KEPT), report.MOVED,
               report.REPLACED)
    result.start(counter)
    try:
        cancelled = cwalk.remove_tree(parent_fd, name, dir_fd, result if findings is None else findings, counter,
                                      -1 if owners is None else owners.uid, refuse, cancel, keep_dir,
                                      limits.max_depth, limits.max_held_fds, removal.MAX_RESCANS,
                                      traverse.MAX_KEPT, reasons)
    finally:
        result.fold(counter)
    if cancelled:
        result.cancelled = True
