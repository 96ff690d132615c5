"""The safe traversal of a directory tree through held directory fds.

``Traversal(parent_fd, name, dir_fd, max_held).run(visitor)`` walks the tree
below ``dir_fd`` depth first and leaves every decision about an entry to the
visitor (``Visitor``): whether to enter it, what to do with it, what to do
with a directory once its entries are done.  The removal (``removal.py``) is
one visitor, a count of the entries (``count.count_tree``) another; both get
the same defences, which live here and nowhere else:

* A directory is entered only with ``Fs.open_beneath`` relative to the
  held fd of its parent: a symlink swapped in for a directory is never
  followed (CVE-2018-6954, CVE-2022-21658 style) and a mount point is never
  entered (bind mounts share st_dev, so only a mount-aware open can tell);
  the visitor is told (``on_enter_failed``) and decides what that means.
  The visitor sees the ``fstat`` of every directory opened, the target
  included, before it is walked (``on_enter``), and may refuse it.
* Every directory's ``(st_dev, st_ino)`` is recorded when it is entered.
* At most ``max_held`` fds of ours are open whatever the depth and width,
  plus the current directory's listing: the fds of the directories below
  the target and of their listings still open (a listing reads through its
  directory's fd and holds a buffer, not an fd, but is counted as one:
  that bounds the buffers too; when there are more, the
  oldest are closed, a few at a time; never the current directory's).  A
  parent whose fd was closed is reopened through ``..`` of its child and
  accepted only if it is the directory recorded on the way down (as
  gnulib's fts does).  A mismatch means the tree was moved while we walked
  it: the whole closed part of the branch is abandoned (``on_abandon``),
  nothing outside is ever looked at.
* Nothing deeper than ``max_depth`` levels below the target is entered
  (``on_too_deep``), so the per-level state, a few hundred bytes each, is
  bounded too.
* Iterative, so a 65,536-deep chain does not hit Python's recursion limit.

Memory is bounded whatever the tree: a directory is read in batches of at
most ``batch`` entries from a ``dirents.listing`` kept open while its fd
is held (as fts reads at most a bounded number of entries at a time).  A
directory whose fd is closed to bound the fd count drops its iterator and
the rest of its batch and keeps constant state only; when the walk comes
back to it, it is listed again from the start (``on_resume``).  What the
visitor left in place of what it already visited is skipped then: the
visitor says so with ``t.keep(frame, ino)`` (the traversal does itself for
what it refused), and a directory with more than ``MAX_KEPT`` such entries
is not listed again at all.  That is what makes every walk end: without it,
a child directory deeper than the fd bound that cannot be emptied would
close its parent's fd each time it is walked, and be found and walked again
by the parent's next listing, forever.

``cancel`` (an object with ``is_set()``, a ``threading.Event``) is looked at
before every batch and every directory entered or left: once it is set the
walk stops, its fds closed, and ``t.cancelled`` is True.

Order (which the removal's behaviour depends on): a directory's entries are
visited in the order its listing returns them; a child the visitor enters is
walked completely before the next entry of its parent is looked at.
"""

import os
import stat
from array import array
from collections import deque
from itertools import islice

from . import dirents, fsops

DEFAULT_MAX_DEPTH = 65536  # levels below the target
DEFAULT_BATCH = 1024  # entries read from a listing at a time, at most
FIRST_BATCH = 256  # the first batch of a listing; each next one doubles
MAX_KEPT = 32  # entries left in place a directory's listing remembers


class _Overflow:
    """What a frame's ``kept`` is once more than MAX_KEPT entries were left
    in it: it passes over nothing."""

    __slots__ = ()

    def __contains__(self, ino):
        return False

    def __repr__(self):
        return "OVERFLOW"


OVERFLOW = _Overflow()


class Frame:
    """A directory on the traversal's stack.  ``fd`` is None while it was
    closed to bound the fd count.  ``dino``: the inode number its parent's
    listing shows for it (what a resumed listing of the parent passes over).

    Its listing: ``it`` is the open ``dirents.listing`` (None when none
    is open), ``batch`` the entries read and not yet visited (a deque, in
    the listing's order), ``pos`` how many entries were read from the
    listing, ``done`` whether it was read to its end, ``kept`` (an array,
    or OVERFLOW) the inode numbers of its entries left in place, which are
    passed over."""

    __slots__ = ("fd", "dev", "ino", "dino", "name", "it", "batch", "pos", "done", "kept")

    def __init__(self, fd, st, name, dino=None):
        self.fd = fd
        self.dev = st.st_dev
        self.ino = ino = st.st_ino
        # The same int object when they agree (as they do but on some
        # overlayfs setups): a deep chain holds one frame per level.
        self.dino = ino if dino is None or dino == ino else dino
        self.name = name
        self.it = self.batch = self.kept = None
        self.pos = 0
        self.done = False


