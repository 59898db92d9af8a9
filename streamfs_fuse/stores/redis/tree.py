"""The shared tree: its events in Redis, applied in Redis's order; its snapshot; and
the epoch that tells a host Redis lost them."""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable

import coredis
import coredis.exceptions
import trio

from ...core.tree import Event, Node, StreamFile, Tree
from .connection import Connection, Script, shown
from .ids import MAX_SEQUENCE, SEQUENCE_BITS, as_text, entry_key, offset_of, refused

__all__ = ["SNAPSHOT_EVERY", "SharedTree"]

log = logging.getLogger(__name__)

#: Tree events between snapshots of the tree.
SNAPSHOT_EVERY = 1000
#: Tree events per XREAD.
EVENTS_PER_READ = 1000

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


class Commit:
    """A tree event of this host on its way: set ``done`` once applied here."""

    __slots__ = ("done", "result", "error")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.result: Node | None = None
        self.error: OSError | None = None


class SharedTree:
    """``{P}:tree``, ``{P}:snapshot`` and ``{P}:epoch``: the tree every host applies.

    ``token`` names this host's writes; ``lost`` is called (after every stream
    here has ended) when Redis lost what this host knew.
    """

    def __init__(self, connection: Connection, prefix: str, token: Callable[[], str],
                 lost: Callable[[], None]) -> None:
        self.connection = connection
        self.client = connection.client
        self.prefix = prefix
        self.token = token
        self.lost = lost
        self.tree_key = f"{{{prefix}}}:tree"
        self.epoch_key = f"{{{prefix}}}:epoch"
        self.snapshot_key = f"{{{prefix}}}:snapshot"
        self.tree: Tree | None = None
        self.epoch: str | None = None
        #: The last tree event applied here.
        self.applied = "0-0"
        self._since_snapshot = 0
        #: True while the events of the past are applied as this host starts.
        self.replaying = False
        # Commits of this host waiting for their event to be applied, by token.
        self._commits: dict[str, Commit] = {}
        self._snapshot = Script(self.client, SNAPSHOT)
        self._settle_event = Script(self.client, SETTLE_EVENT)

    # -- the epoch -------------------------------------------------------------

    async def check_epoch(self) -> None:
        """Set the epoch if the namespace is new; end everything if it changed."""
        new = secrets.token_hex(8)
        await self.client.set(self.epoch_key, new, condition=coredis.PureToken.NX)
        epoch = (await self.client.get(self.epoch_key)).decode()
        if self.epoch is not None and epoch != self.epoch:
            log.error("redis at %s lost the namespace %r (restarted empty?): every stream"
                      " ends", shown(self.connection.settings.url), self.prefix)
            self._reset()
        self.epoch = epoch

    async def kept(self) -> bool:
        """Whether Redis still has the namespace this host knew (if not, everything ends)."""
        epoch = await self.client.get(self.epoch_key)
        if epoch is None or epoch.decode() != self.epoch:
            await self.check_epoch()
            return False
        return True

    async def check_history(self) -> None:
        """Start again from the snapshot if events this host had not applied were trimmed."""
        trimmed = await self.client.hget(self.snapshot_key, "trimmed")
        if trimmed is not None and entry_key(self.applied) < entry_key(trimmed.decode()):
            log.error("namespace %r: this host fell behind the tree's history in Redis;"
                      " every stream ends here, and the tree is loaded again", self.prefix)
            self._reset()
            await self.load()

    def _reset(self) -> None:
        """End every stream and empty the tree: Redis lost what this host knew."""
        tree = self.tree
        for node in list(tree.nodes.values()):
            if isinstance(node, StreamFile):
                node.stream.close()
        tree.clear()
        self.applied = "0-0"
        self.lost()

    # -- the events ------------------------------------------------------------

    async def load(self) -> None:
        """The snapshot, if any, then every event after it."""
        snapshot = await self.client.hmget(self.snapshot_key, ["id", "rows"])
        if snapshot[0] is not None:
            self.tree.restore(json.loads(snapshot[1]))
            self.applied = snapshot[0].decode()
        # Streams removed in the past were ended by the host that removed them.
        self.replaying = True
        try:
            await self._apply_events(block=None)
        finally:
            self.replaying = False

    async def follow(self) -> None:
        """Apply every host's events as they come, until cancelled."""
        await self.connection.follow(lambda: self._apply_events(block=0), self.check_epoch)

    async def commit(self, event: Event) -> Node | None:
        """Add ``event`` to the tree's events; return what applying it here gave."""
        token = self.token()
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
            await self.connection.write(attempt, settle)
            await commit.done.wait()
        finally:
            del self._commits[token]
        if self._since_snapshot >= SNAPSHOT_EVERY:
            self._since_snapshot = 0
            await self._write_snapshot()
        if commit.error is not None:
            raise commit.error
        return commit.result

    async def _write_snapshot(self) -> None:
        """Snapshot the tree as of the event just applied: the history before it can go."""
        rows, applied = self.tree.snapshot(), self.applied
        try:
            await self.connection.call(
                self._snapshot, keys=[self.snapshot_key, self.tree_key],
                args=[applied, json.dumps(rows, separators=(",", ":"))])
        except OSError:
            pass  # logged; the next snapshot trims

    async def _apply_events(self, block: int | None) -> None:
        """Apply the tree events after :attr:`applied`: those there are, or (block=0) wait."""
        while True:
            reply = await self.client.xread({self.tree_key: self.applied},
                                            count=EVENTS_PER_READ, block=block)
            entries = reply[self.tree_key.encode()] if reply else ()
            for entry in entries:
                self._apply(entry.identifier.decode(), entry.field_values)
            if block is not None or len(entries) < EVENTS_PER_READ:
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
