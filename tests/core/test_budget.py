"""--max-memory caps everything a mount holds for its streams: rings, data held for
readers, and a fixed bookkeeping cost per node and per open reader."""

from __future__ import annotations

import errno
import gc
import tracemalloc

import pytest
import trio.testing

from streamfs_fuse.core import budget as budget_module
from streamfs_fuse.core.budget import DIRECTORY_COST, READER_COST, STREAM_COST
from streamfs_fuse.core.chunk import CHUNK_OVERHEAD
from streamfs_fuse.core.tree import Directory, StreamFile, Tree
from streamfs_fuse.logs import RepeatedLog
from streamfs_fuse.settings import SlowReaderPolicy, StreamSettings

KiB = 1024
SIZE = 8 * KiB  # kept in the ring as it is, shared with the readers


def footprint(size=SIZE):
    return size + CHUNK_OVERHEAD


def tree_with_cap(limit, ring=64 * KiB, policy=SlowReaderPolicy.DROP, channel=1 << 20):
    return Tree(StreamSettings(channel, ring, policy, limit), 0, 0)


async def make_stream(tree, name):
    return await tree.create(StreamFile, tree.root, name, 0o644, 0, 0)


async def write(tree, node, *chunks):
    opened = await tree.open(node, read=False, write=True)
    for chunk in chunks:
        await opened.write(chunk)
    opened.close()


def parts(i):
    return bytes([i]) * SIZE


async def test_rings_count_against_the_cap_with_the_bookkeeping():
    tree = tree_with_cap(None)
    budget = tree.budget
    a, b = await make_stream(tree, b"a"), await make_stream(tree, b"b")
    await tree.create(Directory, tree.root, b"d", 0o755, 0, 0)
    assert budget.used == 2 * STREAM_COST + DIRECTORY_COST
    await write(tree, a, parts(1), parts(2))
    await write(tree, b, parts(3))
    assert budget.held == 0
    assert budget.used == 2 * STREAM_COST + DIRECTORY_COST + 3 * footprint()
    assert tree.memory_used() == budget.used


