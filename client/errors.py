"""Exceptions the client raises, one class per row of the contract's error
table (``locald_admin.interface.ERRORS``).

Each class names its row (``spec``) and takes its D-Bus name, its exit code
and its description from it, so that the table stays the one place they are
written; ``tests/test_contract.py`` holds the classes to the table (every row
has exactly one class here, named and based as the row says, and every class
a row)."""

from __future__ import annotations  # the annotations are for type checkers: typing is not imported to run

from locald_admin import interface as i

TYPE_CHECKING = False  # typing's constant, without importing typing (mypy takes the name as true)
if TYPE_CHECKING:
    from typing import ClassVar, Dict, Optional, Type


class CleanupError(Exception):
    """Base class of every error the mechanism reports."""

    spec: ClassVar[Optional[i.ErrorSpec]] = None
    dbus_name: ClassVar[Optional[str]] = None
    exit_code: ClassVar[int] = i.EXIT_FAILED

    def __init_subclass__(cls, **kwargs: object) -> None:
        """A class that names its row (``spec``) takes the row's D-Bus name,
        exit code and meaning, and is the one ``from_dbus`` raises for that
        name.  A subclass that names none (a caller's own) is its parent's
        case and changes nothing here."""
        super().__init_subclass__(**kwargs)
        spec = cls.__dict__.get("spec")
        if spec is None:
            return
        if spec.dbus_name in _BY_NAME:
            raise TypeError(f"{cls.__name__}: {spec.dbus_name} already has its class, "
                            f"{_BY_NAME[spec.dbus_name].__name__}")
        cls.dbus_name, cls.exit_code = spec.dbus_name, spec.exit_code
        if cls.__doc__ is None:
            cls.__doc__ = spec.meaning
        _BY_NAME[spec.dbus_name] = cls


_BY_NAME: Dict[str, Type[CleanupError]] = {}  # D-Bus name -> class, filled as the classes below are made


# One class per row of the table, in its order.  The built-in base of each is
# the row's client_base; a row that refines another is a case of that row's
# class.

class CleanupFailedError(CleanupError, OSError):
    spec = i.FAILED


class NotAuthorizedError(CleanupError, PermissionError):
    spec = i.NOT_AUTHORIZED


class InteractiveAuthorizationRequiredError(NotAuthorizedError):
    spec = i.INTERACTIVE_AUTH_REQUIRED


class InvalidPathError(CleanupError, ValueError):
    spec = i.INVALID_PATH


class OutsideScopeError(CleanupError, PermissionError):
    spec = i.OUTSIDE_SCOPE


class MountPointError(CleanupError, OSError):
    spec = i.MOUNT_POINT


class InUseError(CleanupError, OSError):
    spec = i.IN_USE


class BusyError(CleanupError, OSError):
    spec = i.BUSY


class InvalidArgumentsError(CleanupError, ValueError):
    spec = i.INVALID_ARGS


class UnsupportedError(CleanupError):
    """The mechanism answering is older than what was asked of it (a dry
    run needs CleanupWithOptions, InterfaceRevision 2): not a row of the
    table, the client's own conclusion."""

    exit_code = i.EXIT_UNSUPPORTED


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


def from_dbus(error_name: str, message: str) -> Exception:
    """The exception for a D-Bus error reply from the mechanism."""
    if error_name in NO_SERVICE_ERRORS:
        return MechanismUnavailable(f"{error_name}: {message}")
    if error_name == "org.freedesktop.DBus.Error.AccessDenied":
        return NotAuthorizedError(f"the bus policy refused the call: {message}")
    cls = _BY_NAME.get(error_name, CleanupFailedError)
    if cls is CleanupFailedError and error_name != i.ERROR_FAILED:
        message = f"{error_name}: {message}"
    return cls(message)
