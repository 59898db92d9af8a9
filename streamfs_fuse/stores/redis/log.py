"""One stream's log in Redis, ``{P:S}:N``: appends, their trimming, the wait for
slow hosts under ``block``, and loading its history to follow it."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import coredis
import coredis.exceptions
import trio

from ...core.stream import SharedTotals, Stream, StreamClosed
from ...core.wait import Waiter
from ...settings import SlowReaderPolicy
from .connection import UNREACHABLE, Script
from .ids import as_text, entry_key, offset_of, refused

if TYPE_CHECKING:
    from .store import RedisStore

__all__ = ["LogScripts", "REMOVED_EXPIRY", "RedisLog"]

log = logging.getLogger(__name__)

#: Entries per XRANGE page when a host loads a stream's history.
HISTORY_PAGE = 256
#: How long a removed stream's keys stay, for hosts still draining them.
REMOVED_EXPIRY = 3600
#: How long stat waits for a stream's totals before it shows the last it had.
TOTALS_TIMEOUT = 0.5
#: A writer waiting for a slow host looks at the cursors again after this
#: long, doubling while they do not move, up to CURSOR_POLL_MAX.
CURSOR_POLL = 0.002
CURSOR_POLL_MAX = 0.1
#: Under block a writer trims (and looks at the cursors) each time it has
#: appended this fraction of the cap. With a script per append, 1 KiB every
#: 1 ms from A to B had a p99 of 6.3 ms at best (bare XADD -> XREAD 1.2 ms);
#: with this, 1.7-3.3 ms (XADD -> XREAD 1.2-2.2 ms), on a busy 2-vCPU machine.
TRIM_FRACTION = 16

# End a removed stream after what it holds: its end is an entry that every
# later append's ID is smaller than, so they fail.
END = """
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
local total = 0
if newest then
  local offset = tonumber(string.match(newest[1], '^(%d+)'))
  if newest[2][1] ~= 'd' then return 0 end
  total = offset + string.len(newest[2][2])
end
redis.call('XADD', KEYS[1], string.format('%d-18446744073709551615', total), 'end', '1')
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[3], ARGV[1])
return 1
"""

# Make a stream's keys, an empty log and its totals, unless the log is there.
CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('XGROUP', 'CREATE', KEYS[1], 'new', '$', 'MKSTREAM')
redis.call('XGROUP', 'DESTROY', KEYS[1], 'new')
redis.call('HSETNX', KEYS[2], 'bytes', 0)
return 1
"""

# An append at entry ARGV[1], named ARGV[2], whose answer never came: 1 if it
# is there; else 0, and the ID is taken (an entry added and deleted at once
# moves the log's last ID to it), so Redis refuses the append if it comes later.
SETTLE_APPEND = """
local found = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])[1]
if found then
  for i = 1, #found[2], 2 do
    if found[2][i] == 'w' then return found[2][i + 1] == ARGV[2] and 1 or 0 end
  end
  return 0
end
local taken = redis.pcall('XADD', KEYS[1], 'NOMKSTREAM', ARGV[1], 'f', '1')
if type(taken) == 'string' then redis.call('XDEL', KEYS[1], taken) end
return 0
"""

# Trim the log before offset ARGV[1], but not past the slowest cursor renewed
# in the last ARGV[2] ms (those older are taken out). Returns the offset of
# the oldest entry that host has still to read (-1 if none: every host has
# read everything), then the hosts taken out.
TRIM = """
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
local slowest = -1
local gone = {}
local cursors = redis.call('HGETALL', KEYS[2])
for i = 1, #cursors, 2 do
  local offset, renewed = string.match(cursors[i + 1], '^(%d+):(%d+)$')
  offset, renewed = tonumber(offset), tonumber(renewed)
  if ms - renewed > tonumber(ARGV[2]) then
    redis.call('HDEL', KEYS[2], cursors[i])
    gone[#gone + 1] = cursors[i]
  elseif slowest < 0 or offset < slowest then
    slowest = offset
  end
end
local oldest = tonumber(ARGV[1])
if slowest >= 0 and slowest < oldest then oldest = slowest end
redis.call('XTRIM', KEYS[1], 'MINID', string.format('%d-0', oldest))
if slowest >= 0 then
  local from = string.format('%d-0', slowest)
  local unread = redis.call('XRANGE', KEYS[1], from, '+', 'COUNT', 1)[1]
  slowest = -1
  if unread and unread[2][1] == 'd' then
    slowest = tonumber(string.match(unread[1], '^(%d+)'))
  end
end
return {slowest, unpack(gone)}
"""

