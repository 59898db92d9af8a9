"""Notice that a process blocked in read() has been told to stop.

Once the daemon holds a FUSE read, the kernel waits for the answer without
letting signals through, and pyfuse3 passes on no FUSE_INTERRUPT: Ctrl-C, or
even SIGKILL, on ``cat`` of an idle stream would do nothing until data comes.
So the daemon looks for itself. For each process with a read waiting here it
keeps /proc/PID/status open and, every fraction of a second, reads the pending
and blocked signal masks; when a signal is pending that would stop or
interrupt the process, the read is answered with EINTR and the kernel
delivers the signal.

Signals whose default action is to do nothing (SIGCHLD, SIGWINCH, SIGURG,
SIGCONT) and the stop signals never interrupt a read: a program that handles
them, usually with SA_RESTART, would see a spurious EINTR, and a stopped
reader should resume its read when continued.

The process watched is the thread group of the thread that opened the file,
so a read by any of its threads can be ended, even after the opener exited.
What cannot be seen: a signal that another thread of the reader's process
handles at once (gst-launch and others run their handlers on a thread of
their own) leaves nothing pending, so such a read ends only with data, rm,
unmount or a signal that kills the process.
"""

from __future__ import annotations

import logging
import os
import signal
import time

import trio

from ..core.wait import WaitGroup, Waiter

__all__ = ["SignalWatch"]

log = logging.getLogger(__name__)


def _mask(*signals: signal.Signals) -> int:
    return sum(1 << (s - 1) for s in signals)


#: Pending signals that leave a blocked read alone.
HARMLESS = _mask(signal.SIGCHLD, signal.SIGWINCH, signal.SIGURG, signal.SIGCONT,
                 signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU)

#: How often blocked readers are checked: every 0.2 s, or less often when a
#: round of checks takes long enough that the watcher would use more than
#: CPU_SHARE of a core. A process costs 12–25 µs a check depending on the
#: kernel, so a fixed rate did not keep the promise: 1,000 idle cat readers
#: checked every 0.8 s cost 1.5% of a core on one machine, 3.3% on another.
MIN_INTERVAL = 0.2
CPU_SHARE = 0.01


class _Process:
    """A process that has streams open, and the waiters of its handles."""

    __slots__ = ("pid", "waiters", "parked", "_status_fd")

    def __init__(self, pid: int) -> None:
        self.pid = pid
        #: One per open handle.
        self.waiters: set[Waiter] = set()
        #: Their operations waiting right now.
        self.parked = WaitGroup()
        self._status_fd: int | None = None

    def signalled(self) -> bool:
        """Whether a signal is pending that should end the process's read, or it is exiting.

        A process that was killed while one of its threads waits here has a
        main thread that is already a zombie, with nothing pending any more.
        """
        try:
            if self._status_fd is None:
                self._status_fd = os.open(f"/proc/{self.pid}/status", os.O_RDONLY)
            status = os.pread(self._status_fd, 4096, 0)
        except OSError:
            return False  # gone, or no file descriptors left: nothing to tell
        state = status.find(b"\nState:\t")
        if state >= 0 and status[state + 8:state + 9] in (b"Z", b"X"):
            return True
        pending = _field(status, b"\nSigPnd:") | _field(status, b"\nShdPnd:")
        return bool(pending & ~_field(status, b"\nSigBlk:") & ~HARMLESS)

    def close(self) -> None:
        if self._status_fd is not None:
            os.close(self._status_fd)
            self._status_fd = None


def _process_of(tid: int) -> int:
    """The process (thread group) of thread ``tid``; FUSE names the thread."""
    try:
        with open(f"/proc/{tid}/status", "rb") as f:
            return int(_field(f.read(), b"\nTgid:", 10)) or tid
    except (OSError, ValueError):
        return tid


def _field(status: bytes, name: bytes, base: int = 16) -> int:
    start = status.find(name)
    if start < 0:
        return 0
    start += len(name)
    end = status.find(b"\n", start)
    return int(status[start:end], base)


class SignalWatch:
    """Ends the blocked reads and writes of processes that have a stopping signal pending."""

    def __init__(self) -> None:
        self._processes: dict[int, _Process] = {}

    def opened(self, tid: int, waiter: Waiter) -> int:
        """Thread ``tid`` opened a handle whose operations wait through ``waiter``.

        Return the process to pass to :meth:`released`. The whole process is
        watched, not the thread: any of its threads may read the descriptor,
        and the one that opened it may be gone by then.
        """
        # A process's main thread is the process: no need to read /proc (30 µs an open).
        pid = tid if tid in self._processes else _process_of(tid)
        process = self._processes.get(pid)
        if process is None:
            process = self._processes[pid] = _Process(pid)
        process.waiters.add(waiter)
        waiter.group = process.parked
        return pid

    def released(self, pid: int, waiter: Waiter) -> None:
        process = self._processes[pid]
        process.waiters.remove(waiter)
        if not process.waiters:
            process.close()
            del self._processes[pid]

    def check(self) -> None:
        """Interrupt the waits of signalled processes."""
        for process in self._processes.values():
            # One look per process: scanning the handles of processes that hold
            # 20,000 idle readers each took milliseconds a check, stalling every stream.
            if process.parked.parked:
                if process.signalled():
                    log.debug("pid %d has a signal pending: interrupting its waits", process.pid)
                    for waiter in [w for w in process.waiters if w.parked]:
                        waiter.interrupt()

    async def run(self) -> None:
        """Check every blocked reader's process, for as long as the mount lives."""
        interval = MIN_INTERVAL
        while True:
            await trio.sleep(interval)
            started = time.perf_counter()
            self.check()
            interval = max(MIN_INTERVAL, (time.perf_counter() - started) / CPU_SHARE)
