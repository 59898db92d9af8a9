"""Stream semantics on a real mount, driven by real programs and syscalls."""

import errno
import hashlib
import os
import subprocess
import sys
import threading
import time

import pytest

from streamfs_fuse.testing import wait_parked, wait_until, xattr

from streamfs_fuse.core.chunk import CHUNK_OVERHEAD




def wait_for_readers(path, count):
    wait_until(lambda: xattr(path, "readers") == count, what=f"{count} readers on {path}")


def test_shell_writer_fans_out_to_cat_readers(mnt):
    live = mnt / "live"
    subprocess.run(["touch", live], check=True)
    readers = [mnt.spawn(["cat", live]) for _ in range(3)]
    wait_for_readers(live, 3)
    subprocess.run(["sh", "-c", f"for i in 1 2 3 4 5; do echo line $i; done > '{live}'"],
                   check=True)
    subprocess.run(["rm", live], check=True)
    expected = b"".join(b"line %d\n" % i for i in range(1, 6))
    for reader in readers:
        out, err = reader.communicate(timeout=10)
        assert (out, err, reader.returncode) == (expected, b"", 0)


@pytest.mark.parametrize("policy, megabytes", [("drop", 4), ("block", 48)])
def test_dd_megabyte_blocks_arrive_intact(mount_with, policy, megabytes):
    """Within the buffer under drop, and any amount under block, nothing is lost."""
    mnt = mount_with(f"--slow-reader={policy}")
    live = mnt / "dd"
    live.touch()
    received = mnt.path.parent / "received"
    reader = mnt.spawn(["dd", f"if={live}", f"of={received}", "bs=1M", "status=none"])
    wait_for_readers(live, 1)
    data = os.urandom(megabytes * 1024 * 1024)
    subprocess.run(["dd", f"of={live}", "bs=1M", "status=none"], input=data, check=True)
    live.unlink()
    reader.communicate(timeout=20)
    out = received.read_bytes()
    assert hashlib.sha256(out).hexdigest() == hashlib.sha256(data).hexdigest()


def test_head_takes_bytes_from_a_stream_that_goes_on(mnt):
    live = mnt / "ticker"
    with open(live, "wb", buffering=0) as writer:
        head = mnt.spawn(["head", "-c", "10", live])
        wait_for_readers(live, 1)
        writer.write(b"0123456789abcdef")
        out, _ = head.communicate(timeout=10)
        assert out == b"0123456789" and head.returncode == 0
        writer.write(b"still writable")


def test_python_reader_and_writer(mnt):
    path = mnt / "py"
    with open(path, "wb", buffering=0) as writer, open(path, "rb", buffering=0) as reader:
        assert writer.write(b"hello") == 5
        assert reader.read(100) == b"hello"
        writer.write(b"a")
        writer.write(b"b")
        assert reader.read(1) == b"a"
        assert reader.read(100) == b"b"


def test_read_returns_short_as_soon_as_data_is_queued(mnt):
    path = mnt / "short"
    path.touch()
    fd = os.open(path, os.O_RDONLY)
    try:
        got = []
        thread = threading.Thread(target=lambda: got.append(os.read(fd, 1 << 20)))
        thread.start()
        wait_parked(path)
        assert got == [], "read returned with nothing written"
        path.write_bytes(b"tiny")
        thread.join(10)
        assert got == [b"tiny"]
    finally:
        os.close(fd)


def test_late_joiner_gets_history_then_live_data(mount_with):
    mnt = mount_with("--ring-buffer-size=1MB")
    path = mnt / "late"
    with open(path, "wb", buffering=0) as writer:
        writer.write(b"before-1;")
        writer.write(b"before-2;")
        with open(path, "rb", buffering=0) as reader:
            assert reader.read(1000) == b"before-1;before-2;"
            writer.write(b"after;")
            assert reader.read(1000) == b"after;"


def test_ring_keeps_only_the_newest_bytes(mount_with):
    mnt = mount_with("--ring-buffer-size=10")
    path = mnt / "ring"
    with open(path, "wb", buffering=0) as writer:
        for chunk in (b"aaaa", b"bbbb", b"cccc"):
            writer.write(chunk)
        assert xattr(path, "ring_bytes") == 8 and xattr(path, "ring_chunks") == 2
        with open(path, "rb", buffering=0) as reader:
            assert reader.read(100) == b"bbbbcccc"


