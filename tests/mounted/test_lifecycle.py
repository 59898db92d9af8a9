"""Stopping the daemon: signals, unmounts, and what blocked readers see."""

import os
import signal
import subprocess
import sys

import pytest

from streamfs_fuse.testing import wait_until, xattr
from streamfs_fuse.mount import heap_on_huge_pages, is_mounted


def start_idle_readers(mnt, count, name="idle"):
    path = mnt / name
    path.touch()
    readers = [mnt.spawn(["cat", path]) for _ in range(count)]
    wait_until(lambda: xattr(path, "readers") == count, what="readers")
    return readers


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_ends_blocked_readers_with_eof_and_unmounts(mnt, sig):
    readers = start_idle_readers(mnt, 20)
    assert mnt.stop(sig) == 0
    for reader in readers:
        assert reader.communicate(timeout=10) == (b"", b"") and reader.returncode == 0
    assert not is_mounted(str(mnt.path))


def test_readers_drain_queued_data_before_eof_on_shutdown(mnt):
    path = mnt / "queued"
    fd = os.open(path, os.O_RDONLY | os.O_CREAT)
    try:
        path.write_bytes(b"x" * 100_000)
        mnt.daemon.send_signal(signal.SIGTERM)
        data = b""
        while chunk := os.read(fd, 4096):
            data += chunk
        assert data == b"x" * 100_000
    finally:
        os.close(fd)
    assert mnt.daemon.wait(10) == 0


def test_fusermount_unmount_of_idle_mount_exits_zero(mnt):
    (mnt / "s").write_bytes(b"data")
    assert subprocess.run(["fusermount3", "-u", mnt.path]).returncode == 0
    assert mnt.daemon.wait(10) == 0


def test_lazy_unmount_ends_blocked_readers_and_the_daemon(mnt):
    readers = start_idle_readers(mnt, 3)
    assert subprocess.run(["fusermount3", "-u", "-z", mnt.path]).returncode == 0
    for reader in readers:
        assert reader.communicate(timeout=10)[0] == b"" and reader.returncode == 0
    assert mnt.daemon.wait(10) == 0


def test_after_sigkill_users_see_enotconn_and_can_remount(mount_with, tmp_path):
    mnt = mount_with()
    (mnt / "s").touch()
    mnt.stop(signal.SIGKILL)
    with pytest.raises(OSError) as raised:
        os.stat(mnt / "s")
    assert raised.value.errno == 107  # ENOTCONN: Transport endpoint is not connected
    again = subprocess.run([sys.executable, "-m", "streamfs_fuse", mnt.path, "-f"],
                           capture_output=True, text=True, timeout=30)
    assert again.returncode == 1 and "fusermount3 -u" in again.stderr
    assert subprocess.run(["fusermount3", "-u", mnt.path]).returncode == 0
    os.rmdir(mnt.path)
    remounted = mount_with(name="mnt")
    (remounted / "s").write_bytes(b"works")
    assert os.listdir(remounted.path) == ["s"]


@pytest.mark.parametrize(("tunables", "huge"), [
    (None, False), ("", False), ("glibc.malloc.hugetlb=0", False),
    ("glibc.malloc.hugetlb=1", True), ("glibc.malloc.arena_max=2:glibc.malloc.hugetlb=2", True),
    ("glibc.malloc.hugetlb", False), ("glibc.malloc.hugetlbx=1", False),
])
def test_glibc_tunables_say_whether_the_heap_is_on_huge_pages(monkeypatch, tunables, huge):
    if tunables is None:
        monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    else:
        monkeypatch.setenv("GLIBC_TUNABLES", tunables)
    assert heap_on_huge_pages() is huge
