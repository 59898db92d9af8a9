"""The followers: one blocking XREAD per shard of the logs this host follows, which
delivers their chunks to the local streams; and the cursors that tell writers
under ``block`` how far this host has delivered each."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import trio

from ...core.stream import StreamClosed
from ...core.wait import Waiter
from .connection import UNREACHABLE, Connection, Script, describe
from .ids import entry_key, offset_of
from .log import REMOVED_EXPIRY

if TYPE_CHECKING:
    from .log import RedisLog

__all__ = ["CURSOR_RENEW", "Followers", "Shard"]

log = logging.getLogger(__name__)

#: Entries per XREAD. Measured with 1 MiB entries: coredis reads 256 MB/s
#: 16 at a time, 183 MB/s 128 at a time (large replies cost it more to parse).
READ_COUNT = 16
#: A following host sends its cursor at most this often while it moves (by a
#: TRIM_FRACTION of the cap)...
CURSOR_INTERVAL = 0.01
#: ...and renews it this often while it does not.
CURSOR_RENEW = 1.0

# Ring host's doorbell ARGV[1]: wakes its blocking read; expires if the host is killed.
RING = """
redis.call('XADD', KEYS[1], 'MAXLEN', 1, '*', 'w', '1')
redis.call('EXPIRE', KEYS[1], ARGV[1])
"""

# Host ARGV[1] has delivered the stream up to offset ARGV[2]: renew its
# cursor, if the log is there and not ended (a live log has no expiry).
CURSOR = """
if redis.call('TTL', KEYS[1]) ~= -1 then return 0 end
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2] .. ':' .. ms)
return 1
"""

StartSoon = Callable[..., None]


class Followers:
    """The logs this host follows, by shard, and their cursors.

    ``start_soon`` runs a task for as long as the store runs; ``check_epoch``
    is awaited after an outage, before a shard reads on.
    """

    def __init__(self, connection: Connection, prefix: str, host: str, start_soon: StartSoon,
                 check_epoch: Callable[[], Awaitable[None]]) -> None:
        self.connection = connection
        self.prefix = prefix
        self.host = host
        self.start_soon = start_soon
        self.check_epoch = check_epoch
        self.shards: dict[int, Shard] = {}
        #: Set once the host is leaving: no more doorbells.
        self.leaving = False
        # Followed logs whose cursor is due to be sent (or taken out).
        self._cursors: dict[RedisLog, None] = {}
        self._cursors_due = trio.Event()
        self.ring_bell = Script(connection.client, RING)
        self._cursor = Script(connection.client, CURSOR)

    def blocking_reads(self) -> int:
        """Connections held by blocking reads: one per shard with logs, one for the tree."""
        return 1 + sum(1 for shard in self.shards.values() if shard.logs)

    def follow(self, log_: RedisLog) -> None:
        """Read ``log_`` on from :attr:`RedisLog.last`, delivering to its stream."""
        shard = self.shards.get(log_.shard)
        if shard is None:
            shard = self.shards[log_.shard] = Shard(self, log_.shard)
            self.start_soon(self.connection.follow, shard.step, shard.recover)
        shard.add(log_)

    def unfollow(self, log_: RedisLog) -> None:
        shard = self.shards.get(log_.shard)
        if shard is not None:
            shard.remove(log_)

    def forget_all(self) -> None:
        """Redis lost what this host followed: read nothing more of it."""
        for shard in self.shards.values():
            shard.logs.clear()
            shard.changed()

    async def resync_idle(self) -> None:
        """See :meth:`Shard.resync`: for the streams that got nothing since the last look."""
        for shard in list(self.shards.values()):
            await shard.resync(idle_only=True)

    # -- cursors ---------------------------------------------------------------

    def cursor_due(self, log_: RedisLog) -> None:
        """``log_``'s cursor moved, or this host stopped following it."""
        self._cursors[log_] = None
        self._cursors_due.set()

    async def send_cursors(self) -> None:
        """Send the cursors that moved, at most every :data:`CURSOR_INTERVAL`, and renew
        every cursor each :data:`CURSOR_RENEW`, until cancelled."""
        renew_at = trio.current_time() + CURSOR_RENEW
        while True:
            with trio.move_on_at(renew_at):
                await self._cursors_due.wait()
            self._cursors_due = trio.Event()
            due, self._cursors = self._cursors, {}
            if trio.current_time() >= renew_at:
                renew_at = trio.current_time() + CURSOR_RENEW
                for shard in self.shards.values():
                    due.update(dict.fromkeys(
                        log_ for log_ in shard.logs.values() if log_.cursor is not None))
            async with trio.open_nursery() as nursery:
                for log_ in due:
                    nursery.start_soon(self.send_cursor, log_)
            await trio.sleep(CURSOR_INTERVAL)

    async def send_cursor(self, log_: RedisLog) -> None:
        """Send ``log_``'s cursor now, or take it out if this host no longer follows."""
        call, client = self.connection.call, self.connection.client
        try:
            if log_.cursor is not None:
                log_.published = True
                await call(self._cursor, keys=[log_.key, log_.cursors],
                           args=[self.host, log_.cursor])
            elif log_.published:
                log_.published = False
                await call(client.hdel, log_.cursors, [self.host])
        except OSError:
            pass  # logged; renewed within CURSOR_RENEW, or it lapses

    def leave(self, nursery: trio.Nursery) -> None:
        """Leaving: remove this host's doorbells and cursors, in ``nursery``."""
        followed = dict(self._cursors)
        for shard in self.shards.values():
            nursery.start_soon(self._remove_bell, shard.bell)
            followed.update(dict.fromkeys(shard.logs.values()))
        for log_ in followed:
            if log_.published:
                nursery.start_soon(self._remove_cursor, log_)

    async def _remove_bell(self, bell: str) -> None:
        try:
            await self.connection.client.delete([bell])
        except UNREACHABLE as e:
            log.warning("could not remove %s (it expires): %s", bell, describe(e))

    async def _remove_cursor(self, log_: RedisLog) -> None:
        try:
            await self.connection.client.hdel(log_.cursors, [self.host])
        except UNREACHABLE as e:
            log.warning("could not take this host's cursor out of %s (it lapses): %s",
                        log_.cursors, describe(e))