def test_two_concurrent_writers_interleave_whole_chunks(mnt):
    path = mnt / "mixed"
    path.touch()
    reader = mnt.spawn(["cat", path])
    wait_for_readers(path, 1)
    chunk_size, count = 4096, 200
    script = (
        "import os,sys\n"
        "fd = os.open(sys.argv[1], os.O_WRONLY)\n"
        "for i in range({count}):\n"
        "    os.write(fd, (sys.argv[2] * {size})[:{size}-8].encode() + b'%08d' % i)\n"
    ).format(count=count, size=chunk_size)
    writers = [mnt.spawn([sys.executable, "-c", script, str(path), tag]) for tag in "AB"]
    for writer in writers:
        writer.communicate(timeout=30)
        assert writer.returncode == 0
    path.unlink()
    out, _ = reader.communicate(timeout=10)
    chunks = [out[i:i + chunk_size] for i in range(0, len(out), chunk_size)]
    assert len(chunks) == 2 * count
    seen = {"A": [], "B": []}
    for chunk in chunks:
        tag = chr(chunk[0])
        assert chunk[:chunk_size - 8] == tag.encode() * (chunk_size - 8), "a chunk was split"
        seen[tag].append(int(chunk[-8:]))
    assert seen == {"A": list(range(count)), "B": list(range(count))}


def test_rm_gives_readers_queued_data_then_eof_and_writers_epipe(mnt):
    path = mnt / "gone"
    writer = os.open(path, os.O_WRONLY | os.O_CREAT)
    reader = os.open(path, os.O_RDONLY)
    try:
        os.write(writer, b"queued")
        os.unlink(path)
        assert not path.exists()
        assert os.read(reader, 3) == b"que"
        assert os.read(reader, 100) == b"ued"
        assert os.read(reader, 100) == b""
        with pytest.raises(BrokenPipeError):
            os.write(writer, b"more")
        # The name is free at once for a new stream.
        path.write_bytes(b"new")
        assert xattr(path, "bytes_written") == 3
    finally:
        os.close(reader)
        os.close(writer)


def test_rm_wakes_blocked_cat_readers(mnt):
    path = mnt / "idle"
    path.touch()
    readers = [mnt.spawn(["cat", path]) for _ in range(5)]
    wait_for_readers(path, 5)
    subprocess.run(["rm", path], check=True)
    for reader in readers:
        assert reader.communicate(timeout=10) == (b"", b"") and reader.returncode == 0


def test_closing_the_last_writer_does_not_end_the_stream(mnt):
    path = mnt / "writers"
    reader = os.open(path, os.O_RDONLY | os.O_CREAT)
    try:
        path.write_bytes(b"first")
        assert os.read(reader, 100) == b"first"
        path.write_bytes(b"second")
        assert os.read(reader, 100) == b"second"
    finally:
        os.close(reader)


def test_lookup_of_a_missing_name_does_not_create_it(mnt):
    assert not (mnt / "nothing").exists()
    with pytest.raises(FileNotFoundError):
        open(mnt / "nothing", "rb")
    assert os.listdir(mnt.path) == []


def test_truncate_and_o_trunc_are_accepted(mnt):
    path = mnt / "trunc"
    subprocess.run(["sh", "-c", f"echo one > '{path}'; echo two > '{path}'"], check=True)
    os.truncate(path, 0)
    assert path.stat().st_size == 8


def test_read_write_handle_reads_its_own_writes(mnt):
    path = mnt / "rw"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        os.write(fd, b"echo")
        assert os.read(fd, 10) == b"echo"
    finally:
        os.close(fd)


def test_slow_reader_drops_chunks_and_it_shows_in_xattrs(mount_with):
    # Room for 4 chunks of 4 KiB with their bookkeeping, not for 5.
    mnt = mount_with(f"--channel-buffer-size={4 * (4096 + CHUNK_OVERHEAD)}",
                     "--ring-buffer-size=4KB")
    path = mnt / "drops"
    fd_slow = os.open(path, os.O_RDONLY | os.O_CREAT)
    try:
        with open(path, "wb", buffering=0) as writer:
            for i in range(16):
                writer.write(bytes([65 + i]) * 4096)
        assert xattr(path, "dropped_chunks") == 12
        assert xattr(path, "dropped_bytes") == 12 * 4096
        data = os.read(fd_slow, 1 << 20)
        assert data == b"A" * 4096 + b"B" * 4096 + b"C" * 4096 + b"D" * 4096
    finally:
        os.close(fd_slow)
    assert "1 slow reader(s) missed" in mnt.log()


