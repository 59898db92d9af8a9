"""The tree of directories and streams that every door shares.

Names, owners, modes, and the rules for creating, renaming and removing live
here, once, so that the FUSE door and any other door cannot drift apart.
Failures are OSError with the errno a file system would give; each door
translates them (FUSE replies with the errno as it is).

Invariants:

- Inode numbers only grow and are never reused: a door may still hold an old one.
- A node is in :attr:`Tree.nodes` while it is linked into the tree or
  some door holds it (:meth:`Tree.hold`); it is forgotten when neither.
- A directory's ``entries`` are in the order they were linked, which is the
  order of their ``offset``; offsets 1 and 2 are "." and "..".
- No operation walks the tree recursively: trees may be deep.
- Permissions are checked for an ``identity`` (see access.py) before the
  event is committed, against this host's tree; ``identity=None`` means the
  door has already checked (FUSE's kernel does, with ``default_permissions``).
- Every change is an event (a JSON-ready dict) applied by :meth:`Tree.apply`.
  Applying the same events in the same order to the same tree gives the same
  tree, the same inode numbers and the same errors: that is how a store
  shared by several hosts (:class:`TreeStore`) keeps their trees identical.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import trio

from .access import Access, Identity, check, check_set_settings, check_sticky, fail, owns
from .budget import DIRECTORY_COST, READER_COST, STREAM_COST, MemoryBudget
from .memory import MemoryStore
from .stream import Stream, StreamLog, Writer
from ..settings import Join, SlowReaderPolicy, StreamSettings
from .wait import Waiter

if TYPE_CHECKING:
    from .reader import Reader

__all__ = ["NAME_MAX", "ROOT_INODE", "Directory", "Tree", "Node", "OpenStream", "StreamFile",
           "TreeStore",
           "fail"]

log = logging.getLogger(__name__)

#: Longest name, in bytes, as on most Linux file systems.
NAME_MAX = 255
ROOT_INODE = 1

N = TypeVar("N", bound="Node")


@dataclass(eq=False)
class Node:
    """An inode: a directory or a stream, with its metadata."""

    inode: int
    mode: int
    uid: int
    gid: int
    parent: Directory | None
    name: bytes
    atime_ns: int = field(default_factory=time.time_ns)
    mtime_ns: int = 0
    ctime_ns: int = 0
    #: References the doors hold (the kernel's lookups, open handles).
    holds: int = 0
    linked: bool = True
    #: Where the node is in its directory's listing.
    offset: int = 0

    def __post_init__(self) -> None:
        self.mtime_ns = self.ctime_ns = self.atime_ns


@dataclass(eq=False)
class Directory(Node):
    entries: dict[bytes, Node] = field(default_factory=dict)
    subdirs: int = 0
    next_offset: int = 3


@dataclass(eq=False)
class StreamFile(Node):
    stream: Stream | None = None


class OpenStream:
    """One open of a stream, by any door: the hold on its node, its reader and its writer.

    :meth:`close` undoes all three. A write stamps the node's mtime here, the
    one place that rule lives (on this host: a shared stream's mtime is the
    writing host's).
    """

    __slots__ = ("tree", "node", "reader", "writer")

    def __init__(self, tree: Tree, node: StreamFile, reader: Reader | None,
                 writer: Writer | None) -> None:
        self.tree = tree
        self.node = node
        self.reader = reader
        self.writer = writer

    async def write(self, data: bytes) -> int:
        """Append ``data`` as one chunk; raises :class:`~.stream.StreamClosed` after rm."""
        written = await self.writer.write(data)
        node = self.node
        node.mtime_ns = node.ctime_ns = time.time_ns()
        return written

    def close(self) -> None:
        node = self.node
        if self.reader is not None:
            node.stream.release_reader(self.reader)
            self.tree.budget.refund(READER_COST)
        if self.writer is not None:
            self.writer.close()
        self.tree.release(node)


Event = dict[str, Any]


class TreeStore(Protocol):
    """Where the tree's events are ordered: the seam between the tree and its store.

    In memory (:mod:`.memory`) an event is applied at once; a shared
    store orders the events of every host that shares it, and applies them
    here in that order.
    """

    def attach(self, tree: Tree) -> None:
        """The store orders ``tree``'s events (called once, as the tree is made)."""

    async def commit(self, event: Event) -> Node | None:
        """Append ``event`` to the shared order; return what applying it here gave.

        Raises the OSError that applying it raised.
        """

    def stream_log(self, node: StreamFile) -> StreamLog:
        """Where the chunks of the stream at ``node`` are ordered."""

    # mount.py's side: the store's lifetime.

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Serve the tree until cancelled; started once the tree is loaded."""

    async def withdraw(self) -> None:
        """Leaving: take this host's part out of what other hosts see."""


class Tree:
    """The tree, the inode table, and the mount-wide memory budget of its streams.

    Changes are made through the async methods, which commit an event through
    the :class:`TreeStore` (by default in memory): applied once the store has
    ordered it.
    """

    def __init__(self, settings: StreamSettings, uid: int, gid: int,
                 store: TreeStore | None = None) -> None:
        self.settings = settings
        self.store = store or MemoryStore()
        self.budget = MemoryBudget(settings.max_memory)
        self.root = Directory(inode=ROOT_INODE, mode=stat.S_IFDIR | 0o755, uid=uid, gid=gid,
                              parent=None, name=b"", holds=1)
        self.nodes: dict[int, Node] = {ROOT_INODE: self.root}
        self._inodes = itertools.count(ROOT_INODE + 1)
        self.closed = False
        #: The time of the event being applied: every host that applies it gives the same.
        self._now = 0
        #: Called with (directory, name) when a name goes away, by rm, rmdir or
        #: mv, so that a door that caches names (the kernel does) can forget it.
        #: A watcher may return an Event it sets once it has: see :meth:`settle`.
        self.name_watchers: list[Callable[[Directory, bytes], trio.Event | None]] = []
        self._notices: list[trio.Event] = []
        self.store.attach(self)

    # -- finding nodes -------------------------------------------------------

    def node(self, inode: int) -> Node:
        try:
            return self.nodes[inode]
        except KeyError:
            raise fail(errno.ENOENT) from None

    def directory(self, inode: int) -> Directory:
        node = self.node(inode)
        if not isinstance(node, Directory):
            raise fail(errno.ENOTDIR)
        return node

    def child(self, parent: Directory, name: bytes) -> Node:
        """``name`` in ``parent``; "." and ".." are the directory and its parent."""
        if name == b".":
            return parent
        if name == b"..":
            return parent.parent or parent
        if len(name) > NAME_MAX:
            raise fail(errno.ENAMETOOLONG)
        try:
            return parent.entries[name]
        except KeyError:
            raise fail(errno.ENOENT) from None

    def resolve(self, names: list[bytes], identity: Identity | None = None) -> Node:
        """The node at ``names`` below the root, walked as a path is: ENOTDIR
        through a stream, ENOENT for a missing name, EACCES through a directory
        that ``identity`` may not search."""
        node: Node = self.root
        for name in names:
            if not isinstance(node, Directory):
                raise fail(errno.ENOTDIR)
            if identity is not None:
                check(identity, Access.SEARCH, node)
            node = self.child(node, name)
        return node

    def path(self, node: Node) -> str:
        parts = []
        while node.parent is not None:
            parts.append(node.name)
            node = node.parent
        return "/" + os.fsdecode(b"/".join(reversed(parts)))

    # -- opening streams -------------------------------------------------------

    async def open(self, node: Node, *, read: bool, write: bool,
                   identity: Identity | None = None, waiter: Waiter | None = None,
                   join: Join | None = None) -> OpenStream:
        """Open the stream at ``node`` to read (its history as ``join`` says) and/or write.

        A handle that also writes reads lossily: its own read side must never
        hold back its own writes (see :attr:`~.reader.Reader.lossy`).
        """
        if not isinstance(node, StreamFile):
            raise fail(errno.EISDIR)
        self.open_check(identity, node, read, write)
        stream = node.stream
        waiter = waiter or Waiter()
        reader = None
        if read:
            self.budget.check(READER_COST, "opening a reader")
            reader = await stream.join(waiter, lossy=write, join=join)
            self.budget.count(READER_COST)
        writer = stream.open_writer(waiter) if write else None
        self.hold(node)
        return OpenStream(self, node, reader, writer)

    async def open_name(self, parent: Directory, name: bytes, *, read: bool, write: bool,
                        create: bool = False, exclusive: bool = False, mode: int = 0o644,
                        uid: int = 0, gid: int = 0, identity: Identity | None = None,
                        waiter: Waiter | None = None) -> tuple[OpenStream, bool]:
        """Open ``name`` in ``parent``, creating it (owned by ``uid``/``gid``) if asked.

        Returns the open stream and whether it was made. As open(2): EEXIST
        if ``exclusive`` and it exists, EISDIR for a directory, and a stream
        just made is opened whatever its mode. A name another host made
        meanwhile is opened, unless ``exclusive``.
        """
        if identity is not None:
            self.check_open_name(identity, parent, name, read=read, write=write, create=create)
        node = parent.entries.get(name)
        created = False
        if node is None:
            if not create:
                raise fail(errno.ENOENT)
            try:
                node = await self.create(StreamFile, parent, name, mode, uid, gid,
                                         identity=identity)
                created = True
            except FileExistsError:
                if exclusive:
                    raise
                node = self.child(parent, name)
        elif exclusive and create:
            raise fail(errno.EEXIST)
        opened = await self.open(node, read=read, write=write,
                                 identity=None if created else identity, waiter=waiter)
        return opened, created

    # -- who may ------------------------------------------------------------

    def check_open_name(self, identity: Identity, parent: Directory, name: bytes, *,
                        read: bool, write: bool, create: bool) -> None:
        """What :meth:`open_name` would refuse ``identity``, asked before it acts
        (a door checks before it reads an upload's body)."""
        node = parent.entries.get(name)
        if node is None:
            if not create:
                raise fail(errno.ENOENT)
            self._check_create(identity, parent, name)
        elif not isinstance(node, StreamFile):
            raise fail(errno.EISDIR)
        else:
            self.open_check(identity, node, read, write)

    @staticmethod
    def open_check(identity: Identity | None, node: Node, read: bool, write: bool) -> None:
        """EACCES unless ``identity`` may open ``node`` to read and/or write it."""
        if identity is not None:
            check(identity, Access.READ * read | Access.WRITE * write, node)

    @staticmethod
    def _check_create(identity: Identity, parent: Directory, name: bytes) -> None:
        # Linux's order: search the directory, find the name taken, then may write.
        check(identity, Access.SEARCH, parent)
        if name in parent.entries:
            raise fail(errno.EEXIST)
        check(identity, Access.WRITE | Access.SEARCH, parent)

    def _check_remove(self, identity: Identity, parent: Directory, name: bytes) -> Node:
        """The node ``identity`` may unlink from ``parent``; EACCES, or EPERM by the sticky bit."""
        check(identity, Access.SEARCH, parent)
        node = self.child(parent, name)
        check(identity, Access.WRITE | Access.SEARCH, parent)
        check_sticky(identity, parent, node)
        return node

    def _check_rename(self, identity: Identity, old_parent: Directory, old_name: bytes,
                      new_parent: Directory, new_name: bytes, replace: bool) -> None:
        # Linux's order: both names found, a taken one refused (NOREPLACE), a
        # name onto itself allowed, then the checks of rm and of create.
        check(identity, Access.SEARCH, old_parent)
        node = self.child(old_parent, old_name)
        check(identity, Access.SEARCH, new_parent)
        target = new_parent.entries.get(new_name)
        if target is not None and not replace:
            raise fail(errno.EEXIST)
        if target is node:
            return
        self._check_remove(identity, old_parent, old_name)
        if target is None:
            self._check_create(identity, new_parent, new_name)
        else:
            self._check_remove(identity, new_parent, new_name)
        if isinstance(node, Directory) and new_parent is not old_parent:
            check(identity, Access.WRITE, node)  # its ".." changes

    # -- changing the tree ---------------------------------------------------

    async def create(self, kind: type[N], parent: Directory, name: bytes, mode: int,
                     uid: int, gid: int, *, identity: Identity | None = None) -> N:
        """A new directory or stream named ``name`` in ``parent``, owned by ``uid``.

        ENOSPC when the mount is at its memory cap with nothing left to shed.
        """
        if identity is not None:
            self._check_create(identity, parent, name)
        if kind is Directory:
            self.budget.check(DIRECTORY_COST, "creating a directory")
        else:
            self.budget.check(STREAM_COST, "creating a stream")
        return await self._commit({"op": "create", "parent": parent.inode, "name": _text(name),
                                   "dir": kind is Directory, "mode": mode, "uid": uid,
                                   "gid": gid})

    async def unlink(self, parent: Directory, name: bytes, *,
                     identity: Identity | None = None) -> None:
        """Remove a stream: its readers drain what is queued, then get EOF."""
        if identity is not None:
            self._check_remove(identity, parent, name)
        await self._commit({"op": "unlink", "parent": parent.inode, "name": _text(name)})

    async def rmdir(self, parent: Directory, name: bytes, *,
                    identity: Identity | None = None) -> None:
        if identity is not None:
            self._check_remove(identity, parent, name)
        await self._commit({"op": "rmdir", "parent": parent.inode, "name": _text(name)})

    async def remove_tree(self, parent: Directory, name: bytes, *,
                          identity: Identity | None = None) -> None:
        """rm -r: a stream, or a directory and all it holds.

        All or nothing: ``identity`` must be allowed to remove every node,
        and to list, search and write every directory it empties, as rm -r must.
        """
        if identity is not None:
            pending = [self._check_remove(identity, parent, name)]
            while pending:  # a loop: trees may be deep
                directory = pending.pop()
                if isinstance(directory, Directory) and directory.entries:
                    check(identity, Access.READ | Access.WRITE | Access.SEARCH, directory)
                    for node in directory.entries.values():
                        check_sticky(identity, directory, node)
                        pending.append(node)
        await self._commit({"op": "remove_tree", "parent": parent.inode, "name": _text(name)})

    async def rename(self, old_parent: Directory, old_name: bytes, new_parent: Directory,
                     new_name: bytes, *, replace: bool = True,
                     identity: Identity | None = None) -> None:
        """Move a node; a stream replaced at the new name ends, as with rm.

        ``identity`` must be allowed to remove the old name, and to create
        the new one or remove what it names; a directory that changes parent
        must be writable too (its ".." changes), as Linux requires.
        """
        if identity is not None:
            self._check_rename(identity, old_parent, old_name, new_parent, new_name, replace)
        await self._commit({"op": "rename", "parent": old_parent.inode, "name": _text(old_name),
                            "new_parent": new_parent.inode, "new_name": _text(new_name),
                            "replace": replace})

    async def set_settings(self, node: Node, *, slow_reader: SlowReaderPolicy | None = None,
                           join: Join | None = None, identity: Identity | None = None) -> None:
        """Change a stream's slow-reader policy or where late joiners start.

        An event, so a shared stream has one setting on every host. The owner
        or root may, and only with WRITE (through FUSE these are extended
        attributes, whose WRITE the kernel checks).
        """
        if not isinstance(node, StreamFile):
            raise fail(errno.ENOTSUP)
        if identity is not None:
            check_set_settings(identity, node)
        await self._commit({"op": "settings", "node": node.inode,
                            "slow_reader": None if slow_reader is None else slow_reader.value,
                            "join": None if join is None else str(join)})

    async def setattr(self, node: Node, *, mode: int | None = None, uid: int | None = None,
                      gid: int | None = None, atime_ns: int | None = None,
                      mtime_ns: int | None = None, touch: bool = False,
                      identity: Identity | None = None) -> None:
        """chmod, chown and touch; the file type bits of ``mode`` are kept.

        ``touch`` sets both times to now, which anyone who may write may do;
        explicit times only the owner or root. Nothing to set (a truncate,
        which a stream ignores) changes nothing.
        """
        now = time.time_ns()
        if touch:
            atime_ns = mtime_ns = now
        if all(value is None for value in (mode, uid, gid, atime_ns, mtime_ns)):
            return
        if identity is not None:
            mode = self._check_setattr(identity, node, mode, uid, gid,
                                       times=atime_ns is not None or mtime_ns is not None,
                                       touch=touch)
        await self._commit({"op": "setattr", "node": node.inode, "mode": mode, "uid": uid,
                            "gid": gid, "atime": atime_ns, "mtime": mtime_ns, "time": now})

    @staticmethod
    def _check_setattr(identity: Identity, node: Node, mode: int | None, uid: int | None,
                       gid: int | None, times: bool, touch: bool) -> int | None:
        """Linux's rules (may_setattr, setattr_prepare); returns the mode to set."""
        is_root = identity.uid == 0
        if touch and not owns(identity, node):
            check(identity, Access.WRITE, node)
        if uid is not None and not (is_root or identity.uid == node.uid == uid):
            raise fail(errno.EPERM)  # giving a node away is root's alone
        if gid is not None and not (is_root or identity.uid == node.uid
                                    and (gid == node.gid or gid in identity.gids)):
            raise fail(errno.EPERM)
        if mode is not None:
            if not owns(identity, node):
                raise fail(errno.EPERM)
            if not is_root and (node.gid if gid is None else gid) not in identity.gids:
                mode &= ~stat.S_ISGID  # as Linux: no setgid for a group one is not in
        if times and not touch and not owns(identity, node):
            raise fail(errno.EPERM)
        return mode

    async def _commit(self, event: Event) -> Any:
        event.setdefault("time", time.time_ns())
        return await self.store.commit(event)

    def apply(self, event: Event, inode: int | None = None) -> Node | None:
        """Make the change ``event`` describes; raise OSError, changing nothing, if it fails.

        ``inode`` numbers the node a create makes; by default the next unused.
        """
        self._now = event["time"]
        op = event["op"]
        if op == "setattr":
            return self._setattr(self.node(event["node"]), event)
        if op == "settings":
            return self._settings(self.node(event["node"]), event)
        parent = self.directory(event["parent"])
        name = _bytes(event["name"])
        if op == "create":
            kind = Directory if event["dir"] else StreamFile
            return self._create(kind, parent, name, event["mode"], event["uid"], event["gid"],
                                inode or next(self._inodes))
        if op == "unlink":
            return self._unlink(parent, name)
        if op == "rmdir":
            return self._rmdir(parent, name)
        if op == "remove_tree":
            return self._remove_tree(parent, name)
        if op == "rename":
            return self._rename(parent, name, self.directory(event["new_parent"]),
                                _bytes(event["new_name"]), event["replace"])
        raise fail(errno.EINVAL)

    def _settings(self, node: Node, event: Event) -> None:
        if not isinstance(node, StreamFile):
            raise fail(errno.EINVAL)
        if event.get("slow_reader") is not None:
            node.stream.set_policy(SlowReaderPolicy(event["slow_reader"]))
        if event.get("join") is not None:
            node.stream.set_join(Join.parse(event["join"]))
        node.ctime_ns = self._now

    def _create(self, kind: type[N], parent: Directory, name: bytes, mode: int,
                uid: int, gid: int, inode: int) -> N:
        check_name(name)
        if name in parent.entries:
            raise fail(errno.EEXIST)
        file_type = stat.S_IFDIR if kind is Directory else stat.S_IFREG
        node = kind(inode=inode, mode=file_type | stat.S_IMODE(mode), uid=uid, gid=gid,
                    parent=parent, name=name, atime_ns=self._now)
        # Counted, never refused here: every host applies the same events alike
        # (create() refused before the event, on the host that asked).
        if isinstance(node, StreamFile):
            node.stream = Stream(self.path(node), self.settings, self.budget)
            node.stream.log = self.store.stream_log(node)
            if self.closed:
                node.stream.close()
            log.info("stream %r created", node.stream.name)
            self.budget.count(STREAM_COST)
        else:
            self.budget.count(DIRECTORY_COST)
        self._link(parent, name, node)
        return node

    def _setattr(self, node: Node, event: Event) -> None:
        if event["mode"] is not None:
            node.mode = stat.S_IFMT(node.mode) | stat.S_IMODE(event["mode"])
        if event["uid"] is not None:
            node.uid = event["uid"]
        if event["gid"] is not None:
            node.gid = event["gid"]
        if event["atime"] is not None:
            node.atime_ns = event["atime"]
        if event["mtime"] is not None:
            node.mtime_ns = event["mtime"]
        node.ctime_ns = self._now

    def _unlink(self, parent: Directory, name: bytes) -> None:
        if isinstance(self.child(parent, name), Directory):
            raise fail(errno.EISDIR)
        self._remove(parent, name)

    def _rmdir(self, parent: Directory, name: bytes) -> None:
        node = self.child(parent, name)
        if not isinstance(node, Directory):
            raise fail(errno.ENOTDIR)
        if node.entries:
            raise fail(errno.ENOTEMPTY)
        self._remove(parent, name)

    def _remove_tree(self, parent: Directory, name: bytes) -> None:
        """Depth first, without recursion."""
        node = self.child(parent, name)
        if not isinstance(node, Directory):
            self._unlink(parent, name)
            return
        pending = [(parent, name, node)]
        while pending:
            parent, name, directory = pending[-1]
            if not directory.entries:
                self._rmdir(parent, name)
                pending.pop()
                continue
            child_name, child = next(iter(directory.entries.items()))
            if isinstance(child, Directory):
                pending.append((directory, child_name, child))
            else:
                self._unlink(directory, child_name)

    def _rename(self, old_parent: Directory, old_name: bytes, new_parent: Directory,
                new_name: bytes, replace: bool) -> None:
        check_name(new_name)
        node = old_parent.entries.get(old_name)
        if node is None:
            raise fail(errno.ENOENT)
        target = new_parent.entries.get(new_name)
        if target is node:
            return
        if isinstance(node, Directory):
            ancestor: Directory | None = new_parent
            while ancestor is not None:
                if ancestor is node:
                    raise fail(errno.EINVAL)  # into itself
                ancestor = ancestor.parent
        if target is not None:
            if not replace:
                raise fail(errno.EEXIST)
            if isinstance(target, Directory):
                if not isinstance(node, Directory):
                    raise fail(errno.EISDIR)
                if target.entries:
                    raise fail(errno.ENOTEMPTY)
            elif isinstance(node, Directory):
                raise fail(errno.ENOTDIR)
            self._remove(new_parent, new_name)
        self._detach(old_parent, old_name)
        node.parent, node.name = new_parent, new_name
        self._link(new_parent, new_name, node)
        old_parent.mtime_ns = old_parent.ctime_ns = node.ctime_ns = self._now
        self._rename_streams(node)

    def _rename_streams(self, top: Node) -> None:
        """Give every stream under ``top`` its new path (a loop: trees may be deep)."""
        pending = [top]
        while pending:
            node = pending.pop()
            if isinstance(node, StreamFile):
                node.stream.name = self.path(node)
            elif isinstance(node, Directory):
                pending.extend(node.entries.values())

    def _link(self, parent: Directory, name: bytes, node: Node) -> None:
        parent.entries[name] = node
        node.offset = parent.next_offset
        parent.next_offset += 1
        parent.subdirs += isinstance(node, Directory)
        self.nodes[node.inode] = node
        parent.mtime_ns = parent.ctime_ns = self._now

    def _detach(self, parent: Directory, name: bytes) -> Node:
        node = parent.entries.pop(name)
        parent.subdirs -= isinstance(node, Directory)
        for watcher in self.name_watchers:
            notice = watcher(parent, name)
            if notice is not None:
                if len(self._notices) > 64:  # nobody settles changes applied for other hosts
                    self._notices = [n for n in self._notices if not n.is_set()]
                self._notices.append(notice)
        return node

    async def settle(self) -> None:
        """Return once every door has forgotten the names removed so far.

        A door awaits this before it answers a change, so that its client then
        finds the old name gone through every other door too.
        """
        while self._notices:
            await self._notices.pop().wait()

    def _remove(self, parent: Directory, name: bytes) -> None:
        node = self._detach(parent, name)
        node.linked = False
        node.ctime_ns = parent.mtime_ns = parent.ctime_ns = self._now
        if isinstance(node, StreamFile):
            node.stream.remove()
            log.info("stream %r removed", node.stream.name)
        self._forget_if_unused(node)

    # -- the whole tree at once ----------------------------------------------

    def snapshot(self) -> list[list]:
        """Every node as a JSON-ready row, parents first: what :meth:`restore` rebuilds."""
        rows = []
        pending = [self.root]
        while pending:
            directory = pending.pop()
            for node in directory.entries.values():
                settings = ([node.stream.policy.value, str(node.stream.settings.join)]
                            if isinstance(node, StreamFile) else [None, None])
                rows.append([node.inode, directory.inode, _text(node.name),
                             isinstance(node, Directory), node.mode, node.uid, node.gid,
                             node.atime_ns, node.mtime_ns, node.ctime_ns, *settings])
                if isinstance(node, Directory):
                    pending.append(node)
        return rows

    def clear(self) -> None:
        """Remove everything here, as rm -r of each top name, without an event."""
        for name in list(self.root.entries):
            self._remove_tree(self.root, name)

    def restore(self, rows: list[list]) -> None:
        """Rebuild an empty tree from :meth:`snapshot` rows, with their inode numbers."""
        times = []
        for inode, parent, name, is_dir, mode, uid, gid, atime, mtime, ctime, *settings in rows:
            kind = Directory if is_dir else StreamFile
            node = self._create(kind, self.directory(parent), _bytes(name), mode, uid, gid, inode)
            # Older snapshots have no policy, or no join.
            policy, join = (settings + [None, None])[:2]
            if policy is not None:
                node.stream.set_policy(SlowReaderPolicy(policy))
            if join is not None:
                node.stream.set_join(Join.parse(join))
            times.append((node, atime, mtime, ctime))
        for node, atime, mtime, ctime in times:  # after linking children changed them
            node.atime_ns, node.mtime_ns, node.ctime_ns = atime, mtime, ctime

    # -- what the doors hold -------------------------------------------------

    def hold(self, node: Node, count: int = 1) -> None:
        node.holds += count

    def release(self, node: Node, count: int = 1) -> None:
        node.holds -= count
        self._forget_if_unused(node)

    def _forget_if_unused(self, node: Node) -> None:
        """A node neither linked nor held goes, with its ring and its bookkeeping."""
        if not node.linked and node.holds <= 0 and self.nodes.pop(node.inode, None):
            if isinstance(node, StreamFile):
                node.stream.discard()
                self.budget.refund(STREAM_COST)
            else:
                self.budget.refund(DIRECTORY_COST)

    # -- the whole mount -----------------------------------------------------

    def close_all_streams(self) -> None:
        """Shutting down: every reader drains its queue, then gets EOF."""
        self.closed = True
        for node in self.nodes.values():
            if isinstance(node, StreamFile):
                node.stream.close()

    def memory_used(self) -> int:
        """What the streams hold, as the memory cap counts it (see :class:`MemoryBudget`)."""
        return self.budget.used


def _text(name: bytes) -> str:
    """A name as events carry it: JSON text that gives back every byte."""
    return name.decode("latin-1")


def _bytes(text: str) -> bytes:
    return text.encode("latin-1")


def check_name(name: bytes) -> None:
    if len(name) > NAME_MAX:
        raise fail(errno.ENAMETOOLONG)
    if not name or b"/" in name or b"\0" in name or name in (b".", b".."):
        raise fail(errno.EINVAL)
