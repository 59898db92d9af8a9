"""The pyfuse3 Operations that expose streams as files.

This layer only maps FUSE requests onto the core (the tree in
``tree.py``, the streams in ``stream.py`` and ``reader.py``) and core
errors onto errno. What it keeps is FUSE's own: the kernel's lookups (as holds
on nodes), one handle per open(), one listing per opendir().

Caveats:
- Files are opened ``direct_io``: no page cache, so every read and write
  reaches the daemon. A stream is a file that grows: its size is every byte
  ever written, and the ring's bytes can be read at their offsets (see read()).
- pyfuse3 passes no open flags with a read, so a program that clears
  O_NONBLOCK with fcntl is not seen doing so (see read()).
- Hard links, symlinks, FIFOs and device nodes are refused with EPERM.
"""

from __future__ import annotations

import bisect
import contextlib
import enum
import errno
import functools
import inspect
import itertools
import logging
import os
import select
import stat
from dataclasses import asdict, dataclass, field

import pyfuse3
import trio

from ..core.access import Identity, check_owner
from ..settings import physical_memory
from .interrupts import SignalWatch
from ..logs import RepeatedLog
from ..core.reader import Reader, ReaderDisconnected
from ..core.tree import NAME_MAX, ROOT_INODE, Directory, Tree, Node, OpenStream, StreamFile
from ..core.stream import StreamClosed, Writer
from ..settings import Join, SlowReaderPolicy
from ..core.wait import Interrupted, Waiter

__all__ = ["StreamFS", "READER_DISCONNECTED_ERRNO"]

log = logging.getLogger(__name__)

#: What read() fails with after the ``disconnect`` policy cut a reader off:
#: "No buffer space available" says what happened.
READER_DISCONNECTED_ERRNO = errno.ENOBUFS

#: Sizes and times change with every write, so the kernel must not cache them.
ATTR_TIMEOUT = 0.0
#: Names change only through this mount, which the kernel sees; cache briefly.
ENTRY_TIMEOUT = 1.0

XATTR_PREFIX = b"user.streamfs."
#: The extended attributes that can be set, by the setting of the stream each changes.
SETTABLE_XATTRS = {b"user.streamfs.slow_reader": "slow_reader", b"user.streamfs.join": "join"}


@dataclass(eq=False, slots=True)
class Handle:
    """One open() of a stream: the core's open stream and what FUSE adds to it
    (slots: there may be 100,000)."""

    opened: OpenStream
    node: StreamFile
    reader: Reader | None
    writer: Writer | None
    nonblocking: bool
    #: Where the handle's reads and writes wait; a signal to ``pid`` interrupts it.
    waiter: Waiter
    #: The process that opened the handle.
    pid: int
    #: The file offset the kernel will give the next read if nobody seeks.
    position: int = 0
    #: The kernel's handle for the last poll(2) that found nothing ready.
    poll_handle: pyfuse3.PollHandle | None = None
    #: Whether the handle was ever polled; see :meth:`StreamFS.read`.
    polled: bool = False


@dataclass(eq=False)
class Listing:
    """One opendir(): the directory, and a snapshot of it for readdir."""

    directory: Directory
    entries: list[Node] | None = None
    offsets: list[int] = field(default_factory=list)


failures = RepeatedLog(log)


def access_of(flags: int) -> dict[str, bool]:
    """Whether open(2) ``flags`` read, write, or both."""
    access = flags & os.O_ACCMODE
    return {"read": access in (os.O_RDONLY, os.O_RDWR), "write": access in (os.O_WRONLY, os.O_RDWR)}


def failed(operation: str, error: Exception) -> pyfuse3.FUSEError:
    """An operation failed unexpectedly: log it (rate-limited), with its traceback, and answer EIO.

    pyfuse3 ends the whole mount when a handler raises anything but
    FUSEError, which would take every stream of every user with it.
    """
    failures.error("%s failed (answered EIO)", operation, exc_info=error)
    return pyfuse3.FUSEError(errno.EIO)


def answers_eio(cls: type[pyfuse3.Operations]) -> type[pyfuse3.Operations]:
    """Make every request handler of ``cls`` answer EIO rather than raise anything unexpected."""
    def wrap(name, method):
        @functools.wraps(method)
        async def handler(self, *args):
            try:
                return await method(self, *args)
            except pyfuse3.FUSEError:
                raise
            except Exception as e:
                # The tree refuses with an OSError carrying the errno to answer.
                error = (pyfuse3.FUSEError(e.errno) if isinstance(e, OSError) and e.errno
                         else failed(name, e))
                if name != "forget":  # which may not raise at all
                    raise error from None
        return handler

    for name, method in list(vars(cls).items()):
        if (name not in ("read", "write") and inspect.iscoroutinefunction(method)
                and hasattr(pyfuse3.Operations, name)):
            setattr(cls, name, wrap(name, method))
    return cls


