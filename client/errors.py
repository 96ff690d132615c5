"""Exceptions the client raises, one per D-Bus error of the contract."""

from .. import interface as i


class CleanupError(Exception):
    """Base class of every error the mechanism reports."""

    dbus_name = None
    exit_code = i.EXIT_FAILED


class CleanupFailedError(CleanupError, OSError):
    dbus_name = i.ERROR_FAILED
    exit_code = i.EXIT_FAILED


class NotAuthorizedError(CleanupError, PermissionError):
    dbus_name = i.ERROR_NOT_AUTHORIZED
    exit_code = i.EXIT_NOT_AUTHORIZED


class InteractiveAuthorizationRequiredError(NotAuthorizedError):
    dbus_name = i.ERROR_INTERACTIVE_AUTH_REQUIRED
    exit_code = i.EXIT_NOT_AUTHORIZED


class InvalidPathError(CleanupError, ValueError):
    dbus_name = i.ERROR_INVALID_PATH
    exit_code = i.EXIT_INVALID_PATH


class OutsideScopeError(CleanupError, PermissionError):
    dbus_name = i.ERROR_OUTSIDE_SCOPE
    exit_code = i.EXIT_OUTSIDE_SCOPE


class MountPointError(CleanupError, OSError):
    dbus_name = i.ERROR_MOUNT_POINT
    exit_code = i.EXIT_MOUNT_POINT


_BY_NAME = {cls.dbus_name: cls for cls in (
    CleanupFailedError, NotAuthorizedError, InteractiveAuthorizationRequiredError,
    InvalidPathError, OutsideScopeError, MountPointError)}


class MechanismUnavailable(Exception):
    """No mechanism to ask: bus unreachable, name not owned, not installed.
    Internal: the public API re-raises the caller's own PermissionError."""


# D-Bus errors meaning "nobody serves org.locald.Admin1 here".
NO_SERVICE_ERRORS = {
    "org.freedesktop.DBus.Error.ServiceUnknown",
    "org.freedesktop.DBus.Error.NameHasNoOwner",
    "org.freedesktop.DBus.Error.UnknownObject",
    "org.freedesktop.DBus.Error.UnknownInterface",
    "org.freedesktop.DBus.Error.UnknownMethod",
    "org.freedesktop.DBus.Error.Spawn.ServiceNotFound",
    "org.freedesktop.DBus.Error.Spawn.ExecFailed",
    "org.freedesktop.DBus.Error.Spawn.ChildExited",
    "org.freedesktop.DBus.Error.Spawn.Failed",
    "org.freedesktop.DBus.Error.Spawn.FailedToSetup",
    "org.freedesktop.DBus.Error.Spawn.NoMemory",
    "org.freedesktop.systemd1.NoSuchUnit",
}


def from_dbus(error_name, message):
    """The exception for a D-Bus error reply from the mechanism."""
    if error_name in NO_SERVICE_ERRORS:
        return MechanismUnavailable(f"{error_name}: {message}")
    if error_name == "org.freedesktop.DBus.Error.AccessDenied":
        return NotAuthorizedError(f"the bus policy refused the call: {message}")
    cls = _BY_NAME.get(error_name, CleanupFailedError)
    if cls is CleanupFailedError and error_name != i.ERROR_FAILED:
        message = f"{error_name}: {message}"
    return cls(message)
