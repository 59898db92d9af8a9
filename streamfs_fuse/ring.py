"""The history a stream keeps for readers that open after data was written."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

__all__ = ["RingBuffer"]


class RingBuffer:
    """The newest chunks of a stream, at most ``capacity`` bytes in all.

    Chunks are kept whole and counted in bytes, not in chunks: appending drops
    the oldest chunks until the rest fits. A chunk larger than the whole ring
    is not kept at all, so the ring never holds more than ``capacity`` bytes.
    """

    __slots__ = ("capacity", "nbytes", "_chunks")

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError("ring capacity must not be negative")
        self.capacity = capacity
        self.nbytes = 0
        self._chunks: deque[bytes] = deque()

    def append(self, chunk: bytes) -> None:
        size = len(chunk)
        if size > self.capacity:
            self.clear()
            return
        chunks = self._chunks
        while self.nbytes + size > self.capacity:
            self.nbytes -= len(chunks.popleft())
        chunks.append(chunk)
        self.nbytes += size

    def clear(self) -> None:
        self._chunks.clear()
        self.nbytes = 0

    def newest(self, limit: int) -> list[bytes]:
        """The newest whole chunks that fit in ``limit`` bytes, oldest first."""
        if self.nbytes <= limit:
            return list(self._chunks)
        picked: list[bytes] = []
        total = 0
        for chunk in reversed(self._chunks):
            total += len(chunk)
            if total > limit:
                break
            picked.append(chunk)
        picked.reverse()
        return picked

    def __len__(self) -> int:
        return len(self._chunks)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._chunks)
