"""Remove one entry of a held directory, refusing mounts: the act itself.

Shared by both sides, so that both hold the same standard:

* the mechanism, as root, after it has resolved and checked the request's
  scope (``mechanism/engine.py``);
* the client, as the calling user, for its own first attempt
  (``client/cleanup.py``), where ``shutil.rmtree`` would walk into a
  container's bind mount and delete the user's own files through it.

``look_up(parent_fd, name, ...)`` looks the final component up, once: an
O_PATH fd of ``name`` in the held ``parent_fd``, opened without following it
or crossing a mount, and its ``fstat`` (an ``Entry``; its identity is what
the mechanism shares walks by).  ``remove_entry`` removes that entry (or
looks it up itself): a file, symlink, fifo, socket or device node is
unlinked; a directory is opened for reading from the entry's own fd (never
by name again), every mount at or below it is looked up in this process'
mount table and, if there is one, the request is refused before anything is
deleted; then the fd-anchored walk (``walk.remove_tree``, after the parallel
split of ``split.py``) removes it.

With a trust rule (``owners.OwnerRule``: the mechanism's), a target directory
the rule does not trust is refused (``Untrusted``) and an untrusted directory
inside it is left in place and named.  ``cancel`` stops a removal under way (``Cancelled``);
``keep_dir`` empties a directory without removing it.  ``plan`` (a
``count.TreeCount``) makes it a dry run: every check as for the removal,
then the count (``count.count_tree``, with the same trust rule) instead of
the walk, and nothing removed.

Errors are neutral (``RemoveError`` and its subclasses), each with a one-line
message naming the paths; each side turns them into its own errors.
"""

import errno
import os
import stat

from locald_admin import pathrules
from . import count, fsops, inuse, mounts, report, walk

MAX_NAMED_FAILURES = 5
MAX_SHOWN_PATH = 1024  # characters of one path in a message; longer ones are cut in the middle
MAX_TYPE_RETRIES = 3  # the target flips between file and directory under us


class RemoveError(Exception):
    """The entry could not be removed (completely).  ``removed``: entries
    removed before that was clear (0 when nothing was touched)."""

    def __init__(self, message, removed=0):
        super().__init__(" ".join(str(message).splitlines()))
        self.removed = removed

    @property
    def message(self):
        return self.args[0]


class MountInTheWay(RemoveError):
    """A mount at or below the target: refused before deleting anything, or
    one appeared during the walk and was left in place."""


class InUse(RemoveError):
    """A mount in another mount namespace (a running container's) uses the
    target: refused before deleting anything."""


class Untrusted(RemoveError):
    """The target is a directory the trust rule (``owners.OwnerRule``) does
    not let root enter for this caller: refused before deleting anything."""


class ChangedType(RemoveError):
    """The entry looked up was a non-directory, but its name held a
    directory when it was unlinked: someone swapped it meanwhile.  Nothing
    was removed; a new lookup may try again (``remove_entry`` does, at most
    MAX_TYPE_RETRIES times, when it made the lookup itself)."""


class Cancelled(RemoveError):
    """``cancel`` was set: the removal stopped where it was, ``removed``
    entries removed; the rest is left as it was (a later call goes on)."""


class RemoveFailed(RemoveError):
    """Entries could not be removed.  ``failures``: (path for messages,
    errno or None) of the first of them (``report.MAX_FAILURES``, and the
    first that is not a permission error), in the order found; ``errno``
    None means something the walk decided itself (a directory moved or
    replaced under it, too deep, another user's)."""

    def __init__(self, message, failures=(), removed=0):
        super().__init__(message, removed)
        self.failures = list(failures)


class Entry:
    """The final component, looked up once (``look_up``): ``fd``, an O_PATH
    fd of the entry itself (never followed, not across a mount), and ``st``,
    its ``fstat``.  ``identity`` (st_dev, st_ino) is that of what
    ``remove_entry`` then removes: a directory through this fd, anything
    else by its name.  Whoever looked it up closes it."""

    __slots__ = ("fd", "st")

    def __init__(self, fd, st):
        self.fd = fd
        self.st = st

    @property
    def identity(self):
        return (self.st.st_dev, self.st.st_ino)

    def close(self):
        os.close(self.fd)


