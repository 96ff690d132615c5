"""The D-Bus wire format, Sans-I/O: messages to bytes and bytes to messages.

What it does:

* ``encode(Message) -> bytes``: one message, little-endian, protocol
  version 1; every header field and every body value is checked against the
  specification first, so nothing a bus would refuse (and disconnect us for)
  is ever produced.
* ``decode(bytes) -> Message``: exactly one whole message, in either byte
  order, validated as strictly as dbus-daemon (libdbus) validates what it
  receives -- and never more strictly, because the bus forwards to us
  whatever it accepted from any local user, and a message we refused would
  cost us the connection (see "Strictness" below).
* ``Parser``: frames a byte stream into messages with bounded memory: at
  most ``max_message`` bytes of any one message are kept, the body of a
  longer one is dropped unread as it streams in and only its header is
  decoded and reported (``Message.oversized``).
* ``check_signature`` and ``check_object_path``/``check_interface``/
  ``check_member``/``check_bus_name``/``check_error_name``: the syntax
  rules of the specification.

What it does not do: any I/O, authentication (the SASL exchange before
``BEGIN`` is the caller's), serial numbers or matching replies to calls,
unix file-descriptor passing (a message announcing fds is refused; ``h``
values are plain ints), or producing big-endian messages (they are decoded
only).

Every failure on input is a ``WireError`` (a ``ValueError``); no other
exception escapes ``decode`` or ``Parser.feed`` whatever the bytes are.
Every length read from the wire is checked against the bytes actually
present before anything is sliced or allocated, so a hostile length costs
neither memory nor time; error messages name offsets and type codes, never
echo the hostile bytes.

Strictness.  Where libdbus accepts more than the letter of the
specification, decoding accepts it too: an array depth limit that counts
only consecutive ``a`` type codes in a signature, and a nesting limit of 64
that applies to values actually present (``_parse`` and ``_DEPTH``).
Encoding uses the specification's stricter rules (``check_signature``), so
what we send is valid for every implementation.  Unknown message types are
refused by ``decode`` and skipped by ``Parser`` (the specification says to
ignore them; refusing them would let anyone end our connection).
"""

import re
import struct
from functools import lru_cache

from .records import frozen

__all__ = [
    "METHOD_CALL", "METHOD_RETURN", "ERROR", "SIGNAL",
    "NO_REPLY_EXPECTED", "NO_AUTO_START", "ALLOW_INTERACTIVE_AUTHORIZATION",
    "MAX_INCOMING", "MAX_HEADER", "CHUNK",
    "WireError", "Variant", "Message", "encode", "decode", "Parser",
    "check_signature", "check_object_path", "check_interface", "check_member",
    "check_bus_name", "check_error_name",
]

METHOD_CALL, METHOD_RETURN, ERROR, SIGNAL = 1, 2, 3, 4
NO_REPLY_EXPECTED, NO_AUTO_START, ALLOW_INTERACTIVE_AUTHORIZATION = 0x1, 0x2, 0x4

# Our own bounds.  A message to or from locald-admin is a few hundred bytes;
# the longest legitimate ones (introspection data, a list of names) stay far
# below 1 MiB.
MAX_INCOMING = 1 << 20  # longest message decoded whole
MAX_HEADER = 64 << 10   # longest header fields read of a longer (oversized) message
CHUNK = 64 << 10        # most bytes Parser.want() ever asks for at once

# The specification's bounds.
_MAX_MESSAGE = 1 << 27    # a whole message: 128 MiB
_MAX_ARRAY = 1 << 26      # the data of one array: 64 MiB
_MAX_SIGNATURE = 255      # bytes of a signature
_MAX_NAME = 255           # bytes of an interface, member, error or bus name
_MAX_NESTING = 32         # array codes, and struct parentheses, nested in a signature
_DEPTH = 64               # containers around any value present in a message (libdbus: 2 * 32)


class WireError(ValueError):
    """A byte stream or message that is not valid D-Bus, or a value that
    cannot be encoded as the given signature."""


@frozen
class Variant:
    """A variant value: its signature (one complete type) and its value."""
    signature: str
    value: object


_MESSAGE_FIELDS = ("type", "serial", "flags", "path", "interface", "member", "error_name", "reply_serial",
                   "destination", "sender", "signature", "body", "oversized")


