"""The bus boundary: our own connection to the system bus.

Everything else speaks ``locald_admin.messages`` (plain data) through a
``Connection``: ``call`` a method and get a ``Reply``, ``send`` a signal,
``serve`` the service's object, ``on_signal`` for the client.  What goes on
the wire is ``wire.py``'s (the codec and the framing, Sans-I/O), how a
connection starts and what it reads is ``busproto.py``'s (the address, the
authentication, Hello, messages to and from the wire, Sans-I/O too: the
client's blocking one-call connection shares it); this module is the thin
I/O around them, on asyncio, and depends on no D-Bus library:

* **Connecting**: the bus address (``DBUS_SYSTEM_BUS_ADDRESS``, else the
  well-known socket), the ``EXTERNAL`` authentication with our euid, and
  ``Hello``, written in one go (``AUTH``, ``BEGIN`` and ``Hello`` together,
  as sd-bus does): one round trip to a usable connection.
* **Reading** through ``wire.Parser``: at most ``wire.CHUNK`` bytes per
  read, at most ``wire.MAX_INCOMING`` of any one message kept; a longer one
  arrives as its header alone (``oversized``), its body dropped as it
  streams in, so a flood of 30 MB calls costs no memory.  A message framed
  soundly but not valid inside is passed over (logged); a stream that
  cannot be framed ends the connection.
* **Writing** in order through a queue: a full socket buffer (EAGAIN) means
  waiting until the socket is writable, never the end of the connection (the
  defect of dbus-next and dbus-fast's writers that made us own this).
* **Calls** are numbered (serials, wrapping below 2**32) and matched to
  their replies in one table; a call that times out or is cancelled leaves
  nothing behind in it; a connection that ends fails every call waiting.
* **Serving**: method calls to ``interface.OBJECT_PATH`` on the service's
  interface go to the service's ``dispatch``; ``Introspect`` and
  ``Properties`` are answered here from ``introspection``, ``Peer`` here
  alone; anything else is ``UnknownMethod``.  A dispatch that raises is
  answered with a named error, never a traceback.
"""

import asyncio
import collections
import logging
import socket

from . import busproto as proto
from . import interface as i
from . import introspection
from . import messages as m
from . import wire
from .busproto import MAX_AUTH_LINE, SYSTEM_BUS_ADDRESS, BusError, socket_addresses  # noqa: F401 (busio's names too)

log = logging.getLogger(__name__)

MAX_INCOMING = wire.MAX_INCOMING  # the longest message read into memory (wire.py says why this size)
MAX_LOGGED_INVALID = 100  # messages passed over as invalid (wire.Parser) that are logged, per connection
MACHINE_ID_FILES = ("/etc/machine-id", "/var/lib/dbus/machine-id")
_SERIAL_WRAP = (1 << 32) - 1

# RequestName's flags and answers (the D-Bus specification).
_DO_NOT_QUEUE = 4
_REQUEST_NAME_REPLIES = {1: "PRIMARY_OWNER", 2: "IN_QUEUE", 3: "EXISTS", 4: "ALREADY_OWNER"}


def _incoming(msg):
    return m.Incoming(sender=msg.sender, path=msg.path, interface=msg.interface, member=msg.member,
                      signature=msg.signature, body=proto.unwrap(msg.body),
                      allow_interactive=bool(msg.flags & wire.ALLOW_INTERACTIVE_AUTHORIZATION),
                      no_reply=bool(msg.flags & wire.NO_REPLY_EXPECTED), handle=msg, oversized=msg.oversized)


def _machine_id():
    for path in MACHINE_ID_FILES:
        try:
            with open(path, encoding="ascii") as f:
                value = f.read(64).strip()
        except (OSError, ValueError):
            continue
        if len(value) == 32 and all(c in "0123456789abcdef" for c in value):
            return value
    return None


# -- the connection --------------------------------------------------------------------------

