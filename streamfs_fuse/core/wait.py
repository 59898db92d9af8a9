"""How the core waits: every blocked read or write parks through a Waiter."""

from __future__ import annotations

import trio

__all__ = ["Interrupted", "WaitGroup", "Waiter"]


class Interrupted(Exception):
    """A wait was ended by :meth:`Waiter.interrupt`; nothing was read or written."""


class WaitGroup:
    """Counts the parked operations of several waiters together (the handles of
    one process), so that whether any of them waits is one look, however many
    handles there are."""

    __slots__ = ("parked",)

    def __init__(self) -> None:
        self.parked = 0


class Waiter:
    """Where the operations of one open handle wait, so they can be interrupted together.

    An operation parks on the ParkingLot of what it waits for (a reader's queue,
    a reader's room, the writers' turn). Whoever changes that thing unparks the
    lot, and so does closing the stream; the woken operation checks its
    condition again and parks again if it still must wait.

    :meth:`interrupt` ends the waits parked at that moment with
    :class:`Interrupted`, and only those: a wait that parks afterwards, even
    before the interrupted ones have woken, is not affected.
    """

    __slots__ = ("_parked", "group")

    def __init__(self) -> None:
        # One entry per parked wait: its lot, and whether it was interrupted.
        self._parked: list[list] = []
        #: Also counts this waiter's parked operations, when set.
        self.group: WaitGroup | None = None

    @property
    def parked(self) -> int:
        """Operations of this handle waiting right now."""
        return len(self._parked)

    async def park(self, lot: trio.lowlevel.ParkingLot) -> None:
        """Wait until ``lot`` is unparked; raise :class:`Interrupted` if interrupted."""
        entry = [lot, False]
        self._parked.append(entry)
        group = self.group
        if group is not None:
            group.parked += 1
        try:
            await lot.park()
        finally:
            self._parked.remove(entry)
            if group is not None:
                group.parked -= 1
        if entry[1]:
            raise Interrupted

    def interrupt(self) -> None:
        for entry in self._parked:
            entry[1] = True
            entry[0].unpark_all()
