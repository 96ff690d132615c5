"""What the service's object says about itself, without a bus
(``locald_admin.introspection``): its introspection document, made from the
member tables, and its answers to Properties calls.  Runs anywhere."""

import xml.etree.ElementTree as ET

import pytest

from locald_admin import __version__
from locald_admin import interface as i
from locald_admin import introspection
from locald_admin import messages as m


def test_introspection_is_made_from_the_member_tables():
    root = ET.fromstring(introspection.introspection_xml(i.OBJECT_PATH))
    iface = root.find(f"interface[@name='{i.INTERFACE}']")
    methods = {e.get("name"): [(a.get("name"), a.get("type"), a.get("direction")) for a in e.findall("arg")]
               for e in iface.findall("method")}
    assert methods == {spec.name: [(a.name, a.signature, "in") for a in spec.in_args]
                       + [(a.name, a.signature, "out") for a in spec.out_args] for spec in i.METHODS}
    signals = {e.get("name"): [(a.get("name"), a.get("type")) for a in e.findall("arg")]
               for e in iface.findall("signal")}
    assert signals == {"Progress": [("path", "s"), ("removed", "t"), ("elapsed_seconds", "d")]}


def test_the_properties_are_read_only_and_the_constant_ones_say_so_as_hostnamed_does():
    iface = ET.fromstring(introspection.introspection_xml(i.OBJECT_PATH)).find(f"interface[@name='{i.INTERFACE}']")
    props = {e.get("name"): (e.get("type"), e.get("access"),
                             {a.get("name"): a.get("value") for a in e.findall("annotation")})
             for e in iface.findall("property")}
    assert props == {p.name: (p.signature, "read", {introspection.EMITS_CHANGED_SIGNAL: p.emits_changed_signal})
                     for p in i.PROPERTIES}
    assert {name: annotations for name, (_, _, annotations) in props.items()} == {
        "Version": {"org.freedesktop.DBus.Property.EmitsChangedSignal": "const"},
        "InterfaceRevision": {"org.freedesktop.DBus.Property.EmitsChangedSignal": "const"}}


@pytest.mark.parametrize("path, child", [("/", "org"), ("/org", "locald"), ("/org/locald", "Admin1")])
def test_ancestors_lead_to_the_object(path, child):
    assert introspection.introspects(path)
    root = ET.fromstring(introspection.introspection_xml(path))
    assert [n.get("name") for n in root.findall("node")] == [child]


def test_other_paths_are_not_ours():
    assert not introspection.introspects("/org/locald/Admin1/x") and not introspection.introspects("/org/loc")


def test_properties_answer_get_and_get_all_and_refuse_the_rest_by_name():
    version = m.Variant("s", __version__)
    revision = m.Variant("u", i.INTERFACE_REVISION)
    reply = introspection.properties_reply
    assert reply("GetAll", "s", (i.INTERFACE,)) == (None, "a{sv}", ({"Version": version,
                                                                        "InterfaceRevision": revision},))
    assert reply("GetAll", "s", ("",)) == reply("GetAll", "s", (i.INTERFACE,))  # "" means the interface
    assert reply("GetAll", "s", (m.PEER,)) == (None, "a{sv}", ({},))
    assert reply("Get", "ss", (i.INTERFACE, "Version")) == (None, "v", (version,))
    assert reply("Get", "ss", ("", "InterfaceRevision")) == (None, "v", (revision,))
    assert reply("Get", "ss", (i.INTERFACE, "Nothing"))[0] == m.UNKNOWN_PROPERTY
    assert reply("Set", "ssv", (i.INTERFACE, "Version", "1"))[0] == m.PROPERTY_READ_ONLY
    assert reply("Set", "ssv", (i.INTERFACE, "Nothing", "1"))[0] == m.UNKNOWN_PROPERTY
    assert reply("GetAll", "s", ("org.example.Other",))[0] == m.UNKNOWN_INTERFACE
    assert reply("Get", "s", (i.INTERFACE,))[0] == m.INVALID_ARGS
    assert reply("Watch", "s", (i.INTERFACE,))[0] == m.UNKNOWN_METHOD


def test_attribute_values_are_quoted():
    assert introspection.quoteattr('a"<b>&\n') == '"a&quot;&lt;b&gt;&amp;&#10;"'
