"""A live byte stream: writers append chunks, every open reader gets them."""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, replace
from typing import Protocol

import trio

from ..settings import Join, SlowReaderPolicy, StreamSettings
from .budget import MemoryBudget
from .chunk import Chunk, footprint_of
from .memory import MemoryLog
from .mpegts import KeyframeIndex
from .reader import Reader, ReaderTotals
from .ring import RingBuffer
from .wait import Waiter

__all__ = [
    "FANOUT_SLICE", "SharedTotals", "StreamLog", "StreamStatistics",
    "Stream", "StreamClosed", "Writer",
]

log = logging.getLogger(__name__)

#: Drop warnings for a stream are logged at most this often, with the counts
#: since the last one, so slow readers cannot flood the log.
DROP_LOG_INTERVAL = 5.0
#: Readers named in one drop warning; the rest are counted.
DROP_LOG_READERS = 5
#: A chunk for more readers than this is handed out this many at a time (about
#: 0.4 ms of work), and other tasks run in between: handing one chunk to
#: 100,000 readers at once took 285 ms, and every other stream of the mount
#: waited for it.
FANOUT_SLICE = 128


@dataclass(frozen=True)
class SharedTotals:
    """A shared stream's figures across every host, as its store last reported them."""

    bytes_written: int
    chunks_written: int
    readers: int
    writers: int
    ring_bytes: int
    ring_chunks: int


@dataclass(frozen=True)
class StreamStatistics:
    """A stream's figures at one moment; sizes are payload bytes unless named ``held``.

    For a stream shared by several hosts, the first six are totals across all
    of them; the ``local_`` figures and the rest are this host's.
    """

    readers: int
    writers: int
    bytes_written: int
    chunks_written: int
    ring_bytes: int
    ring_chunks: int
    local_readers: int
    local_writers: int
    #: History this host holds: for a shared stream, its mirror of the log's ring.
    local_ring_bytes: int
    queued_bytes: int
    #: Bytes this host's readers have read, in all.
    delivered_bytes: int
    #: Memory held for readers beyond the ring, with per-chunk overhead: what
    #: this stream counts against ``max_memory`` besides its ring and bookkeeping.
    held_bytes: int
    dropped_chunks: int
    dropped_bytes: int
    disconnected_readers: int
    waiting_reads: int
    waiting_writes: int
    channel_buffer_size: int
    ring_buffer_size: int
    slow_reader: SlowReaderPolicy
    join: str


class StreamClosed(Exception):
    """The stream was removed: it takes no more data."""


class StreamLog(Protocol):
    """Where a stream's chunks are ordered: the seam between a stream and its store.

    In memory (:mod:`.memory`) a write is delivered here at once. A log
    that spans hosts takes every host's writes, and while this host has
    readers it follows the log and delivers each chunk to them through the
    stream's follower side (:meth:`Stream.accept`, :meth:`Stream.deliver`,
    the end with :meth:`Stream.close`).
    """

    #: Whether other hosts write and read the stream too: its totals are the store's.
    shared: bool

    async def append(self, data: bytes, waiter: Waiter) -> None:
        """Append one chunk; raise :class:`StreamClosed` once the stream was removed.

        A wait (for readers here, or other hosts') parks through ``waiter``
        (:meth:`Stream.park_writer`), so it can be interrupted.
        """

    def writable(self) -> bool:
        """Whether an append would be answered at once."""

    async def follow(self) -> None:
        """Return once this host's ring holds the log's history and live chunks follow it."""

    def unfollow(self) -> None:
        """This host's last reader left."""

    def end(self) -> None:
        """The stream was removed: end the log after what is in it.

        This host's readers get EOF once they reach that end (:meth:`Stream.close`).
        """

    def count(self, figure: str, delta: int) -> None:
        """Add ``delta`` to the hosts' total of ``figure`` ("readers" or "writers")."""

    async def totals(self) -> SharedTotals | None:
        """The stream's figures across every host; None if this host's are all there
        is, or the store cannot say now."""


