"""The stream core without FUSE: fanout, history, policies, EOF."""

import random

import pytest
import trio
import trio.testing

from streamfs_fuse.budget import MemoryBudget
from streamfs_fuse.reader import ReadInterrupted, ReaderDisconnected
from streamfs_fuse.stream import SlowReaderPolicy, Stream, StreamClosed, StreamSettings


def make_stream(channel=1 << 20, ring=1 << 20, policy=SlowReaderPolicy.DROP):
    return Stream("/s", StreamSettings(channel, ring, policy))


async def read_all(reader, size=65536):
    out = bytearray()
    while data := await reader.read(size):
        out += data
    return bytes(out)


async def test_every_reader_gets_every_chunk_in_order():
    stream = make_stream()
    readers = [stream.open_reader() for _ in range(3)]
    for i in range(100):
        await stream.write(b"%d," % i)
    stream.close()
    expected = b"".join(b"%d," % i for i in range(100))
    for reader in readers:
        assert await read_all(reader) == expected


async def test_late_reader_gets_history_then_live_data():
    stream = make_stream()
    await stream.write(b"old1")
    await stream.write(b"old2")
    reader = stream.open_reader()
    await stream.write(b"new")
    stream.close()
    assert await read_all(reader) == b"old1old2new"


async def test_history_is_limited_to_what_the_reader_buffer_holds():
    stream = make_stream(channel=8, ring=100)
    for chunk in (b"aaaa", b"bbbb", b"cccc"):
        await stream.write(chunk)
    reader = stream.open_reader()
    stream.close()
    assert await read_all(reader) == b"bbbbcccc"


async def test_history_seeding_is_atomic_under_concurrent_writes():
    """Readers opened at random moments during writes see one gapless run."""
    stream = make_stream(channel=1 << 30, ring=40 * 8)
    readers = []
    async with trio.open_nursery() as nursery:
        async def writer():
            for i in range(2000):
                await stream.write(i.to_bytes(8, "big"))
                if i % 7 == 0:
                    await trio.sleep(0)

        async def opener():
            for _ in range(50):
                readers.append(stream.open_reader())
                await trio.sleep(0)

        nursery.start_soon(writer)
        nursery.start_soon(opener)
    stream.close()
    for reader in readers:
        data = await read_all(reader)
        numbers = [int.from_bytes(data[i:i + 8], "big") for i in range(0, len(data), 8)]
        assert numbers, "a reader got nothing"
        assert numbers == list(range(numbers[0], 2000))


async def test_slow_reader_drops_whole_chunks_and_counts_them():
    stream = make_stream(channel=10, ring=0)
    slow, fast = stream.open_reader(), stream.open_reader()
    got = bytearray()
    for i in range(10):
        await stream.write(b"%04d" % i)
        got += await fast.read(100)
    stream.close()
    assert bytes(got) == b"".join(b"%04d" % i for i in range(10))
    # The slow reader holds 8 of its 10 bytes after two chunks; the rest drop.
    assert await read_all(slow) == b"00000001"
    assert (stream.dropped_chunks, stream.dropped_bytes) == (8, 32)
    assert (slow.dropped_chunks, fast.dropped_chunks) == (8, 0)


async def test_empty_reader_takes_a_chunk_larger_than_its_buffer():
    stream = make_stream(channel=4)
    reader = stream.open_reader()
    await stream.write(b"0123456789")
    assert await reader.read(100) == b"0123456789"


async def test_read_returns_eof_only_after_draining_the_queue():
    stream = make_stream()
    reader = stream.open_reader()
    await stream.write(b"abc")
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
        assert results == []
        stream.close()
    assert results == [b""]


async def test_write_after_close_raises_stream_closed():
    stream = make_stream()
    stream.close()
    with pytest.raises(StreamClosed):
        await stream.write(b"x")


async def test_reader_opened_after_close_gets_eof():
    stream = make_stream()
    stream.close()
    assert await stream.open_reader().read(10) == b""


async def test_zero_byte_write_makes_no_chunk():
    stream = make_stream()
    assert await stream.write(b"") == 0
    assert stream.chunks_written == 0 and len(stream.ring) == 0


async def test_large_chunk_is_served_without_copying_its_tail():
    stream = make_stream(channel=1 << 22)
    reader = stream.open_reader()
    chunk = bytes(range(256)) * 4096  # 1 MiB
    await stream.write(chunk)
    pieces = [await reader.read(128 * 1024) for _ in range(8)]
    assert all(isinstance(p, memoryview) and p.obj is chunk for p in pieces)
    assert b"".join(pieces) == chunk
    assert reader.pending == 0


async def test_small_queued_chunks_are_joined_into_one_read():
    stream = make_stream()
    reader = stream.open_reader()
    for i in range(10):
        await stream.write(b"%d" % i)
    assert await reader.read(5) == b"01234"
    assert await reader.read(100) == b"56789"


async def test_chunks_are_shared_between_readers_not_copied():
    stream = make_stream()
    a, b = stream.open_reader(), stream.open_reader()
    chunk = b"x" * 1000
    await stream.write(chunk)
    assert (await a.read(4096)) is chunk
    assert (await b.read(4096)) is chunk


async def test_nonblocking_read_raises_would_block_when_empty():
    stream = make_stream()
    reader = stream.open_reader()
    with pytest.raises(trio.WouldBlock):
        await reader.read(10, nonblocking=True)
    await stream.write(b"x")
    assert await reader.read(10, nonblocking=True) == b"x"


