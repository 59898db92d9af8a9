"""The ring of history: whole writes, newest kept, small writes coalesced into units."""

import random

import pytest

from streamfs_fuse.core.chunk import CHUNK_OVERHEAD, Chunk
from streamfs_fuse.core.ring import SMALL_CHUNK, UNIT_SIZE, RingBuffer


def make_ring(capacity):
    evicted = []
    return RingBuffer(capacity, evicted.append), evicted


def payload(ring):
    return [bytes(chunk.data) for chunk in ring.history()]


def test_trims_oldest_writes_by_bytes():
    # A ring this small has one-byte units: every write is its own unit.
    ring, _ = make_ring(10)
    for data in (b"aaaa", b"bbbb", b"cc"):
        ring.append(Chunk(data, 0))
    assert payload(ring) == [b"aaaa", b"bbbb", b"cc"] and ring.nbytes == 10
    ring.append(Chunk(b"d", 0))
    assert payload(ring) == [b"bbbb", b"cc", b"d"] and ring.nbytes == 7


def test_large_chunks_are_shared_with_readers_not_copied():
    ring, evicted = make_ring(3 * SMALL_CHUNK)
    chunks = [Chunk(bytes([i]) * SMALL_CHUNK, 0) for i in range(4)]
    for chunk in chunks[:3]:
        ring.append(chunk)
    assert ring.history() == chunks[:3] and all(c.in_ring for c in chunks[:3])
    ring.append(chunks[3])
    assert ring.history() == chunks[1:]
    assert evicted == [chunks[0]] and not chunks[0].in_ring
    assert ring.nbytes == 3 * SMALL_CHUNK and len(ring) == 3


def test_counts_bytes_not_chunks():
    ring, _ = make_ring(1000)
    for _ in range(1000):
        ring.append(Chunk(b"x", 0))
    assert ring.nbytes == 1000 and b"".join(payload(ring)) == b"x" * 1000
    # 1000 writes, but a unit per sixteenth of the ring (and an open tail).
    assert len(ring) <= 17
    ring.append(Chunk(b"y" * 500, 0))
    history = b"".join(payload(ring))
    assert ring.nbytes == len(history) <= 1000
    assert history.endswith(b"y" * 500) and history.strip(b"x") == b"y" * 500
    assert len(history) >= 1000 * 15 // 16


def test_chunk_larger_than_ring_is_not_kept_and_clears_the_history():
    # Keeping the older history would leave a gap before the next write.
    ring, _ = make_ring(4)
    ring.append(Chunk(b"ab", 0))
    ring.append(Chunk(b"toolong", 0))
    assert ring.history() == [] and ring.nbytes == 0 and len(ring) == 0
    big = Chunk(b"z" * (SMALL_CHUNK + 1), 0)
    ring, evicted = make_ring(SMALL_CHUNK)
    kept = Chunk(b"k" * SMALL_CHUNK, 0)
    ring.append(kept)
    ring.append(big)
    assert ring.history() == [] and evicted == [kept] and not big.in_ring


def test_zero_capacity_keeps_nothing():
    ring, evicted = make_ring(0)
    for data in (b"a", b"b" * 100, b"c" * SMALL_CHUNK):
        ring.append(Chunk(data, 0))
    assert ring.history() == [] and ring.nbytes == 0 and len(ring) == 0 and evicted == []


def test_small_writes_come_back_whole_and_in_order():
    ring, _ = make_ring(1 << 20)
    writes = [bytes([i % 251]) * (1 + (i * 37) % (SMALL_CHUNK - 1)) for i in range(300)]
    for data in writes:
        ring.append(Chunk(data, 0))
    total = sum(map(len, writes))
    assert total <= 1 << 20
    assert b"".join(payload(ring)) == b"".join(writes) and ring.nbytes == total
    # Coalesced: far fewer units than writes.
    assert len(ring) < len(writes) // 4


def test_eviction_keeps_whole_writes():
    """History after eviction starts at a write's first byte."""
    capacity = 5000
    ring, _ = make_ring(capacity)
    writes = [b"<%d:" % i + b"." * (i % 97) + b">" for i in range(2000)]
    for data in writes:
        ring.append(Chunk(data, 0))
    history = b"".join(payload(ring))
    assert len(history) <= capacity
    assert history.startswith(b"<") and b"".join(writes).endswith(history)
    assert len(history) >= capacity * 15 // 16 - SMALL_CHUNK


