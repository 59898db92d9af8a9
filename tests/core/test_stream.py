"""The stream core without FUSE: fanout, history, policies, memory cap, waits, EOF."""

import random

import pytest
import trio
import trio.testing

from streamfs_fuse.core.budget import MemoryBudget
from streamfs_fuse.core.chunk import CHUNK_OVERHEAD
from streamfs_fuse.core.reader import ReaderDisconnected
from streamfs_fuse.core.ring import SMALL_CHUNK
from streamfs_fuse.core.stream import DROP_LOG_INTERVAL, FANOUT_SLICE, Stream, StreamClosed
from streamfs_fuse.settings import SlowReaderPolicy, StreamSettings
from streamfs_fuse.core.wait import Interrupted, Waiter

DROP, BLOCK, DISCONNECT = SlowReaderPolicy.DROP, SlowReaderPolicy.BLOCK, SlowReaderPolicy.DISCONNECT
KiB = 1024


def cost(size, count=1):
    """What ``count`` chunks of ``size`` bytes cost in every limit."""
    return count * (size + CHUNK_OVERHEAD)


def make_stream(channel=1 << 20, ring=1 << 20, policy=DROP, max_memory=None, budget=None):
    settings = StreamSettings(channel, ring, policy, max_memory)
    return Stream("/s", settings, budget=budget or MemoryBudget(max_memory))


async def read_all(reader, size=65536):
    out = bytearray()
    while data := await reader.read(size):
        out += data
    return bytes(out)


async def read_queued(reader, size=65536):
    """Everything queued right now, without waiting."""
    out = bytearray()
    while True:
        try:
            data = await reader.read(size, nonblocking=True)
        except trio.WouldBlock:
            return bytes(out)
        if not data:
            return bytes(out)
        out += data


