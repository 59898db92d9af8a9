"""The core's guarantees on a real mount, driven by real programs.

History and live data join without a gap, whatever the channel and ring
sizes; ``block`` stays lossless under the mount-wide memory cap; a stalled
reader on one stream does not stall the writers of another; a block writer
parked on the cap fails with EPIPE when its stream ends; an O_RDWR handle's
own read side never blocks its writes; a stream of 1-byte writes keeps the
daemon's memory and the ring's bookkeeping small.

Every wait is on state the daemon reports (xattrs) or on a process's exit,
never on time.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from array import array
from pathlib import Path

import pytest

from streamfs_fuse.testing import wait_parked, wait_until, xattr

KiB = 1024
MiB = 1024 * KiB

#: Writes 8-byte big-endian sequence numbers, 64 KiB per write, at RATE bytes/s;
#: on an error prints the errno's name and exits (0 for EPIPE: the stream ended).
PACED_WRITER = r"""
import errno, os, sys, time
from array import array
path, rate = sys.argv[1], float(sys.argv[2])
STEP = 8192                      # numbers per write: 64 KiB
interval = STEP * 8 / rate
fd = os.open(path, os.O_WRONLY)
n = 0
due = time.monotonic()
try:
    while True:
        block = array("Q", range(n, n + STEP))
        if sys.byteorder == "little":
            block.byteswap()
        data = block.tobytes()
        written = os.write(fd, data)
        if written != len(data):
            print("short write", written, flush=True)
            sys.exit(3)
        n += STEP
        due += interval
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        elif delay < -0.1:
            due = time.monotonic()   # after a stall, resume the pace rather than burst
except OSError as error:
    print(errno.errorcode.get(error.errno, error.errno), flush=True)
    sys.exit(0 if error.errno == errno.EPIPE else 1)
"""

#: A late joiner: reads SIZE bytes of the stream into OUT as fast as it can,
#: then prints the stream's size just before its open() and just after its first read.
JOINER = r"""
import os, sys
path, out, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
before = int(os.getxattr(path, "user.streamfs.bytes_written"))
fd = os.open(path, os.O_RDONLY)
after = None
with open(out, "wb", buffering=0) as sink:
    done = 0
    while done < size:
        data = os.read(fd, min(1 << 20, size - done))
        if not data:
            sys.exit("EOF after %d bytes" % done)
        sink.write(data)
        done += len(data)
        if after is None:  # after the first read, so as not to fall behind
            after = int(os.getxattr(path, "user.streamfs.bytes_written"))
print(before, after, flush=True)
"""

#: Writes 64 KiB blocks until told to stop by an error; prints the errno's name.
ENDLESS_WRITER = r"""
import errno, os, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
block = b"w" * 65536
try:
    while True:
        os.write(fd, block)
except OSError as error:
    print(errno.errorcode.get(error.errno, error.errno), flush=True)
