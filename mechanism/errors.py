"""Errors the mechanism answers with, one class per entry of the contract's
error table (``locald_admin.interface.ERRORS``); each carries its spec, so
its D-Bus name comes from that one table.

The message is one plain line: it crosses the bus to the caller.
"""

from locald_admin import interface as i


class MechanismError(Exception):
    spec = i.FAILED

    def __init__(self, message, removed=0):
        # One line, always: a message must never smuggle in a second line
        # (the audit log and the caller both print it).
        super().__init__(" ".join(str(message).splitlines()))
        self.removed = removed  # entries removed before the error

    @property
    def dbus_name(self):
        return self.spec.dbus_name

    @property
    def message(self):
        return self.args[0]


def _declare(spec):
    return type(spec.mechanism_class, (MechanismError,),
                {"spec": spec, "__doc__": spec.meaning, "__module__": __name__})


Failed = _declare(i.FAILED)
NotAuthorized = _declare(i.NOT_AUTHORIZED)
InteractiveAuthorizationRequired = _declare(i.INTERACTIVE_AUTH_REQUIRED)
InvalidPath = _declare(i.INVALID_PATH)
OutsideScope = _declare(i.OUTSIDE_SCOPE)
MountPoint = _declare(i.MOUNT_POINT)
InUse = _declare(i.IN_USE)
Busy = _declare(i.BUSY)
