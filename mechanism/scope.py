"""Resolve a request's path to held file descriptors, race-free.

The anchor is the first ``.locald`` component.  The prefix above it is opened
from / (ordinary symlinks allowed, magic links not); the anchor is opened
relative to the prefix fd with no symlink following and no mount crossing,
and its owner is checked *on the fd*.  Every component below the anchor is
opened relative to the fd of the one before (``Fs.open_beneath``).  From
here on nothing is looked up by path string again, so renaming, symlink
swaps or bind mounts after this point cannot redirect the deletion.
"""

import errno
import os
import pwd
import stat
from dataclasses import dataclass, field
from typing import List, Optional

from locald_admin import pathrules
from locald_admin.fs import fsops, owners
from locald_admin.fs import remove as fsremove
from .config import Config
from .errors import Failed, MountPoint, OutsideScope

MAX_CLIMB = 4096  # ancestors examined for the configured roots


@dataclass
class Target:
    """What a request resolved to.  ``parent_fd`` holds the entry ``name``;
    for the anchor itself that is the prefix directory."""

    parent_fd: int
    name: bytes
    display: str  # the normalized request path, for messages
    fds: List[int] = field(default_factory=list)  # every fd to close
    # When the target is the anchor itself: its held, owner-checked fd.  The
    # entry is never looked up by name again (that lookup could find another
    # directory swapped in after the check).
    anchor_fd: Optional[int] = None
    # Otherwise, once looked up (``engine.look_up``, the one lookup of the
    # final component): the entry that is removed, and whose identity the
    # walks are shared by.  Its fd is in ``fds``.
    entry: Optional[fsremove.Entry] = None
    fs: fsops.Fs = field(default_factory=fsops.default)  # how it was opened, and is to be removed
    caller_uid: int = -1  # whose request it is (their containers count for the in-use check)
    # The anchor as target, in a directory where someone else could swap it
    # for a directory of theirs before its final rmdir by name: its contents
    # are removed through the held fd, the anchor itself stays.
    keep_anchor: bool = False
    owner_uid: int = -1  # whose tree it is: the caller, or for a root caller the anchor's owner
    # The trust rule for owner_uid's tree (None for a tree of root's own: the
    # rule protects other users from the caller, and root is no such caller).
    rule: Optional[owners.OwnerRule] = None

    def close(self):
        for fd in reversed(self.fds):
            os.close(fd)
        self.fds.clear()


def _is_symlink(fs, dirfd, name):
    try:
        return stat.S_ISLNK(fs.lstat_beneath(dirfd, name).st_mode)
    except OSError:
        return False


class _NotTheCallersHome(OutsideScope):
    """The part before a data directory is not the caller's home (or the
    caller has none): the path's '.locald' below it, if any, is the anchor
    instead (resolve)."""


def _open_data_dir_prefix(fs, parsed, caller_uid, shown):
    """For a ~/.local/share/locald anchor: open <home>/.local/share after
    checking, by identity, that <home> is the caller's home directory (from
    the password database, never from the caller's environment).  Returns
    the fd, None when something is missing; raises OutsideScope."""
    try:
        home = pwd.getpwuid(caller_uid).pw_dir
        want = os.stat(home)
    except (KeyError, OSError):
        raise _NotTheCallersHome(f"{shown}: uid {caller_uid} has no home directory, "
                                 f"so no ~/{pathrules.DATA_DIR_NAME}") from None
    try:
        home_fd = fs.open_prefix(parsed.home)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            return None
        raise OutsideScope(f"{shown}: cannot resolve the home directory part: {e.strerror}") from None
    try:
        st = os.fstat(home_fd)
        if (st.st_dev, st.st_ino) != (want.st_dev, want.st_ino):
            raise _NotTheCallersHome(f"{shown}: not below the caller's own home directory ({home}); "
                                     "another user's data directory is out of scope")
        try:
            return fs.open_path_at(home_fd, b".local/share")
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR):
                return None
            raise OutsideScope(f"{shown}: cannot open .local/share: {e.strerror}") from None
    finally:
        os.close(home_fd)