async def test_the_cap_sheds_ring_history_oldest_first_across_the_mount():
    rings = 2 * STREAM_COST
    tree = tree_with_cap(rings + 5 * footprint() + footprint() // 2)
    a, b = await make_stream(tree, b"a"), await make_stream(tree, b"b")
    await write(tree, a, parts(1))
    await write(tree, b, parts(2))
    await write(tree, a, parts(3))
    await write(tree, b, parts(4), parts(5))
    assert tree.budget.used == rings + 5 * footprint()
    await write(tree, a, parts(6))  # over: the mount's oldest history goes, on stream a
    history = [[c.data[0] for c in node.stream.ring.history()] for node in (a, b)]
    assert history == [[3, 6], [2, 4, 5]] and tree.budget.used <= tree.budget.limit
    await write(tree, a, parts(7))  # and next the oldest on b
    history = [[c.data[0] for c in node.stream.ring.history()] for node in (a, b)]
    assert history == [[3, 6, 7], [4, 5]] and tree.budget.used <= tree.budget.limit


async def test_a_current_reader_loses_nothing_when_rings_are_shed():
    tree = tree_with_cap(STREAM_COST + READER_COST + 6 * footprint() + footprint() // 2)
    node = await make_stream(tree, b"s")
    reader = await tree.open(node, read=True, write=False)
    await write(tree, node, *(parts(i) for i in range(6)))
    # The reader queues all six, the ring holds them: they count once.
    assert tree.budget.used == STREAM_COST + READER_COST + 6 * footprint()
    got = bytes(await reader.reader.read(4 * SIZE))
    await write(tree, node, parts(6), parts(7))  # over: the oldest history goes, twice
    stream = node.stream
    assert [c.data[0] for c in stream.ring.history()] == [2, 3, 4, 5, 6, 7]
    assert tree.budget.used <= tree.budget.limit
    # Late joiners get less history; the reader loses nothing.
    for _ in range(3):  # as the cap would next: 2 and 3, then 4, which the reader queues
        stream.shed_history()
    assert stream.held == footprint() and tree.budget.held == footprint()
    while len(got) < 8 * SIZE:
        got += bytes(await reader.reader.read(1 << 20))
    assert got == b"".join(parts(i) for i in range(8)) and reader.reader.dropped_chunks == 0
    assert stream.held == 0 and tree.budget.held == 0
    reader.close()


async def test_reader_data_is_shed_only_once_no_history_is_left():
    tree = tree_with_cap(STREAM_COST + READER_COST + 4 * footprint())
    node = await make_stream(tree, b"s")
    stalled = await tree.open(node, read=True, write=False)
    await write(tree, node, *(parts(i) for i in range(6)))
    # Everything in the ring was shed before the stalled reader's oldest chunks.
    assert node.stream.ring.nbytes == 0 and stalled.reader.dropped_chunks > 0
    assert tree.budget.used <= tree.budget.limit
    stalled.close()


@pytest.mark.parametrize("policy", [SlowReaderPolicy.BLOCK, SlowReaderPolicy.DROP])
async def test_at_the_cap_with_nothing_to_shed_new_nodes_and_readers_get_enospc(
        policy, caplog, monkeypatch):
    monkeypatch.setattr(budget_module, "refusals", RepeatedLog(budget_module.log))
    tree = tree_with_cap(2 * STREAM_COST + READER_COST + footprint(), policy=policy, ring=0)
    node = await make_stream(tree, b"s")
    held = await tree.open(node, read=True, write=False)
    await write(tree, node, parts(1))  # held by the reader, not in any ring
    partly = await held.reader.read(1)  # part-way through: never shed
    assert partly == b"\x01"
    await make_stream(tree, b"t")  # fits exactly
    for attempt in range(3):
        with pytest.raises(OSError) as refused:
            await make_stream(tree, b"u%d" % attempt)
        assert refused.value.errno == errno.ENOSPC and b"u%d" % attempt not in tree.root.entries
        with pytest.raises(OSError) as refused:
            await tree.create(Directory, tree.root, b"d", 0o755, 0, 0)
        assert refused.value.errno == errno.ENOSPC
        with pytest.raises(OSError) as refused:
            await tree.open(node, read=True, write=False)
        assert refused.value.errno == errno.ENOSPC
    assert held.reader.dropped_chunks == 0 and len(node.stream.readers) == 1
    # One line per kind of refusal, however many there were (RepeatedLog).
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 3 and all("memory cap" in line for line in refusals)
    # A writer alone adds no bookkeeping the cap counts: it may still open.
    (await tree.open(node, read=False, write=True)).close()
    held.close()
    opened = await tree.open(node, read=True, write=False)  # room again
    opened.close()


async def test_bookkeeping_is_refunded_on_close_and_unlink():
    tree = tree_with_cap(None)
    budget = tree.budget
    node = await make_stream(tree, b"s")
    directory = await tree.create(Directory, tree.root, b"d", 0o755, 0, 0)
    readers = [await tree.open(node, read=True, write=False) for _ in range(3)]
    await write(tree, node, parts(1), b"small")
    assert budget.used == (STREAM_COST + DIRECTORY_COST + 3 * READER_COST + footprint()
                           + footprint(5) * 2)  # the small write: in the ring and queued
    for opened in readers[:2]:
        opened.close()
    assert budget.used == (STREAM_COST + DIRECTORY_COST + READER_COST + footprint()
                           + 2 * footprint(5))
    await tree.unlink(tree.root, b"s")  # still open: its ring may still be read
    await tree.rmdir(tree.root, b"d")
    assert not directory.linked
    assert budget.used == STREAM_COST + READER_COST + footprint() + 2 * footprint(5)
    readers[2].close()
    assert budget.used == budget.held == 0 and not budget.histories


async def test_without_a_cap_nothing_is_refused():
    tree = tree_with_cap(None, ring=1 << 20)
    for i in range(50):
        node = await make_stream(tree, b"s%d" % i)
        await tree.open(node, read=True, write=False)
        await write(tree, node, parts(i) * 16)
    assert tree.budget.used > 50 * (STREAM_COST + 16 * SIZE)


async def test_a_block_writer_at_the_cap_still_waits_only_for_its_own_readers():
    """The cap sheds another stream's history for a block stream's writes; its writer
    waits, as before, only while its own reader has live data queued."""
    tree = tree_with_cap(2 * STREAM_COST + READER_COST + 4 * footprint(),
                         policy=SlowReaderPolicy.BLOCK)
    other, node = await make_stream(tree, b"other"), await make_stream(tree, b"s")
    await write(tree, other, parts(9), parts(9), parts(9))  # history only
    reader = await tree.open(node, read=True, write=False)
    opened = await tree.open(node, read=False, write=True)
    async with trio.open_nursery() as nursery:
        async def writes():
            for i in range(8):
                await opened.write(parts(i))

        nursery.start_soon(writes)
        await trio.testing.wait_all_tasks_blocked()
        assert node.stream.statistics().waiting_writes == 1
        assert other.stream.ring.nbytes == 0  # shed before the writer waited
        got = b""
        while len(got) < 8 * SIZE:
            got += bytes(await reader.reader.read(1 << 20))
    assert got == b"".join(parts(i) for i in range(8)) and node.stream.dropped_chunks == 0
    opened.close()
    reader.close()


async def test_the_bookkeeping_figures_cover_what_tracemalloc_measures():
    """What the cap counts per directory, stream and reader is at least what they take."""
    tree = tree_with_cap(None)
    count = 2000
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(count):
            await tree.create(Directory, tree.root, b"d%07d" % i, 0o755, 0, 0)
        directories = tracemalloc.get_traced_memory()[0]
        for i in range(count):
            await make_stream(tree, b"s%07d" % i)
        streams = tracemalloc.get_traced_memory()[0]
        node = tree.root.entries[b"s0000000"]
        opened = [await tree.open(node, read=True, write=False) for _ in range(count)]
        readers = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    measured = [(directories - before) / count, (streams - directories) / count,
                (readers - streams) / count]
    assert all(m <= cost for m, cost in zip(measured, (DIRECTORY_COST, STREAM_COST,
                                                       READER_COST))), measured
    assert len(opened) == count


async def test_a_shared_streams_mirror_counts_on_this_host_and_goes_when_it_stops_following():
    """Redis mode: the host's mirror of a shared stream's ring is memory here (the
    follower's side of a stream, driven as a shared log drives it)."""
    tree = tree_with_cap(None)
    node = await make_stream(tree, b"s")
    stream = node.stream
    stream.follow_from(1000)  # a reader opened: this host mirrors the log from here
    stream.deliver(parts(1), 1000)  # chunks as the log's follower hands them over
    stream.deliver(parts(2), 1000 + SIZE)
    assert tree.budget.used == STREAM_COST + 2 * footprint() and tree.budget.held == 0
    stream.unfollowed()
    assert tree.budget.used == STREAM_COST and not tree.budget.histories
    # Another host's create is applied here without a check, and counted.
    tree.apply({"op": "create", "parent": tree.root.inode, "name": "t", "dir": False,
                "mode": 0o644, "uid": 0, "gid": 0, "time": 0}, 5)
    assert tree.budget.used == 2 * STREAM_COST
