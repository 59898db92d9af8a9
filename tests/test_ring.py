import pytest

from streamfs_fuse.ring import RingBuffer


def test_trims_oldest_chunks_by_bytes():
    ring = RingBuffer(10)
    for chunk in (b"aaaa", b"bbbb", b"cc"):
        ring.append(chunk)
    assert list(ring) == [b"aaaa", b"bbbb", b"cc"] and ring.nbytes == 10
    ring.append(b"d")
    assert list(ring) == [b"bbbb", b"cc", b"d"] and ring.nbytes == 7


def test_counts_bytes_not_chunks():
    ring = RingBuffer(1000)
    for _ in range(1000):
        ring.append(b"x")
    assert len(ring) == 1000 and ring.nbytes == 1000
    ring.append(b"y" * 500)
    assert ring.nbytes == 1000 and len(ring) == 501


def test_chunk_larger_than_ring_is_not_kept():
    ring = RingBuffer(4)
    ring.append(b"ab")
    ring.append(b"toolong")
    assert list(ring) == [] and ring.nbytes == 0


def test_newest_returns_whole_chunks_that_fit_oldest_first():
    ring = RingBuffer(100)
    for chunk in (b"1111", b"22", b"333"):
        ring.append(chunk)
    assert ring.newest(100) == [b"1111", b"22", b"333"]
    assert ring.newest(6) == [b"22", b"333"]
    assert ring.newest(4) == [b"333"]
    assert ring.newest(2) == []


def test_negative_capacity_is_refused():
    with pytest.raises(ValueError):
        RingBuffer(-1)
