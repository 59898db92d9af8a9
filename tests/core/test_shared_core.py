"""The core's seams for a shared store, without Redis: tree events and a stream's log."""

import errno

import pytest
import trio
import trio.testing

from streamfs_fuse.core.tree import Directory, Tree, StreamFile
from streamfs_fuse.core.stream import SharedTotals, Stream, StreamClosed
from streamfs_fuse.settings import SlowReaderPolicy, StreamSettings
from streamfs_fuse.core.wait import Waiter


class RecordingStore:
    """A TreeStore that applies each event at once and keeps it, in order, with its inode."""

    def __init__(self):
        self.tree = None
        self.events = []
        self.inodes = iter(range(1000, 10**6, 7))

    def attach(self, tree):
        self.tree = tree

    async def commit(self, event):
        inode = next(self.inodes)
        self.events.append((dict(event), inode))
        return self.tree.apply(event, inode)

    def stream_log(self, node):
        return FakeLog(node.stream)


class FakeLog:
    """A shared StreamLog that keeps what is appended, for the test to deliver back."""

    shared = True

    def __init__(self, stream):
        self.stream = stream
        self.appended = []
        self.ended = False
        self.follows = 0
        self.counts = {"readers": 0, "writers": 0}

    async def append(self, data, waiter):
        if self.ended:
            raise StreamClosed(self.stream.name)
        self.appended.append(data)

    def writable(self):
        return True

    async def follow(self):
        self.follows += 1

    def unfollow(self):
        self.follows = 0

    def end(self):
        self.ended = True

    def count(self, figure, delta):
        self.counts[figure] += delta

    async def totals(self):
        return SharedTotals(9000, 9, self.counts["readers"] + 2, self.counts["writers"], 100, 1)


def shared_namespace():
    store = RecordingStore()
    tree = Tree(StreamSettings(), uid=0, gid=0, store=store)
    return tree, store


async def shared_stream():
    """A shared stream "/s" with a reader and a writer: (tree, stream, log, reader, writer)."""
    tree, _ = shared_namespace()
    node = await tree.create(StreamFile, tree.root, b"s", 0o644, 0, 0)
    stream = node.stream
    return tree, stream, stream.log, await stream.join(), stream.open_writer()


def shape(tree):
    """Every node as (path, inode, mode, uid, gid), the way a host would see it."""
    return sorted((tree.path(node), node.inode, node.mode, node.uid, node.gid)
                  for node in tree.nodes.values())


async def test_the_same_events_give_every_host_the_same_tree_and_the_same_errors():
    a, store = shared_namespace()
    cams = await a.create(Directory, a.root, b"cams", 0o755, 1, 1)
    front = await a.create(StreamFile, cams, b"front", 0o644, 2, 2)
    await a.create(StreamFile, a.root, b"old", 0o600, 0, 0)
    await a.setattr(front, mode=0o600, uid=7)
    with pytest.raises(FileExistsError):
        await a.create(StreamFile, cams, b"front", 0o644, 0, 0)
    await a.rename(cams, b"front", a.root, b"old")  # replaces old, which ends
    await a.rmdir(a.root, b"cams")

    b = Tree(StreamSettings(), uid=0, gid=0)
    for event, inode in store.events:
        try:
            b.apply(event, inode)
        except OSError as e:
            assert e.errno == errno.EEXIST  # refused here as it was there
    assert shape(b) == shape(a)
    assert b.child(b.root, b"old").inode == front.inode
    assert b.child(b.root, b"old").mtime_ns == a.child(a.root, b"old").mtime_ns


async def test_a_shared_stream_writes_to_its_log_and_readers_get_what_comes_back():
    _, stream, log, reader, writer = await shared_stream()
    assert log.follows == 1 and log.counts == {"readers": 1, "writers": 1}
    assert await writer.write(b"hello") == 5
    assert log.appended == [b"hello"] and reader.pending == 0  # only the log's order counts
    await stream.accept(b"hello", Waiter(), offset=0)
    await stream.accept(b"world", Waiter(), offset=100)  # 95 bytes were trimmed before we read
    assert await reader.read(100) == b"helloworld"
    assert (stream.dropped_chunks, stream.dropped_bytes) == (1, 95)
    await stream.refresh()
    figures = stream.statistics()
    assert (figures.bytes_written, figures.readers, figures.local_readers) == (9000, 3, 1)
    assert stream.size == 9000 and stream.history_bytes == 100


async def test_removing_a_shared_stream_ends_the_log_and_readers_only_at_its_end():
    tree, stream, log, reader, writer = await shared_stream()
    await tree.unlink(tree.root, b"s")
    assert log.ended and stream.removed and not stream.closed
    with pytest.raises(StreamClosed):
        await writer.write(b"late")
    # Chunks written on other hosts before the end still arrive, then EOF.
    await stream.accept(b"last", Waiter(), offset=0)
    stream.close()
    assert await reader.read(100) == b"last" and await reader.read(100) == b""
    stream.release_reader(reader)
    assert log.follows == 0 and log.counts["readers"] == 0


async def test_a_block_follower_waits_for_room_and_says_so_first():
    stream = Stream("/s", StreamSettings(channel_buffer_size=1,
                                         slow_reader=SlowReaderPolicy.BLOCK))
    reader = stream.open_reader()
    assert stream.accepts_now(10)
    stream.deliver(b"x" * 10)
    assert not stream.accepts_now(10)  # the reader's queue is full
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream.accept, b"y" * 10, Waiter())
        await trio.testing.wait_all_tasks_blocked()
        assert stream.waiting_writes == 1
        assert await reader.read(100) == b"x" * 10
    assert await reader.read(100) == b"y" * 10


async def test_a_snapshot_rebuilds_the_same_tree_in_an_empty_namespace():
    a, store = shared_namespace()
    top = await a.create(Directory, a.root, b"top", 0o750, 3, 4)
    for i in range(5):
        await a.create(StreamFile, top, b"s%d" % i, 0o640, 5, 6)
        top = await a.create(Directory, top, b"d", 0o755, 0, 0)
    await a.create(StreamFile, a.root, b"\xff latin", 0o600, 0, 0)
    b = Tree(StreamSettings(), uid=0, gid=0)
    b.restore(a.snapshot())
    assert shape(b) == shape(a)
    assert [(n.name, n.mtime_ns) for n in b.root.entries.values()] == \
        [(n.name, n.mtime_ns) for n in a.root.entries.values()]
