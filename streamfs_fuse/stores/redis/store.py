"""Streams and a tree shared by the mounts of several hosts, ordered by Redis.

Every mount that names the same Redis and namespace shows the same tree and
the same streams. Redis orders everything once; each host keeps mirrors.

Keys, for namespace P (a hash tag keeps what one script touches in one slot):

- ``{P}:tree``: a Redis stream of tree events. Applying them in order gives
  every host the same tree, inode numbers and errors (see tree.py). A
  create's inode number is made from its entry ID, so it is the same on
  every host and never reused, even after Redis loses everything. A host
  adds an event at ``MS-*``, MS its clock's millisecond (or the newest
  event's, if later), so that an event can be fenced by its millisecond.
- ``{P}:snapshot``: the tree as of one event (``id``), written every
  :data:`SNAPSHOT_EVERY` events; the events before the previous snapshot
  (``trimmed``) are then trimmed. A host starts from the snapshot, and one
  that finds it has not applied events since trimmed starts again from it.
- ``{P}:epoch``: set when the namespace is first used. Another value after a
  reconnect means Redis lost its data: every stream ends, logged once.
- ``{P:S}:N`` and ``{P:S}:N:meta``: stream N's chunks and totals, made
  when N is created (empty) and never by a write: an append is
  ``XADD NOMKSTREAM``, so a Redis that lost the stream cannot get it back
  from a late writer. A chunk's entry ID is ``OFFSET-K``, OFFSET being the
  stream offset of its first byte and K 1 unless an append at that offset
  was fenced (below): one XADD appends where the writer expects the log to
  end (Redis refuses it if another host got there first) and trims by MINID
  to exactly the newest ``ring_buffer_size`` bytes. Each chunk names its
  append (``w``). The end of a removed stream is ``TOTAL-MAX``, above any
  later append, and its keys expire after :data:`REMOVED_EXPIRY`. The
  totals in ``meta`` are added a batch at a time, only while ``meta`` exists.
  S = shard_of(N) spreads streams over the slots of a cluster, and one
  XREAD can wait on every followed stream of a shard.
- ``{P:S}:bell:H``: host H's doorbell for shard S (below); removed when H
  leaves, and expires after :data:`REMOVED_EXPIRY` if H was killed.
- ``{P:S}:N:cursors``: under the ``block`` policy, where each host following
  stream N has delivered it up to (``OFFSET:MS``, MS the Redis time it was
  renewed). Writes trim the log no further than the slowest, and wait
  while it is more than the ring (or ``channel_buffer_size``, if larger)
  behind; a host that has not renewed its cursor for
  :attr:`RedisStore.host_timeout` is taken out. A host takes
  its own out when it stops following; the field is never made for a
  stream whose log is missing or ended, and expires with the log.

Invariants:

- A host follows a stream only while it has readers of it, and its ring then
  mirrors the log chunk for chunk from where following began. Readers join
  from that ring, so history meets live data at an entry ID, never a time.
- One blocking XREAD per shard with followed streams, one for the tree:
  connections are bounded whatever the number of streams and readers.
- A write (an append, a tree event) that Redis has not answered is settled
  before it is answered or tried again: found (it was applied), or fenced
  (its entry ID is taken by an entry added and deleted at once, so Redis
  refuses it if it arrives later). A write that fails was not applied.
- A write waits for Redis for ``timeout``, then for as long again to settle
  a write Redis may still hold.
- Under ``block``, no entry at or after a live host's cursor is trimmed.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import json
import logging
import secrets
import time
from urllib.parse import urlsplit

import coredis
import coredis.exceptions
import coredis.retry
import trio

from ...settings import BackendSettings
from ...core.tree import Event, Tree, Node, StreamFile, fail
from ...core.stream import SharedTotals, Stream, StreamClosed
from ...settings import SlowReaderPolicy
from ...core.wait import Waiter

__all__ = ["BackendError", "RedisStore", "probe_backend"]

log = logging.getLogger(__name__)

#: Hash slots the streams of a namespace are spread over, and the most
#: blocking reads (connections) a host keeps for following streams.
SHARDS = 16
#: Connections a cluster client may keep to each node: every blocking read
#: (one per shard, one for the tree) may be on one node, and each holds a
#: connection until it returns; other commands share the rest (each holds one
#: only while it is sent). coredis's default, 32 for the whole cluster, gave
#: 5 to 8 per node, and with that many blocking reads on one node every other
#: command to it waited until one returned (logged: "connections free per
#: node ... 0/8"; the cluster test's unlinks then failed with EIO after 10 s).
NODE_CONNECTIONS = SHARDS + 1 + 8
#: Bits of an inode number that hold its tree entry's sequence within a millisecond.
SEQUENCE_BITS = 20
#: Entries per XRANGE page when a host loads a stream's history.
HISTORY_PAGE = 256
#: Entries per XREAD. Measured with 1 MiB entries: coredis reads 256 MB/s
#: 16 at a time, 183 MB/s 128 at a time (large replies cost it more to parse).
READ_COUNT = 16
#: How long a removed stream's keys stay, for hosts still draining them.
REMOVED_EXPIRY = 3600
#: Counts (bytes, chunks, readers, writers) go to Redis at most this often.
COUNTS_INTERVAL = 0.05
#: Figures that count what is open now, which a host takes back when it leaves.
LIVE_FIGURES = ("readers", "writers")
#: How long a leaving host tries to take its figures back.
WITHDRAW_TIMEOUT = 2.0
#: How long stat waits for a stream's totals before it shows the last it had.
TOTALS_TIMEOUT = 0.5
#: Tree events between snapshots of the tree.
SNAPSHOT_EVERY = 1000
#: How often a host looks whether Redis restarted empty.
EPOCH_CHECK_INTERVAL = 1.0
#: Wait between attempts to reach a Redis that went away.
RECONNECT_DELAY = 0.2
#: A following host sends its cursor at most this often while it moves (by a
#: TRIM_FRACTION of the cap)...
CURSOR_INTERVAL = 0.01
#: ...and renews it this often while it does not.
CURSOR_RENEW = 1.0
#: A writer waiting for a slow host looks at the cursors again after this
#: long, doubling while they do not move, up to CURSOR_POLL_MAX.
CURSOR_POLL = 0.002
CURSOR_POLL_MAX = 0.1
#: Under block a writer trims (and looks at the cursors) each time it has
#: appended this fraction of the cap. With a script per append, 1 KiB every
#: 1 ms from A to B had a p99 of 6.3 ms at best (bare XADD -> XREAD 1.2 ms);
#: with this, 1.7-3.3 ms (XADD -> XREAD 1.2-2.2 ms), on a busy 2-vCPU machine.
TRIM_FRACTION = 16

#: What a Redis that went away (or is failing over) raises: wait, and try again.
UNREACHABLE = (coredis.exceptions.ConnectionError, coredis.exceptions.ClusterDownError,
               coredis.exceptions.BusyLoadingError, TimeoutError, OSError)

#: The largest sequence number of an entry ID: the end of a removed stream.
MAX_SEQUENCE = 2**64 - 1

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

# Keep the tree as of event ARGV[1], if newer than the snapshot there, and
# trim the events before that older snapshot.
SNAPSHOT = """
local function newer(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am > bm or (am == bm and as > bs)
end
local current = redis.call('HGET', KEYS[1], 'id')
if current then
  if not newer(ARGV[1], current) then return 0 end
  redis.call('XTRIM', KEYS[2], 'MINID', current)
  redis.call('HSET', KEYS[1], 'trimmed', current)
end
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'rows', ARGV[2])
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

