"""What every section uses: the sizes, fresh mounts of streamfs-fuse or of the
--reference daemon, the child programs, and 1 KiB message latencies."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from streamfs_fuse.testing import Mount, accepts, is_mounted, wait_until, xattr
from streamfs_fuse.testing.proc import Processes, wait_open

MiB = 1024 * 1024
#: The child programs the sections run, one file each.
CHILDREN = Path(__file__).resolve().parent / "children"


def child(name: str, *args) -> list[str]:
    """The command line of child program ``name`` (children/NAME.py) with ``args``."""
    return [sys.executable, str(CHILDREN / f"{name}.py"), *map(str, args)]


@dataclass
class Sizes:
    """How much each workload moves: full runs and --quick runs."""

    throughput_bytes: int = 2048 * MiB
    fanout_readers: tuple[int, ...] = (4, 16, 64)
    fanout_bytes: int = 256 * MiB
    latency_seconds: float = 10.0
    latency_readers: tuple[int, ...] = (1, 100)
    idle_readers: int = 1000
    idle_seconds: float = 10.0
    flood_readers: int = 100
    flood_bytes: int = 2048 * MiB
    drop_bytes: int = 1024 * MiB
    http_readers: tuple[int, ...] = (1, 4, 16, 64)
    http_total_bytes: int = 1024 * MiB  # delivered per run: each reader gets this / N
    http_min_bytes: int = 16 * MiB  # but at least this
    http_latency_seconds: float = 10.0
    http_latency_readers: int = 16
    stalled_http_readers: int = 1000
    stalled_http_bytes: int = 48 * MiB  # 16 MiB past the cap: it then sheds on every write
    idle_http_readers: int = 100
    icecast: bool = True
    redis_bytes: int = 1024 * MiB
    redis_readers: tuple[int, ...] = (1, 16)
    redis_latency_seconds: float = 10.0
    scale_readers: int = 100_000
    scale_processes: int = 5
    join_gop_seconds: float = 10.0
    join_after_seconds: float = 33.0  # the 2 MB ring then holds 15 s: from mid-GOP, 2 keyframes
    join_ring: str = "2MB"
    index_seconds: float = 10.0  # of 20 Mbit/s MPEG-TS

    @classmethod
    def quick(cls) -> Sizes:
        return cls(throughput_bytes=32 * MiB, fanout_readers=(4, 16), fanout_bytes=16 * MiB,
                   latency_seconds=0.5, latency_readers=(1, 10), idle_readers=50,
                   idle_seconds=1.0, flood_readers=10, flood_bytes=64 * MiB,
                   drop_bytes=64 * MiB, http_readers=(1, 4), http_total_bytes=32 * MiB,
                   http_min_bytes=8 * MiB, http_latency_seconds=0.5, stalled_http_readers=100,
                   stalled_http_bytes=8 * MiB, idle_http_readers=20, icecast=False,
                   redis_bytes=32 * MiB, redis_latency_seconds=0.5, scale_readers=2000,
                   join_gop_seconds=1.0, join_after_seconds=3.5, join_ring="256KB",
                   index_seconds=2.0)

    def http_volume(self, readers: int) -> int:
        """Bytes each of ``readers`` HTTP readers receives, in whole MiB."""
        return max(self.http_min_bytes, self.http_total_bytes // readers) // MiB * MiB


# -- mounts -------------------------------------------------------------------

def start(owner, args, **kwargs) -> subprocess.Popen:
    """``owner.spawn(args)`` (a Mount or Processes kills it by PID), output discarded
    unless asked for."""
    kwargs.setdefault("stdout", subprocess.DEVNULL)
    kwargs.setdefault("stderr", subprocess.DEVNULL)
    return owner.spawn(args, **kwargs)


@contextlib.contextmanager
def mounted(*args: str):
    """A fresh streamfs-fuse in a temporary directory, with options ``args``: a Mount."""
    with tempfile.TemporaryDirectory(prefix="streamfs-bench-") as tmp:
        path = Path(tmp) / "mnt"
        path.mkdir()
        with Mount(path, Path(tmp) / "daemon.log", list(args)) as mount:
            yield mount


class ReferenceMount(Processes):
    """The --reference daemon: COMMAND, whitespace-split, {mnt} the mountpoint ``path``.

    Started by PID in the foreground and waited on until ``path`` is mounted.
    close(), also on failure: the readers it spawned are killed by PID, the
    mount is unmounted with fusermount3 -u, then the daemon is killed by PID
    if it has not ended.
    """

    def __init__(self, command: str, path: Path, log_path: Path) -> None:
        super().__init__()
        self.path = path
        with open(log_path, "wb") as log:
            self.daemon = subprocess.Popen(
                [word.replace("{mnt}", str(path)) for word in command.split()],
                stdout=log, stderr=log)
        try:
            wait_until(lambda: os.path.ismount(path) or self.daemon.poll() is not None,
                       timeout=15, interval=0.01, what=f"the reference to mount ({command})")
            if self.daemon.poll() is not None:
                raise RuntimeError(f"the reference did not mount ({command}): "
                                   + log_path.read_text(errors="replace")[-2000:])
        except BaseException:
            self.close()
            raise

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def close(self) -> None:
        super().close()
        if is_mounted(str(self.path)):
            subprocess.run(["fusermount3", "-u", str(self.path)], check=False,
                           stderr=subprocess.DEVNULL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.daemon.wait(5)
        if self.daemon.poll() is None:
            self.daemon.kill()
            self.daemon.wait(10)
        if is_mounted(str(self.path)):  # busy or dead: detach it
            subprocess.run(["fusermount3", "-u", "-z", str(self.path)], check=False)


@contextlib.contextmanager
def fuse_mounted(reference: str | None, *args: str):
    """streamfs-fuse with ``args`` or, given a command, the --reference daemon."""
    if not reference:
        with mounted(*args) as mount:
            yield mount
        return
    with tempfile.TemporaryDirectory(prefix="streamfs-bench-ref-") as tmp:
        path = Path(tmp) / "mnt"
        path.mkdir()
        with ReferenceMount(reference, path, Path(tmp) / "daemon.log") as mount:
            yield mount


def wait_readers(path: Path, count: int, timeout: float = 60, figure: str = "readers") -> None:
    """Wait until the stream counts at least ``count`` readers (or, say, ``waiting_reads``)."""
    wait_until(lambda: xattr(path, figure) >= count, timeout=timeout,
               what=f"{count} {figure} of {path.name}")


def wait_registered(reference: str | None, path: Path, readers: list[subprocess.Popen]) -> None:
    """Every reader process is a registered reader of ``path``: by the readers xattr on
    streamfs-fuse, by the processes' open descriptors on the reference."""
    if reference:
        wait_open([reader.pid for reader in readers], path)
    else:
        wait_readers(path, len(readers))


