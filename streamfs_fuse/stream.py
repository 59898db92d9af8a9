"""A live byte stream: writers append chunks, every open reader gets them."""

from __future__ import annotations

import enum
import itertools
import math
import logging
from dataclasses import dataclass, replace

import trio

from .budget import MemoryBudget
from .reader import Reader
from .ring import RingBuffer

__all__ = ["SlowReaderPolicy", "StreamSettings", "StreamStatistics", "Stream", "StreamClosed"]

log = logging.getLogger(__name__)

#: Drop warnings for a stream are logged at most this often, with the counts
#: since the last one, so slow readers cannot flood the log.
DROP_LOG_INTERVAL = 5.0
#: Readers named in one drop warning; the rest are counted.
DROP_LOG_READERS = 5


class SlowReaderPolicy(enum.Enum):
    """What a write does for a reader whose buffer cannot take the chunk."""

    #: The reader misses the chunk; writers and other readers never wait.
    DROP = "drop"
    #: The write waits until every reader has room: lossless, like a pipe.
    BLOCK = "block"
    #: The reader is cut off; its next read fails.
    DISCONNECT = "disconnect"


@dataclass(frozen=True)
class StreamSettings:
    """How a mount's streams behave; ``max_memory`` is one cap shared by all."""

    channel_buffer_size: int = 6 * 1024 * 1024
    ring_buffer_size: int = 6 * 1024 * 1024
    slow_reader: SlowReaderPolicy = SlowReaderPolicy.DROP
    max_memory: int | None = None


@dataclass(frozen=True)
class StreamStatistics:
    readers: int
    writers: int
    bytes_written: int
    chunks_written: int
    ring_bytes: int
    ring_chunks: int
    queued_bytes: int
    dropped_chunks: int
    dropped_bytes: int
    disconnected_readers: int
    channel_buffer_size: int
    ring_buffer_size: int
    slow_reader: SlowReaderPolicy


class StreamClosed(Exception):
    """The stream was removed: it takes no more data."""


