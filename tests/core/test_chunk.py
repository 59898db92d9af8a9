"""CHUNK_OVERHEAD is what a queued chunk really costs beyond its payload."""

import gc
import tracemalloc

from streamfs_fuse.core.budget import MemoryBudget
from streamfs_fuse.core.chunk import CHUNK_OVERHEAD, Chunk
from streamfs_fuse.core.stream import Stream
from streamfs_fuse.settings import SlowReaderPolicy, StreamSettings
from streamfs_fuse.core.wait import Waiter

COUNT = 100_000


async def test_one_byte_chunks_queued_for_a_reader_cost_at_most_their_footprint():
    budget = MemoryBudget(None)
    stream = Stream("/s", StreamSettings(1 << 30, 0, SlowReaderPolicy.DROP), budget)
    reader = stream.open_reader()
    waiter = Waiter()
    write = stream.write
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(COUNT):
            # A new bytes object each time, as a write from the kernel would bring:
            # bytes([i]) would be one of CPython's shared one-byte singletons.
            await write((i % 256).to_bytes(1, "big"), waiter)
        gc.collect()
        measured = (tracemalloc.get_traced_memory()[0] - before) / COUNT
    finally:
        tracemalloc.stop()
    footprint = 1 + CHUNK_OVERHEAD
    assert reader.pending == COUNT and budget.used == stream.held == COUNT * footprint
    # The limits count an upper bound of what a chunk costs ...
    assert measured <= footprint, f"a queued 1-byte chunk costs {measured:.1f} bytes"
    # ... but not one so loose that they hold back half the memory they allow.
    assert measured * 2 >= footprint, f"a queued 1-byte chunk costs only {measured:.1f} bytes"
    stream.release_reader(reader)
    assert budget.used == 0


def test_footprint_is_payload_plus_overhead():
    assert Chunk(b"abc", 0).footprint == 3 + CHUNK_OVERHEAD
    chunk = Chunk(b"", 0)
    assert (chunk.footprint, chunk.refs, chunk.in_ring) == (CHUNK_OVERHEAD, 0, False)
