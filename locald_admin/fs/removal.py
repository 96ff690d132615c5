"""The removal: a visitor of the safe traversal that deletes the tree.

``python_remove_tree`` walks the tree with ``traverse.Traversal``, which
holds the directory fds and owns the defences of the walk itself (entering
only with ``Fs.open_beneath``, the fd bound, the ``..`` identity check, the
depth limit, batches, cancellation), and ``_Removal`` decides per entry:
entries are removed with ``unlinkat``/``rmdir`` relative to the held fd of
the directory that was listed, so no path string is ever re-resolved from /,
and ``unlinkat`` on a symlink removes the link, never its target.  A name
that turns out to be a symlink or a file when it is entered is unlinked as
a name.  A directory refilled while we walked it is rescanned at most
``MAX_RESCANS`` times.  The target's final ``rmdir`` happens only if its
name still refers to the directory that was emptied.  A mount that appears
during the walk is left in place and reported.  With an
``owners.OwnerRule``, another user's directory in a directory the caller
could write is left in place and reported.

This is the reference: the C walk (``_cwalk.c``, called by ``compiled.py``)
makes the same decision at every step and is given ``MAX_RESCANS`` from
here.  Names are bytes, as ``getdents64`` lists them (``dirents``), so
names that are not UTF-8 are removed too.  An entry's type is the listing's
``d_type``; where the file system does not record it (DT_UNKNOWN: ext2
without ``filetype``) the entry is looked at with ``Fs.lstat_beneath``
before anything else, never with a plain ``fstatat`` (which would follow a
mount point into its file system).  What it found goes into a
``report.WalkResult``.
"""

import errno
import os
import stat

from . import dirents, fsops, report, traverse

MAX_RESCANS = 3  # an attacker refilling a directory cannot keep us busy forever


class _RemovalFrame(traverse.Frame):
    """A directory of the removal: ``rescans``, how often it was listed
    again because it was refilled while we walked it; ``incomplete``,
    whether something below it could not be removed (then it is kept)."""

    __slots__ = ("rescans", "incomplete")

    def __init__(self, fd, st, name, dino=None):
        super().__init__(fd, st, name, dino)
        self.rescans = 0
        self.incomplete = False