def record(i, size):
    """Chunk ``i`` of a numbered run: ``size`` bytes that say which chunk they are."""
    return i.to_bytes(4, "big") * (size // 4)


def numbers(data, size):
    assert len(data) % size == 0, "a chunk came back cut"
    return [int.from_bytes(data[i:i + 4], "big") for i in range(0, len(data), size)]


def assert_memory_released(*streams):
    """Nothing is held for readers: the budget counts the rings alone."""
    for stream in streams:
        assert stream.held == 0 and stream.statistics().held_bytes == 0
        assert stream.budget.held == 0
        assert stream.budget.used == sum(s.ring.footprint for s in stream.budget.histories)


# -- fanout and history ---------------------------------------------------------


async def test_every_reader_gets_every_chunk_in_order():
    stream = make_stream()
    readers = [stream.open_reader() for _ in range(3)]
    writer = stream.open_writer()
    for i in range(100):
        await writer.write(b"%d," % i)
    stream.close()
    expected = b"".join(b"%d," % i for i in range(100))
    for reader in readers:
        assert await read_all(reader) == expected


async def test_writers_are_counted_while_open():
    stream = make_stream()
    a, b = stream.open_writer(), stream.open_writer()
    assert stream.writers == 2 and stream.statistics().writers == 2
    a.close()
    a.close()
    assert stream.writers == 1
    b.close()
    assert stream.writers == 0


async def test_late_reader_gets_history_then_live_data():
    stream = make_stream()
    writer = stream.open_writer()
    await writer.write(b"old1")
    await writer.write(b"old2")
    reader = stream.open_reader()
    await writer.write(b"new")
    stream.close()
    assert await read_all(reader) == b"old1old2new"


async def test_late_reader_gets_the_whole_ring_even_when_its_channel_is_smaller():
    # History does not count against the channel (it used to be cut to fit it).
    stream = make_stream(channel=8, ring=100)
    writer = stream.open_writer()
    for chunk in (b"aaaa", b"bbbb", b"cccc"):
        await writer.write(chunk)
    reader = stream.open_reader()
    assert reader.backlog == 0 and reader.pending == 12
    stream.close()
    assert await read_all(reader) == b"aaaabbbbcccc"


async def test_ring_of_zero_gives_no_history():
    stream = make_stream(ring=0)
    writer = stream.open_writer()
    for data in (b"a", b"b" * 100, b"c" * SMALL_CHUNK):
        await writer.write(data)
    reader = stream.open_reader()
    assert reader.pending == 0
    await writer.write(b"live")
    stream.close()
    assert await read_all(reader) == b"live"
    assert stream.statistics().ring_bytes == 0


async def test_coalesced_small_writes_come_back_whole_and_in_order():
    stream = make_stream(ring=1 << 20)
    writer = stream.open_writer()
    writes = [bytes([i % 251]) * (1 + (i * 53) % (SMALL_CHUNK - 1)) for i in range(200)]
    for data in writes:
        await writer.write(data)
    assert stream.statistics().ring_chunks < len(writes) // 4
    reader = stream.open_reader()
    await writer.write(b"live")
    stream.close()
    assert await read_all(reader, 1000) == b"".join(writes) + b"live"


async def test_history_after_a_million_one_byte_writes():
    ring = 64 * KiB
    stream = make_stream(ring=ring)
    writer = stream.open_writer()
    written = bytes(i % 251 for i in range(1_000_000))
    for i in range(len(written)):
        await writer.write(written[i:i + 1])
    statistics = stream.statistics()
    assert statistics.ring_chunks <= 17  # a unit per sixteenth of the ring, and the open one
    reader = stream.open_reader()
    stream.close()
    history = await read_all(reader)
    assert ring * 15 // 16 <= len(history) <= ring
    assert history == written[-len(history):]


@pytest.mark.parametrize("policy", [DROP, BLOCK])
@pytest.mark.parametrize("size", [1000, SMALL_CHUNK, 10_000])
@pytest.mark.parametrize("channel, ring", [(512 * KiB, 512 * KiB), (256 * KiB, 512 * KiB)])
async def test_late_joiner_gets_the_full_ring_then_every_live_chunk_that_fits(
        channel, ring, size, policy):
    stream = make_stream(channel=channel, ring=ring, policy=policy)
    writer = stream.open_writer()
    before = 3 * ring // size  # the ring is full, and has evicted a lot
    for i in range(before):
        await writer.write(record(i, size))
    reader = stream.open_reader()
    live = channel // cost(size)
    # The writer writes as much as fits in the channel before the reader reads
    # anything; under block not one of these writes may wait.
    with trio.fail_after(10):
        for i in range(before, before + live):
            await writer.write(record(i, size))
    assert stream.statistics().waiting_writes == 0
    got = numbers(await read_queued(reader), size)
    assert stream.dropped_chunks == 0 and reader.dropped_chunks == 0
    assert got == list(range(got[0], before + live)), "a gap between history and live data"
    history = before - got[0]
    assert history * size >= ring * 15 // 16  # the whole ring, in whole units
    if size >= SMALL_CHUNK:
        assert history == ring // size


async def test_late_joiner_misses_only_what_does_not_fit_its_channel():
    size, channel, ring = 10_000, 256 * KiB, 512 * KiB
    stream = make_stream(channel=channel, ring=ring)
    writer = stream.open_writer()
    for i in range(100):
        await writer.write(record(i, size))
    reader = stream.open_reader()
    live = channel // cost(size)
    for i in range(100, 100 + live + 1):
        await writer.write(record(i, size))
    got = numbers(await read_queued(reader), size)
    assert got == list(range(100 - ring // size, 100 + live))
    assert reader.dropped_chunks == 1 and stream.dropped_bytes == size


async def test_history_seeding_is_atomic_under_concurrent_writes():
    """Readers opened at random moments during writes see one gapless run."""
    stream = make_stream(channel=1 << 30, ring=40 * 8)
    readers = []
    async with trio.open_nursery() as nursery:
        async def write():
            writer = stream.open_writer()
            for i in range(2000):
                await writer.write(record(i, 8))
                if i % 7 == 0:
                    await trio.lowlevel.checkpoint()

        async def opener():
            for _ in range(50):
                readers.append(stream.open_reader())
                await trio.lowlevel.checkpoint()

        nursery.start_soon(write)
        nursery.start_soon(opener)
    stream.close()
    for reader in readers:
        data = await read_all(reader)
        got = numbers(data, 8)
        assert got, "a reader got nothing"
        assert got == list(range(got[0], 2000))


# -- slow readers -----------------------------------------------------------------


async def test_slow_reader_drops_whole_chunks_and_counts_them():
    stream = make_stream(channel=cost(4, 2) + 2, ring=0)
    slow, fast = stream.open_reader(), stream.open_reader()
    writer = stream.open_writer()
    got = bytearray()
    for i in range(10):
        await writer.write(b"%04d" % i)
        got += await fast.read(100)
    stream.close()
    assert bytes(got) == b"".join(b"%04d" % i for i in range(10))
    # The slow reader's channel holds two chunks; the rest drop.
    assert await read_all(slow) == b"00000001"
    assert (stream.dropped_chunks, stream.dropped_bytes) == (8, 32)
    assert (slow.dropped_chunks, fast.dropped_chunks) == (8, 0)


async def test_empty_reader_takes_a_chunk_larger_than_its_buffer():
    stream = make_stream(channel=4)
    reader = stream.open_reader()
    await stream.open_writer().write(b"0123456789")
    assert await reader.read(100) == b"0123456789"


async def test_read_returns_eof_only_after_draining_the_queue():
    stream = make_stream()
    reader = stream.open_reader()
    await stream.open_writer().write(b"abc")
    stream.close()
    assert await reader.read(2) == b"ab"
    assert await reader.read(2) == b"c"
    assert await reader.read(2) == b""
    assert await reader.read(2) == b""


async def test_close_wakes_a_blocked_reader_with_eof():
    stream = make_stream()
    reader = stream.open_reader()
    async with trio.open_nursery() as nursery:
        results = []

        async def read():
            results.append(await reader.read(10))

        nursery.start_soon(read)
        await trio.testing.wait_all_tasks_blocked()
        assert results == [] and stream.statistics().waiting_reads == 1
        stream.close()
    assert results == [b""]


async def test_write_after_close_raises_stream_closed():
    stream = make_stream()
    writer = stream.open_writer()
    stream.close()
    with pytest.raises(StreamClosed):
        await writer.write(b"x")


async def test_reader_opened_after_close_gets_the_ring_then_eof():
    stream = make_stream()
    await stream.open_writer().write(b"history")
    stream.close()
    reader = stream.open_reader()
    assert await reader.read(10) == b"history"
    assert await reader.read(10) == b""


async def test_an_ended_reader_can_seek_back_into_the_ring():
    stream = make_stream()
    writer = stream.open_writer()
    reader = stream.open_reader()
    await writer.write(b"0123456789")
    stream.close()
    assert await read_all(reader) == b"0123456789"
    reader.seek(4)
    assert await read_all(reader) == b"456789"


async def test_a_reader_that_seeks_gets_eof_at_the_live_edge_until_it_seeks_again():
    """As a growing file answers a prober; a reader that never seeks always waits."""
    stream = make_stream()
    writer = stream.open_writer()
    await writer.write(b"0123456789")
    follower, prober = stream.open_reader(), stream.open_reader()
    assert await follower.read(100) == b"0123456789"
    with pytest.raises(trio.WouldBlock):
        await follower.read(100, nonblocking=True)
    prober.seek(4)
    assert await prober.read(100) == b"456789"
    assert await prober.read(100) == b""
    await writer.write(b"ab")
    assert await prober.read(100) == b"ab"
    assert await prober.read(100) == b"", "no seek since the EOF: still a file"
    prober.seek(0)  # back to play what it probed: it follows the stream
    assert await read_queued(prober) == b"0123456789ab"
    with trio.move_on_after(0.1) as waited:
        await prober.read(100)
    assert waited.cancelled_caught
    await writer.write(b"c")
    assert await prober.read(100) == b"c"


async def test_zero_byte_write_makes_no_chunk():
    stream = make_stream()
    assert await stream.open_writer().write(b"") == 0
    assert stream.chunks_written == 0 and len(stream.ring) == 0


async def test_large_chunk_is_served_without_copying_its_tail():
    stream = make_stream(channel=1 << 22)
    reader = stream.open_reader()
    chunk = bytes(range(256)) * 4096  # 1 MiB
    await stream.open_writer().write(chunk)
    pieces = [await reader.read(128 * 1024) for _ in range(8)]
    assert all(isinstance(p, memoryview) and p.obj is chunk for p in pieces)
    assert b"".join(pieces) == chunk
    assert reader.pending == 0


async def test_small_queued_chunks_are_joined_into_one_read():
    stream = make_stream()
    reader = stream.open_reader()
    writer = stream.open_writer()
    for i in range(10):
        await writer.write(b"%d" % i)
    assert await reader.read(5) == b"01234"
    assert await reader.read(100) == b"56789"


async def test_chunks_are_shared_between_readers_not_copied():
    stream = make_stream()
    a, b = stream.open_reader(), stream.open_reader()
    chunk = b"x" * 1000
    await stream.open_writer().write(chunk)
    assert (await a.read(4096)) is chunk
    assert (await b.read(4096)) is chunk


async def test_nonblocking_read_raises_would_block_when_empty():
    stream = make_stream()
    reader = stream.open_reader()
    with pytest.raises(trio.WouldBlock):
        await reader.read(10, nonblocking=True)
    await stream.open_writer().write(b"x")
    assert await reader.read(10, nonblocking=True) == b"x"


async def test_cancelled_read_loses_nothing():
    stream = make_stream()
    reader = stream.open_reader()
    async with trio.open_nursery() as nursery:
        async def read():
            await reader.read(10)

        nursery.start_soon(read)
        await trio.testing.wait_all_tasks_blocked()
        assert stream.statistics().waiting_reads == 1
        nursery.cancel_scope.cancel()
    assert stream.statistics().waiting_reads == 0
    await stream.open_writer().write(b"kept")
    assert await reader.read(10) == b"kept"


async def test_block_policy_makes_writers_wait_for_readers():
    stream = make_stream(channel=cost(4, 2), policy=BLOCK)
    reader = stream.open_reader()
    done = []
    async with trio.open_nursery() as nursery:
        async def write():
            writer = stream.open_writer()
            for i in range(5):
                await writer.write(b"%04d" % i)
            done.append(True)

        nursery.start_soon(write)
        await trio.testing.wait_all_tasks_blocked()
        assert not done and reader.pending == 8
        assert stream.statistics().waiting_writes == 1
        received = bytearray()
        while len(received) < 20:
            received += await reader.read(4)
    assert done and bytes(received) == b"00000001000200030004"
    assert stream.dropped_chunks == 0


async def test_block_writer_parked_on_a_readers_room_gets_stream_closed():
    stream = make_stream(channel=4, policy=BLOCK)
    reader = stream.open_reader()
    writer = stream.open_writer()
    await writer.write(b"full")
    errors = []

    async def write():
        with pytest.raises(StreamClosed) as raised:
            await writer.write(b"more")
        errors.append(raised.value)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write)
        await trio.testing.wait_all_tasks_blocked()
        assert stream.statistics().waiting_writes == 1
        stream.close()
    assert len(errors) == 1 and stream.bytes_written == 4
    assert stream.statistics().waiting_writes == 0
    assert await read_all(reader) == b"full"


async def test_block_writer_waiting_for_its_turn_gets_stream_closed():
    stream = make_stream(channel=4, policy=BLOCK)
    stream.open_reader()
    await stream.open_writer().write(b"full")
    errors = []

    async def write(data):
        with pytest.raises(StreamClosed) as raised:
            await stream.open_writer().write(data)
        errors.append(raised.value)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write, b"first")  # waits for the reader's room
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(write, b"second")  # waits for its turn behind the first
        await trio.testing.wait_all_tasks_blocked()
        assert stream.statistics().waiting_writes == 2
        stream.close()
    assert len(errors) == 2 and stream.bytes_written == 4
    assert stream.statistics().waiting_writes == 0


async def test_block_writes_keep_their_order_while_they_wait():
    stream = make_stream(channel=4, policy=BLOCK)
    reader = stream.open_reader()
    await stream.open_writer().write(b"0000")
    async with trio.open_nursery() as nursery:
        for i in range(1, 6):
            nursery.start_soon(stream.open_writer().write, b"%04d" % i)
            await trio.testing.wait_all_tasks_blocked()
        assert stream.statistics().waiting_writes == 5
        received = bytearray()
        while len(received) < 24:
            received += await reader.read(100)
    assert bytes(received) == b"".join(b"%04d" % i for i in range(6))


async def test_block_policy_does_not_wait_for_a_released_reader():
    stream = make_stream(channel=4, policy=BLOCK)
    reader = stream.open_reader()
    writer = stream.open_writer()
    await writer.write(b"full")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.write, b"more")
        await trio.testing.wait_all_tasks_blocked()
        stream.release_reader(reader)
    assert stream.bytes_written == 8


