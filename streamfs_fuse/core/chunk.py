"""One write, shared by reference between a stream's ring and its readers' queues."""

from __future__ import annotations

__all__ = ["CHUNK_OVERHEAD", "Chunk", "footprint_of"]

#: Memory a chunk costs beyond its payload: the bytes object's header, this
#: object, its offset (an int object of its own) and a queue slot, with
#: pymalloc's rounding: 146 bytes measured for a 1-byte chunk. Counted in every
#: buffer limit and in the memory cap so that the limits hold for 1-byte writes
#: too; tests/test_chunk.py measures it.
CHUNK_OVERHEAD = 160


def footprint_of(size: int) -> int:
    """What holding a chunk of ``size`` bytes costs, as every limit counts it."""
    return size + CHUNK_OVERHEAD


class Chunk:
    """A write's bytes, and who holds them.

    Invariant: a chunk counts against its mount's memory budget exactly while
    some reader still queues it (``refs > 0``) and no ring holds it
    (``not in_ring``). Whoever changes ``refs`` or ``in_ring`` keeps that true.
    """

    __slots__ = ("data", "offset", "footprint", "refs", "in_ring")

    def __init__(self, data: bytes, offset: int) -> None:
        self.data = data
        #: Where the chunk starts in the stream: the bytes written before it.
        self.offset = offset
        #: What holding the chunk costs, as every limit counts it.
        self.footprint = footprint_of(len(data))
        #: Reader queues that hold the chunk.
        self.refs = 0
        self.in_ring = False
