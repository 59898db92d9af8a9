"""One open-for-read handle on a stream."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import trio

from .budget import MemoryBudget

if TYPE_CHECKING:
    from .stream import Stream

__all__ = ["Reader", "ReaderDisconnected", "ReadInterrupted"]

log = logging.getLogger(__name__)


class ReaderDisconnected(Exception):
    """The reader fell further behind than its buffer allows and was cut off."""


class ReadInterrupted(Exception):
    """A waiting read was ended by :meth:`Reader.interrupt`; nothing was consumed."""


class Reader:
    """A reader's own queue of chunks, fed by its stream and drained by read().

    Each reader has a trio memory channel. The stream sends chunks into it by
    reference (readers share one bytes object per chunk) and counts the bytes
    queued in :attr:`pending`; the slow-reader policy compares that count with
    :attr:`capacity`. Closing the channel is how the stream says "no more":
    read() then returns what is still queued and after that ``b""`` (EOF).

    read() may be cancelled or interrupted at any point without losing data: a
    chunk is taken off the channel only when it is about to be returned.
    """

    def __init__(self, stream: Stream, reader_id: int, capacity: int,
                 budget: MemoryBudget) -> None:
        self.stream = stream
        self.id = reader_id
        self.capacity = capacity
        self.budget = budget
        budget.readers.add(self)
        self.pending = 0
        self.dropped_chunks = 0
        self.dropped_bytes = 0
        self.disconnected = False
        # Infinite in items: the bound is in bytes and kept by the stream.
        self._send, self._receive = trio.open_memory_channel[bytes](math.inf)
        # The chunk being served across several reads, and how far into it.
        self._current: memoryview | None = None
        self._offset = 0
        # Writers waiting for this reader to make room (the ``block`` policy).
        self._room = trio.lowlevel.ParkingLot()
        # A read waiting for the next chunk. Waiting here rather than in the
        # channel's receive() lets interrupt() end the wait without a cancel
        # scope per read, which costs more than the rest of the read.
        self._arrival = trio.lowlevel.ParkingLot()
        self._interrupted = False
        self.ended = False

    # -- the stream's side ------------------------------------------------

    def has_room(self, size: int) -> bool:
        """Whether a chunk of ``size`` bytes fits; an empty reader takes any chunk."""
        return self.pending == 0 or self.pending + size <= self.capacity

    def push(self, chunk: bytes) -> None:
        self._send.send_nowait(chunk)
        self.pending += len(chunk)
        self.budget.add(len(chunk))
        if self._arrival:
            self._arrival.unpark_all()

    def end(self) -> None:
        """No more chunks will come: read() drains the queue, then returns EOF."""
        self.ended = True
        self._send.close()
        self._room.unpark_all()
        self._arrival.unpark_all()

    def interrupt(self) -> None:
        """End a waiting read with :class:`ReadInterrupted`."""
        self._interrupted = True
        self._arrival.unpark_all()

    def disconnect(self) -> None:
        """Cut the reader off: its queue is discarded and read() fails from now on."""
        if self.disconnected:
            return
        self.disconnected = True
        log.warning(
            "stream %r: reader %d disconnected: %d bytes queued exceed its buffer of %d bytes",
            self.stream.name, self.id, self.pending, self.capacity,
        )
        self.end()
        self._discard_queue()

    def drop_oldest(self) -> int:
        """Discard the oldest queued data (one chunk, or what is left of it); return its size."""
        if self._current is not None:
            size = len(self._current) - self._offset
            self._current = None
        else:
            try:
                size = len(self._receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                return 0
        self._forget(size)
        return size

    async def wait_room(self, size: int) -> None:
        """Wait until a chunk of ``size`` bytes fits or the reader has gone away."""
        while not self.has_room(size) and not self.ended:
            await self._room.park()

    # -- the reading side -------------------------------------------------

    async def read(self, size: int, *, nonblocking: bool = False) -> bytes | memoryview:
        """Return up to ``size`` bytes as soon as any are queued; ``b""`` at EOF.

        Waits while nothing is queued, for as long as it takes. Queued small
        chunks are joined into one reply; a chunk larger than ``size`` is
        served over several reads without copying its tail.
        Raises :class:`trio.WouldBlock` when ``nonblocking`` and nothing is
        queued, :class:`ReadInterrupted` when :meth:`interrupt` ends the wait,
        and :class:`ReaderDisconnected` once the reader was cut off.
        """
        if self._current is None:
            try:
                try:
                    first = self._receive.receive_nowait()
                except trio.WouldBlock:
                    if nonblocking:
                        raise
                    first = await self._wait_for_chunk()
            except trio.EndOfChannel:
                self._check_connected()
                return b""
            if len(first) <= size:
                data = self._join_queued(first, size)
                self._forget(len(data))
                return data
            self._current = memoryview(first)
            self._offset = 0
        piece = self._take_current(size)
        self._forget(len(piece))
        return piece

    async def _wait_for_chunk(self) -> bytes:
        self._interrupted = False
        while True:
            await self._arrival.park()
            if self._interrupted:
                raise ReadInterrupted
            try:
                return self._receive.receive_nowait()
            except trio.WouldBlock:
                continue

    def _join_queued(self, first: bytes, size: int) -> bytes:
        """``first`` and as much more as is queued, up to ``size`` bytes in all."""
        pieces: list[bytes | memoryview] = [first]
        room = size - len(first)
        while room > 0:
            try:
                chunk = self._receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            if len(chunk) > room:
                self._current = memoryview(chunk)
                self._offset = 0
                pieces.append(self._take_current(room))
                break
            pieces.append(chunk)
            room -= len(chunk)
        return first if len(pieces) == 1 else b"".join(pieces)

    def _take_current(self, size: int) -> memoryview:
        """The next ``size`` bytes of the chunk being served, without copying."""
        start = self._offset
        piece = self._current[start:start + size]
        self._offset = start + len(piece)
        if self._offset == len(self._current):
            self._current = None
        return piece

    def _forget(self, size: int) -> None:
        """``size`` queued bytes are gone: read, dropped or discarded."""
        self.pending -= size
        self.budget.remove(size)
        if self._room:
            self._room.unpark_all()

    def _check_connected(self) -> None:
        if self.disconnected:
            raise ReaderDisconnected(
                f"reader {self.id} of stream {self.stream.name!r} was disconnected"
            )

    def _discard_queue(self) -> None:
        self._current = None
        while True:
            try:
                self._receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
        self._forget(self.pending)

    def close(self) -> None:
        """The handle was released: forget everything queued."""
        self.end()
        self._discard_queue()
        self._receive.close()
        self.budget.readers.discard(self)
