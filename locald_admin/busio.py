"""The bus boundary: the one module that knows the D-Bus library (dbus-fast).

Everything else speaks ``locald_admin.messages`` (plain data) through a
``Connection``: ``call`` a method and get a ``Reply``, ``send`` a signal,
``serve`` the service's object, ``on_signal`` for the client.  Changing the
D-Bus library means changing this file.

dbus-fast is supported from 1.84 (Debian 12's python3-dbus-fast) to 2.x
(the version pinned in constraints.txt); ``_check_library`` refuses any
other at import, naming it.  Its defects are handled here, and only here,
by a connection class of our own (``_Bus``) that keeps the library's
decoding, encoding and dispatch and replaces the two private pieces that
touch the socket, which are compiled and differ between the two lines (1.84
reads through a stream and writes its queue last-in first-out; 2.x reads
the socket itself, greedily), so that one piece of code serves both:

* The library writes to a non-blocking socket and treats *any* exception
  from ``send()`` as fatal: when the kernel socket buffer is full the write
  raises ``BlockingIOError`` (EAGAIN), the connection is finalized and every
  later call hangs (a few hundred pipelined calls are enough).  ``_Writer``
  queues messages in order and waits until the socket is writable.
* It reads every incoming message whole into memory, however big the bus
  lets it be (32 MiB on the system bus), then decodes it: a flood of calls
  with a 30 MB path would take the service to gigabytes.  ``_GuardedReader``
  frames the stream itself from each message's fixed header; a message up to
  ``MAX_INCOMING`` is decoded by the library's unmarshaller once whole, a
  longer one has its header fields decoded (they are bounded too) and its
  body dropped in ``_DROP_CHUNK`` pieces as it streams in, never kept; the
  service answers such a call from its header alone (``Incoming.oversized``).
* A call that times out or is cancelled leaves its reply handler in the
  library's table for the connection's lifetime; ``Connection.call`` removes
  it.
* A message handler that raises has its traceback sent to the caller as an
  error text; ``Connection.serve`` answers with a named error instead.
"""

import asyncio
import collections
import io
import logging
import re
import struct

import dbus_fast
from dbus_fast import BusType, Message, MessageFlag, MessageType, NameFlag, RequestNameReply
from dbus_fast import Variant as _Variant
from dbus_fast.__version__ import __version__ as LIBRARY_VERSION
from dbus_fast._private.unmarshaller import Unmarshaller
from dbus_fast.aio import MessageBus
from dbus_fast.errors import DBusError, InvalidMessageError

from . import interface as i
from . import messages as m

log = logging.getLogger(__name__)


class BusError(ConnectionError):
    """The connection failed, was lost, or the bus refused a request."""


# -- the library: which versions, and what of it is relied on ------------------------------

SUPPORTED = ((1, 84), (3, 0))  # dbus-fast >=1.84,<3, as pyproject.toml says

# The private members of the library's asyncio bus that _Bus uses, the same
# in 1.84 and 2.x: the handshake, dispatch of a decoded message, the end of
# the connection, and the connection's state.
_BUS_MEMBERS = ("_authenticate", "_process_message", "_finalize", "next_serial", "_writer",
                "_method_return_handlers", "_disconnect_future", "_user_disconnect")


def _check_library(version, bus_class=MessageBus):
    """Raise ImportError unless ``version`` of dbus-fast is one this module
    was written and tested for (the one place that knows the versions)."""
    where = getattr(dbus_fast, "__file__", "?")
    found = re.match(r"(\d+)\.(\d+)", str(version))
    if not found:
        raise ImportError(f"locald-admin: cannot read the version of dbus-fast ({version!r}, {where})")
    have = (int(found.group(1)), int(found.group(2)))
    low, high = SUPPORTED
    if not low <= have < high:
        raise ImportError(f"locald-admin needs dbus-fast >={low[0]}.{low[1]},<{high[0]}; "
                          f"{version} is installed ({where})")
    missing = [name for name in _BUS_MEMBERS if not hasattr(bus_class, name)]
    if not hasattr(Message, "_marshall") or not hasattr(Unmarshaller, "unmarshall"):
        missing.append("Message._marshall/Unmarshaller.unmarshall")
    if missing:
        raise ImportError(f"locald-admin: dbus-fast {version} ({where}) lacks {', '.join(missing)}")


_check_library(LIBRARY_VERSION)


# -- the EAGAIN-safe writer ------------------------------------------------------------

