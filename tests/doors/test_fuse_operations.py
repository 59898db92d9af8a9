"""The FUSE operations called directly, without a kernel (as s3ql tests its own).

Each test drives StreamFS the way the kernel would: lookups, opens with
flags, reads and writes on handles, releases; and checks the replies and the
errno of each FUSEError.
"""

import errno
import os
import select
import stat
from types import SimpleNamespace

import pyfuse3
import pytest
import trio
import trio.testing

from streamfs_fuse.fuse.operations import READER_DISCONNECTED_ERRNO, StreamFS, failures
from streamfs_fuse.core.tree import Tree
from streamfs_fuse.settings import SlowReaderPolicy, StreamSettings

ROOT = pyfuse3.ROOT_INODE


def ctx(uid=None, pid=None):
    return SimpleNamespace(uid=os.getuid() if uid is None else uid, gid=os.getgid(),
                           pid=pid or os.getpid(), umask=0o022)


def make_fs(**settings):
    return StreamFS(Tree(StreamSettings(**settings), os.getuid(), os.getgid()))


async def create(fs, name, flags=os.O_WRONLY, parent=ROOT):
    info, attrs = await fs.create(parent, name, 0o644 | stat.S_IFREG, flags, ctx())
    return info.fh, attrs.st_ino


async def open_(fs, inode, flags):
    return (await fs.open(inode, flags, ctx())).fh


def fuse_errno(excinfo):
    return excinfo.value.errno


async def test_a_write_reaches_every_open_reader():
    fs = make_fs()
    wfh, inode = await create(fs, b"live")
    readers = [await open_(fs, inode, os.O_RDONLY) for _ in range(3)]
    assert await fs.write(wfh, 0, b"hello") == 5
    for fh in readers:
        assert bytes(await fs.read(fh, 0, 100)) == b"hello"
    attrs = await fs.getattr(inode, ctx())
    assert attrs.st_size == 5 and stat.S_ISREG(attrs.st_mode)


async def test_late_reader_gets_history():
    fs = make_fs()
    wfh, inode = await create(fs, b"live")
    await fs.write(wfh, 0, b"before ")
    fh = await open_(fs, inode, os.O_RDONLY)
    await fs.write(wfh, 0, b"after")
    assert bytes(await fs.read(fh, 0, 100)) == b"before after"


async def test_unlink_gives_readers_eof_and_writers_epipe():
    fs = make_fs()
    wfh, inode = await create(fs, b"live")
    rfh = await open_(fs, inode, os.O_RDONLY)
    await fs.write(wfh, 0, b"last")
    await fs.unlink(ROOT, b"live", ctx())
    assert bytes(await fs.read(rfh, 0, 100)) == b"last"
    assert await fs.read(rfh, 4, 100) == b""
    assert bytes(await fs.read(rfh, 2, 100)) == b"st"  # a seek back still reads the ring
    with pytest.raises(pyfuse3.FUSEError) as raised:
        await fs.write(wfh, 0, b"more")
    assert fuse_errno(raised) == errno.EPIPE
    with pytest.raises(pyfuse3.FUSEError) as raised:
        await fs.lookup(ROOT, b"live", ctx())
    assert fuse_errno(raised) == errno.ENOENT


async def test_nonblocking_read_of_an_empty_stream_is_eagain_once_polled():
    fs = make_fs()
    wfh, inode = await create(fs, b"live")
    fh = await open_(fs, inode, os.O_RDONLY | os.O_NONBLOCK)
    with trio.move_on_after(0) as waited:  # not polled yet: the read waits
        await fs.read(fh, 0, 100)
    assert waited.cancelled_caught
    assert await fs.poll(inode, fh, None, ctx()) == 0
    with pytest.raises(pyfuse3.FUSEError) as raised:
        await fs.read(fh, 0, 100)
    assert fuse_errno(raised) == errno.EAGAIN
    await fs.write(wfh, 0, b"x")
    assert await fs.poll(inode, fh, None, ctx()) & select.POLLIN
    assert bytes(await fs.read(fh, 0, 100)) == b"x"


