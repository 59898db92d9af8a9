"""How the core waits: every blocked read or write parks through a Waiter."""

from __future__ import annotations

import trio

__all__ = ["Interrupted", "Waiter"]


class Interrupted(Exception):
    """A wait was ended by :meth:`Waiter.interrupt`; nothing was read or written."""


class Waiter:
    """Where the operations of one open handle wait, so they can be interrupted together.

    An operation parks on the ParkingLot of what it waits for (a reader's queue,
    a reader's room, the memory budget, the writers' turn). Whoever changes that
    thing unparks the lot, and so does closing the stream; the woken operation
    checks its condition again and parks again if it still must wait.

    :meth:`interrupt` ends every wait parked at that moment with
    :class:`Interrupted`. It does nothing while nothing is parked, so it can
    never end a later wait.
    """

    __slots__ = ("parked", "_lots", "_interrupted")

    def __init__(self) -> None:
        #: Operations of this handle waiting right now.
        self.parked = 0
        self._lots: list[trio.lowlevel.ParkingLot] = []
        self._interrupted = False

    async def park(self, lot: trio.lowlevel.ParkingLot) -> None:
        """Wait until ``lot`` is unparked; raise :class:`Interrupted` if interrupted."""
        self.parked += 1
        self._lots.append(lot)
        try:
            await lot.park()
        finally:
            self.parked -= 1
            self._lots.remove(lot)
            interrupted = self._interrupted
            if not self.parked:
                self._interrupted = False
        if interrupted:
            raise Interrupted

    def interrupt(self) -> None:
        if not self.parked:
            return
        self._interrupted = True
        for lot in self._lots:
            lot.unpark_all()
