"""What the benchmark reads of other processes, from /proc: memory, CPU time and open
descriptors; and a set of processes killed by PID when a run ends."""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
from pathlib import Path

from .waits import wait_until


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


def rss_kib(pid: int) -> int:
    """The resident set of ``pid`` now (VmRSS), in KiB."""
    return _status_kib(pid, "VmRSS")


def rss_peak_kib(pid: int) -> int:
    """The highest resident set ``pid`` has had (VmHWM), in KiB."""
    return _status_kib(pid, "VmHWM")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time ``pid`` has used, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class PeakRSS:
    """The highest VmRSS of ``pid``, sampled every 10 ms while the block runs."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak_kib = pid, rss_kib(pid)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample)

    def _sample(self) -> None:
        while not self._done.wait(0.01):
            self.peak_kib = max(self.peak_kib, rss_kib(self.pid))

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()


def holds_open(pid: int, target: str) -> bool:
    """Whether process ``pid`` has a descriptor open on the file ``target`` (a real path)."""
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    return True
    return False


def wait_open(pids: list[int], path: Path, timeout: float = 60) -> None:
    """Wait until every process in ``pids`` holds ``path`` open.

    For a FUSE daemon without the readers xattr: a reader's open() has been
    answered once the descriptor shows in /proc/PID/fd.
    """
    target = os.path.join(os.path.realpath(path.parent), path.name)
    waiting = set(pids)

    def all_open() -> bool:
        waiting.difference_update([pid for pid in waiting if holds_open(pid, target)])
        return not waiting

    wait_until(all_open, timeout=timeout, interval=0.01,
               what=f"{len(pids)} processes to open {path}")


class Processes:
    """Processes started outside a Mount, killed by PID when it closes.

    ``spawn`` has Mount.spawn's signature, but discards output unless asked.
    """

    def __init__(self) -> None:
        self.started: list[subprocess.Popen] = []

    def spawn(self, args, **kwargs) -> subprocess.Popen:
        kwargs.setdefault("stdout", subprocess.DEVNULL)
        kwargs.setdefault("stderr", subprocess.DEVNULL)
        process = subprocess.Popen(args, **kwargs)
        self.started.append(process)
        return process

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """SIGKILL every process still running, then reap them all."""
        for process in self.started:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
        for process in self.started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.communicate(timeout=10)
        self.started.clear()