async def test_lossy_reader_never_makes_a_block_writer_wait():
    stream = make_stream(channel=cost(4, 2), ring=0, policy=BLOCK)
    lossy = stream.open_reader(lossy=True)
    keeping_up = stream.open_reader()
    writer = stream.open_writer()
    async with trio.open_nursery() as nursery:
        async def write():
            for i in range(10):
                await writer.write(b"%04d" % i)
                assert await keeping_up.read(100) == b"%04d" % i

        nursery.start_soon(write)
        await trio.testing.wait_all_tasks_blocked()
        assert stream.statistics().waiting_writes == 0
    assert stream.bytes_written == 40
    assert (lossy.dropped_chunks, lossy.dropped_bytes) == (8, 32)
    assert (stream.dropped_chunks, keeping_up.dropped_chunks) == (8, 0)
    stream.close()
    assert await read_all(lossy) == b"00000001"


async def test_disconnect_policy_cuts_off_only_the_slow_reader():
    stream = make_stream(channel=cost(4, 2), policy=DISCONNECT)
    slow, fast = stream.open_reader(), stream.open_reader()
    writer = stream.open_writer()
    for i in range(4):
        await writer.write(b"%04d" % i)
        assert await fast.read(100) == b"%04d" % i
    assert slow.disconnected and slow.pending == 0
    assert stream.disconnected_readers == 1 and list(stream.readers) == [fast]
    with pytest.raises(ReaderDisconnected):
        await slow.read(100)


