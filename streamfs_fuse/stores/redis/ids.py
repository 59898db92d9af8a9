"""Redis stream entry IDs as this store reads them: a chunk's is ``OFFSET-K``, a tree
event's ``MS-SEQ``, and inode numbers and shards are made from the latter."""

from __future__ import annotations

import coredis.exceptions

from .connection import SHARDS

__all__ = ["MAX_SEQUENCE", "SEQUENCE_BITS", "as_text", "entry_key", "offset_of", "refused",
           "shard_of"]

#: Bits of an inode number that hold its tree entry's sequence within a millisecond.
SEQUENCE_BITS = 20
#: The largest sequence number of an entry ID: the end of a removed stream.
MAX_SEQUENCE = 2**64 - 1


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