@answers_eio
class StreamFS(pyfuse3.Operations):
    """A tree of directories whose files are live streams."""

    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(self, tree: Tree) -> None:
        super().__init__()
        assert pyfuse3.ROOT_INODE == ROOT_INODE
        self.tree = tree
        self._handles: dict[int, Handle] = {}
        self._listings: dict[int, Listing] = {}
        self._fhs = itertools.count(1)
        self.signals = SignalWatch()
        # (directory inode, name) that FUSE requests are removing: the kernel knows.
        self._own_changes: set[tuple[int, bytes]] = set()

    def init(self) -> None:
        # The kernel caches names for ENTRY_TIMEOUT; when another door removes
        # or moves one, it must be told at once.
        self.tree.name_watchers.append(self._name_gone)

    def _name_gone(self, parent: Directory, name: bytes) -> trio.Event | None:
        if (parent.inode, name) in self._own_changes:
            return None  # the kernel's own request: it knows
        done = trio.Event()
        trio.lowlevel.spawn_system_task(self._forget_name, parent.inode, name, done)
        return done

    @staticmethod
    async def _forget_name(parent_inode: int, name: bytes, done: trio.Event) -> None:
        # In a thread: the kernel may first wait for a request on the
        # directory that this loop is about to answer.
        try:
            await trio.to_thread.run_sync(pyfuse3.invalidate_entry, parent_inode, name)
        except Exception as e:  # not cached, or no mount (yet, or any more)
            log.debug("the kernel could not forget %r: %s", name, e)
        finally:
            done.set()

    @contextlib.contextmanager
    def _own_change(self, *names: tuple[int, bytes]):
        self._own_changes.update(names)
        try:
            yield
        finally:
            self._own_changes.difference_update(names)

    # -- helpers ---------------------------------------------------------

    def _attributes(self, node: Node) -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = node.inode
        attrs.generation = 0
        attrs.entry_timeout = ENTRY_TIMEOUT
        attrs.attr_timeout = ATTR_TIMEOUT
        attrs.st_mode = node.mode
        attrs.st_uid = node.uid
        attrs.st_gid = node.gid
        attrs.st_rdev = 0
        attrs.st_blksize = 4096
        attrs.st_atime_ns = node.atime_ns
        attrs.st_ctime_ns = node.ctime_ns
        attrs.st_mtime_ns = node.mtime_ns
        if isinstance(node, Directory):
            attrs.st_nlink = 2 + node.subdirs
            attrs.st_size = 0
            attrs.st_blocks = 0
        else:
            stream = node.stream
            attrs.st_nlink = 1 if node.linked else 0
            # A throughput counter, as in AGFS: every byte ever written.
            attrs.st_size = stream.size
            # What the ring holds, so du shows it.
            attrs.st_blocks = (stream.history_bytes + 511) // 512
        return attrs

    def close_all_streams(self) -> None:
        self.tree.close_all_streams()

    @property
    def open_handles(self) -> int:
        return len(self._handles)

    # -- names -----------------------------------------------------------

    async def lookup(self, parent_inode, name, ctx):
        tree = self.tree
        node = tree.child(tree.directory(parent_inode), name)
        tree.hold(node)
        return self._attributes(node)

    async def forget(self, inode_list):
        tree = self.tree
        for inode, count in inode_list:
            node = tree.nodes.get(inode)
            if node is not None:
                tree.release(node, count)

    async def getattr(self, inode, ctx):
        node = self.tree.node(inode)
        if isinstance(node, StreamFile):
            await node.stream.refresh()
        return self._attributes(node)

    async def setattr(self, inode, attr, fields, fh, ctx):
        node = self.tree.node(inode)
        # update_size (truncate, O_TRUNC) is accepted and ignored: a stream
        # cannot be shortened, and shell redirection must work.
        await self.tree.setattr(
            node,
            mode=attr.st_mode if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            atime_ns=attr.st_atime_ns if fields.update_atime else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None)
        return self._attributes(node)

    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        if not stat.S_ISREG(mode):
            raise pyfuse3.FUSEError(errno.EPERM)
        return await self._make(StreamFile, parent_inode, name, mode, ctx)

    async def mkdir(self, parent_inode, name, mode, ctx):
        return await self._make(Directory, parent_inode, name, mode, ctx)

    async def _make(self, kind, parent_inode, name, mode, ctx) -> pyfuse3.EntryAttributes:
        tree = self.tree
        node = await tree.create(kind, tree.directory(parent_inode), name, mode,
                                ctx.uid, ctx.gid)
        tree.hold(node)
        return self._attributes(node)

    async def unlink(self, parent_inode, name, ctx):
        with self._own_change((parent_inode, name)):
            await self.tree.unlink(self.tree.directory(parent_inode), name)

    async def rmdir(self, parent_inode, name, ctx):
        with self._own_change((parent_inode, name)):
            await self.tree.rmdir(self.tree.directory(parent_inode), name)

    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise pyfuse3.FUSEError(errno.EINVAL)
        tree = self.tree
        with self._own_change((parent_inode_old, name_old), (parent_inode_new, name_new)):
            await tree.rename(tree.directory(parent_inode_old), name_old,
                                   tree.directory(parent_inode_new), name_new,
                                   replace=not flags & pyfuse3.RENAME_NOREPLACE)

    async def link(self, inode, new_parent_inode, new_name, ctx):
        raise pyfuse3.FUSEError(errno.EPERM)

    async def symlink(self, parent_inode, name, target, ctx):
        raise pyfuse3.FUSEError(errno.EPERM)

    async def readlink(self, inode, ctx):
        raise pyfuse3.FUSEError(errno.EINVAL)

    # -- directories -----------------------------------------------------

    async def opendir(self, inode, ctx):
        fh = next(self._fhs)
        self._listings[fh] = Listing(self.tree.directory(inode))
        return fh

    async def readdir(self, fh, start_id, token):
        listing = self._listings[fh]
        directory = listing.directory
        if start_id == 0 or listing.entries is None:
            # One snapshot per listing, in offset order, so that each later
            # batch starts with a binary search: cost does not grow with the
            # directory. Offsets only grow, so entries linked or unlinked
            # meanwhile never make others appear twice or go missing.
            listing.entries = list(directory.entries.values())
            listing.offsets = [node.offset for node in listing.entries]
        if start_id < 1 and not pyfuse3.readdir_reply(
                token, b".", self._attributes(directory), 1):
            return
        if start_id < 2 and not pyfuse3.readdir_reply(
                token, b"..", self._attributes(directory.parent or directory), 2):
            return
        for node in itertools.islice(listing.entries,
                                     bisect.bisect_right(listing.offsets, start_id), None):
            if node.parent is not directory or directory.entries.get(node.name) is not node:
                continue  # unlinked or moved since the snapshot
            if not pyfuse3.readdir_reply(token, node.name, self._attributes(node), node.offset):
                break
            self.tree.hold(node)

    async def releasedir(self, fh):
        del self._listings[fh]

    async def statfs(self, ctx):
        """The memory streams may use as the size, what they hold as used."""
        result = pyfuse3.StatvfsData()
        result.f_bsize = result.f_frsize = 4096
        tree = self.tree
        total = tree.settings.max_memory or physical_memory()
        held = tree.memory_used()
        result.f_blocks = total // 4096
        result.f_bfree = result.f_bavail = max(0, total - held) // 4096
        free_inodes = 2**32
        result.f_files = len(tree.nodes) + free_inodes
        result.f_ffree = result.f_favail = free_inodes
        result.f_namemax = NAME_MAX
        return result

    # -- streams ---------------------------------------------------------

    async def create(self, parent_inode, name, mode, flags, ctx):
        # The kernel has checked the permissions (default_permissions).
        tree = self.tree
        waiter = Waiter()
        opened, _ = await tree.open_name(
            tree.directory(parent_inode), name, **access_of(flags), create=True,
            exclusive=bool(flags & os.O_EXCL), mode=mode, uid=ctx.uid, gid=ctx.gid,
            waiter=waiter)
        tree.hold(opened.node)  # the kernel's lookup of the new name
        return self._handle(opened, flags, ctx, waiter), self._attributes(opened.node)

    async def open(self, inode, flags, ctx):
        waiter = Waiter()
        opened = await self.tree.open(self.tree.node(inode), **access_of(flags),
                                           waiter=waiter)
        return self._handle(opened, flags, ctx, waiter)

    def _handle(self, opened: OpenStream, flags: int, ctx, waiter: Waiter) -> pyfuse3.FileInfo:
        fh = next(self._fhs)
        pid = self.signals.opened(ctx.pid, waiter)
        self._handles[fh] = Handle(opened, opened.node, opened.reader, opened.writer,
                                   bool(flags & os.O_NONBLOCK), waiter, pid)
        if opened.reader is not None:
            log.debug("stream %r: reader %d opened by pid %d", opened.node.stream.name,
                      opened.reader.id, ctx.pid)
        return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False)

    async def read(self, fh, off, size):
        """Read on from where the handle is, or from ``off`` after a seek.

        A read at the offset where the handle's last read or write ended goes
        on with the handle's stream: the history it was given, then live data,
        waiting at the end. So ``cat`` from offset 0 starts at the ring's
        oldest byte. A read at any other offset (after lseek, or pread) first
        moves the handle to that offset of the stream, within the ring; that is
        how ``tail`` and ``head`` find lines near the end. Once moved, the
        handle gets EOF at the live edge, as from a growing file, so probers
        that seek near the end and read until EOF (ffprobe; ffplay and mpv as
        they open) stop there; its next move after that EOF makes it wait at
        the live edge again (see Reader.seek).

        An O_NONBLOCK handle gets EAGAIN when nothing is queued only once it
        has been polled. Event loops poll before they read; mpv and others open
        with O_NONBLOCK and clear it with fcntl, which the daemon never learns,
        and must get the waiting reads of a regular file.
        """
        try:
            handle = self._handles[fh]
            reader = handle.reader
            if off != handle.position:
                reader.seek(off)
            data = await reader.read(size, nonblocking=handle.nonblocking and handle.polled)
        except trio.WouldBlock:
            raise pyfuse3.FUSEError(errno.EAGAIN) from None
        except Interrupted:
            raise pyfuse3.FUSEError(errno.EINTR) from None
        except ReaderDisconnected:
            raise pyfuse3.FUSEError(READER_DISCONNECTED_ERRNO) from None
        except Exception as e:  # read is not wrapped by answers_eio: it runs per chunk
            raise failed("read", e) from None
        handle.position = off + len(data)
        return data

    async def write(self, fh, off, buf):
        try:
            handle = self._handles[fh]
            written = await handle.opened.write(buf)
        except StreamClosed:
            raise pyfuse3.FUSEError(errno.EPIPE) from None
        except Interrupted:
            raise pyfuse3.FUSEError(errno.EINTR) from None
        except Exception as e:  # nor is write
            raise failed("write", e) from None
        handle.position = off + written  # the handle's reads share its file offset
        return written

    async def poll(self, inode, fh, poll_handle, ctx):
        handle = self._handles[fh]
        reader, writer = handle.reader, handle.writer
        events = 0
        if reader is not None:
            if reader.readable:
                events |= select.POLLIN | select.POLLRDNORM
            elif poll_handle is not None:
                reader.notify_when_readable(lambda: self._poll_ready(handle))
        if writer is not None:
            if writer.stream.writable():
                events |= select.POLLOUT | select.POLLWRNORM
            elif poll_handle is not None:
                writer.notify_when_writable(lambda: self._poll_ready(handle))
        if poll_handle is not None:
            handle.poll_handle = poll_handle
        handle.polled = True
        return events

    @staticmethod
    def _poll_ready(handle: Handle) -> None:
        """Wake the handle's pollers, which then poll again."""
        poll_handle, handle.poll_handle = handle.poll_handle, None
        if poll_handle is not None:
            try:
                poll_handle.notify()
            except OSError as e:
                # The kernel no longer waits on it (the poller went away).
                log.debug("poll notification failed: %s", e)

    async def flush(self, fh):
        # Nothing is buffered. ENOSYS tells the kernel to stop sending flushes,
        # so close() never waits for the daemon (nor fails while it shuts down).
        raise pyfuse3.FUSEError(errno.ENOSYS)

    async def fsync(self, fh, datasync):
        pass

    async def release(self, fh):
        handle = self._handles.pop(fh)
        handle.opened.close()
        self.signals.released(handle.pid, handle.waiter)

    # -- extended attributes ---------------------------------------------

    def _stream_xattrs(self, node: Node) -> dict[bytes, bytes]:
        if not isinstance(node, StreamFile):
            return {}
        return {
            XATTR_PREFIX + name.encode(): str(value.value if isinstance(value, enum.Enum)
                                              else value).encode()
            for name, value in asdict(node.stream.statistics()).items()
        }

    async def listxattr(self, inode, ctx):
        return list(self._stream_xattrs(self.tree.node(inode)))

    async def getxattr(self, inode, name, ctx):
        node = self.tree.node(inode)
        if isinstance(node, StreamFile):
            await node.stream.refresh()
        try:
            return self._stream_xattrs(node)[name]
        except KeyError:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR) from None

    async def setxattr(self, inode, name, value, ctx):
        node = self.tree.node(inode)
        if name not in SETTABLE_XATTRS or not isinstance(node, StreamFile):
            raise pyfuse3.FUSEError(errno.ENOTSUP)
        # The kernel has checked WRITE (as for any user.* xattr): the rest of
        # check_set_settings is the owner's, for which the uid is enough.
        check_owner(Identity(ctx.uid, frozenset({ctx.gid})), node)
        parse = SlowReaderPolicy if SETTABLE_XATTRS[name] == "slow_reader" else Join.parse
        try:
            setting = parse(value.decode().strip())
        except (UnicodeDecodeError, ValueError):
            raise pyfuse3.FUSEError(errno.EINVAL) from None
        await self.tree.set_settings(node, **{SETTABLE_XATTRS[name]: setting})

    async def removexattr(self, inode, name, ctx):
        raise pyfuse3.FUSEError(errno.ENOTSUP)