# Add ARGV[2] to figure ARGV[1] of a stream's totals, if the stream has them.
COUNT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
return redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[2])
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

# A tree event by ARGV[2], added at millisecond ARGV[1], whose answer never
# came: its entry ID if it is there; else nil, and no event can be added at
# that millisecond any more.
SETTLE_EVENT = """
local by = '"by":"' .. ARGV[2] .. '"'
local last = ARGV[1] .. '-18446744073709551615'
for _, entry in ipairs(redis.call('XRANGE', KEYS[1], ARGV[1] .. '-0', last)) do
  if entry[2][1] == 'e' and string.find(entry[2][2], by, 1, true) then return entry[1] end
end
local taken = redis.pcall('XADD', KEYS[1], 'NOMKSTREAM', last, 'f', '1')
if type(taken) == 'string' then redis.call('XDEL', KEYS[1], taken) end
return false
"""

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


class Script:
    """A Lua script, run on the node of its keys alone: EVALSHA, or EVAL where that node
    does not have it yet (EVAL keeps it there).

    coredis's registered scripts load a missing script with SCRIPT LOAD on every
    node of a cluster, so while one node was paused (or dead) the first run of a
    script waited for it on every other node: a stream on a live master took 4 s
    to end while another master was paused.
    """

    def __init__(self, client: coredis.Redis | coredis.RedisCluster, source: str) -> None:
        self.client = client
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, keys: list[str], args: list | tuple = ()):
        try:
            return await self.client.evalsha(self.sha, keys=keys, args=args)
        except coredis.exceptions.NoScriptError:
            return await self.client.eval(self.source, keys=keys, args=args)


