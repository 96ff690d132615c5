"""A polkitd mock for a caller whose authentication agent never answers:
a check that allows user interaction is never answered (polkit would be
waiting for the agent's dialog) until it is cancelled with
CancelCheckAuthorization, which answers it with polkit's Cancelled error;
a check without interaction is allowed at once.

Extra methods on the mock interface: ``Waiting()`` (the cancellation ids of
the checks not answered yet) and ``CancelledIds()`` (those cancelled).
"""

import dbus

BUS_NAME = "org.freedesktop.PolicyKit1"
MAIN_OBJ = "/org/freedesktop/PolicyKit1/Authority"
MAIN_IFACE = "org.freedesktop.PolicyKit1.Authority"
MOCK_IFACE = "org.freedesktop.DBus.Mock"
SYSTEM_BUS = True

ALLOW_USER_INTERACTION = 1

_waiting = {}  # cancellation id -> error callback
_cancelled = []


class Cancelled(dbus.DBusException):
    _dbus_error_name = "org.freedesktop.PolicyKit1.Error.Cancelled"


def load(mock, _parameters):
    mock.AddProperties(MAIN_IFACE, dbus.Dictionary(
        {"BackendName": "local", "BackendVersion": "0.8.15", "BackendFeatures": dbus.UInt32(1)},
        signature="sv"))


@dbus.service.method(MAIN_IFACE, in_signature="(sa{sv})sa{ss}us", out_signature="(bba{ss})",
                     async_callbacks=("ok", "err"))
def CheckAuthorization(_self, _subject, _action_id, _details, flags, cancellation_id, ok, err):
    if flags & ALLOW_USER_INTERACTION:
        _waiting[str(cancellation_id)] = err  # the agent never answers
        return
    ok((True, False, {}))


@dbus.service.method(MAIN_IFACE, in_signature="s")
def CancelCheckAuthorization(_self, cancellation_id):
    err = _waiting.pop(str(cancellation_id), None)
    _cancelled.append(str(cancellation_id))
    if err is not None:
        err(Cancelled("the authorization check was cancelled"))


@dbus.service.method(MOCK_IFACE, out_signature="as")
def Waiting(_self):
    return sorted(_waiting)


@dbus.service.method(MOCK_IFACE, out_signature="as")
def CancelledIds(_self):
    return list(_cancelled)