async def test_reads_at_other_offsets_read_the_ring_there():
    fs = make_fs()
    wfh, inode = await create(fs, b"log")
    for line in (b"one\n", b"two\n", b"three\n"):
        await fs.write(wfh, 0, line)
    fh = await open_(fs, inode, os.O_RDONLY)
    assert bytes(await fs.read(fh, 4, 4)) == b"two\n"  # pread, or lseek then read
    assert bytes(await fs.read(fh, 8, 100)) == b"three\n"  # and on from there
    assert bytes(await fs.read(fh, 0, 3)) == b"one"  # back again
    assert bytes(await fs.read(fh, 14, 100)) == b""  # the end after a seek: EOF, as a file
    assert bytes(await fs.read(fh, 10, 4)) == b"ree\n"  # a seek after that EOF...
    with trio.move_on_after(0) as waited:  # ...follows the stream: waits for live data
        await fs.read(fh, 14, 100)
    assert waited.cancelled_caught


async def test_an_interrupted_wait_is_eintr_and_loses_nothing():
    fs = make_fs(slow_reader=SlowReaderPolicy.BLOCK, channel_buffer_size=1)
    wfh, inode = await create(fs, b"live")
    rfh = await open_(fs, inode, os.O_RDONLY)
    outcomes = []

    async def attempt(operation, *args):
        try:
            outcomes.append(bytes(await operation(*args)) if operation == fs.read
                            else await operation(*args))
        except pyfuse3.FUSEError as e:
            outcomes.append(e.errno)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(attempt, fs.read, rfh, 0, 10)
        await trio.testing.wait_all_tasks_blocked()
        fs._handles[rfh].waiter.interrupt()
    assert outcomes == [errno.EINTR]
    # A full reader makes the next write wait; interrupting it writes nothing.
    await fs.write(wfh, 0, b"first")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(attempt, fs.write, wfh, 0, b"second")
        await trio.testing.wait_all_tasks_blocked()
        fs._handles[wfh].waiter.interrupt()
    assert outcomes == [errno.EINTR, errno.EINTR]
    assert bytes(await fs.read(rfh, 0, 100)) == b"first"
    assert fs._handles[wfh].node.stream.bytes_written == 5


async def test_disconnected_reader_gets_enobufs():
    fs = make_fs(slow_reader=SlowReaderPolicy.DISCONNECT, channel_buffer_size=1)
    wfh, inode = await create(fs, b"live")
    rfh = await open_(fs, inode, os.O_RDONLY)
    await fs.write(wfh, 0, b"a")
    await fs.write(wfh, 0, b"b")
    with pytest.raises(pyfuse3.FUSEError) as raised:
        await fs.read(rfh, 0, 10)
    assert fuse_errno(raised) == READER_DISCONNECTED_ERRNO


async def test_read_write_handle_does_not_hold_back_its_own_writes():
    fs = make_fs(slow_reader=SlowReaderPolicy.BLOCK, channel_buffer_size=64 * 1024)
    fh, inode = await create(fs, b"rw", flags=os.O_RDWR)
    with trio.fail_after(5):
        for _ in range(100):
            await fs.write(fh, 0, b"x" * 4096)
    assert int(await fs.getxattr(inode, b"user.streamfs.dropped_chunks", ctx())) > 0


async def test_xattrs_are_the_stream_statistics():
    fs = make_fs()
    wfh, inode = await create(fs, b"live")
    await fs.write(wfh, 0, b"12345")
    names = await fs.listxattr(inode, ctx())
    assert b"user.streamfs.bytes_written" in names and b"user.streamfs.waiting_reads" in names
    assert await fs.getxattr(inode, b"user.streamfs.bytes_written", ctx()) == b"5"
    assert await fs.getxattr(inode, b"user.streamfs.slow_reader", ctx()) == b"drop"
    await fs.setxattr(inode, b"user.streamfs.slow_reader", b"block", ctx())
    assert await fs.getxattr(inode, b"user.streamfs.slow_reader", ctx()) == b"block"
    for name, value, uid, expected in [
        (b"user.streamfs.slow_reader", b"never", None, errno.EINVAL),
        (b"user.streamfs.readers", b"3", None, errno.ENOTSUP),
        (b"user.streamfs.slow_reader", b"drop", 12345, errno.EPERM),
    ]:
        with pytest.raises(pyfuse3.FUSEError) as raised:
            await fs.setxattr(inode, name, value, ctx(uid=uid))
        assert fuse_errno(raised) == expected


