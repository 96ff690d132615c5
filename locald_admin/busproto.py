"""The bus connection's protocol, Sans-I/O: what both connections need
(``busio.Connection`` on asyncio, the client's blocking one-call connection
``client/blocking.py``), without any I/O and without asyncio:

* the **address**: ``DBUS_SYSTEM_BUS_ADDRESS``, else the well-known socket,
  as the Unix socket addresses to try (``socket_addresses``);
* the **authentication**: ``AUTH EXTERNAL`` with our euid and ``BEGIN``,
  sent with ``Hello`` in one go (``greeting``: one round trip to a usable
  connection, as sd-bus does), and the server's ``OK`` line read from what
  came back (``auth_answer``);
* **Hello** and its answer, our unique name (``HELLO``, ``read_hello``);
* **messages** to and from ``wire``: a ``messages.Call`` or ``Signal`` to
  send (``outgoing``, ``encode``), the stream's reader (``parser``), a
  received reply or signal as ``messages`` data (``reply``,
  ``received_signal``, ``answer``), and which received messages are ours at
  all (``addressed_elsewhere``).
"""

import os

from . import messages as m
from . import wire

SYSTEM_BUS_ADDRESS = "unix:path=/run/dbus/system_bus_socket"
MAX_AUTH_LINE = 512  # the server's answer to AUTH: "OK <32 hex digits>\r\n"
WireError = wire.WireError  # what encode and the parser raise
HELLO = wire.Message(wire.METHOD_CALL, 1, 0, m.DBUS_PATH, m.DBUS_NAME, "Hello", destination=m.DBUS_NAME)


class BusError(ConnectionError):
    """The connection failed, was lost, or the bus refused a request."""


# -- the address -------------------------------------------------------------------------

def socket_addresses(address=None):
    """The Unix socket addresses to try, in order, for a bus address
    (``DBUS_SYSTEM_BUS_ADDRESS`` or the system bus's socket when None):
    ``unix:path=…`` and ``unix:abstract=…`` entries, ``;``-separated, their
    values %-escaped as the specification says.  Other transports (tcp,
    launchd, systemd:) are not for a system service: BusError if nothing
    usable is left."""
    if address is None:
        address = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS") or SYSTEM_BUS_ADDRESS
    out = []
    for entry in address.split(";"):
        transport, _, params = entry.partition(":")
        if transport != "unix":
            continue
        keys = {}
        for pair in params.split(","):
            key, eq, value = pair.partition("=")
            if eq:
                keys[key] = _unescape(value)
        if "path" in keys:
            out.append(keys["path"])
        elif "abstract" in keys:
            out.append("\0" + keys["abstract"])
    if not out:
        raise BusError(f"no unix:path= or unix:abstract= in the bus address {address!r}")
    return out


def _unescape(value):
    raw = value.encode()
    out = bytearray()
    k = 0
    while k < len(raw):
        if raw[k] == 0x25 and k + 2 < len(raw):  # %XX
            try:
                out.append(int(raw[k + 1:k + 3], 16))
                k += 3
                continue
            except ValueError:
                pass
        out.append(raw[k])
        k += 1
    return out.decode(errors="surrogateescape")


def unreachable(errors):
    """The BusError when no address took the connection: ``errors`` are
    (address, OSError) of each one tried."""
    return BusError("cannot connect to the bus: " + "; ".join(
        f"{addr.replace(chr(0), '@')}: {e.strerror or e}" for addr, e in errors))


# -- authentication and Hello ------------------------------------------------------------

def greeting(*calls):
    """The first bytes to send: ``AUTH EXTERNAL`` with our euid, ``BEGIN``,
    ``Hello`` (serial 1), then ``calls`` (``messages.Call``, numbered 2, 3,
    ...: the bus reads them in order, after Hello, so a connection for one
    call needs one round trip in all)."""
    uid = str(os.geteuid()).encode().hex().encode()
    return b"".join((b"\0AUTH EXTERNAL ", uid, b"\r\nBEGIN\r\n", wire.encode(HELLO),
                     *(encode(call, serial) for serial, call in enumerate(calls, 2))))