class Message:
    """One D-Bus message.  ``oversized`` > 0: a message of that many bytes
    whose body was dropped unread (only its header was decoded; ``body`` is
    ``()`` and ``signature`` is the one its header announced).

    A plain class with slots (what ``@dataclass(slots=True)`` made of it,
    without importing dataclasses): the fields in this order, positionally
    or by name; equal when every field is; not hashable (it is mutable)."""
    __slots__ = _MESSAGE_FIELDS
    __match_args__ = _MESSAGE_FIELDS
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, type: int, serial: int = 0, flags: int = 0, path: str | None = None,
                 interface: str | None = None, member: str | None = None, error_name: str | None = None,
                 reply_serial: int | None = None, destination: str | None = None, sender: str | None = None,
                 signature: str = "", body: tuple = (), oversized: int = 0) -> None:
        (self.type, self.serial, self.flags, self.path, self.interface, self.member, self.error_name,
         self.reply_serial, self.destination, self.sender, self.signature, self.body, self.oversized) = (
            type, serial, flags, path, interface, member, error_name, reply_serial, destination, sender, signature,
            body, oversized)

    def _values(self):
        return tuple(getattr(self, name) for name in _MESSAGE_FIELDS)

    def __eq__(self, other):
        if other.__class__ is self.__class__:
            return self._values() == other._values()
        return NotImplemented

    def __repr__(self):
        return f"Message({', '.join(f'{name}={getattr(self, name)!r}' for name in _MESSAGE_FIELDS)})"


# -- names ------------------------------------------------------------------------------------

_PATH_RE = re.compile(r"/|(?:/[A-Za-z0-9_]+)+")
_MEMBER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INTERFACE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+")
_UNIQUE_RE = re.compile(r":[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)+")
_WELL_KNOWN_RE = re.compile(r"[A-Za-z_-][A-Za-z0-9_-]*(?:\.[A-Za-z_-][A-Za-z0-9_-]*)+")
# Reserved by the specification for a library's own use: a bus disconnects
# whoever sends them, so we never do (receiving them is the bus's concern).
_LOCAL_PATH = "/org/freedesktop/DBus/Local"
_LOCAL_INTERFACE = "org.freedesktop.DBus.Local"


def _short(value):
    """``value``'s repr, cut short (error messages never carry much of a value)."""
    r = repr(value)
    return r if len(r) <= 60 else r[:57] + "..."


def check_object_path(p: str) -> None:
    """WireError unless ``p`` is an object path: ``/``, or ``/``-separated
    non-empty elements of ``[A-Za-z0-9_]``."""
    if type(p) is not str or _PATH_RE.fullmatch(p) is None:
        raise WireError(f"not an object path: {_short(p)}")


def check_member(name: str) -> None:
    """WireError unless ``name`` is a member (method or signal) name."""
    if type(name) is not str or len(name) > _MAX_NAME or _MEMBER_RE.fullmatch(name) is None:
        raise WireError(f"not a member name: {_short(name)}")


def check_interface(name: str) -> None:
    """WireError unless ``name`` is an interface name: two or more
    ``.``-separated elements of ``[A-Za-z0-9_]`` not starting with a digit,
    at most 255 bytes."""
    if type(name) is not str or len(name) > _MAX_NAME or _INTERFACE_RE.fullmatch(name) is None:
        raise WireError(f"not an interface name: {_short(name)}")


def check_error_name(name: str) -> None:
    """WireError unless ``name`` is an error name (an interface name's rules)."""
    if type(name) is not str or len(name) > _MAX_NAME or _INTERFACE_RE.fullmatch(name) is None:
        raise WireError(f"not an error name: {_short(name)}")


def check_bus_name(name: str) -> None:
    """WireError unless ``name`` is a unique (``:1.42``) or well-known bus
    name: two or more elements of ``[A-Za-z0-9_-]`` (only a unique name's
    may start with a digit), at most 255 bytes."""
    if type(name) is not str or len(name) > _MAX_NAME or (
            (_UNIQUE_RE if name[:1] == ":" else _WELL_KNOWN_RE).fullmatch(name) is None):
        raise WireError(f"not a bus name: {_short(name)}")


# -- signatures -------------------------------------------------------------------------------
#
# A parsed complete type is the type code itself for a basic type or a
# variant ("u", "s", "v", ...), ("a", element) for an array, ("(", (field,
# ...)) for a struct and ("{", key, value) for a dict entry.

# Fixed-size types: struct format (size == alignment).  Booleans are u32 on
# the wire; h (a unix fd) is its u32 index.
_FIXED = {"y": "B", "b": "I", "n": "h", "q": "H", "i": "i", "u": "I", "x": "q", "t": "Q", "d": "d", "h": "I"}
_BASIC = frozenset("ybnqiuxtdhsog")
_ALIGN = {"y": 1, "b": 4, "n": 2, "q": 2, "i": 4, "u": 4, "x": 8, "t": 8, "d": 8, "h": 4,
          "s": 4, "o": 4, "g": 1, "v": 1, "a": 4, "(": 8, "{": 8}
_INT_RANGE = {"y": (0, 0xFF), "n": (-0x8000, 0x7FFF), "q": (0, 0xFFFF), "i": (-0x80000000, 0x7FFFFFFF),
              "u": (0, 0xFFFFFFFF), "x": (-1 << 63, (1 << 63) - 1), "t": (0, (1 << 64) - 1), "h": (0, 0xFFFFFFFF)}


def _parse(sig, strict):
    """The complete types of ``sig``, a tuple; WireError if it is not a
    signature.  ``strict``: the specification's depth limits (32 arrays and
    32 structs or dict entries, nested in any way); otherwise libdbus's,
    which count only consecutive array codes and dict entries apart from
    structs."""
    if type(sig) is not str:
        raise WireError(f"a signature must be a str, not {type(sig).__name__}")
    return _parse_str(sig, strict)


