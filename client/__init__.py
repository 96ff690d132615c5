"""locald-admin client: locald's helper for removing root-owned leftovers.

The asyncio API (``cleanup.py``: ``AdminClient``, ``force_remove_dir_all``
and its twin, ``request_cleanup``) is imported on first use of one of its
names (PEP 562), so that ``locald-shim``, which needs none of it, does not
pay for asyncio and the user's own walk at its start."""

from .errors import (BusyError, CleanupError, CleanupFailedError, InteractiveAuthorizationRequiredError,
                     InUseError, InvalidArgumentsError, InvalidPathError, MechanismUnavailable, MountPointError,
                     NotAuthorizedError, OutsideScopeError, UnsupportedError)
from .request import CleanupResult

TYPE_CHECKING = False  # typing's constant, without importing typing (mypy takes the name as true)
if TYPE_CHECKING:
    from .cleanup import (AdminClient, absolute_path, force_remove_dir_all, force_remove_dir_all_async,
                          request_cleanup, shared_client)

_FROM_CLEANUP = frozenset(("AdminClient", "absolute_path", "force_remove_dir_all", "force_remove_dir_all_async",
                           "request_cleanup", "shared_client"))

__all__ = [
    "force_remove_dir_all", "force_remove_dir_all_async", "request_cleanup", "absolute_path",
    "AdminClient", "shared_client",
    "CleanupError", "CleanupFailedError", "NotAuthorizedError",
    "InteractiveAuthorizationRequiredError", "InvalidPathError", "OutsideScopeError",
    "MountPointError", "InUseError", "BusyError", "InvalidArgumentsError", "UnsupportedError",
    "MechanismUnavailable", "CleanupResult",
]


def __getattr__(name):
    if name in _FROM_CLEANUP:
        from . import cleanup

        value = getattr(cleanup, name)
        globals()[name] = value  # once: later lookups find it as an ordinary name
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | _FROM_CLEANUP)
