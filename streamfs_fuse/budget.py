"""A cap on the memory a whole mount holds for its readers."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .reader import Reader
    from .stream import Stream

__all__ = ["MemoryBudget", "physical_memory"]


def physical_memory() -> int:
    """The machine's memory, in bytes: no cap or buffer can usefully be larger."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


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
        self.readers: set[Reader] = set()
        #: Streams with block writes waiting for memory to be freed.
        self.cap_waiters: set[Stream] = set()

    def hold(self, footprint: int) -> None:
        self.used += footprint

    def release(self, footprint: int) -> None:
        self.used -= footprint
        if self.cap_waiters:
            for stream in self.cap_waiters:
                stream.cap_waiters.unpark_all()
            self.cap_waiters.clear()

    def over(self) -> bool:
        return self.limit is not None and self.used > self.limit

    def has_room(self, footprint: int) -> bool:
        return self.limit is None or self.used + footprint <= self.limit

    def shed(self) -> None:
        """Take data from the sheddable readers furthest behind until ``used`` fits."""
        spent: set[Reader] = set()
        while self.over():
            victim = max(
                (r for r in self.readers
                 if r.pending and r not in spent and r.stream.sheddable(r)),
                key=lambda reader: reader.pending, default=None,
            )
            if victim is None:
                return
            if not victim.stream.shed(victim):
                spent.add(victim)  # only a chunk it is part-way through is left
