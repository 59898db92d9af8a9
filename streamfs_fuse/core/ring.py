"""The history a stream keeps for readers that open after data was written."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from .chunk import CHUNK_OVERHEAD, Chunk

__all__ = ["RingBuffer", "SMALL_CHUNK"]

#: Chunks smaller than this are copied into the ring's open unit rather than
#: kept one by one, so that a stream of tiny writes costs the ring one chunk's
#: bookkeeping per unit, not per write (1,000,000 one-byte writes would
#: otherwise hold 128 MB of overhead for 1 MB of history).
SMALL_CHUNK = 4096
#: Largest open unit: coalesced history is evicted a unit at a time.
UNIT_SIZE = 64 * 1024


class RingBuffer:
    """The newest chunks of a stream, at most ``capacity`` bytes of payload in all.

    Chunks of :data:`SMALL_CHUNK` bytes or more are kept as they are, shared
    with the readers that queue them. Smaller ones are appended to one open
    unit, which is closed when it reaches ``unit_size`` (the smaller of
    :data:`UNIT_SIZE` and a sixteenth of the ring) or a large chunk follows.
    Units hold whole writes, and eviction takes whole units, oldest first, so
    history is always whole writes, in order: all of them that fit, or at least
    fifteen sixteenths of the ring when writes are small. A chunk larger than
    the ring is not kept at all. ``capacity=0`` keeps nothing.

    ``evicted`` is called with each shared chunk that leaves the ring.
    """

    __slots__ = ("capacity", "nbytes", "footprint", "unit_size", "_units", "_times", "_tail",
                 "_tail_offset", "_tail_time", "_evicted")

    def __init__(self, capacity: int, evicted: Callable[[Chunk], None]) -> None:
        if capacity < 0:
            raise ValueError("ring capacity must not be negative")
        self.capacity = capacity
        self.nbytes = 0
        #: Payload and a chunk's overhead per unit, the open one included: what
        #: the memory cap counts (an attribute: it is read on every write).
        self.footprint = 0
        self.unit_size = max(1, min(UNIT_SIZE, capacity // 16))
        self._units: deque[Chunk] = deque()
        #: When each unit was written (its first write): for a join some seconds back.
        self._times: deque[float] = deque()
        self._tail = bytearray()
        self._tail_offset = 0
        self._tail_time = 0.0
        self._evicted = evicted

    def append(self, chunk: Chunk, now: float = 0.0) -> None:
        """Keep ``chunk``, written at time ``now`` (any clock that only goes forward)."""
        data = chunk.data
        size = len(data)
        if size > self.capacity:
            self.clear()
            return
        while self.nbytes + size > self.capacity:
            self.evict_oldest()
        self.nbytes += size
        if size < SMALL_CHUNK:
            if not self._tail:
                self._tail_offset = chunk.offset
                self._tail_time = now
                self.footprint += CHUNK_OVERHEAD
            self.footprint += size
            self._tail += data
            if len(self._tail) >= self.unit_size:
                self._close_tail()
        else:
            self._close_tail()
            self.footprint += chunk.footprint
            chunk.in_ring = True
            self._units.append(chunk)
            self._times.append(now)

    def history(self) -> list[Chunk]:
        """Everything the ring holds, oldest first, for a reader that opens now.

        An open unit of :data:`SMALL_CHUNK` bytes or more is closed so that
        readers share it; a smaller one is given as a private copy, not in the ring.
        """
        if len(self._tail) >= SMALL_CHUNK:
            self._close_tail()
        if self._tail:
            return [*self._units, Chunk(bytes(self._tail), self._tail_offset)]
        return list(self._units)

    def clear(self) -> None:
        while self._units:
            self.evict_oldest()
        self._tail.clear()
        self.nbytes = self.footprint = 0

    def _close_tail(self) -> None:
        if self._tail:
            unit = Chunk(bytes(self._tail), self._tail_offset)
            unit.in_ring = True
            self._units.append(unit)
            self._times.append(self._tail_time)
            self._tail.clear()

    def evict_oldest(self) -> None:
        """Let the oldest unit go (the open one when it is the only one)."""
        if not self._units:
            if self._tail:
                self.nbytes -= len(self._tail)
                self.footprint -= len(self._tail) + CHUNK_OVERHEAD
                self._tail.clear()
            return
        chunk = self._units.popleft()
        self._times.popleft()
        self.nbytes -= len(chunk.data)
        self.footprint -= chunk.footprint
        chunk.in_ring = False
        self._evicted(chunk)

    @property
    def oldest_time(self) -> float | None:
        """When the oldest history was written; None when the ring is empty."""
        if self._units:
            return self._times[0]
        return self._tail_time if self._tail else None

    @property
    def oldest_offset(self) -> int | None:
        """Where the history starts in the stream; None when the ring is empty."""
        if self._units:
            return self._units[0].offset
        return self._tail_offset if self._tail else None

    def offset_since(self, moment: float) -> int | None:
        """Where the oldest history written at or after ``moment`` starts; None if none was."""
        found = self._tail_offset if self._tail and self._tail_time >= moment else None
        for unit, written in zip(reversed(self._units), reversed(self._times)):
            if written < moment:
                break
            found = unit.offset
        return found

    def __len__(self) -> int:
        """Units held, the open one included."""
        return len(self._units) + bool(self._tail)