class Connection:
    """One connection to the bus, speaking ``messages``: ``open`` makes one;
    the constructor takes a connected, authenticated non-blocking socket
    (``open``'s, or one end of a socket pair) and starts reading it."""

    def __init__(self, sock, loop):
        self._sock = sock
        self._loop = loop
        self._fd = sock.fileno()
        self._parser = wire.Parser()
        self._serial = 0
        self._pending = {}  # serial -> callback(wire.Message or None, exception or None)
        self._signal_handlers = []
        self._dispatch = None  # the service's, once it serves
        self._queue = collections.deque()  # (memoryview of an encoded message, future or None)
        self._offset = 0  # bytes of the queue's first message already written
        self._waiting = False  # registered with the loop until writable
        self._error = None  # why the connection ended, once it has
        self._closed = loop.create_future()
        self._names = set()  # well-known names this connection owns or has owned
        self.unique_name = None
        loop.add_reader(self._fd, self._readable)

    # -- opening -----------------------------------------------------------------------
    @classmethod
    async def open(cls, address=None):
        """Connect to the system bus (``DBUS_SYSTEM_BUS_ADDRESS`` is
        honoured) or to ``address``, authenticate, say Hello; raises
        BusError."""
        loop = asyncio.get_running_loop()
        sock = await _connect(socket_addresses(address), loop)
        con = None
        try:
            rest = await _authenticate(sock, loop)
            con = cls(sock, loop)
            con._serial = 1  # Hello's
            answered = loop.create_future()
            con._pending[1] = lambda msg, err: answered.done() or (
                answered.set_exception(err) if err is not None else answered.set_result(msg))
            if rest:
                con._received(rest)
            con.unique_name = proto.read_hello(await answered)
            return con
        except BaseException as e:
            if con is not None:
                con.close()
            sock.close()
            if isinstance(e, BusError) or not isinstance(e, Exception):
                raise
            raise BusError(str(e) or type(e).__name__) from None

    # -- state ---------------------------------------------------------------------------
    @property
    def connected(self):
        return self._error is None

    @property
    def pending_replies(self):
        """Calls still waiting for their reply (for diagnostics and tests)."""
        return len(self._pending)

    def _next_serial(self):
        self._serial = self._serial % _SERIAL_WRAP + 1
        return self._serial

    # -- reading -------------------------------------------------------------------------
    def _readable(self):
        try:
            data = self._sock.recv(self._parser.want())
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._end(BusError(f"the bus connection failed: {e}"))
            return
        if not data:
            self._end(BusError("the bus closed the connection"))
            return
        self._received(data)

    def _received(self, data):
        invalid = self._parser.invalid
        try:
            msgs = self._parser.feed(data)
        except wire.WireError as e:
            self._end(BusError(f"the bus sent something that is not D-Bus: {e}"))
            return
        if self._parser.invalid != invalid and self._parser.invalid <= MAX_LOGGED_INVALID:
            log.warning("a message that is not valid D-Bus was passed over: %s", self._parser.last_invalid)
        for msg in msgs:
            try:
                self._message(msg)
            except Exception as exc:  # one message's trouble is not the connection's
                log.error("a message could not be processed: %s: %s", type(exc).__name__, exc)

    def _message(self, msg):
        if proto.addressed_elsewhere(msg, self.unique_name, self._names):
            return
        t = msg.type
        if proto.is_reply(msg):
            callback = self._pending.pop(msg.reply_serial, None)
            if callback is not None:
                callback(proto.answer(msg), None)
        elif t == wire.SIGNAL:
            signal = proto.received_signal(msg)
            if signal is not None:
                for handler in self._signal_handlers:
                    handler(signal)
        elif t == wire.METHOD_CALL:
            self._method_call(msg)

    # -- writing -------------------------------------------------------------------------
    def _write(self, msg, future=None):
        """Queue ``msg`` (its ``future`` resolved once written) and write
        what the socket takes now."""
        if self._error is not None:
            _fail(future, self._error)
            return
        try:
            data = wire.encode(msg)
        except wire.WireError as e:  # e.g. a NUL in a string: never sent, the connection goes on
            raise BusError(f"the message cannot be sent: {e}") from None
        self._queue.append((memoryview(data), future))
        if not self._waiting:
            self._flush()

    def _flush(self):
        queue, send = self._queue, self._sock.send
        try:
            while queue:
                buf, fut = queue[0]
                try:
                    self._offset += send(buf[self._offset:])
                except (BlockingIOError, InterruptedError):
                    break
                if self._offset < len(buf):
                    break
                queue.popleft()
                self._offset = 0
                if fut is not None and not fut.done():
                    fut.set_result(None)
        except OSError as e:  # a real socket error: the connection is gone
            self._end(BusError(f"the bus connection failed: {e}"))
            return
        if not queue and self._waiting:
            self._loop.remove_writer(self._fd)
            self._waiting = False
        elif queue and not self._waiting:
            self._loop.add_writer(self._fd, self._flush)
            self._waiting = True

    # -- the end -------------------------------------------------------------------------
    def _end(self, exc):
        """The connection is over: every queued write and waiting call fails
        with ``exc``; ``wait_closed`` returns."""
        if self._error is not None:
            return
        self._error = exc
        self._loop.remove_reader(self._fd)
        if self._waiting:
            self._loop.remove_writer(self._fd)
            self._waiting = False
        self._sock.close()
        while self._queue:
            _, fut = self._queue.popleft()
            _fail(fut, exc)
        pending, self._pending = self._pending, {}
        for callback in pending.values():
            callback(None, exc)
        if not self._closed.done():
            self._closed.set_result(None)

    def close(self):
        self._end(BusError("the connection is closed"))

    async def wait_closed(self):
        """Return when the connection is gone (for whatever reason)."""
        await asyncio.shield(self._closed)

    # -- calls ---------------------------------------------------------------------------
    async def call(self, call, timeout=None):
        """Send ``call`` and return its Reply.  Raises asyncio.TimeoutError
        after ``timeout`` seconds, BusError when the connection fails.  A
        call that times out or is cancelled leaves nothing behind.  A
        ``no_reply`` call is sent and None returned."""
        if self._error is not None:
            raise BusError(str(self._error))
        msg = proto.outgoing(call, self._next_serial())
        if call.no_reply:
            await self._send(msg)
            return None
        loop = self._loop
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
                answer.set_exception(err if isinstance(err, BusError) else BusError(str(err)))
            else:
                answer.set_result(reply)

        def expired():
            if not answer.done():
                answer.set_exception(asyncio.TimeoutError())

        self._pending[msg.serial] = answered  # before the write: the reply may come at once
        timer = None if timeout is None else loop.call_later(timeout, expired)
        try:
            self._write(msg, _Written(answered))
            return proto.reply(await answer)
        finally:
            if timer is not None:
                timer.cancel()
            self._pending.pop(msg.serial, None)

    async def send(self, out):
        """Send a Signal (or a no_reply Call) without waiting for an answer;
        raises BusError when the connection fails."""
        await self._send(proto.outgoing(out, self._next_serial()))

    def post(self, out):
        """``send`` without waiting for the write either (best effort: a
        message that cannot be sent is logged and dropped)."""
        if self._error is None:
            try:
                self._write(proto.outgoing(out, self._next_serial()))
            except BusError as e:
                log.error("%s.%s not sent: %s", out.interface, out.member, e)

    async def _send(self, msg):
        """Write ``msg``; returns once the socket took it."""
        done = self._loop.create_future()
        self._write(msg, done)
        await done

    # -- signals -------------------------------------------------------------------------
    def on_signal(self, callback):
        """Call ``callback(Signal)`` for every signal this connection gets."""
        self._signal_handlers.append(callback)

    # -- serving -------------------------------------------------------------------------
    def serve(self, dispatch):
        """Serve ``interface.OBJECT_PATH``: method calls to it on the
        service's interface go to ``dispatch(Incoming)``, which returns False
        for a member it does not have (answered UnknownMethod); a call naming
        no interface is refused, as the bus policy refuses it.  Introspection
        of it and its ancestors is answered from the member tables
        (``introspection.introspection_xml``), Properties from
        ``introspection.properties_reply``."""
        self._dispatch = dispatch

    def _method_call(self, msg):
        try:
            answer = self._answer(msg)
        except Exception as e:
            # A dispatch that raised: a named error, never its traceback.
            log.error("a call could not be handled: %s: %s", type(e).__name__, e)
            answer = (i.ERROR_FAILED, "s", (f"the call could not be handled ({type(e).__name__})",))
        if answer is None or msg.flags & wire.NO_REPLY_EXPECTED:
            return
        error, signature, body = answer
        if error is None:
            reply = wire.Message(wire.METHOD_RETURN, self._next_serial(), 0, reply_serial=msg.serial,
                                 destination=msg.sender, signature=signature, body=tuple(body))
        else:
            reply = wire.Message(wire.ERROR, self._next_serial(), 0, error_name=error, reply_serial=msg.serial,
                                 destination=msg.sender, signature=signature, body=tuple(body))
        try:
            self._write(reply)
        except BusError as e:  # an answer that cannot be encoded: a plain one in its place
            log.error("the answer to %s.%s cannot be sent: %s", msg.interface, msg.member, e)
            self._write(wire.Message(wire.ERROR, self._next_serial(), 0, error_name=i.ERROR_FAILED,
                                     reply_serial=msg.serial, destination=msg.sender, signature="s",
                                     body=("the answer could not be encoded",)))

    def _answer(self, msg):
        """What to answer a method call: (error name or None, signature,
        body), or None when the service answers it later."""
        path, interface, member, signature = msg.path, msg.interface, msg.member, msg.signature
        if msg.oversized and (path != i.OBJECT_PATH or interface != i.INTERFACE):
            return m.LIMITS_EXCEEDED, "s", (f"a message of {msg.oversized} bytes is refused",)
        if interface == m.PEER and signature == "":
            if member == "Ping":
                return None, "", ()
            if member == "GetMachineId":
                machine = _machine_id()
                if machine is not None:
                    return None, "s", (machine,)
                return i.ERROR_FAILED, "s", ("this machine has no machine id",)
        if self._dispatch is not None:
            if (interface == m.INTROSPECTABLE and member == "Introspect" and signature == ""
                    and introspection.introspects(path)):
                return None, "s", (introspection.introspection_xml(path),)
            if path == i.OBJECT_PATH:
                if interface == m.PROPERTIES:
                    return introspection.properties_reply(member, signature, proto.unwrap(msg.body))
                if interface is None:
                    # As the bus policy does (it allows only named interfaces):
                    # a call must say which interface it means.
                    return m.ACCESS_DENIED, "s", (f"calls to {i.OBJECT_PATH} must name the interface",)
                if interface == i.INTERFACE and self._dispatch(_incoming(msg)):
                    return None
        return m.UNKNOWN_METHOD, "s", (f"{interface or '(no interface)'}.{member} with signature '{signature}' "
                                       f"is not served at {path}",)

    async def reply(self, incoming, signature="", body=()):
        if not incoming.no_reply:
            h = incoming.handle
            await self._send(wire.Message(wire.METHOD_RETURN, self._next_serial(), 0, reply_serial=h.serial,
                                          destination=h.sender, signature=signature, body=tuple(body)))

    async def reply_error(self, incoming, name, text):
        if not incoming.no_reply:
            h = incoming.handle
            await self._send(wire.Message(wire.ERROR, self._next_serial(), 0, error_name=name, reply_serial=h.serial,
                                          destination=h.sender, signature="s", body=(text,)))

    # -- names ---------------------------------------------------------------------------
    async def own_name(self, name):
        """Become the primary owner of ``name`` (never queue); BusError with
        the reason otherwise."""
        # Ours before the reply is read: the bus sends the calls it queued
        # for the name (bus activation) right behind that reply, often in
        # the same read.
        had = name in self._names
        self._names.add(name)
        reply = await self.call(m.Call(m.DBUS_NAME, m.DBUS_PATH, m.DBUS_NAME, "RequestName", "su",
                                       (name, _DO_NOT_QUEUE)))
        code = reply.body[0] if reply.error_name is None and reply.signature == "u" else None
        if code not in (1, 4):  # the primary owner now, or already
            if not had:
                self._names.discard(name)
            if reply.error_name is not None:
                raise BusError(f"{reply.text} ({reply.error_name})")
            raise BusError(f"{_REQUEST_NAME_REPLIES.get(code, code)} (another instance running?)")

    async def release_name(self, name):
        # The name stays in _names: calls the bus routed to us under it
        # before the release are still ours to answer (idle exit drains them).
        reply = await self.call(m.Call(m.DBUS_NAME, m.DBUS_PATH, m.DBUS_NAME, "ReleaseName", "s", (name,)))
        if reply.error_name is not None:
            raise BusError(f"{reply.text} ({reply.error_name})")


