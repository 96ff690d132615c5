"""One Cleanup call on a blocking socket of its own, without asyncio:
``locald-shim``'s path (locald runs it for every delegated delete, so its
start is what one call needs and no more) and ``force_remove_dir_all``'s.

``cleanup(path, ...)`` connects to the system bus (``busproto``: the
address, ``AUTH EXTERNAL``, ``Hello``) and sends, in the same write,
``GetNameOwner`` of the service when progress is to be shown, and the
``Cleanup`` call: one round trip in all.  Then it reads until the call's
answer, within the call's timeout:

* ``Progress`` signals are believed only from the unique name that owned
  ``org.locald.Admin1`` when the call was made (GetNameOwner's answer, which
  the bus sends before it routes the call), and only for this path;
* ``Busy`` is asked again on the same connection after the pause of
  ``request.Busy``, within the timeout;
* the answer means what ``request.conclude`` says (``errors.from_dbus``,
  the one error table); no bus, or a bus that does not take us, is
  MechanismUnavailable, as is a connection lost mid-call.

The socket is closed however the call ends (a KeyboardInterrupt or the
shim's SIGTERM exception included): the mechanism sees the caller leave and
stops the walk, or drops the queued request.
"""

import time

# The socket type itself, without the module ``socket`` wraps it in: that
# one makes enums of every constant and imports selectors at start, 2.4 ms
# of the shim's (a third of what its own code costs); everything used here
# (connect, sendall, recv, settimeout, close) is the C type's.
from _socket import AF_UNIX, SOCK_CLOEXEC, SOCK_STREAM, socket

from locald_admin import busproto
from locald_admin import interface as i
from locald_admin import messages
from . import request

RECV = 1 << 16  # the most bytes read at once during authentication


class _Connection:
    """A blocking connection for one caller: ``open`` connects, says Hello
    and sends the first calls with it; ``answer`` reads until a call's
    reply."""

    def __init__(self, sock, on_signal):
        self._sock = sock
        self._on_signal = on_signal
        self._parser = busproto.parser()
        self._serial = 1  # Hello's
        self._replies = {}  # serial -> wire message, answers read before they were waited for
        self.unique_name = None

    @classmethod
    def open(cls, address, calls, deadline, on_signal=None):
        """Connect, authenticate, say Hello and send ``calls`` (numbered 2,
        3, ...) in one write; return once Hello is answered.  BusError when
        there is no bus to talk to, TimeoutError past ``deadline``."""
        sock = _connect(busproto.socket_addresses(address), deadline)
        try:
            con = cls(sock, on_signal)
            con._send(busproto.greeting(*calls), deadline)
            con._serial += len(calls)
            received = bytearray()
            while True:
                rest = busproto.auth_answer(received)
                if rest is not None:
                    break
                data = con._recv(RECV, deadline)
                if not data:
                    raise busproto.BusError("the bus closed the connection during authentication")
                received += data
            con._feed(rest)
            con.unique_name = busproto.read_hello(con._wait(1, deadline))
            return con
        except BaseException:
            sock.close()
            raise

    def call(self, call, deadline):
        """Send ``call``; returns its serial (for ``answer``)."""
        self._serial += 1
        try:
            data = busproto.encode(call, self._serial)
        except busproto.WireError as e:
            raise busproto.BusError(f"the message cannot be sent: {e}") from None
        self._send(data, deadline)
        return self._serial

    def answer(self, serial, deadline):
        """The ``messages.Reply`` to the call numbered ``serial``; signals
        read meanwhile go to ``on_signal``.  TimeoutError past
        ``deadline``, BusError when the connection fails."""
        return busproto.reply(self._wait(serial, deadline))

    def close(self):
        self._sock.close()

    def _send(self, data, deadline):
        _settimeout(self._sock, deadline)
        try:
            self._sock.sendall(data)
        except TimeoutError:  # (an OSError too)
            raise
        except OSError as e:
            raise busproto.BusError(f"the bus connection failed: {e}") from None

    def _recv(self, size, deadline):
        _settimeout(self._sock, deadline)
        try:
            return self._sock.recv(size)
        except TimeoutError:  # (an OSError too)
            raise
        except OSError as e:
            raise busproto.BusError(f"the bus connection failed: {e}") from None

    def _wait(self, serial, deadline):
        while serial not in self._replies:
            data = self._recv(self._parser.want(), deadline)
            if not data:
                raise busproto.BusError("the bus closed the connection")
            self._feed(data)
        return self._replies.pop(serial)

    def _feed(self, data):
        try:
            msgs = self._parser.feed(data)
        except busproto.WireError as e:
            raise busproto.BusError(f"the bus sent something that is not D-Bus: {e}") from None
        for msg in msgs:
            if busproto.addressed_elsewhere(msg, self.unique_name):
                continue
            if busproto.is_reply(msg):
                self._replies[msg.reply_serial] = busproto.answer(msg)
            elif self._on_signal is not None:
                signal = busproto.received_signal(msg)
                if signal is not None:
                    self._on_signal(signal)