class _Writer:
    """Writes a bus's messages in order; a full socket buffer (EAGAIN) means
    waiting until the socket is writable, never the end of the connection.
    Takes the place of the library's writer, whose one entry point used by
    the library is ``schedule_write``."""

    def __init__(self, bus):
        self._bus = bus
        self._sock = bus._sock
        self._loop = bus._loop
        self._fd = bus._fd
        self._queue = collections.deque()  # (memoryview of the encoded message, future or None)
        self._offset = 0  # bytes of the queue's first message already written
        self._waiting = False  # registered with the loop until writable
        self._error = None  # set once the connection has failed

    def schedule_write(self, msg=None, future=None, *, before_hello=False):
        """Queue ``msg`` (its ``future`` is resolved once it is written) and
        write what the socket takes now.  Until the bus has answered Hello
        only Hello itself (``before_hello``) is written."""
        if msg is not None:
            if self._error is not None:
                _fail(future, self._error)
                return
            self._queue.append((memoryview(msg._marshall(False)), future))
        if (self._bus.unique_name is None and not before_hello) or self._waiting:
            return  # the writable callback (or Hello's reply) writes it
        self._flush()

    def _flush(self):
        try:
            drained = self._write_pending()
        except Exception as exc:  # a real socket error: the connection is gone
            self._bus._finalize(exc)
            return
        if drained and self._waiting:
            self._loop.remove_writer(self._fd)
            self._waiting = False
        elif not drained and not self._waiting:
            self._loop.add_writer(self._fd, self._flush)
            self._waiting = True

    def _write_pending(self):
        """Write queued messages until done (True) or the socket is full (False)."""
        queue, send = self._queue, self._sock.send
        while queue:
            buf, fut = queue[0]
            try:
                self._offset += send(buf[self._offset:])
            except (BlockingIOError, InterruptedError):
                return False
            if self._offset < len(buf):
                return False
            queue.popleft()
            self._offset = 0
            if fut is not None and not fut.done():
                fut.set_result(None)
        return True

    def close(self, exc):
        """The connection ended: every queued message fails with ``exc``."""
        self._error = exc if exc is not None else BusError("the connection is closed")
        self._waiting = False
        while self._queue:
            _, fut = self._queue.popleft()
            if self._bus._user_disconnect:
                if fut is not None and not fut.done():
                    fut.set_result(None)
            else:
                _fail(fut, self._error)


def _fail(fut, exc):
    if fut is not None and not fut.done():
        fut.set_exception(exc)
        fut.exception()  # retrieved: nobody may be waiting for it (the library's own sends)


# -- bounded reading ----------------------------------------------------------------------

# The longest message read into memory.  Everything the service legitimately
# receives (a 4,096-byte path, the bus daemon's and polkit's replies) is a
# few KiB; the credentials of a caller in every group there is (65,536 gids)
# are 256 KiB.
MAX_INCOMING = 1 << 20
MAX_HEADER = 64 << 10  # header fields of an oversized message, read to answer it
_DROP_CHUNK = 64 << 10  # the most read from the socket at once
_FIXED = 16  # endianness, type, flags, version, body length, serial, length of the header fields


def _decode(data):
    """One whole message (bytes) as the library's Message."""
    msg = Unmarshaller(io.BytesIO(data)).unmarshall()
    if msg is None:
        raise InvalidMessageError("a truncated message")
    return msg


class _Oversized(Message):
    """A message longer than MAX_INCOMING, from its header alone: no body.
    ``locald_oversized`` is its length in bytes."""


