"""busio's connection, from the outside: on a socket pair whose other end
is a raw peer speaking ``wire`` (the EAGAIN-safe writer, the bounded
reader, serving, a stream that is not D-Bus), and on a private bus
(``Connection.call``: its reply, its timeout, its cancellation, a closed
connection; Peer; the bus address)."""

import asyncio
import os
import socket

import pytest

from harness.buses import PrivateBus
from locald_admin import busio, wire
from locald_admin import interface as i
from locald_admin import messages as m


def run(coro, timeout=60):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def pair():
    """(Connection on one end, the raw other end), both non-blocking."""
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    return busio.Connection(a, asyncio.get_running_loop()), b


async def read_messages(sock, count, parser=None):
    """``count`` messages from the raw end ``sock``."""
    parser = parser or wire.Parser()
    loop = asyncio.get_running_loop()
    out = []
    while len(out) < count:
        data = await loop.sock_recv(sock, parser.want())
        assert data, "the connection closed"
        out += parser.feed(data)
    return out


def cleanup_call(path, serial, sender=":1.7"):
    """A Cleanup call as the peer sends it (peer to peer: no destination;
    a connection takes a call addressed to another name for none of its own)."""
    return wire.Message(wire.METHOD_CALL, serial, 0, i.OBJECT_PATH, i.INTERFACE, i.METHOD_CLEANUP,
                        sender=sender, signature="s", body=(path,))


# -- the bus address -------------------------------------------------------------

def test_unix_paths_and_abstract_names_are_taken_in_order_and_unescaped():
    assert busio.socket_addresses("unix:path=/run/a%20b,guid=00ff;tcp:host=x,port=1;unix:abstract=z") == [
        "/run/a b", "\0z"]


def test_an_address_with_no_unix_socket_is_refused_by_name():
    with pytest.raises(busio.BusError, match="no unix:path="):
        busio.socket_addresses("tcp:host=localhost,port=1234")


def test_the_system_bus_socket_is_the_default(monkeypatch):
    monkeypatch.delenv("DBUS_SYSTEM_BUS_ADDRESS", raising=False)
    assert busio.socket_addresses() == ["/run/dbus/system_bus_socket"]


# -- writing ---------------------------------------------------------------------

def test_the_writer_waits_while_the_socket_is_full_and_keeps_the_order():
    """10,000 signals of 4 KB posted on a socket nobody reads yet (far more
    than its buffer): the connection waits for the socket instead of ending
    at the first EAGAIN, and everything arrives, in order."""
    async def scenario():
        con, peer = pair()
        for k in range(10_000):
            con.post(m.Signal(":1.9", "/p", "org.example.X", "Big", "s", (f"/p/{k}/" + "x" * 4000,)))
        assert con.connected
        last = asyncio.ensure_future(con.send(m.Signal(":1.9", "/p", "org.example.X", "Last")))
        await asyncio.sleep(0.05)
        assert not last.done()  # still queued: waiting, not failed
        got = await read_messages(peer, 10_001)
        await last
        assert con.connected
        con.close()
        peer.close()
        return got

    got = run(scenario())
    assert [msg.serial for msg in got] == list(range(1, 10_002))
    assert got[9_999].body == ("/p/9999/" + "x" * 4000,) and got[-1].member == "Last"


# -- reading and serving ---------------------------------------------------------

def test_an_oversized_call_arrives_as_its_header_between_whole_ones():
    """A 3 MiB call between two small ones: the small ones whole, the big
    one as its header with its length, in order."""
    async def scenario():
        con, peer = pair()
        seen = []
        con.serve(lambda call: seen.append(call) or True)
        for msg in (cleanup_call("/small", 1), cleanup_call("y" * (3 << 20), 2), cleanup_call("/after", 3)):
            await asyncio.get_running_loop().sock_sendall(peer, wire.encode(msg))
        while len(seen) < 3:
            await asyncio.sleep(0.01)
        con.close()
        peer.close()
        return seen

    first, big, last = run(scenario())
    assert first.body == ("/small",) and last.body == ("/after",) and not first.oversized
    assert big.oversized > 3 << 20 and big.body == () and big.member == i.METHOD_CLEANUP
    assert big.handle.serial == 2


def test_an_oversized_reply_is_an_error_reply_to_its_call():
    async def scenario():
        con, peer = pair()
        call = asyncio.ensure_future(con.call(m.Call(":1.9", "/x", "org.example.X", "Get")))
        (request,) = await read_messages(peer, 1)
        reply = wire.Message(wire.METHOD_RETURN, 9, 0, reply_serial=request.serial, sender=":1.9",
                             signature="s", body=("z" * (2 << 20),))
        await asyncio.get_running_loop().sock_sendall(peer, wire.encode(reply))
        got = await call
        con.close()
        peer.close()
        return got

    reply = run(scenario())
    assert reply.error_name == m.LIMITS_EXCEEDED and "bytes" in reply.text


