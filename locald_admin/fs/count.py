"""A listing that deletes nothing: ``count_tree``, another visitor of the traversal.

How many entries of each kind a tree holds, the mounts and failures found
on the way, and how many of them a removal would remove (``would_remove``:
the dry run's figure), walked as the removal walks it
(``traverse.Traversal``: the same defences, the same ``walk.Limits``);
nothing is removed.  The dry run (``remove.remove_entry`` with ``plan``)
counts with it, given the removal's trust rule (``owners``): a directory
the rule refuses is not entered (its names are never listed) and is
reported with the rule's reason, as the removal reports it.  A directory
is counted as removed only when everything below it would be: what a walk
would leave in place keeps its ancestors, as ``rmdir`` would.

What it cannot foresee, the kernel's own refusals (an immutable or
append-only entry, a read-only file system), is counted as removed; and a
tree deeper than the fd bound is listed again after eviction, which the
removal does differently.  Entries are counted by the listing's ``d_type``;
where the file system does not record it (DT_UNKNOWN) an entry is looked
at with ``Fs.lstat_beneath``, never a plain ``fstatat`` (which would
follow a mount point into its file system), as the removal does.
"""

import stat

from . import dirents, fsops, report, traverse


class TreeCount(report.Findings):
    """What ``count_tree`` saw.  ``dirs`` counts the directories listed to
    the end, the target included, so on a quiet tree with nothing refused
    ``total`` is what ``walk.remove_tree`` would remove; ``would_remove``
    is that figure with what would be left in place taken out (and the
    target itself, when it is kept).  ``mounts`` and ``failures`` as in
    ``report.WalkResult`` (paths relative to the target)."""

    __slots__ = ("files", "dirs", "symlinks", "others", "would_remove", "cancelled")

    def __init__(self):
        super().__init__()
        self.files = self.dirs = self.symlinks = self.others = 0
        self.would_remove = 0
        self.cancelled = False  # stopped by ``cancel``: the figures are partial

    @property
    def left_behind(self):
        """Whether a removal would leave something in place (a failure or a
        mount found, named or only counted)."""
        return bool(self.failures or self.mounts or self.more_failures or self.more_mounts)

    @property
    def total(self):
        return self.files + self.dirs + self.symlinks + self.others


_DIR, _FILE, _SYMLINK, _OTHER = "dir", "file", "symlink", "other"


# The kind of a listed entry whose file system records it (d_type).
_KINDS = {dirents.DT_DIR: _DIR, dirents.DT_REG: _FILE, dirents.DT_LNK: _SYMLINK}


def _kind_of(mode):
    if stat.S_ISREG(mode):
        return _FILE
    if stat.S_ISLNK(mode):
        return _SYMLINK
    return _DIR if stat.S_ISDIR(mode) else _OTHER


class _CountFrame(traverse.Frame):
    """A directory of the count: ``incomplete``, whether a removal would
    leave something below it in place (then it is kept too)."""

    __slots__ = ("incomplete",)

    def __init__(self, fd, st, name, dino=None):
        super().__init__(fd, st, name, dino)
        self.incomplete = False


