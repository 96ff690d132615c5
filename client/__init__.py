"""locald-admin client: locald's helper for removing root-owned leftovers."""

from .cleanup import (absolute_path, force_remove_dir_all, force_remove_dir_all_async,
                      request_cleanup)
from .errors import (CleanupError, CleanupFailedError, InteractiveAuthorizationRequiredError,
                     InvalidPathError, MechanismUnavailable, MountPointError, NotAuthorizedError,
                     OutsideScopeError)

__all__ = [
    "force_remove_dir_all", "force_remove_dir_all_async", "request_cleanup", "absolute_path",
    "CleanupError", "CleanupFailedError", "NotAuthorizedError",
    "InteractiveAuthorizationRequiredError", "InvalidPathError", "OutsideScopeError",
    "MountPointError", "MechanismUnavailable",
]