class Writer:
    """One open-for-write handle on a stream."""

    __slots__ = ("stream", "waiter", "closed")

    def __init__(self, stream: Stream, waiter: Waiter) -> None:
        self.stream = stream
        self.waiter = waiter
        self.closed = False

    async def write(self, data: bytes) -> int:
        """Append ``data`` as one chunk; see :meth:`Stream.write`."""
        return await self.stream.write(data, self.waiter)

    def notify_when_writable(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once, when a write would next not wait (poll(2) support).

        Replaces any callback set before; the caller checks :meth:`Stream.writable` first.
        """
        self.stream.writable_watchers[self] = callback

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            stream = self.stream
            stream.writers -= 1
            stream.writable_watchers.pop(self, None)
            stream.log.count("writers", -1)


class Stream:
    """One stream: its ring of history, its readers, its writers, its counters.

    Each write is one chunk, delivered whole and in order to every reader that
    is open at that moment; a reader that opens is first given the ring's
    history. Both happen without an await in between, so no chunk is lost,
    repeated or reordered between history and live data.

    Every wait (a read for data, a ``block`` write for a reader's room, for the
    memory cap or for its turn) parks through the handle's :class:`Waiter`,
    and :meth:`close` wakes them all.

    Writes go to the stream's :class:`StreamLog`. In memory it delivers them
    here at once; a shared log orders them for every host, and the chunks come
    back in the log's order through the follower side (:meth:`accept`,
    :meth:`deliver`, :meth:`follow_from`), here and on every other host, so
    that each host's ring mirrors the log's.
    """

    def __init__(self, name: str, settings: StreamSettings,
                 budget: MemoryBudget | None = None) -> None:
        self.name = name
        self.settings = settings
        self.budget = budget or MemoryBudget()
        self.ring = RingBuffer(settings.ring_buffer_size, self._evicted)
        #: The ring's footprint as the budget last counted it.
        self.ring_counted = 0
        #: Where its keyframes start, while the stream looks like MPEG-TS.
        self.keyframes: KeyframeIndex | None = KeyframeIndex()
        #: Open readers, in the order they opened (a dict: 100,000 readers
        #: released one by one must not cost a list search each).
        self.readers: dict[Reader, None] = {}
        self.reader_totals = ReaderTotals()
        self.writers = 0
        self.bytes_written = 0
        self.chunks_written = 0
        #: Bytes this host's readers have read (a throughput counter, for monitoring).
        self.delivered_bytes = 0
        self.held = 0
        self.dropped_chunks = 0
        self.dropped_bytes = 0
        self.disconnected_readers = 0
        self.waiting_writes = 0
        #: No more writes; and no more chunks for readers, who get EOF once drained.
        self.closed = False
        #: The stream was removed: no more writes here, while its readers go
        #: on to the end of its log (then it is closed).
        self.removed = False
        #: Where its chunks are ordered; a tree with a shared store sets its own.
        self.log: StreamLog = MemoryLog(self)
        self.totals: SharedTotals | None = None
        self._reader_ids = itertools.count(1)
        # Chunks missed per reader id, and bytes in all, since the last drop warning.
        self._unlogged_drops: dict[int, int] = {}
        self._unlogged_bytes = 0
        self._last_drop_log = -math.inf
        self._drop_log_due = False
        # Under the block policy writes wait and deliver one at a time, in the
        # order they arrived: the head of this queue is the one whose turn it is.
        self._write_queue: list[object] = []  # short; a deque costs 760 bytes per stream
        self._turn = trio.lowlevel.ParkingLot()
        #: Block writes waiting for the memory cap: woken when the mount's
        #: budget frees memory and when this stream's readers read on.
        self.cap_waiters = trio.lowlevel.ParkingLot()
        #: Callbacks of writers polling for room, called once it comes.
        self.writable_watchers: dict[Writer, Callable[[], None]] = {}

    @property
    def policy(self) -> SlowReaderPolicy:
        return self.settings.slow_reader

    def set_policy(self, policy: SlowReaderPolicy) -> None:
        self.settings = replace(self.settings, slow_reader=policy)
        self.notify_writable()

    def set_join(self, join: Join) -> None:
        """Where readers that open from now on start (those open keep their place)."""
        self.settings = replace(self.settings, join=join)

    def writable(self) -> bool:
        """Whether a write would be answered at once (or fail at once, once closed)."""
        return self.closed or self.log.writable()

    def room_for_writes(self) -> bool:
        """Whether a write delivered here (:meth:`accept`) would not wait for a reader."""
        if self.policy is not SlowReaderPolicy.BLOCK:
            return True
        return not self._write_queue and all(
            r.lossy or r.backlog < r.capacity for r in self.readers)

    def notify_writable(self) -> None:
        """Call the writable callbacks if a write would no longer wait."""
        if self.writable_watchers and self.writable():
            callbacks = list(self.writable_watchers.values())
            self.writable_watchers.clear()
            for callback in callbacks:
                callback()

    def sheddable(self, reader: Reader) -> bool:
        """Whether the memory cap may take ``reader``'s data rather than make writers wait."""
        return reader.lossy or self.policy is not SlowReaderPolicy.BLOCK

    # -- opening and closing handles ----------------------------------------

    def open_reader(self, waiter: Waiter | None = None, *, lossy: bool = False,
                    join: Join | None = None) -> Reader:
        """Register a reader, seeded with the ring's history from where ``join`` says.

        ``join`` defaults to the stream's setting. ``lossy`` readers never
        hold writers back (see :attr:`Reader.lossy`).
        """
        reader = Reader(self, next(self._reader_ids), self.settings.channel_buffer_size,
                        waiter or Waiter(), lossy,
                        ReaderTotals() if self.closed else self.reader_totals)
        self.budget.readers.add(reader)
        reader.next_offset = self.bytes_written
        for chunk in self._history_for(join or self.settings.join):
            reader.seed(chunk)
        if self.closed:
            reader.end()
        else:
            self.readers[reader] = None
        self.log.count("readers", 1)
        return reader

    async def join(self, waiter: Waiter | None = None, *, lossy: bool = False,
                   join: Join | None = None) -> Reader:
        """:meth:`open_reader`, once this host holds the history of a shared stream."""
        await self.log.follow()
        return self.open_reader(waiter, lossy=lossy, join=join)

    def _history_for(self, join: Join) -> list[Chunk]:
        """The history a reader that joins now is given, as :class:`Join` says."""
        if join.where == "ring":
            return self.ring.history()
        oldest = self.ring.oldest_offset
        if join.where == "live" or oldest is None:
            return []
        index = self.keyframes
        if index is None:  # not MPEG-TS
            if join.where == "keyframe":
                return self.ring.history()
            start = self.ring.offset_since(trio.current_time() - join.seconds)
            return [] if start is None else self._history_from(start, b"")
        start = index.newest(oldest, None if join.where == "keyframe"
                             else trio.current_time() - join.seconds)
        return [] if start is None else self._history_from(start, index.prefix)

    def _history_from(self, start: int, prefix: bytes) -> list[Chunk]:
        """The ring's history from stream offset ``start`` on, with ``prefix`` in front.

        The first chunk is a private copy when it starts before ``start`` or
        takes the prefix; the others are shared with the ring.
        """
        history = self.ring.history()
        first = next(i for i, chunk in enumerate(history)
                     if chunk.offset + len(chunk.data) > start)
        chunk = history[first]
        if prefix or chunk.offset < start:
            chunk = Chunk(prefix + chunk.data[start - chunk.offset:], start - len(prefix))
        return [chunk, *history[first + 1:]]

    def release_reader(self, reader: Reader) -> None:
        reader.close()
        self.budget.readers.discard(reader)
        if self.readers.pop(reader, False) is None:
            self._leave(reader)
        self.log.count("readers", -1)
        if not self.readers:
            self.log.unfollow()
        self.notify_writable()

    def open_writer(self, waiter: Waiter | None = None) -> Writer:
        self.writers += 1
        self.log.count("writers", 1)
        return Writer(self, waiter or Waiter())

    # -- writing -------------------------------------------------------------

    async def write(self, data: bytes, waiter: Waiter) -> int:
        """Append ``data`` as one chunk; raise :class:`StreamClosed` once removed.

        Under ``drop`` and ``disconnect`` a write waits for no reader; it only
        takes its turn behind writes still being handed out to more than
        :data:`FANOUT_SLICE` readers. Under ``block``
        writes take turns in arrival order, and each waits until every reader
        that is not lossy has room and the mount's cap has room after shedding
        the data of readers that may lose it. Only the stream's own readers can
        hold a write back on the cap: one whose readers have no live data
        queued may always write, so a stalled reader on one stream never
        freezes the writers of another.
        """
        if self.closed or self.removed:
            raise StreamClosed(self.name)
        if not data:
            return 0
        await self.log.append(data, waiter)
        return len(data)

    # -- the follower's side: a log delivers here --------------------------
    # A log in memory calls accept() for each write; a shared log's follower
    # calls follow_from() as it begins to mirror the log, then deliver() or
    # accept() for each chunk in the log's order, close() at its end, and
    # unfollowed() once this host stops following.

    def follow_from(self, offset: int) -> None:
        """The log is mirrored from stream offset ``offset`` on: the ring starts empty there."""
        self.ring.clear()
        self._count_ring()
        self.bytes_written = offset

    def unfollowed(self) -> None:
        """This host no longer follows the log: its mirror of the ring goes."""
        self.ring.clear()
        self._count_ring()

    def accepts_now(self, size: int) -> bool:
        """Whether :meth:`accept` of ``size`` bytes would deliver without waiting."""
        if self._write_queue or len(self.readers) > FANOUT_SLICE:
            return False  # wait for the writes ahead, or hand out in slices
        if self.policy is not SlowReaderPolicy.BLOCK:
            return True
        footprint = footprint_of(size)
        return (self.budget.has_room(footprint)
                and all(r.lossy or r.has_room(footprint) for r in self.readers))

    async def accept(self, data: bytes, waiter: Waiter, offset: int | None = None) -> None:
        """Deliver ``data`` to the ring and the readers, waiting as the policy says.

        ``offset`` is where a shared log put the chunk; bytes between the end
        of the last chunk and it were trimmed from the log before this host
        read them, and count as dropped by every reader.
        """
        if self.accepts_now(len(data)):
            self.deliver(data, offset)
            return
        block = self.policy is SlowReaderPolicy.BLOCK
        turn = object()
        queue = self._write_queue
        queue.append(turn)
        try:
            while queue[0] is not turn:
                await self.park_writer(waiter, self._turn)
            if block:
                await self._wait_for_room(footprint_of(len(data)), waiter)
            if len(self.readers) > FANOUT_SLICE:
                await self._deliver_in_slices(data, offset)
            else:
                self.deliver(data, offset)
        finally:
            queue.remove(turn)
            if self._turn:
                self._turn.unpark_all()
            self.notify_writable()

    async def _wait_for_room(self, footprint: int, waiter: Waiter) -> None:
        budget = self.budget
        while True:
            slow = next((r for r in self.readers if not r.lossy and not r.has_room(footprint)),
                        None)
            if slow is not None:
                await self.park_writer(waiter, slow.room_waiters())
                continue
            if budget.has_room(footprint):
                return
            budget.shed(footprint)
            if budget.has_room(footprint) or not any(
                    r.backlog for r in self.readers if not r.lossy):
                return  # nothing this stream's readers do could free memory
            budget.cap_waiters.add(self)
            await self.park_writer(waiter, self.cap_waiters)

    async def park_writer(self, waiter: Waiter, lot: trio.lowlevel.ParkingLot) -> None:
        """Wait on ``lot`` as a write (counted in ``waiting_writes``); StreamClosed once closed."""
        if self.closed:
            raise StreamClosed(self.name)
        self.waiting_writes += 1
        try:
            await waiter.park(lot)
        finally:
            self.waiting_writes -= 1
        if self.closed:
            raise StreamClosed(self.name)

    def deliver(self, data: bytes, offset: int | None = None) -> None:
        """Give ``data`` to the ring and every reader now; see :meth:`accept`.

        Only once :meth:`accepts_now` said so.
        """
        chunk = self._record(data, offset)
        self._handed_out(chunk, self._hand(chunk, self.readers))

    async def _deliver_in_slices(self, data: bytes, offset: int | None) -> None:
        """:meth:`deliver` to a crowd, :data:`FANOUT_SLICE` readers at a time.

        Only on the write's turn, so chunks reach every reader in order. The
        readers are those open when the chunk went into the ring: one that
        opens meanwhile has it in its history, one that leaves is skipped, and
        one that seeks meanwhile was given it from the ring if it wanted it.
        """
        chunk = self._record(data, offset)
        readers = list(self.readers)
        full = []
        for first in range(0, len(readers), FANOUT_SLICE):
            if first:
                # Shielded: a chunk in the ring is handed to all of its readers.
                await trio.lowlevel.cancel_shielded_checkpoint()
            full += self._hand(chunk, [
                r for r in readers[first:first + FANOUT_SLICE]
                if not r.ended and r.next_offset <= chunk.offset])
        self._handed_out(chunk, full)

    @staticmethod
    def _hand(chunk: Chunk, readers: Iterable[Reader]) -> list[Reader]:
        """Queue ``chunk`` for each of ``readers`` that has room; return those that had none."""
        footprint = chunk.footprint
        full = []
        for reader in readers:
            if reader.has_room(footprint):
                reader.push(chunk)
            else:
                full.append(reader)
        return full

    def _record(self, data: bytes, offset: int | None) -> Chunk:
        """Count ``data`` as written and put it in the ring; return its chunk."""
        if offset is not None and offset != self.bytes_written:
            missed = offset - self.bytes_written
            if self.readers and missed > 0:
                self._count_drops(self.readers, missed)
            self.bytes_written = offset
        chunk = Chunk(data, self.bytes_written)
        self.bytes_written += len(data)
        self.chunks_written += 1
        now = trio.current_time()
        # The ring first: a chunk it keeps costs the budget nothing more while it is there.
        ring = self.ring
        ring.append(chunk, now)
        if ring.footprint != self.ring_counted:
            self._count_ring()
        if self.keyframes is not None:
            self.keyframes.add(data, chunk.offset, now)
            if not self.keyframes.is_ts:
                self.keyframes = None
        return chunk

    def _handed_out(self, chunk: Chunk, full: list[Reader]) -> None:
        """Apply the policy to the readers that had no room for ``chunk``."""
        if full:
            if self.policy is SlowReaderPolicy.DISCONNECT:
                for reader in full:
                    self._disconnect(reader)
            else:
                self._count_drops(full, len(chunk.data))
        if self.budget.over():
            self.budget.shed()

    # -- what readers report (see ReaderOwner) and the budget asks (CappedStream)

    def hold(self, footprint: int) -> None:
        """A chunk of this stream is queued by a reader and not in the ring."""
        self.held += footprint
        self.budget.hold(footprint)

    def release(self, footprint: int) -> None:
        self.held -= footprint
        self.budget.release(footprint)

    def delivered(self, size: int) -> None:
        self.delivered_bytes += size

    def made_room(self) -> None:
        """A reader's queue shrank: wake the writes waiting for the memory cap, and
        the writers polling for room."""
        if self.cap_waiters:
            self.cap_waiters.unpark_all()
        if self.writable_watchers:
            self.notify_writable()

    def history(self) -> list[Chunk]:
        return self.ring.history()

    def cap_freed(self) -> None:
        self.cap_waiters.unpark_all()

    def _count_ring(self) -> None:
        """Tell the budget how the ring's footprint changed since it last heard."""
        footprint = self.ring.footprint
        change = footprint - self.ring_counted
        if change:
            budget = self.budget
            if not self.ring_counted:
                budget.histories.add(self)
            elif not footprint:
                budget.histories.discard(self)
            self.ring_counted = footprint
            if change > 0:
                budget.grow(change)
            else:
                budget.free(-change)

    def oldest_history(self) -> float | None:
        return self.ring.oldest_time

    def shed_history(self) -> None:
        """The mount is over its memory cap and this ring's oldest unit is the mount's oldest.

        A chunk some reader still queues stays with it (counted in ``held``).
        """
        self.ring.evict_oldest()
        self._count_ring()

    def discard(self) -> None:
        """The stream is gone for good (its node forgotten): its ring's memory goes."""
        self.ring.clear()
        self._count_ring()

    def _evicted(self, chunk: Chunk) -> None:
        if chunk.refs:
            self.hold(chunk.footprint)

    def shed(self, reader: Reader) -> bool:
        """The mount is over its memory cap and ``reader`` is furthest behind.

        Return whether anything was freed.
        """
        if self.policy is SlowReaderPolicy.DISCONNECT:
            self._disconnect(reader)
            return True
        size = reader.drop_oldest()
        if size:
            self._count_drops([reader], size)
        return bool(size)

    # -- slow readers --------------------------------------------------------

    def _count_drops(self, readers: Collection[Reader], size: int) -> None:
        unlogged = self._unlogged_drops
        for reader in readers:
            reader.dropped_chunks += 1
            reader.dropped_bytes += size
            unlogged[reader.id] = unlogged.get(reader.id, 0) + 1
        self.dropped_chunks += len(readers)
        self.dropped_bytes += size * len(readers)
        self._unlogged_bytes += size * len(readers)
        if trio.current_time() - self._last_drop_log >= DROP_LOG_INTERVAL:
            self.log_drops()
        elif not self._drop_log_due:
            # The rest of this burst is logged when the interval is over.
            self._drop_log_due = True
            trio.lowlevel.spawn_system_task(self._log_drops_later)

    async def _log_drops_later(self) -> None:
        await trio.sleep_until(self._last_drop_log + DROP_LOG_INTERVAL)
        self._drop_log_due = False
        self.log_drops()

    def log_drops(self) -> None:
        """Log the drops since the last warning, if any."""
        drops = self._unlogged_drops
        if not drops:
            return
        self._last_drop_log = trio.current_time()
        named = ", ".join(f"reader {rid} ({n})" for rid, n in
                          itertools.islice(drops.items(), DROP_LOG_READERS))
        more = len(drops) - DROP_LOG_READERS
        log.warning(
            "stream %r: %d slow reader(s) missed %d chunks (%d bytes) since the last warning:"
            " %s%s; %d chunks (%d bytes) missed since the stream was created",
            self.name, len(drops), sum(drops.values()), self._unlogged_bytes, named,
            f" and {more} more" if more > 0 else "", self.dropped_chunks, self.dropped_bytes,
        )
        drops.clear()
        self._unlogged_bytes = 0

    def _disconnect(self, reader: Reader) -> None:
        reader.disconnect()
        if self.readers.pop(reader, False) is None:
            self.disconnected_readers += 1
            self._leave(reader)

    def _leave(self, reader: Reader) -> None:
        """``reader`` is no longer registered: its figures leave the stream's totals."""
        totals = self.reader_totals
        totals.queued_bytes -= reader.pending
        totals.waiting_reads -= reader.waiting
        reader.totals = ReaderTotals(reader.pending, reader.waiting)

    # -- the end -------------------------------------------------------------

    def remove(self) -> None:
        """rm: the stream takes no more data, and its readers end after what was written.

        Its log is ended; the readers get EOF once they reach that end, after
        every chunk written before it (in memory: at once).
        """
        if not self.removed and not self.closed:
            self.removed = True
            self.log.end()
            self.notify_writable()

    def close(self) -> None:
        """End the stream here: readers drain what is queued, then get EOF; waiting writers fail."""
        if self.closed:
            return
        self.closed = True
        for reader in self.readers:
            reader.end()
            self._leave(reader)
        self.readers.clear()
        # The ring stays readable (by seeking) for handles still open; it goes
        # with the stream once the last of them is closed.
        self._turn.unpark_all()
        self.cap_waiters.unpark_all()
        self.notify_writable()
        self.log_drops()

    async def refresh(self) -> None:
        """Fetch a shared stream's totals across hosts, for :meth:`statistics`."""
        self.totals = await self.log.totals() or self.totals

    @property
    def size(self) -> int:
        """Bytes ever written, on every host: a throughput counter, as in AGFS."""
        return self.totals.bytes_written if self.totals else self.bytes_written

    @property
    def history_bytes(self) -> int:
        """What the ring holds (the shared log's ring, for a shared stream)."""
        return self.totals.ring_bytes if self.totals else self.ring.nbytes

    def statistics(self) -> StreamStatistics:
        totals = self.totals or SharedTotals(
            self.bytes_written, self.chunks_written, len(self.readers), self.writers,
            self.ring.nbytes, len(self.ring))
        return StreamStatistics(
            readers=totals.readers,
            writers=totals.writers,
            bytes_written=totals.bytes_written,
            chunks_written=totals.chunks_written,
            ring_bytes=totals.ring_bytes,
            ring_chunks=totals.ring_chunks,
            local_readers=len(self.readers),
            local_writers=self.writers,
            local_ring_bytes=self.ring.nbytes,
            queued_bytes=self.reader_totals.queued_bytes,
            delivered_bytes=self.delivered_bytes,
            held_bytes=self.held,
            dropped_chunks=self.dropped_chunks,
            dropped_bytes=self.dropped_bytes,
            disconnected_readers=self.disconnected_readers,
            waiting_reads=self.reader_totals.waiting_reads,
            waiting_writes=self.waiting_writes,
            channel_buffer_size=self.settings.channel_buffer_size,
            ring_buffer_size=self.settings.ring_buffer_size,
            slow_reader=self.policy,
            join=str(self.settings.join),
        )