class BackendError(Exception):
    """The backend cannot be used; the message says why, for the user."""


def connect(settings: BackendSettings) -> coredis.Redis | coredis.RedisCluster:
    url = settings.url or ""
    password = None
    if settings.password_file:
        try:
            with open(settings.password_file, encoding="utf-8") as f:
                password = f.readline().strip()
        except OSError as e:
            raise BackendError(f"cannot read {settings.password_file}: {e.strerror}") from None
    kwargs: dict = {"password": password} if password else {}
    parts = urlsplit(url)
    if parts.scheme in ("redis+cluster", "rediss+cluster"):
        nodes = []
        for host in parts.netloc.rpartition("@")[2].split(","):
            name, _, port = host.rpartition(":")
            if not name or not port.isdigit():
                raise BackendError(f"{url}: expected redis+cluster://HOST:PORT[,HOST:PORT...]")
            nodes.append(coredis.connection.TCPLocation(host=name, port=int(port)))
        if parts.username:
            kwargs["username"] = parts.username
        if parts.password and not password:
            kwargs["password"] = parts.password
        # Only a refusal that says nothing was done (CLUSTERDOWN) is tried again
        # inside coredis: a write whose connection failed is settled by
        # RedisStore._write, never sent again blindly (a tree event sent twice
        # is applied twice). Failing commands still make coredis look for a new
        # master, which _write's own attempts then reach.
        retry = coredis.retry.ConstantRetryPolicy(
            (coredis.exceptions.ClusterDownError,), retries=2, delay=0.1)
        return coredis.RedisCluster(startup_nodes=nodes, ssl=parts.scheme == "rediss+cluster",
                                    max_connections=NODE_CONNECTIONS,
                                    max_connections_per_node=True, retry_policy=retry, **kwargs)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise BackendError(f"{url}: the backend must be a redis://, rediss://, unix:// or"
                           " redis+cluster:// URL")
    # No retries inside coredis, so that a follower sees each lost connection
    # (commands are retried by RedisStore._call, as long as the user allows).
    return coredis.Redis.from_url(url, retry_policy=coredis.retry.NoRetryPolicy(), **kwargs)


def describe(error: BaseException) -> str:
    """The first real cause inside coredis's and trio's exception groups."""
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return str(error) or type(error).__name__


def probe_backend(settings: BackendSettings) -> None:
    """Raise BackendError unless Redis answers now: nothing is mounted without it."""
    async def ping() -> None:
        client = connect(settings)
        async with client:
            await client.ping()

    try:
        trio.run(_within, settings.timeout, ping)
    except BackendError:
        raise
    except trio.TooSlowError:
        raise BackendError(f"cannot reach Redis at {shown(settings.url)}: no answer within"
                           f" {settings.timeout:g} s") from None
    except BaseException as e:
        raise BackendError(f"cannot reach Redis at {shown(settings.url)}: {describe(e)}") from None


def shown(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.replace(":" + parts.password + "@", ":***@")).geturl()


class RoundTrips:
    """A histogram of how long this host's calls to Redis took, answered or not.

    Cumulative counts per bound, as Prometheus wants them; /metrics renders it.
    """

    #: Upper bounds of the buckets, in seconds: loopback answers in about 0.3 ms.
    BOUNDS = (0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)

    def __init__(self) -> None:
        self.counts = [0] * len(self.BOUNDS)
        self.count = 0
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.count += 1
        self.sum += seconds
        for i, bound in enumerate(self.BOUNDS):
            if seconds <= bound:
                self.counts[i] += 1


async def _within(seconds: float, call) -> None:
    with trio.fail_after(seconds):
        await call()