async def test_disconnect_wakes_nothing_but_fails_the_next_read():
    stream = make_stream(channel=4, policy=DISCONNECT)
    reader = stream.open_reader()
    writer = stream.open_writer()
    await writer.write(b"aaaa")
    await writer.write(b"bbbb")
    with pytest.raises(ReaderDisconnected):
        await reader.read(1)


async def test_a_thousand_readers_each_get_every_chunk():
    stream = make_stream()
    readers = [stream.open_reader() for _ in range(1000)]
    chunks = [random.randbytes(random.randint(1, 3000)) for _ in range(20)]
    received = {}
    async with trio.open_nursery() as nursery:
        async def consume(reader):
            received[reader.id] = await read_all(reader, 1000)

        for reader in readers:
            nursery.start_soon(consume, reader)
        await trio.testing.wait_all_tasks_blocked()
        writer = stream.open_writer()
        for chunk in chunks:
            await writer.write(chunk)
            await trio.testing.wait_all_tasks_blocked()
        stream.close()
    assert len(received) == 1000
    assert set(received.values()) == {b"".join(chunks)}


# -- the memory cap ----------------------------------------------------------------


def streams_with_budget(limit, count, policy=DROP, channel=1 << 20, ring=1 << 20):
    budget = MemoryBudget(limit)
    settings = StreamSettings(channel, ring, policy, limit)
    return budget, [Stream(f"/s{i}", settings, budget) for i in range(count)]


