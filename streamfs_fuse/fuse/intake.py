"""How pyfuse3's workers take requests off /dev/fuse, at one scheduler pass or less each.

pyfuse3 reaches trio only through its module attribute ``pyfuse3.trio`` (the
seam that ``pyfuse3.asyncio.enable()`` uses to swap in asyncio). Each worker
takes a request like this::

    async with trio.Lock():                 # read_lock, shared by all workers
        await trio.lowlevel.wait_readable(fd)
    fuse_session_receive_buf(...)           # no await in between

With real trio that costs two passes of the scheduler per request, even when
requests are already queued: one to hand the lock over, one for epoll. With
100 readers each message is 200 requests, and those passes were most of the
daemon's CPU. :func:`install` gives pyfuse3 a view of trio in which both are
cheap when nothing has to wait:

- :class:`ReadLock` is taken at once, with no checkpoint, when it is free,
  also ahead of workers parked on it.
- :class:`Readiness` returns at once when ``poll`` with no timeout says a
  request is queued; otherwise, and after every :data:`YIELD_EVERY` requests
  taken without a pass of the scheduler, it waits in trio's epoll as before,
  so that a stream of requests cannot starve the other tasks.

Invariant: only the lock holder looks at the fd, and it receives the request
without an await after looking, so no worker ever blocks the thread in a
read of an empty /dev/fuse.
"""

from __future__ import annotations

import select
import types

import pyfuse3
import trio

__all__ = ["ReadLock", "Readiness", "YIELD_EVERY", "install"]

#: Requests taken in a row without letting other tasks run. Each is at most a
#: few tens of µs of work, so other tasks wait a millisecond at worst.
YIELD_EVERY = 32


class Readiness:
    """pyfuse3's ``wait_readable`` for its one /dev/fuse descriptor."""

    __slots__ = ("_poll", "_fd", "_in_a_row")

    def __init__(self) -> None:
        self._poll = select.poll()
        self._fd: int | None = None
        self._in_a_row = 0

    async def wait_readable(self, fd: int) -> None:
        """Return once ``fd`` is readable: at once, if it is now and others had a turn lately."""
        if fd != self._fd:
            if self._fd is not None:
                self._poll.unregister(self._fd)
            self._poll.register(fd, select.POLLIN)
            self._fd = fd
        if self._in_a_row < YIELD_EVERY and self._poll.poll(0):
            self._in_a_row += 1
            return
        self._in_a_row = 0
        await trio.lowlevel.wait_readable(fd)


class ReadLock:
    """A lock whose free acquire does not yield (pyfuse3's only use is ``async with``).

    Not fair, on purpose: a worker that comes back from a request takes a free
    lock at once, ahead of the workers parked on it, since any worker will do
    to take the next request. Handing the lock to the longest-waiting worker
    cost a pass of the scheduler per request whenever one worker had been
    waiting in epoll. Releasing still wakes one parked worker, which takes the
    lock if it is free when it runs and parks again if not (one at a time), so
    that while workers wait, one of them always ends up waiting on the fd.
    """

    __slots__ = ("_held", "_waiters", "_waking")

    def __init__(self) -> None:
        self._held = False
        self._waiters = trio.lowlevel.ParkingLot()
        # A parked worker was woken and has not run yet: waking more would
        # only have them park again.
        self._waking = False

    async def __aenter__(self) -> None:
        while self._held:
            await self._waiters.park()
            self._waking = False
        self._held = True

    async def __aexit__(self, *exc_info: object) -> None:
        self._held = False
        if self._waiters and not self._waking:
            self._waking = True
            self._waiters.unpark()


class _Module(types.ModuleType):
    """A module that is ``target`` except for the names given."""

    def __init__(self, name: str, target: types.ModuleType, **overrides: object) -> None:
        super().__init__(name)
        self._target = target
        self.__dict__.update(overrides)

    def __getattr__(self, name: str) -> object:
        return getattr(self._target, name)


def install() -> None:
    """Make pyfuse3 take requests through :class:`ReadLock` and :class:`Readiness`."""
    lowlevel = _Module("trio.lowlevel", trio.lowlevel,
                       wait_readable=Readiness().wait_readable)
    pyfuse3.trio = _Module("trio", trio, Lock=ReadLock, lowlevel=lowlevel)