def look_up(parent_fd, name, shown, fs=None):
    """The entry ``name`` of the held ``parent_fd``, looked up once,
    relative to that fd (no path is resolved again): an ``Entry``, or None
    when there is none.  ``name`` is opened O_PATH without following it (S4:
    a symlink is the link itself, never its target) and without crossing a
    mount (M2, M6: a mount point is refused unlooked-at, ``MountInTheWay``).
    Raises RemoveError."""
    fs = fsops.default() if fs is None else fs
    try:
        fd = fs.open_entry(parent_fd, name)
    except OSError as e:
        if fsops.refusal(e) is fsops.GONE:
            return None
        raise _open_error(shown, e) from None
    try:
        return Entry(fd, os.fstat(fd))
    except BaseException:
        os.close(fd)
        raise


def remove_entry(parent_fd, name, shown, caller_uid, held_fd=None, progress=None, threads=1, fs=None,
                 owners=None, cancel=None, keep_dir=False, census=None, limits=walk.DEFAULT_LIMITS, entry=None,
                 plan=None):
    """Remove the entry ``name`` of ``parent_fd``; return entries removed.

    ``shown``: the entry's path for messages.  ``caller_uid``: whose
    containers count for the in-use check (``inuse.py``).  ``held_fd``: an already open,
    checked fd of the directory ``name`` (the mechanism's anchor), used
    instead of looking the name up again.  ``entry``: the ``Entry`` of
    ``name`` (``look_up``), whose identity the caller went by: that entry is
    removed, never a second lookup of the name (if its name no longer holds
    it, ``ChangedType``); the caller closes it.  Without either, the name is
    looked up here (again after a ``ChangedType``, at most MAX_TYPE_RETRIES
    times).  ``progress``: a report.WalkResult
    to count into (read by another thread for progress reports).
    ``threads``: threads for the subdirectories of the first level with two
    or more (``split.remove_in_parallel``; the C walk only, the Python walk
    is single-threaded).  ``fs``: the
    fsops.Fs to open with (default: openat2 where the kernel has it).
    ``owners``: an ``owners.OwnerRule`` for every directory entered, the
    target included (an untrusted target raises ``Untrusted``; None: no
    rule, the kernel decides, as for the client's own attempt).  ``cancel``: an object with ``is_set()`` (a
    ``threading.Event``); once set, the removal stops and raises
    ``Cancelled``.  ``keep_dir``: for a directory, remove everything below
    it but not the directory itself (a non-directory is removed as ever).
    ``census``: what returns the in-use check's ``procscan.Census`` (the
    mechanism's scan, shared by the requests waiting for one); None: the
    check scans /proc itself.  ``limits``: the walk's ``walk.Limits`` (fds
    held at once per walk thread, levels entered below the target; the
    mechanism's from its settings, the defaults for the client).  ``plan``:
    a ``count.TreeCount``: a dry run (the same checks and errors, nothing
    removed; returns what would be, ``plan.would_remove``, and ``plan``
    holds what would be left in place).  A missing
    entry is success with 0 removed.  Raises RemoveError.
    """
    fs = fsops.default() if fs is None else fs
    how = (progress, threads, owners, cancel, keep_dir, census, limits, plan)
    if held_fd is not None:
        return _remove_dir(fs, parent_fd, name, shown, caller_uid, held_fd, how)
    if entry is not None:
        return _remove_looked_up(fs, parent_fd, name, shown, caller_uid, entry, how)
    for _ in range(MAX_TYPE_RETRIES):
        entry = look_up(parent_fd, name, shown, fs)
        if entry is None:
            return 0
        try:
            return _remove_looked_up(fs, parent_fd, name, shown, caller_uid, entry, how)
        except ChangedType:
            continue
        finally:
            entry.close()
    raise RemoveFailed(f"{shown}: kept changing type while being removed", [(shown, errno.EAGAIN)])


def _remove_looked_up(fs, parent_fd, name, shown, caller_uid, entry, how):
    """Remove ``entry``, the entry ``name`` of ``parent_fd`` as looked up."""
    if stat.S_ISDIR(entry.st.st_mode):
        # R3's rule for every directory target: opened from the entry's own
        # fd, so the directory checked and walked is the one looked up (and
        # whose identity the walks are shared by), not whatever the name
        # holds by now.
        try:
            dir_fd = fs.reopen_dir(entry.fd)
        except OSError as e:
            raise _open_error(shown, e) from None
        try:
            return _remove_dir(fs, parent_fd, name, shown, caller_uid, dir_fd, how)
        finally:
            os.close(dir_fd)
    # A file, symlink (the link itself, never its target, S4), fifo, socket
    # or device node: unlinked by its name (there is no unlink by fd), which
    # unlinkat refuses for a directory: a directory swapped in since the
    # lookup is never removed as if it were the entry looked up.
    plan = how[-1]
    if plan is not None:
        plan.would_remove = 1
        return 1
    try:
        os.unlink(name, dir_fd=parent_fd)
        return 1
    except FileNotFoundError:
        return 0
    except IsADirectoryError:
        raise ChangedType(f"{shown}: kept changing type while being removed") from None
    except OSError as e:
        raise RemoveFailed(f"could not remove {shown}: {e.strerror}", [(shown, e.errno)]) from None