async def test_memory_cap_sheds_the_oldest_data_of_the_reader_furthest_behind():
    budget, (a, b) = streams_with_budget(cost(20, 3) + cost(30), 2)
    behind, ahead, other = a.open_reader(), a.open_reader(), b.open_reader()
    for i in range(4):
        await a.write(b"%d" % i * 20, Waiter())
        await ahead.read(100)
    await b.write(b"x" * 30, Waiter())
    # 4 chunks behind + 1 for the other stream's reader: one chunk over the cap.
    assert budget.used <= budget.limit
    assert (behind.dropped_bytes, ahead.dropped_bytes, other.dropped_bytes) == (20, 0, 0)
    a.close()
    assert await read_all(behind) == b"1" * 20 + b"2" * 20 + b"3" * 20
    assert a.dropped_chunks == 1 and a.dropped_bytes == 20


async def test_memory_cap_disconnects_under_the_disconnect_policy():
    budget, (stream,) = streams_with_budget(cost(20, 2) + 10, 1, DISCONNECT)
    slow, fast = stream.open_reader(), stream.open_reader()
    writer = stream.open_writer()
    for _ in range(3):
        await writer.write(b"y" * 20)
        await fast.read(100)
    assert slow.disconnected and not fast.disconnected and budget.held == 0


async def test_memory_cap_makes_block_writers_wait():
    budget, (stream,) = streams_with_budget(cost(40) + cost(20) - 1, 1, BLOCK)
    reader = stream.open_reader()
    writer = stream.open_writer()
    await writer.write(b"z" * 40)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.write, b"w" * 20)
        await trio.testing.wait_all_tasks_blocked()
        assert stream.bytes_written == 40 and stream.statistics().waiting_writes == 1
        assert reader.has_room(cost(20))  # it waits for the cap, not for the reader
        assert await reader.read(100) == b"z" * 40
    assert await reader.read(100) == b"w" * 20 and budget.held == 0


async def test_block_writer_parked_on_the_budget_gets_stream_closed():
    budget, (stream,) = streams_with_budget(cost(40) + cost(20) - 1, 1, BLOCK)
    reader = stream.open_reader()
    writer = stream.open_writer()
    await writer.write(b"z" * 40)
    errors = []

    async def write():
        with pytest.raises(StreamClosed) as raised:
            await writer.write(b"w" * 20)
        errors.append(raised.value)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write)
        await trio.testing.wait_all_tasks_blocked()
        assert stream.statistics().waiting_writes == 1 and reader.has_room(cost(20))
        stream.close()
    assert len(errors) == 1 and stream.bytes_written == 40
    assert stream.statistics().waiting_writes == 0
    assert await read_all(reader) == b"z" * 40
    assert budget.held == 0


@pytest.mark.parametrize("size", [1000, 3 * SMALL_CHUNK])
async def test_block_with_a_cap_and_a_stopped_reader_never_drops(size):
    limit = 64 * KiB
    count = 200
    budget, (stream,) = streams_with_budget(limit, 1, BLOCK, channel=4 << 20, ring=16 * KiB)
    reader = stream.open_reader()
    async with trio.open_nursery() as nursery:
        async def write():
            writer = stream.open_writer()
            for i in range(count):
                await writer.write(record(i, size))

        nursery.start_soon(write)
        await trio.testing.wait_all_tasks_blocked()
        # The reader is stopped: the writer waits for the cap, nothing is dropped.
        assert stream.statistics().waiting_writes == 1
        assert stream.chunks_written < count and stream.dropped_chunks == 0
        assert reader.has_room(cost(size))
        received = bytearray()
        while len(received) < count * size:
            received += await reader.read(size)
    assert numbers(bytes(received), size) == list(range(count))
    assert stream.dropped_chunks == 0 and reader.dropped_chunks == 0
    assert_memory_released(stream)


async def test_a_stopped_drop_reader_holding_the_cap_does_not_stop_a_block_stream():
    size, count = 1000, 500
    budget, (dropping, blocking) = streams_with_budget(cost(20 * size), 2, ring=0)
    dropping.set_policy(DROP)
    blocking.set_policy(BLOCK)
    stopped = dropping.open_reader()
    dropping_writer = dropping.open_writer()
    for i in range(100):
        await dropping_writer.write(record(i, size))
    assert budget.used > budget.limit - cost(size)  # the stopped reader holds the whole cap
    reader = blocking.open_reader()
    async with trio.open_nursery() as nursery:
        async def write():
            writer = blocking.open_writer()
            for i in range(count):
                await writer.write(record(i, size))

        async def read():
            received = bytearray()
            while len(received) < count * size:
                received += await reader.read(1 << 20)
            assert numbers(bytes(received), size) == list(range(count))

        nursery.start_soon(write)
        nursery.start_soon(read)
    assert blocking.chunks_written == count and blocking.dropped_chunks == 0
    assert stopped.dropped_chunks > 0 and budget.used <= budget.limit


