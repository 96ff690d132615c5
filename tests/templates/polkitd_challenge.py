"""A polkitd mock that answers like polkit does for an `auth_self`/`auth_admin`
action: without AllowUserInteraction it returns a challenge
(is_authorized=False, is_challenge=True); with it, the (simulated) agent
succeeds.  The stock dbusmock template never returns a challenge.
"""

import dbus

BUS_NAME = "org.freedesktop.PolicyKit1"
MAIN_OBJ = "/org/freedesktop/PolicyKit1/Authority"
MAIN_IFACE = "org.freedesktop.PolicyKit1.Authority"
SYSTEM_BUS = True

ALLOW_USER_INTERACTION = 1


def load(mock, _parameters):
    mock.AddProperties(MAIN_IFACE, dbus.Dictionary(
        {"BackendName": "local", "BackendVersion": "0.8.15", "BackendFeatures": dbus.UInt32(1)},
        signature="sv"))


@dbus.service.method(MAIN_IFACE, in_signature="(sa{sv})sa{ss}us", out_signature="(bba{ss})")
def CheckAuthorization(_self, _subject, _action_id, _details, flags, _cancellation_id):
    if flags & ALLOW_USER_INTERACTION:
        return (True, False, {})
    return (False, True, {})


@dbus.service.method(MAIN_IFACE, in_signature="s")
def CancelCheckAuthorization(_self, _cancellation_id):
    pass
