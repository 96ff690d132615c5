"""Every D-Bus message locald-admin sends or reads, as plain data.

No I/O here (``busio`` turns these into ``wire`` messages and back), so
what is sent and what is concluded from a reply can be tested without a
bus.  Builders return a ``Call`` or a ``Signal``; readers take a
``Reply`` (or a received ``Signal``) and return the decision the code needs,
raising ``BadReply`` when the reply does not give one.  What the
service's object says about itself (introspection, its properties) is
``introspection``'s; the standard names both use are here.
"""

from . import interface as i
from .records import field, frozen
from .wire import Variant  # a value with its signature: the codec's, sent as it is


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


@frozen
class Call:
    """A method call to send."""

    destination: str | None
    path: str
    interface: str | None
    member: str
    signature: str = ""
    body: tuple = ()
    allow_interactive: bool = False  # the ALLOW_INTERACTIVE_AUTHORIZATION flag
    no_reply: bool = False  # NO_REPLY_EXPECTED: sent, never answered


@frozen
class Signal:
    """A signal to send (``sender`` None) or one received."""

    destination: str | None
    path: str
    interface: str
    member: str
    signature: str = ""
    body: tuple = ()
    sender: str | None = None


@frozen
class Reply:
    """The answer to a call: a method return (``error_name`` None) or an
    error.  Variants in the body arrive unwrapped to their values."""

    sender: str | None
    error_name: str | None
    signature: str = ""
    body: tuple = ()

    @property
    def text(self):
        """An error's message, or ''."""
        return self.body[0] if self.body and isinstance(self.body[0], str) else ""


@frozen
class Incoming:
    """A method call the service received.  ``handle`` is its ``wire.Message``,
    which only ``busio`` looks at (to address the reply)."""

    sender: str | None
    path: str
    interface: str | None
    member: str
    signature: str
    body: tuple
    allow_interactive: bool
    no_reply: bool
    handle: object = field(default=None, compare=False, repr=False)
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


def cleanup_with_options(path, interactive=None, dry_run=False, allow_interactive=False):
    """CleanupWithOptions(path, options): ``interactive`` sent as the
    option when not None (it then decides), ``dry-run`` when true;
    ``allow_interactive``: the message's flag."""
    options = {}
    if interactive is not None:
        options[i.OPTION_INTERACTIVE] = Variant("b", bool(interactive))
    if dry_run:
        options[i.OPTION_DRY_RUN] = Variant("b", True)
    return Call(i.BUS_NAME, i.OBJECT_PATH, i.INTERFACE, i.CLEANUP_WITH_OPTIONS.name,
                i.CLEANUP_WITH_OPTIONS.in_signature, (path, options), allow_interactive=allow_interactive)


def read_cleanup_options(options):
    """CleanupWithOptions' ``options`` as received (variants unwrapped:
    each value's Python type is its signature's, ``interface.PYTHON_TYPES``,
    and only ``b`` is a bool) -> (options by name, the unknown keys, the
    keys whose value is of another type).  The caller refuses the call when
    either list is not empty."""
    known, unknown, mistyped = {}, [], []
    for key, value in options.items():
        spec = i.CLEANUP_OPTIONS.get(key)
        if spec is None:
            unknown.append(key)
        elif type(value) is not i.PYTHON_TYPES[spec[0]]:
            mistyped.append(key)
        else:
            known[key] = value
    return known, unknown, mistyped


def cleanup_result(removed, existed, duration_usec, would_remove=None, refused=()):
    """CleanupWithOptions' result: each key with its type from
    ``interface.CLEANUP_RESULT``; ``would_remove`` and ``refused`` only for
    a dry run (``would_remove`` not None)."""
    values = {i.RESULT_REMOVED: removed, i.RESULT_EXISTED: existed, i.RESULT_DURATION: duration_usec}
    if would_remove is not None:
        values[i.RESULT_WOULD_REMOVE] = would_remove
        values[i.RESULT_REFUSED] = [tuple(r) for r in refused]
    return {k: Variant(i.CLEANUP_RESULT[k][0], v) for k, v in values.items()}


def read_cleanup_result(reply):
    """The result of a CleanupWithOptions reply, as a dict of plain values
    of the keys ``interface.CLEANUP_RESULT`` names, each of its type; keys
    it does not name (a newer mechanism's) are passed over.  BadReply when
    the reply is not a{sv} or a known key holds another type."""
    if reply.signature != "a{sv}" or len(reply.body) != 1 or not isinstance(reply.body[0], dict):
        raise BadReply(f"CleanupWithOptions answered with signature '{reply.signature}', not a{{sv}}")
    out = {}
    for key, value in reply.body[0].items():
        spec = i.CLEANUP_RESULT.get(key)
        if spec is None:
            continue
        if not _of_type(value, spec[0]):
            raise BadReply(f"CleanupWithOptions' result: {key} is not of type {spec[0]}")
        out[key] = [tuple(r) for r in value] if spec[0] == "a(ss)" else value
    return out


def _of_type(value, signature):
    if signature == "a(ss)":
        return isinstance(value, (list, tuple)) and all(
            isinstance(r, (list, tuple)) and len(r) == 2 and all(type(x) is str for x in r) for r in value)
    return type(value) is i.PYTHON_TYPES[signature]


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


@frozen
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