@lru_cache(maxsize=512)  # bounded: a peer may send many distinct signatures
def _parse_str(sig, strict):
    if len(sig) > _MAX_SIGNATURE:
        raise WireError(f"signature longer than {_MAX_SIGNATURE} bytes")
    n = len(sig)

    # Recursion is bounded: every level consumes a character (<= 255), and the
    # depth counters stop it at 32 + 32 + 32 in any case.
    def one(i, arrays, run, structs, entries):
        if i >= n:
            raise WireError(f"signature {sig!r} ends inside a type")
        c = sig[i]
        if c in _BASIC or c == "v":
            return c, i + 1
        if c == "a":
            if (arrays if strict else run) >= _MAX_NESTING:
                raise WireError(f"signature {sig!r} nests arrays deeper than {_MAX_NESTING}")
            if i + 1 < n and sig[i + 1] == "{":
                if (structs if strict else entries) >= _MAX_NESTING:
                    raise WireError(f"signature {sig!r} nests dict entries deeper than {_MAX_NESTING}")
                if i + 2 >= n or sig[i + 2] not in _BASIC:
                    raise WireError(f"signature {sig!r}: a dict entry's key must be a basic type")
                value, j = one(i + 3, arrays + 1, 0, structs + 1 if strict else structs, entries + 1)
                if j >= n or sig[j] != "}":
                    raise WireError(f"signature {sig!r}: a dict entry must hold exactly a key and a value")
                return ("a", ("{", sig[i + 2], value)), j + 1
            element, j = one(i + 1, arrays + 1, run + 1, structs, entries)
            return ("a", element), j
        if c == "(":
            if structs >= _MAX_NESTING:
                raise WireError(f"signature {sig!r} nests structs deeper than {_MAX_NESTING}")
            fields = []
            j = i + 1
            while j < n and sig[j] != ")":
                field, j = one(j, arrays, 0, structs + 1, entries)
                fields.append(field)
            if j >= n:
                raise WireError(f"signature {sig!r}: unclosed struct")
            if not fields:
                raise WireError(f"signature {sig!r}: empty struct")
            return ("(", tuple(fields)), j + 1
        if c == "{":
            raise WireError(f"signature {sig!r}: a dict entry outside an array")
        raise WireError(f"signature {sig!r}: invalid type code {c!r}")

    types = []
    i = 0
    while i < n:
        t, i = one(i, 0, 0, 0, 0)
        types.append(t)
    return tuple(types)


def check_signature(sig: str) -> None:
    """WireError unless ``sig`` is a valid signature by the specification:
    at most 255 bytes of complete types, at most 32 arrays and 32 structs
    (dict entries counted as structs) nested, dict entries only as array
    elements and with a basic key type."""
    _parse(sig, True)


def _one_type(sig, strict):
    types = _parse(sig, strict)
    if len(types) != 1:
        raise WireError(f"variant signature {sig!r} is not one complete type")
    return types[0]


def _align_of(t):
    return _ALIGN[t if t.__class__ is str else t[0]]


# -- byte orders ------------------------------------------------------------------------------

class _Order:
    """The precompiled structs of one byte order."""
    __slots__ = ("fixed", "u32", "head")

    def __init__(self, prefix):
        self.fixed = {code: struct.Struct(prefix + fmt) for code, fmt in _FIXED.items()}
        self.u32 = self.fixed["u"]
        # byte order, type, flags, version, body length, serial, fields length
        self.head = struct.Struct(prefix + "cBBBIII")


_LITTLE, _BIG = _Order("<"), _Order(">")
_ORDERS = {ord("l"): _LITTLE, ord("B"): _BIG}
_ZEROS = [bytes(k) for k in range(8)]


# -- decoding ---------------------------------------------------------------------------------
#
# ``_read(buf, pos, end, t, o, level)`` reads one value of type ``t`` at
# ``pos`` and returns it with the position after it; it never reads at or
# beyond ``end`` (the end of the enclosing array, or of the message), which
# is how every declared length is held to the bytes present.  ``level``
# counts the containers around the value, as libdbus does.

def _pad(buf, pos, align, end):
    """The position after the padding to ``align`` at ``pos``: the padding
    must be present and zero (a non-zero pad could smuggle data past a
    validator that skips padding)."""
    new = (pos + align - 1) & -align
    if new != pos:
        if new > end:
            raise WireError(f"message truncated at offset {pos}")
        if buf[pos:new] != _ZEROS[new - pos]:
            raise WireError(f"non-zero alignment padding at offset {pos}")
    return new


def _string(buf, pos, length, end):
    """The string of ``length`` bytes at ``pos`` and the position after its NUL."""
    stop = pos + length
    if stop >= end:  # the terminating NUL must be present too
        raise WireError(f"string at offset {pos} runs past its container")
    if buf[stop] != 0:
        raise WireError(f"string at offset {pos} is not NUL-terminated")
    if buf.find(b"\0", pos, stop) >= 0:
        raise WireError(f"string at offset {pos} contains a NUL")
    try:
        return str(buf[pos:stop], "utf-8"), stop + 1
    except UnicodeDecodeError:
        raise WireError(f"string at offset {pos} is not valid UTF-8") from None


