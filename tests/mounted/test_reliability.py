"""Slow, stuck, killed and numerous readers and writers on a real mount."""

import errno
import os
import pwd
import signal
import stat
import subprocess
import sys

import pytest

from streamfs_fuse.testing import as_user, wait_parked, wait_until, xattr




# -- slow-reader policies -------------------------------------------------

def test_block_policy_is_lossless_and_stalls_the_writer(mount_with):
    mnt = mount_with("--slow-reader=block", "--channel-buffer-size=256KB")
    path = mnt / "lossless"
    reader = os.open(path, os.O_RDONLY | os.O_CREAT)
    try:
        data = os.urandom(2 * 1024 * 1024)
        source = mnt.path.parent / "source"
        source.write_bytes(data)
        writer = mnt.spawn(["dd", f"if={source}", f"of={path}", "bs=64K", "status=none"])
        wait_until(lambda: xattr(path, "waiting_writes") == 1, what="the writer waiting")
        assert writer.poll() is None, "the writer went on past a full reader"
        assert xattr(path, "queued_bytes") <= 256 * 1024
        received = bytearray()
        while len(received) < len(data):
            received += os.read(reader, 1 << 20)
        assert writer.wait(10) == 0
        assert bytes(received) == data and xattr(path, "dropped_chunks") == 0
    finally:
        os.close(reader)


def test_disconnect_policy_cuts_off_the_slow_reader_only(mount_with):
    mnt = mount_with("--slow-reader=disconnect", "--channel-buffer-size=64KB")
    path = mnt / "cut"
    slow = os.open(path, os.O_RDONLY | os.O_CREAT)
    fast = os.open(path, os.O_RDONLY)
    try:
        with open(path, "wb", buffering=0) as writer:
            for i in range(8):
                writer.write(bytes([i]) * 16384)
                assert os.read(fast, 1 << 20) == bytes([i]) * 16384
        with pytest.raises(OSError) as raised:
            os.read(slow, 100)
        assert raised.value.errno == errno.ENOBUFS
        assert xattr(path, "disconnected_readers") == 1 and xattr(path, "readers") == 1
    finally:
        os.close(slow)
        os.close(fast)
    assert "disconnected" in mnt.log()


