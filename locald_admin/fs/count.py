"""A listing that deletes nothing: ``count_tree``, another visitor of the traversal.

How many entries of each kind a tree holds, and the mounts and failures
found on the way, walked as the removal walks it (``traverse.Traversal``:
the same defences, the same ``walk.Limits``); nothing is removed.  Nothing
in the product calls it yet: a dry run is to build on it.  Entries are
counted by the listing's ``d_type``; where the file system does not record
it (DT_UNKNOWN) an entry is looked at with ``Fs.lstat_beneath``, never a
plain ``fstatat`` (which would follow a mount point into its file system),
as the removal does.
"""

import stat

from . import dirents, fsops, report, traverse


class TreeCount(report.Findings):
    """What ``count_tree`` saw.  ``dirs`` counts the directories listed to
    the end, the target included, so on a quiet tree ``total`` is what
    ``walk.remove_tree`` would remove.  ``mounts`` and ``failures`` as in
    ``report.WalkResult`` (paths relative to the target)."""

    __slots__ = ("files", "dirs", "symlinks", "others")

    def __init__(self):
        super().__init__()
        self.files = self.dirs = self.symlinks = self.others = 0

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


class _Count(traverse.Visitor):
    """Count every entry by its kind into ``count`` (a ``TreeCount``);
    enter every directory the traversal lets it."""

    def __init__(self, count):
        self.count = count

    def on_list_failed(self, t, f, err):
        self.count.fail(t.rel, err)

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
            if why is fsops.MOUNT:  # of any type: a mount point is not looked into
                c.mount(lambda: t.rel(child))
            elif why is not fsops.GONE:
                c.fail(lambda: t.rel(child), e)
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
        return False

    def on_too_deep(self, t, f, child):
        self.count.fail(lambda: t.rel(child), None, f"deeper than {t.max_depth} levels; not listed")

    def on_leave(self, t, f, parent):
        self.count.dirs += 1
        return False

    def on_abandon(self, t, survivor, rel):
        self.count.fail(rel, None, "directory was moved during listing")


def count_tree(parent_fd, name, dir_fd, fs=None, *, limits):
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
    listed in ``mounts``.
    """
    count = TreeCount()
    traverse.Traversal(parent_fd, name, dir_fd, limits.max_held_fds, fs,
                       max_depth=limits.max_depth).run(_Count(count))
    return count