def _read_signature(buf, pos, end):
    if pos >= end:
        raise WireError(f"message truncated at offset {pos}")
    return _string(buf, pos + 1, buf[pos], end)


def _read(buf, pos, end, t, o, level):
    if t.__class__ is str:
        if t == "s" or t == "o":  # the commonest first
            if pos & 3:
                pos = _pad(buf, pos, 4, end)
            if pos + 4 > end:
                raise WireError(f"message truncated at offset {pos}")
            value, stop = _string(buf, pos + 4, o.u32.unpack_from(buf, pos)[0], end)
            if t == "o" and _PATH_RE.fullmatch(value) is None:
                raise WireError(f"object path at offset {pos} is not valid")
            return value, stop
        f = o.fixed.get(t)
        if f is not None:
            size = f.size
            if pos & (size - 1):
                pos = _pad(buf, pos, size, end)
            stop = pos + size
            if stop > end:
                raise WireError(f"message truncated at offset {pos}")
            value = f.unpack_from(buf, pos)[0]
            if t == "b":
                if value > 1:
                    raise WireError(f"boolean at offset {pos} is neither 0 nor 1")
                value = value == 1
            return value, stop
        if t == "g":
            value, stop = _read_signature(buf, pos, end)
            _parse(value, False)
            return value, stop
        # a variant: its signature, then its value
        if level >= _DEPTH:
            raise WireError(f"values nested deeper than {_DEPTH} at offset {pos}")
        sig, pos = _read_signature(buf, pos, end)
        inner = _one_type(sig, False)
        value, pos = _read(buf, pos, end, inner, o, level + 1)
        return Variant(sig, value), pos

    kind = t[0]
    if kind == "a":
        pos = _pad(buf, pos, 4, end)
        if pos + 4 > end:
            raise WireError(f"message truncated at offset {pos}")
        length = o.u32.unpack_from(buf, pos)[0]
        element = t[1]
        # The padding to the first element is there even for an empty array.
        start = _pad(buf, pos + 4, _align_of(element), end)
        stop = start + length
        if stop > end:  # checked before anything is sliced or looped over
            raise WireError(f"array at offset {pos} runs past its container")
        if length > _MAX_ARRAY:
            raise WireError(f"array at offset {pos} longer than 64 MiB")
        if element == "y":
            if buf.__class__ is bytes:
                return buf[start:stop], stop
            with memoryview(buf) as view:  # one copy, not two (a bytearray slice, then bytes)
                return bytes(view[start:stop]), stop
        f = o.fixed.get(element) if element.__class__ is str else None
        if f is not None:  # fixed-size elements: one unpack, no recursion (as libdbus)
            if length % f.size:
                raise WireError(f"array at offset {pos} does not end on an element")
            items = list(struct.unpack_from(f.format[0] + str(length // f.size) + f.format[1:], buf, start))
            if element == "b":
                if any(v > 1 for v in items):
                    raise WireError(f"boolean in array at offset {pos} is neither 0 nor 1")
                items = [v == 1 for v in items]
            return items, stop
        if length and level >= _DEPTH:
            raise WireError(f"values nested deeper than {_DEPTH} at offset {pos}")
        items = []
        pos = start
        if element.__class__ is tuple and element[0] == "{":
            # A dict entry is an 8-aligned (key, value) pair.  Repeated keys
            # are not invalid D-Bus: the last one wins, as in dict().
            _, key_type, value_type = element
            result = {}
            while pos < stop:
                if pos & 7:
                    pos = _pad(buf, pos, 8, stop)
                if level + 1 >= _DEPTH:
                    raise WireError(f"values nested deeper than {_DEPTH} at offset {pos}")
                key, pos = _read(buf, pos, stop, key_type, o, level + 2)
                result[key], pos = _read(buf, pos, stop, value_type, o, level + 2)
            return result, stop
        while pos < stop:
            value, pos = _read(buf, pos, stop, element, o, level + 1)
            items.append(value)
        return items, stop  # every read stays below stop: pos == stop here

    # a struct: 8-aligned fields
    if level >= _DEPTH:
        raise WireError(f"values nested deeper than {_DEPTH} at offset {pos}")
    if pos & 7:
        pos = _pad(buf, pos, 8, end)
    values = []
    for field in t[1]:
        value, pos = _read(buf, pos, end, field, o, level + 1)
        values.append(value)
    return tuple(values), pos


# Header fields: code -> (Message attribute, type code, name check).
_FIELDS = {
    1: ("path", "o", None),
    2: ("interface", "s", check_interface),
    3: ("member", "s", check_member),
    4: ("error_name", "s", check_error_name),
    5: ("reply_serial", "u", None),
    6: ("destination", "s", check_bus_name),
    7: ("sender", "s", check_bus_name),
    8: ("signature", "g", None),
    9: ("unix_fds", "u", None),
}
_REQUIRED = {METHOD_CALL: ("path", "member"), METHOD_RETURN: ("reply_serial",),
             ERROR: ("error_name", "reply_serial"), SIGNAL: ("path", "interface", "member")}


def _frame(buf):
    """The fixed 16 bytes at the start of ``buf``: (byte order, type, flags,
    serial, fields length, body offset, body length, total length)."""
    o = _ORDERS.get(buf[0])
    if o is None:
        raise WireError("not a D-Bus message: the first byte is neither 'l' nor 'B'")
    _, mtype, flags, version, body_len, serial, fields_len = o.head.unpack_from(buf, 0)
    if version != 1:
        raise WireError(f"protocol version {version}, not 1")
    if mtype == 0:
        raise WireError("message type 0 is invalid")
    if fields_len > _MAX_ARRAY:
        raise WireError("header fields longer than 64 MiB")
    body_at = (16 + fields_len + 7) & -8
    total = body_at + body_len
    if total > _MAX_MESSAGE:  # also bounds what Parser ever drops
        raise WireError(f"message of {total} bytes is longer than 128 MiB")
    return o, mtype, flags, serial, fields_len, body_at, body_len, total


def _fields(buf, end, o):
    """The header fields from offset 16 to ``end`` (present in ``buf``):
    {Message attribute: value}, each known field checked (its type, its
    name rules, at most once); unknown ones read and passed over."""
    values = {}
    pos = 16  # first field: 8-aligned already
    while pos < end:
        # one (yv) struct: code, signature of the value, the value
        if pos & 7:
            pos = _pad(buf, pos, 8, end)
        if pos + 4 <= end and buf[pos + 1] == 1 and buf[pos + 3] == 0:
            # the usual case, read at once: code, signature of one type code, NUL
            code, sig = buf[pos], chr(buf[pos + 2])
            pos += 4
        else:
            if pos + 2 > end:
                raise WireError(f"header field at offset {pos} truncated")
            code = buf[pos]
            sig, pos = _read_signature(buf, pos + 1, end)
        known = _FIELDS.get(code)
        if known is not None:
            name, expected, check = known
            if sig != expected:
                raise WireError(f"header field {code} has type {sig!r}, not {expected!r}")
            if name in values:
                raise WireError(f"header field {code} appears twice")
            value, pos = _read(buf, pos, end, expected, o, 3)
            if check is not None:
                check(value)
            values[name] = value
        elif code == 0:
            raise WireError("header field code 0 is invalid")
        else:  # unknown fields are ignored, but must be well-formed
            _, pos = _read(buf, pos, end, _one_type(sig, False), o, 3)
    return values


def _header(buf, frame, reader):
    """A Message from the header of the message in ``buf`` (its fixed part
    described by ``frame``, its fields present in full); body not read.
    ``reader``: (read, fields), Python's (``_read``, ``_fields``) or the
    compiled ones."""
    o, mtype, flags, serial, fields_len, body_at, body_len, total = frame
    if not METHOD_CALL <= mtype <= SIGNAL:
        raise WireError(f"unknown message type {mtype}")
    if serial == 0:
        raise WireError("serial 0 is invalid")
    end = 16 + fields_len
    if len(buf) < body_at:
        raise WireError("message truncated in its header")
    values = reader[1](buf, end, o)
    if buf[end:body_at] != _ZEROS[body_at - end]:
        raise WireError(f"non-zero padding after the header at offset {end}")
    if values.pop("unix_fds", 0):
        raise WireError("message carries unix fds, which this connection never accepts")
    if values.get("reply_serial") == 0:
        raise WireError("reply serial 0 is invalid")
    for name in _REQUIRED[mtype]:
        if name not in values:
            raise WireError(f"message of type {mtype} without its {name.replace('_', ' ')}")
    if body_len and not values.get("signature"):
        raise WireError("a body without a signature")
    return Message(mtype, serial, flags, **values)


def _decode(buf, frame, reader):
    msg = _header(buf, frame, reader)
    read = reader[0]
    o, body_at, total = frame[0], frame[5], frame[7]
    if msg.signature:
        body = []
        pos = body_at
        for t in _parse(msg.signature, False):
            value, pos = read(buf, pos, total, t, o, 0)
            body.append(value)
        if pos != total:
            raise WireError(f"body longer than its signature {msg.signature!r} uses")
        msg.body = tuple(body)
    return msg


def decode(data: bytes | bytearray | memoryview, *, compiled: bool | None = None) -> Message:
    """The Message in ``data``, which must be exactly one whole message;
    WireError if it is not valid D-Bus (or announces unix fds, or is of a
    type other than the four known).  ``compiled``: None reads values with
    the compiled reader when it is built, False with the Python one (the
    reference), True with the compiled one (ValueError if it is not built)."""
    reader = _reader(compiled)
    buf = data if type(data) is bytes or type(data) is bytearray else bytes(data)
    if len(buf) < 16:
        raise WireError(f"{len(buf)} bytes are not a message")
    frame = _frame(buf)
    if len(buf) != frame[7]:
        raise WireError(f"{len(buf)} bytes, but the header says the message is {frame[7]}")
    return _decode(buf, frame, reader)


# -- the compiled reader ----------------------------------------------------------------------
#
# ``_cwire.read`` and ``_cwire.fields`` are ``_read`` and ``_fields`` in C,
# decision for decision and message for message (the differential tests in
# tests/test_wire.py hold them to it); the mechanism
# reads five messages per request, and reading them in Python cost about
# 45 us of CPU per request.  Optional: without a C compiler at install time
# the Python reader is used.

def _load_compiled():
    try:
        from . import _cwire
    except ImportError:
        return None
    _cwire.setup(WireError, Variant, _one_type, _parse, _BIG, _FIELDS)
    return _cwire


_cwire = _load_compiled()


def compiled_reader():
    """The compiled reader's module (``_cwire``), or None when it is not built."""
    return _cwire


def _reader(compiled):
    if compiled is None:
        return _READER
    if not compiled:
        return _PYTHON_READER
    if _cwire is None:
        raise ValueError("the compiled reader (locald_admin._cwire) is not built")
    return _cwire.read, _cwire.fields


_PYTHON_READER = (_read, _fields)
_READER = (_cwire.read, _cwire.fields) if _cwire is not None else _PYTHON_READER


# -- encoding ---------------------------------------------------------------------------------
#
# ``_write(out, t, v, level)`` appends value ``v`` of type ``t`` to ``out``,
# a bytearray that starts 8-aligned in the message.

_LE = _LITTLE.fixed
_U32 = _LITTLE.u32


def _write(out, t, v, level):
    if t.__class__ is str:
        if t == "s" or t == "o":  # the commonest first
            if type(v) is not str:
                raise WireError(f"{t!r} value must be a str, not {_short(v)}")
            if t == "o":
                check_object_path(v)
            try:
                raw = v.encode("utf-8")
            except UnicodeEncodeError:
                raise WireError(f"string {_short(v)} cannot be UTF-8 (a lone surrogate)") from None
            if b"\0" in raw:
                raise WireError(f"string {_short(v)} contains a NUL")
            if len(out) & 3:
                out += _ZEROS[-len(out) & 3]
            out += _U32.pack(len(raw))
            out += raw
            out.append(0)
            return
        f = _LE.get(t)
        if f is not None:
            tv = type(v)
            if t == "d":
                if tv is not float and (tv is bool or not isinstance(v, (int, float))):
                    raise WireError(f"'d' value must be a float, not {_short(v)}")
                try:
                    v = float(v)
                except OverflowError:
                    raise WireError(f"'d' value {_short(v)} out of range") from None
            elif t == "b":
                if tv is not bool and not (isinstance(v, int) and v in (0, 1)):  # 0, 1: False, True
                    raise WireError(f"'b' value must be a bool, not {_short(v)}")
            else:
                if tv is bool or not isinstance(v, int):
                    raise WireError(f"{t!r} value must be an int, not {_short(v)}")
                low, high = _INT_RANGE[t]
                if not low <= v <= high:
                    raise WireError(f"{t!r} value {v} out of range")
            size = f.size
            if len(out) & (size - 1):
                out += _ZEROS[-len(out) & (size - 1)]
            out += f.pack(v)
            return
        if t == "g":
            check_signature(v)
            out.append(len(v))
            out += v.encode("ascii")
            out.append(0)
            return
        # a variant
        if type(v) is not Variant:
            raise WireError(f"'v' value must be a Variant, not {_short(v)}")
        inner = _one_type(v.signature, True)
        if level >= _DEPTH:
            raise WireError(f"values nested deeper than {_DEPTH}")
        out.append(len(v.signature))
        out += v.signature.encode("ascii")
        out.append(0)
        _write(out, inner, v.value, level + 1)
        return

    kind = t[0]
    if kind == "a":
        element = t[1]
        if len(out) & 3:
            out += _ZEROS[-len(out) & 3]
        at = len(out)
        out += b"\0\0\0\0"  # the length, set below
        align = _align_of(element)
        if len(out) & (align - 1):
            out += _ZEROS[-len(out) & (align - 1)]
        start = len(out)
        if element.__class__ is tuple and element[0] == "{":
            if not isinstance(v, dict):
                raise WireError(f"{'a{'}...{'}'} value must be a dict, not {_short(v)}")
            if v and level + 1 >= _DEPTH:
                raise WireError(f"values nested deeper than {_DEPTH}")
            _, key_type, value_type = element
            for key, value in v.items():
                if len(out) & 7:
                    out += _ZEROS[-len(out) & 7]
                _write(out, key_type, key, level + 2)
                _write(out, value_type, value, level + 2)
        elif element == "y" and isinstance(v, (bytes, bytearray)):
            out += v
        else:
            if not isinstance(v, (list, tuple)):
                raise WireError(f"array value must be a list, not {_short(v)}")
            if v and level >= _DEPTH and not (element.__class__ is str and element in _FIXED):
                raise WireError(f"values nested deeper than {_DEPTH}")
            for item in v:
                _write(out, element, item, level + 1)
        length = len(out) - start
        if length > _MAX_ARRAY:
            raise WireError("array longer than 64 MiB")
        _U32.pack_into(out, at, length)
        return

    # a struct
    fields = t[1]
    if not isinstance(v, (tuple, list)) or len(v) != len(fields):
        raise WireError(f"struct value must be a tuple of {len(fields)}, not {_short(v)}")
    if level >= _DEPTH:
        raise WireError(f"values nested deeper than {_DEPTH}")
    if len(out) & 7:
        out += _ZEROS[-len(out) & 7]
    for field, value in zip(fields, v):
        _write(out, field, value, level + 1)


def _string_field(out, code, type_code, value):
    """Append header field ``code`` holding string ``value`` (a checked name)."""
    raw = value.encode("ascii")  # checked: names and paths are ASCII
    if len(out) & 7:
        out += _ZEROS[-len(out) & 7]
    # code, signature (length 1, type, NUL) fills 4 bytes: the u32 after it is aligned
    out += bytes((code, 1, ord(type_code), 0))
    out += _U32.pack(len(raw))
    out += raw
    out.append(0)


def encode(msg: Message) -> bytes:
    """The bytes of ``msg`` (little-endian, protocol version 1); WireError
    naming what is wrong if any field or value is not valid."""
    mtype = msg.type
    if mtype not in _REQUIRED:
        raise WireError(f"unknown message type {_short(mtype)}")
    if not isinstance(msg.serial, int) or not 0 < msg.serial <= 0xFFFFFFFF:
        raise WireError(f"serial {_short(msg.serial)} is not in 1..2**32-1")
    if not isinstance(msg.flags, int) or not 0 <= msg.flags <= 0xFF:
        raise WireError(f"flags {_short(msg.flags)} are not a byte")
    if msg.oversized:
        raise WireError("a header-only (oversized) message cannot be encoded")
    for name in _REQUIRED[mtype]:
        if getattr(msg, name) is None:
            raise WireError(f"message of type {mtype} without its {name.replace('_', ' ')}")

    body = bytearray()
    types = _parse(msg.signature, True)
    values = msg.body
    if not isinstance(values, (tuple, list)) or len(values) != len(types):
        raise WireError(f"body {_short(values)} does not hold the {len(types)} values of {msg.signature!r}")
    for t, v in zip(types, values):
        _write(body, t, v, 0)

    out = bytearray(16)
    if msg.path is not None:
        check_object_path(msg.path)
        if msg.path == _LOCAL_PATH:
            raise WireError(f"{_LOCAL_PATH} is reserved")
        _string_field(out, 1, "o", msg.path)
    if msg.interface is not None:
        check_interface(msg.interface)
        if msg.interface == _LOCAL_INTERFACE:
            raise WireError(f"{_LOCAL_INTERFACE} is reserved")
        _string_field(out, 2, "s", msg.interface)
    if msg.member is not None:
        check_member(msg.member)
        _string_field(out, 3, "s", msg.member)
    if msg.error_name is not None:
        check_error_name(msg.error_name)
        _string_field(out, 4, "s", msg.error_name)
    if msg.reply_serial is not None:
        rs = msg.reply_serial
        if not isinstance(rs, int) or not 0 < rs <= 0xFFFFFFFF:
            raise WireError(f"reply serial {_short(rs)} is not in 1..2**32-1")
        if len(out) & 7:
            out += _ZEROS[-len(out) & 7]
        out += b"\x05\x01u\x00"
        out += _U32.pack(rs)
    if msg.destination is not None:
        check_bus_name(msg.destination)
        _string_field(out, 6, "s", msg.destination)
    if msg.sender is not None:
        check_bus_name(msg.sender)
        _string_field(out, 7, "s", msg.sender)
    if msg.signature:
        if len(out) & 7:
            out += _ZEROS[-len(out) & 7]
        out += bytes((8, 1, ord("g"), 0, len(msg.signature)))
        out += msg.signature.encode("ascii")
        out.append(0)
    fields_len = len(out) - 16
    if len(out) & 7:
        out += _ZEROS[-len(out) & 7]
    if len(out) + len(body) > _MAX_MESSAGE:
        raise WireError("message longer than 128 MiB")
    _LITTLE.head.pack_into(out, 0, b"l", mtype, msg.flags, 1, len(body), msg.serial, fields_len)
    out += body
    return bytes(out)


# -- framing ----------------------------------------------------------------------------------

_FIXED_PART, _WHOLE, _HEADER_ONLY = 0, 1, 2


class Parser:
    """Sans-I/O framing of a byte stream into messages.

    ``feed(data)`` returns the messages ``data`` completed, in order; read
    at most ``want()`` bytes at a time.  A message of at most
    ``max_message`` bytes is kept until whole, then decoded.  Of a longer
    one only the header fields are kept and decoded (if they are at most
    ``max_header`` bytes) and its body is dropped as it streams in; the
    header-only Message (``oversized`` = its length) is returned once its
    last byte has been dropped, so the order of messages is kept.  A longer
    message whose header fields are longer than ``max_header``, and a
    message of an unknown type, is dropped whole without trace.  Bytes kept:
    never more than ``max_message`` (plus the ``data`` being fed).

    A message whose framing is sound (its fixed header's lengths) but whose
    content is not valid D-Bus is passed over and counted (``invalid``,
    ``last_invalid``): the stream stays in step, and a peer (or whoever got
    a message past the bus) cannot end the connection with one bad message.

    ``feed`` raises WireError if the stream itself is not D-Bus (a fixed
    header that cannot be framed); the parser is then dead (every later
    ``feed`` raises), and messages that ``data`` completed before the error
    are lost with it.
    """

    def __init__(self, max_message: int = MAX_INCOMING, max_header: int = MAX_HEADER) -> None:
        if not 16 <= max_header <= max_message - 24:
            raise ValueError("need 16 <= max_header <= max_message - 24")
        self.max_message, self.max_header = max_message, max_header
        self._buf = bytearray()
        self._state, self._need, self._frame = _FIXED_PART, 16, None
        self._drop, self._pending = 0, None  # bytes still to drop; the Message to emit after
        self._error: str | None = None  # why the stream failed: the parser is dead
        self.invalid = 0  # whole messages passed over: framed soundly, content not valid D-Bus
        self.last_invalid: str | None = None  # why the last of them was

    def want(self) -> int:
        """How many bytes to try to read next (at most CHUNK; while dropping
        a body, at most what is left of it)."""
        return min(CHUNK, self._drop) if self._drop else CHUNK

    def feed(self, data: bytes | bytearray | memoryview) -> list[Message]:
        """Every message completed by ``data``, in order."""
        if self._error is not None:
            raise WireError(f"the stream failed earlier: {self._error}")
        out: list[Message] = []
        view = memoryview(data)
        try:
            while True:
                if not self._buf and not self._drop and len(view) >= 16:
                    # The common case, read straight from ``data``: a whole
                    # message at the start of it and nothing of another kept.
                    frame = _frame(view)
                    total = frame[7]
                    if frame[1] <= SIGNAL and total <= self.max_message and len(view) >= total:
                        try:
                            out.append(_decode(bytes(view[:total]), frame, _READER))
                        except WireError as e:
                            self._invalid(e)
                        view = view[total:]
                        continue
                if self._drop:
                    n = min(self._drop, len(view))
                    view, self._drop = view[n:], self._drop - n
                    if self._drop:
                        break
                    if self._pending is not None:
                        out.append(self._pending)
                        self._pending = None
                missing = self._need - len(self._buf)
                if missing > 0:
                    if not view:
                        break
                    piece = view[:missing]
                    self._buf += piece
                    view = view[len(piece):]
                    if self._buf[0] not in _ORDERS:  # refused at once, not after 16 bytes
                        raise WireError("not a D-Bus message: the first byte is neither 'l' nor 'B'")
                    if len(piece) < missing:
                        break
                self._step(out)
        except WireError as e:
            self._error = str(e)
            self._buf = bytearray()
            raise
        return out

    def _step(self, out):
        """``_buf`` holds the ``_need`` bytes the current state waited for."""
        buf = self._buf
        if self._state == _FIXED_PART:
            frame = _frame(buf)
            mtype, fields_len, body_at, total = frame[1], frame[4], frame[5], frame[7]
            if mtype > SIGNAL:
                self._drop = total - 16  # unknown types are to be ignored (specification)
                self._reset()
            elif total <= self.max_message:
                self._state, self._need, self._frame = _WHOLE, total, frame
            elif fields_len <= self.max_header:
                self._state, self._need, self._frame = _HEADER_ONLY, body_at, frame
            else:
                self._drop = total - 16
                self._reset()
            return
        # Decoded where it is: a copy would hold the message twice.  A
        # message whose framing is sound but whose content is not valid is
        # passed over, counted in ``invalid`` (the stream is still in step:
        # ending it would let whoever got such a message past the bus end
        # our connection).
        if self._state == _WHOLE:
            frame = self._frame
            self._reset()
            try:
                out.append(_decode(buf, frame, _READER))
            except WireError as e:
                self._invalid(e)
            return
        try:
            msg = _header(buf, self._frame, _READER)
        except WireError as e:
            self._invalid(e)
            msg = None
        if msg is None:
            self._drop = self._frame[6]
            self._reset()
            return
        msg.oversized = self._frame[7]
        self._drop = self._frame[6]
        self._reset()
        if self._drop:
            self._pending = msg
        else:
            out.append(msg)

    def _invalid(self, e):
        self.invalid += 1
        self.last_invalid = str(e)

    def _reset(self):
        self._buf = bytearray()
        self._state, self._need, self._frame = _FIXED_PART, 16, None
