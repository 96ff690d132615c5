"""Every D-Bus message locald-admin sends or reads, as plain data.

No I/O here (``busio`` turns these into ``wire`` messages and back), so
what is sent and what is concluded from a reply can be tested without a
bus.  Builders return a ``Call`` or a ``Signal``; readers take a
``Reply`` (or a received ``Signal``) and return the decision the code needs,
raising ``BadReply`` when the reply does not give one.
"""

from dataclasses import dataclass, field
from typing import Any, Optional, Tuple

from . import __version__
from . import interface as i
from .wire import Variant  # noqa: F401 (a value with its signature: the codec's, sent as it is)


DBUS_NAME = "org.freedesktop.DBus"
DBUS_PATH = "/org/freedesktop/DBus"
INTROSPECTABLE = "org.freedesktop.DBus.Introspectable"
PEER = "org.freedesktop.DBus.Peer"
PROPERTIES = "org.freedesktop.DBus.Properties"

POLKIT_NAME = "org.freedesktop.PolicyKit1"
POLKIT_PATH = "/org/freedesktop/PolicyKit1/Authority"
POLKIT_IFACE = "org.freedesktop.PolicyKit1.Authority"
INVALID_ARGS = "org.freedesktop.DBus.Error.InvalidArgs"
ACCESS_DENIED = "org.freedesktop.DBus.Error.AccessDenied"
UNKNOWN_METHOD = "org.freedesktop.DBus.Error.UnknownMethod"
UNKNOWN_INTERFACE = "org.freedesktop.DBus.Error.UnknownInterface"
UNKNOWN_PROPERTY = "org.freedesktop.DBus.Error.UnknownProperty"
PROPERTY_READ_ONLY = "org.freedesktop.DBus.Error.PropertyReadOnly"
LIMITS_EXCEEDED = "org.freedesktop.DBus.Error.LimitsExceeded"


@dataclass(frozen=True)
class Call:
    """A method call to send."""

    destination: Optional[str]
    path: str
    interface: Optional[str]
    member: str
    signature: str = ""
    body: Tuple = ()
    allow_interactive: bool = False  # the ALLOW_INTERACTIVE_AUTHORIZATION flag
    no_reply: bool = False  # NO_REPLY_EXPECTED: sent, never answered


@dataclass(frozen=True)
class Signal:
    """A signal to send (``sender`` None) or one received."""

    destination: Optional[str]
    path: str
    interface: str
    member: str
    signature: str = ""
    body: Tuple = ()
    sender: Optional[str] = None


@dataclass(frozen=True)
class Reply:
    """The answer to a call: a method return (``error_name`` None) or an
    error.  Variants in the body arrive unwrapped to their values."""

    sender: Optional[str]
    error_name: Optional[str]
    signature: str = ""
    body: Tuple = ()

    @property
    def text(self):
        """An error's message, or ''."""
        return self.body[0] if self.body and isinstance(self.body[0], str) else ""


@dataclass(frozen=True)
class Incoming:
    """A method call the service received.  ``handle`` is its ``wire.Message``,
    which only ``busio`` looks at (to address the reply)."""

    sender: Optional[str]
    path: str
    interface: Optional[str]
    member: str
    signature: str
    body: Tuple
    allow_interactive: bool
    no_reply: bool
    handle: Any = field(default=None, compare=False, repr=False)
    # When not 0: the message was this many bytes, longer than the service
    # reads (busio.MAX_INCOMING), and ``body`` is empty: only its header
    # was read.
    oversized: int = 0


class BadReply(Exception):
    """A reply that does not give the answer asked for; the message says why."""


# -- Cleanup and Progress ----------------------------------------------------------

def cleanup(path, interactive=False):
    return Call(i.BUS_NAME, i.OBJECT_PATH, i.INTERFACE, i.CLEANUP.name, i.CLEANUP.in_signature, (path,),
                allow_interactive=interactive)


def progress(destination, path, removed, elapsed):
    return Signal(destination, i.OBJECT_PATH, i.INTERFACE, i.PROGRESS.name, i.PROGRESS.signature,
                  (path, removed, elapsed))


