"""A cap on the memory a whole mount holds for its streams."""

from __future__ import annotations

import errno
import heapq
import logging
import os
from typing import Protocol

from ..logs import RepeatedLog

__all__ = ["CappedReader", "CappedStream", "DIRECTORY_COST", "MemoryBudget", "READER_COST",
           "STREAM_COST"]

log = logging.getLogger(__name__)
#: Refusals at the cap: one line per kind a minute, however many (the daemon flushes it).
refusals = RepeatedLog(log)

#: Bookkeeping the cap counts for each directory, stream and open reader, beside
#: their chunks. tracemalloc over 5,000 of each (through Tree.create and
#: Tree.open) measured 497 B per directory, 4,510 B per stream (its node,
#: Stream, ring, parking lots, keyframe index) and 2,315 B per reader (Reader,
#: its channel, OpenStream); rounded up for names and paths up to a few hundred bytes.
DIRECTORY_COST = 1024
STREAM_COST = 6 * 1024
READER_COST = 3 * 1024
#: Over the cap, ring history is shed until the mount is this fraction of the
#: cap below it: each shed walks every non-empty ring once, so it is paid once
#: per 1/64 of the cap written, not once per write.
HISTORY_STEP = 64


class CappedStream(Protocol):
    """A stream as the budget sees it (:class:`~.stream.Stream`)."""

    def oldest_history(self) -> float | None:
        """When the oldest unit of history in its ring was written; None if none is."""

    def shed_history(self) -> None:
        """Evict the oldest unit of history from its ring."""

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
    """Counts everything a mount holds for its streams, against ``limit``.

    Invariants: ``held`` is the sum of the footprints of the chunks that some
    reader still queues and no ring holds, each counted once however many
    readers hold it (history still in its ring costs nothing more, so readers
    that keep up cost next to nothing). ``used`` is ``held`` plus every ring's
    footprint (payload and per-unit overhead) plus the bookkeeping of each
    node and open reader (:data:`STREAM_COST`, :data:`DIRECTORY_COST`,
    :data:`READER_COST`). The daemon's own baseline is not counted.

    Over the limit, :meth:`shed` first takes ring history, oldest first across
    the mount (a chunk a reader still queues moves from its ring to ``held``,
    so no current reader loses anything), then data from the readers furthest
    behind, anywhere in the mount, but only from readers whose stream may lose
    data (``drop`` and ``disconnect``): under ``block`` the writers wait
    instead (see :meth:`Stream.write`), and every release of memory wakes
    them to look again. At the limit with nothing left to shed, new
    bookkeeping is refused (:meth:`check`: ENOSPC). ``limit=None`` means no cap.
    """

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        self.used = 0
        self.held = 0
        #: The most ``used`` has been since someone last set it back, not counting
        #: bookkeeping made since: what has fallen below it was freed, and its heap
        #: is what mount._trim_heap gives back.
        self.peak = 0
        self.readers: set[CappedReader] = set()
        #: Streams whose rings hold history: what :meth:`shed` takes first.
        self.histories: set[CappedStream] = set()
        #: Streams with block writes waiting for memory to be freed.
        self.cap_waiters: set[CappedStream] = set()

    def grow(self, size: int) -> None:
        """A ring holds ``size`` more bytes."""
        self.used += size
        if self.used > self.peak:
            self.peak = self.used

    def free(self, size: int) -> None:
        self.used -= size
        if self.cap_waiters:
            self._wake_cap_waiters()

    def hold(self, footprint: int) -> None:
        """A chunk no ring holds is now queued by a reader (grow written out: once per chunk)."""
        self.held += footprint
        self.used += footprint
        if self.used > self.peak:
            self.peak = self.used

    def release(self, footprint: int) -> None:
        self.held -= footprint
        self.used -= footprint
        if self.cap_waiters:
            self._wake_cap_waiters()

    def count(self, cost: int) -> None:
        """Bookkeeping of ``cost`` bytes was made (a node, a reader): see :meth:`check`."""
        self.used += cost
        self.peak += cost

    refund = free

    def _wake_cap_waiters(self) -> None:
        for stream in self.cap_waiters:
            stream.cap_freed()
        self.cap_waiters.clear()

    def over(self) -> bool:
        return self.limit is not None and self.used > self.limit

    def has_room(self, footprint: int) -> bool:
        return self.limit is None or self.used + footprint <= self.limit

    def check(self, cost: int, what: str) -> None:
        """ENOSPC unless ``cost`` more fits, after shedding what may be shed.

        The caller counts the cost (:meth:`count`) once it made what it is for.
        """
        if self.has_room(cost):
            return
        self.shed(cost)
        if not self.has_room(cost):
            refusals.warning("memory cap of %d bytes reached: %s refused", self.limit, what)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def shed(self, room: int = 0) -> None:
        """Shed until ``room`` more bytes fit: ring history, then the readers' data."""
        if self.limit is None:
            return
        target = self.limit - room
        if self.used <= target:
            return
        if self.histories:
            self._shed_history(target - self.limit // HISTORY_STEP)
            if self.used <= target:
                return
        self._shed_readers(target)

    def _shed_history(self, target: int) -> None:
        """Evict ring history, oldest first across the mount, until ``used`` is ``target``."""
        rings = [(stream.oldest_history(), order, stream)
                 for order, stream in enumerate(self.histories)]
        heapq.heapify(rings)
        while rings and self.used > target:
            _, order, stream = rings[0]
            stream.shed_history()
            written = stream.oldest_history()
            if written is None:
                heapq.heappop(rings)
            else:
                heapq.heapreplace(rings, (written, order, stream))

    def _shed_readers(self, target: int) -> None:
        """Take data from the sheddable readers furthest behind until ``used`` is ``target``.

        A heap of readers by how far behind they are: a chunk shared by N
        stalled readers is freed once all N have lost it, which costs
        N log N here (a scan for the furthest behind before each drop cost N²:
        a 128 KiB writer with 1,000 stalled HTTP readers at the cap managed
        0.5 MB/s).
        """
        behind = [(-reader.pending, order, reader) for order, reader in enumerate(self.readers)
                  if reader.pending and reader.stream.sheddable(reader)]
        heapq.heapify(behind)
        while behind and self.used > target:
            _, order, victim = heapq.heappop(behind)
            # False: only a chunk it is part-way through is left, which is never taken.
            if victim.stream.shed(victim) and victim.pending:
                heapq.heappush(behind, (-victim.pending, order, victim))