def test_a_stream_that_is_not_dbus_ends_the_connection_and_fails_the_calls_waiting():
    async def scenario():
        con, peer = pair()
        call = asyncio.ensure_future(con.call(m.Call(":1.9", "/x", "org.example.X", "Get")))
        await read_messages(peer, 1)
        await asyncio.get_running_loop().sock_sendall(peer, b"HTTP/1.1 200 OK\r\n\r\n" + b"\0" * 32)
        await asyncio.wait_for(con.wait_closed(), 5)
        with pytest.raises(busio.BusError, match="not D-Bus"):
            await call
        assert not con.connected and con.pending_replies == 0
        peer.close()

    run(scenario())


def test_a_soundly_framed_message_that_is_not_valid_inside_is_passed_over_and_the_connection_stays():
    async def scenario():
        con, peer = pair()
        seen = []
        con.serve(lambda call: seen.append(call) or True)
        good = wire.encode(cleanup_call("/after", 3))
        broken = bytearray(wire.encode(cleanup_call("/bad", 2)))
        broken[-3] = 0xFF  # not UTF-8 in the path
        await asyncio.get_running_loop().sock_sendall(peer, bytes(broken) + good)
        while not seen:
            await asyncio.sleep(0.01)
        assert con.connected
        con.close()
        peer.close()
        return seen

    (only,) = run(scenario())
    assert only.body == ("/after",)


def test_a_dispatch_that_raises_is_answered_with_a_named_error_not_a_traceback():
    async def scenario():
        con, peer = pair()

        def dispatch(call):
            raise KeyError("secret detail")

        con.serve(dispatch)
        await asyncio.get_running_loop().sock_sendall(peer, wire.encode(cleanup_call("/x", 4)))
        (reply,) = await read_messages(peer, 1)
        con.close()
        peer.close()
        return reply

    reply = run(scenario())
    assert reply.type == wire.ERROR and reply.reply_serial == 4 and reply.destination == ":1.7"
    assert reply.error_name == i.ERROR_FAILED
    assert "KeyError" in reply.body[0] and "secret" not in reply.body[0] and "Traceback" not in reply.body[0]


@pytest.mark.parametrize("path, interface, member, error", [
    (i.OBJECT_PATH, "org.example.Other", "Cleanup", m.UNKNOWN_METHOD),
    ("/elsewhere", i.INTERFACE, "Cleanup", m.UNKNOWN_METHOD),
    (i.OBJECT_PATH, None, "Cleanup", m.ACCESS_DENIED),
    (i.OBJECT_PATH, i.INTERFACE, "NoSuchMember", m.UNKNOWN_METHOD),
])
def test_calls_the_service_does_not_serve_are_answered_with_named_errors(path, interface, member, error):
    async def scenario():
        con, peer = pair()
        con.serve(lambda call: call.member == "Cleanup")
        msg = wire.Message(wire.METHOD_CALL, 5, 0, path, interface, member, sender=":1.7", signature="s",
                           body=("/x",))
        await asyncio.get_running_loop().sock_sendall(peer, wire.encode(msg))
        (reply,) = await read_messages(peer, 1)
        con.close()
        peer.close()
        return reply

    reply = run(scenario())
    assert (reply.type, reply.error_name, reply.reply_serial) == (wire.ERROR, error, 5)


def test_a_call_or_reply_addressed_to_another_connection_is_not_taken():
    """What an eavesdropping connection sees: others' calls are never
    answered, others' replies never taken for the answer to ours."""
    async def scenario():
        con, peer = pair()
        con.unique_name = ":1.5"  # what the bus would have named it
        seen = []
        con.serve(lambda call: seen.append(call) or True)
        call = asyncio.ensure_future(con.call(m.Call(":1.9", "/x", "org.example.X", "Get"), timeout=0.5))
        (request,) = await read_messages(peer, 1)
        loop = asyncio.get_running_loop()
        foreign = wire.Message(wire.METHOD_RETURN, 7, 0, reply_serial=request.serial, destination=":1.99",
                               sender=":1.9", signature="s", body=("forged",))
        other_call = wire.Message(wire.METHOD_CALL, 8, 0, i.OBJECT_PATH, i.INTERFACE, i.METHOD_CLEANUP,
                                  destination=":1.99", sender=":1.7", signature="s", body=("/x",))
        await loop.sock_sendall(peer, wire.encode(foreign) + wire.encode(other_call))
        with pytest.raises(asyncio.TimeoutError):
            await call
        assert seen == []
        con.close()
        peer.close()

    run(scenario())