class RedisStore:
    """The :class:`~streamfs_fuse.core.tree.TreeStore` of a tree shared through Redis."""

    def __init__(self, settings: BackendSettings) -> None:
        self.settings = settings
        self.client = connect(settings)
        #: How long calls to Redis took (not the blocking reads, which wait by design).
        self.round_trips = RoundTrips()
        prefix = settings.namespace
        self.prefix = prefix
        self.tree_key = f"{{{prefix}}}:tree"
        self.epoch_key = f"{{{prefix}}}:epoch"
        self.snapshot_key = f"{{{prefix}}}:snapshot"
        self.tree: Tree | None = None
        self.epoch: str | None = None
        #: The last tree event applied here.
        self.applied = "0-0"
        self._since_snapshot = 0
        self.host = secrets.token_hex(6)
        self._tokens = itertools.count()
        # Commits of this host waiting for their event to be applied, by token.
        self._commits: dict[str, Commit] = {}
        self.shards: dict[int, Shard] = {}
        # Counts (readers, writers, bytes, chunks) not yet added to Redis, by (meta key, figure).
        self._counts: dict[tuple[str, str], int] = {}
        self._counts_due = trio.Event()
        # What this host has added to the live figures (readers, writers), by key.
        self._added: dict[tuple[str, str], int] = {}
        self._nursery: trio.Nursery | None = None
        self._replaying = False
        #: Set once the host is leaving.
        self.leaving = False
        # Removed streams whose logs are being ended, and when none are.
        self._ends_pending = 0
        self._ends_done = trio.Event()
        self._ends_done.set()
        self._end = Script(self.client, END)
        self._totals = Script(self.client, TOTALS)
        self._snapshot = Script(self.client, SNAPSHOT)
        self._create = Script(self.client, CREATE)
        self._count = Script(self.client, COUNT)
        self._settle_append = Script(self.client, SETTLE_APPEND)
        self._settle_event = Script(self.client, SETTLE_EVENT)
        self._ring_bell = Script(self.client, RING)
        self._cursor = Script(self.client, CURSOR)
        self._trim = Script(self.client, TRIM)
        # Followed logs whose cursor is due to be sent (or taken out).
        self._cursors: dict[RedisLog, None] = {}
        self._cursors_due = trio.Event()

    # -- the process around it -------------------------------------------------

    def attach(self, tree: Tree) -> None:
        self.tree = tree

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Serve the tree until cancelled; started once the tree is loaded."""
        async with self.client, trio.open_nursery() as nursery:
            self._nursery = nursery
            await self._check_epoch()
            await self._load_tree()
            nursery.start_soon(self._follow_tree)
            nursery.start_soon(self._send_counts)
            nursery.start_soon(self._send_cursors)
            nursery.start_soon(self._watch_epoch)
            task_status.started()

    @property
    def host_timeout(self) -> float:
        """How long a host's cursor lasts unrenewed: a Redis stall that writes
        outlast (twice ``timeout``) must not take live hosts out."""
        return 2 * self.settings.timeout + CURSOR_RENEW

    async def _call(self, command, *args, **kwargs):
        """A command, tried again while Redis is unreachable, for up to ``timeout``."""
        with trio.move_on_after(self.settings.timeout):
            while True:
                started = time.perf_counter()
                try:
                    return await command(*args, **kwargs)
                except UNREACHABLE as e:
                    self._unreachable(e)
                finally:
                    self.round_trips.observe(time.perf_counter() - started)
                await trio.sleep(RECONNECT_DELAY)
        log.error("redis at %s did not answer for %g s (%s)", shown(self.settings.url),
                  self.settings.timeout, self.pool_view())
        raise fail(errno.EIO)

    def _unreachable(self, error: BaseException) -> None:
        """A command found Redis unreachable: it will be tried again.

        A cluster client is told, so that it looks for a new master after a
        failover (its own retries, which did so, are off: they resend writes).
        """
        log.debug("redis: %s; trying again", describe(error))
        layout = getattr(self.client.connection_pool, "cluster_layout", None)
        if layout is not None and isinstance(error, coredis.exceptions.RedisError):
            layout.report_errors(None, error)

    def pool_view(self) -> str:
        """coredis's connections as it sees them, for the log when Redis seems not to answer:
        those free per node (a command waits for one), those open, and this host's
        blocking reads (each holds one)."""
        pool = self.client.connection_pool
        reads = 1 + sum(1 for shard in self.shards.values() if shard.logs)
        try:  # coredis's private state: a view for the log, nothing relies on it
            queues = getattr(pool, "_cluster_available_connections", None)
            if queues is None:
                queues = {"redis": pool._available_connections}
            free = ", ".join(f"{getattr(where, 'port', where)} {len(queue)}/{queue._maxsize}"
                             for where, queue in queues.items())
            return (f"coredis: connections free per node {free}; open"
                    f" {len(pool._online_connections)}; blocking reads {reads}")
        except AttributeError:
            return f"blocking reads {reads}"

    async def _write(self, attempt, settle) -> None:
        """Try ``attempt()`` until it returns True: a write Redis applies once, or not at all.

        An attempt whose answer never came (a dropped connection, or time up)
        may still be applied by Redis. Before trying again, and before failing,
        ``settle()`` finds out: True if it was applied, else it makes sure it
        never will be. Attempts go on for ``timeout``; settling the last one,
        for as long again. Raises EIO if it was not applied.
        """
        timeout = self.settings.timeout
        unanswered = False
        with trio.move_on_after(timeout):
            while True:
                try:
                    if unanswered:
                        if await settle():
                            return
                        unanswered = False
                    unanswered = True
                    started = time.perf_counter()
                    try:
                        applied = await attempt()
                    finally:
                        self.round_trips.observe(time.perf_counter() - started)
                    if applied:
                        return
                    unanswered = False
                except UNREACHABLE as e:
                    self._unreachable(e)
                    await trio.sleep(RECONNECT_DELAY)
        log.error("redis at %s did not answer for %g s (%s)", shown(self.settings.url), timeout,
                  self.pool_view())
        if unanswered:
            with trio.move_on_after(timeout) as settling:
                while True:
                    try:
                        if await settle():
                            log.warning("redis applied the write late: it succeeds")
                            return
                        break
                    except UNREACHABLE:
                        await trio.sleep(RECONNECT_DELAY)
            if settling.cancelled_caught:
                log.error("redis at %s did not answer for %g s more: the write that fails"
                          " may still be applied", shown(self.settings.url), timeout)
        raise fail(errno.EIO)

    async def _follow_each(self, step, resync=None) -> None:
        """Run ``step`` forever, waiting out Redis outages and noticing a lost epoch.

        After an outage ``resync`` is awaited, if given, before ``step`` again.
        """
        while True:
            try:
                await step()
                continue
            except UNREACHABLE as e:
                self._unreachable(e)
            # Back only once the epoch is checked: reading on from the last
            # entry of a Redis that restarted empty would wait forever.
            while True:
                await trio.sleep(RECONNECT_DELAY)
                try:
                    await self._check_epoch()
                    if resync is not None:
                        await resync()
                    break
                except UNREACHABLE:
                    pass

    async def _watch_epoch(self) -> None:
        """Look whether Redis lost data, even where no follower saw a connection drop.

        A cluster client reconnects by itself, to a failed-over master too.
        """
        while True:
            await trio.sleep(EPOCH_CHECK_INTERVAL)
            try:
                await self._check_epoch()
                await self._check_history()
                for shard in list(self.shards.values()):
                    await shard.resync(idle_only=True)
            except UNREACHABLE:
                pass

    async def _check_epoch(self) -> None:
        new = secrets.token_hex(8)
        await self.client.set(self.epoch_key, new, condition=coredis.PureToken.NX)
        epoch = (await self.client.get(self.epoch_key)).decode()
        if self.epoch is not None and epoch != self.epoch:
            log.error("redis at %s lost the namespace %r (restarted empty?): every stream"
                      " ends", shown(self.settings.url), self.prefix)
            self._reset()
        self.epoch = epoch

    async def _check_history(self) -> None:
        """Start again from the snapshot if events this host had not applied were trimmed."""
        trimmed = await self.client.hget(self.snapshot_key, "trimmed")
        if trimmed is not None and entry_key(self.applied) < entry_key(trimmed.decode()):
            log.error("namespace %r: this host fell behind the tree's history in Redis;"
                      " every stream ends here, and the tree is loaded again", self.prefix)
            self._reset()
            await self._load_tree()

    async def _load_tree(self) -> None:
        """The snapshot, if any, then every event after it."""
        snapshot = await self.client.hmget(self.snapshot_key, ["id", "rows"])
        if snapshot[0] is not None:
            self.tree.restore(json.loads(snapshot[1]))
            self.applied = snapshot[0].decode()
        # Streams removed in the past were ended by the host that removed them.
        self._replaying = True
        try:
            await self._apply_tree(block=None)
        finally:
            self._replaying = False

    def _reset(self) -> None:
        """End every stream and empty the tree: Redis lost what this host knew."""
        tree = self.tree
        for node in list(tree.nodes.values()):
            if isinstance(node, StreamFile):
                node.stream.close()
        tree.clear()
        self.applied = "0-0"
        for shard in self.shards.values():
            shard.logs.clear()
            shard.changed()

    # -- the tree --------------------------------------------------------------

    async def commit(self, event: Event) -> Node | None:
        token = f"{self.host}:{next(self._tokens)}"
        commit = self._commits[token] = Commit()
        event["by"] = token
        fields = {"e": json.dumps(event, separators=(",", ":"))}
        ms = max(time.time_ns() // 1_000_000, offset_of(self.applied))

        async def attempt() -> bool:
            nonlocal ms
            try:
                await self.client.xadd(self.tree_key, fields, identifier=f"{ms}-*")
                return True
            except coredis.exceptions.ResponseError as e:
                if not refused(e):
                    raise
            newest = (await self.client.xinfo_stream(self.tree_key))["last-generated-id"]
            newest_ms, sequence = entry_key(as_text(newest))
            ms = newest_ms + 1 if sequence == MAX_SEQUENCE else max(ms, newest_ms)
            return False

        async def settle() -> bool:
            nonlocal ms
            if await self._settle_event(keys=[self.tree_key], args=[ms, token]) is not None:
                return True
            ms += 1
            return False

        try:
            await self._write(attempt, settle)
            await commit.done.wait()
        finally:
            del self._commits[token]
        if self._since_snapshot >= SNAPSHOT_EVERY:
            self._since_snapshot = 0
            await self._write_snapshot()
        if commit.error is not None:
            raise commit.error
        if event["op"] == "create" and isinstance(commit.result, StreamFile):
            await self._make_keys(commit.result.stream.log)
        return commit.result

    async def _make_keys(self, log_: RedisLog) -> None:
        """Make a new stream's keys; if Redis does not answer, its first write will."""
        try:
            await self._call(self._create, keys=[log_.key, log_.meta])
        except OSError:
            log.warning("stream %r: its keys in Redis are left to its first write",
                        log_.stream.name)

    async def _write_snapshot(self) -> None:
        """Snapshot the tree as of the event just applied: the history before it can go."""
        rows, applied = self.tree.snapshot(), self.applied
        try:
            await self._call(self._snapshot, keys=[self.snapshot_key, self.tree_key],
                             args=[applied, json.dumps(rows, separators=(",", ":"))])
        except OSError:
            pass  # logged; the next snapshot trims

    async def _follow_tree(self) -> None:
        await self._follow_each(lambda: self._apply_tree(block=0))

    async def _apply_tree(self, block: int | None) -> None:
        """Apply the tree events after :attr:`applied`: those there are, or (block=0) wait."""
        while True:
            reply = await self.client.xread({self.tree_key: self.applied}, count=1000,
                                            block=block)
            entries = reply[self.tree_key.encode()] if reply else ()
            for entry in entries:
                self._apply(entry.identifier.decode(), entry.field_values)
            if block is not None or len(entries) < 1000:
                return

    def _apply(self, entry_id: str, fields: dict) -> None:
        if entry_key(entry_id) <= entry_key(self.applied):
            return  # read by a read begun before a snapshot was loaded
        self.applied = entry_id
        self._since_snapshot += 1
        ms, _, seq = entry_id.partition("-")
        try:
            event = json.loads(fields[b"e"])
            commit = self._commits.get(event.get("by", ""))
        except (KeyError, ValueError, AttributeError):
            log.warning("tree event %s is not one this version understands: ignored", entry_id)
            return
        try:
            result = self.tree.apply(event, inode=int(ms) << SEQUENCE_BITS | int(seq))
        except (KeyError, TypeError, ValueError):
            log.warning("tree event %s is not one this version understands: ignored", entry_id)
            result = None
        except OSError as e:
            if commit is None:
                log.debug("tree event %s refused here too: %s", entry_id, e)
                return
            commit.error = e
        else:
            if commit is not None:
                commit.result = result
        if commit is not None:
            commit.done.set()

    # -- streams ---------------------------------------------------------------

    def stream_log(self, node: StreamFile) -> RedisLog:
        shard = shard_of(node.inode)
        key = f"{{{self.prefix}:{shard}}}:{node.inode}"
        return RedisLog(self, node.stream, key, shard)

    def shard(self, number: int) -> Shard:
        shard = self.shards.get(number)
        if shard is None:
            shard = self.shards[number] = Shard(self, number)
            self._nursery.start_soon(self._follow_each, shard.step, shard.resync)
        return shard

    def count(self, meta: str, figure: str, delta: int) -> None:
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
            added = await self._call(self._count, keys=[meta], args=[figure, delta])
        except OSError:
            return  # logged; the figure is off by what this host had
        if added is not None and figure in LIVE_FIGURES:
            key = (meta, figure)
            self._added[key] = self._added.get(key, 0) + delta

    def cursor_due(self, log_: RedisLog) -> None:
        """``log_``'s cursor moved, or this host stopped following it."""
        self._cursors[log_] = None
        self._cursors_due.set()

    async def _send_cursors(self) -> None:
        """Send the cursors that moved, at most every :data:`CURSOR_INTERVAL`, and renew
        every cursor each :data:`CURSOR_RENEW`."""
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
                    nursery.start_soon(self._send_cursor, log_)
            await trio.sleep(CURSOR_INTERVAL)

    async def _send_cursor(self, log_: RedisLog) -> None:
        try:
            if log_.cursor is not None:
                log_.published = True
                await self._call(self._cursor, keys=[log_.key, log_.cursors],
                                 args=[self.host, log_.cursor])
            elif log_.published:
                log_.published = False
                await self._call(self.client.hdel, log_.cursors, [self.host])
        except OSError:
            pass  # logged; renewed within CURSOR_RENEW, or it lapses

    async def withdraw(self) -> None:
        """Leaving: take this host's readers and writers out of the totals.

        Called before the store is cancelled, while the client still works;
        the byte and chunk counts not sent yet go too.
        """
        self.leaving = True  # no more doorbells: they go now
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
                followed = dict(self._cursors)
                for shard in self.shards.values():
                    nursery.start_soon(self._remove_bell, shard.bell)
                    followed.update(dict.fromkeys(shard.logs.values()))
                for log_ in followed:
                    if log_.published:
                        nursery.start_soon(self._remove_cursor, log_)

    async def _take_back(self, meta: str, figure: str, delta: int) -> None:
        try:
            await self._count(keys=[meta], args=[figure, delta])
        except UNREACHABLE as e:
            log.warning("could not take this host's %s out of %s: %s", figure, meta,
                        describe(e))

    async def _remove_bell(self, bell: str) -> None:
        try:
            await self.client.delete([bell])
        except UNREACHABLE as e:
            log.warning("could not remove %s (it expires): %s", bell, describe(e))

    async def _remove_cursor(self, log_: RedisLog) -> None:
        try:
            await self.client.hdel(log_.cursors, [self.host])
        except UNREACHABLE as e:
            log.warning("could not take this host's cursor out of %s (it lapses): %s",
                        log_.cursors, describe(e))

    def start_end(self, log_: RedisLog) -> None:
        """End a removed stream's log; a host that leaves does so first (its keys must expire)."""
        if not self._ends_pending:
            self._ends_done = trio.Event()
        self._ends_pending += 1
        self._nursery.start_soon(self._end_log, log_)

    async def _end_log(self, log_: RedisLog) -> None:
        try:
            await self._call(self._end, keys=[log_.key, log_.meta, log_.cursors],
                             args=[REMOVED_EXPIRY])
        except OSError:
            pass  # logged; another host that applies the removal ends it too
        finally:
            self._ends_pending -= 1
            if not self._ends_pending:
                self._ends_done.set()


