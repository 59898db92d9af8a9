"""The verbs every door calls, for an identity: the core decides, the doors only ask."""

import errno

import pytest

from streamfs_fuse.core.access import NOBODY, ROOT, Identity
from streamfs_fuse.core.tree import Directory, Tree, StreamFile
from streamfs_fuse.settings import Join, SlowReaderPolicy, StreamSettings

from test_shared_core import RecordingStore

ALICE = Identity(1000, frozenset({1000}))


async def test_a_stream_setting_is_an_event_so_every_host_has_the_same():
    store = RecordingStore()
    host_a = Tree(StreamSettings(), 0, 0, store)
    node = await host_a.create(StreamFile, host_a.root, b"s", 0o644, 1000, 1000)
    await host_a.set_settings(node, slow_reader=SlowReaderPolicy.BLOCK, join=Join.parse("live"),
                             identity=ALICE)
    assert node.stream.policy is SlowReaderPolicy.BLOCK
    # Another host applies the same events in the same order and ends up the same.
    host_b = Tree(StreamSettings(), 0, 0)
    for event, inode in store.events:
        host_b.apply(event, inode)
    assert host_b.child(host_b.root, b"s").stream.policy is SlowReaderPolicy.BLOCK
    assert str(host_b.child(host_b.root, b"s").stream.settings.join) == "live"
    # And a host that mounts from a snapshot too.
    host_c = Tree(StreamSettings(), 0, 0)
    host_c.restore(host_a.snapshot())
    assert host_c.child(host_c.root, b"s").stream.policy is SlowReaderPolicy.BLOCK
    assert str(host_c.child(host_c.root, b"s").stream.settings.join) == "live"


async def test_only_the_owner_or_root_may_set_a_policy():
    tree = Tree(StreamSettings(), 0, 0)
    node = await tree.create(StreamFile, tree.root, b"s", 0o666, 1000, 1000)
    with pytest.raises(OSError) as refused:
        await tree.set_settings(node, slow_reader=SlowReaderPolicy.BLOCK, identity=NOBODY)
    assert refused.value.errno == errno.EPERM
    await tree.set_settings(node, slow_reader=SlowReaderPolicy.DISCONNECT, identity=ROOT)
    assert node.stream.policy is SlowReaderPolicy.DISCONNECT


async def test_snapshots_without_a_policy_column_still_restore():
    tree = Tree(StreamSettings(), 0, 0)
    await tree.create(StreamFile, tree.root, b"s", 0o644, 0, 0)
    rows = [row[:10] for row in tree.snapshot()]
    other = Tree(StreamSettings(), 0, 0)
    other.restore(rows)
    assert other.child(other.root, b"s").stream.policy is SlowReaderPolicy.DROP


async def test_open_name_is_create_or_open_for_every_door():
    tree = Tree(StreamSettings(), 0, 0)
    shared = await tree.create(Directory, tree.root, b"shared", 0o777, 0, 0)
    opened, created = await tree.open_name(shared, b"s", read=False, write=True,
                                                create=True, mode=0o400, uid=1000, gid=1000,
                                                identity=ALICE)
    # Made by ALICE with mode 0400, and still opened for writing: as open(2) with O_CREAT.
    assert created and (opened.node.uid, opened.node.mode & 0o777) == (1000, 0o400)
    before = opened.node.mtime_ns
    assert await opened.write(b"abc") == 3 and opened.node.mtime_ns >= before
    again, created = await tree.open_name(shared, b"s", read=True, write=False,
                                               create=True, identity=ROOT)
    assert not created and again.node is opened.node and again.reader is not None
    assert await again.reader.read(10) == b"abc"
    for kwargs, code in [({"create": True, "exclusive": True}, errno.EEXIST),
                         ({"identity": ALICE}, errno.EACCES),  # 0400: ALICE may not write now
                         ({"identity": NOBODY}, errno.EACCES)]:
        with pytest.raises(OSError) as refused:
            await tree.open_name(shared, b"s", read=False, write=True, **kwargs)
        assert refused.value.errno == code, kwargs
    with pytest.raises(FileNotFoundError):
        await tree.open_name(shared, b"missing", read=True, write=False)
    assert opened.node.holds == 2
    opened.close()
    again.close()
    assert opened.node.holds == 0 and not opened.node.stream.readers
    assert opened.node.stream.writers == 0


async def test_open_refuses_a_directory():
    tree = Tree(StreamSettings(), 0, 0)
    with pytest.raises(IsADirectoryError):
        await tree.open(tree.root, read=True, write=False)


async def test_a_sender_gets_views_of_queued_chunks_held_until_it_asks_again():
    tree = Tree(StreamSettings(ring_buffer_size=0), 0, 0)
    node = await tree.create(StreamFile, tree.root, b"s", 0o644, 0, 0)
    opened = await tree.open(node, read=True, write=False)
    writer = await tree.open(node, read=False, write=True)
    for data in (b"a" * 10, b"b" * 20, b"c" * 30):
        await writer.write(data)
    reader, stream = opened.reader, node.stream
    pieces = await reader.read_for_sending(45, 8)
    # Views, not copies: the first two chunks whole, then part of the third.
    assert [bytes(p) for p in pieces] == [b"a" * 10, b"b" * 20, b"c" * 15]
    assert all(isinstance(p, memoryview) for p in pieces)
    # Until the sender asks again, what it was given is still held and counted.
    assert stream.statistics().held_bytes == sum(c.footprint for c in [*reader._sent,
                                                                      reader._current])
    assert [bytes(p) for p in await reader.read_for_sending(100, 8)] == [b"c" * 15]
    opened.close()
    writer.close()
    assert stream.statistics().held_bytes == 0


async def test_a_sender_takes_at_most_count_chunks():
    tree = Tree(StreamSettings(), 0, 0)
    node = await tree.create(StreamFile, tree.root, b"s", 0o644, 0, 0)
    opened = await tree.open(node, read=True, write=False)
    writer = await tree.open(node, read=False, write=True)
    for i in range(10):
        await writer.write(b"%d" % i)
    assert [bytes(p) for p in await opened.reader.read_for_sending(1 << 20, 4)] == [
        b"0", b"1", b"2", b"3"]
    opened.close()
    writer.close()
