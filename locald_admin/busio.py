"""The bus boundary: the one module that knows the D-Bus library (dbus-next).

Everything else speaks ``locald_admin.messages`` (plain data) through a
``Connection``: ``call`` a method and get a ``Reply``, ``send`` a signal,
``serve`` the service's object, ``on_signal`` for the client.  Changing the
D-Bus library means changing this file.

Three defects of dbus-next 0.2.3 are handled here, and only here:

* It writes to a non-blocking socket and treats *any* exception from
  ``send()`` as fatal: when the kernel socket buffer is full the write raises
  ``BlockingIOError`` (EAGAIN), the connection is finalized and every later
  call hangs (a few hundred queued messages are enough).  ``harden()``
  replaces the writer's callback with one that waits until writable.
* A call that times out or is cancelled leaves its reply handler in the
  library's table for the connection's lifetime; ``Connection.call`` removes
  it.
* It reads every incoming message whole into memory, however big the bus
  lets it be (32 MiB on the system bus), then decodes it: a flood of calls
  with a 30 MB path took the service to gigabytes.  ``_GuardedUnmarshaller``
  reads the fixed header first; a message longer than ``MAX_INCOMING`` has
  its header fields read (they are bounded too) and its body dropped as it
  streams in, never kept; the service answers such a call from its header
  alone (``Incoming.oversized``).
"""

import array
import asyncio
import socket
import struct

from dbus_next import BusType, Message, MessageFlag, MessageType, NameFlag, RequestNameReply
from dbus_next import Variant as _Variant
from dbus_next._private.unmarshaller import MarshallerStreamEndError, Unmarshaller
from dbus_next.aio import MessageBus
from dbus_next.errors import DBusError, InvalidMessageError
from dbus_next.signature import SignatureTree

from . import interface as i
from . import messages as m


class BusError(ConnectionError):
    """The connection failed, was lost, or the bus refused a request."""


# -- the EAGAIN-safe writer ------------------------------------------------------------

def _write_pending(writer):
    """Write queued messages until done or the socket would block.

    Returns True when the queue is drained, False when the socket is full.
    """
    while True:
        if writer.buf is None:
            if writer.messages.qsize() == 0:
                return True
            buf, unix_fds, fut = writer.messages.get_nowait()
            writer.buf, writer.unix_fds, writer.fut = memoryview(buf), unix_fds, fut
            writer.offset = 0
        chunk = writer.buf[writer.offset:]
        if writer.unix_fds and writer.negotiate_unix_fd:
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", writer.unix_fds))]
            sent = writer.sock.sendmsg([chunk], rights)
            writer.unix_fds = None  # the fds travel with the first byte
        else:
            sent = writer.sock.send(chunk)
        writer.offset += sent
        if writer.offset < len(writer.buf):
            return False
        writer.buf = None
        if writer.fut is not None and not writer.fut.done():
            writer.fut.set_result(None)


# -- bounded reading ----------------------------------------------------------------------

# The longest message read into memory.  Everything the service legitimately
# receives (a 4,096-byte path, the bus daemon's and polkit's replies) is a
# few KiB; the credentials of a caller in every group there is (65,536 gids)
# are 256 KiB.
MAX_INCOMING = 1 << 20
MAX_HEADER = 64 << 10  # header fields of an oversized message, read to answer it
_DROP_CHUNK = 64 << 10


class _GuardedUnmarshaller(Unmarshaller):
    """dbus-next's unmarshaller, reading at most MAX_INCOMING bytes of one
    message.  A longer one is answered from its header: the body is received
    and thrown away in chunks.  (The library calls ``unmarshall`` again, on
    the same object, each time more bytes arrive, until a message is whole.)"""

    def __init__(self, stream, sock=None):
        super().__init__(stream, sock)
        self._drop = 0  # body bytes of an oversized message still to throw away
        self._header_only = None  # what to deliver once they are gone (None: nothing)
        self._dropping = False

    def _recv(self, n):
        try:
            data = self.sock.recv(n) if self.sock is not None else self.stream.read(n)
        except BlockingIOError:
            raise MarshallerStreamEndError() from None
        if data is None:
            raise MarshallerStreamEndError()
        if data == b"":
            raise EOFError()
        return data

    def _unmarshall(self):
        while True:
            if self._dropping:
                while self._drop > 0:
                    self._drop -= len(self._recv(min(self._drop, _DROP_CHUNK)))
                self._dropping = False
                if self._header_only is not None:
                    self.message = self._header_only
                    return
                # Nothing to answer: read the next message.
                self.buf, self.offset, self.unix_fds = bytearray(), 0, []
            self.offset = 0
            self.read(16, prefetch=True)
            endian = self.buf[0]
            if endian not in (ord("l"), ord("B")):
                raise InvalidMessageError("Expecting endianness as the first byte")
            body_len, serial, header_len = struct.unpack_from("<III" if endian == ord("l") else ">III",
                                                              self.buf, 4)
            header_end = 16 + header_len + self._padding(16 + header_len, 8)
            if header_end + body_len <= MAX_INCOMING:
                return super()._unmarshall()
            self._header_only = None
            if header_len <= MAX_HEADER:
                self.read(header_end, prefetch=True)
                try:
                    self._header_only = self._header_message(endian, serial, header_end + body_len)
                except Exception:  # header fields the library cannot make a message of: just drop it
                    self._header_only = None
                self._drop = body_len
            else:
                self._drop = header_end + body_len - 16
            self.buf = bytearray()
            self._dropping = True

    def _header_message(self, endian, serial, total):
        self.endian = endian
        self.offset = 12
        fields = {}
        for code, variant in self.read_argument(SignatureTree._get("a(yv)").types[0]):
            fields[code] = variant.value
        # Header field codes (D-Bus specification): 1 path, 2 interface,
        # 3 member, 6 destination, 7 sender, 8 signature.
        msg = Message(destination=fields.get(6), path=fields.get(1), interface=fields.get(2),
                      member=fields.get(3), message_type=MessageType(self.buf[1]), flags=MessageFlag(self.buf[2]),
                      sender=fields.get(7), signature=fields.get(8, ""), body=[], serial=serial)
        msg.locald_oversized = total
        return msg