def test_per_stream_policy_with_setfattr(mnt):
    path = mnt / "policy"
    path.touch()
    assert xattr(path, "slow_reader") == "drop"
    subprocess.run(["setfattr", "-n", "user.streamfs.slow_reader", "-v", "block", path],
                   check=True)
    assert xattr(path, "slow_reader") == "block"
    bad = subprocess.run(["setfattr", "-n", "user.streamfs.slow_reader", "-v", "sometimes", path],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "Invalid argument" in bad.stderr
    with pytest.raises(OSError) as raised:
        os.setxattr(path, "user.streamfs.readers", b"5")
    assert raised.value.errno == errno.ENOTSUP


def test_memory_cap_sheds_the_reader_furthest_behind(mount_with):
    # No ring: history would keep the chunks, and they would cost the cap nothing.
    mnt = mount_with("--max-memory=256KB", "--ring-buffer-size=0")
    behind = os.open(mnt / "a", os.O_RDONLY | os.O_CREAT)
    current = os.open(mnt / "a", os.O_RDONLY)
    try:
        with open(mnt / "a", "wb", buffering=0) as writer:
            for i in range(32):
                writer.write(bytes([i]) * 16384)
                assert os.read(current, 1 << 20) == bytes([i]) * 16384
        assert xattr(mnt / "a", "held_bytes") <= 256 * 1024
        # A chunk counts once, with its bookkeeping, however many readers hold
        # it: 15 fill the 256 KiB, so the reader behind lost the other 17.
        assert xattr(mnt / "a", "dropped_bytes") == 17 * 16384
        # What is left for the reader furthest behind is the newest data.
        assert os.read(behind, 1 << 20) == b"".join(bytes([i]) * 16384 for i in range(17, 32))
    finally:
        os.close(behind)
        os.close(current)


# -- scale ------------------------------------------------------------------

# Opens COUNT handles on the streams and blocks a thread in read() on each,
# which then closes its handle; prints "ready" once all have been started, then
# a line per distinct message received, and the number of failed closes.
CROWD = """
import collections, os, resource, sys, threading
resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
threading.stack_size(64 * 1024)
paths, count = sys.argv[1:-1], int(sys.argv[-1])
fds = [os.open(paths[i % len(paths)], os.O_RDONLY) for i in range(count)]
got = collections.Counter()
failed_closes = []
def read(fd):
    got[os.read(fd, 2048)] += 1
    try:
        os.close(fd)
    except OSError as e:
        failed_closes.append(e)
threads = [threading.Thread(target=read, args=(fd,)) for fd in fds]
for t in threads: t.start()
print("ready", flush=True)
for t in threads: t.join()
for message, n in got.items(): print(n, len(message), flush=True)
print("failed closes", len(failed_closes), flush=True)
"""


def start_crowd(mnt, paths, count, processes):
    crowds = [mnt.spawn([sys.executable, "-c", CROWD, *map(str, paths), str(count // processes)],
                        text=True) for _ in range(processes)]
    for crowd in crowds:
        assert crowd.stdout.readline() == "ready\n"
    return crowds


def assert_mount_answers(mnt, path):
    """ls and stat get answers while every reader is parked in the daemon."""
    ls = subprocess.run(["ls", "-l", mnt.path], capture_output=True, text=True, timeout=10)
    assert ls.returncode == 0 and path.name in ls.stdout
    assert subprocess.run(["stat", path], capture_output=True, timeout=10).returncode == 0


def test_ten_thousand_readers_on_one_stream(mnt):
    path = mnt / "crowd"
    path.touch()
    crowds = start_crowd(mnt, [path], 10_000, processes=10)
    wait_parked(path, 10_000)
    assert_mount_answers(mnt, path)
    path.write_bytes(os.urandom(1024))
    for crowd in crowds:
        out, _ = crowd.communicate(timeout=120)
        assert out.split() == ["1000", "1024", "failed", "closes", "0"]


def test_a_thousand_streams_with_one_reader_each(mnt):
    paths = [mnt / f"s{i:04d}" for i in range(1000)]
    for path in paths:
        path.touch()
    crowds = start_crowd(mnt, paths, 1000, processes=1)
    for path in paths:
        wait_parked(path)
    assert_mount_answers(mnt, paths[-1])
    for path in paths:
        path.write_bytes(b"m" * 1024)
    out, _ = crowds[0].communicate(timeout=120)
    assert out.split() == ["1000", "1024", "failed", "closes", "0"]


# -- faults -----------------------------------------------------------------

def test_killed_writer_leaves_the_stream_and_readers_going(mnt):
    path = mnt / "survivor"
    path.touch()
    reader = os.open(path, os.O_RDONLY)
    try:
        writer = mnt.spawn(["sh", "-c", f"while :; do echo tick; sleep 0.05; done > '{path}'"])
        assert os.read(reader, 100).startswith(b"tick")
        writer.kill()
        writer.wait(5)
        path.write_bytes(b"second writer\n")
        data = b""
        while not data.endswith(b"second writer\n"):
            data += os.read(reader, 4096)
        assert set(data.split(b"\n")[:-2]) <= {b"tick"}
    finally:
        os.close(reader)


def test_sigterm_with_a_thousand_blocked_readers(mnt):
    path = mnt / "crowd"
    path.touch()
    crowds = start_crowd(mnt, [path], 1000, processes=1)
    wait_parked(path, 1000)
    assert mnt.stop(signal.SIGTERM, timeout=10) == 0
    out, _ = crowds[0].communicate(timeout=30)
    # Every reader got EOF and closed its file without an error.
    assert out.split() == ["1000", "0", "failed", "closes", "0"]


# -- bad input ----------------------------------------------------------------

def test_odd_names_and_sizes_break_nothing_for_other_streams(mnt):
    other = mnt / "other"
    witness = os.open(other, os.O_RDONLY | os.O_CREAT)
    try:
        raw = os.path.join(os.fsencode(mnt.path), b"bytes-\xff\xfe")
        with open(raw, "wb") as f:
            f.write(b"")
        assert b"bytes-\xff\xfe" in os.listdir(os.fsencode(mnt.path))
        big = mnt / "big"
        reader = os.open(big, os.O_RDONLY | os.O_CREAT)
        try:
            data = os.urandom(3 * 1024 * 1024 + 5)
            with open(big, "wb", buffering=0) as writer:
                assert writer.write(data) == len(data)
            assert os.read(reader, 1) == data[:1]
            received = bytearray(data[:1])
            while len(received) < len(data):
                received += os.read(reader, 1 << 20)
            assert bytes(received) == data
        finally:
            os.close(reader)
        with pytest.raises(NotADirectoryError):
            open(mnt / "big" / "inside", "wb")
        other.write_bytes(b"still fine")
        assert os.read(witness, 100) == b"still fine"
    finally:
        os.close(witness)


# -- permissions ----------------------------------------------------------------

def test_permissions_are_enforced_for_other_users(world_readable_dir, mount_with,
                                                   unprivileged_user):
    user = unprivileged_user
    mnt = mount_with("-o", "allow_other,default_permissions", parent=world_readable_dir)
    os.chmod(mnt.path, 0o755)
    feeds = mnt / "feeds"
    feeds.mkdir(mode=0o755)
    root_stream = feeds / "root-owned"
    root_stream.touch(mode=0o644)
    # The user can read a 0644 stream owned by root...
    user_reader = mnt.spawn(["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups",
                             "head", "-c", "5", root_stream])
    wait_until(lambda: xattr(root_stream, "readers") == 1, what="the user's reader")
    root_stream.write_bytes(b"hello")
    assert user_reader.communicate(timeout=10)[0] == b"hello"
    # ...but not write it, remove it, or create streams in a root-owned 0755 directory.
    assert "Permission denied" in as_user(user, "sh", "-c", f"echo x > '{root_stream}'").stderr
    assert "Permission denied" in as_user(user, "rm", "-f", root_stream).stderr
    assert "Permission denied" in as_user(user, "touch", feeds / "mine").stderr
    # Where the mode allows, the user creates and removes streams of its own.
    shared = mnt / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    mine = shared / "mine"
    assert as_user(user, "sh", "-c", f"echo x > '{mine}'").returncode == 0
    st = os.stat(mine)
    assert st.st_uid == pwd.getpwnam(user).pw_uid and stat.S_ISREG(st.st_mode)
    assert as_user(user, "rm", mine).returncode == 0
    assert not mine.exists() and root_stream.exists()
