"""One open-for-read handle on a stream."""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Callable
from typing import Protocol

import trio

from .chunk import Chunk
from .wait import Waiter

__all__ = ["Reader", "ReaderDisconnected", "ReaderOwner", "ReaderTotals"]

log = logging.getLogger(__name__)


class ReaderOwner(Protocol):
    """What a reader reports to: its stream (:class:`~.stream.Stream`).

    A reader calls these and touches nothing else of its stream.
    """

    name: str

    def hold(self, footprint: int) -> None:
        """A chunk no ring holds is now queued by a reader (counted once per chunk)."""

    def release(self, footprint: int) -> None:
        """The last reader of a chunk no ring holds let it go."""

    def delivered(self, size: int) -> None:
        """``size`` bytes left a reader's queue for the reading program."""

    def made_room(self) -> None:
        """A reader's queue shrank: writes waiting for memory or room may look again."""

    def history(self) -> list[Chunk]:
        """The chunks the stream's ring holds, oldest first (for a seek)."""


class ReaderDisconnected(Exception):
    """The reader fell further behind than its buffer allows and was cut off."""


class Edge(enum.IntEnum):
    """What a read does at the live edge, as the reader has moved (see :meth:`Reader.seek`)."""

    #: Never moved: wait, as ``cat`` does; a first seek makes it :attr:`EOF`.
    FOLLOW_FROM_OPEN = 0
    #: Moved again after its EOF (a player going back to play): wait, for good.
    FOLLOW = 1
    #: Moved by a seek: EOF, as a growing regular file.
    EOF = 2
    #: And was given that EOF: still EOF there; the next seek makes it :attr:`FOLLOW`.
    GAVE_EOF = 3


class ReaderTotals:
    """Queued bytes and waiting reads, added up over a group of readers."""

    __slots__ = ("queued_bytes", "waiting_reads")

    def __init__(self, queued_bytes: int = 0, waiting_reads: int = 0) -> None:
        self.queued_bytes = queued_bytes
        self.waiting_reads = waiting_reads


