"""The client's own first attempt: remove a tree as the calling user.

Held to the mechanism's standard, with the same code (``locald_admin.fs``):
the entry is looked at in its held parent directory without following it,
every directory below is opened relative to its parent's fd with no symlink
followed and no mount entered, and a mount at or below the target (a
container's bind mount of the project's source, its tmpfs) is refused before
anything is deleted.  ``shutil.rmtree``, which this replaces, walked into
such a bind mount and deleted the user's source files through it.

Unlike the mechanism it needs no anchor: it runs with the caller's own
rights, so the kernel already limits it to what the caller may delete.  The
part of the path above the entry is resolved as any program of the caller's
would resolve it (ordinary symlinks followed).

What the caller sees (``remove``):

* done, or nothing there (a missing entry, or a non-directory where the path
  needs a directory): returns;
* a mount at or below the target: ``MountPointError``, nothing removed;
* a mount in another namespace using it (a running container): ``InUseError``,
  nothing removed;
* every failure EACCES or EPERM (root-owned leftovers): ``PermissionError``
  of the first one, which ``force_remove_dir_all`` answers by asking the
  mechanism;
* any other failure: the ``OSError`` of the first one that is not a
  permission error, with its errno and path, unchanged.
"""

import errno
import os

from locald_admin import pathrules
from locald_admin.fs import fsops, report
from locald_admin.fs import remove as fsremove
from .errors import InUseError, MountPointError

# One thread: two interpreter threads trading the GIL on every system call
# are slower than one (docs/performance.md).
THREADS = 1


def remove(path):
    """Remove ``path`` (absolute, lexically checked) as the calling user."""
    parts = pathrules.split_components(path)
    shown = pathrules.display(b"/" + b"/".join(parts))
    fs = fsops.default()
    try:
        parent_fd = fs.open_prefix(parts[:-1])
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            return  # nothing there to remove
        raise
    try:
        fsremove.remove_entry(parent_fd, parts[-1], shown, os.getuid(), threads=THREADS, fs=fs)
    except fsremove.MountInTheWay as e:
        raise MountPointError(e.message) from None
    except fsremove.InUse as e:
        raise InUseError(e.message) from None
    except fsremove.RemoveFailed as e:
        raise _first_error(e) from None
    finally:
        os.close(parent_fd)


def _first_error(failed):
    """The OSError the caller gets for ``failed``: the first failure that
    more privilege would not fix, else the first permission error."""
    chosen = next(((p, e) for p, e in failed.failures if e not in report.PERMISSION_ERRNOS),
                  failed.failures[0])
    where, err = chosen
    if err is None:  # a race the walk detected itself; no errno to pass on
        return OSError(failed.message)
    return OSError(err, os.strerror(err), where)  # OSError picks the subclass (PermissionError, ...)
