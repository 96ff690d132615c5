"""Errors the mechanism answers with, one class per row of the contract's
error table (``locald_admin.interface.ERRORS``).

Each class names its row (``spec``), so its D-Bus name (and its
description) come from that one table; ``tests/test_contract.py`` holds the
classes to it (every row has exactly one class here, named as the row says,
and every class a row).

The message is one plain line: it crosses the bus to the caller.
"""

from typing import ClassVar

from locald_admin import interface as i


class MechanismError(Exception):
    """An error the mechanism answers a call with; the row of the error
    table is its class's ``spec`` (Failed unless a subclass names another)."""

    spec: ClassVar[i.ErrorSpec] = i.FAILED

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "spec" in cls.__dict__ and cls.__doc__ is None:
            cls.__doc__ = cls.spec.meaning

    def __init__(self, message: object, removed: int = 0) -> None:
        # One line, always: a message must never smuggle in a second line
        # (the audit log and the caller both print it).
        super().__init__(" ".join(str(message).splitlines()))
        self.removed = removed  # entries removed before the error

    @property
    def dbus_name(self) -> str:
        return self.spec.dbus_name

    @property
    def message(self) -> str:
        message: str = self.args[0]
        return message


# One class per row of the table, in its order.

class Failed(MechanismError):
    spec = i.FAILED


class NotAuthorized(MechanismError):
    spec = i.NOT_AUTHORIZED


class InteractiveAuthorizationRequired(MechanismError):
    spec = i.INTERACTIVE_AUTH_REQUIRED


class InvalidPath(MechanismError):
    spec = i.INVALID_PATH


class OutsideScope(MechanismError):
    spec = i.OUTSIDE_SCOPE


class MountPoint(MechanismError):
    spec = i.MOUNT_POINT


class InUse(MechanismError):
    spec = i.IN_USE


class Busy(MechanismError):
    spec = i.BUSY


class InvalidArgs(MechanismError):
    spec = i.INVALID_ARGS
