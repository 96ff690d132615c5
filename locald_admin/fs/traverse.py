"""The safe traversal of a directory tree through held directory fds.

``Traversal(parent_fd, name, dir_fd, max_held).run(visitor)`` walks the tree
below ``dir_fd`` depth first and leaves every decision about an entry to the
visitor (``Visitor``): whether to enter it, what to do with it, what to do
with a directory once its entries are done.  The removal (``walk.py``) is one
visitor, a count of the entries (``walk.count_tree``) another; both get the
same defences, which live here and nowhere else:

* A directory is entered only with ``Fs.open_beneath`` relative to the
  held fd of its parent: a symlink swapped in for a directory is never
  followed (CVE-2018-6954, CVE-2022-21658 style) and a mount point is never
  entered (bind mounts share st_dev, so only a mount-aware open can tell);
  the visitor is told (``on_enter_failed``) and decides what that means.
* Every directory's ``(st_dev, st_ino)`` is recorded when it is entered.
* At most ``max_held`` fds of directories below the target are open,
  whatever the depth (the oldest are closed first).  A parent whose fd was
  closed is reopened through ``..`` of its child and accepted only if it is
  the directory recorded on the way down (as gnulib's fts does).  A mismatch
  means the tree was moved while we walked it: the whole closed part of the
  branch is abandoned (``on_abandon``), nothing outside is ever looked at.
* Iterative, so a 10,000-deep chain does not hit Python's recursion limit.

Order (which the removal's behaviour depends on): a directory's listing is
consumed from its end; a child the visitor enters is walked completely
before the next entry of its parent is looked at.
"""

import os
import stat

from . import fsops


class Frame:
    """A directory on the traversal's stack.  ``fd`` is None while it was
    closed to bound the fd count; ``pending`` holds the entries of its
    listing still to be visited (None: not listed yet)."""

    __slots__ = ("fd", "dev", "ino", "name", "pending")

    def __init__(self, fd, st, name):
        self.fd = fd
        self.dev, self.ino = st.st_dev, st.st_ino
        self.name = name
        self.pending = None


class Visitor:
    """What is done per entry.  The traversal calls these hooks; ``t`` is the
    Traversal (``t.rel(name)`` names an entry of the current directory in
    messages, ``t.target`` is the target's frame)."""

    Frame = Frame  # frames are made with this class: a visitor may add slots

    def list(self, fd):
        """The entries of the directory ``fd``: a list of ``(name, info)``,
        consumed from its end; ``info`` is passed to ``on_entry`` only."""
        raise NotImplementedError

    def on_list_failed(self, t, frame, err):
        """Listing ``frame`` raised ``err``; it is treated as empty."""

    def on_entry(self, t, frame, name, info):
        """The entry ``name`` of ``frame``: act on it; True to enter it as a
        directory (opened with ``open_beneath``)."""
        raise NotImplementedError

    def on_enter_failed(self, t, frame, name, err):
        """``name`` could not be entered: ``err`` is ELOOP or ENOTDIR for a
        symlink or a non-directory, EXDEV for a mount point, or any other
        error of the open.  (ENOENT, gone meanwhile, is not reported.)"""

    def on_leave(self, t, frame, parent):
        """Every entry of ``frame`` was visited; ``parent.fd`` is open (its
        identity checked).  True to have ``frame`` listed and walked again."""
        return False

    def on_abandon(self, t, frame, rel):
        """The directory ``rel`` was moved while its fd was closed: the walk
        of it ended there; ``frame`` (the deepest ancestor still held) is
        the current directory again."""