async def test_cancelled_read_loses_nothing():
    stream = make_stream()
    reader = stream.open_reader()
    with trio.move_on_after(0.01):
        await reader.read(10)
    await stream.write(b"kept")
    assert await reader.read(10) == b"kept"


async def test_block_policy_makes_writers_wait_for_readers():
    stream = make_stream(channel=8, policy=SlowReaderPolicy.BLOCK)
    reader = stream.open_reader()
    done = []
    async with trio.open_nursery() as nursery:
        async def writer():
            for i in range(5):
                await stream.write(b"%04d" % i)
            done.append(True)

        nursery.start_soon(writer)
        await trio.testing.wait_all_tasks_blocked()
        assert not done and reader.pending == 8
        received = bytearray()
        while len(received) < 20:
            received += await reader.read(4)
    assert done and bytes(received) == b"00000001000200030004"
    assert stream.dropped_chunks == 0


async def test_block_policy_writer_gets_stream_closed_when_removed_while_waiting():
    stream = make_stream(channel=4, policy=SlowReaderPolicy.BLOCK)
    stream.open_reader()
    await stream.write(b"full")
    errors = []

    async def write():
        with pytest.raises(StreamClosed) as raised:
            await stream.write(b"more")
        errors.append(raised.value)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write)
        await trio.testing.wait_all_tasks_blocked()
        stream.close()
    assert len(errors) == 1


async def test_block_policy_does_not_wait_for_a_released_reader():
    stream = make_stream(channel=4, policy=SlowReaderPolicy.BLOCK)
    reader = stream.open_reader()
    await stream.write(b"full")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream.write, b"more")
        await trio.testing.wait_all_tasks_blocked()
        stream.release_reader(reader)
    assert stream.bytes_written == 8


async def test_disconnect_policy_cuts_off_only_the_slow_reader():
    stream = make_stream(channel=8, policy=SlowReaderPolicy.DISCONNECT)
    slow, fast = stream.open_reader(), stream.open_reader()
    for i in range(4):
        await stream.write(b"%04d" % i)
        assert await fast.read(100) == b"%04d" % i
    assert slow.disconnected and slow.pending == 0
    assert stream.disconnected_readers == 1 and stream.readers == [fast]
    with pytest.raises(ReaderDisconnected):
        await slow.read(100)


async def test_disconnect_wakes_nothing_but_fails_the_next_read():
    stream = make_stream(channel=4, policy=SlowReaderPolicy.DISCONNECT)
    reader = stream.open_reader()
    await stream.write(b"aaaa")
    await stream.write(b"bbbb")
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
        for chunk in chunks:
            await stream.write(chunk)
            await trio.sleep(0)
        stream.close()
    assert len(received) == 1000
    assert set(received.values()) == {b"".join(chunks)}


def streams_with_budget(limit, count, policy=SlowReaderPolicy.DROP):
    budget = MemoryBudget(limit)
    settings = StreamSettings(1 << 20, 1 << 20, policy)
    return budget, [Stream(f"/s{i}", settings, budget) for i in range(count)]


async def test_memory_cap_sheds_the_oldest_data_of_the_reader_furthest_behind():
    budget, (a, b) = streams_with_budget(100, 2)
    behind, ahead, other = a.open_reader(), a.open_reader(), b.open_reader()
    for i in range(4):
        await a.write(b"%d" % i * 20)
        await ahead.read(100)
    await b.write(b"x" * 30)
    # 80 bytes behind + 30 for the other stream's reader: over the cap of 100.
    assert budget.used <= 100
    assert (behind.dropped_bytes, ahead.dropped_bytes, other.dropped_bytes) == (20, 0, 0)
    a.close()
    assert await read_all(behind) == b"1" * 20 + b"2" * 20 + b"3" * 20
    assert a.dropped_chunks == 1 and a.dropped_bytes == 20


async def test_memory_cap_disconnects_under_the_disconnect_policy():
    budget, (stream,) = streams_with_budget(50, 1, SlowReaderPolicy.DISCONNECT)
    slow, fast = stream.open_reader(), stream.open_reader()
    for _ in range(3):
        await stream.write(b"y" * 20)
        await fast.read(100)
    assert slow.disconnected and not fast.disconnected and budget.used == 0


async def test_memory_cap_makes_block_writers_wait():
    budget, (stream,) = streams_with_budget(50, 1, SlowReaderPolicy.BLOCK)
    reader = stream.open_reader()
    await stream.write(b"z" * 40)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream.write, b"w" * 20)
        await trio.testing.wait_all_tasks_blocked()
        assert stream.bytes_written == 40
        assert await reader.read(100) == b"z" * 40
    assert await reader.read(100) == b"w" * 20 and budget.used == 0


async def test_budget_counts_released_and_discarded_data():
    budget, (stream,) = streams_with_budget(None, 1)
    reader = stream.open_reader()
    await stream.write(b"abc")
    assert budget.used == 3
    stream.release_reader(reader)
    assert budget.used == 0 and not budget.readers


async def test_interrupt_ends_a_waiting_read_and_loses_nothing():
    stream = make_stream()
    reader = stream.open_reader()
    outcome = []

    async def read():
        try:
            await reader.read(10)
        except ReadInterrupted:
            outcome.append("interrupted")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        await trio.testing.wait_all_tasks_blocked()
        reader.interrupt()
        await stream.write(b"queued meanwhile")
    assert outcome == ["interrupted"]
    assert await reader.read(100) == b"queued meanwhile"