class Shard:
    """The streams of one hash slot that this host follows, read by one blocking XREAD.

    The read also waits on the shard's doorbell, a stream of this host's own,
    which is rung when the set of followed streams changes: a blocking read is
    never cancelled (coredis's cluster client loses the connection of each).
    """

    def __init__(self, followers: Followers, number: int) -> None:
        self.followers = followers
        self.client = followers.connection.client
        self.number = number
        self.logs: dict[str, RedisLog] = {}
        self.bell = f"{{{followers.prefix}:{number}}}:bell:{followers.host}"
        self._bell_last = "0-0"
        self._ringing = False

    def add(self, log_: RedisLog) -> None:
        self.logs[log_.key] = log_
        self.changed()

    def remove(self, log_: RedisLog) -> None:
        if self.logs.pop(log_.key, None) is not None:
            self.changed()

    def changed(self) -> None:
        """Read again with the new set of streams."""
        if not self._ringing and not self.followers.leaving:
            self._ringing = True
            self.followers.start_soon(self._ring)

    async def _ring(self) -> None:
        try:
            await self.followers.connection.call(self.followers.ring_bell, keys=[self.bell],
                                                 args=[REMOVED_EXPIRY])
        except OSError:
            pass  # logged; the read is woken by the next entry of any stream
        finally:
            self._ringing = False

    async def recover(self) -> None:
        """After an outage: look whether Redis lost everything, then what it lost here."""
        await self.followers.check_epoch()
        await self.resync()

    async def resync(self, idle_only: bool = False) -> None:
        """After an outage: go on from the log's end where Redis has lost what we read.

        A failover loses the entries the old master had not yet passed on to its
        replica (replication is asynchronous). Reading on after them would skip
        the new master's entries until their offsets passed ours, so such a
        stream looks idle: ``idle_only`` looks at those that got nothing since
        the last look.
        """
        for log_ in list(self.logs.values()):
            if idle_only and log_.last != log_.last_seen:
                log_.last_seen = log_.last
                continue
            last = log_.last
            newest = await self.client.xrevrange(log_.key, "+", "-", count=1)
            end = newest[0].identifier.decode() if newest else "0-0"
            # Only if nothing came meanwhile: an end read before an entry the
            # follower has since delivered is not a loss (taking it for one
            # delivered that entry twice, after a CLIENT PAUSE).
            if last is not None and log_.last == last and entry_key(end) < entry_key(last):
                log.warning("stream %r: Redis lost the chunks after offset %d (a failover?);"
                            " going on from there", log_.stream.name, offset_of(end))
                log_.last = end
                log_.delivered(offset_of(end))
                self.changed()

    async def step(self) -> None:
        """One blocking read of every followed stream that can take more, and its delivery."""
        keys = {key: log_.last for key, log_ in self.logs.items() if not log_.paused}
        keys[self.bell] = self._bell_last
        self._ringing = False
        reply = await self.client.xread(keys, count=READ_COUNT, block=0)
        for key, entries in (reply or {}).items():
            key = key.decode()
            if key == self.bell:
                self._bell_last = entries[-1].identifier.decode()
                continue
            log_ = self.logs.get(key)
            if log_ is not None:
                self._deliver(log_, entries)

    def _deliver(self, log_: RedisLog, entries) -> None:
        stream = log_.stream
        for i, entry in enumerate(entries):
            entry_id = entry.identifier.decode()
            data = entry.field_values.get(b"d")
            if data is not None and not stream.accepts_now(len(data)):
                # A block reader is full: wait for it apart, and read this
                # stream no further meanwhile; other streams go on.
                log_.paused = True
                self.followers.start_soon(self._deliver_later, log_, entries[i:])
                return
            log_.last = entry_id
            log_.deliver_now(entry_id, entry.field_values)

    async def _deliver_later(self, log_: RedisLog, entries) -> None:
        waiter = Waiter()
        try:
            for entry in entries:
                if log_.last is None:
                    return  # no longer followed
                entry_id = entry.identifier.decode()
                data = entry.field_values.get(b"d")
                if data is None:
                    log_.deliver_now(entry_id, entry.field_values)
                else:
                    await log_.stream.accept(data, waiter, offset_of(entry_id))
                    log_.delivered(offset_of(entry_id) + len(data))
                log_.last = entry_id
        except StreamClosed:
            return
        finally:
            log_.paused = False
            self.changed()