"""

#: Opens O_RDWR and writes SIZE bytes in 64 KiB writes without ever reading.
RDWR_WRITER = r"""
import os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
block = b"x" * 65536
for _ in range(int(sys.argv[2]) // len(block)):
    assert os.write(fd, block) == len(block)
os.close(fd)
print("done", flush=True)
"""

#: Reads everything until EOF, a megabyte per read and a few reads a second,
#: so that queued 1-byte chunks are joined; prints the bytes read.
BATCH_READER = r"""
import os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
total = 0
while True:
    data = os.read(fd, 1 << 20)
    if not data:
        break
    total += len(data)
    time.sleep(0.02)
print(total, flush=True)
"""


def sequence(first: int, count: int) -> bytes:
    """``count`` 8-byte big-endian numbers from ``first``, as the paced writer writes them."""
    numbers = array("Q", range(first, first + count))
    if sys.byteorder == "little":
        numbers.byteswap()
    return numbers.tobytes()


def first_difference(data: bytes, expected: bytes) -> int:
    step = 64 * KiB
    for start in range(0, len(data), step):
        if data[start:start + step] != expected[start:start + step]:
            for i in range(start, start + step, 8):
                if data[i:i + 8] != expected[i:i + 8]:
                    return i
    return len(data)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def stopped(process: subprocess.Popen) -> bool:
    """Whether ``process`` is stopped by a signal (state T in /proc)."""
    with open(f"/proc/{process.pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] in ("T", "t")


def stop_reader(mnt, path: Path, out: Path) -> subprocess.Popen:
    """A ``dd`` reading ``path`` into ``out``, sent SIGSTOP while its read is parked.

    A read parked on an idle stream is not ended by a stop signal: the reader
    stops once the first write answers it, having read that much.
    """
    before = xattr(path, "waiting_reads")
    reader = mnt.spawn(["dd", f"if={path}", f"of={out}", "bs=1M", "status=none"])
    wait_parked(path, before + 1, timeout=10)
    reader.send_signal(signal.SIGSTOP)
    return reader


def random_file(path: Path, size: int) -> str:
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def set_block(path: Path) -> None:
    subprocess.run(["setfattr", "-n", "user.streamfs.slow_reader", "-v", "block", str(path)],
                   check=True)
    assert xattr(path, "slow_reader") == "block"


# -- 1. history and live data join without a gap ------------------------------

@pytest.mark.parametrize("channel, ring", [
    (6 * MiB, 6 * MiB), (256 * KiB, 512 * KiB), (512 * KiB, 1 * MiB), (8 * MiB, 16 * MiB),
], ids=["defaults", "256KB-512KB", "512KB-1MB", "8MB-16MB"])
def test_late_joiners_get_the_whole_ring_then_live_data_without_a_gap(
        mount_with, tmp_path, channel, ring):
    mnt = mount_with(f"--channel-buffer-size={channel}", f"--ring-buffer-size={ring}")
    path = mnt / "seq"
    path.touch()
    writer = mnt.spawn([sys.executable, "-c", PACED_WRITER, str(path), str(20 * MiB)])
    wait_until(lambda: xattr(path, "ring_bytes") >= ring, timeout=30, what="a full ring")

    joiners = 20
    size = ring + MiB  # each joiner reads the ring's history and 1 MiB of live data
    outs, brackets = [], []
    for i in range(joiners):
        # One after another: each joins while the writer goes on, reads its
        # history and the live data after it, and exits before the next joins.
        out = tmp_path / f"out{i}"
        reader = mnt.spawn([sys.executable, "-S", "-c", JOINER, str(path), str(out), str(size)])
        assert reader.wait(30) == 0, f"joiner {i}: {reader.stderr.read().decode()}"
        brackets.append([int(n) for n in reader.stdout.read().split()])
        outs.append(out)
    dropped = xattr(path, "dropped_chunks")
    path.unlink()
    assert writer.wait(10) == 0, writer.stdout.read().decode() + writer.stderr.read().decode()

    for i, (out, (before, after)) in enumerate(zip(outs, brackets)):
        data = out.read_bytes()
        assert len(data) == size
        first = int.from_bytes(data[:8], "big")
        expected = sequence(first, len(data) // 8)
        if data != expected:
            at = first_difference(data, expected)
            pytest.fail(f"joiner {i}: numbers not contiguous at byte {at} of {len(data)}: "
                        f"{int.from_bytes(data[at - 8:at], 'big')} then "
                        f"{int.from_bytes(data[at:at + 8], 'big')}; it starts at byte "
                        f"{first * 8}, opened when the stream had {before} to {after} bytes; "
                        f"{dropped} chunks dropped in all\n{mnt.log()}")
        # The history was the whole ring: it starts a ring before the end of the
        # stream at the moment the joiner opened, which lies between ``before``
        # and ``after``, the stream's size just before its open and just after.
        start = first * 8
        assert before - ring <= start <= after - ring, (
            f"joiner {i}: history starts at byte {start}; the stream had {before} to "
            f"{after} bytes when it opened, and a ring of {ring}")
        out.unlink()


# -- 2. block is lossless under the memory cap --------------------------------

def test_block_is_lossless_under_the_memory_cap(mount_with, tmp_path):
    # The channel is larger than the cap, so the cap is what parks the writer.
    mnt = mount_with("--max-memory=8MB", "--channel-buffer-size=16MB",
                     "--ring-buffer-size=1MB")
    path = mnt / "lossless"
    path.touch()
    set_block(path)
    source = tmp_path / "source"
    digest = random_file(source, 12 * MiB)
    out = tmp_path / "out"
    reader = stop_reader(mnt, path, out)
    writer = mnt.spawn(["dd", f"if={source}", f"of={path}", "bs=64K", "status=none"])
    wait_until(lambda: xattr(path, "waiting_writes") >= 1, timeout=20, what="the writer parked")
    assert writer.poll() is None and stopped(reader)
    assert xattr(path, "bytes_written") < 12 * MiB
    reader.send_signal(signal.SIGCONT)
    assert writer.wait(30) == 0, writer.stderr.read().decode()
    wait_until(lambda: out.stat().st_size >= 12 * MiB, timeout=30, what="the reader catching up")
    assert xattr(path, "dropped_chunks") == 0
    path.unlink()
    assert reader.wait(10) == 0
    assert out.stat().st_size == 12 * MiB and sha256(out) == digest


# -- 3. a stalled reader on one stream does not stall another -----------------

def test_a_stalled_drop_reader_does_not_stall_a_block_stream(mount_with, tmp_path):
    # Stream A's channel is larger than the cap: its stopped reader is offered
    # more than the cap, and the cap alone bounds what it holds.
    mnt = mount_with("--max-memory=8MB", "--channel-buffer-size=16MB")
    a = mnt / "a"
    a.touch()
    stalled = stop_reader(mnt, a, tmp_path / "a.out")
    subprocess.run(["dd", "if=/dev/zero", f"of={a}", "bs=64K", "count=256", "status=none"],
                   check=True, timeout=30)
    assert xattr(a, "bytes_written") == 16 * MiB
    assert stopped(stalled)
    assert xattr(a, "queued_bytes") > 6 * MiB, "the stopped reader holds its data"

    b = mnt / "b"
    b.touch()
    set_block(b)
    outs = [tmp_path / f"b{i}.out" for i in range(3)]
    readers = []
    for out in outs:
        with open(out, "wb") as stdout:
            readers.append(mnt.spawn(["cat", str(b)], stdout=stdout))
    wait_parked(b, 3, timeout=10)
    source = tmp_path / "source"
    digest = random_file(source, 32 * MiB)
    writer = mnt.spawn(["dd", f"if={source}", f"of={b}", "bs=64K", "status=none"])
    assert writer.wait(30) == 0, writer.stderr.read().decode()
    wait_until(lambda: all(out.stat().st_size >= 32 * MiB for out in outs), timeout=30,
               what="the readers of b catching up")
    assert xattr(b, "dropped_chunks") == 0
    b.unlink()
    for reader, out in zip(readers, outs):
        assert reader.wait(10) == 0
        assert out.stat().st_size == 32 * MiB and sha256(out) == digest
    assert stalled.poll() is None


# -- 4. a block writer parked on the cap gets EPIPE when its stream ends ------

def test_block_writer_parked_on_the_cap_gets_epipe_when_the_stream_ends(mount_with, tmp_path):
    mnt = mount_with("--max-memory=8MB", "--channel-buffer-size=16MB",
                     "--ring-buffer-size=1MB")
    path = mnt / "capped"
    path.touch()
    set_block(path)
    reader = stop_reader(mnt, path, tmp_path / "out")
    writer = mnt.spawn([sys.executable, "-c", ENDLESS_WRITER, str(path)])
    wait_until(lambda: xattr(path, "waiting_writes") >= 1, timeout=20, what="the writer parked")
    assert stopped(reader)
    # Parked on the cap, not on the reader's room: the reader's channel has room.
    assert xattr(path, "queued_bytes") < 16 * MiB - 64 * KiB
    assert xattr(path, "held_bytes") + 64 * KiB + 128 > 8 * MiB

    # rm first. The kernel holds the file's inode lock for the parked write, so
    # unlink of that file may itself wait in the kernel; the daemon's shutdown
    # (SIGTERM ends every stream) is the other way to end the stream.
    started = time.monotonic()
    remover = mnt.spawn(["rm", str(path)])
    try:
        writer.wait(2)
        route = "rm"
    except subprocess.TimeoutExpired:
        assert remover.poll() is None, (
            f"rm finished ({remover.returncode}) and the writer still waits")
        route = "SIGTERM"
        started = time.monotonic()
        mnt.daemon.send_signal(signal.SIGTERM)
        writer.wait(5)
    elapsed = time.monotonic() - started
    print(f"the stream was ended by {route}; the writer failed {elapsed:.2f} s later")
    assert writer.stdout.read().decode().strip() == "EPIPE", writer.stderr.read().decode()
    assert elapsed < 2.0


# -- 5. an O_RDWR handle's read side never holds back its own writes -----------

def test_rdwr_handle_under_block_writes_without_reading(mount_with, tmp_path):
    mnt = mount_with("--slow-reader=block")
    path = mnt / "rdwr"
    writer = mnt.spawn([sys.executable, "-c", RDWR_WRITER, str(path), str(20 * MiB)])
    assert writer.wait(30) == 0, writer.stderr.read().decode()
    assert xattr(path, "bytes_written") == 20 * MiB

    # socat opens the file O_RDWR, writes its stdin and reads the stream back.
    source = tmp_path / "source"
    random_file(source, 10 * MiB)
    with open(source, "rb") as stdin:
        socat = mnt.spawn(["socat", "-", str(path)], stdin=stdin, stdout=subprocess.DEVNULL)
    wait_until(lambda: xattr(path, "bytes_written") == 30 * MiB, timeout=30,
               what="socat writing its input")
    # Its read side waits for data as long as the stream lives: rm ends it.
    path.unlink()
    assert socat.wait(10) == 0, socat.stderr.read().decode()


# -- 6. 1-byte writes keep the daemon's memory and the ring small -------------

#: 1,000,000 writes would take over a minute (each is a FUSE request handled
#: in Python: about 13,000 a second on 2 cores), so fewer, but enough that
#: keeping each 1-byte write as its own object in the ring (about 54 bytes of
#: RSS each) would exceed the bound; the ring is filled with large writes first.
SMALL_WRITES = 400_000


def test_one_byte_writes_do_not_grow_memory(mount_with):
    ring = 1 * MiB
    mnt = mount_with(f"--ring-buffer-size={ring}")
    path = mnt / "bytes"
    path.touch()
    reader = mnt.spawn([sys.executable, "-c", BATCH_READER, str(path)])
    wait_parked(path, 1, timeout=10)
    # Warm-up: the ring filled with large writes, then some 1-byte writes.
    subprocess.run(["dd", "if=/dev/zero", f"of={path}", "bs=64K", f"count={ring // (64 * KiB)}",
                    "status=none"], check=True, timeout=30)
    subprocess.run(["dd", "if=/dev/zero", f"of={path}", "bs=1", "count=20000", "status=none"],
                   check=True, timeout=60)
    baseline = rss_kib(mnt.daemon.pid)

    started = time.monotonic()
    subprocess.run(["dd", "if=/dev/zero", f"of={path}", "bs=1", f"count={SMALL_WRITES}",
                    "status=none"], check=True, timeout=120)
    elapsed = time.monotonic() - started
    grown = rss_kib(mnt.daemon.pid) - baseline
    print(f"{SMALL_WRITES} 1-byte writes in {elapsed:.1f} s; RSS grew {grown} KiB")

    total = ring + 20000 + SMALL_WRITES
    assert xattr(path, "bytes_written") == total
    assert xattr(path, "chunks_written") == ring // (64 * KiB) + 20000 + SMALL_WRITES
    assert grown * KiB <= ring + 16 * MiB
    assert xattr(path, "ring_chunks") <= 2 * 16 + 2, "1-byte writes are coalesced in the ring"
    assert xattr(path, "ring_bytes") >= ring * 15 // 16
    wait_until(lambda: xattr(path, "queued_bytes") == 0, timeout=30, what="the reader caught up")
    assert xattr(path, "dropped_chunks") == 0
    path.unlink()
    assert reader.wait(10) == 0
    assert int(reader.stdout.read()) == total
