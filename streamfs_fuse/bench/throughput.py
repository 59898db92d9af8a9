"""Sections throughput and fanout: one writer, 1 or N dd readers, lossless, beside
pipe and tee (and the --reference daemon)."""

from __future__ import annotations

import subprocess
import time

from .common import MiB, Sizes, dd_bytes, fuse_mounted, start, wait_registered, with_reference
from .report import Report


def throughput_fuse(sizes: Sizes, block: int, reference: str | None = None) -> float:
    """One writer, one reader, ``block``-sized I/O, lossless: delivered bytes/s.

    On streamfs-fuse, or on the --reference daemon given its command."""
    count = sizes.throughput_bytes // block
    with fuse_mounted(reference, "--slow-reader=block") as mount:
        live = mount / "live"
        live.touch()
        reader = start(mount, ["dd", f"if={live}", "of=/dev/null", f"bs={block}"],
                       stderr=subprocess.PIPE, text=True)
        wait_registered(reference, live, [reader])
        started = time.perf_counter()
        subprocess.run(["dd", "if=/dev/zero", f"of={live}", f"bs={block}", f"count={count}",
                        "status=none"], check=True)
        live.unlink()
        _, err = reader.communicate()
        elapsed = time.perf_counter() - started
        assert dd_bytes(err) == count * block, "the reader lost data under block"
        return count * block / elapsed


def throughput_pipe(sizes: Sizes, block: int) -> float:
    count = sizes.throughput_bytes // block
    started = time.perf_counter()
    subprocess.run(f"dd if=/dev/zero bs={block} count={count} status=none"
                   f" | dd of=/dev/null bs={block} status=none", shell=True, check=True)
    return count * block / (time.perf_counter() - started)


def fanout_fuse(sizes: Sizes, readers: int, reference: str | None = None) -> float:
    """One writer, N dd readers, 1 MiB writes, lossless: aggregate delivered bytes/s.

    On streamfs-fuse, or on the --reference daemon given its command."""
    count = sizes.fanout_bytes // MiB
    with fuse_mounted(reference, "--slow-reader=block") as mount:
        live = mount / "live"
        live.touch()
        dds = [start(mount, ["dd", f"if={live}", "of=/dev/null", "bs=1M"],
                     stderr=subprocess.PIPE, text=True) for _ in range(readers)]
        wait_registered(reference, live, dds)
        started = time.perf_counter()
        subprocess.run(["dd", "if=/dev/zero", f"of={live}", "bs=1M", f"count={count}",
                        "status=none"], check=True)
        live.unlink()
        received = sum(dd_bytes(dd.communicate()[1]) for dd in dds)
        elapsed = time.perf_counter() - started
        assert received == readers * count * MiB, "a reader lost data under block"
        return received / elapsed


def fanout_tee(sizes: Sizes, readers: int) -> float:
    count = sizes.fanout_bytes // MiB
    sinks = " ".join(["'>(dd of=/dev/null bs=1M status=none)'"] * readers)
    script = (f"dd if=/dev/zero bs=1M count={count} status=none | eval tee {sinks} > /dev/null;"
              " wait")
    started = time.perf_counter()
    subprocess.run(["bash", "-c", script], check=True)
    return readers * count * MiB / (time.perf_counter() - started)


def throughput_section(report: Report, sizes: Sizes, args) -> None:
    for block, label, target in [(MiB, "1 MiB", 0.6), (128 * 1024, "128 KiB", 0.4)]:
        name = f"throughput_{label}"
        ours, *theirs = report.compare(
            name, with_reference(args.reference, throughput_fuse, sizes, block)
            + [("_pipe", throughput_pipe, sizes, block)])
        report.rate_row(name, f"1 -> 1, {label} I/O", ours, theirs, "pipe", target)


def fanout_section(report: Report, sizes: Sizes, args) -> None:
    for readers in sizes.fanout_readers:
        name = f"fanout_{readers}"
        ours, *theirs = report.compare(
            name, with_reference(args.reference, fanout_fuse, sizes, readers)
            + [("_tee", fanout_tee, sizes, readers)])
        report.rate_row(name, f"1 -> {readers} dd readers, 1 MiB writes", ours, theirs, "tee",
                        0.6 if readers == 16 else None)
