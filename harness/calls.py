"""The one raw Cleanup caller: a method call from the test process itself
(dbus-python; as root it skips polkit), no client library involved."""

import os

import dbus
import dbus.lowlevel

from locald_admin import interface as i

DEFAULT_TIMEOUT = 25.0  # libdbus's own default reply timeout


class Answer(tuple):
    """(error, message): the D-Bus error name and message, or (None, None)
    for success; ``sender`` is the unique name that sent the reply."""

    def __new__(cls, error, message, sender):
        self = super().__new__(cls, (error, message))
        self.sender = sender
        return self

    @property
    def error(self):
        return self[0]

    @property
    def message(self):
        return self[1]


def cleanup(where, path, *, timeout=DEFAULT_TIMEOUT, interface=i.INTERFACE, member=i.METHOD_CLEANUP,
            signature="s"):
    """Call ``member`` (Cleanup) with ``path`` on org.locald.Admin1 and wait
    at most ``timeout`` s.  ``where``: a bus address, an object with
    ``address`` (harness.buses.PrivateBus), or an open dbus connection
    (then used as is: auto-start, its unique name).  Returns an Answer."""
    if isinstance(where, dbus.connection.Connection):
        return _call(where, path, timeout, interface, member, signature)
    con = dbus.bus.BusConnection(getattr(where, "address", where))
    try:
        return _call(con, path, timeout, interface, member, signature)
    finally:
        con.close()


def _call(con, path, timeout, interface, member, signature):
    msg = dbus.lowlevel.MethodCallMessage(i.BUS_NAME, i.OBJECT_PATH, interface, member)
    msg.append(os.fspath(path) if isinstance(path, os.PathLike) else path, signature=signature)
    try:
        reply = con.send_message_with_reply_and_block(msg, timeout)
    except dbus.exceptions.DBusException as e:
        return Answer(e.get_dbus_name(), e.get_dbus_message(), None)
    return Answer(None, None, reply.get_sender())