def test_history_after_a_million_one_byte_writes():
    capacity = 64 * 1024
    ring, _ = make_ring(capacity)
    written = bytes(i % 251 for i in range(1_000_000))
    for i in range(len(written)):
        ring.append(Chunk(written[i:i + 1], 0))
    history = b"".join(payload(ring))
    assert len(history) >= capacity * 15 // 16 and ring.nbytes == len(history) <= capacity
    assert history == written[-len(history):]
    assert ring.unit_size == min(UNIT_SIZE, capacity // 16)
    assert len(ring) <= capacity // ring.unit_size + 1


def test_unit_size_is_a_sixteenth_of_the_ring_up_to_unit_size():
    assert make_ring(1 << 30)[0].unit_size == UNIT_SIZE
    assert make_ring(160_000)[0].unit_size == 10_000
    assert make_ring(5)[0].unit_size == 1


def test_small_open_tail_is_given_as_a_private_copy():
    ring, _ = make_ring(1 << 20)
    ring.append(Chunk(b"abc", 0))
    (tail,) = ring.history()
    assert tail.data == b"abc" and not tail.in_ring and tail.refs == 0
    ring.append(Chunk(b"def", 0))
    assert tail.data == b"abc"
    assert b"".join(payload(ring)) == b"abcdef"


def test_open_tail_of_small_chunk_size_or_more_is_closed_and_shared():
    ring, _ = make_ring(1 << 20)
    for _ in range(SMALL_CHUNK // 1000 + 1):
        ring.append(Chunk(b"q" * 1000, 0))
    (unit,) = ring.history()
    assert unit.in_ring and ring.history() == [unit]
    ring.append(Chunk(b"r", 0))
    history = ring.history()
    assert history[0] is unit and history[1].data == b"r"


def test_a_large_chunk_closes_the_open_unit_and_keeps_order():
    ring, _ = make_ring(1 << 20)
    big = Chunk(b"B" * SMALL_CHUNK, 0)
    ring.append(Chunk(b"s1", 0))
    ring.append(big)
    ring.append(Chunk(b"s2", 0))
    history = ring.history()
    assert [bytes(c.data) for c in history] == [b"s1", big.data, b"s2"]
    assert history[1] is big and history[0].in_ring


def test_clear_evicts_everything():
    ring, evicted = make_ring(1 << 20)
    big = Chunk(b"B" * SMALL_CHUNK, 0)
    ring.append(Chunk(b"small", 0))
    ring.append(big)
    ring.append(Chunk(b"tail", 0))
    ring.clear()
    assert ring.history() == [] and ring.nbytes == 0 and len(ring) == 0
    assert big in evicted and not big.in_ring


def test_negative_capacity_is_refused():
    with pytest.raises(ValueError):
        make_ring(-1)


def test_history_knows_where_each_unit_starts_in_the_stream():
    ring = RingBuffer(1 << 20, lambda chunk: None)
    offset = 0
    for data in (b"a" * 10, b"b" * SMALL_CHUNK, b"c" * 5, b"d" * 7):
        ring.append(Chunk(data, offset))
        offset += len(data)
    history = ring.history()
    assert [(c.offset, c.data[:1], len(c.data)) for c in history] == [
        (0, b"a", 10), (10, b"b", SMALL_CHUNK), (10 + SMALL_CHUNK, b"c", 12)]


@pytest.mark.parametrize("capacity", [0, 1, 100, 3 * SMALL_CHUNK, 4 * UNIT_SIZE])
def test_footprint_is_payload_and_one_overhead_per_unit_through_every_change(capacity):
    """What the memory cap counts, kept as the ring changes (an attribute, not a sum)."""
    ring, _ = make_ring(capacity)
    rng = random.Random(capacity)
    for step in range(2000):
        choice = rng.random()
        if choice < 0.85:
            size = rng.choice([1, 50, SMALL_CHUNK - 1, SMALL_CHUNK, 3 * SMALL_CHUNK, UNIT_SIZE])
            ring.append(Chunk(b"x" * size, 0), step)
        elif choice < 0.93:
            ring.evict_oldest()
        elif choice < 0.98:
            ring.history()  # may close the open unit: the count of units stays
        else:
            ring.clear()
        assert ring.footprint == ring.nbytes + CHUNK_OVERHEAD * len(ring)