class Stream:
    """One stream: its ring of history, its readers, its counters.

    Each write is one chunk, delivered whole and in order to every reader that
    is open at that moment; a reader that opens is first given the ring's
    history. Both happen without an await in between, so no chunk is lost,
    repeated or reordered between history and live data.
    """

    def __init__(self, name: str, settings: StreamSettings,
                 budget: MemoryBudget | None = None) -> None:
        self.name = name
        self.settings = settings
        self.budget = budget or MemoryBudget()
        self.ring = RingBuffer(settings.ring_buffer_size)
        self.readers: list[Reader] = []
        self.writers = 0
        self.bytes_written = 0
        self.chunks_written = 0
        self.dropped_chunks = 0
        self.dropped_bytes = 0
        self.disconnected_readers = 0
        self.closed = False
        self._reader_ids = itertools.count(1)
        # Chunks missed per reader id since the last drop warning.
        self._unlogged_drops: dict[int, int] = {}
        self._last_drop_log = -math.inf
        # Under the block policy, writers queue here so chunks keep arrival order.
        self._write_lock = trio.Lock()

    @property
    def policy(self) -> SlowReaderPolicy:
        return self.settings.slow_reader

    def set_policy(self, policy: SlowReaderPolicy) -> None:
        self.settings = replace(self.settings, slow_reader=policy)

    def open_reader(self) -> Reader:
        """Register a reader, seeded with as much history as its buffer holds."""
        reader = Reader(self, next(self._reader_ids), self.settings.channel_buffer_size,
                        self.budget)
        for chunk in self.ring.newest(reader.capacity):
            reader.push(chunk)
        if self.closed:
            reader.end()
        else:
            self.readers.append(reader)
        return reader

    def release_reader(self, reader: Reader) -> None:
        reader.close()
        try:
            self.readers.remove(reader)
        except ValueError:
            pass

    async def write(self, data: bytes) -> int:
        """Append ``data`` as one chunk; raise :class:`StreamClosed` once removed."""
        if self.closed:
            raise StreamClosed(self.name)
        if not data:
            return 0
        if self.policy is SlowReaderPolicy.BLOCK:
            async with self._write_lock:
                await self._wait_for_room(len(data))
                self._deliver(data)
        else:
            self._deliver(data)
        return len(data)

    async def _wait_for_room(self, size: int) -> None:
        while True:
            if self.closed:
                raise StreamClosed(self.name)
            slow = next((r for r in self.readers if not r.has_room(size)), None)
            if slow is not None:
                await slow.wait_room(size)
            elif not self.budget.has_room(size * len(self.readers)):
                await self.budget.wait_room(size * len(self.readers))
            else:
                return

    def _deliver(self, chunk: bytes) -> None:
        size = len(chunk)
        self.ring.append(chunk)
        self.bytes_written += size
        self.chunks_written += 1
        full = []
        for reader in self.readers:
            # Reader.has_room, inlined: this loop runs per chunk per reader.
            pending = reader.pending
            if not pending or pending + size <= reader.capacity:
                reader.push(chunk)
            else:
                full.append(reader)
        if full:
            if self.policy is SlowReaderPolicy.DISCONNECT:
                for reader in full:
                    self._disconnect(reader)
            else:
                self._count_drops(full, size)
        if self.budget.over():
            self.budget.shed()

    def shed(self, reader: Reader) -> None:
        """The mount's memory cap is exceeded and ``reader`` is furthest behind."""
        if self.policy is SlowReaderPolicy.DISCONNECT:
            self._disconnect(reader)
        else:
            self._count_drops([reader], reader.drop_oldest())

    def _count_drops(self, readers: list[Reader], size: int) -> None:
        unlogged = self._unlogged_drops
        for reader in readers:
            reader.dropped_chunks += 1
            reader.dropped_bytes += size
            unlogged[reader.id] = unlogged.get(reader.id, 0) + 1
        self.dropped_chunks += len(readers)
        self.dropped_bytes += size * len(readers)
        now = trio.current_time()
        if now - self._last_drop_log >= DROP_LOG_INTERVAL:
            self._last_drop_log = now
            self._log_drops()

    def _log_drops(self) -> None:
        drops = self._unlogged_drops
        named = ", ".join(f"reader {rid} ({n})" for rid, n in
                          itertools.islice(drops.items(), DROP_LOG_READERS))
        more = len(drops) - DROP_LOG_READERS
        log.warning(
            "stream %r: %d slow reader(s) missed %d chunks: %s%s; %d chunks (%d bytes) missed"
            " in all", self.name, len(drops), sum(drops.values()), named,
            f" and {more} more" if more > 0 else "", self.dropped_chunks, self.dropped_bytes,
        )
        drops.clear()

    def _disconnect(self, reader: Reader) -> None:
        reader.disconnect()
        if reader in self.readers:
            self.readers.remove(reader)
            self.disconnected_readers += 1

    def close(self) -> None:
        """End the stream: readers drain what is queued, then get EOF."""
        if self.closed:
            return
        self.closed = True
        for reader in self.readers:
            reader.end()
        self.readers.clear()
        self.ring.clear()

    def statistics(self) -> StreamStatistics:
        return StreamStatistics(
            readers=len(self.readers),
            writers=self.writers,
            bytes_written=self.bytes_written,
            chunks_written=self.chunks_written,
            ring_bytes=self.ring.nbytes,
            ring_chunks=len(self.ring),
            queued_bytes=sum(reader.pending for reader in self.readers),
            dropped_chunks=self.dropped_chunks,
            dropped_bytes=self.dropped_bytes,
            disconnected_readers=self.disconnected_readers,
            channel_buffer_size=self.settings.channel_buffer_size,
            ring_buffer_size=self.settings.ring_buffer_size,
            slow_reader=self.policy,
        )
