"""The HTTP door against a core, in-process: no sockets, no mount.

Each test talks HTTP/1.1 to HTTPDoor over a trio in-memory stream pair, so
timeouts run on trio's autojump clock and cost no real time.
"""

import json
import os

import trio
import trio.testing

from streamfs_fuse.http import HEAD_TIMEOUT, HTTPDoor, HTTPSettings, send_vectored
from streamfs_fuse.namespace import Namespace, StreamFile
from streamfs_fuse.stream import StreamSettings


def make_door(**settings):
    namespace = Namespace(StreamSettings(), os.getuid(), os.getgid())
    return namespace, HTTPDoor(namespace, HTTPSettings(address=("127.0.0.1", 0), **settings),
                               token=b"sesame" if settings.get("token_file") else None)


async def exchange(door, request: bytes, *, until=b"0\r\n\r\n") -> bytes:
    """Send ``request`` on a fresh connection and read until ``until`` or the close."""
    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(door._connection, server)
        await client.send_all(request)
        reply = b""
        while until not in reply:
            data = await client.receive_some(65536)
            if not data:
                break
            reply += data
        await client.aclose()
    return reply


def status(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1])


async def test_put_then_get_gives_history_then_live_data_until_rm():
    namespace, door = make_door()
    reply = await exchange(door, b"PUT /live HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
                           until=b"}")
    assert status(reply) == 201 and json.loads(reply.split(b"\r\n\r\n", 1)[1])["written"] == 5
    stream = namespace.child(namespace.root, b"live").stream
    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(door._connection, server)
        await client.send_all(b"GET /live HTTP/1.1\r\nHost: x\r\n\r\n")
        await trio.testing.wait_all_tasks_blocked()
        assert stream.statistics().readers == 1
        await stream.open_writer().write(b" world")
        await namespace.unlink(namespace.root, b"live")
        reply = b""
        while not reply.endswith(b"0\r\n\r\n"):
            reply += await client.receive_some(65536)
        await client.aclose()
    head, body = reply.split(b"\r\n\r\n", 1)
    assert b"transfer-encoding: chunked" in head.lower() and b"video" not in head
    assert body == b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    assert stream.statistics().readers == 0


async def test_a_client_that_goes_away_releases_its_reader_at_once():
    namespace, door = make_door()
    node = await namespace.create(StreamFile, namespace.root, b"idle", 0o644, 0, 0)
    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(door._connection, server)
        await client.send_all(b"GET /idle HTTP/1.1\r\nHost: x\r\n\r\n")
        await trio.testing.wait_all_tasks_blocked()
        assert len(node.stream.readers) == 1
        await client.aclose()
    assert not node.stream.readers and door.active == 0


async def test_bad_requests_get_a_status_and_a_json_error():
    namespace, door = make_door()
    await namespace.create(StreamFile, namespace.root, b"s", 0o644, 0, 0)
    cases = [
        (b"GET /%2e%2e/etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /../x HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /a%00b HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /" + b"n" * 300 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /missing HTTP/1.1\r\nHost: x\r\n\r\n", 404),
        (b"GET /s/under HTTP/1.1\r\nHost: x\r\n\r\n", 404),
        (b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 409),
        (b"PATCH /s HTTP/1.1\r\nHost: x\r\n\r\n", 405),
        (b"PUT /s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
        (b"NONSENSE\r\n\r\n", 400),
    ]
    for request, expected in cases:
        reply = await exchange(door, request, until=b"}")
        assert status(reply) == expected, request
        assert "error" in json.loads(reply.split(b"\r\n\r\n", 1)[1]), request


async def test_a_slow_request_head_is_cut_off(autojump_clock):
    _, door = make_door()
    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(door._connection, server)
        await client.send_all(b"GET /slow")  # and nothing more
        started = trio.current_time()
        assert await client.receive_some(100) == b""  # closed by the server
        assert HEAD_TIMEOUT <= trio.current_time() - started < HEAD_TIMEOUT + 1


async def test_token_and_read_only():
    namespace, door = make_door(token_file="unused", read_only=True)
    await namespace.create(StreamFile, namespace.root, b"s", 0o644, 0, 0)
    assert status(await exchange(door, b"HEAD /s HTTP/1.1\r\nHost: x\r\n\r\n",
                                 until=b"\r\n\r\n")) == 401
    assert status(await exchange(
        door, b"HEAD /s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope\r\n\r\n",
        until=b"\r\n\r\n")) == 401
    assert status(await exchange(
        door, b"HEAD /s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sesame\r\n\r\n",
        until=b"\r\n\r\n")) == 200
    assert status(await exchange(
        door, b"DELETE /s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sesame\r\n\r\n",
        until=b"}")) == 403


async def test_vectored_send_waits_for_a_slow_peer_and_keeps_the_order():
    ours, theirs = (trio.SocketStream(s) for s in trio.socket.socketpair())
    pieces = [b"300000\r\n", bytes(range(256)) * (3 * 4096), b"\r\n"]
    received = bytearray()

    async def slow_peer():
        while len(received) < sum(map(len, pieces)):
            received.extend(await theirs.receive_some(4096))
            await trio.sleep(0)

    async with ours, theirs, trio.open_nursery() as nursery:
        nursery.start_soon(slow_peer)
        await send_vectored(ours, pieces)
    assert received == b"".join(pieces)


async def test_vectored_send_to_a_peer_that_left_is_a_broken_resource():
    ours, theirs = (trio.SocketStream(s) for s in trio.socket.socketpair())
    await theirs.aclose()
    try:
        await send_vectored(ours, [b"100000\r\n", bytes(1024 * 1024), b"\r\n"])
    except trio.BrokenResourceError:
        pass
    else:
        raise AssertionError("a send to a closed peer succeeded")
    finally:
        await ours.aclose()