def test_ls_stat_and_getfattr(mnt):
    path = mnt / "stats"
    with open(path, "wb", buffering=0) as writer:
        writer.write(b"x" * 1000)
        writer.write(b"y" * 24)
        ls = subprocess.run(["ls", "-l", mnt.path], capture_output=True, text=True, check=True)
        assert "1024" in ls.stdout and "stats" in ls.stdout
        st = os.stat(path)
        assert st.st_size == 1024 and st.st_blocks == 2
        assert st.st_uid == os.getuid() and st.st_nlink == 1
        before = st.st_mtime_ns
        wait_until(lambda: time.time_ns() > before, what="the clock past the first write")
        writer.write(b"z")
        assert os.stat(path).st_mtime_ns > before
        dump = subprocess.run(["getfattr", "-d", path], capture_output=True, text=True,
                              check=True).stdout
        for name, value in [("readers", 0), ("writers", 1), ("bytes_written", 1025),
                            ("ring_bytes", 1025), ("ring_chunks", 1), ("dropped_chunks", 0),
                            ("dropped_bytes", 0), ("channel_buffer_size", 6291456),
                            ("ring_buffer_size", 6291456)]:
            assert f'user.streamfs.{name}="{value}"' in dump


def test_mode_honours_umask_and_chmod_chown(mnt):
    path = mnt / "perm"
    old = os.umask(0o027)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o666))
    finally:
        os.umask(old)
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o640)
    os.chmod(path, 0o600)
    os.chown(path, 1234, 4321)
    st = os.stat(path)
    assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o600, 1234, 4321)


def test_directories_group_streams(mnt):
    cams = mnt / "cams"
    cams.mkdir()
    (cams / "front").write_bytes(b"frame")
    assert os.listdir(cams) == ["front"]
    with pytest.raises(OSError) as raised:
        cams.rmdir()
    assert raised.value.errno == errno.ENOTEMPTY
    subprocess.run(["rm", cams / "front"], check=True)
    subprocess.run(["rmdir", cams], check=True)
    assert os.listdir(mnt.path) == []


def test_stream_in_missing_directory_is_enoent(mnt):
    with pytest.raises(FileNotFoundError):
        open(mnt / "nodir" / "x", "wb")


def test_unsupported_file_types_get_eperm(mnt):
    (mnt / "target").touch()
    for attempt in (lambda: os.mkfifo(mnt / "fifo"),
                    lambda: os.symlink("target", mnt / "link"),
                    lambda: os.link(mnt / "target", mnt / "hard")):
        with pytest.raises(PermissionError):
            attempt()


def test_rename_moves_a_live_stream(mnt):
    (mnt / "dir").mkdir()
    path = mnt / "old"
    reader = os.open(path, os.O_RDONLY | os.O_CREAT)
    try:
        os.rename(path, mnt / "dir" / "new")
        (mnt / "dir" / "new").write_bytes(b"moved")
        assert os.read(reader, 100) == b"moved"
        assert os.listdir(mnt.path) == ["dir"]
    finally:
        os.close(reader)


def test_names_up_to_255_bytes(mnt):
    (mnt / ("n" * 255)).write_bytes(b"ok")
    with pytest.raises(OSError) as raised:
        (mnt / ("n" * 256)).write_bytes(b"no")
    assert raised.value.errno == errno.ENAMETOOLONG
    odd = "caméra-\u2603 tab\there"
    (mnt / odd).touch()
    assert sorted(os.listdir(mnt.path)) == sorted(["n" * 255, odd])


def test_directory_read_of_a_stream_and_write_of_zero_bytes(mnt):
    path = mnt / "z"
    with open(path, "wb", buffering=0) as writer:
        assert writer.write(b"") == 0
    assert xattr(path, "chunks_written") == 0
    with pytest.raises(NotADirectoryError):
        os.listdir(path)


def test_many_blocked_readers_do_not_starve_the_mount(mnt):
    """A thousand reads parked in the daemon; writes, ls and stat still work."""
    count = 1000
    path = mnt / "crowd"
    path.touch()
    script = (
        "import os, sys, threading\n"
        "fds = [os.open(sys.argv[1], os.O_RDONLY) for _ in range(int(sys.argv[2]))]\n"
        "got = []\n"
        "def read(fd): got.append(os.read(fd, 100))\n"
        "threads = [threading.Thread(target=read, args=(fd,)) for fd in fds]\n"
        "for t in threads: t.start()\n"
        "print('started', flush=True)\n"
        "for t in threads: t.join()\n"
        "print(len(got), len(set(got)), got[0].decode())\n"
    )
    crowd = mnt.spawn([sys.executable, "-c", script, str(path), str(count)], text=True)
    assert crowd.stdout.readline() == "started\n"
    wait_parked(path, count)
    assert os.listdir(mnt.path) == ["crowd"]
    assert os.stat(path).st_size == 0
    path.write_bytes(b"hello crowd")
    out, _ = crowd.communicate(timeout=60)
    assert out.split() == [str(count), "1", "hello", "crowd"]