async def test_a_drop_reader_part_way_through_a_chunk_does_not_stop_a_block_stream():
    # What the stopped reader holds is a chunk it has started: it cannot be shed.
    size, count = 1000, 100
    budget, (dropping, blocking) = streams_with_budget(cost(60_000), 2, ring=0)
    dropping.set_policy(DROP)
    blocking.set_policy(BLOCK)
    stopped = dropping.open_reader()
    await dropping.open_writer().write(b"s" * 60_000)
    assert await stopped.read(1) == b"s"
    reader = blocking.open_reader()
    writer = blocking.open_writer()
    with trio.fail_after(10):
        for i in range(count):
            await writer.write(record(i, size))
            assert await reader.read(size) == record(i, size)
    assert blocking.chunks_written == count and stopped.dropped_chunks == 0


async def test_budget_counts_a_chunk_once_however_many_readers_hold_it():
    size = 1000
    budget, (stream,) = streams_with_budget(cost(size, 3), 1, ring=0)
    readers = [stream.open_reader() for _ in range(10)]
    writer = stream.open_writer()
    for i in range(100):
        await writer.write(record(i, size))
        assert budget.held == stream.held == cost(size)
        for reader in readers:
            assert await reader.read(size) == record(i, size)
        assert budget.held == 0
    assert stream.dropped_chunks == 0


async def test_history_in_the_ring_costs_the_budget_nothing():
    budget, (stream,) = streams_with_budget(None, 1, ring=1 << 20)
    writer = stream.open_writer()
    for i in range(10):
        await writer.write(record(i, SMALL_CHUNK))
    readers = [stream.open_reader() for _ in range(5)]
    assert budget.held == 0 and all(r.pending == 10 * SMALL_CHUNK for r in readers)
    await writer.write(record(10, SMALL_CHUNK))
    assert budget.held == 0


async def test_budget_counts_released_and_discarded_data():
    budget, (stream,) = streams_with_budget(None, 1)
    reader = stream.open_reader()
    await stream.open_writer().write(b"abc")
    assert budget.held == cost(3) and stream.statistics().held_bytes == cost(3)
    stream.release_reader(reader)
    assert budget.held == 0 and not budget.readers


@pytest.mark.parametrize("policy", [DROP, BLOCK, DISCONNECT])
async def test_held_memory_returns_to_zero_when_readers_are_done(policy):
    budget, (stream,) = streams_with_budget(None, 1, policy, channel=1 << 30, ring=64 * KiB)
    writer = stream.open_writer()
    sizes = [1, 100, 3000, SMALL_CHUNK, 20_000, 70_000]
    for i in range(40):
        await writer.write(record(i, sizes[i % len(sizes)] // 4 * 4 or 4))
    early = [stream.open_reader() for _ in range(3)]  # seeded with history
    for i in range(40):
        await writer.write(b"%d" % i * sizes[i % len(sizes)])  # evicts that history
    late = [stream.open_reader() for _ in range(3)]
    assert budget.held > 0
    await early[0].read(7)  # part-way through a chunk
    stream.release_reader(early[0])
    stream.release_reader(late[0])
    await read_all_queued(early[1], late[1])
    await writer.write(b"after")
    await read_all_queued(early[1], late[1])
    stream.close()
    assert budget.held > 0  # early[2] and late[2] still queue chunks
    await read_all(early[2])
    await read_all(late[2], 5)
    assert await read_all(early[1]) == b"" and await read_all(late[1]) == b""
    assert_memory_released(stream)


async def read_all_queued(*readers):
    for reader in readers:
        await read_queued(reader)


# -- waits and interrupts ------------------------------------------------------------


async def test_interrupt_with_nothing_parked_does_nothing_to_a_later_wait():
    stream = make_stream()
    waiter = Waiter()
    reader = stream.open_reader(waiter)
    waiter.interrupt()
    results = []
    async with trio.open_nursery() as nursery:
        async def read():
            results.append(await reader.read(100))

        nursery.start_soon(read)
        await trio.testing.wait_all_tasks_blocked()
        assert waiter.parked == 1
        await stream.open_writer().write(b"data")
    assert results == [b"data"] and waiter.parked == 0


async def test_interrupt_ends_a_waiting_read_and_loses_nothing():
    stream = make_stream()
    waiter = Waiter()
    reader = stream.open_reader(waiter)
    outcome = []

    async def read():
        try:
            await reader.read(10)
        except Interrupted:
            outcome.append("interrupted")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        await trio.testing.wait_all_tasks_blocked()
        assert waiter.parked == 1 and stream.statistics().waiting_reads == 1
        waiter.interrupt()
        await stream.open_writer().write(b"queued meanwhile")
    assert outcome == ["interrupted"]
    assert waiter.parked == 0 and stream.statistics().waiting_reads == 0
    assert await reader.read(100) == b"queued meanwhile"


async def test_interrupt_ends_a_waiting_block_write_and_writes_nothing():
    stream = make_stream(channel=4, policy=BLOCK)
    reader = stream.open_reader()
    waiter = Waiter()
    writer = stream.open_writer(waiter)
    await writer.write(b"full")
    outcome = []

    async def write():
        try:
            await writer.write(b"more")
        except Interrupted:
            outcome.append("interrupted")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write)
        await trio.testing.wait_all_tasks_blocked()
        assert waiter.parked == 1 and stream.statistics().waiting_writes == 1
        waiter.interrupt()
    assert outcome == ["interrupted"] and waiter.parked == 0
    assert stream.bytes_written == 4 and stream.statistics().waiting_writes == 0
    assert await reader.read(100) == b"full"
    # The writer still works, and the next writer's turn was given back.
    await writer.write(b"next")
    assert await reader.read(100) == b"next"


async def test_interrupt_ends_a_write_waiting_for_its_turn():
    stream = make_stream(channel=4, policy=BLOCK)
    reader = stream.open_reader()
    await stream.open_writer().write(b"full")
    waiter = Waiter()
    outcome = []

    async def second():
        try:
            await stream.open_writer(waiter).write(b"2222")
        except Interrupted:
            outcome.append("interrupted")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream.open_writer().write, b"1111")
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(second)
        await trio.testing.wait_all_tasks_blocked()
        assert stream.statistics().waiting_writes == 2 and waiter.parked == 1
        waiter.interrupt()
        await trio.testing.wait_all_tasks_blocked()
        assert outcome == ["interrupted"] and stream.statistics().waiting_writes == 1
        assert await reader.read(100) == b"full"
    assert await reader.read(100) == b"1111" and stream.bytes_written == 8


