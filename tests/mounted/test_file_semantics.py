"""A stream is a file that grows: real programs and real syscalls on the mount.

tail, head, df and ls as users run them (players: test_live_video.py); asyncio, select, poll and
epoll on O_NONBLOCK descriptors; lseek and pread within the ring. Every wait
synchronises on state (a parked read, a line on a process's stdout) with a
deadline, never on a sleep.
"""

from __future__ import annotations

import os
import queue
import re
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from streamfs_fuse.testing import wait_parked, wait_until, xattr

#: GNU tail polls a file on FUSE (a "remote" file system) about once a second.
TAIL_DEADLINE = 10.0
#: How soon a write must wake a poller, or a read a blocked writer's poller.
WAKE_LATENCY = 0.2


class Lines:
    """The lines a process prints, read in a thread, taken with a deadline."""

    def __init__(self, stream):
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream):
        for line in stream:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def next(self, timeout=TAIL_DEADLINE, what="a line"):
        try:
            line = self._queue.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line within {timeout}s waiting for {what}") from None
        if line is None:
            raise AssertionError(f"the process ended its output waiting for {what}")
        return line


def write_chunks(path, chunks):
    """Each chunk one write(2) on one descriptor."""
    with open(path, "ab", buffering=0) as writer:
        for chunk in chunks:
            assert writer.write(chunk) == len(chunk)


def pread_exactly(fd, size, offset):
    """pread, then reads on from where it ended (short reads are normal)."""
    data = os.pread(fd, size, offset)
    while data and len(data) < size:
        more = os.pread(fd, size - len(data), offset + len(data))
        if not more:
            break
        data += more
    return data


def wait_asleep_in_poll(thread_id: int) -> None:
    """Wait until thread ``thread_id`` of this process sleeps in select, poll or epoll_wait
    (its kernel wait channel: poll_schedule_timeout, do_epoll_wait)."""
    wchan = Path(f"/proc/self/task/{thread_id}/wchan")
    wait_until(lambda: "poll" in wchan.read_text(), what="the poller asleep in the kernel")


class Result:
    """The outcome of a call made in a thread."""

    def __init__(self, call, *args):
        self.value = self.error = None
        self._thread = threading.Thread(target=self._run, args=(call, *args), daemon=True)
        self._thread.start()

    def _run(self, call, *args):
        try:
            self.value = call(*args)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            self.error = e

    def get(self, timeout=10.0):
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"the call did not return within {timeout}s"
        if self.error is not None:
            raise self.error
        return self.value


def cpu_seconds(pid):
    """utime + stime of a process, all its threads, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- tail and head ----------------------------------------------------------


def test_tail_f_prints_last_ten_lines_then_new_ones(mnt):
    path = mnt / "log"
    write_chunks(path, [f"line {i}\n".encode() for i in range(1, 31)])
    tail = mnt.spawn(["tail", "-f", str(path)], text=True)
    out = Lines(tail.stdout)
    assert [out.next(what=f"line {i}") for i in range(21, 31)] == \
        [f"line {i}" for i in range(21, 31)]
    for line in ("new 31", "new 32"):
        write_chunks(path, [f"{line}\n".encode()])
        started = time.monotonic()
        assert out.next(what=line) == line
        print(f"\ntail -f printed {line!r} {time.monotonic() - started:.2f}s after the write")
    assert tail.poll() is None


def test_tail_F_follows_the_name_through_rm_and_recreate(mnt):
    path = mnt / "rotated"
    write_chunks(path, [b"one\n", b"two\n"])
    tail = mnt.spawn(["tail", "-F", str(path)], text=True)
    out = Lines(tail.stdout)
    assert [out.next(what="one"), out.next(what="two")] == ["one", "two"]
    path.unlink()
    write_chunks(path, [b"again\n"])
    started = time.monotonic()
    assert out.next(what="again after rm and re-create") == "again"
    print(f"\ntail -F printed 'again' {time.monotonic() - started:.2f}s after the re-create")


def run_briefly(command, timeout=5.0):
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{' '.join(command)} did not exit within {timeout}s") from None


def test_head_and_tail_n_on_a_stream(mnt):
    path = mnt / "hundred"
    lines = [f"line {i:03d}\n" for i in range(100)]
    write_chunks(path, [line.encode() for line in lines])
    assert path.stat().st_size == len("".join(lines))
    for command, expected in [
        (["head", "-n", "5"], "".join(lines[:5])),
        (["tail", "-n", "2"], "".join(lines[-2:])),
    ]:
        done = run_briefly([*command, str(path)])
        assert (done.returncode, done.stderr, done.stdout) == (0, "", expected), command


def test_tail_c_on_a_stream(mnt):
    """Above st_blksize (4 KiB): at or under it GNU tail -c reads to EOF, as the README says."""
    path = mnt / "hundred"
    lines = [f"{i:063d}\n" for i in range(100)]
    write_chunks(path, [line.encode() for line in lines])
    everything = "".join(lines)
    assert path.stat().st_size == len(everything) == 6400
    done = run_briefly(["tail", "-c", "5", str(path)])
    assert (done.returncode, done.stderr, done.stdout) == (0, "", everything[-5:])


# -- event loops and readiness ----------------------------------------------

ASYNCIO_READER = r"""
import asyncio, os, sys, time