class _Removal(traverse.Visitor):
    """Unlink what is not a directory, rmdir a directory after its entries;
    everything relative to the held fd of the directory that was listed."""

    Frame = _RemovalFrame

    def __init__(self, result, owners=None, keep_dir=False):
        self.result = result
        self.owners = owners
        self.keep_dir = keep_dir

    def on_list_failed(self, t, f, err):
        self.result.fail(t.rel, err)
        f.incomplete = True

    def on_entry(self, t, f, child, entry):
        d_type = entry.d_type
        if d_type == dirents.DT_DIR:
            return True
        if d_type == dirents.DT_UNKNOWN:
            # Not recorded by the file system (ext2 -O ^filetype): look at
            # the entry itself, before any unlink (whose EPERM, immutable or
            # append-only, would come before EISDIR and hide a directory),
            # and never with a plain fstatat, which would follow a mount
            # point into its file system (a hung FUSE daemon); the C walk
            # does the same.
            try:
                mode = t.fs.lstat_beneath(f.fd, child, parent_mnt=t.mnt).st_mode
            except OSError as e:
                why = fsops.refusal(e)
                if why is fsops.GONE:
                    return False
                if why is fsops.MOUNT:  # a mount point (M3), of any type: left in place
                    self.result.mount(lambda: t.rel(child))
                else:
                    self.result.fail(lambda: t.rel(child), e)
                f.incomplete = True
                t.keep(f, entry.inode())
                return False
            if stat.S_ISDIR(mode):
                return True
        try:
            # unlinkat relative to the held fd of the listed directory: a
            # symlink goes as a name, its target is never touched; a hard
            # link to a file outside goes, the file stays (S11).
            os.unlink(child, dir_fd=f.fd)
            self.result.removed += 1
        except FileNotFoundError:
            pass
        except IsADirectoryError:
            return True  # it became a directory: handle it as one
        except OSError as e:
            self.result.fail(lambda: t.rel(child), e)
            f.incomplete = True
            t.keep(f, entry.inode())
        return False

    def on_enter(self, t, parent, child, st):
        # Another user's directory where the caller could have had it put
        # (S13): left in place, with everything in it.
        if traverse.trusted(self.owners, t, parent, child, st, self.result):
            return True
        parent.incomplete = True
        return False

    def on_enter_failed(self, t, f, child, e):
        if fsops.refusal(e) is fsops.NOT_FOLLOWED:
            # Not a directory any more: a symlink or a file was swapped in
            # (R1).  Remove the name itself; never follow it.
            try:
                os.unlink(child, dir_fd=f.fd)
                self.result.removed += 1
                return True
            except FileNotFoundError:
                return True
            except OSError as e2:
                e = e2
        if fsops.refusal(e) is fsops.MOUNT:  # a mount appeared on it (M3): left in place
            self.result.mount(lambda: t.rel(child))
        else:
            self.result.fail(lambda: t.rel(child), e)
        f.incomplete = True
        return False

    def on_too_deep(self, t, f, child):
        self.result.fail(lambda: t.rel(child), None, report.too_deep(t.max_depth))
        f.incomplete = True

    def on_leave(self, t, f, parent):
        result = self.result
        if f.incomplete:
            parent.incomplete = True
            t.keep(parent, f.dino)
            return False
        if f is t.target:
            if self.keep_dir:
                # Kept, emptied: a listing that found nothing says it is
                # empty (what rmdir would say); one that found entries is
                # looked at again, at most MAX_RESCANS times (R5).
                if f.pos:
                    if f.rescans < MAX_RESCANS:
                        f.rescans += 1
                        return True
                    result.fail(b"", errno.ENOTEMPTY, os.strerror(errno.ENOTEMPTY))
                return False
            if not _same_entry(t.fs, parent.fd, f):
                # The target's name in its parent now names another
                # directory (swapped after we opened it, R4): leave that.
                result.fail(b"", None, report.REPLACED)
                return False
        try:
            os.rmdir(f.name, dir_fd=parent.fd)
            result.removed += 1
        except FileNotFoundError:
            pass
        except OSError as e:
            if e.errno == errno.ENOTEMPTY and f.rescans < MAX_RESCANS:
                f.rescans += 1  # refilled while we walked: look again (R5)
                return True
            if e.errno == errno.EBUSY:  # a mount appeared on it (M3): left in place
                result.mount(t.rel)
            else:
                result.fail(t.rel, e)
            parent.incomplete = True
            t.keep(parent, f.dino)
        return False

    def on_abandon(self, t, survivor, rel):
        self.result.fail(rel, None, report.MOVED)
        survivor.incomplete = True

    def on_resume(self, t, f):
        # What was removed is gone; what was left in place is skipped (kept).
        # A directory that left too many in place to remember is not listed
        # again: that ends every walk, even one whose child, deeper than the
        # fd bound, cannot be emptied and so closes this fd each time.
        if f.kept is traverse.OVERFLOW:
            self.result.fail(t.rel, None, report.kept_overflow(traverse.MAX_KEPT))
            f.incomplete = True
            return None
        return 0


def python_remove_tree(parent_fd, name, dir_fd, result, fs, owners, cancel, keep_dir, limits):
    """The Python walk: ``traverse.Traversal`` with the ``_Removal`` visitor,
    into ``result`` (a ``report.WalkResult``); the arguments as for
    ``walk.remove_tree``, all given."""
    t = traverse.Traversal(parent_fd, name, dir_fd, limits.max_held_fds, fs, max_depth=limits.max_depth,
                           cancel=cancel)
    t.run(_Removal(result, owners, keep_dir))
    if t.cancelled:
        result.cancelled = True


def _same_entry(fs, dirfd, frame):
    """Whether ``frame.name`` in ``dirfd`` is still the directory we hold."""
    try:
        st = fs.lstat_beneath(dirfd, frame.name)
    except FileNotFoundError:
        return True  # gone already: rmdir will say so
    except OSError:
        return False  # a mount point now, or unreadable: leave it
    return (st.st_dev, st.st_ino) == (frame.dev, frame.ino)
