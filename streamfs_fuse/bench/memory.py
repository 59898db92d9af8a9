"""Sections memory, scale, idle and drop: the daemon's RSS and CPU with idle, stalled,
slow and 100,000 readers, and what the drop policy loses."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import statistics
import subprocess
import threading
import time

from streamfs_fuse.testing import wait_parked, wait_until, xattr
from streamfs_fuse.testing.proc import cpu_seconds, rss_kib, rss_peak_kib

from .common import (MiB, Sizes, child, collect, dd_bytes, mounted, percentiles, send_messages,
                     start, wait_readers)
from .report import Report, verdict


def memory_idle_readers(sizes: Sizes) -> dict[str, float]:
    """Peak daemon RSS with N idle readers on a stream whose 6 MB ring is full."""
    with mounted("--ring-buffer-size=6MB") as mount:
        pid, live = mount.daemon.pid, mount / "live"
        live.touch()
        baseline = rss_peak_kib(pid)
        with open(live, "wb", buffering=0) as writer:
            for _ in range(6):
                writer.write(bytes(MiB))
        crowd = start(mount, child("crowd", live, sizes.idle_readers), stdout=subprocess.PIPE,
                      text=True)
        crowd.stdout.readline()
        # Each reader was seeded with the 6 MB of history: let them all drain it.
        with contextlib.suppress(AssertionError):
            wait_until(lambda: not xattr(live, "queued_bytes"), timeout=60, interval=0.1)
        wait_readers(live, sizes.idle_readers)
        wait_parked(live, sizes.idle_readers)
        peak = rss_peak_kib(pid)
        return {"readers": sizes.idle_readers, "idle_daemon_rss_mb": baseline / 1024,
                "peak_rss_mb": peak / 1024, "growth_mb": (peak - baseline) / 1024}


def flood(sizes: Sizes, stalled: int) -> dict[str, float]:
    """A writer at full speed, with ``stalled`` readers stopped by SIGSTOP, under drop."""
    count = sizes.flood_bytes // MiB
    with mounted("--slow-reader=drop") as mount:
        live = mount / "live"
        live.touch()
        cats = [start(mount, ["cat", str(live)]) for _ in range(stalled)]
        if stalled:
            wait_readers(live, stalled)
        for cat in cats:
            cat.send_signal(signal.SIGSTOP)
        started = time.perf_counter()
        subprocess.run(["dd", "if=/dev/zero", f"of={live}", "bs=1M", f"count={count}",
                        "status=none"], check=True)
        elapsed = time.perf_counter() - started
        peak = rss_peak_kib(mount.daemon.pid)
        for cat in cats:
            cat.send_signal(signal.SIGCONT)
        return {"writer_mb_s": count / elapsed, "peak_rss_mb": peak / 1024}


def idle_cpu(sizes: Sizes) -> dict[str, float]:
    """Daemon CPU while N separate cat processes wait on N idle streams."""
    with mounted() as mount:
        paths = [mount / f"s{i}" for i in range(sizes.idle_readers)]
        for path in paths:
            path.touch()
        for path in paths:
            start(mount, ["cat", str(path)])
        for path in paths:
            wait_parked(path)  # each cat is blocked in read
        before, started = cpu_seconds(mount.daemon.pid), time.perf_counter()
        time.sleep(sizes.idle_seconds)  # the workload: this long idle
        used = cpu_seconds(mount.daemon.pid) - before
        return {"readers": sizes.idle_readers,
                "cpu_percent": 100 * used / (time.perf_counter() - started)}


def crowd_processes(readers: int, wanted: int) -> int:
    """How many processes hold ``readers`` descriptors: ``wanted``, or more where the hard
    RLIMIT_NOFILE cannot hold readers/wanted per process (and cannot be raised)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    per_process = -(-readers // wanted)
    if hard != resource.RLIM_INFINITY and hard - 64 < per_process:
        with contextlib.suppress(ValueError, OSError):  # root with CAP_SYS_RESOURCE
            resource.setrlimit(resource.RLIMIT_NOFILE, (per_process + 64,) * 2)
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        if hard - 64 < per_process:
            return -(-readers // (hard - 64))
    return wanted


def timed_writes(path, count: int = 20, gap: float = 0.05) -> list[float]:
    """``count`` single 1 KiB writes to ``path``, ``gap`` s apart: each one's ms."""
    write_ms = []
    fd = os.open(path, os.O_WRONLY)
    try:
        for _ in range(count):
            began = time.perf_counter()
            os.write(fd, b"x" * 1024)
            write_ms.append((time.perf_counter() - began) * 1000)
            time.sleep(gap)
    finally:
        os.close(fd)
    return write_ms


def scale(sizes: Sizes) -> dict[str, float]:
    """N idle readers on one stream (K processes holding N/K descriptors each): the
    daemon's RSS per reader; 20 single 1 KiB writes to that stream, 50 ms apart, and
    meanwhile the latency of 1 KiB every 1 ms on another stream to one reader; then the
    time from SIGKILL of the K processes until the stream counts no reader.

    K is sizes.scale_processes, or more where the hard RLIMIT_NOFILE cannot hold
    N/K descriptors per process (and cannot be raised)."""
    readers = sizes.scale_readers
    k = crowd_processes(readers, sizes.scale_processes)
    # The default slow-reader policy and channel buffer (6 MB per reader, a cap: the
    # 20 KiB written here never fills it).
    with mounted() as mount:
        pid, crowd_stream, other = mount.daemon.pid, mount / "crowd", mount / "other"
        crowd_stream.touch()
        other.touch()
        time.sleep(0.5)
        rss_before = rss_kib(pid)
        started = time.perf_counter()
        crowd = [start(mount, child("idle_crowd", crowd_stream, readers // k + (i < readers % k)),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for i in range(k)]
        for proc in crowd:
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError(f"a crowd process failed: {proc.communicate()[1][-2000:]}")
        wait_readers(crowd_stream, readers, timeout=900)
        opened = time.perf_counter() - started
        rss_crowd = rss_kib(pid)

        reader = start(mount, child("latency_reader", other), stdout=subprocess.PIPE, text=True)
        reader.stdout.readline()
        wait_readers(other, 1)
        stop, sent = threading.Event(), []
        other_fd = os.open(other, os.O_WRONLY)
        try:
            sender = threading.Thread(target=lambda: sent.append(
                send_messages(other_fd, 3600, stop=stop)))
            sender.start()
            try:
                time.sleep(0.2)  # the other stream's messages flow before and after the writes
                write_ms = timed_writes(crowd_stream)
                time.sleep(0.2)
            finally:
                stop.set()
                sender.join()
        finally:
            os.close(other_fd)
        other.unlink()
        latencies = collect([reader])
        assert len(latencies) == sent[0], "messages to the other stream went missing"

        began = time.perf_counter()
        for proc in crowd:
            proc.kill()
        with contextlib.suppress(AssertionError):
            wait_until(lambda: not xattr(crowd_stream, "readers"), timeout=300, interval=0.01)
        released = time.perf_counter() - began
        left = xattr(crowd_stream, "readers")
        for proc in crowd:
            proc.wait()
        other_latency = percentiles(latencies)
        return {"readers": readers, "processes": k, "open_seconds": opened,
                "rss_before_mb": rss_before / 1024, "rss_crowd_mb": rss_crowd / 1024,
                "rss_bytes_per_reader": (rss_crowd - rss_before) * 1024 / readers,
                "write_median_ms": statistics.median(write_ms), "write_max_ms": max(write_ms),
                "write_us_per_reader": statistics.median(write_ms) * 1000 / readers,
                "other_p50_ms": other_latency["p50_ms"], "other_p99_ms": other_latency["p99_ms"],
                "other_max_ms": other_latency["max_ms"], "other_messages": sent[0],
                "release_seconds": released, "readers_left": left}


def drop_behaviour(sizes: Sizes) -> dict[str, float]:
    """Under drop, a fast and a deliberately slow reader of a full-speed writer."""
    count = sizes.drop_bytes // MiB
    with mounted("--slow-reader=drop") as mount:
        live = mount / "live"
        live.touch()
        fast = start(mount, ["dd", f"if={live}", "of=/dev/null", "bs=1M"],
                     stderr=subprocess.PIPE, text=True)
        slow = start(mount, child("slow_reader", live), stdout=subprocess.PIPE, text=True)
        slow.stdout.readline()
        wait_readers(live, 2)
        started = time.perf_counter()
        subprocess.run(["dd", "if=/dev/zero", f"of={live}", "bs=1M", f"count={count}",
                        "status=none"], check=True)
        written = count * MiB
        live.unlink()
        fast_bytes = dd_bytes(fast.communicate()[1])
        fast_elapsed = time.perf_counter() - started
        slow_bytes = int(slow.communicate()[0])
        return {"written_mb": written / MiB, "fast_mb_s": fast_bytes / MiB / fast_elapsed,
                "fast_loss_percent": 100 * (1 - fast_bytes / written),
                "slow_loss_percent": 100 * (1 - slow_bytes / written)}


def memory_section(report: Report, sizes: Sizes, args) -> None:
    idle = report.measure("memory_idle_readers", memory_idle_readers, sizes)
    report.row(f"RSS, {idle['readers']} idle readers, 6 MB ring",
               f"+{idle['growth_mb']:.1f} MB", f"idle daemon {idle['idle_daemon_rss_mb']:.0f} MB",
               verdict(idle["growth_mb"] <= 36, "growth <= ring + 30 MB"))
    free = report.measure("flood_no_stalled", flood, sizes, 0)
    stalled = report.measure("flood_stalled", flood, sizes, sizes.flood_readers)
    bound = 6 + sizes.flood_readers * 6 + 50
    ratio = stalled["writer_mb_s"] / free["writer_mb_s"]
    report.results["flood_stalled"]["writer_ratio"] = ratio
    report.row(f"flood, {sizes.flood_readers} readers SIGSTOPped (drop)",
               f"{stalled['peak_rss_mb']:.1f} MB, {stalled['writer_mb_s']:.0f} MB/s",
               f"alone {free['writer_mb_s']:.0f} MB/s",
               verdict(stalled["peak_rss_mb"] <= bound and ratio >= 0.8,
                       f"RSS <= {bound} MB formula; writer {ratio:.2f}x (>= 0.8x)"))


def scale_section(report: Report, sizes: Sizes, args) -> None:
    big = report.measure("scale", scale, sizes)
    n = big["readers"]
    report.row(f"scale: daemon RSS per idle reader, {n:,}", f"{big['rss_bytes_per_reader']:.0f} B",
               f"+{big['rss_crowd_mb'] - big['rss_before_mb']:.1f} MB"
               f" over {big['rss_before_mb']:.0f} MB",
               verdict(big["rss_bytes_per_reader"] < 2048, "< 2048 bytes per reader"))
    report.row(f"scale: one 1 KiB write to {n:,} readers",
               f"{big['write_median_ms']:.1f} ms, max {big['write_max_ms']:.1f}", "",
               f"reported: {big['write_us_per_reader']:.3f} µs per reader (median of 20)")
    report.row("scale: meanwhile, other stream p50/p99",
               f"{big['other_p50_ms']:.3f}/{big['other_p99_ms']:.3f} ms",
               f"max {big['other_max_ms']:.1f} ms",
               verdict(big["other_p99_ms"] < 5, "p99 < 5 ms, 1 KiB every 1 ms"))
    report.row(f"scale: release {n:,} readers (SIGKILL)", f"{big['release_seconds']:.2f} s",
               f"{big['readers_left']} left" if big["readers_left"] else "",
               verdict(big["release_seconds"] < 5 and not big["readers_left"],
                       "readers xattr at 0 in < 5 s"))


def idle_section(report: Report, sizes: Sizes, args) -> None:
    idle = report.measure("idle_cpu", idle_cpu, sizes)
    report.row(f"idle CPU, {idle['readers']} blocked cat readers", f"{idle['cpu_percent']:.2f}%",
               "", verdict(idle["cpu_percent"] < 2, "< 2% of a core"))


def drop_section(report: Report, sizes: Sizes, args) -> None:
    drop = report.measure("drop_policy", drop_behaviour, sizes)
    report.row("drop: fast + slow reader, full-speed writer",
               f"fast {drop['fast_mb_s']:.0f} MB/s, loss {drop['fast_loss_percent']:.1f}%",
               f"slow loss {drop['slow_loss_percent']:.1f}%", "reported")
