"""Bus connection helpers shared by the mechanism and the client.

dbus-next 0.2.3 writes to a non-blocking socket and treats *any* exception
from ``send()`` as fatal: when the kernel socket buffer is full the write
raises ``BlockingIOError`` (EAGAIN), dbus-next finalizes the connection and
every later call hangs.  That happens with a few hundred messages queued on
one connection.  ``harden()`` replaces the writer's callback with one that
treats EAGAIN as "wait until writable", which is what a non-blocking writer
must do.
"""

import array
import socket

from dbus_next import BusType
from dbus_next.aio import MessageBus


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
    """Connect to the system bus (``DBUS_SYSTEM_BUS_ADDRESS`` is honoured by
    dbus-next) or to ``address``, with the hardened writer installed."""
    bus = harden(MessageBus(bus_address=address, bus_type=BusType.SYSTEM))
    await bus.connect()
    return bus