def wait_listening(port: int, process: subprocess.Popen, timeout: float = 15) -> None:
    """Wait until ``process`` (still running) accepts connections on the loopback ``port``."""
    wait_until(lambda: accepts(port) or process.poll() is not None, timeout=timeout,
               what=f"a listener on 127.0.0.1:{port}")
    if process.poll() is not None:
        raise RuntimeError(f"nothing came to listen on 127.0.0.1:{port}:"
                           f" the process exited with {process.returncode}")


def dd_bytes(stderr: str) -> int:
    """Bytes copied, from dd's closing line."""
    for line in stderr.splitlines():
        if "bytes" in line and "copied" in line:
            return int(line.split()[0])
    raise RuntimeError(f"no byte count from dd: {stderr!r}")


def with_reference(reference: str | None, ours_fn, *args):
    """The systems Report.compare interleaves: streamfs-fuse, and the reference given one."""
    return [("", ours_fn, *args)] + ([("_reference", ours_fn, *args, reference)]
                                     if reference else [])


# -- 1 KiB messages stamped with their send time ----------------------------------

def send_messages(fds: int | list[int], seconds: float, interval: float = 0.001,
                  stop: threading.Event | None = None) -> int:
    """A 1 KiB message every ``interval`` s, starting with its send time in ns, to each of
    ``fds`` in turn, for ``seconds`` or until ``stop`` is set; returns how many messages
    were sent (to each)."""
    fds = [fds] if isinstance(fds, int) else fds
    sent = 0
    next_send = time.perf_counter()
    deadline = next_send + seconds
    while next_send < deadline and not (stop and stop.is_set()):
        message = b"%020d" % time.time_ns() + b"x" * 1004
        for fd in fds:
            os.write(fd, message)
        sent += 1
        next_send += interval
        time.sleep(max(0.0, next_send - time.perf_counter()))
    return sent


def percentiles(latencies_ns: list[int]) -> dict[str, float]:
    ordered = sorted(latencies_ns)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6

    return {"p50_ms": pick(0.50), "p99_ms": pick(0.99), "max_ms": ordered[-1] / 1e6}


def collect(readers: list[subprocess.Popen]) -> list[int]:
    """The latencies every latency_reader child printed at its EOF."""
    latencies: list[int] = []
    for reader in readers:
        out, _ = reader.communicate(timeout=60)
        latencies += [int(x) for x in out.split()]
    return latencies