async def test_directories_rename_and_refusals():
    fs = make_fs()
    attrs = await fs.mkdir(ROOT, b"cams", 0o755 | stat.S_IFDIR, ctx())
    wfh, inode = await create(fs, b"front", parent=attrs.st_ino)
    await fs.rename(attrs.st_ino, b"front", ROOT, b"front.ts", 0, ctx())
    assert fs._handles[wfh].node.stream.name == "/front.ts"
    with pytest.raises(pyfuse3.FUSEError) as raised:
        await fs.rmdir(ROOT, b"front.ts", ctx())
    assert fuse_errno(raised) == errno.ENOTDIR
    await fs.rmdir(ROOT, b"cams", ctx())
    for call, expected in [
        (fs.link(inode, ROOT, b"hard", ctx()), errno.EPERM),
        (fs.symlink(ROOT, b"sym", b"front.ts", ctx()), errno.EPERM),
        (fs.mknod(ROOT, b"fifo", stat.S_IFIFO | 0o644, 0, ctx()), errno.EPERM),
        (fs.mkdir(ROOT, b"x" * 256, 0o755, ctx()), errno.ENAMETOOLONG),
        (fs.create(ROOT, b"front.ts", 0o644, os.O_WRONLY | os.O_EXCL, ctx()), errno.EEXIST),
    ]:
        with pytest.raises(pyfuse3.FUSEError) as raised:
            await call
        assert fuse_errno(raised) == expected


async def test_an_unlinked_node_lives_until_forgotten_and_released():
    fs = make_fs()
    wfh, inode = await create(fs, b"live")  # create counts as one lookup
    await fs.unlink(ROOT, b"live", ctx())
    assert (await fs.getattr(inode, ctx())).st_nlink == 0
    await fs.release(wfh)
    assert inode in fs.tree.nodes
    await fs.forget([(inode, 1)])
    assert inode not in fs.tree.nodes


async def test_readdir_lists_entries_once_each(monkeypatch):
    fs = make_fs()
    for i in range(5):
        await create(fs, b"s%d" % i)
    listed = []
    room = [2]  # the kernel's buffer takes two entries, then is full

    def reply(token, name, attrs, next_id):
        if not room[0]:
            return False
        room[0] -= 1
        listed.append((name, next_id))
        return True

    monkeypatch.setattr(pyfuse3, "readdir_reply", reply)
    fh = await fs.opendir(ROOT, ctx())
    await fs.readdir(fh, 0, None)
    assert [name for name, _ in listed] == [b".", b".."]
    # Changes during a listing: none listed twice or skipped.
    await fs.create(ROOT, b"new", 0o644, os.O_WRONLY, ctx())
    await fs.unlink(ROOT, b"s4", ctx())
    room[0] = 100
    await fs.readdir(fh, listed[-1][1], None)
    assert [name for name, _ in listed] == [b".", b".."] + [b"s%d" % i for i in range(4)]
    await fs.releasedir(fh)
    listed.clear()
    fh = await fs.opendir(ROOT, ctx())
    await fs.readdir(fh, 0, None)
    assert [name for name, _ in listed][2:] == [b"s0", b"s1", b"s2", b"s3", b"new"]


async def test_an_unexpected_failure_is_eio_and_logged_once_a_minute(caplog):
    failures._seen.clear()  # what earlier tests logged
    fs = make_fs()
    _, inode = await create(fs, b"live")

    def broken(node):
        raise RuntimeError("a bug")

    fs._attributes = fs.tree.release = broken
    for _ in range(3):
        with pytest.raises(pyfuse3.FUSEError) as raised:
            await fs.getattr(inode, ctx())
        assert fuse_errno(raised) == errno.EIO
    await fs.forget([(inode, 1)])  # forget may not raise, even EIO
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("getattr failed (answered EIO)") == 1
    # The repeats are reported once their minute is over; another message is not hidden.
    assert "forget failed (answered EIO)" in messages
    failures.flush()  # the minute is not over: nothing yet
    for seen in failures._seen.values():
        seen[0] -= failures.interval
    failures.flush()
    assert "2 more like this in 60 s: getattr failed (answered EIO) (RuntimeError)" in [
        r.getMessage() for r in caplog.records]
    del fs._attributes, fs.tree.release
    assert (await fs.getattr(inode, ctx())).st_ino == inode
