"""Section latency: 1 KiB every 1 ms to 1 and N reader processes, beside one pipe per
reader (and the --reference daemon)."""

from __future__ import annotations

import os
import subprocess

from streamfs_fuse.testing.proc import Processes

from .common import (Sizes, child, collect, fuse_mounted, percentiles, send_messages, start,
                     wait_readers, with_reference)
from .report import Report, verdict


def latency_fuse(sizes: Sizes, readers: int, reference: str | None = None) -> dict[str, float]:
    """1 KiB every 1 ms to N reader processes of one stream, lossless: latency percentiles.

    On streamfs-fuse, or on the --reference daemon given its command. Each
    reader says "ready" once its open() returned, so it is registered."""
    with fuse_mounted(reference, "--slow-reader=block") as mount:
        live = mount / "live"
        live.touch()
        procs = [start(mount, child("latency_reader", live), stdout=subprocess.PIPE, text=True)
                 for _ in range(readers)]
        for proc in procs:
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError("a latency reader failed to open the stream")
        if not reference:
            wait_readers(live, readers)
        fd = os.open(live, os.O_WRONLY)
        try:
            sent = send_messages(fd, sizes.latency_seconds)
        finally:
            os.close(fd)
        live.unlink()
        latencies = collect(procs)
        assert len(latencies) == sent * readers, "messages went missing"
        return percentiles(latencies)


def latency_pipe(sizes: Sizes, readers: int = 1) -> dict[str, float]:
    """The same messages through N pipes, one per reader, written to each in turn."""
    write_ends: list[int] = []
    with Processes() as processes:
        try:
            procs = []
            for _ in range(readers):
                read_end, write_end = os.pipe()
                write_ends.append(write_end)
                try:
                    procs.append(start(processes, child("latency_reader", read_end),
                                       stdout=subprocess.PIPE, text=True, pass_fds=(read_end,)))
                finally:
                    os.close(read_end)
            for proc in procs:
                proc.stdout.readline()
            try:
                sent = send_messages(write_ends, sizes.latency_seconds)
            finally:
                for write_end in write_ends:
                    os.close(write_end)
                write_ends.clear()
            latencies = collect(procs)
            assert len(latencies) == sent * readers, "messages went missing"
            return percentiles(latencies)
        finally:
            for write_end in write_ends:
                os.close(write_end)


def ms(p: dict[str, float]) -> str:
    return f"{p['p50_ms']:.3f}/{p['p99_ms']:.3f} ms"


def latency_section(report: Report, sizes: Sizes, args) -> None:
    for readers in sizes.latency_readers:
        name = f"latency_{readers}"
        ours, *theirs, pipe = report.compare(
            name, with_reference(args.reference, latency_fuse, sizes, readers)
            + [("_pipe", latency_pipe, sizes, readers)])
        result = report.results[name]
        for other, figures in [("pipe", pipe)] + [("reference", ref) for ref in theirs]:
            for p in ("p50", "p99"):
                result[f"{p}_vs_{other}"] = ours[f"{p}_ms"] / figures[f"{p}_ms"]

        def times(other: str) -> str:
            return f"{result[f'p50_vs_{other}']:.1f}x/{result[f'p99_vs_{other}']:.1f}x"

        kernel = f"{'pipe' if readers == 1 else f'{readers} pipes'} {ms(pipe)} {times('pipe')}"
        ref_text = f"{ms(theirs[0])} {times('reference')}" if theirs else ""
        if readers == 1:
            outcome = verdict(ours["p99_ms"] < 0.5, "p99 < 0.5 ms")
        elif theirs:
            outcome = verdict(result["p99_vs_reference"] <= 2 and result["p50_vs_reference"] <= 3,
                              "p99 <= 2x and p50 <= 3x reference")
        else:
            outcome = f"reported: {times('pipe')} the pipes (no --reference)"
        report.row(f"latency 1 KiB/1 ms, {readers} reader(s), p50/p99", ms(ours), kernel,
                   outcome, ref_text)