class _Written:
    """The future of a call's write, as far as ``_write`` needs one: a write
    that fails fails the call (no future object per call: a small request's
    path is short)."""

    __slots__ = ("_answered",)

    def __init__(self, answered):
        self._answered = answered

    def done(self):
        return False

    def set_result(self, _):
        pass

    def set_exception(self, exc):
        self._answered(None, exc)

    def exception(self):
        return None


def _fail(fut, exc):
    if fut is not None and not fut.done():
        fut.set_exception(exc)
        fut.exception()  # retrieved: nobody may be waiting for it


async def _authenticate(sock, loop):
    """``AUTH EXTERNAL``, ``BEGIN`` and ``Hello`` in one write
    (``busproto.greeting``), then the server's ``OK`` line; returns what
    came after it (the start of the message stream)."""
    await loop.sock_sendall(sock, proto.greeting())
    line = bytearray()
    while True:
        rest = proto.auth_answer(line)
        if rest is not None:
            return rest
        data = await loop.sock_recv(sock, 256)
        if not data:
            raise BusError("the bus closed the connection during authentication")
        line += data


async def _connect(addresses, loop):
    """A connected non-blocking socket to the first address that takes it."""
    errors = []
    for addr in addresses:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, addr)
            return sock
        except OSError as e:
            sock.close()
            errors.append((addr, e))
    raise proto.unreachable(errors)
