"""A cap on the memory a whole mount holds for its readers."""

from __future__ import annotations

import heapq
from typing import Protocol

__all__ = ["CappedReader", "CappedStream", "MemoryBudget"]


class CappedStream(Protocol):
    """A stream as the budget sees it (:class:`~.stream.Stream`)."""

    def sheddable(self, reader: CappedReader) -> bool:
        """Whether the cap may take ``reader``'s data rather than make writers wait."""

    def shed(self, reader: CappedReader) -> bool:
        """Take data from ``reader``, furthest behind; return whether any was freed."""

    def cap_freed(self) -> None:
        """Memory was freed: wake the stream's writes waiting for the cap."""


class CappedReader(Protocol):
    """A reader as the budget sees it (:class:`~.reader.Reader`)."""

    #: Payload bytes queued and not yet read.
    pending: int
    stream: CappedStream


class MemoryBudget:
    """Counts the memory held for readers beyond the rings, against ``limit``.

    Invariant: ``used`` is the sum of the footprints of the chunks that some
    reader still queues and no ring holds. A chunk counts once however many
    readers hold it, and history that is still in its ring costs nothing more,
    so readers that keep up cost next to nothing.

    Over the limit, :meth:`shed` takes data from the readers furthest behind,
    anywhere in the mount, but only from readers whose stream may lose data
    (``drop`` and ``disconnect``): under ``block`` the writers wait instead
    (see :meth:`Stream.write`), and every release of memory wakes them to look
    again. ``limit=None`` means no cap.
    """

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        self.used = 0
        #: The most ``used`` has been since someone last set it back (see mount._trim_heap).
        self.peak = 0
        self.readers: set[CappedReader] = set()
        #: Streams with block writes waiting for memory to be freed.
        self.cap_waiters: set[CappedStream] = set()

    def hold(self, footprint: int) -> None:
        self.used += footprint
        if self.used > self.peak:
            self.peak = self.used

    def release(self, footprint: int) -> None:
        self.used -= footprint
        if self.cap_waiters:
            for stream in self.cap_waiters:
                stream.cap_freed()
            self.cap_waiters.clear()

    def over(self) -> bool:
        return self.limit is not None and self.used > self.limit

    def has_room(self, footprint: int) -> bool:
        return self.limit is None or self.used + footprint <= self.limit

    def shed(self) -> None:
        """Take data from the sheddable readers furthest behind until ``used`` fits.

        A heap of readers by how far behind they are: a chunk shared by N
        stalled readers is freed once all N have lost it, which costs
        N log N here (a scan for the furthest behind before each drop cost N²:
        a 128 KiB writer with 1,000 stalled HTTP readers at the cap managed
        0.5 MB/s).
        """
        if not self.over():
            return
        behind = [(-reader.pending, order, reader) for order, reader in enumerate(self.readers)
                  if reader.pending and reader.stream.sheddable(reader)]
        heapq.heapify(behind)
        while behind and self.over():
            _, order, victim = heapq.heappop(behind)
            # False: only a chunk it is part-way through is left, which is never taken.
            if victim.stream.shed(victim) and victim.pending:
                heapq.heappush(behind, (-victim.pending, order, victim))
