"""locald-admin client: locald's helper for removing root-owned leftovers."""

from .cleanup import (AdminClient, absolute_path, force_remove_dir_all, force_remove_dir_all_async,
                      request_cleanup, shared_client)
from .errors import (BusyError, CleanupError, CleanupFailedError, InteractiveAuthorizationRequiredError,
                     InUseError, InvalidPathError, MechanismUnavailable, MountPointError, NotAuthorizedError,
                     OutsideScopeError)

__all__ = [
    "force_remove_dir_all", "force_remove_dir_all_async", "request_cleanup", "absolute_path",
    "AdminClient", "shared_client",
    "CleanupError", "CleanupFailedError", "NotAuthorizedError",
    "InteractiveAuthorizationRequiredError", "InvalidPathError", "OutsideScopeError",
    "MountPointError", "InUseError", "BusyError", "MechanismUnavailable",
]
