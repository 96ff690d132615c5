"""Errors the mechanism answers with; each carries its D-Bus error name.

The message is one plain line: it crosses the bus to the caller.
"""

from .. import interface as i


class MechanismError(Exception):
    dbus_name = i.ERROR_FAILED

    def __init__(self, message, removed=0):
        # One line, always: a message must never smuggle in a second line
        # (the audit log and the caller both print it).
        super().__init__(" ".join(str(message).splitlines()))
        self.removed = removed  # entries removed before the error

    @property
    def message(self):
        return self.args[0]


class Failed(MechanismError):
    dbus_name = i.ERROR_FAILED


class NotAuthorized(MechanismError):
    dbus_name = i.ERROR_NOT_AUTHORIZED


class InteractiveAuthorizationRequired(MechanismError):
    dbus_name = i.ERROR_INTERACTIVE_AUTH_REQUIRED


class InvalidPath(MechanismError):
    dbus_name = i.ERROR_INVALID_PATH


class OutsideScope(MechanismError):
    dbus_name = i.ERROR_OUTSIDE_SCOPE


class MountPoint(MechanismError):
    dbus_name = i.ERROR_MOUNT_POINT