# bytes, chunks, readers, writers, the ring's first offset, and its entries.
TOTALS = """
local m = redis.call('HMGET', KEYS[2], 'bytes', 'chunks', 'readers', 'writers')
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
local oldest = m[1] or '0'
if first[1] then oldest = string.match(first[1][1], '^(%d+)') end
return {m[1] or '0', m[2] or '0', m[3] or '0', m[4] or '0', oldest,
        redis.call('XLEN', KEYS[1])}
"""


class LogScripts:
    """The scripts of the streams' logs, made once per client."""

    def __init__(self, client: coredis.Redis | coredis.RedisCluster) -> None:
        self.end = Script(client, END)
        self.create = Script(client, CREATE)
        self.settle_append = Script(client, SETTLE_APPEND)
        self.trim = Script(client, TRIM)
        self.totals = Script(client, TOTALS)


class RedisLog:
    """One stream's log in Redis: the :class:`~streamfs_fuse.core.stream.StreamLog` of
    ``stream``, shared by every host."""

    shared = True

    def __init__(self, store: RedisStore, stream: Stream, key: str, shard: int) -> None:
        self.store = store
        self.connection = store.connection
        self.scripts = store.log_scripts
        self.stream = stream
        self.key = key
        self.meta = key + ":meta"
        self.cursors = key + ":cursors"
        self.shard = shard
        #: The last entry delivered here, while following.
        self.last: str | None = None
        #: :attr:`last` when :meth:`.followers.Shard.resync` last looked.
        self.last_seen: str | None = None
        #: Where this host's next append goes, as far as it knows: the offset,
        #: and the sequence number of its entry ID.
        self.end_offset: int | None = None
        self.sequence = 1
        self._loading: trio.Event | None = None
        # Entries that came while local readers had no room (block policy).
        self.paused = False
        #: Under block, while following: the offset this host has delivered up to.
        self.cursor: int | None = None
        #: Whether this host's cursor may be in Redis.
        self.published = False
        self._cursor_sent = 0
        #: Under block: the slowest host's cursor as last seen (None: no host's),
        #: and where the ring begins after this host's last append.
        self.slowest: int | None = None
        self._ring_start = 0
        self._untrimmed = 0
        self._trimming = False
        self._trim_again = False

    @property
    def blocking(self) -> bool:
        return self.stream.policy is SlowReaderPolicy.BLOCK

    def writable(self) -> bool:
        """Always: a write waits for no reader here (under block, for hosts in Redis)."""
        return True

    async def append(self, data: bytes, waiter: Waiter) -> None:
        """One XADD whose ID is at the offset this host expects the log to end at.

        Redis refuses an ID not above the log's newest, so the XADD fails when
        another host appended first or the stream was ended: then the log's
        end is read and it is tried again. No script: passing a 1 MiB
        argument through Lua costs Redis 1.5 ms more than XADD alone (measured).

        Under block the XADD does not trim: a script does, once a sixteenth
        of the cap has been appended since the last, no further than the
        slowest host's cursor; and the write first waits while that host is
        more than the cap behind (see :meth:`_wait_for_hosts`).
        """
        store = self.store
        blocking = self.blocking
        if blocking:
            await self._wait_for_hosts(len(data), waiter)
        connection = self.connection
        token = store.token()
        fields = {"d": data, "w": token}
        entry: str | None = None  # the ID of the attempt on its way

        async def attempt() -> bool:
            nonlocal entry
            entry = None
            if self.end_offset is None and not await self._find_end():
                await self._restore_keys()
                return False
            offset = self.end_offset
            entry = f"{offset}-{self.sequence}"
            # Trim to the ring, but never the chunk just written: the log's
            # newest entry is how a host finds where the log ends.
            oldest = min(offset, offset + len(data) - self.stream.settings.ring_buffer_size)
            trim = {} if blocking else {
                "trim_strategy": coredis.PureToken.MINID, "threshold": f"{max(oldest, 0)}-0",
                "trim_operator": coredis.PureToken.EQUAL}
            self._ring_start = max(oldest, 0)
            try:
                added = await connection.client.xadd(
                    self.key, fields, identifier=entry, nomkstream=True, **trim)
            except coredis.exceptions.ResponseError as e:
                if not refused(e):
                    raise
                # Refused: another host got there first, or this very append
                # did, sent again after its answer was lost.
                if await self.scripts.settle_append(keys=[self.key], args=[entry, token]):
                    return True
                self.end_offset = None
                return False
            if added is None:
                await self._restore_keys()
                return False
            return True

        async def settle() -> bool:
            if entry is None:
                return False
            if await self.scripts.settle_append(keys=[self.key], args=[entry, token]):
                return True
            self.end_offset = None
            return False

        await connection.write(attempt, settle)
        self.end_offset = offset_of(entry) + len(data)
        self.sequence = 1
        store.count(self.meta, "bytes", len(data))
        store.count(self.meta, "chunks", 1)
        if blocking:
            self._untrimmed += len(data)
            if self._untrimmed >= self._cap() // TRIM_FRACTION:
                self._start_trim()

    def _cap(self) -> int:
        """How far behind the log's end a host may fall under block before writes wait."""
        settings = self.stream.settings
        return max(settings.ring_buffer_size, settings.channel_buffer_size)

    async def _wait_for_hosts(self, size: int, waiter: Waiter) -> None:
        """Under block: wait while the slowest host's cursor is more than the cap behind.

        As a local block reader does, a host that has read everything may
        take the next chunk, however large. The wait parks through
        ``waiter`` (so it can be interrupted) and looks at the cursors
        again every :data:`CURSOR_POLL`, doubling while they do not move.
        """
        stream = self.stream
        delay = CURSOR_POLL
        lot = trio.lowlevel.ParkingLot()  # nothing unparks it but an interrupt
        while True:
            end, slowest = self.end_offset, self.slowest
            if end is None or slowest is None or slowest >= end or \
                    end + size - slowest <= self._cap() or not self.blocking:
                return
            with trio.move_on_after(delay):
                await stream.park_writer(waiter, lot)
            if stream.removed or stream.closed:
                raise StreamClosed(stream.name)
            await self._trim_now()
            delay = CURSOR_POLL if self.slowest != slowest else min(2 * delay, CURSOR_POLL_MAX)

    def _start_trim(self) -> None:
        """Trim in the background, one script at a time, again if appends came meanwhile."""
        if self._trimming:
            self._trim_again = True
            return
        self._trimming = True
        self.store.start_soon(self._trim_in_background)

    async def _trim_in_background(self) -> None:
        try:
            while True:
                self._trim_again = False
                self._untrimmed = 0
                await self._trim_now()
                if not self._trim_again:
                    return
        except OSError:
            pass  # logged; the next append trims
        finally:
            self._trimming = False

    async def _trim_now(self) -> None:
        """Trim to the ring, but no further than the slowest live cursor; see which it is."""
        store = self.store
        reply = await self.connection.call(
            self.scripts.trim, keys=[self.key, self.cursors],
            args=[self._ring_start, int(store.host_timeout * 1000)])
        slowest, *gone = reply
        self.slowest = None if int(slowest) < 0 else int(slowest)
        for host in gone:
            log.warning("stream %r: host %s has not renewed its cursor for %g s: writes no"
                        " longer wait for it", self.stream.name, as_text(host),
                        store.host_timeout)

    async def _find_end(self) -> bool:
        """Where the next append goes; False if the log is missing, StreamClosed if it ended."""
        try:
            info = await self.connection.client.xinfo_stream(self.key)
        except coredis.exceptions.ResponseError as e:
            if "no such key" not in str(e):
                raise
            return False
        end = 0
        newest = info["last-entry"]
        if newest is not None:
            data = newest.field_values.get(b"d")
            if data is None:
                raise StreamClosed(self.stream.name)
            end = offset_of(as_text(newest.identifier)) + len(data)
        # IDs fenced at the end (or past it, where Redis lost chunks) are taken.
        fenced, sequence = entry_key(as_text(info["last-generated-id"]))
        self.end_offset = max(end, fenced)
        self.sequence = sequence + 1 if fenced == self.end_offset else 1
        return True

    async def _restore_keys(self) -> None:
        """The log is missing: make it again only if Redis still has the namespace.

        Otherwise Redis restarted empty: every stream ends, this one too.
        """
        if not await self.store.namespace_kept() or self.stream.removed:
            raise StreamClosed(self.stream.name)
        if await self.scripts.create(keys=[self.key, self.meta]):
            log.warning("stream %r: its keys were missing in Redis; made again",
                        self.stream.name)

    async def follow(self) -> None:
        if self.last is not None:
            return
        if self._loading is not None:
            await self._loading.wait()
            return
        self._loading = trio.Event()
        try:
            if self.blocking:
                # Hold the log from trimming what this host is about to read.
                self.cursor = self._cursor_sent = 0
                await self.store.followers.send_cursor(self)
            await self._load_history()
        finally:
            self._loading.set()
            self._loading = None
        self.store.followers.follow(self)

    async def _load_history(self) -> None:
        stream = self.stream
        start = "-"
        last = "0-0"
        first = True
        while True:
            entries = await self.connection.call(self.connection.client.xrange, self.key, start,
                                                 "+", count=HISTORY_PAGE)
            for entry in entries:
                last = entry.identifier.decode()
                if first:
                    stream.follow_from(offset_of(last))
                    first = False
                self.deliver_now(last, entry.field_values)
            if len(entries) < HISTORY_PAGE:
                break
            start = "(" + last
        if first:
            totals = await self.connection.call(self.connection.client.hget, self.meta, "bytes")
            stream.follow_from(int(totals or 0))
        self.last = last

    def deliver_now(self, entry_id: str, fields: dict) -> None:
        data = fields.get(b"d")
        if data is not None:
            self.stream.deliver(data, offset_of(entry_id))
            self.delivered(offset_of(entry_id) + len(data))
        elif b"end" in fields:
            self.stream.close()  # readers drain, then get EOF

    def delivered(self, offset: int) -> None:
        """This host has delivered the log up to ``offset``: under block, others learn it
        once it has moved a :data:`TRIM_FRACTION` of the cap (and at each renewal)."""
        if self.blocking:
            self.cursor = offset
            if offset - self._cursor_sent >= self._cap() // TRIM_FRACTION:
                self._cursor_sent = offset
                self.store.followers.cursor_due(self)
        elif self.cursor is not None:
            self.cursor = None
            self.store.followers.cursor_due(self)

    def unfollow(self) -> None:
        if self.last is None:
            return
        self.last = None
        if self.cursor is not None:
            self.cursor = None
            self.store.followers.cursor_due(self)
        self.store.followers.unfollow(self)
        self.stream.unfollowed()

    def end(self) -> None:
        # A removal replayed as this host starts was ended by the host that made it.
        if not self.store.replaying:
            self.store.end_soon(self._end)

    async def _end(self) -> None:
        try:
            await self.connection.call(self.scripts.end, keys=[self.key, self.meta, self.cursors],
                                       args=[REMOVED_EXPIRY])
        except OSError:
            pass  # logged; another host that applies the removal ends it too

    async def make_keys(self) -> None:
        """Make a new stream's keys; if Redis does not answer, its first write will."""
        try:
            await self.connection.call(self.scripts.create, keys=[self.key, self.meta])
        except OSError:
            log.warning("stream %r: its keys in Redis are left to its first write",
                        self.stream.name)

    def count(self, figure: str, delta: int) -> None:
        self.store.count(self.meta, figure, delta)

    async def totals(self) -> SharedTotals | None:
        reply = None
        with trio.move_on_after(TOTALS_TIMEOUT):
            try:
                reply = await self.scripts.totals(keys=[self.key, self.meta])
            except UNREACHABLE:
                pass
        if reply is None:
            return None  # stat and ls must not wait out an outage
        written, chunks, readers, writers, oldest, entries = (int(v) for v in reply)
        # The totals are added up a batch at a time: never show less than
        # this host has written or read.
        written = max(written, self.end_offset or 0, self.stream.bytes_written)
        return SharedTotals(written, chunks, readers, writers, max(0, written - oldest),
                            entries - self.stream.removed)