class Traversal:
    """One walk below the held ``dir_fd`` (the directory ``name`` of the held
    ``parent_fd``; both stay owned by the caller)."""

    def __init__(self, parent_fd, name, dir_fd, max_held, fs=None):
        self.fs = fsops.default() if fs is None else fs
        self.mnt = self.fs.parent_mount(dir_fd)  # what the fallback compares with
        self.max_held = max_held
        self.parent_fd, self.name, self.dir_fd = parent_fd, name, dir_fd
        # stack[0]: the parent, stack[1]: the target (both fds owned by the
        # caller); stack[2:]: directories below, whose fds are ours.
        self.stack = []
        self.target = None

    def rel(self, name=None):
        """The path of ``name`` in the current directory (of the current
        directory itself when None), relative to the target (``b""``)."""
        return _path(self.stack, name)

    def run(self, visitor):
        make = visitor.Frame
        stack = self.stack
        stack[:] = [make(self.parent_fd, os.fstat(self.parent_fd), b""),
                    make(self.dir_fd, os.fstat(self.dir_fd), self.name)]
        self.target = stack[1]
        # Of stack[2:], stack[2:first_open] have had their fds closed to
        # bound the fd count (V1); the rest are open.
        first_open = 2
        max_held, mnt = self.max_held, self.mnt
        listing, on_entry = visitor.list, visitor.on_entry
        try:
            while len(stack) > 1:
                f = stack[-1]
                if f.pending is None:
                    try:
                        f.pending = listing(f.fd)
                    except OSError as e:
                        f.pending = []
                        visitor.on_list_failed(self, f, e)
                pending = f.pending
                while pending:
                    child, info = pending.pop()
                    if not on_entry(self, f, child, info):
                        continue
                    # Entered only with open_beneath relative to the held fd
                    # of the directory that was listed: a symlink swapped in
                    # for a directory since the listing is refused, not
                    # followed (ELOOP/ENOTDIR, threat model R1), and so is a
                    # mount that appeared on it (EXDEV, M3).
                    try:
                        cfd = self.fs.open_beneath(f.fd, child, parent_mnt=mnt)
                    except OSError as e:
                        if fsops.refusal(e) is not fsops.GONE:
                            visitor.on_enter_failed(self, f, child, e)
                        continue
                    stack.append(make(cfd, os.fstat(cfd), child))
                    if len(stack) - first_open > max_held:
                        # A 10,000-deep chain must not exhaust the fd table
                        # (V1): close the oldest held fd; _climb reopens it
                        # on the way back, checked (R2).
                        os.close(stack[first_open].fd)
                        stack[first_open].fd = None
                        first_open += 1
                    break
                if stack[-1] is not f:
                    continue  # walk the child first

                parent = stack[-2]
                if parent.fd is None:
                    if not self._climb(f, parent):
                        # The branch was moved elsewhere while the parent's
                        # fd was closed, so '..' no longer leads to it (R2):
                        # abandon the branch, every closed ancestor with it,
                        # rather than work in whatever '..' is now.
                        rel = _path(stack[:-1])
                        os.close(stack.pop().fd)
                        while stack[-1].fd is None:
                            stack.pop()
                        first_open = len(stack)
                        visitor.on_abandon(self, stack[-1], rel)
                        continue
                    first_open = len(stack) - 2
                if visitor.on_leave(self, f, parent):
                    f.pending = None  # list it again
                    continue
                stack.pop()
                if len(stack) >= 2:
                    os.close(f.fd)
        finally:
            for f in stack[2:]:
                if f.fd is not None:
                    os.close(f.fd)

    @staticmethod
    def _climb(f, parent):
        """Reopen ``parent`` through '..' of ``f`` and check it is the
        directory recorded on the way down.  True when ``parent.fd`` is
        restored.  Stops a subtree moved elsewhere from leading the walk
        into the directory it was moved to (R2)."""
        try:
            pfd = os.open(b"..", fsops.DIR_FLAGS, dir_fd=f.fd)
        except OSError:
            return False
        st = os.fstat(pfd)
        if (st.st_dev, st.st_ino) == (parent.dev, parent.ino) and stat.S_ISDIR(st.st_mode):
            parent.fd = pfd
            return True
        os.close(pfd)
        return False


def _path(stack, name=None):
    parts = [f.name for f in stack[2:]]
    if name is not None:
        parts.append(name)
    return b"/".join(parts)
