"""Readers blocked on an idle stream can always be stopped."""

import ctypes
import os
import signal
import subprocess
import sys
import time

from streamfs_fuse.testing import wait_parked, wait_until, xattr


def blocked_cat(mnt, name="idle"):
    path = mnt / name
    path.touch()
    cat = mnt.spawn(["cat", path])
    wait_parked(path)
    return path, cat


def test_sigint_stops_a_blocked_cat(mnt):
    _, cat = blocked_cat(mnt)
    cat.send_signal(signal.SIGINT)
    assert cat.wait(timeout=3) == -signal.SIGINT


def test_sigkill_stops_a_blocked_cat(mnt):
    _, cat = blocked_cat(mnt)
    cat.kill()
    assert cat.wait(timeout=3) == -signal.SIGKILL


def test_timeout_ends_a_blocked_cat(mnt):
    path = mnt / "idle"
    path.touch()
    started = time.monotonic()
    result = subprocess.run(["timeout", "2", "cat", path], timeout=10)
    assert result.returncode == 124
    assert time.monotonic() - started < 4


def test_python_reader_gets_keyboard_interrupt(mnt):
    path = mnt / "idle"
    path.touch()
    script = (
        "import sys\n"
        "f = open(sys.argv[1], 'rb', buffering=0)\n"
        "print('open', flush=True)\n"
        "try:\n"
        "    f.read(100)\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', flush=True)\n"
    )
    reader = mnt.spawn([sys.executable, "-c", script, str(path)], text=True)
    assert reader.stdout.readline() == "open\n"
    wait_parked(path)
    reader.send_signal(signal.SIGINT)
    out, _ = reader.communicate(timeout=3)
    assert out == "interrupted\n" and reader.returncode == 0


# A reader that calls read(2) itself, through ctypes, so that an EINTR is seen
# rather than retried the way Python's own os.read would.
RESTARTING_READER = """
import ctypes, os, signal, sys
libc = ctypes.CDLL(None, use_errno=True)
caught = []
for name in sys.argv[2:]:
    signum = getattr(signal, name)
    signal.signal(signum, lambda s, f: caught.append(s))
    signal.siginterrupt(signum, False)  # SA_RESTART
fd = os.open(sys.argv[1], os.O_RDONLY)
print("open", flush=True)
buf = ctypes.create_string_buffer(100)
n = libc.read(fd, buf, 100)
print(n, ctypes.get_errno(), buf.raw[:max(n, 0)].decode(), len(caught), flush=True)
"""


def pending_signals(pid: int) -> set[int]:
    """The signals pending on process ``pid`` (its own and its main thread's)."""
    with open(f"/proc/{pid}/status") as status:
        fields = dict(line.split(":", 1) for line in status)
    mask = int(fields["SigPnd"], 16) | int(fields["ShdPnd"], 16)
    return {bit + 1 for bit in range(64) if mask >> bit & 1}


def test_harmless_signals_do_not_interrupt_a_read(mnt):
    path = mnt / "idle"
    path.touch()
    reader = mnt.spawn([sys.executable, "-c", RESTARTING_READER, str(path),
                        "SIGWINCH", "SIGCHLD"], text=True)
    assert reader.stdout.readline() == "open\n"
    wait_parked(path)
    reader.send_signal(signal.SIGWINCH)
    reader.send_signal(signal.SIGCHLD)
    wait_until(lambda: {signal.SIGWINCH, signal.SIGCHLD} <= pending_signals(reader.pid),
               what="both signals pending on the parked reader")
    # Nothing to wait for: the read must last through several of the watcher's
    # checks (one every 0.2 s or more) while the signals stay pending.
    time.sleep(1.5)
    assert {signal.SIGWINCH, signal.SIGCHLD} <= pending_signals(reader.pid)
    assert reader.poll() is None, "the read ended on a harmless signal"
    path.write_bytes(b"data")
    out, _ = reader.communicate(timeout=5)
    assert out.split() == ["4", "0", "data", "2"]


def test_interrupted_read_loses_no_data(mnt):
    path = mnt / "idle"
    fd = os.open(path, os.O_RDONLY | os.O_CREAT)
    try:
        # The test's own read is interrupted by SIGALRM (handled, so retried).
        seen = []
        old = signal.signal(signal.SIGALRM, lambda s, f: seen.append(s))
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.3)
            libc = ctypes.CDLL(None, use_errno=True)
            buf = ctypes.create_string_buffer(10)
            assert libc.read(fd, buf, 10) == -1 and ctypes.get_errno() == 4  # EINTR
        finally:
            signal.signal(signal.SIGALRM, old)
        assert seen == [signal.SIGALRM]
        path.write_bytes(b"after")
        assert os.read(fd, 10) == b"after"
    finally:
        os.close(fd)


def test_sigint_stops_a_writer_blocked_by_a_full_reader(mount_with):
    mnt = mount_with("--slow-reader=block", "--channel-buffer-size=64KB")
    path = mnt / "full"
    reader = os.open(path, os.O_RDONLY | os.O_CREAT)
    try:
        writer = mnt.spawn(["dd", "if=/dev/zero", f"of={path}", "bs=16K"])
        wait_until(lambda: xattr(path, "waiting_writes") == 1, what="a writer waiting")
        queued = xattr(path, "queued_bytes")
        assert writer.poll() is None and queued >= 48 * 1024
        writer.send_signal(signal.SIGINT)
        assert writer.wait(timeout=3) != 0
        assert os.read(reader, 1 << 20) == bytes(queued)
    finally:
        os.close(reader)


# Opens the stream in a thread that then exits, and reads it from another:
# FUSE names the opening thread, which is gone by the time of the read.
THREADED_READER = """
import os, sys, threading
fds = []
opener = threading.Thread(target=lambda: fds.append(os.open(sys.argv[1], os.O_RDONLY)))
opener.start()
opener.join()
reader = threading.Thread(target=os.read, args=(fds[0], 10))
reader.start()
print("reading", flush=True)
reader.join()
"""


def test_a_read_in_another_thread_than_the_opener_can_be_stopped(mnt):
    path = mnt / "idle"
    path.touch()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        reader = mnt.spawn([sys.executable, "-c", THREADED_READER, str(path)], text=True)
        assert reader.stdout.readline() == "reading\n"
        wait_parked(path)
        reader.send_signal(sig)
        assert reader.wait(timeout=3) == -sig