async def test_interrupt_does_not_end_a_wait_that_parks_after_it():
    """interrupt() ends the waits parked at that moment, not one that parks later.

    Here the later wait parks before the interrupted one has resumed, on the
    same handle (two requests of one process on one file).
    """
    stream = make_stream()
    waiter = Waiter()
    first, second = stream.open_reader(waiter), stream.open_reader(waiter)
    outcome = []

    async def read_first():
        try:
            await first.read(10)
        except Interrupted:
            outcome.append("first interrupted")
        # Only now does data come for the second read, which parked after the interrupt.
        await stream.open_writer().write(b"data")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_first)
        await trio.testing.wait_all_tasks_blocked()
        waiter.interrupt()
        try:
            outcome.append(await second.read(10))  # parks before read_first resumes
        except Interrupted:
            outcome.append("second interrupted")
    assert outcome == ["first interrupted", b"data"]


async def test_lossy_reader_part_way_through_a_chunk_never_holds_a_block_writer_back():
    # The lossy reader's only data is a chunk it has started, which cannot be shed.
    budget, (stream,) = streams_with_budget(10_000, 1, BLOCK, ring=0)
    lossy = stream.open_reader(lossy=True)
    writer = stream.open_writer()
    await writer.write(b"a" * 6000)
    assert await lossy.read(1) == b"a"
    done = []

    async def write():
        try:
            await writer.write(b"b" * 6000)
            done.append("written")
        except StreamClosed:
            done.append("waited until the stream was closed")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write)
        await trio.testing.wait_all_tasks_blocked()
        waiting = stream.statistics().waiting_writes
        stream.close()  # lets a waiting writer go, so the test ends
    assert (waiting, done) == (0, ["written"])


async def test_drop_warnings_add_up_and_the_last_burst_is_logged(autojump_clock, caplog):
    stream = make_stream(channel=cost(10), ring=0)
    stream.open_reader()  # never reads
    writer = stream.open_writer()
    for burst in range(3):
        for _ in range(7):
            await writer.write(b"x" * 10)
            await trio.sleep(0.1)
        await trio.sleep(DROP_LOG_INTERVAL * 2)  # the burst ends
    warnings = [r.getMessage() for r in caplog.records if "slow reader" in r.getMessage()]
    missed = [int(m.split(" missed ")[1].split(" chunks")[0]) for m in warnings]
    # Every chunk but the first missed, each counted in exactly one warning,
    # the first of a burst at once and the rest once the interval is over.
    assert sum(missed) == stream.dropped_chunks == 3 * 7 - 1
    assert len(warnings) == 6 and missed[0] == 1


async def test_a_block_write_waiting_on_the_cap_goes_on_when_another_reader_frees_memory():
    # The cap holds two small chunks: one queued live for a stalled reader, and
    # the private copy of the history a late joiner got. The joiner reading
    # its history frees room, and the write must not wait for the stalled one.
    budget = MemoryBudget(cost(10) * 2 + cost(1) - 1)
    stream = make_stream(channel=cost(10) * 3, ring=1000, policy=BLOCK, budget=budget)
    writer = stream.open_writer()
    stream.open_reader()  # stalled
    await writer.write(b"x" * 10)
    joiner = stream.open_reader()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.write, b"y")
        await trio.testing.wait_all_tasks_blocked()
        assert stream.waiting_writes == 1
        assert await joiner.read(100) == b"x" * 10
        await trio.testing.wait_all_tasks_blocked()
        assert stream.waiting_writes == 0 and stream.bytes_written == 11