class Reader:
    """A reader's own queue of chunks, fed by its stream and drained by read().

    Each reader has a trio memory channel, seeded at open with the stream's
    history and then fed every chunk written while it is open. Chunks travel
    by reference: readers and the ring share one object per chunk.

    Invariants:

    - ``pending`` is the payload queued and not yet read, in bytes.
    - ``backlog`` is the footprint (payload plus :data:`CHUNK_OVERHEAD`) of the
      queued chunks that were written after the reader opened. The first
      ``_history`` chunks of the queue are the history it was seeded with and
      do not count: the channel bounds how far a reader falls behind, not the
      history it was given.
    - A chunk may be queued when ``backlog`` is zero or it fits in ``capacity``
      (:meth:`has_room`), so a reader that keeps up never misses a chunk.
    - A chunk is taken off the queue whole: a read, a drop or a cancellation
      never leaves part of a chunk behind for the next read to miss.

    - ``totals`` adds up ``pending`` and ``waiting`` over the stream's
      registered readers (a private one once the reader left the stream), so
      the stream's figures cost the same with one reader or 100,000.

    Closing the channel is how the stream says "no more": read() then returns
    what is still queued and after that ``b""`` (EOF).
    """

    # Slots: a mount may hold 100,000 readers.
    __slots__ = (
        "stream", "id", "capacity", "waiter", "lossy", "pending", "backlog", "dropped_chunks",
        "dropped_bytes", "disconnected", "ended", "waiting", "totals", "next_offset",
        "_history", "_history_begun", "_send", "_receive", "_current", "_view", "_offset",
        "_sent", "_room",
        "_arrival", "_on_readable", "_edge",
    )

    def __init__(self, stream: ReaderOwner, reader_id: int, capacity: int, waiter: Waiter,
                 lossy: bool, totals: ReaderTotals) -> None:
        self.stream = stream
        self.id = reader_id
        self.capacity = capacity
        self.waiter = waiter
        #: Under ``block``, a lossy reader never holds writers back: it misses
        #: chunks as under ``drop`` (the read side of a handle that also writes).
        self.lossy = lossy
        self.pending = 0
        self.backlog = 0
        self.dropped_chunks = 0
        self.dropped_bytes = 0
        self.disconnected = False
        self.ended = False
        #: Reads of this reader waiting for data right now.
        self.waiting = 0
        self.totals = totals
        #: Where the stream's next byte for this reader starts: the end of the
        #: last chunk queued, or where it last sought to.
        self.next_offset = 0
        self._history = 0
        # Whether any of the history has left the queue by a read: from then
        # on no more of it may be dropped, or it would have a hole.
        self._history_begun = False
        # Infinite in items: the bound is in bytes and kept by has_room().
        self._send, self._receive = trio.open_memory_channel[Chunk](math.inf)
        # The chunk being served across several reads, and how far into it.
        self._current: Chunk | None = None
        self._view: memoryview | None = None
        self._offset = 0
        # The chunks read_for_sending() gave out to their ends: still held (and
        # counted) until the sender asks for more. A list only while there are.
        self._sent: list[Chunk] | None = None
        # Writers waiting for this reader to make room (the ``block`` policy),
        # and reads waiting for the next chunk. Made when first needed: an idle
        # reader of 100,000 should not carry two empty ones (370 bytes).
        self._room: trio.lowlevel.ParkingLot | None = None
        self._arrival: trio.lowlevel.ParkingLot | None = None
        # Called once when the reader next becomes readable (poll(2) support).
        self._on_readable: Callable[[], None] | None = None
        # What a read that finds nothing queued does: see seek().
        self._edge = Edge.FOLLOW_FROM_OPEN

    @property
    def readable(self) -> bool:
        """Whether a read would return at once: data is queued, or EOF, or it would fail."""
        return bool(self.pending) or self.ended

    def notify_when_readable(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once, when the reader next becomes readable.

        Replaces any callback set before; the caller checks :attr:`readable` first.
        """
        self._on_readable = callback

    def _readable_now(self) -> None:
        if self._arrival:
            self._arrival.unpark_all()
        if self._on_readable is not None:
            callback, self._on_readable = self._on_readable, None
            callback()

    # -- the stream's side ------------------------------------------------

    def room_waiters(self) -> trio.lowlevel.ParkingLot:
        """Where writes wait for this reader to make room; unparked as it does."""
        if self._room is None:
            self._room = trio.lowlevel.ParkingLot()
        return self._room

    def has_room(self, footprint: int) -> bool:
        """Whether a chunk fits: an empty backlog takes any chunk."""
        return not self.backlog or self.backlog + footprint <= self.capacity

    def seed(self, chunk: Chunk) -> None:
        """Queue a chunk of history: it does not count against the capacity."""
        self._history += 1
        self._queue(chunk)

    def push(self, chunk: Chunk) -> None:
        """Queue a live chunk; the caller checked :meth:`has_room`."""
        self.backlog += chunk.footprint
        self._queue(chunk)

    def _queue(self, chunk: Chunk) -> None:
        if not chunk.refs and not chunk.in_ring:
            self.stream.hold(chunk.footprint)
        chunk.refs += 1
        self._send.send_nowait(chunk)
        size = len(chunk.data)
        self.pending += size
        self.totals.queued_bytes += size
        self.next_offset = chunk.offset + size
        # _readable_now(), inlined: this runs per chunk per reader.
        if self._arrival:
            self._arrival.unpark_all()
        if self._on_readable is not None:
            self._readable_now()

    def end(self) -> None:
        """No more chunks will come: read() drains the queue, then returns EOF."""
        self.ended = True
        self._send.close()
        if self._room:
            self._room.unpark_all()
        self._readable_now()

    def disconnect(self) -> None:
        """Cut the reader off: its queue is discarded and read() fails from now on."""
        if self.disconnected:
            return
        self.disconnected = True
        log.warning(
            "stream %r: reader %d disconnected: %d bytes queued exceed its buffer of %d bytes",
            self.stream.name, self.id, self.backlog, self.capacity,
        )
        self.end()
        self._discard_queue()

    def drop_oldest(self) -> int:
        """Discard the oldest whole chunk not yet being read; return its payload size.

        A chunk already partly read is never dropped: the reader gets it whole.
        History is dropped only from its start: once the reader has begun it
        (read some, or is part-way through a chunk of it), a drop would leave a
        hole in it, so nothing is dropped until the history is read (0).
        """
        # The chunks given out and the one part-way read are older than the
        # next one, which is history if the history count reaches past them.
        ahead = len(self._sent or ()) + (self._current is not None)
        history = self._history > ahead
        if history and (ahead or self._history_begun):
            return 0
        try:
            chunk = self._receive.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel):
            return 0
        size = len(chunk.data)
        self._took(size)
        # Not _done(), which counts history in queue order: this one leaves
        # the queue before the chunks ahead of it.
        if history:
            self._history -= 1
        else:
            self.backlog -= chunk.footprint
        self._unref(chunk)
        self._made_room()
        return size

    def seek(self, offset: int) -> None:
        """Read on from stream offset ``offset``, in the ring's history or at the end.

        The queue is replaced by the ring's history from ``offset`` on: from its
        oldest byte if ``offset`` is older, and nothing (the next live chunk)
        if ``offset`` is at or past the end. Nothing is dropped or counted.
        Once the stream has ended, the ring can still be read again, up to EOF.

        A reader that seeks reads as from a growing regular file: at the live
        edge it gets EOF, which is how a demuxer that seeks near the end to
        estimate a duration (libavformat: ffprobe; ffplay and mpv as they
        open) learns where the end is. Once it got that EOF, its next seek (a
        player going back to play what it probed) makes it follow the stream
        again, waiting at the live edge: ffplay, given EOF at every visit to
        the edge, polled 839 times in 10 s and dropped frames.
        """
        if self._edge is Edge.FOLLOW_FROM_OPEN:
            self._edge = Edge.EOF
        elif self._edge is Edge.GAVE_EOF:
            self._edge = Edge.FOLLOW
        self._discard_queue()
        self._history_begun = False
        self.next_offset = offset
        if self.disconnected:
            return
        if self.ended:
            self._send, self._receive = trio.open_memory_channel[Chunk](math.inf)
        for chunk in self.stream.history():
            if chunk.offset + len(chunk.data) > offset:
                self.seed(chunk)
        if self.ended:
            self._send.close()
        if self._history:
            first = self._receive.receive_nowait()
            self._start(first)
            skip = max(0, offset - first.offset)
            self._offset = skip
            self._took(skip)

    # -- the reading side -------------------------------------------------

    async def read(self, size: int, *, nonblocking: bool = False) -> bytes | memoryview:
        """Return up to ``size`` bytes as soon as any are queued; ``b""`` at EOF.

        Waits while nothing is queued, for as long as it takes. Queued small
        chunks are joined into one reply; a chunk larger than ``size`` is
        served over several reads without copying its tail.
        Raises :class:`trio.WouldBlock` when ``nonblocking`` and nothing is
        queued, :class:`~.wait.Interrupted` when the reader's waiter is
        interrupted, and :class:`ReaderDisconnected` once the reader was cut off.
        Cancelling or interrupting a read loses nothing.
        After a :meth:`seek`, a read at the live edge may be EOF (see there).
        """
        if self._current is None:
            if not self.pending and self._edge >= Edge.EOF and not self.ended:
                self._edge = Edge.GAVE_EOF
                return b""
            chunk = await self._next_chunk(nonblocking)
            if chunk is None:
                return b""
            data = chunk.data
            if len(data) <= size:
                self._gave(len(data))
                self._done(chunk)
                return self._join_queued(data, size)
            self._start(chunk)
        return self._take_current(size)

    async def read_for_sending(self, size: int, count: int) -> list[memoryview]:
        """As :meth:`read`, for a door that sends what it gets after this returns.

        Returns views of up to ``count`` queued chunks, ``size`` bytes in all,
        without copying; ``[]`` at EOF. The chunks stay queued (in
        ``held_bytes`` and under the memory cap) until the next call, or
        close: a client that stops reading holds nothing the budget does not see.
        """
        self._release_sent()
        if self._current is None:
            chunk = await self._next_chunk(False)
            if chunk is None:
                return []
            self._start(chunk)
        pieces = [self._take_current(size, keep=True)]
        room = size - len(pieces[0])
        while room > 0 and len(pieces) < count and self._current is None and self.pending:
            self._start(self._receive.receive_nowait())
            piece = self._take_current(room, keep=True)
            pieces.append(piece)
            room -= len(piece)
        return pieces

    def _release_sent(self) -> None:
        sent, self._sent = self._sent, None
        if sent:
            for chunk in sent:
                self._done(chunk)

    async def _next_chunk(self, nonblocking: bool) -> Chunk | None:
        """The next queued chunk, waiting for one unless ``nonblocking``; None at EOF."""
        # ``pending`` says whether anything is queued, without the cost of
        # an exception from the channel on every read that has to wait.
        try:
            if self.pending or self.ended:
                return self._receive.receive_nowait()
            if nonblocking:
                raise trio.WouldBlock
            return await self._wait_for_chunk()
        except trio.EndOfChannel:
            self._check_connected()
            return None

    async def _wait_for_chunk(self) -> Chunk:
        self.waiting += 1
        self.totals.waiting_reads += 1
        try:
            if self._arrival is None:
                self._arrival = trio.lowlevel.ParkingLot()
            while True:
                await self.waiter.park(self._arrival)
                try:
                    return self._receive.receive_nowait()
                except trio.WouldBlock:
                    continue
        finally:
            self.waiting -= 1
            self.totals.waiting_reads -= 1

    def _join_queued(self, first: bytes, size: int) -> bytes:
        """``first`` and as much more as is queued, up to ``size`` bytes in all."""
        pieces: list[bytes | memoryview] = [first]
        room = size - len(first)
        # The stream hears once per read, not once per chunk joined.
        whole = 0
        while room > 0 and self.pending:
            chunk = self._receive.receive_nowait()
            data = chunk.data
            if len(data) > room:
                self._start(chunk)
                pieces.append(self._take_current(room))
                break
            self._took(len(data))
            whole += len(data)
            self._done(chunk, wake=False)
            pieces.append(data)
            room -= len(data)
        if whole:
            self.stream.delivered(whole)
            self._made_room()
        return first if len(pieces) == 1 else b"".join(pieces)

    def _took(self, size: int) -> None:
        self.pending -= size
        self.totals.queued_bytes -= size

    def _gave(self, size: int) -> None:
        """``size`` bytes left the queue for the reading program (not dropped or discarded)."""
        self._took(size)
        self.stream.delivered(size)

    def _start(self, chunk: Chunk) -> None:
        self._current = chunk
        self._view = memoryview(chunk.data)
        self._offset = 0

    def _take_current(self, size: int, keep: bool = False) -> memoryview:
        """The next ``size`` bytes of the chunk being served, without copying.

        With ``keep``, a chunk read to its end is held in ``_sent``, not let go.
        """
        start = self._offset
        piece = self._view[start:start + size]
        self._offset = start + len(piece)
        self._gave(len(piece))
        if self._offset == len(self._view):
            chunk = self._current
            self._current = self._view = None
            if keep:
                if self._sent is None:
                    self._sent = []
                self._sent.append(chunk)
            else:
                self._done(chunk)
        return piece

    def _done(self, chunk: Chunk, wake: bool = True) -> None:
        """``chunk`` left the queue in order: read to its end, or discarded.

        ``wake=False``: the caller calls :meth:`_made_room` once it is done.
        """
        if self._history:
            self._history -= 1
            self._history_begun = True
        else:
            self.backlog -= chunk.footprint
        self._unref(chunk)
        if wake:
            self._made_room()

    def _unref(self, chunk: Chunk) -> None:
        chunk.refs -= 1
        if not chunk.refs and not chunk.in_ring:
            self.stream.release(chunk.footprint)

    def _made_room(self) -> None:
        """Wake the writes waiting for this reader's room or for the memory cap."""
        if self._room:
            self._room.unpark_all()
        self.stream.made_room()

    def _check_connected(self) -> None:
        if self.disconnected:
            raise ReaderDisconnected(
                f"reader {self.id} of stream {self.stream.name!r} was disconnected"
            )

    def _discard_queue(self) -> None:
        self._release_sent()
        if self._current is not None:
            self._took(len(self._view) - self._offset)
            chunk = self._current
            self._current = self._view = None
            self._done(chunk)
        # The chunks' memory and the writers waiting for room are settled once
        # for the whole queue: a reader released with 20 chunks queued cost
        # 20 wake-up checks, and 100,000 such readers took 8 s to let go.
        receive, size = self._receive, 0
        while True:
            try:
                chunk = receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            size += len(chunk.data)
            self._unref(chunk)
        if size:
            self._took(size)
            self._history = self.backlog = 0
            self._made_room()

    def close(self) -> None:
        """The handle was released: forget everything queued."""
        self.end()
        self._discard_queue()
        self._receive.close()