class _GuardedReader:
    """The bus's socket reader (the loop calls it when the socket is
    readable): at most ``_DROP_CHUNK`` bytes per call, at most MAX_INCOMING
    of any one message (plus one chunk) kept, every message whole and in
    order to the library's dispatch (``_process_message``)."""

    def __init__(self, bus):
        self._bus = bus
        self._recv = bus._sock.recv
        self._buf = bytearray()
        self._drop = 0  # bytes of an oversized message still to throw away
        self._header_only = None  # what to deliver once they are gone (None: nothing)

    def __call__(self):
        try:
            self._read()
        except Exception as exc:  # end of file, a socket error, a stream that is not D-Bus
            self._bus._finalize(exc)

    def _read(self):
        try:
            data = self._recv(min(self._drop, _DROP_CHUNK) if self._drop else _DROP_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        if not data:
            raise EOFError()
        if self._drop:
            self._drop -= len(data)
            if self._drop == 0:
                self._deliver_header_only()
            return
        self._buf += data
        self._frame()

    def _frame(self):
        """Deliver every whole message in the buffer; start dropping an
        oversized one."""
        buf = self._buf
        while len(buf) >= _FIXED:
            endian = buf[0]
            if endian == 0x6C:  # 'l'
                order = "<"
            elif endian == 0x42:  # 'B'
                order = ">"
            else:
                raise InvalidMessageError(f"a message starting with byte {endian}")
            body_len, serial, header_len = struct.unpack_from(order + "III", buf, 4)
            header_end = _FIXED + header_len + (-header_len & 7)
            total = header_end + body_len
            if total <= MAX_INCOMING:
                if len(buf) < total:
                    return
                msg = _decode(bytes(buf[:total]))
                del buf[:total]
                self._deliver(msg)
                continue
            if header_len <= MAX_HEADER:
                if len(buf) < header_end:
                    return
                self._header_only = _header_message(buf, order, header_end, total)
            else:  # not even the header is read: dropped unanswered
                self._header_only = None
            taken = min(len(buf), total)
            del buf[:taken]
            self._drop = total - taken
            if self._drop:
                return
            self._deliver_header_only()

    def _deliver_header_only(self):
        msg, self._header_only = self._header_only, None
        if msg is not None:
            self._deliver(msg)

    def _deliver(self, msg):
        try:
            self._bus._process_message(msg)
        except Exception as exc:  # as the library's own reader: the connection goes on
            log.error("a message could not be processed: %s: %s", type(exc).__name__, exc)


def _header_message(buf, order, header_end, total):
    """The message an oversized one's header describes (``_Oversized``), or
    None when the header is not one the library can decode.  A reply of that
    size becomes an error reply (LimitsExceeded) to the call it answers."""
    head = bytearray(buf[:header_end])
    struct.pack_into(order + "I", head, 4, 0)  # body length 0: the library decodes the header only
    try:
        h = _decode(bytes(head))
        if h.message_type in (MessageType.METHOD_RETURN, MessageType.ERROR):
            msg = _Oversized(message_type=MessageType.ERROR, error_name=m.LIMITS_EXCEEDED,
                             reply_serial=h.reply_serial, sender=h.sender, destination=h.destination,
                             signature="s", body=[f"a reply of {total} bytes is refused"], serial=h.serial)
        else:
            msg = _Oversized(message_type=h.message_type, flags=h.flags, destination=h.destination,
                             path=h.path, interface=h.interface, member=h.member, sender=h.sender,
                             serial=h.serial, validate=False)
    except Exception:  # header fields the library cannot make a message of: just drop it
        return None
    msg.locald_oversized = total
    return msg


# -- the connection of the library, hardened ---------------------------------------------

class _Bus(MessageBus):
    """dbus-fast's asyncio bus with our writer and reader (module docstring)."""

    def __init__(self, bus_address=None, bus_type=BusType.SYSTEM):
        super().__init__(bus_address=bus_address, bus_type=bus_type, negotiate_unix_fd=False)
        self._writer = _Writer(self)

    async def connect(self):
        """Authenticate, read with ``_GuardedReader``, say Hello; returns
        self once the bus has given the connection its unique name."""
        await self._authenticate()
        future = self._loop.create_future()
        self._loop.add_reader(self._fd, _GuardedReader(self))

        def on_hello(reply, err):
            try:
                if err is not None:
                    raise err
                if reply.message_type != MessageType.METHOD_RETURN or reply.signature != "s":
                    raise BusError(f"the bus refused Hello: {reply.error_name}: {reply.body[:1]}")
                self.unique_name = reply.body[0]
                self._writer.schedule_write()
                if not future.done():
                    future.set_result(self)
            except Exception as e:
                if not future.done():
                    future.set_exception(e)
                self.disconnect()
                self._finalize(e)

        hello = Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                        interface="org.freedesktop.DBus", member="Hello", serial=self.next_serial())
        self._method_return_handlers[hello.serial] = on_hello
        self._writer.schedule_write(hello, before_hello=True)
        return await future

    def _finalize(self, err=None):
        self._writer.close(err)
        super()._finalize(err)


async def connect_system_bus(address=None):
    """The library's connection to the system bus (``DBUS_SYSTEM_BUS_ADDRESS``
    is honoured) or to ``address``, hardened.  For tests that must send what
    the product never would; the product uses ``Connection``."""
    bus = _Bus(bus_address=address, bus_type=BusType.SYSTEM)
    await bus.connect()
    return bus


