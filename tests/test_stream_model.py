"""Random interleavings of open/read/write/close/unlink against a simple model.

Under ``block`` every reader must receive exactly the model's bytes: the
history it was seeded with, then every chunk written while it was open. Under
``drop`` it must receive those chunks in order, whole, with some missing.
"""

import itertools

import pytest
import trio
from hypothesis import settings, strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, precondition, rule

from streamfs_fuse.stream import SlowReaderPolicy, Stream, StreamClosed, StreamSettings


def run(async_fn, *args):
    return trio.run(async_fn, *args)


class StreamModel(RuleBasedStateMachine):
    policy = SlowReaderPolicy.BLOCK
    channel, ring = 40, 64

    def __init__(self):
        super().__init__()
        self.stream = Stream("/model", StreamSettings(self.channel, self.ring, self.policy))
        self.ring_model: list[bytes] = []
        self.counter = itertools.count()
        self.expected: dict[int, list[bytes]] = {}  # reader id -> chunks it may get
        self.received: dict[int, bytearray] = {}
        self.open: dict[int, object] = {}
        self.removed = False

    readers = Bundle("readers")

    def newest_fitting(self, limit):
        picked, total = [], 0
        for chunk in reversed(self.ring_model):
            total += len(chunk)
            if total > limit:
                break
            picked.insert(0, chunk)
        return picked

    @rule(target=readers)
    def open_reader(self):
        reader = self.stream.open_reader()
        self.expected[reader.id] = [] if self.removed else self.newest_fitting(self.channel)
        self.received[reader.id] = bytearray()
        self.open[reader.id] = reader
        return reader

    @rule(size=st.integers(1, 40))
    def write(self, size):
        tag = b"<%d>" % next(self.counter)
        chunk = (tag * size)[:max(size, len(tag))]
        if self.removed:
            with pytest.raises(StreamClosed):
                run(self.stream.write, chunk)
            return
        if self.policy is SlowReaderPolicy.BLOCK and not all(
                r.has_room(len(chunk)) for r in self.stream.readers):
            return  # would wait for a reader: a pipe's writer blocks here too
        assert run(self.stream.write, chunk) == len(chunk)
        for reader in self.stream.readers:
            self.expected[reader.id].append(chunk)
        self.ring_model.append(chunk)
        self.ring_model = self.newest_fitting(self.ring)

    @rule(reader=readers, size=st.integers(1, 100))
    def read(self, reader, size):
        if reader.pending == 0 and not reader.ended:
            with pytest.raises(trio.WouldBlock):
                run(lambda: reader.read(size, nonblocking=True))
            return
        data = run(lambda: reader.read(size, nonblocking=True))
        assert len(data) <= size
        self.received[reader.id] += data

    @rule(reader=consumes(readers))
    def release(self, reader):
        self.stream.release_reader(reader)
        self.check_prefix(reader.id)
        del self.expected[reader.id], self.received[reader.id], self.open[reader.id]

    @precondition(lambda self: not self.removed)
    @rule()
    def unlink(self):
        self.stream.close()
        self.removed = True
        self.ring_model = []

    def check_prefix(self, reader_id, complete=False):
        got = bytes(self.received[reader_id])
        chunks = self.expected[reader_id]
        if self.policy is SlowReaderPolicy.BLOCK:
            whole = b"".join(chunks)
            assert (got == whole) if complete else whole.startswith(got)
            return
        # Drop: got is whole chunks of the expected list, in order, then maybe
        # the start of one more.
        position = 0
        for chunk in chunks:
            if got.startswith(chunk, position):
                position += len(chunk)
            elif not complete and chunk.startswith(got[position:]) and position < len(got):
                position = len(got)
                break
        assert position == len(got), "received bytes that are not whole chunks in order"

    @invariant()
    def received_is_consistent(self):
        for reader_id in self.received:
            self.check_prefix(reader_id)

    def teardown(self):
        # Remove the stream, drain every reader still open, check the whole result.
        self.stream.close()
        for reader_id, reader in self.open.items():
            while data := run(lambda: reader.read(1000, nonblocking=True)):
                self.received[reader_id] += data
            self.check_prefix(reader_id, complete=True)


class BlockModel(StreamModel):
    policy = SlowReaderPolicy.BLOCK


class DropModel(StreamModel):
    policy = SlowReaderPolicy.DROP


TestBlockPolicy = BlockModel.TestCase
TestDropPolicy = DropModel.TestCase
TestBlockPolicy.settings = TestDropPolicy.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None)