def _not_the_callers(parsed, prefix_fd, st, caller_uid, config):
    """Why the anchor (``st``, from its held fd) is not the caller's, or None.

    Its owner must be the caller (uid 0 is exempt unless configured).  One
    exception, ``[owner] root_made_anchor`` (default yes): a ``.locald`` that
    root made (runc does, for its state directory) counts as the caller's
    when the directory holding it, held as ``prefix_fd``, is owned by the
    caller and writable by nobody else, and the anchor itself is writable by
    root alone (the trust rule's condition for root's directories: one that
    others may write could have been moved there by one of them).  The
    caller can already rename any entry of such a directory, whoever owns
    the entry, so this grants nothing the caller could not reach by moving a
    directory of their own that holds it into their ``.locald``; a directory
    someone else may write to (``/tmp`` itself, a shared group directory)
    never qualifies, and neither does another user's anchor or a data
    directory.
    """
    if caller_uid == 0 and config.root_skips_owner_check:
        return None
    if st.st_uid == caller_uid:
        return None
    why = f"the anchor is owned by uid {st.st_uid}, not by the caller (uid {caller_uid})"
    if st.st_uid != 0 or parsed.kind != pathrules.KIND_PROJECT or not config.root_made_anchor:
        return why
    holder = os.fstat(prefix_fd)
    if holder.st_uid != caller_uid:
        return f"{why}, and the directory holding it is owned by uid {holder.st_uid}"
    if holder.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{why}, and others may write to the directory holding it (mode {stat.S_IMODE(holder.st_mode):04o})"
    # The trust rule's for root's directories: one that others may write
    # could have been moved here by one of them, root's files with it.
    if st.st_mode & owners.GROUP_OR_OTHER_WRITE:
        return f"{why}, and others may write to it (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def others_could_swap(holder_fd, owner_uid):
    """Whether anyone but ``owner_uid`` and root could rename entries of the
    held directory ``holder_fd`` (and so exchange the anchor with a
    directory of their own, ``renameat2(RENAME_EXCHANGE)``, between our
    identity check and the ``rmdir`` by name).

    Sticky directories are safe: there, renaming an entry needs owning it
    (or the directory).  Otherwise: another owner with write permission,
    group or other write permission, or an extended ACL (read as "may be
    writable by others": conservative).
    """
    st = os.fstat(holder_fd)
    if st.st_mode & stat.S_ISVTX:
        return False
    if st.st_uid not in (0, owner_uid) and st.st_mode & stat.S_IWUSR:
        return True
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return True
    return owners.has_acl(holder_fd)


def _config_excludes(anchor_fd, anchor_st, config):
    """Why the administrator's roots exclude the anchor (held as
    ``anchor_fd``, whose ``fstat`` is ``anchor_st``), or None.

    Climbs from the anchor through '..' and compares each ancestor's
    (st_dev, st_ino) with the configured roots: the nearest listed one
    decides.  Identity, not strings: symlinks in the request change nothing.
    """
    roots = config.identities()
    cur = os.dup(anchor_fd)
    try:
        st = anchor_st
        for _ in range(MAX_CLIMB):
            hit = roots.get((st.st_dev, st.st_ino))
            if hit is not None:
                allowed, root = hit
                return None if allowed else f"it is below {root}, where cleanup is denied"
            parent = os.open(b"..", fsops.PATH_FLAGS, dir_fd=cur)
            os.close(cur)
            cur = parent
            pst = os.fstat(cur)
            if (pst.st_dev, pst.st_ino) == (st.st_dev, st.st_ino):
                break  # reached /
            st = pst
        return "it is not below any allowed root"
    finally:
        os.close(cur)


