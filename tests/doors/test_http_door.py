"""The HTTP door against a core, in-process: no sockets, no mount.

Each test talks HTTP/1.1 to HTTPDoor over a trio in-memory stream pair, so
timeouts run on trio's autojump clock and cost no real time.
"""

import json
import re

import trio
import trio.testing

from streamfs_fuse.core.access import NOBODY, ROOT, Identity
from streamfs_fuse.http.agfs import AGFSRoutes
from streamfs_fuse.settings import HTTPSettings
from streamfs_fuse.http.door import (CONNECTION_COST, HEAD_TIMEOUT, UPLOAD_PIECE, HTTPDoor,
                                     send_vectored)
from streamfs_fuse.core.tree import StreamFile, Tree
from streamfs_fuse.settings import StreamSettings

#: The token's owner in these tests.
OWNER = Identity(1000, frozenset({1000}))


def make_door(stream_settings=StreamSettings(), **settings):
    tree = Tree(stream_settings, 0, 0)
    settings = HTTPSettings(addresses=(("127.0.0.1", 0),), **settings)
    door = HTTPDoor(AGFSRoutes(tree, settings), settings,
                    token=b"sesame" if settings.token_file else None, token_owner=OWNER)
    return tree, door


async def exchange(door, request: bytes, *, until=b"0\r\n\r\n", peer=ROOT) -> bytes:
    """Send ``request`` on a fresh connection from ``peer`` and read until ``until`` or the close."""
    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(door.connection, server, peer)
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
    tree, door = make_door()
    reply = await exchange(door, b"PUT /live HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
                           until=b"}")
    assert status(reply) == 201 and json.loads(reply.split(b"\r\n\r\n", 1)[1])["written"] == 5
    stream = tree.child(tree.root, b"live").stream
    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(door.connection, server, ROOT)
        await client.send_all(b"GET /live HTTP/1.1\r\nHost: x\r\n\r\n")
        await trio.testing.wait_all_tasks_blocked()
        assert stream.statistics().readers == 1
        await stream.open_writer().write(b" world")
        await tree.unlink(tree.root, b"live")
        reply = b""
        while not reply.endswith(b"0\r\n\r\n"):
            reply += await client.receive_some(65536)
        await client.aclose()
    head, body = reply.split(b"\r\n\r\n", 1)
    assert b"transfer-encoding: chunked" in head.lower() and b"video" not in head
    assert body == b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    assert stream.statistics().readers == 0


async def test_an_http_1_0_reader_gets_the_stream_unframed_until_the_close():
    """HTTP/1.0 has no chunks: every piece goes out as it is, and the end is the close."""
    tree, door = make_door()
    stream = (await tree.create(StreamFile, tree.root, b"old", 0o644, 0, 0)).stream
    await stream.open_writer().write(b"hello")
    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(door.connection, server, ROOT)
        await client.send_all(b"GET /old HTTP/1.0\r\n\r\n")
        await trio.testing.wait_all_tasks_blocked()
        for piece in (b" live", b" world"):  # each sent on its own, after the reader parked
            await stream.open_writer().write(piece)
            await trio.testing.wait_all_tasks_blocked()
        await tree.unlink(tree.root, b"old")
        reply = b""
        while data := await client.receive_some(65536):
            reply += data
    head, body = reply.split(b"\r\n\r\n", 1)
    assert b"transfer-encoding" not in head.lower() and body == b"hello live world"


async def test_a_client_that_goes_away_releases_its_reader_at_once():
    tree, door = make_door()
    node = await tree.create(StreamFile, tree.root, b"idle", 0o644, 0, 0)
    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(door.connection, server, ROOT)
        await client.send_all(b"GET /idle HTTP/1.1\r\nHost: x\r\n\r\n")
        await trio.testing.wait_all_tasks_blocked()
        assert len(node.stream.readers) == 1
        await client.aclose()
    assert not node.stream.readers and door.active == 0


async def test_bad_requests_get_a_status_and_a_json_error():
    tree, door = make_door()
    await tree.create(StreamFile, tree.root, b"s", 0o644, 0, 0)
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
        nursery.start_soon(door.connection, server, ROOT)
        await client.send_all(b"GET /slow")  # and nothing more
        started = trio.current_time()
        assert await client.receive_some(100) == b""  # closed by the server
        assert HEAD_TIMEOUT <= trio.current_time() - started < HEAD_TIMEOUT + 1


