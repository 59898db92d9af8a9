"""The memory store, the default: one host's tree and streams, ordered where they are.

A :class:`~.tree.TreeStore` and its :class:`~.stream.StreamLog`, so that the
tree and its streams call a store the same way whether it is this one or
Redis (``stores/redis``). It lives in the core, not in ``stores/``: it is
the default of every :class:`~.tree.Tree` and :class:`~.stream.Stream`, and
the core imports no layer above it. It imports nothing of the core either.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    from .stream import SharedTotals, Stream
    from .tree import Event, Node, StreamFile, Tree

__all__ = ["MemoryLog", "MemoryStore"]


class MemoryLog:
    """A stream's chunks, ordered as they are written here: each is delivered at once.

    ``append``, ``writable`` and ``end`` are the stream's own
    :meth:`~Stream.accept`, :meth:`~Stream.room_for_writes` and
    :meth:`~Stream.close`, bound: a write costs the same as with no log in
    between (no coroutine of its own, no checkpoint), and rm ends the
    readers after what they have queued.
    """

    __slots__ = ("append", "writable", "end")

    #: Nobody else writes or reads it: the stream's own figures are its totals.
    shared = False

    def __init__(self, stream: Stream) -> None:
        self.append = stream.accept
        self.writable = stream.room_for_writes
        self.end = stream.close

    async def follow(self) -> None:
        """The ring already holds everything written: nothing to wait for."""

    def unfollow(self) -> None:
        pass

    def count(self, figure: str, delta: int) -> None:
        pass

    async def totals(self) -> SharedTotals | None:
        return None


class MemoryStore:
    """A tree's events, applied as they are committed: this host is the only one."""

    def __init__(self) -> None:
        self.tree: Tree | None = None

    def attach(self, tree: Tree) -> None:
        self.tree = tree

    async def commit(self, event: Event) -> Node | None:
        return self.tree.apply(event)

    def stream_log(self, node: StreamFile) -> MemoryLog:
        return MemoryLog(node.stream)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Nothing to load or follow: ready at once."""
        task_status.started()

    async def withdraw(self) -> None:
        """Nothing to take back from other hosts."""
