"""Waiting on state, never on time: a predicate polled to a deadline, and a stream's figures."""

from __future__ import annotations

import os
import time
from pathlib import Path


def xattr(path, name):
    """A stream's figure from its user.streamfs.* extended attribute."""
    value = os.getxattr(path, f"user.streamfs.{name}")
    return value.decode() if name == "slow_reader" else int(value)


def wait_until(predicate, timeout=10.0, interval=0.02, what="condition"):
    """Poll ``predicate`` until it is true; AssertionError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def wait_parked(path: Path, reads=1, timeout=60.0):
    """Wait until the daemon reports ``reads`` reads of ``path`` parked, waiting for data."""
    wait_until(lambda: xattr(path, "waiting_reads") == reads, timeout=timeout,
               what=f"{reads} parked read(s) of {path.name}")
