"""Every message the project sends or reads, without a bus
(``locald_admin.messages``): what is sent, and what is concluded from each
reply.  Runs anywhere."""

import pytest

from locald_admin import interface as i
from locald_admin import messages as m


def test_cleanup_call_and_its_interaction_flag():
    c = m.cleanup("/p/.locald/x")
    assert (c.destination, c.path, c.interface, c.member, c.signature, c.body) == (
        i.BUS_NAME, i.OBJECT_PATH, i.INTERFACE, "Cleanup", "s", ("/p/.locald/x",))
    assert not c.allow_interactive and m.cleanup("/p/.locald/x", interactive=True).allow_interactive


def test_progress_is_believed_only_from_the_owner():
    sig = m.progress(":1.7", "/p/.locald/x", 12, 1.5)
    assert (sig.destination, sig.signature) == (":1.7", "std")
    received = m.Signal(None, sig.path, sig.interface, sig.member, sig.signature, sig.body, sender=":1.2")
    assert m.read_progress(received, ":1.2") == ("/p/.locald/x", 12, 1.5)
    assert m.read_progress(received, ":1.3") is None  # another connection sent it
    assert m.read_progress(received, None) is None  # the owner is not known yet
    forged = m.Signal(None, sig.path, sig.interface, sig.member, "s", ("/p",), sender=":1.2")
    assert m.read_progress(forged, ":1.2") is None


def test_credentials_come_only_from_a_good_reply():
    ok = m.Reply("org.freedesktop.DBus", None, "a{sv}", ({"UnixUserID": 1000, "ProcessID": 42},))
    assert m.read_credentials(ok, ":1.5") == (1000, 42)
    no_pid = m.Reply("org.freedesktop.DBus", None, "a{sv}", ({"UnixUserID": 1000},))
    assert m.read_credentials(no_pid, ":1.5") == (1000, None)
    for bad in (m.Reply(None, "org.freedesktop.DBus.Error.NameHasNoOwner", "s", ("gone",)),
                m.Reply(None, None, "a{sv}", ({"ProcessID": 42},)),
                m.Reply(None, None, "", ())):
        with pytest.raises(m.BadReply):
            m.read_credentials(bad, ":1.5")
    call = m.get_connection_credentials(":1.5")
    assert (call.destination, call.member, call.body) == ("org.freedesktop.DBus", "GetConnectionCredentials",
                                                          (":1.5",))


def test_name_owner():
    assert m.read_name_owner(m.Reply(None, None, "s", (":1.9",))) == ":1.9"
    assert m.read_name_owner(m.Reply(None, "org.freedesktop.DBus.Error.NameHasNoOwner", "s", ("x",))) is None


def test_check_authorization_names_the_bus_name_never_a_pid():
    c = m.check_authorization(":1.5", i.POLKIT_ACTION, False, "id-1")
    subject, action, details, flags, cancel_id = c.body
    assert subject == ("system-bus-name", {"name": m.Variant("s", ":1.5")})
    assert (action, details, flags, cancel_id) == (i.POLKIT_ACTION, {}, 0, "id-1")
    assert not c.allow_interactive
    c = m.check_authorization(":1.5", i.POLKIT_ACTION, True, "id-2")
    assert c.body[3] == i.POLKIT_ALLOW_USER_INTERACTION and c.allow_interactive
    cancel = m.cancel_check_authorization("id-2")
    assert (cancel.member, cancel.body, cancel.no_reply) == ("CancelCheckAuthorization", ("id-2",), True)


@pytest.mark.parametrize("body, expected", [
    (((True, False, {}),), m.Authorization(True, False)),
    (((False, True, {}),), m.Authorization(False, True)),
    (((False, False, {"polkit.retains_authorization_after_challenge": "1"}),), m.Authorization(False, False)),
    (((1, False, {}),), m.Authorization(False, False)),  # only a real True is a yes
])
def test_authorization_decisions(body, expected):
    assert m.read_authorization(m.Reply(":1.1", None, "(bba{ss})", body)) == expected


@pytest.mark.parametrize("reply", [
    m.Reply(None, "org.freedesktop.DBus.Error.ServiceUnknown", "s", ("no polkit",)),
    m.Reply(":1.1", None, "s", ("nonsense",)),
    m.Reply(":1.1", None, "", ()),
])
def test_anything_but_a_clear_answer_is_a_bad_reply(reply):
    with pytest.raises(m.BadReply):
        m.read_authorization(reply)
