"""``streamfs-fuse status MOUNTPOINT --once`` against a real mount, as root and as
another user: it shows what each may read, with rates measured while data flows."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from streamfs_fuse.testing import DAEMON, as_user, wait_until, xattr


def table(output: str) -> dict[str, list[str]]:
    """The rows of a status screen by stream: [write rate, readers, drops/s, ring fill, held]."""
    rows = {}
    for line in output.splitlines()[3:]:
        stream, *cells = re.split(r"\s{2,}", line.strip())
        rows[stream] = cells
    return rows


def status(mnt, *extra, user=None):
    command = [*DAEMON, "status", str(mnt.path), "--once", "--interval", "0.5", *extra]
    if user is not None:
        return as_user(user, *command, env={**os.environ, "PYTHONPATH": os.getcwd()})
    return subprocess.run(command, capture_output=True, text=True, timeout=30)


def test_status_once_shows_rates_readers_drops_and_ring_fill(world_readable_dir,
                                                           unprivileged_user, mount_with):
    mnt = mount_with("-o", "allow_other", "--channel-buffer-size", "64KB", "--ring-buffer-size",
                     "256KB", "--max-memory", "32MB", parent=world_readable_dir)
    os.chmod(mnt.path, 0o755)
    live = mnt / "live"
    (mnt / "quiet").write_bytes(b"q" * 1000)
    (mnt / "private").write_bytes(b"p")
    os.chmod(mnt / "private", 0o600)
    # A writer that goes on (64 KiB every 10 ms), a reader that keeps up and one that
    # opened and never reads, so that it misses chunks.
    mnt.spawn(["sh", "-c", f"while :; do head -c 65536 /dev/zero; sleep 0.01; done > {live}"])
    wait_until(lambda: live.exists() and xattr(live, "bytes_written") > 0, what="the writer")
    mnt.spawn(["cat", str(live)], stdout=subprocess.DEVNULL)
    mnt.spawn([sys.executable, "-c", f"import time; f = open({str(live)!r}, 'rb'); "
               "time.sleep(600)"])
    wait_until(lambda: xattr(live, "readers") == 2 and xattr(live, "dropped_chunks") > 0,
               what="the stalled reader to miss chunks")

    result = status(mnt)
    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[0]
    assert re.match(rf"{re.escape(str(mnt.path))}: memory .* of 32 MiB", first), first
    rows = table(result.stdout)
    rate, readers, drops, fill, _ = rows["/live"]
    assert re.fullmatch(r"[0-9.]+ (KiB|MiB)/s", rate) and readers == "2", rows
    assert int(drops) > 0
    assert 90 <= int(fill.rstrip("%")) <= 100  # a full ring keeps at least 15/16 of it
    assert rows["/quiet"][:3] == ["0 bytes/s", "0", "0"] and rows["/private"]

    # Another user sees only what it may read.
    other = status(mnt, user=unprivileged_user)
    assert other.returncode == 0, other.stderr
    assert set(table(other.stdout)) == {"/live", "/quiet"}


def test_status_refuses_what_is_not_a_mount(tmp_path):
    result = subprocess.run([*DAEMON, "status", str(tmp_path), "--once"], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 1
    assert result.stderr == f"streamfs-fuse status: error: {tmp_path} is not a mount point\n"