async def main():
    loop = asyncio.get_running_loop()
    fd = os.open(sys.argv[1], os.O_RDONLY | os.O_NONBLOCK)
    calls = 0
    got = loop.create_future()

    def readable():
        nonlocal calls
        calls += 1
        woke = time.monotonic()
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        if not got.done():
            got.set_result((data, woke))

    loop.add_reader(fd, readable)
    await asyncio.sleep(1.0)
    print("idle", calls, flush=True)
    data, woke = await got
    print("data", data.decode(), repr(woke), calls, flush=True)
    loop.remove_reader(fd)
    os.close(fd)

asyncio.run(main())
"""


def test_asyncio_add_reader_sleeps_while_idle_and_wakes_on_a_write(mnt):
    path = mnt / "events"
    path.touch()
    script = mnt.spawn([sys.executable, "-c", ASYNCIO_READER, str(path)], text=True)
    out = Lines(script.stdout)
    assert out.next(what="the idle count") == "idle 0"
    written = time.monotonic()
    write_chunks(path, [b"x"])
    word, data, woke, calls = out.next(what="the data").split()
    latency = float(woke) - written
    print(f"\nasyncio reader woke {latency * 1000:.1f} ms after the write ({calls} callback(s))")
    assert data == "x"
    assert latency < WAKE_LATENCY
    assert script.wait(10) == 0, script.stderr.read()


def select_readable(fd, timeout):
    return select.select([fd], [], [], timeout)[0]


def poll_readable(fd, timeout):
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return poller.poll(timeout * 1000)


def epoll_readable(fd, timeout):
    with select.epoll() as poller:
        poller.register(fd, select.EPOLLIN)
        return poller.poll(timeout)


WAITS = {"select": select_readable, "poll": poll_readable, "epoll": epoll_readable}


def test_select_poll_epoll_sleep_while_idle_and_wake_on_a_write(mnt):
    path = mnt / "ready"
    path.touch()
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    writer = os.open(path, os.O_WRONLY)
    report = []
    try:
        for name, wait in WAITS.items():
            cpu, started = cpu_seconds(mnt.daemon.pid), time.monotonic()
            assert wait(fd, 1.0) == [], f"{name}: an idle stream is readable"
            cpu, waited = cpu_seconds(mnt.daemon.pid) - cpu, time.monotonic() - started
            assert waited >= 0.9, f"{name} returned after {waited:.3f}s, not the 1 s timeout"
            assert cpu < 0.05, f"the daemon used {cpu:.3f}s of CPU during an idle {name}"

            def write_soon(poller):
                wait_asleep_in_poll(poller)
                written = time.monotonic()
                os.write(writer, name.encode())
                return written

            write = Result(write_soon, threading.get_native_id())
            ready = wait(fd, 5.0)
            woke = time.monotonic()
            written = write.get()
            assert ready, f"{name} did not report the write within 5 s"
            latency = woke - written
            assert latency < WAKE_LATENCY, f"{name} woke {latency:.3f}s after the write"
            assert os.read(fd, 100) == name.encode()
            assert wait(fd, 0) == [], f"{name}: readable again after the data was read"
            report.append(f"{name}: idle CPU {cpu * 1000:.0f} ms, woke in {latency * 1000:.1f} ms")
    finally:
        os.close(fd)
        os.close(writer)
    print("\n" + "\n".join(report))


def test_select_writer_not_writable_while_a_blocking_reader_is_full(mount_with):
    mnt = mount_with("--channel-buffer-size=4KB", "--slow-reader=block")
    path = mnt / "full"
    path.touch()
    reader = os.open(path, os.O_RDONLY)
    writer = os.open(path, os.O_WRONLY)
    try:
        assert select.select([], [writer], [], 0)[1] == [writer], "an idle stream not writable"
        # A reader with nothing queued takes any chunk; then it is over its buffer.
        assert os.write(writer, b"a" * 8192) == 8192
        assert select.select([], [writer], [], 0)[1] == [], "writable while the reader is full"

        def drain_soon(poller):
            wait_asleep_in_poll(poller)
            started = time.monotonic()
            got = 0
            while got < 8192:
                got += len(os.read(reader, 8192 - got))
            return started

        drain = Result(drain_soon, threading.get_native_id())
        ready = select.select([], [writer], [], 5.0)[1]
        woke = time.monotonic()
        started = drain.get()
        assert ready == [writer], "not writable within 5 s of the reader draining"
        latency = woke - started
        print(f"\nwriter writable {latency * 1000:.1f} ms after the reader started draining")
        assert latency < WAKE_LATENCY
    finally:
        os.close(reader)
        os.close(writer)


# -- O_NONBLOCK, seeking ----------------------------------------------------


def test_nonblocking_read_waits_until_polled_then_gets_eagain(mnt):
    path = mnt / "nb"
    path.touch()
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        read = Result(os.read, fd, 100)  # never polled: waits like a regular file
        wait_parked(path, 1, timeout=10)
        write_chunks(path, [b"data"])
        assert read.get() == b"data"
    finally:
        os.close(fd)

    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        assert os.read(fd, 4) == b"data"  # the ring's history first
        assert poll_readable(fd, 0) == []
        with pytest.raises(BlockingIOError):
            os.read(fd, 100)
        write_chunks(path, [b"more"])
        assert poll_readable(fd, 5.0), "not readable after a write"
        assert os.read(fd, 100) == b"more"
    finally:
        os.close(fd)


def test_lseek_and_pread_within_the_ring(mount_with):
    mnt = mount_with("--ring-buffer-size=4KB")
    path = mnt / "seek"
    lines = [f"{i:07d}\n".encode() for i in range(1024)]  # 8 KiB in 8-byte writes
    write_chunks(path, lines)
    data = b"".join(lines)
    size = path.stat().st_size
    assert size == len(data) == 8192
    oldest = size - xattr(path, "ring_bytes")
    assert 0 < oldest <= 4096 // 16 + 4096, f"ring starts at {oldest}"

    fd = os.open(path, os.O_RDONLY)
    try:
        # cat from 0: the stream goes on from the ring's oldest byte.
        assert os.read(fd, 64) == data[oldest:oldest + 64]
        assert os.lseek(fd, 0, os.SEEK_END) == size
        assert pread_exactly(fd, 100, 8000) == data[8000:8100]
        assert pread_exactly(fd, 64, oldest + 8) == data[oldest + 8:oldest + 72]
        assert pread_exactly(fd, 192, size - 192) == data[-192:]
        # Older than the ring: from the ring's oldest byte.
        assert pread_exactly(fd, 100, 0) == data[oldest:oldest + 100]
        # At the end after a seek: EOF, as a growing file answers a prober,
        # and again while the handle stays there.
        assert os.pread(fd, 100, size) == b""
        assert os.pread(fd, 100, size) == b""
        # A seek after that EOF (a player going back to play): it follows
        # the stream again and waits at the end for live data.
        assert pread_exactly(fd, 5, size - 5) == data[-5:]
        live = Result(os.pread, fd, 100, size)
        wait_parked(path, 1, timeout=10)
        write_chunks(path, [b"live\n"])
        assert live.get() == b"live\n"
        assert os.lseek(fd, 0, os.SEEK_END) == size + 5 == path.stat().st_size
    finally:
        os.close(fd)


# -- df and ls --------------------------------------------------------------


def df_figures(*args, mountpoint):
    done = subprocess.run(["df", *args, "-P", str(mountpoint)], capture_output=True, text=True,
                          timeout=10)
    assert done.returncode == 0, done.stderr
    header, line = done.stdout.splitlines()
    # Filesystem, three figures, a percentage, Mounted on (the source may hold spaces).
    fields = line.split()
    assert fields[-1] == str(mountpoint), done.stdout
    *figures, percent = fields[-5:-1]
    assert all(re.fullmatch(r"\d+", f) for f in figures), done.stdout
    assert re.fullmatch(r"\d+%|-", percent), done.stdout
    return [int(f) for f in figures], percent, done.stdout


def test_df_reports_sane_space_and_inode_figures(mnt):
    for name in ("a", "b", "c"):
        (mnt / name).touch()
    (mnt / "dir").mkdir()
    (blocks, used, available), percent, text = df_figures(mountpoint=mnt.path)
    assert blocks > 0 and percent != "100%", text
    (inodes, iused, ifree), ipercent, itext = df_figures("-i", mountpoint=mnt.path)
    assert ipercent != "100%", itext
    assert inodes > 0 and 5 <= iused < 100, itext
    print(f"\n{text}{itext}")


def test_ls_lists_dot_and_dotdot(mnt):
    (mnt / "sub").mkdir()
    (mnt / "sub" / "stream").touch()
    done = subprocess.run(["ls", "-a", str(mnt.path)], capture_output=True, text=True,
                          timeout=10)
    assert done.returncode == 0, done.stderr
    assert {".", "..", "sub"} <= set(done.stdout.split()), done.stdout
    done = subprocess.run(["ls", "-la", str(mnt / "sub")], capture_output=True, text=True,
                          timeout=10)
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    names = [line.split()[-1] for line in done.stdout.splitlines()[1:]]
    assert {".", "..", "stream"} == set(names), done.stdout