def body_of(reply: bytes) -> bytes:
    return reply.split(b"\r\n\r\n", 1)[1]


async def test_who_a_request_acts_as_token_owner_unix_peer_or_nobody():
    tree, door = make_door(token_file="unused")
    private = await tree.create(StreamFile, tree.root, b"private", 0o600, 1000, 1000)
    await tree.create(StreamFile, tree.root, b"public", 0o644, 0, 0)
    await private.stream.open_writer().write(b"secret")
    get = b"GET /private HTTP/1.1\r\nHost: x\r\n%s\r\n"
    # Over TCP (no peer credentials) and without a token: nobody, the "other" bits.
    assert status(await exchange(door, get % b"", until=b"}", peer=None)) == 403
    assert status(await exchange(door, b"HEAD /public HTTP/1.1\r\nHost: x\r\n\r\n",
                                 until=b"\r\n\r\n", peer=None)) == 200
    put = b"PUT /new HTTP/1.1\r\nHost: x\r\n%sContent-Length: 1\r\n\r\nx"
    assert status(await exchange(door, put % b"", until=b"}", peer=None)) == 403
    assert b"new" not in tree.root.entries
    # A wrong token is refused outright; the right one, with any case of "Bearer",
    # acts as the token file's owner.
    assert status(await exchange(door, get % b"Authorization: Bearer nope\r\n", until=b"}",
                                 peer=None)) == 401
    reply = await exchange(door, get % b"Authorization: bEaReR sesame\r\n",
                           until=b"secret", peer=None)
    assert status(reply) == 200 and b"secret" in reply
    # A Unix socket's peer acts as itself: nobody may not, root may.
    assert status(await exchange(door, get % b"", until=b"}", peer=NOBODY)) == 403
    assert b"secret" in await exchange(door, get % b"", until=b"secret", peer=ROOT)


async def test_read_only_refuses_writes_and_removals():
    tree, door = make_door(read_only=True)
    await tree.create(StreamFile, tree.root, b"s", 0o644, 0, 0)
    for request in (b"DELETE /s HTTP/1.1\r\nHost: x\r\n\r\n",
                    b"PUT /s HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx",
                    b"PUT /api/v1/files?path=/streamfs/s HTTP/1.1\r\nHost: x\r\n"
                    b"Content-Length: 1\r\n\r\nx"):
        assert status(await exchange(door, request, until=b"}")) == 403, request
    assert tree.child(tree.root, b"s").stream.size == 0