@pytest.mark.parametrize("policy", [DROP, BLOCK])
async def test_a_chunk_for_a_crowd_is_handed_out_in_slices_and_reaches_each_reader_once(policy):
    stream = make_stream(policy=policy)
    readers = [stream.open_reader() for _ in range(2 * FANOUT_SLICE + 10)]
    leaver, seeker = readers[-1], readers[-2]
    seen = {}

    async def meanwhile():
        while not stream.chunks_written:
            await trio.lowlevel.checkpoint()
        # The write has handed out its first slice and not its last.
        seen["served"] = sum(1 for r in readers if r.pending)
        seen["late"] = stream.open_reader()
        stream.release_reader(leaver)
        seeker.seek(0)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream.write, b"x" * 100, Waiter())
        nursery.start_soon(meanwhile)
    assert FANOUT_SLICE <= seen["served"] < len(readers) - 2, "other tasks ran mid-fanout"
    for reader in [*readers[:-1], seen["late"]]:
        assert await read_queued(reader) == b"x" * 100, "the chunk exactly once"
    assert stream.statistics().queued_bytes == 0


async def test_writes_to_a_crowd_reach_every_reader_in_the_rings_order():
    stream = make_stream()
    readers = [stream.open_reader() for _ in range(FANOUT_SLICE + 1)]
    async with trio.open_nursery() as nursery:
        for i in range(5):
            nursery.start_soon(stream.write, bytes([i]) * 10, Waiter())
    order = b"".join(chunk.data for chunk in stream.ring.history())
    assert sorted(order) == sorted(bytes(range(5)) * 10)
    for reader in readers:
        assert await read_queued(reader) == order


async def test_a_chunk_dropped_behind_one_part_read_is_counted_as_what_it_was():
    """Shedding takes the chunk after the one a reader is part-way through, out of queue
    order: a live chunk must leave the backlog, not the history count (found by the model
    test: the reader kept a backlog of 335 bytes it no longer had)."""
    budget = MemoryBudget(500)
    stream = Stream("/s", StreamSettings(0, 100, DROP, 500), budget)
    writer = stream.open_writer()
    for _ in range(6):
        await writer.write(b"h")  # history, coalesced in the ring
    reader = stream.open_reader()
    assert await reader.read(1) == b"h"  # part-way through the history
    await writer.write(b"L" * 175)  # live, larger than the ring: the cap sheds it
    assert reader.dropped_chunks == 1 and reader.backlog == 0
    assert await reader.read(100) == b"hhhhh"
    assert reader.backlog == 0 and budget.held == 0


async def test_the_cap_never_leaves_a_hole_in_a_readers_history():
    """History is lost only from its start: once a reader has begun it, shedding waits
    (found by the model test: the chunk after the one being read was shed)."""
    # 500 bytes for readers beside a full ring (4,096 bytes in 16 units and the open one).
    limit = 500 + 4096 + 17 * CHUNK_OVERHEAD
    budget = MemoryBudget(limit)
    stream = Stream("/s", StreamSettings(0, 4096, DROP, limit), budget)
    writer = stream.open_writer()
    await writer.write(b"a" * 3896)
    await writer.write(b"b")
    reader = stream.open_reader()
    assert await reader.read(1) == b"a"  # part-way through the history
    await writer.write(b"c" * 19)
    await writer.write(b"d" * 3000)  # pushes history out of the ring: over the cap
    data = b"a"
    while len(data) < 3896 + 1:
        data += bytes(await reader.read(1 << 20, nonblocking=True))
    assert data.startswith(b"a" * 3896 + b"b")  # the history whole, whatever else was shed


@pytest.mark.parametrize("policy", [DROP, BLOCK, DISCONNECT])
async def test_a_write_in_memory_that_need_not_wait_is_no_checkpoint(policy):
    """The memory store's log is the stream's own accept(): a write that has
    room goes to every reader without yielding to another task."""
    stream = make_stream(policy=policy)
    readers = [stream.open_reader() for _ in range(3)]
    writer = stream.open_writer()
    with trio.testing.assert_no_checkpoints():
        assert await writer.write(b"chunk") == 5
    assert [await r.read(10) for r in readers] == [b"chunk"] * 3


async def test_rm_of_a_stream_in_memory_ends_its_readers_after_what_was_written():
    stream = make_stream()
    reader = stream.open_reader()
    writer = stream.open_writer()
    await writer.write(b"last")
    stream.remove()
    assert stream.removed and stream.closed
    assert await read_all(reader) == b"last"
    with pytest.raises(StreamClosed):
        await writer.write(b"more")
