"""``streamfs-fuse status MOUNTPOINT``: what the streams are doing, one screen a second.

It reads only what the mount shows anyone: each stream's ``user.streamfs.*``
xattrs (which the kernel lets a user read only on streams it may read) and
statfs (memory used against the cap). So it works for any user, on what that
user may see, and needs no HTTP door. Rates are the change between two
readings, an interval apart.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass

from humanfriendly import format_size

__all__ = ["main"]

#: The xattrs read per stream, each one FUSE request.
FIGURES = ("bytes_written", "readers", "dropped_chunks", "ring_bytes", "ring_buffer_size",
           "held_bytes")
PREFIX = "user.streamfs."
#: Clear the terminal and go to its top, between screens.
CLEAR = "\x1b[H\x1b[2J"


class StatusError(Exception):
    """Shown to the user as it is, in one line."""


@dataclass
class Reading:
    """The figures of every stream visible at one moment, and the mount's memory."""

    at: float
    streams: dict[str, dict[str, int]]
    memory_used: int
    memory_size: int


def mount_type(path: str) -> str | None:
    """The file system type mounted at ``path``, or None when nothing is."""
    encoded = os.fsencode(path)
    for char in (b"\\", b" ", b"\t", b"\n"):
        encoded = encoded.replace(char, b"\\%03o" % ord(char))
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            fields = line.split(b" ")
            if fields[4] == encoded:
                kind = fields[fields.index(b"-") + 1]
                return kind.decode(errors="replace")
    return None


def check_mount(path: str) -> str:
    real = os.path.realpath(path)
    kind = mount_type(real)
    if kind is None:
        raise StatusError(f"{path} is not a mount point")
    if kind != "fuse.streamfs-fuse":
        raise StatusError(f"{path} is not a streamfs-fuse mount (it is {kind})")
    return real


def read(root: str) -> Reading:
    """One reading of every stream under ``root`` this user may read."""
    streams: dict[str, dict[str, int]] = {}
    for directory, _, files in os.walk(root):  # unreadable directories are skipped
        for name in files:
            path = os.path.join(directory, name)
            try:
                streams[path[len(root):]] = {
                    figure: int(os.getxattr(path, PREFIX + figure, follow_symlinks=False))
                    for figure in FIGURES}
            except (PermissionError, FileNotFoundError):
                continue  # not this user's to read, or removed meanwhile
    memory = os.statvfs(root)
    return Reading(time.monotonic(), streams, (memory.f_blocks - memory.f_bfree) * memory.f_frsize,
                   memory.f_blocks * memory.f_frsize)


def render(root: str, before: Reading, after: Reading) -> str:
    """One screen: the mount's memory, then a line per stream."""
    elapsed = max(after.at - before.at, 1e-9)
    rows = []
    for path, now in sorted(after.streams.items()):
        then = before.streams.get(path, now)
        rate = max(0, now["bytes_written"] - then["bytes_written"]) / elapsed
        drops = max(0, now["dropped_chunks"] - then["dropped_chunks"]) / elapsed
        size = now["ring_buffer_size"]
        fill = f"{100 * now['ring_bytes'] / size:.0f}%" if size else "-"
        shown = path.encode(errors="surrogateescape").decode(errors="backslashreplace")
        rows.append((shown, f"{format_size(round(rate), binary=True)}/s",
                     str(now["readers"]), f"{drops:.0f}", fill,
                     format_size(now["held_bytes"], binary=True)))
    held = sum(figures["held_bytes"] for figures in after.streams.values())
    lines = [f"{root}: memory {format_size(after.memory_used, binary=True)} of "
             f"{format_size(after.memory_size, binary=True)} (the cap, or the machine's), "
             f"{format_size(held, binary=True)} held for readers; "
             f"{len(after.streams)} streams you may read",
             ""]
    header = ("STREAM", "WRITE RATE", "READERS", "DROPS/S", "RING FILL", "HELD")
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        lines.append("  ".join([row[0].ljust(widths[0])]
                               + [cell.rjust(width) for cell, width in zip(row[1:], widths[1:])]))
    return "\n".join(lines) + "\n"


def run(mountpoint: str, *, once: bool, interval: float) -> int:
    root = check_mount(mountpoint)
    before = read(root)
    clear = sys.stdout.isatty() and not once
    while True:
        time.sleep(interval)
        after = read(root)
        screen = render(mountpoint, before, after)
        sys.stdout.write((CLEAR if clear else "") + screen)
        sys.stdout.flush()
        if once:
            return 0
        if not clear:
            sys.stdout.write("\n")
        before = after


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamfs-fuse status",
        description="Show each stream's write rate, readers, drops per second and ring fill, "
                    "and the mount's memory against its cap, refreshed every second until "
                    "Ctrl-C. Reads the mount's xattrs and statfs: any user sees the streams "
                    "they may read.")
    parser.add_argument("mountpoint", help="where streamfs-fuse is mounted")
    parser.add_argument("--once", action="store_true",
                        help="print one snapshot (rates over one interval) and exit")
    parser.add_argument("--interval", type=float, default=1.0, metavar="SECONDS",
                        help="time between screens, over which rates are measured "
                             "(default: 1)")
    return parser


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0.05 <= args.interval <= 3600:
        parser.exit(2, "streamfs-fuse status: error: --interval: expected 0.05 to 3600 "
                       "seconds\n")
    try:
        return run(args.mountpoint, once=args.once, interval=args.interval)
    except StatusError as e:
        print(f"streamfs-fuse status: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"streamfs-fuse status: error: {args.mountpoint}: {e.strerror}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