class _Count(traverse.Visitor):
    """Count every entry by its kind into ``count`` (a ``TreeCount``);
    enter every directory the traversal lets it, and that ``owners`` (an
    ``owners.OwnerRule``; None: every one) trusts.  ``keep_dir``: the
    target would be emptied and kept, not counted as removed."""

    Frame = _CountFrame

    def __init__(self, count, owners=None, keep_dir=False):
        self.count = count
        self.owners = owners
        self.keep_dir = keep_dir

    def on_list_failed(self, t, f, err):
        self.count.fail(t.rel, err)
        f.incomplete = True

    def on_entry(self, t, f, child, entry):
        d_type = entry.d_type
        if d_type != dirents.DT_UNKNOWN:
            return self._counted(_KINDS.get(d_type, _OTHER))
        # Not recorded: looked at as the removal does (never a plain fstatat).
        c = self.count
        try:
            return self._counted(_kind_of(t.fs.lstat_beneath(f.fd, child, parent_mnt=t.mnt).st_mode))
        except OSError as e:
            why = fsops.refusal(e)
            if why is fsops.GONE:
                return False
            if why is fsops.MOUNT:  # of any type: a mount point is not looked into
                c.mount(lambda: t.rel(child))
            else:
                c.fail(lambda: t.rel(child), e)
            f.incomplete = True
            return False

    def _counted(self, kind):
        c = self.count
        if kind is _DIR:
            return True
        if kind is _FILE:
            c.files += 1
        elif kind is _SYMLINK:
            c.symlinks += 1
        elif kind is _OTHER:
            c.others += 1
        c.would_remove += 1  # unlinked as a name, whatever it is
        return False

    def on_enter(self, t, parent, child, st):
        # The removal's own rule, asked the same way: a directory it would
        # not enter is not listed here either (the dry run names nothing
        # inside it), and is reported with its reason.
        if traverse.trusted(self.owners, t, parent, child, st, self.count):
            return True
        parent.incomplete = True
        return False

    def on_enter_failed(self, t, f, child, e):
        c = self.count
        if fsops.refusal(e) is fsops.NOT_FOLLOWED:
            # Listed as a directory, now a symlink or a file (swapped in):
            # count what is there, without following it or crossing a mount.
            try:
                kind = _kind_of(t.fs.lstat_beneath(f.fd, child, parent_mnt=t.mnt).st_mode)
            except OSError as e2:
                e = e2
            else:
                if kind is _DIR:  # and back again: its entries are not counted
                    c.fail(lambda: t.rel(child), None, "kept changing type while being listed")
                    f.incomplete = True
                else:
                    self._counted(kind)
                return False
        why = fsops.refusal(e)
        if why is fsops.GONE:
            return False
        if why is fsops.MOUNT:
            c.mount(lambda: t.rel(child))
        else:
            c.fail(lambda: t.rel(child), e)
        f.incomplete = True
        return False

    def on_too_deep(self, t, f, child):
        self.count.fail(lambda: t.rel(child), None, report.too_deep(t.max_depth))
        f.incomplete = True

    def on_leave(self, t, f, parent):
        c = self.count
        c.dirs += 1
        if f.incomplete:  # something below stays, so this directory does
            parent.incomplete = True
        elif not (f is t.target and self.keep_dir):
            c.would_remove += 1
        return False

    def on_abandon(self, t, survivor, rel):
        self.count.fail(rel, None, "directory was moved during listing")
        survivor.incomplete = True


def count_tree(parent_fd, name, dir_fd, fs=None, *, limits, owners=None, keep_dir=False, count=None, cancel=None):
    """Count the entries of the directory ``name`` of ``parent_fd`` and
    everything below it, deleting nothing; return a TreeCount.

    ``dir_fd`` as for ``walk.remove_tree``: the directory opened with
    ``Fs.open_beneath``, owned by the caller.  The walk is the removal's
    (the same defences; ``limits``, a ``walk.Limits``, always given, bounds
    the fds and the depth): no symlink is followed and no mount entered; a
    directory that is a mount point is listed in ``mounts``.  Mounts on non-directories (a bind-mounted file)
    are counted as what they look like (``mounts.mounts_at_or_below`` finds
    every mount), but where the file system does not record entry types: an
    entry is then looked at without crossing a mount, and any mount point is
    listed in ``mounts``.  ``owners``: the removal's trust rule (an
    ``owners.OwnerRule``) for every directory below the target, which the
    caller checked itself; ``keep_dir``: the target would be kept
    (``walk.remove_tree``'s); ``count``: a TreeCount to count into;
    ``cancel``: stop when it is set (``is_set()``; then ``count.cancelled``).
    """
    count = TreeCount() if count is None else count
    t = traverse.Traversal(parent_fd, name, dir_fd, limits.max_held_fds, fs, max_depth=limits.max_depth,
                           cancel=cancel)
    t.run(_Count(count, owners, keep_dir))
    count.cancelled = t.cancelled
    return count
