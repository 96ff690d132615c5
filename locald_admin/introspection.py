"""What the service's object says about itself: its introspection document
(``org.freedesktop.DBus.Introspectable``) and its properties
(``org.freedesktop.DBus.Properties``), both made from the member tables in
``interface``.

Pure, no I/O: ``busio`` answers Introspect and Properties calls with these,
and ``scripts/generate`` writes the installed interface XML with
``interface_element``.
"""

from . import __version__
from . import interface as i
from .messages import (INTROSPECTABLE, INVALID_ARGS, PEER, PROPERTIES, PROPERTY_READ_ONLY, UNKNOWN_INTERFACE,
                       UNKNOWN_METHOD, UNKNOWN_PROPERTY, Variant)

# The annotation saying whether and how a property's changes are signalled
# (the D-Bus specification's; hostnamed's constant properties carry "const").
EMITS_CHANGED_SIGNAL = "org.freedesktop.DBus.Property.EmitsChangedSignal"


# -- org.freedesktop.DBus.Properties on the service's object ---------------------------

_PROPERTIES_SIGNATURES = {"Get": "ss", "GetAll": "s", "Set": "ssv"}
_STANDARD_INTERFACES = (INTROSPECTABLE, PEER, PROPERTIES)


def property_values():
    """The service interface's properties (``interface.PROPERTIES``), as
    Variants by name: all read-only facts about this mechanism."""
    values = {i.VERSION.name: __version__, i.INTERFACE_REVISION_PROPERTY.name: i.INTERFACE_REVISION}
    return {p.name: Variant(p.signature, values[p.name]) for p in i.PROPERTIES}


def properties_reply(member, signature, body):
    """The answer to a Properties call on the service's object, as
    ``(error name or None, signature, body)``: Get and GetAll of the
    service's interface (or of "", which means it) answer from
    ``property_values``; the standard interfaces have none; every property
    is read-only; nothing is ever an unhandled call with a traceback in the
    log."""
    want = _PROPERTIES_SIGNATURES.get(member)
    if want is None:
        return UNKNOWN_METHOD, "s", (f"{PROPERTIES} has no method {member!r}",)
    if signature != want:
        return INVALID_ARGS, "s", (f"{PROPERTIES}.{member} takes signature '{want}', got '{signature}'",)
    interface = body[0]
    if interface not in (i.INTERFACE, "") + _STANDARD_INTERFACES:
        return UNKNOWN_INTERFACE, "s", (f"{i.OBJECT_PATH} has no interface {interface!r}",)
    values = property_values() if interface in (i.INTERFACE, "") else {}
    if member == "GetAll":
        return None, "a{sv}", (values,)
    name = body[1]
    if name not in values:
        return UNKNOWN_PROPERTY, "s", (f"{interface or i.INTERFACE} has no property {name!r}",)
    if member == "Set":
        return PROPERTY_READ_ONLY, "s", (f"{interface or i.INTERFACE}.{name} is read-only",)
    return None, "v", (values[name],)


# -- introspection -------------------------------------------------------------------

_ATTR_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "\n": "&#10;", "\r": "&#13;", "\t": "&#9;"}


def quoteattr(value):
    """``value`` as a double-quoted XML attribute value.  (Not
    xml.sax.saxutils': importing it imports urllib.request and the email
    package, a fifth of the mechanism's start-up.)"""
    return '"' + "".join(_ATTR_ESCAPES.get(c, c) for c in value) + '"'


def _property(p):
    head = f"    <property name={quoteattr(p.name)} type={quoteattr(p.signature)} access=\"read\""
    if p.emits_changed_signal is None:
        return head + "/>\n"
    return (head + ">\n"
            f"      <annotation name={quoteattr(EMITS_CHANGED_SIGNAL)} value={quoteattr(p.emits_changed_signal)}/>\n"
            "    </property>\n")


def interface_element():
    """The service's interface as an introspection ``<interface>`` element,
    made from the member tables (also installed alone, as
    /usr/share/dbus-1/interfaces/org.locald.Admin1.xml)."""
    def args(items, direction=None):
        d = f" direction={quoteattr(direction)}" if direction else ""
        return "".join(f"      <arg name={quoteattr(a.name)} type={quoteattr(a.signature)}{d}/>\n" for a in items)

    out = [f"  <interface name={quoteattr(i.INTERFACE)}>\n"]
    for m in i.METHODS:
        out.append(f"    <method name={quoteattr(m.name)}>\n{args(m.in_args, 'in')}{args(m.out_args, 'out')}"
                   "    </method>\n")
    for s in i.SIGNALS:
        out.append(f"    <signal name={quoteattr(s.name)}>\n{args(s.args)}    </signal>\n")
    for p in i.PROPERTIES:
        out.append(_property(p))
    out.append("  </interface>\n")
    return "".join(out)


INTROSPECT_DOCTYPE = ('<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"\n'
                      ' "http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">\n')


def introspection_xml(path):
    """The introspection document for ``path``: the interface at
    OBJECT_PATH, made from the member tables in ``interface``, and the
    nodes that lead there from its ancestors."""
    head = INTROSPECT_DOCTYPE + "<node>\n"
    if path != i.OBJECT_PATH:
        prefix = path.rstrip("/") + "/"
        child = i.OBJECT_PATH[len(prefix):].split("/", 1)[0]
        return head + f"  <node name={quoteattr(child)}/>\n</node>\n"

    out = [head, interface_element()]
    out.append(f'  <interface name="{INTROSPECTABLE}">\n    <method name="Introspect">\n'
               '      <arg name="xml_data" type="s" direction="out"/>\n    </method>\n  </interface>\n')
    out.append(f'  <interface name="{PROPERTIES}">\n'
               '    <method name="Get">\n      <arg name="interface_name" type="s" direction="in"/>\n'
               '      <arg name="property_name" type="s" direction="in"/>\n'
               '      <arg name="value" type="v" direction="out"/>\n    </method>\n'
               '    <method name="GetAll">\n      <arg name="interface_name" type="s" direction="in"/>\n'
               '      <arg name="props" type="a{sv}" direction="out"/>\n    </method>\n'
               '    <method name="Set">\n      <arg name="interface_name" type="s" direction="in"/>\n'
               '      <arg name="property_name" type="s" direction="in"/>\n'
               '      <arg name="value" type="v" direction="in"/>\n    </method>\n'
               '    <signal name="PropertiesChanged">\n      <arg name="interface_name" type="s"/>\n'
               '      <arg name="changed_properties" type="a{sv}"/>\n'
               '      <arg name="invalidated_properties" type="as"/>\n    </signal>\n  </interface>\n')
    out.append(f'  <interface name="{PEER}">\n    <method name="Ping"/>\n    <method name="GetMachineId">\n'
               '      <arg name="machine_uuid" type="s" direction="out"/>\n    </method>\n  </interface>\n')
    out.append("</node>\n")
    return "".join(out)


def introspects(path):
    """Whether ``path`` is OBJECT_PATH or one of its ancestors."""
    return path == i.OBJECT_PATH or i.OBJECT_PATH.startswith(path.rstrip("/") + "/")