# -- plain data <-> the library's messages ------------------------------------------------

_SCALARS = frozenset({str, int, bool, float, bytes})  # passed as they are, both ways (checked first: cheap)


def _to_library(value):
    if type(value) in _SCALARS:
        return value
    if isinstance(value, m.Variant):
        return _Variant(value.signature, _to_library(value.value))
    if isinstance(value, (list, tuple)):
        return [_to_library(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_library(v) for k, v in value.items()}
    return value


def _from_library(value):
    if type(value) in _SCALARS:
        return value
    if isinstance(value, _Variant):
        return _from_library(value.value)
    if isinstance(value, list):
        return [_from_library(v) for v in value]
    if isinstance(value, dict):
        return {k: _from_library(v) for k, v in value.items()}
    return value


# The flags as plain ints: an IntFlag's own "&" runs Python code of the enum module.
_NO_REPLY_EXPECTED = int(MessageFlag.NO_REPLY_EXPECTED)
_ALLOW_INTERACTIVE = int(MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION)


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


def _no_reply(msg):
    """Whether the library's Message ``msg`` expects no reply."""
    return bool(int(msg.flags) & _NO_REPLY_EXPECTED) or msg.message_type != MessageType.METHOD_CALL


def _reply(msg):
    error = msg.error_name if msg.message_type == MessageType.ERROR else None
    return m.Reply(msg.sender, error, msg.signature, tuple(_from_library(list(msg.body))))


def _incoming(msg):
    flags = int(msg.flags)
    return m.Incoming(
        sender=msg.sender, path=msg.path, interface=msg.interface, member=msg.member, signature=msg.signature,
        body=tuple(msg.body), allow_interactive=bool(flags & _ALLOW_INTERACTIVE),
        no_reply=bool(flags & _NO_REPLY_EXPECTED), handle=msg,
        oversized=getattr(msg, "locald_oversized", 0))


# -- the connection ------------------------------------------------------------------------

class Connection:
    """One connection to the system bus, speaking ``messages``."""

    def __init__(self, bus):
        self._bus = bus
        # The library ends the connection by setting an exception (EOFError)
        # on a future that nobody may be waiting for; retrieve it, or asyncio
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
        call that times out or is cancelled leaves nothing behind.

        The reply comes through the library's table of reply handlers (a
        callback per serial, the same in 1.84 and 2.x), into one future
        with one timer: ``asyncio.wait_for`` around the library's own
        ``call`` made two more futures and a task per call, a quarter of
        the mechanism's time on a small request."""
        msg = _message(call)
        if _no_reply(msg):
            await self._send_message(msg)
            return None
        bus = self._bus
        loop = bus._loop
        answer = loop.create_future()
        deadline = None if timeout is None else loop.time() + timeout

        def answered(reply, err):
            if answer.done():
                return
            if deadline is not None and loop.time() >= deadline:
                # Read in the same turn of the loop as the timer's expiry, but
                # after it was due: late is late, whichever callback runs first.
                answer.set_exception(asyncio.TimeoutError())
            elif err is not None:
                answer.set_exception(BusError(str(err) or type(err).__name__))
            elif reply is None:
                answer.set_exception(BusError("the connection is closed"))
            else:
                answer.set_result(reply)

        def written(f):  # a write that failed fails the call (the writer retrieved the error)
            if not f.cancelled() and f.exception() is not None:
                answered(None, f.exception())

        def expired():
            if not answer.done():
                answer.set_exception(asyncio.TimeoutError())

        if not bus.connected:
            raise BusError("the connection is closed")
        msg.serial = bus.next_serial()
        bus._method_return_handlers[msg.serial] = answered  # before the write: the reply may come at once
        timer = None if timeout is None else loop.call_later(timeout, expired)
        try:
            bus.send(msg).add_done_callback(written)
            return _reply(await answer)
        finally:
            if timer is not None:
                timer.cancel()
            # The library keeps the handler of an unanswered call forever.
            bus._method_return_handlers.pop(msg.serial, None)

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

        def guarded(msg):
            # The library would answer a handler's exception with its
            # traceback as the error text: answer with a named error.
            try:
                return handler(msg)
            except Exception as e:
                log.error("a call could not be handled: %s: %s", type(e).__name__, e)
                if msg.message_type != MessageType.METHOD_CALL:
                    return True
                return Message.new_error(msg, i.ERROR_FAILED, f"the call could not be handled ({type(e).__name__})")
        self._bus.add_message_handler(guarded)

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