def auth_answer(received):
    """What the bytes ``received`` so far say of the authentication: None
    while the server's line is incomplete; the bytes after its ``OK`` line
    (the start of the message stream) once it is there.  BusError when the
    server refused, or answered with something that is not D-Bus."""
    if b"\r\n" not in received:
        if len(received) > MAX_AUTH_LINE:
            raise BusError("the bus answered authentication with something that is not D-Bus")
        return None
    answer, _, rest = bytes(received).partition(b"\r\n")
    if not answer.startswith(b"OK "):
        raise BusError(f"the bus refused authentication: {answer[:200].decode(errors='replace')}")
    return rest


def read_hello(msg):
    """Our unique name, from the answer to Hello; BusError if the bus refused."""
    if msg.type != wire.METHOD_RETURN or msg.signature != "s":
        raise BusError(f"the bus refused Hello: {msg.error_name}: {unwrap(msg.body)[:1]}")
    return msg.body[0]


# -- plain data <-> wire messages ------------------------------------------------------------

def unwrap(value):
    """A decoded value with its variants replaced by their values (what
    ``messages`` reads: the signature of a variant is the codec's concern)."""
    t = type(value)
    if t is str or t is int or t is bool or t is float or t is bytes:
        return value
    if t is wire.Variant:
        return unwrap(value.value)
    if t is list or t is tuple:
        return t(unwrap(v) for v in value)
    if t is dict:
        return {k: unwrap(v) for k, v in value.items()}
    return value


def outgoing(out, serial):
    """The wire message of a ``messages.Call`` or ``messages.Signal``."""
    if isinstance(out, m.Signal):
        return wire.Message(wire.SIGNAL, serial, 0, out.path, out.interface, out.member,
                            destination=out.destination, signature=out.signature, body=tuple(out.body))
    flags = ((wire.ALLOW_INTERACTIVE_AUTHORIZATION if out.allow_interactive else 0)
             | (wire.NO_REPLY_EXPECTED if out.no_reply else 0))
    return wire.Message(wire.METHOD_CALL, serial, flags, out.path, out.interface, out.member,
                        destination=out.destination, signature=out.signature, body=tuple(out.body))


def encode(out, serial):
    """The bytes of a ``messages.Call`` or ``Signal`` numbered ``serial``;
    WireError when it cannot be sent."""
    return wire.encode(outgoing(out, serial))


def parser():
    """A reader of the message stream after authentication (``wire.Parser``:
    at most ``wire.MAX_INCOMING`` of any one message kept)."""
    return wire.Parser()


def is_reply(msg):
    return msg.type == wire.METHOD_RETURN or msg.type == wire.ERROR


def answer(msg):
    """A received reply as its caller takes it: one too long to have been
    read (``oversized``) is no answer, so an error stands in its place."""
    if not msg.oversized:
        return msg
    return wire.Message(wire.ERROR, msg.serial, 0, error_name=m.LIMITS_EXCEEDED, reply_serial=msg.reply_serial,
                        sender=msg.sender, signature="s", body=(f"a reply of {msg.oversized} bytes is refused",))


def reply(msg):
    """The ``messages.Reply`` of a received reply (after ``answer``)."""
    error = msg.error_name if msg.type == wire.ERROR else None
    return m.Reply(msg.sender, error, msg.signature, unwrap(msg.body))


def received_signal(msg):
    """The ``messages.Signal`` of a received signal, or None when it is a
    signal we did not read (oversized), or no signal."""
    if msg.type != wire.SIGNAL or msg.oversized:
        return None
    return m.Signal(msg.destination, msg.path, msg.interface, msg.member, msg.signature, unwrap(msg.body),
                    sender=msg.sender)


def addressed_elsewhere(msg, unique_name, names=()):
    """Whether ``msg`` is a call or reply for another connection (one that
    eavesdrops sees others' calls and replies): never answered, never taken
    for the answer to ours.  Before Hello's reply we have no name: the bus
    addresses that reply to the one it has just given us."""
    return (msg.type != wire.SIGNAL and msg.destination is not None and unique_name is not None
            and msg.destination != unique_name and msg.destination not in names)
