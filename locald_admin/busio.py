"""The bus boundary: the one module that knows the D-Bus library (dbus-next).

Everything else speaks ``locald_admin.messages`` (plain data) through a
``Connection``: ``call`` a method and get a ``Reply``, ``send`` a signal,
``serve`` the service's object, ``on_signal`` for the client.  Changing the
D-Bus library means changing this file.

Two defects of dbus-next 0.2.3 are handled here, and only here:

* It writes to a non-blocking socket and treats *any* exception from
  ``send()`` as fatal: when the kernel socket buffer is full the write raises
  ``BlockingIOError`` (EAGAIN), the connection is finalized and every later
  call hangs (a few hundred queued messages are enough).  ``harden()``
  replaces the writer's callback with one that waits until writable.
* A call that times out or is cancelled leaves its reply handler in the
  library's table for the connection's lifetime; ``Connection.call`` removes
  it.
"""

import array
import asyncio
import socket

from dbus_next import BusType, Message, MessageFlag, MessageType, NameFlag, RequestNameReply
from dbus_next import Variant as _Variant
from dbus_next.aio import MessageBus
from dbus_next.errors import DBusError

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


def harden(bus):
    """Make ``bus`` survive a full socket buffer (see module docstring)."""
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
        no_reply=bool(msg.flags & MessageFlag.NO_REPLY_EXPECTED), handle=msg)


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
            if msg.message_type == MessageType.SIGNAL:
                callback(m.Signal(msg.destination, msg.path, msg.interface, msg.member, msg.signature,
                                  tuple(_from_library(list(msg.body))), sender=msg.sender))
            return False
        self._bus.add_message_handler(handler)

    def serve(self, dispatch):
        """Serve ``interface.OBJECT_PATH``: method calls to it on the
        service's interface (or none) go to ``dispatch(Incoming)``, which
        returns False for a member it does not have (the library then
        answers UnknownMethod).  Introspection of it and its ancestors is
        answered from the member tables (``messages.introspection_xml``)."""
        def handler(msg):
            if msg.message_type != MessageType.METHOD_CALL:
                return False
            if (msg.interface == m.INTROSPECTABLE and msg.member == "Introspect" and msg.signature == ""
                    and m.introspects(msg.path)):
                return Message.new_method_return(msg, "s", [m.introspection_xml(msg.path)])
            if msg.path != i.OBJECT_PATH or msg.interface not in (None, i.INTERFACE):
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
