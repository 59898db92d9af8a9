"""How pyfuse3's workers take requests, without a kernel: the read lock and the readiness wait."""

import os

import trio
import trio.testing

from streamfs_fuse.fuse.intake import YIELD_EVERY, ReadLock, Readiness


async def test_the_read_lock_admits_one_at_a_time_and_every_waiter_gets_it():
    lock, inside, done = ReadLock(), [], []

    async def worker(n):
        for _ in range(5):
            async with lock:
                inside.append(n)
                assert len(inside) == 1, "two workers held the lock"
                await trio.sleep(0)
                inside.remove(n)
            await trio.sleep(0)
        done.append(n)

    with trio.fail_after(10):  # a lost wake-up would leave workers parked for ever
        async with trio.open_nursery() as nursery:
            for n in range(20):
                nursery.start_soon(worker, n)
    assert sorted(done) == list(range(20)), "a worker parked on the lock was never woken"


async def test_a_free_read_lock_is_taken_without_a_pass_of_the_scheduler():
    lock = ReadLock()
    with trio.CancelScope() as scope:
        scope.cancel()  # any checkpoint inside would raise Cancelled
        async with lock:
            pass
    assert not scope.cancelled_caught


async def test_readiness_returns_at_once_while_requests_are_queued_then_yields():
    readiness = Readiness()
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, b"request")
        with trio.CancelScope() as scope:
            scope.cancel()
            for _ in range(YIELD_EVERY):
                await readiness.wait_readable(read_end)
        assert not scope.cancelled_caught, "a queued request waited for the scheduler"
        with trio.CancelScope() as scope:
            scope.cancel()
            await readiness.wait_readable(read_end)
        assert scope.cancelled_caught, "other tasks never got a turn"
    finally:
        os.close(read_end)
        os.close(write_end)


async def test_readiness_waits_for_a_request_when_none_is_queued():
    readiness = Readiness()
    read_end, write_end = os.pipe()
    try:
        woke = trio.Event()

        async def wait():
            await readiness.wait_readable(read_end)
            woke.set()

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(wait)
                await trio.testing.wait_all_tasks_blocked()
                assert not woke.is_set()
                os.write(write_end, b"request")
        assert woke.is_set()
    finally:
        os.close(read_end)
        os.close(write_end)
