"""The Redis store: the shared tree, the streams' logs and their followers, run
together; and the figures (readers, writers, bytes, chunks) this host adds to
every stream's totals."""

from __future__ import annotations

import itertools
import logging
import secrets
from collections.abc import Awaitable, Callable

import trio

from ...core.tree import Event, Node, StreamFile, Tree
from ...settings import BackendSettings
from .connection import UNREACHABLE, Connection, Script, describe
from .followers import CURSOR_RENEW, Followers
from .ids import shard_of
from .log import LogScripts, RedisLog
from .tree import SharedTree

__all__ = ["RedisStore"]

log = logging.getLogger(__name__)

#: Counts (bytes, chunks, readers, writers) go to Redis at most this often.
COUNTS_INTERVAL = 0.05
#: Figures that count what is open now, which a host takes back when it leaves.
LIVE_FIGURES = ("readers", "writers")
#: How long a leaving host tries to take its figures back.
WITHDRAW_TIMEOUT = 2.0
#: How often a host looks whether Redis restarted empty.
EPOCH_CHECK_INTERVAL = 1.0

# Add ARGV[2] to figure ARGV[1] of a stream's totals, if the stream has them.
COUNT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
return redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[2])
"""


class RedisStore:
    """The :class:`~streamfs_fuse.core.tree.TreeStore` of a tree shared through Redis.

    What its parts share goes through public members: :attr:`connection`,
    :meth:`token`, :meth:`start_soon`, :attr:`followers`, :meth:`count`.
    """

    def __init__(self, settings: BackendSettings) -> None:
        self.settings = settings
        self.connection = Connection(settings)
        client = self.connection.client
        #: How long calls to Redis took (not the blocking reads, which wait by design).
        self.round_trips = self.connection.round_trips
        self.prefix = settings.namespace
        self.host = secrets.token_hex(6)
        self._tokens = itertools.count()
        self.events = SharedTree(self.connection, self.prefix, self.token, self._lost)
        self.followers = Followers(self.connection, self.prefix, self.host, self.start_soon,
                                   self.events.check_epoch)
        self.connection.blocking_reads = self.followers.blocking_reads
        self.log_scripts = LogScripts(client)
        self._count = Script(client, COUNT)
        # Counts (readers, writers, bytes, chunks) not yet added to Redis, by (meta key, figure).
        self._counts: dict[tuple[str, str], int] = {}
        self._counts_due = trio.Event()
        # What this host has added to the live figures (readers, writers), by key.
        self._added: dict[tuple[str, str], int] = {}
        self._nursery: trio.Nursery | None = None
        # Removed streams whose logs are being ended, and when none are.
        self._ends_pending = 0
        self._ends_done = trio.Event()
        self._ends_done.set()

    # -- the process around it -------------------------------------------------

    def attach(self, tree: Tree) -> None:
        self.events.tree = tree

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Serve the tree until cancelled; started once the tree is loaded."""
        async with self.connection.client, trio.open_nursery() as nursery:
            self._nursery = nursery
            await self.events.check_epoch()
            await self.events.load()
            nursery.start_soon(self.events.follow)
            nursery.start_soon(self._send_counts)
            nursery.start_soon(self.followers.send_cursors)
            nursery.start_soon(self._watch_epoch)
            task_status.started()

    def start_soon(self, task: Callable[..., Awaitable[object]], *args: object) -> None:
        """Run ``task`` for as long as the store runs."""
        self._nursery.start_soon(task, *args)

    def token(self) -> str:
        """A name for one write of this host, unique in the namespace."""
        return f"{self.host}:{next(self._tokens)}"

    @property
    def host_timeout(self) -> float:
        """How long a host's cursor lasts unrenewed: a Redis stall that writes
        outlast (twice ``timeout``) must not take live hosts out."""
        return 2 * self.settings.timeout + CURSOR_RENEW

    @property
    def replaying(self) -> bool:
        """Whether the tree's past events are being applied, as this host starts."""
        return self.events.replaying

    async def namespace_kept(self) -> bool:
        """Whether Redis still has what this host knew; if not, every stream has ended."""
        return await self.events.kept()

    def _lost(self) -> None:
        self.followers.forget_all()

    async def _watch_epoch(self) -> None:
        """Look whether Redis lost data, even where no follower saw a connection drop.

        A cluster client reconnects by itself, to a failed-over master too.
        """
        while True:
            await trio.sleep(EPOCH_CHECK_INTERVAL)
            try:
                await self.events.check_epoch()
                await self.events.check_history()
                await self.followers.resync_idle()
            except UNREACHABLE:
                pass

    # -- the tree and its streams ----------------------------------------------

    async def commit(self, event: Event) -> Node | None:
        result = await self.events.commit(event)
        if event["op"] == "create" and isinstance(result, StreamFile):
            await result.stream.log.make_keys()
        return result

    def stream_log(self, node: StreamFile) -> RedisLog:
        shard = shard_of(node.inode)
        key = f"{{{self.prefix}:{shard}}}:{node.inode}"
        return RedisLog(self, node.stream, key, shard)

    def end_soon(self, end: Callable[[], Awaitable[None]]) -> None:
        """Run ``end``, which ends a removed stream's log; a host that leaves waits
        for these first (their keys must expire)."""
        if not self._ends_pending:
            self._ends_done = trio.Event()
        self._ends_pending += 1
        self._nursery.start_soon(self._ending, end)

    async def _ending(self, end: Callable[[], Awaitable[None]]) -> None:
        try:
            await end()
        finally:
            self._ends_pending -= 1
            if not self._ends_pending:
                self._ends_done.set()

    # -- this host's figures ---------------------------------------------------

    def count(self, meta: str, figure: str, delta: int) -> None:
        """Add ``delta`` to ``figure`` of the totals at ``meta``, with the next batch."""
        key = (meta, figure)
        self._counts[key] = self._counts.get(key, 0) + delta
        self._counts_due.set()

    async def _send_counts(self) -> None:
        """Add this host's counts to the totals, a batch at a time.

        The batch's commands are sent together: coredis pipelines concurrent
        requests, so a batch costs one round trip.
        """
        while True:
            await self._counts_due.wait()
            self._counts_due = trio.Event()
            counts, self._counts = self._counts, {}
            async with trio.open_nursery() as nursery:
                for (meta, figure), delta in counts.items():
                    if delta:
                        nursery.start_soon(self._add, meta, figure, delta)
            # Counts that come meanwhile wait for the next batch, so that a
            # writer of small chunks does not add a command per write.
            await trio.sleep(COUNTS_INTERVAL)

    async def _add(self, meta: str, figure: str, delta: int) -> None:
        try:
            added = await self.connection.call(self._count, keys=[meta], args=[figure, delta])
        except OSError:
            return  # logged; the figure is off by what this host had
        if added is not None and figure in LIVE_FIGURES:
            key = (meta, figure)
            self._added[key] = self._added.get(key, 0) + delta

    async def withdraw(self) -> None:
        """Leaving: take this host's readers and writers out of the totals.

        Called before the store is cancelled, while the client still works;
        the byte and chunk counts not sent yet go too, and so do this host's
        doorbells and cursors.
        """
        self.followers.leaving = True  # no more doorbells: they go now
        pending, self._counts = self._counts, {}
        final = {key: delta for key, delta in pending.items() if key[1] not in LIVE_FIGURES}
        for key, added in self._added.items():
            final[key] = -added
        self._added = {}
        with trio.move_on_after(WITHDRAW_TIMEOUT):
            await self._ends_done.wait()
            async with trio.open_nursery() as nursery:
                for (meta, figure), delta in final.items():
                    if delta:
                        nursery.start_soon(self._take_back, meta, figure, delta)
                self.followers.leave(nursery)

    async def _take_back(self, meta: str, figure: str, delta: int) -> None:
        try:
            await self._count(keys=[meta], args=[figure, delta])
        except UNREACHABLE as e:
            log.warning("could not take this host's %s out of %s: %s", figure, meta,
                        describe(e))