def _open_error(shown, e):
    if fsops.refusal(e) is fsops.MOUNT:
        return MountInTheWay(f"{shown} is a mount point; nothing was removed")
    return RemoveFailed(f"{shown}: {e.strerror}", [(shown, e.errno)])


def _remove_dir(fs, parent_fd, name, shown, caller_uid, dir_fd, how):
    progress, threads, owners, cancel, keep_dir, census, limits, plan = how
    # A directory the trust rule does not let root enter for this caller
    # (another user's work the caller moved in, root's directory others
    # could have moved in, S13/S14): nothing is removed, not even what the
    # parallel helpers would.
    if owners is not None:
        why = owners.untrusted(parent_fd, os.fstat(dir_fd))
        if why is not None:
            raise Untrusted(f"{shown}: {why}; root removes nothing in it for the caller")
    # A mount at or below the target (a container's volume, its tmpfs):
    # refuse before deleting anything, and without looking into it
    # (mountinfo, not stat: a hung FUSE daemon cannot stall us).  Then the
    # same for mounts in other namespaces: a running container's.
    try:
        table = mounts.table()  # our own mount table, read once for both checks
        found = mounts.mounts_at_or_below(dir_fd, table)
        used = [] if found else inuse.uses(dir_fd, caller_uid, own=table,
                                           census=None if census is None else census())
    except mounts.LocationUnknown as e:
        raise RemoveFailed(f"{shown}: {e.strerror}, so mounts below it cannot be ruled out; "
                           "nothing was removed", [(shown, None)]) from None
    if found:
        names = ", ".join(pathrules.display(m) for m in found[:MAX_NAMED_FAILURES])
        raise MountInTheWay(f"{shown}: mount point at or below the target: {names}; nothing was removed")
    if used:
        more = f" (and {len(used) - 1} more)" if len(used) > 1 else ""
        raise InUse(f"{shown} is in use: {used[0].describe()}{more}; nothing was removed")
    if plan is not None:
        # The dry run: the same checks above, then the count with the same
        # trust rule, which lists nothing the removal would not enter.
        count.count_tree(parent_fd, name, dir_fd, fs, limits=limits, owners=owners, keep_dir=keep_dir, count=plan,
                         cancel=cancel)
        if plan.cancelled:
            raise Cancelled(f"{shown}: the dry run was cancelled", removed=0)
        return plan.would_remove
    res = report.WalkResult() if progress is None else progress
    walk.remove_with_threads(parent_fd, name, dir_fd, res, threads, fs, owners=owners, cancel=cancel,
                             keep_dir=keep_dir, limits=limits)
    _raise_for(shown, res)
    return res.removed


def _shorten(text):
    """``text`` (a path for a message), cut in the middle if it is longer
    than MAX_SHOWN_PATH: a 65,536-deep path would make a line of 128 KiB."""
    if len(text) <= MAX_SHOWN_PATH:
        return text
    half = MAX_SHOWN_PATH // 2
    return f"{text[:half]}...({len(text) - 2 * half} characters)...{text[-half:]}"


def _raise_for(shown, res):
    def full(rel):
        return pathrules.display(shown.encode("utf-8", "surrogateescape") + (b"/" + rel if rel else b""))

    def more(count, named):
        return f" (and {count - named} more)" if count > named else ""

    if res.cancelled:
        raise Cancelled(f"{shown}: the removal was cancelled; {res.removed} entries removed", removed=res.removed)
    if res.mounts:
        named = res.mounts[:MAX_NAMED_FAILURES]
        names = ", ".join(_shorten(full(m)) for m in named)
        raise MountInTheWay(f"a mount point appeared during removal and was left in place: {names}"
                            f"{more(res.mount_count, len(named))}; {res.removed} entries removed",
                            removed=res.removed)
    if res.failures:
        items = [(full(rel), err, why) for rel, (err, why) in res.failures.items()]
        count = res.failure_count
        named = "; ".join(f"{_shorten(path)}: {why}" for path, _, why in items[:MAX_NAMED_FAILURES])
        raise RemoveFailed(f"could not remove {count} entries: {named}"
                           f"{more(count, min(len(items), MAX_NAMED_FAILURES))}; {res.removed} entries removed",
                           [(path, err) for path, err, _ in items], removed=res.removed)