def trusted(owners, t, parent, name, st, findings):
    """Whether a visitor may enter the directory ``name`` of ``parent``
    (``st`` its ``fstat``) under ``owners`` (an ``owners.OwnerRule``; None:
    every one): the one question both the removal and the dry run's count
    ask in ``on_enter``.  A directory the rule refuses is reported into
    ``findings`` with the rule's reason (the target as ``b""``) and is not
    listed: the caller keeps it, and its parent, in place."""
    if owners is None:
        return True
    why = owners.refusal(parent.fd, st)
    if why is None:
        return True
    findings.fail(b"" if parent is t.stack[0] else lambda: t.rel(name), None, why)
    return False


class Visitor:
    """What is done per entry.  The traversal calls these hooks; ``t`` is the
    Traversal (``t.rel(name)`` names an entry of the current directory in
    messages, ``t.target`` is the target's frame, ``t.keep`` records an
    entry left in place)."""

    Frame = Frame  # frames are made with this class: a visitor may add slots

    def on_list_failed(self, t, frame, err):
        """Reading ``frame``'s listing raised ``err``; what was not read is
        treated as absent."""

    def on_entry(self, t, frame, name, entry):
        """The entry ``name`` (bytes; ``entry`` its ``dirents.Entry``) of
        ``frame``: act on it; True to enter it as a directory (opened with
        ``open_beneath``).  Its type is the listing's ``d_type``; one the
        file system does not record (DT_UNKNOWN) is looked at with
        ``t.fs.lstat_beneath`` (never a plain ``fstatat``, which would
        follow a mount point into its file system)."""
        raise NotImplementedError

    def on_enter(self, t, parent, name, st):
        """The directory ``name`` of ``parent`` was opened (``parent.fd`` is
        open) and ``st`` is its ``fstat``; False not to walk it (it is left
        as it is, the traversal closes its fd).  Asked of the target too,
        with ``t.stack[0]`` as its parent, before anything is walked."""
        return True

    def on_enter_failed(self, t, frame, name, err):
        """``name`` could not be entered: ``err`` is ELOOP or ENOTDIR for a
        symlink or a non-directory, EXDEV for a mount point, or any other
        error of the open.  (ENOENT, gone meanwhile, is not reported.)
        True if the visitor removed the entry; otherwise it stays."""

    def on_too_deep(self, t, frame, name):
        """The directory ``name`` of ``frame`` would be deeper than
        ``max_depth`` levels below the target: it is not entered."""

    def on_leave(self, t, frame, parent):
        """Every entry of ``frame`` was visited; ``parent.fd`` is open (its
        identity checked).  True to have ``frame`` listed and walked again."""
        return False

    def on_abandon(self, t, frame, rel):
        """The directory ``rel`` was moved while its fd was closed: the walk
        of it ended there; ``frame`` (the deepest ancestor still held) is
        the current directory again."""

    def on_resume(self, t, frame):
        """``frame`` lost its listing while its fd was closed and is listed
        again from the start.  Return how many entries at the start of the
        new listing to pass over, or None to end its listing here (it is
        then left as if read to its end).  The default, ``frame.pos``
        (the entries visited before), is right for a visitor that changes
        nothing; one that removes entries returns 0 and relies on what it
        kept (``t.keep``) being skipped, and returns None when
        ``frame.kept`` is OVERFLOW."""
        return frame.pos