class Commit:
    """A tree event of this host on its way: set ``done`` once applied here."""

    __slots__ = ("done", "result", "error")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.result: Node | None = None
        self.error: OSError | None = None


class RedisLog:
    """One stream's log in Redis: the :class:`~streamfs_fuse.core.stream.StreamLog` of
    ``stream``, shared by every host."""

    shared = True

    def __init__(self, store: RedisStore, stream: Stream, key: str, shard: int) -> None:
        self.store = store
        self.stream = stream
        self.key = key
        self.meta = key + ":meta"
        self.cursors = key + ":cursors"
        self.shard = shard
        #: The last entry delivered here, while following.
        self.last: str | None = None
        #: :attr:`last` when :meth:`Shard.resync` last looked.
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
        token = f"{store.host}:{next(store._tokens)}"
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
                added = await store.client.xadd(
                    self.key, fields, identifier=entry, nomkstream=True, **trim)
            except coredis.exceptions.ResponseError as e:
                if not refused(e):
                    raise
                # Refused: another host got there first, or this very append
                # did, sent again after its answer was lost.
                if await store._settle_append(keys=[self.key], args=[entry, token]):
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
            if await store._settle_append(keys=[self.key], args=[entry, token]):
                return True
            self.end_offset = None
            return False

        await store._write(attempt, settle)
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
        self.store._nursery.start_soon(self._trim_in_background)

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
        reply = await store._call(store._trim, keys=[self.key, self.cursors],
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
            info = await self.store.client.xinfo_stream(self.key)
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
        store = self.store
        epoch = await store.client.get(store.epoch_key)
        if epoch is None or epoch.decode() != store.epoch:
            await store._check_epoch()
            raise StreamClosed(self.stream.name)
        if self.stream.removed:
            raise StreamClosed(self.stream.name)
        if await store._create(keys=[self.key, self.meta]):
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
                await self.store._send_cursor(self)
            await self._load_history()
        finally:
            self._loading.set()
            self._loading = None
        self.store.shard(self.shard).add(self)

    async def _load_history(self) -> None:
        stream = self.stream
        start = "-"
        last = "0-0"
        first = True
        while True:
            entries = await self.store._call(self.store.client.xrange, self.key, start, "+",
                                             count=HISTORY_PAGE)
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
            totals = await self.store._call(self.store.client.hget, self.meta, "bytes")
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
                self.store.cursor_due(self)
        elif self.cursor is not None:
            self.cursor = None
            self.store.cursor_due(self)

    def unfollow(self) -> None:
        if self.last is None:
            return
        self.last = None
        if self.cursor is not None:
            self.cursor = None
            self.store.cursor_due(self)
        shard = self.store.shards.get(self.shard)
        if shard is not None:
            shard.remove(self)
        self.stream.unfollowed()

    def end(self) -> None:
        if not self.store._replaying:
            self.store.start_end(self)

    def count(self, figure: str, delta: int) -> None:
        self.store.count(self.meta, figure, delta)

    async def totals(self) -> SharedTotals | None:
        reply = None
        with trio.move_on_after(TOTALS_TIMEOUT):
            try:
                reply = await self.store._totals(keys=[self.key, self.meta])
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


class Shard:
    """The streams of one hash slot that this host follows, read by one blocking XREAD.

    The read also waits on the shard's doorbell, a stream of this host's own,
    which is rung when the set of followed streams changes: a blocking read is
    never cancelled (coredis's cluster client loses the connection of each).
    """

    def __init__(self, store: RedisStore, number: int) -> None:
        self.store = store
        self.number = number
        self.logs: dict[str, RedisLog] = {}
        self.bell = f"{{{store.prefix}:{number}}}:bell:{store.host}"
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
        if not self._ringing and not self.store.leaving:
            self._ringing = True
            self.store._nursery.start_soon(self._ring)

    async def _ring(self) -> None:
        try:
            await self.store._call(self.store._ring_bell, keys=[self.bell],
                                   args=[REMOVED_EXPIRY])
        except OSError:
            pass  # logged; the read is woken by the next entry of any stream
        finally:
            self._ringing = False

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
            newest = await self.store.client.xrevrange(log_.key, "+", "-", count=1)
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
        reply = await self.store.client.xread(keys, count=READ_COUNT, block=0)
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
                self.store._nursery.start_soon(self._deliver_later, log_, entries[i:])
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


def shard_of(inode: int) -> int:
    """The shard of a stream: its creation's millisecond and sequence, spread."""
    return ((inode >> SEQUENCE_BITS) + inode) % SHARDS


def refused(error: coredis.exceptions.ResponseError) -> bool:
    """Whether Redis refused an entry ID because the stream's last ID is not below it."""
    return "equal or smaller" in str(error) or "too large" in str(error)


def as_text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def offset_of(entry_id: str) -> int:
    return int(entry_id.partition("-")[0])


def entry_key(entry_id: str) -> tuple[int, int]:
    """An entry ID as something that sorts as Redis orders them."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq)