def harden(bus):
    """Make ``bus`` survive a full socket buffer and read bounded messages
    (see module docstring)."""
    def guarded():
        return _GuardedUnmarshaller(bus._stream, bus._sock if bus._negotiate_unix_fd else None)

    bus._create_unmarshaller = guarded
    bus._unmarshaller = guarded()
    writer = bus._writer

    def write_callback():
        try:
            if _write_pending(writer):
                writer.loop.remove_writer(writer.fd)
        except (BlockingIOError, InterruptedError):
            return  # the writer stays registered; the loop calls us again
        except Exception as exc:  # a real socket error: the connection is gone
            if writer.fut is not None and not writer.fut.done():
                writer.fut.set_exception(exc)
            bus._finalize(exc)

    writer.write_callback = write_callback
    return bus


async def connect_system_bus(address=None):
    """The library's own connection to the system bus (``DBUS_SYSTEM_BUS_ADDRESS``
    is honoured) or to ``address``, hardened.  For tests that must send what
    the product never would; the product uses ``Connection``."""
    bus = harden(MessageBus(bus_address=address, bus_type=BusType.SYSTEM))
    await bus.connect()
    return bus


# -- plain data <-> the library's messages ------------------------------------------------

def _to_library(value):
    if isinstance(value, m.Variant):
        return _Variant(value.signature, _to_library(value.value))
    if isinstance(value, (list, tuple)):
        return [_to_library(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_library(v) for k, v in value.items()}
    return value


def _from_library(value):
    if isinstance(value, _Variant):
        return _from_library(value.value)
    if isinstance(value, list):
        return [_from_library(v) for v in value]
    if isinstance(value, dict):
        return {k: _from_library(v) for k, v in value.items()}
    return value


def _message(out):
    if isinstance(out, m.Signal):
        return Message(message_type=MessageType.SIGNAL, destination=out.destination, path=out.path,
                       interface=out.interface, member=out.member, signature=out.signature,
                       body=_to_library(list(out.body)))
    flags = MessageFlag.NONE
    if out.allow_interactive:
        flags |= MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION
    if out.no_reply:
        flags |= MessageFlag.NO_REPLY_EXPECTED
    return Message(destination=out.destination, path=out.path, interface=out.interface, member=out.member,
                   signature=out.signature, body=_to_library(list(out.body)), flags=flags)


def _reply(msg):
    error = msg.error_name if msg.message_type == MessageType.ERROR else None
    return m.Reply(msg.sender, error, msg.signature, tuple(_from_library(list(msg.body))))


def _incoming(msg):
    return m.Incoming(
        sender=msg.sender, path=msg.path, interface=msg.interface, member=msg.member, signature=msg.signature,
        body=tuple(msg.body), allow_interactive=bool(msg.flags & MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION),
        no_reply=bool(msg.flags & MessageFlag.NO_REPLY_EXPECTED), handle=msg,
        oversized=getattr(msg, "locald_oversized", 0))


# -- the connection ------------------------------------------------------------------------

class Connection:
    """One connection to the system bus, speaking ``messages``."""

    def __init__(self, bus):
        self._bus = bus
        # dbus-next ends the connection by setting an exception (EOFError) on
        # a future that nobody may be waiting for; retrieve it, or asyncio
        # logs "Future exception was never retrieved" with a traceback.
        bus._disconnect_future.add_done_callback(lambda f: f.cancelled() or f.exception())

    @classmethod
    async def open(cls, address=None):
        """Connect to the system bus (``DBUS_SYSTEM_BUS_ADDRESS`` is
        honoured) or to ``address``; raises BusError."""
        try:
            return cls(await connect_system_bus(address))
        except Exception as e:
            raise BusError(str(e) or type(e).__name__) from None

    @property
    def unique_name(self):
        return self._bus.unique_name

    @property
    def connected(self):
        return self._bus.connected

    @property
    def pending_replies(self):
        """Calls still waiting for their reply (for diagnostics and tests)."""
        return len(self._bus._method_return_handlers)

    async def call(self, call, timeout=None):
        """Send ``call`` and return its Reply.  Raises asyncio.TimeoutError
        after ``timeout`` seconds, BusError when the connection fails.  A
        call that times out or is cancelled leaves nothing behind."""
        msg = _message(call)
        try:
            reply = await asyncio.wait_for(self._bus.call(msg), timeout)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            raise
        except Exception as e:
            raise BusError(str(e) or type(e).__name__) from None
        finally:
            # dbus-next keeps the handler of an unanswered call forever.
            self._bus._method_return_handlers.pop(msg.serial, None)
        if reply is None:
            return None  # a no_reply call
        return _reply(reply)

    async def send(self, out):
        """Send a Signal (or a no_reply Call) without waiting for an answer;
        raises BusError when the connection fails."""
        try:
            await self._bus.send(_message(out))
        except Exception as e:
            raise BusError(str(e) or type(e).__name__) from None

    def post(self, out):
        """``send`` without waiting for the write either (best effort)."""
        try:
            fut = self._bus.send(_message(out))
        except Exception:
            return
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())

    def on_signal(self, callback):
        """Call ``callback(Signal)`` for every signal this connection gets."""
        def handler(msg):
            if msg.message_type == MessageType.SIGNAL and not getattr(msg, "locald_oversized", 0):
                callback(m.Signal(msg.destination, msg.path, msg.interface, msg.member, msg.signature,
                                  tuple(_from_library(list(msg.body))), sender=msg.sender))
            return False
        self._bus.add_message_handler(handler)

    def serve(self, dispatch):
        """Serve ``interface.OBJECT_PATH``: method calls to it on the
        service's interface go to ``dispatch(Incoming)``, which returns False
        for a member it does not have (the library then answers
        UnknownMethod); a call naming no interface is refused, as the bus
        policy refuses it.  Introspection of it and its ancestors is answered
        from the member tables (``messages.introspection_xml``), Properties
        from ``messages.properties_reply``."""
        def handler(msg):
            oversized = getattr(msg, "locald_oversized", 0)
            if msg.message_type != MessageType.METHOD_CALL:
                return bool(oversized)  # an oversized signal is dropped: its body was never read
            if oversized and (msg.path != i.OBJECT_PATH or msg.interface != i.INTERFACE):
                return Message.new_error(msg, m.LIMITS_EXCEEDED, f"a message of {oversized} bytes is refused")
            if (msg.interface == m.INTROSPECTABLE and msg.member == "Introspect" and msg.signature == ""
                    and m.introspects(msg.path)):
                return Message.new_method_return(msg, "s", [m.introspection_xml(msg.path)])
            if msg.path != i.OBJECT_PATH:
                return False
            if msg.interface == m.PROPERTIES:
                error, signature, body = m.properties_reply(msg.member, msg.signature, msg.body)
                return (Message.new_method_return(msg, signature, _to_library(list(body))) if error is None
                        else Message.new_error(msg, error, body[0]))
            if msg.interface is None:
                # As the bus policy does (it allows only named interfaces):
                # a call must say which interface it means.
                return Message.new_error(msg, m.ACCESS_DENIED, f"calls to {i.OBJECT_PATH} must name the interface")
            if msg.interface != i.INTERFACE:
                return False
            return dispatch(_incoming(msg))
        self._bus.add_message_handler(handler)

    async def reply(self, incoming, signature="", body=()):
        if not incoming.no_reply:
            await self._send_message(Message.new_method_return(incoming.handle, signature, list(body)))

    async def reply_error(self, incoming, name, text):
        if not incoming.no_reply:
            await self._send_message(Message.new_error(incoming.handle, name, text))

    async def _send_message(self, msg):
        try:
            await self._bus.send(msg)
        except Exception as e:
            raise BusError(str(e) or type(e).__name__) from None

    async def own_name(self, name):
        """Become the primary owner of ``name`` (never queue); BusError with
        the reason otherwise."""
        try:
            reply = await self._bus.request_name(name, NameFlag.DO_NOT_QUEUE)
        except DBusError as e:
            raise BusError(f"{e.text} ({e.type})") from None
        except Exception as e:
            raise BusError(str(e) or type(e).__name__) from None
        if reply != RequestNameReply.PRIMARY_OWNER:
            raise BusError(f"{reply.name} (another instance running?)")

    async def release_name(self, name):
        try:
            await self._bus.release_name(name)
        except Exception as e:
            raise BusError(str(e) or type(e).__name__) from None

    async def wait_closed(self):
        """Return when the connection is gone (for whatever reason)."""
        try:
            await self._bus.wait_for_disconnect()
        except Exception:
            pass

    def close(self):
        self._bus.disconnect()