class Traversal:
    """One walk below the held ``dir_fd`` (the directory ``name`` of the held
    ``parent_fd``; both stay owned by the caller)."""

    def __init__(self, parent_fd, name, dir_fd, max_held, fs=None, max_depth=DEFAULT_MAX_DEPTH,
                 batch=DEFAULT_BATCH, cancel=None):
        self.fs = fsops.default() if fs is None else fs
        self.mnt = self.fs.parent_mount(dir_fd)  # what the fallback compares with
        self.max_held, self.max_depth, self.batch = max_held, max_depth, max(1, batch)
        self.cancel = cancel
        self.cancelled = False
        self.parent_fd, self.name, self.dir_fd = parent_fd, name, dir_fd
        # stack[0]: the parent, stack[1]: the target (both fds owned by the
        # caller); stack[2:]: directories below, whose fds are ours.
        self.stack = []
        self.target = None
        self.visitor = None
        self.held = 0  # fds of ours open: of stack[2:], and of listings but the current one
        self.first_open = 2  # stack[2:first_open] have had their fds closed

    def rel(self, name=None):
        """The path of ``name`` in the current directory (of the current
        directory itself when None), relative to the target (``b""``)."""
        return _path(self.stack, name)

    def keep(self, frame, ino):
        """The entry of ``frame`` with inode number ``ino`` (as its listing
        shows it: ``Entry.inode()``, a child frame's ``dino``) is left in
        place: should ``frame``'s listing be lost and resumed, it is passed
        over (and so is any other entry with that inode number, a hard link
        of it).  Beyond MAX_KEPT such entries ``frame.kept`` is OVERFLOW,
        and nothing is passed over."""
        kept = frame.kept
        if kept is None:
            frame.kept = array("Q", (ino,))
        elif kept is not OVERFLOW:
            if len(kept) < MAX_KEPT:
                kept.append(ino)
            else:
                frame.kept = OVERFLOW

    def run(self, visitor):
        """Walk the tree with ``visitor``: the target first (``on_enter``),
        then, depth first, every entry the listings return."""
        self.visitor = visitor
        parent = visitor.Frame(self.parent_fd, os.fstat(self.parent_fd), b"")
        st = os.fstat(self.dir_fd)
        self.target = visitor.Frame(self.dir_fd, st, self.name)
        self.stack[:] = [parent, self.target]
        self.held, self.first_open = 0, 2
        if not visitor.on_enter(self, parent, self.name, st):
            return
        try:
            while len(self.stack) >= 2:
                if self.cancel is not None and self.cancel.is_set():
                    self.cancelled = True
                    return
                f = self.stack[-1]  # the current directory
                if not f.batch and not f.done:
                    if f.it is None and f.pos:
                        self._resume(f)
                    else:
                        self._next_batch(f)
                if self._visit_batch(f):
                    continue  # a child was entered: it is walked first
                if not f.done:
                    continue  # read the next batch
                self._leave(f)
        finally:
            for f in self.stack[1:]:
                if f.it is not None:
                    f.it.close()
                    f.it = None
            for f in self.stack[2:]:
                if f.fd is not None:
                    os.close(f.fd)
                    f.fd = None

    def _visit_batch(self, f):
        """Hand the entries of ``f``'s batch to the visitor, in the
        listing's order, until one is entered (True: the child is the
        current directory now) or the batch is used up (False)."""
        # Read once for the pass, not per entry: an entry kept during this
        # pass does not make a hard link of it further on in the same pass
        # be passed over (the C walk looks per entry: see _cwalk.c, run).
        kept = f.kept
        while f.batch:
            entry = f.batch.popleft()
            if kept is not None and entry.inode() in kept:
                continue  # left in place before this listing was resumed
            if self.visitor.on_entry(self, f, entry.bname, entry) and self._enter(f, entry):
                return True
        return False

    def _enter(self, f, entry):
        """Open the directory ``entry`` of ``f`` and push it as the current
        directory, unless it is too deep, cannot be opened beneath ``f``
        or the visitor refuses it.  True when it was entered."""
        child = entry.bname
        if len(self.stack) - 1 > self.max_depth:  # the child's depth (the target's is 0)
            # A chain deeper than the limit is left as it is: the state kept
            # per level stays bounded (V13).
            self.visitor.on_too_deep(self, f, child)
            self.keep(f, entry.inode())
            return False
        # Entered only with open_beneath relative to the held fd of the
        # directory that was listed: a symlink swapped in for a directory
        # since the listing is refused, not followed (ELOOP/ENOTDIR, threat
        # model R1), and so is a mount that appeared on it (EXDEV, M3).
        try:
            cfd = self.fs.open_beneath(f.fd, child, parent_mnt=self.mnt)
        except OSError as e:
            if fsops.refusal(e) is not fsops.GONE:
                if not self.visitor.on_enter_failed(self, f, child, e):
                    self.keep(f, entry.inode())
            return False
        try:
            cst = os.fstat(cfd)
            refused = not self.visitor.on_enter(self, f, child, cst)
        except BaseException:
            os.close(cfd)
            raise
        if refused:
            os.close(cfd)
            self.keep(f, entry.inode())
            return False
        self.stack.append(self.visitor.Frame(cfd, cst, child, entry.inode()))
        # The child's fd, and f's listing if it is still open: f is no
        # longer the current directory.
        self.held += 1 if f.it is None else 2
        if self.held > self.max_held:
            self._bound()
        return True

    def _leave(self, f):
        """Every entry of the current directory ``f`` was visited: reopen
        its parent if its fd was closed (checked), ask the visitor
        (``on_leave``), then list ``f`` again or pop it."""
        parent = self.stack[-2]
        if parent.fd is None:
            if not self._climb(f, parent):
                # The branch was moved elsewhere while the parent's fd was
                # closed, so '..' no longer leads to it (R2): abandon the
                # branch, every closed ancestor with it, rather than work in
                # whatever '..' is now.
                self._abandon_branch()
                return
            self.held += 1
            self.first_open = len(self.stack) - 2
        if self.visitor.on_leave(self, f, parent):
            # List it again, from the start: a new listing.
            f.pos, f.done, f.kept = 0, False, None
            return
        self.stack.pop()
        if len(self.stack) >= 2:  # the target's fd is the caller's
            os.close(f.fd)
            self.held -= 1
            if parent.it is not None:
                self.held -= 1  # the current directory's listing again

    def _abandon_branch(self):
        """Drop the current directory and every ancestor whose fd is
        closed; the deepest one still held is the current directory again."""
        stack = self.stack
        rel = _path(stack[:-1])
        os.close(stack.pop().fd)
        self.held -= 1
        while stack[-1].fd is None:
            stack.pop()
        self.first_open = len(stack)
        survivor = stack[-1]
        if survivor.it is not None:
            self.held -= 1  # the current directory's listing again
        self.visitor.on_abandon(self, survivor, rel)

    def _next_batch(self, f):
        """Read ``f``'s next batch into ``f.batch``, opening its listing
        first if none is open; sets ``f.done`` at its end."""
        if f.it is None:
            try:
                f.it = dirents.listing(f.fd)
            except OSError as e:
                f.batch, f.done = None, True
                self.visitor.on_list_failed(self, f, e)
                return
        # The first batch of a listing is small, each next one twice the
        # last (as many as were read before it), up to ``batch``: a listing
        # dropped when its fd is closed wastes at most what was visited of it.
        n = FIRST_BATCH if f.pos < FIRST_BATCH else min(f.pos, self.batch)
        try:
            batch = deque(islice(f.it, n))
        except OSError as e:
            f.batch = None
            self._end_listing(f)
            self.visitor.on_list_failed(self, f, e)
            return
        f.pos += len(batch)
        if len(batch) < n:  # the end of the listing
            self._end_listing(f)
        f.batch = batch

    def _resume(self, f):
        """``f``'s listing was dropped when its fd was closed: list it again
        from the start, passing over what the visitor says (``on_resume``),
        read in the same batches as before, so that it sees the same listing;
        what was kept (``t.keep``) is passed over as it comes."""
        drop = self.visitor.on_resume(self, f)
        if drop is None:
            f.batch, f.done = None, True
            return
        f.pos = 0
        while True:
            self._next_batch(f)
            if not drop or f.batch is None:
                return
            if drop < len(f.batch):
                for _ in range(drop):
                    f.batch.popleft()
                return
            drop -= len(f.batch)
            f.batch.clear()
            if f.done:
                return

    @staticmethod
    def _end_listing(f):
        f.done = True
        if f.it is not None:
            f.it.close()
            f.it = None

    def _bound(self):
        """Close the oldest fds of ours (never the current directory's)
        until at most ``max_held`` are open (``held`` counts them, and not
        the current directory's listing).  A 65,536-deep chain must not
        exhaust the fd table (V1); ``_climb`` reopens them on the way back,
        checked (R2)."""
        current = len(self.stack) - 1
        # Down to a little below the bound: a deep chain then closes a few
        # fds at a time rather than one per directory entered.
        goal = self.max_held - self.max_held // 8
        while self.held > goal and self.first_open < current:
            f = self.stack[self.first_open]
            if f.it is not None:
                f.it.close()
                f.it = None
                self.held -= 1
            if f.batch:
                # The rest of its batch is dropped: it will be listed again.
                f.pos -= len(f.batch)
                f.done = False
                f.batch = None
            os.close(f.fd)
            f.fd = None
            self.held -= 1
            self.first_open += 1

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