async def test_one_http_chunk_is_one_stream_chunk():
    tree, door = make_door()
    chunks = [b"a" * 10, b"b" * 70_000, b"c" * 3]
    body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(door.connection, server, ROOT)
        await client.send_all(b"PUT /rec HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        # Sent a few bytes at a time: the chunks must not follow the socket's reads.
        for i in range(0, len(body), 997):
            await client.send_all(body[i:i + 997])
            await trio.testing.wait_all_tasks_blocked()
        reply = b""
        while b"}" not in reply:
            reply += await client.receive_some(65536)
        await client.aclose()
    stream = tree.child(tree.root, b"rec").stream
    assert status(reply) == 201
    assert [bytes(c.data) for c in stream.ring.history()] == chunks


async def test_a_content_length_body_goes_in_pieces_of_a_stated_size():
    tree, door = make_door(StreamSettings(ring_buffer_size=8 << 20))
    body = bytes(range(256)) * (UPLOAD_PIECE // 256 * 2 + 1)
    reply = await exchange(door, b"PUT /big HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                           % (len(body), body), until=b"}")
    assert status(reply) == 201
    sizes = [len(c.data) for c in tree.child(tree.root, b"big").stream.ring.history()]
    assert sizes == [UPLOAD_PIECE, UPLOAD_PIECE, 256]


async def test_an_upload_that_goes_quiet_is_ended_and_keeps_what_arrived(autojump_clock):
    tree, door = make_door(body_timeout=5.0)
    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(door.connection, server, ROOT)
        await client.send_all(b"PUT /quiet HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked"
                              b"\r\n\r\n5\r\nhello\r\n")
        started = trio.current_time()
        reply = b""
        while data := await client.receive_some(65536):
            reply += data
        assert 5.0 <= trio.current_time() - started < 6.0
    assert status(reply) == 408 and b"connection: close" in reply
    assert tree.child(tree.root, b"quiet").stream.size == 5


async def test_a_quiet_content_length_upload_keeps_what_arrived(autojump_clock):
    tree, door = make_door(body_timeout=5.0)
    reply = await exchange(door, b"PUT /cl HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
                           b"thirteen byte", until=b"\x00never")
    assert status(reply) == 408
    assert tree.child(tree.root, b"cl").stream.size == 13


async def test_request_smuggling_and_absurd_chunks_are_refused_and_closed():
    tree, door = make_door()
    for request in (
        b"PUT /s HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked"
        b"\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"PUT /s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"ffffffffffffffff\r\nabc",
        b"PUT /s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ):
        reply = await exchange(door, request, until=b"\x00never")  # read until the close
        assert status(reply) == 400 and reply.count(b"HTTP/1.1") == 1, request
        assert b"connection: close" in reply.lower(), request
    # A malformed chunked head makes no stream.
    assert b"s" not in tree.root.entries


async def test_the_connection_is_kept_after_head_and_after_errors():
    tree, door = make_door()
    await tree.create(StreamFile, tree.root, b"s", 0o644, 0, 0)
    pipelined = (b"HEAD /s HTTP/1.1\r\nHost: x\r\n\r\n"
                 b"GET /missing HTTP/1.1\r\nHost: x\r\n\r\n"
                 b"PUT /nodir/x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody"
                 b"GET /api/v1/plugins HTTP/1.1\r\nHost: x\r\n\r\n"
                 b"GET http://example/ HTTP/1.1\r\nHost: x\r\n\r\n")
    reply = await exchange(door, pipelined, until=b"[")
    statuses = [int(code) for code in re.findall(rb"HTTP/1.1 (\d{3}) ", reply)]
    assert statuses == [200, 404, 404, 501, 200]
    assert b"connection: close" not in reply.lower()


async def test_a_stalled_http_reader_holds_only_what_the_budget_counts():
    tree, door = make_door(StreamSettings(ring_buffer_size=0))
    node = await tree.create(StreamFile, tree.root, b"s", 0o644, 0, 0)
    # A real socket that the client never reads, so that the door's send waits.
    client, server = (trio.SocketStream(s) for s in trio.socket.socketpair())
    async with client, trio.open_nursery() as nursery:
        nursery.start_soon(door.connection, server, ROOT)
        await client.send_all(b"GET /s HTTP/1.1\r\nHost: x\r\n\r\n")
        await trio.testing.wait_all_tasks_blocked()
        writer = node.stream.open_writer()
        await writer.write(b"x" * (1 << 20))
        await trio.testing.wait_all_tasks_blocked()
        # The door is stuck sending the chunk (nobody reads the client side):
        # the chunk is still counted, not a hidden copy.
        assert node.stream.statistics().held_bytes >= 1 << 20
        await client.aclose()
        await trio.testing.wait_all_tasks_blocked()
    assert node.stream.statistics().held_bytes == 0 and not node.stream.readers


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


async def test_at_the_memory_cap_creates_get_507_and_connections_count():
    """The cap counts each connection (CONNECTION_COST) and refunds it at the close; a
    create that does not fit is 507 through the native and the AGFS routes alike."""
    tree = Tree(StreamSettings(max_memory=1 << 20), 0, 0)
    settings = HTTPSettings(addresses=(("127.0.0.1", 0),))
    door = HTTPDoor(AGFSRoutes(tree, settings), settings, budget=tree.budget)
    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(door.connection, server, ROOT)
        await trio.testing.wait_all_tasks_blocked()
        assert tree.budget.used == CONNECTION_COST
        tree.budget.count(tree.budget.limit - tree.budget.used)  # the rest of the cap is taken
        for request in (b"PUT /new HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx",
                        b"POST /api/v1/directories?path=/streamfs/d HTTP/1.1\r\nHost: x\r\n"
                        b"Content-Length: 0\r\n\r\n"):
            await client.send_all(request)
            reply = b""
            while b"\r\n\r\n" not in reply or not reply.rstrip().endswith((b"}", b"\n")):
                reply += await client.receive_some(65536)
            assert status(reply) == 507, reply
        assert tree.root.entries == {}
        await client.aclose()
    assert tree.budget.used == tree.budget.limit - CONNECTION_COST
