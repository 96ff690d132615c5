"""busio's own pieces on a socket pair, without a bus daemon: the version
check, the EAGAIN-safe writer and the bounded reader, with the installed
dbus-fast (the venv's pin here; Debian's 1.84 in the real-systemd tier);
and ``Connection.call`` on a private bus: its reply, its timeout, its
cancellation and a closed connection."""

import asyncio
import socket

import pytest
from dbus_fast import Message, MessageType

from harness.buses import PrivateBus
from locald_admin import busio
from locald_admin import interface as i
from locald_admin import messages as m


@pytest.mark.parametrize("version", ["1.83.9", "3.0.0", "0.2.3", "x"])
def test_a_dbus_fast_outside_the_supported_range_is_refused_by_name(version):
    with pytest.raises(ImportError) as exc:
        busio._check_library(version)
    assert "dbus-fast" in str(exc.value) and version in str(exc.value)


@pytest.mark.parametrize("version", ["1.84.2", "2.44.1", "2.99"])
def test_the_supported_range_is_accepted(version):
    busio._check_library(version)


def test_a_library_lacking_what_busio_relies_on_is_refused():
    class Stripped:
        pass
    with pytest.raises(ImportError, match="lacks _authenticate"):
        busio._check_library("2.44.1", Stripped)


def call(path, serial):
    return Message(destination=i.BUS_NAME, path=i.OBJECT_PATH, interface=i.INTERFACE, member=i.METHOD_CLEANUP,
                   signature="s", body=[path], serial=serial, sender=":1.7")


class FakeBus:
    """What _Writer and _GuardedReader use of the library's bus."""

    def __init__(self, sock, loop):
        self._sock, self._loop, self._fd = sock, loop, sock.fileno()
        self.unique_name = ":1.1"
        self._user_disconnect = False
        self.received, self.failed = [], []

    def _process_message(self, msg):
        self.received.append(msg)

    def _finalize(self, err=None):
        self.failed.append(err)


def test_the_writer_waits_while_the_socket_is_full_and_keeps_the_order():
    """10,000 messages of 4 KB queued on a socket nobody reads yet: the
    library's own writer ends the connection at the first EAGAIN."""
    async def run():
        a, b = socket.socketpair()
        a.setblocking(False)
        bus = FakeBus(a, asyncio.get_running_loop())
        writer = busio._Writer(bus)
        futures = []
        for k in range(10_000):
            fut = bus._loop.create_future()
            writer.schedule_write(call(f"/p/{k}/" + "x" * 4000, k + 1), fut)
            futures.append(fut)
        assert not futures[-1].done()  # the socket buffer is full: waiting, not failed
        reader = busio._GuardedReader(FakeBus(b, bus._loop))
        b.setblocking(False)
        bus._loop.add_reader(b.fileno(), reader)
        await asyncio.wait_for(asyncio.gather(*futures), 60)
        while len(reader._bus.received) < 10_000:
            await asyncio.sleep(0.01)
        bus._loop.remove_reader(b.fileno())
        a.close()
        b.close()
        return bus, reader._bus

    sender, receiver = asyncio.run(run())
    assert sender.failed == [] and receiver.failed == []
    assert [m.serial for m in receiver.received] == list(range(1, 10_001))
    assert receiver.received[-1].body == ["/p/9999/" + "x" * 4000]


def test_the_reader_answers_an_oversized_call_from_its_header_and_drops_the_body():
    """A 3 MiB call between two small ones: the small ones whole, the big
    one as its header with its length; never more than 1 MiB and a chunk
    kept, the body received in chunks of at most 64 KiB."""
    async def run():
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        loop = asyncio.get_running_loop()
        sender = busio._Writer(FakeBus(a, loop))
        big = "y" * (3 << 20)
        for serial, path in ((1, "/small"), (2, big), (3, "/after")):
            sender.schedule_write(call(path, serial))
        bus = FakeBus(b, loop)
        reader = busio._GuardedReader(bus)
        reads, peak = [], 0
        recv = reader._recv
        reader._recv = lambda n: reads.append(n) or recv(n)
        while len(bus.received) < 3:
            reader()
            peak = max(peak, len(reader._buf))
            await asyncio.sleep(0)
        a.close()
        b.close()
        return bus, reads, peak

    bus, reads, peak = asyncio.run(run())
    first, oversized, last = bus.received
    assert bus.failed == []
    assert first.body == ["/small"] and last.body == ["/after"] and last.serial == 3
    assert oversized.serial == 2 and oversized.body == [] and oversized.member == i.METHOD_CLEANUP
    assert oversized.message_type == MessageType.METHOD_CALL and oversized.destination == i.BUS_NAME
    assert oversized.locald_oversized > 3 << 20
    assert max(reads) <= 64 << 10 and peak <= busio.MAX_INCOMING + (64 << 10)


def test_an_oversized_reply_is_an_error_reply_to_its_call():
    async def run():
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        loop = asyncio.get_running_loop()
        request = call("/x", 5)
        reply = Message.new_method_return(request, "s", ["z" * (2 << 20)])
        reply.serial = 9
        busio._Writer(FakeBus(a, loop)).schedule_write(reply)
        bus = FakeBus(b, loop)
        reader = busio._GuardedReader(bus)
        while not bus.received:
            reader()
            await asyncio.sleep(0)
        a.close()
        b.close()
        return bus.received[0]

    msg = asyncio.run(run())
    assert msg.message_type == MessageType.ERROR and msg.reply_serial == 5
    assert msg.error_name == "org.freedesktop.DBus.Error.LimitsExceeded" and "bytes" in msg.body[0]


GET_ID = m.Call(m.DBUS_NAME, m.DBUS_PATH, m.DBUS_NAME, "GetId")


def test_a_call_is_answered_times_out_is_cancelled_and_fails_on_a_closed_connection():
    """Connection.call's one future: the reply; TimeoutError after its
    timeout from a peer that never answers; CancelledError when cancelled;
    no reply handler left behind by either; BusError at once, not a hang,
    once the connection is closed."""
    async def run(address):
        con = await busio.Connection.open(address)
        silent = await busio.connect_system_bus(address)
        silent.add_message_handler(lambda msg: True)  # takes every call, answers none
        never = m.Call(silent.unique_name, "/x", "org.example.X", "Wait")
        reply = await con.call(GET_ID, timeout=5)
        assert reply.error_name is None and len(reply.body[0]) == 32
        error = await con.call(m.Call(m.DBUS_NAME, m.DBUS_PATH, m.DBUS_NAME, "NoSuchMethod"), timeout=5)
        assert error.error_name == "org.freedesktop.DBus.Error.UnknownMethod"
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(asyncio.TimeoutError):
            await con.call(never, timeout=0.2)
        assert 0.2 <= loop.time() - started < 2
        assert con.pending_replies == 0
        task = asyncio.ensure_future(con.call(never, timeout=30))
        await asyncio.sleep(0.1)
        assert con.pending_replies == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert con.pending_replies == 0
        con.close()
        with pytest.raises(busio.BusError):
            await asyncio.wait_for(con.call(GET_ID, timeout=5), 5)
        silent.disconnect()

    with PrivateBus() as bus:
        asyncio.run(run(bus.address))
