"""Exceptions the client raises, one per entry of the contract's error table
(``locald_admin.interface.ERRORS``)."""

from locald_admin import interface as i


class CleanupError(Exception):
    """Base class of every error the mechanism reports."""

    spec = None
    dbus_name = None
    exit_code = i.EXIT_FAILED


_BY_NAME = {}  # D-Bus name -> class


def _declare(spec):
    """The client's class for an entry of the contract's error table: a
    CleanupError and the table's built-in base, or a case of the class of
    the error it refines."""
    bases = (_BY_NAME[spec.refines.dbus_name],) if spec.refines else (CleanupError, spec.client_base)
    cls = type(spec.client_class, bases, {
        "spec": spec, "dbus_name": spec.dbus_name, "exit_code": spec.exit_code,
        "__doc__": spec.meaning, "__module__": __name__})
    _BY_NAME[spec.dbus_name] = cls
    return cls


CleanupFailedError = _declare(i.FAILED)
NotAuthorizedError = _declare(i.NOT_AUTHORIZED)
InteractiveAuthorizationRequiredError = _declare(i.INTERACTIVE_AUTH_REQUIRED)
InvalidPathError = _declare(i.INVALID_PATH)
OutsideScopeError = _declare(i.OUTSIDE_SCOPE)
MountPointError = _declare(i.MOUNT_POINT)
InUseError = _declare(i.IN_USE)
BusyError = _declare(i.BUSY)


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