def _settimeout(sock, deadline):
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError()
    sock.settimeout(remaining)


def _connect(addresses, deadline):
    """A connected socket to the first address that takes it; BusError."""
    errors = []
    for addr in addresses:
        sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC)
        try:
            _settimeout(sock, deadline)
            sock.connect(addr)
            return sock
        except OSError as e:
            sock.close()
            if isinstance(e, TimeoutError):
                raise
            errors.append((addr, e))
    raise busproto.unreachable(errors)


def cleanup(path, *, interactive=False, timeout=i.DEFAULT_CALL_TIMEOUT, on_progress=None, address=None,
            with_result=False, dry_run=False):
    """Call ``Cleanup(path)`` (an absolute path) once, blocking; return None
    on success.  With ``with_result`` or ``dry_run``, call
    ``CleanupWithOptions`` instead and return its ``request.CleanupResult``
    (a mechanism without it: ``Cleanup`` again on the same connection for a
    plain call, UnsupportedError for a dry run).

    Raises a CleanupError subclass for the mechanism's errors, or
    MechanismUnavailable when there is no mechanism to ask.
    ``on_progress(removed, elapsed)`` is called for Progress signals.
    ``Busy`` is retried with backoff until ``timeout``; BusyError only when
    the mechanism stays busy that long.  ``address``: the bus's (default:
    ``DBUS_SYSTEM_BUS_ADDRESS``, else the system bus).
    """
    options = with_result or dry_run

    def call():
        if options:
            return messages.cleanup_with_options(path, interactive, dry_run, allow_interactive=interactive)
        return messages.cleanup(path, interactive)

    busy = request.Busy(timeout, time.monotonic)
    owner = []  # the service's unique name, once GetNameOwner is answered

    def on_signal(signal):
        progress = messages.read_progress(signal, owner[0] if owner else None)
        if progress is not None and progress[0] == path:
            try:
                on_progress(progress[1], progress[2])
            except Exception:
                pass

    first = [call()]
    if on_progress is not None:  # Progress is believed only from the service's own connection
        first.insert(0, messages.get_name_owner(i.BUS_NAME))
    try:
        bus = _Connection.open(address, first, busy.deadline, on_signal if on_progress is not None else None)
    except busproto.BusError as e:
        raise request.unreachable(e) from None
    except TimeoutError:
        raise request.unreachable(f"no answer within {timeout:g} s") from None
    try:
        if on_progress is not None:
            owner.append(messages.read_name_owner(bus.answer(2, busy.deadline)))
        serial = 1 + len(first)
        while True:
            reply = bus.answer(serial, busy.deadline)
            if options and request.older(reply):
                if dry_run:
                    raise request.unsupported()
                options = False  # an older mechanism: the plain call, which says nothing of what it did
                serial = bus.call(call(), busy.deadline)
                continue
            pause = busy.pause(reply)
            if pause is None:
                break
            time.sleep(pause)
            serial = bus.call(call(), busy.deadline)
    except TimeoutError:
        raise request.timed_out(timeout) from None
    except busproto.BusError as e:
        raise request.lost(e) from None
    finally:
        bus.close()
    if options:
        return request.result(reply, dry_run)
    request.conclude(reply)
    return request.UNKNOWN_RESULT if with_result else None
