"""Section redis: two daemons A and B on one Redis namespace, writing on A and reading
on B, beside a bare coredis XADD -> XREAD pair on the same Redis."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from streamfs_fuse.testing import RedisServer, wait_until
from streamfs_fuse.testing.proc import Processes

from .common import (MiB, Sizes, child, collect, dd_bytes, mounted, percentiles, send_messages,
                     start, wait_readers)
from .report import Report, mbs, verdict


@contextlib.contextmanager
def redis_server(url: str | None):
    """``url``, or else a private redis-server on a free loopback port, stopped by PID."""
    if url:
        yield url
        return
    if shutil.which("redis-server") is None:
        raise RuntimeError("redis-server is not installed: apt-get install redis-server,"
                           " or give --backend URL")
    with tempfile.TemporaryDirectory(prefix="streamfs-bench-redis-") as tmp:
        server = RedisServer(Path(tmp))
        try:
            yield server.url
        finally:
            server.stop()


@contextlib.contextmanager
def two_hosts(url: str):
    """Mounts A and B of a fresh namespace in ``url``; yields (A/s, B/s, mount B)."""
    # The ring in Redis is how far B may fall behind A: A's writer never
    # waits for another host's readers.
    backend = ("--slow-reader=block", "--ring-buffer-size=64MB", "--backend", url,
               "--namespace", f"bench-{os.urandom(4).hex()}")
    with mounted(*backend) as a, mounted(*backend) as b:
        (a / "s").touch()
        wait_until((b / "s").exists, timeout=60, interval=0.05, what="the stream on mount B")
        yield a / "s", b / "s", b


def redis_throughput(url: str, sizes: Sizes, readers: int) -> dict[str, float]:
    """dd 1 MiB writes into A, N dd readers on B: delivered bytes/s, and the share lost."""
    count = sizes.redis_bytes // MiB
    with two_hosts(url) as (a, b, mount_b):
        dds = [start(mount_b, ["dd", f"if={b}", "of=/dev/null", "bs=1M"],
                     stderr=subprocess.PIPE, text=True) for _ in range(readers)]
        wait_readers(b, readers)
        started = time.perf_counter()
        subprocess.run(["dd", "if=/dev/zero", f"of={a}", "bs=1M", f"count={count}",
                        "status=none"], check=True)
        a.unlink()
        received = sum(dd_bytes(dd.communicate()[1]) for dd in dds)
        elapsed = time.perf_counter() - started
        return {"delivered": received / elapsed,
                "lost_percent": 100 * (1 - received / (readers * count * MiB))}


def redis_latency(url: str, sizes: Sizes) -> dict[str, float]:
    """1 KiB every 1 ms written into A, read on B."""
    with two_hosts(url) as (a, b, mount_b):
        reader = start(mount_b, child("latency_reader", b), stdout=subprocess.PIPE, text=True)
        reader.stdout.readline()
        wait_readers(b, 1)
        fd = os.open(a, os.O_WRONLY)
        try:
            sent = send_messages(fd, sizes.redis_latency_seconds, interval=0.001)
        finally:
            os.close(fd)
        a.unlink()
        latencies = collect([reader])
        assert len(latencies) == sent, "messages went missing"
        return percentiles(latencies)


def redis_pair(url: str, count: int, size: int, interval: float) -> tuple[float, list[int]]:
    """A bare XADD -> XREAD pair on ``url``, in two processes (children/redis_peer.py):
    (bytes/s, latencies in ns)."""
    key, numbers = f"bench-pair-{os.urandom(4).hex()}", [count, size, interval]
    with Processes() as processes:
        reader = start(processes, child("redis_peer", "read", url, key, *numbers),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        reader.stdout.readline()
        writer = start(processes, child("redis_peer", "write", url, key, *numbers),
                       stderr=subprocess.PIPE, text=True)
        if writer.wait(300):
            raise RuntimeError(f"the XADD writer failed: {writer.communicate()[1].strip()}")
        out, err = reader.communicate(timeout=60)
        if reader.returncode:
            raise RuntimeError(f"the XREAD reader failed: {err.strip()}")
        rate, latencies = out.splitlines()
        return float(rate), [int(x) for x in latencies.split()]


def redis_ceiling(url: str, sizes: Sizes) -> float:
    return redis_pair(url, sizes.redis_bytes // MiB, MiB, 0)[0]


def redis_ceiling_latency(url: str, sizes: Sizes) -> dict[str, float]:
    return percentiles(redis_pair(url, int(sizes.redis_latency_seconds * 1000), 1024, 0.001)[1])


def redis_section(report: Report, sizes: Sizes, args) -> None:
    with redis_server(args.backend) as url:
        ceiling = report.measure("redis_ceiling", redis_ceiling, url, sizes)
        for readers in sizes.redis_readers:
            ours = report.measure(f"redis_{readers}", redis_throughput, url, sizes, readers)
            ratio = ours["delivered"] / readers / ceiling
            report.results[f"redis_{readers}"]["ratio_vs_ceiling"] = ratio
            per, lost = " per reader" if readers > 1 else "", ours["lost_percent"]
            report.row(f"A -> B via Redis, {readers} dd reader(s)", mbs(ours["delivered"]),
                       f"XADD/XREAD {mbs(ceiling)}",
                       verdict(ratio >= 0.7,
                               f"{ratio:.2f}x{per} (>= 0.7x); trimmed before B read"
                               f" them: {lost:.1f}%"))
        engine = report.measure("redis_latency_ceiling", redis_ceiling_latency, url, sizes)
        lat = report.measure("redis_latency", redis_latency, url, sizes)
        ratio = lat["p99_ms"] / engine["p99_ms"]
        report.results["redis_latency"]["p99_vs_ceiling"] = ratio
        report.row("A -> B via Redis, latency 1 KiB/1 ms",
                   f"p50 {lat['p50_ms']:.2f} p99 {lat['p99_ms']:.2f} ms",
                   f"XADD/XREAD p99 {engine['p99_ms']:.2f} ms",
                   verdict(lat["p99_ms"] < 5,
                           f"p99 < 5 ms; {ratio:.1f}x; max {lat['max_ms']:.1f}"))