def resolve(parsed: pathrules.ParsedPath, caller_uid: int, config: Config = Config(),
            fs: Optional[fsops.Fs] = None) -> Optional[Target]:
    """Open the parent of the target and return it as a Target.

    Returns None when the target does not exist (a missing component, or a
    non-directory where the path needs a directory): nothing to delete.
    Raises OutsideScope, MountPoint or Failed.
    """
    shown = parsed.display()
    anchor = parsed.anchor
    aname = anchor.decode()
    fs = fsops.default() if fs is None else fs
    t = Target(parent_fd=-1, name=b"", display=shown, fs=fs, caller_uid=caller_uid)
    try:
        # 1. The prefix, from /.  Magic links (/proc/<pid>/root, .../cwd)
        #    would reach into other processes' views of the file system.
        if parsed.kind == pathrules.KIND_DATA:
            try:
                prefix_fd = _open_data_dir_prefix(fs, parsed, caller_uid, shown)
            except _NotTheCallersHome as e:
                # Not this caller's data directory (locald run with another
                # HOME): a '.locald' below it is an anchor as on any other
                # path, with all of that anchor's rules; without one, out.
                fallback = parsed.project_anchor()
                if fallback is None:
                    raise OutsideScope(e.message) from None
                t.close()
                return resolve(fallback, caller_uid, config, fs)
            if prefix_fd is None:
                return None
            t.fds.append(prefix_fd)
        else:
            try:
                t.fds.append(fs.open_prefix(parsed.prefix))
            except OSError as e:
                if e.errno in (errno.ENOENT, errno.ENOTDIR):
                    t.close()
                    return None
                if e.errno in (errno.ELOOP, errno.EXDEV):
                    raise OutsideScope(f"{shown}: the path above {aname} "
                                       "goes through a magic link or a symlink loop") from None
                raise Failed(f"{shown}: cannot open the directory above the anchor: {e.strerror}") from None

        # 2. The anchor: a real directory (not a symlink to one, not a mount
        #    point), owned by the caller.  The owner is read from the fd we
        #    hold, so a swap after the check changes nothing.
        prefix_fd = t.fds[-1]
        try:
            anchor_fd = fs.open_beneath(prefix_fd, anchor)
        except OSError as e:
            why = fsops.refusal(e)
            if why is fsops.GONE:
                t.close()
                return None
            if why is fsops.NOT_FOLLOWED:
                what = "a symlink" if _is_symlink(fs, prefix_fd, anchor) else "not a directory"
                raise OutsideScope(f"{shown}: the anchor {aname} is {what}") from None
            if why is fsops.MOUNT:
                raise MountPoint(f"{shown}: the anchor {aname} is a mount point") from None
            raise Failed(f"{shown}: cannot open the anchor: {e.strerror}") from None
        t.fds.append(anchor_fd)
        anchor_st = os.fstat(anchor_fd)
        why = _not_the_callers(parsed, prefix_fd, anchor_st, caller_uid, config)
        if why is not None:
            raise OutsideScope(f"{shown}: {why}")
        why = _config_excludes(anchor_fd, anchor_st, config)
        if why is not None:
            raise OutsideScope(f"{shown}: the administrator's configuration ({config.source}) excludes "
                               f"this anchor: {why}")
        # An allowed root the service's sandbox keeps read-only (the unit's
        # ReadWritePaths= does not list it): refuse up front, naming the fix,
        # rather than fail halfway with EROFS for every entry.
        if os.fstatvfs(anchor_fd).f_flag & os.ST_RDONLY:
            raise OutsideScope(f"{shown}: the anchor's file system is read-only for locald-admin; if it is "
                               f"below an allowed root of {config.source}, run 'systemctl daemon-reload' after "
                               "listing that root there (locald-admin-generator makes it writable for the "
                               "service), see docs/operator-guide.md")

        # 3. Below the anchor: one component at a time, relative to the fd of
        #    the one before; never a symlink, never across a mount.
        t.owner_uid = anchor_st.st_uid if caller_uid == 0 else caller_uid
        t.rule = None if t.owner_uid == 0 else owners.OwnerRule.for_caller(t.owner_uid)
        if not parsed.below:
            t.parent_fd, t.name, t.anchor_fd = prefix_fd, anchor, anchor_fd
            # Removing the anchor itself ends with an rmdir by name in the
            # directory holding it.  Where someone else could exchange the
            # anchor for an empty directory of theirs just before (R8), the
            # contents go and the anchor stays.
            t.keep_anchor = others_could_swap(prefix_fd, t.owner_uid)
            return t
        dirfd = anchor_fd
        for depth, comp in enumerate(parsed.below[:-1], 1):
            try:
                nxt = fs.open_beneath(dirfd, comp)
            except OSError as e:
                why = fsops.refusal(e)
                if why is fsops.GONE:
                    t.close()
                    return None
                if why is fsops.NOT_FOLLOWED:
                    if _is_symlink(fs, dirfd, comp) or e.errno == errno.ELOOP:
                        raise OutsideScope(f"{shown}: {pathrules.display(comp)} is a symlink below the anchor") from None
                    t.close()
                    return None  # a file where a directory is needed: no target
                if why is fsops.MOUNT:
                    raise MountPoint(f"{shown}: {pathrules.display(comp)} is a mount point") from None
                raise Failed(f"{shown}: cannot open {pathrules.display(comp)}: {e.strerror}") from None
            t.fds.append(nxt)
            # The trust rule on every directory between the anchor and the
            # target, as the walk applies it inside: another user's work the
            # caller moved in, or root's directory that others could have
            # moved in, is not a way down to something to remove (S13, S14).
            if t.rule is not None:
                why = t.rule.untrusted(dirfd, os.fstat(nxt))
                if why is not None:
                    where = pathrules.display(b"/".join(parsed.below[:depth]))
                    raise OutsideScope(f"{shown}: {where} is {why}; root removes nothing below it for the caller")
            dirfd = nxt
        t.parent_fd, t.name = dirfd, parsed.below[-1]
        return t
    except BaseException:
        t.close()
        raise
