"""The verbs every door calls, for an identity: the core decides, the doors only ask."""

import errno

import pytest

from streamfs_fuse.access import NOBODY, ROOT, Identity
from streamfs_fuse.namespace import Namespace, StreamFile
from streamfs_fuse.stream import SlowReaderPolicy, StreamSettings

from test_shared_core import RecordingStore

ALICE = Identity(1000, frozenset({1000}))


async def test_a_stream_policy_is_an_event_so_every_host_has_the_same():
    store = RecordingStore()
    host_a = Namespace(StreamSettings(), 0, 0, store)
    store.namespace = host_a
    node = await host_a.create(StreamFile, host_a.root, b"s", 0o644, 1000, 1000)
    await host_a.set_policy(node, SlowReaderPolicy.BLOCK, identity=ALICE)
    assert node.stream.policy is SlowReaderPolicy.BLOCK
    # Another host applies the same events in the same order and ends up the same.
    host_b = Namespace(StreamSettings(), 0, 0)
    for event, inode in store.events:
        host_b.apply(event, inode)
    assert host_b.child(host_b.root, b"s").stream.policy is SlowReaderPolicy.BLOCK
    # And a host that mounts from a snapshot too.
    host_c = Namespace(StreamSettings(), 0, 0)
    host_c.restore(host_a.snapshot())
    assert host_c.child(host_c.root, b"s").stream.policy is SlowReaderPolicy.BLOCK


async def test_only_the_owner_or_root_may_set_a_policy():
    namespace = Namespace(StreamSettings(), 0, 0)
    node = await namespace.create(StreamFile, namespace.root, b"s", 0o666, 1000, 1000)
    with pytest.raises(OSError) as refused:
        await namespace.set_policy(node, SlowReaderPolicy.BLOCK, identity=NOBODY)
    assert refused.value.errno == errno.EPERM
    await namespace.set_policy(node, SlowReaderPolicy.DISCONNECT, identity=ROOT)
    assert node.stream.policy is SlowReaderPolicy.DISCONNECT


async def test_snapshots_without_a_policy_column_still_restore():
    namespace = Namespace(StreamSettings(), 0, 0)
    await namespace.create(StreamFile, namespace.root, b"s", 0o644, 0, 0)
    rows = [row[:10] for row in namespace.snapshot()]
    other = Namespace(StreamSettings(), 0, 0)
    other.restore(rows)
    assert other.child(other.root, b"s").stream.policy is SlowReaderPolicy.DROP
