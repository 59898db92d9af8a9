"""Streams and a tree shared by the mounts of several hosts, ordered by Redis.

Every mount that names the same Redis and namespace shows the same tree and
the same streams. Redis orders everything once; each host keeps mirrors.

Keys, for namespace P (a hash tag keeps what one script touches in one slot):

- ``{P}:tree``: a Redis stream of tree events. Applying them in order gives
  every host the same tree, inode numbers and errors (see core/tree.py). A
  create's inode number is made from its entry ID, so it is the same on
  every host and never reused, even after Redis loses everything. A host
  adds an event at ``MS-*``, MS its clock's millisecond (or the newest
  event's, if later), so that an event can be fenced by its millisecond.
- ``{P}:snapshot``: the tree as of one event (``id``), written every
  :data:`~.tree.SNAPSHOT_EVERY` events; the events before the previous snapshot
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

Modules: connection (URL, password, the retrying call and write, the outage
loop), ids (entry IDs), tree (events, snapshot, epoch), log (one stream's
log), followers (the blocking reads and cursors), store (all of it run
together, and this host's figures).
"""

from .connection import BackendError, probe_backend
from .store import RedisStore

__all__ = ["BackendError", "RedisStore", "probe_backend"]