def read_progress(signal, owner):
    """(path, removed, elapsed) of a Progress signal, or None when it is
    something else or does not come from ``owner`` (the service's unique
    name): anyone on the bus may send us a signal."""
    if (signal.member == i.PROGRESS.name and signal.interface == i.INTERFACE
            and signal.signature == i.PROGRESS.signature and signal.sender is not None
            and signal.sender == owner):
        return tuple(signal.body)
    return None


# -- the bus daemon ------------------------------------------------------------------

def get_name_owner(name):
    return Call(DBUS_NAME, DBUS_PATH, DBUS_NAME, "GetNameOwner", "s", (name,))


def read_name_owner(reply):
    """The unique name owning the name, or None (no owner yet)."""
    return reply.body[0] if reply.error_name is None and reply.body else None


# Every connection that leaves the bus: the daemon's NameOwnerChanged for a
# unique name whose new owner is empty.  (arg2='' matches exactly that.)
NAME_LOST_RULE = ("type='signal',sender='org.freedesktop.DBus',path='/org/freedesktop/DBus',"
                  "interface='org.freedesktop.DBus',member='NameOwnerChanged',arg2=''")


def add_match(rule):
    return Call(DBUS_NAME, DBUS_PATH, DBUS_NAME, "AddMatch", "s", (rule,))


def read_name_lost(signal):
    """The unique name of a connection that left the bus, when ``signal``
    is the bus daemon's NameOwnerChanged saying so; else None.  Only the
    daemon's own signal counts (``sender``): anyone may send a signal
    that looks like it."""
    if (signal.member != "NameOwnerChanged" or signal.interface != DBUS_NAME or signal.sender != DBUS_NAME
            or signal.signature != "sss"):
        return None
    name, _old, new = signal.body
    return name if name.startswith(":") and new == "" else None


def get_connection_credentials(name):
    return Call(DBUS_NAME, DBUS_PATH, DBUS_NAME, "GetConnectionCredentials", "s", (name,))


def read_credentials(reply, name):
    """(uid, pid or None) of ``name``, vouched for by the bus daemon."""
    if reply.error_name is not None:
        raise BadReply(f"cannot identify the caller {name}: {reply.error_name}")
    creds = reply.body[0] if reply.body and isinstance(reply.body[0], dict) else {}
    if "UnixUserID" not in creds:
        raise BadReply(f"the bus does not know the uid of {name}")
    return creds["UnixUserID"], creds.get("ProcessID")


# -- polkit --------------------------------------------------------------------------

def check_authorization(sender, action, interactive, cancel_id):
    """Ask polkit about ``sender``: the subject is the caller's unique bus
    name (system-bus-name), never a PID (CVE-2013-4288)."""
    return Call(
        POLKIT_NAME, POLKIT_PATH, POLKIT_IFACE, "CheckAuthorization", "(sa{sv})sa{ss}us",
        (("system-bus-name", {"name": Variant("s", sender)}), action, {},
         i.POLKIT_ALLOW_USER_INTERACTION if interactive else 0, cancel_id),
        # polkit may itself have to ask an agent: allow it when we may.
        allow_interactive=interactive)


def cancel_check_authorization(cancel_id):
    return Call(POLKIT_NAME, POLKIT_PATH, POLKIT_IFACE, "CancelCheckAuthorization", "s", (cancel_id,),
                no_reply=True)


@dataclass(frozen=True)
class Authorization:
    authorized: bool
    challenge: bool  # polkit would ask for a password


def read_authorization(reply):
    if reply.error_name is not None:
        detail = reply.text
        raise BadReply(f"polkit is unavailable ({reply.error_name}{': ' + detail if detail else ''})")
    try:
        authorized, challenge, _details = reply.body[0]
    except (TypeError, ValueError, IndexError):
        raise BadReply("polkit sent a malformed answer") from None
    return Authorization(authorized is True, bool(challenge))


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
        out.append(f"    <property name={quoteattr(p.name)} type={quoteattr(p.signature)} access=\"read\"/>\n")
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