def test_peer_ping_and_machine_id_are_answered_and_introspection_and_properties_served():
    async def scenario():
        con, peer = pair()
        con.serve(lambda call: False)
        sends = [wire.Message(wire.METHOD_CALL, 1, 0, i.OBJECT_PATH, m.PEER, "Ping", sender=":1.7"),
                 wire.Message(wire.METHOD_CALL, 2, 0, "/", m.INTROSPECTABLE, "Introspect", sender=":1.7"),
                 wire.Message(wire.METHOD_CALL, 3, 0, i.OBJECT_PATH, m.PROPERTIES, "GetAll", sender=":1.7",
                              signature="s", body=(i.INTERFACE,)),
                 wire.Message(wire.METHOD_CALL, 4, wire.NO_REPLY_EXPECTED, i.OBJECT_PATH, m.PEER, "Ping",
                              sender=":1.7"),
                 wire.Message(wire.METHOD_CALL, 5, 0, "/x", m.PEER, "GetMachineId", sender=":1.7")]
        for msg in sends:
            await asyncio.get_running_loop().sock_sendall(peer, wire.encode(msg))
        replies = await read_messages(peer, 4)
        con.close()
        peer.close()
        return replies

    ping, introspect, props, machine = run(scenario())
    assert ping.type == wire.METHOD_RETURN and ping.reply_serial == 1
    assert introspect.reply_serial == 2 and "<node" in introspect.body[0]
    assert props.reply_serial == 3 and props.signature == "a{sv}" and "Version" in props.body[0]
    assert machine.reply_serial == 5  # the no-reply Ping (serial 4) got nothing
    if busio._machine_id() is not None:
        assert machine.type == wire.METHOD_RETURN and len(machine.body[0]) == 32


# -- calls on a real bus ---------------------------------------------------------

GET_ID = m.Call(m.DBUS_NAME, m.DBUS_PATH, m.DBUS_NAME, "GetId")


async def silent_peer(address):
    """A raw connection that says Hello and then never answers anything:
    (its socket, its unique name)."""
    path = busio.socket_addresses(address)[0]
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    await loop.sock_connect(sock, path)
    hello = wire.Message(wire.METHOD_CALL, 1, 0, m.DBUS_PATH, m.DBUS_NAME, "Hello", destination=m.DBUS_NAME)
    uid = str(os.geteuid()).encode().hex().encode()
    await loop.sock_sendall(sock, b"\0AUTH EXTERNAL " + uid + b"\r\nBEGIN\r\n" + wire.encode(hello))
    buf = b""
    while b"\r\n" not in buf:
        buf += await loop.sock_recv(sock, 256)
    rest = buf.split(b"\r\n", 1)[1]
    parser = wire.Parser()
    got = parser.feed(rest) if rest else []
    if not got:
        got = await read_messages(sock, 1, parser)
    return sock, got[0].body[0]


def test_a_call_is_answered_times_out_is_cancelled_and_fails_on_a_closed_connection():
    """Connection.call: the reply; TimeoutError after its timeout from a
    peer that never answers; CancelledError when cancelled; no reply
    handler left behind by either; BusError at once, not a hang, once the
    connection is closed."""
    async def scenario(address):
        con = await busio.Connection.open(address)
        assert con.unique_name.startswith(":")
        silent, name = await silent_peer(address)
        never = m.Call(name, "/x", "org.example.X", "Wait")
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
        silent.close()

    with PrivateBus() as bus:
        run(scenario(bus.address))


def test_a_refused_connection_is_a_bus_error_naming_the_socket(tmp_path):
    async def scenario():
        with pytest.raises(busio.BusError, match="cannot connect"):
            await busio.Connection.open(f"unix:path={tmp_path}/nothing-here")

    run(scenario())


def test_owning_a_name_someone_else_owns_says_so():
    async def scenario(address):
        first = await busio.Connection.open(address)
        second = await busio.Connection.open(address)
        await first.own_name("org.example.Taken")
        with pytest.raises(busio.BusError, match="EXISTS"):
            await second.own_name("org.example.Taken")
        await first.release_name("org.example.Taken")
        await second.own_name("org.example.Taken")
        first.close()
        second.close()

    with PrivateBus() as bus:
        run(scenario(bus.address))
