"""Whether a path is a mount point, for the daemon and for the harness that starts it."""

from __future__ import annotations

import os

__all__ = ["is_mounted"]


def is_mounted(path: str) -> bool:
    """Whether ``path`` is a mount point, read from /proc without touching it (a dead
    FUSE daemon's mount point would answer a stat with ENOTCONN)."""
    with open("/proc/self/mountinfo", "rb") as f:
        table = f.read()
    encoded = os.fsencode(path)
    for char in (b"\\", b" ", b"\t", b"\n"):
        encoded = encoded.replace(char, b"\\%03o" % ord(char))
    return any(line.split(b" ")[4] == encoded for line in table.splitlines())
