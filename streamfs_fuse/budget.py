"""A cap on the data queued for readers across a whole mount."""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from .reader import Reader

__all__ = ["MemoryBudget"]


class MemoryBudget:
    """Counts the bytes queued for all readers of a mount against ``limit``.

    A chunk queued for ten readers counts ten times, so the count is an upper
    bound on the memory the queues hold and the cap is conservative. When the
    count goes over the cap, the readers furthest behind lose their oldest
    queued data first (see :meth:`Stream.shed`). ``limit=None`` means no cap.
    """

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        self.used = 0
        self.readers: set[Reader] = set()
        # Writers under the block policy waiting for the count to fall.
        self._room = trio.lowlevel.ParkingLot()

    def add(self, size: int) -> None:
        self.used += size

    def remove(self, size: int) -> None:
        self.used -= size
        if self._room:
            self._room.unpark_all()

    def over(self) -> bool:
        return self.limit is not None and self.used > self.limit

    def has_room(self, size: int) -> bool:
        return self.limit is None or self.used == 0 or self.used + size <= self.limit

    async def wait_room(self, size: int) -> None:
        while not self.has_room(size):
            await self._room.park()

    def shed(self) -> None:
        """Take data from the readers furthest behind until the count fits the cap."""
        while self.over():
            victim = max(self.readers, key=lambda reader: reader.pending)
            if not victim.pending:
                return
            victim.stream.shed(victim)
