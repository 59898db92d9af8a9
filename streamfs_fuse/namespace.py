"""The tree of directories and streams that every door shares.

Names, owners, modes, and the rules for creating, renaming and removing live
here, once, so that the FUSE door and any other door cannot drift apart.
Failures are OSError with the errno a file system would give; each door
translates them (FUSE replies with the errno as it is).

Invariants:

- Inode numbers only grow and are never reused: a door may still hold an old one.
- A node is in :attr:`Namespace.nodes` while it is linked into the tree or
  some door holds it (:meth:`Namespace.hold`); it is forgotten when neither.
- A directory's ``entries`` are in the order they were linked, which is the
  order of their ``offset``; offsets 1 and 2 are "." and "..".
- No operation walks the tree recursively: trees may be deep.
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
from typing import TypeVar

from .budget import MemoryBudget
from .stream import Stream, StreamSettings

__all__ = ["NAME_MAX", "ROOT_INODE", "Directory", "Namespace", "Node", "StreamFile", "fail"]

log = logging.getLogger(__name__)

#: Longest name, in bytes, as on most Linux file systems.
NAME_MAX = 255
ROOT_INODE = 1

N = TypeVar("N", bound="Node")


def fail(code: int) -> OSError:
    """The error a file system gives for ``code``; doors translate its errno."""
    return OSError(code, os.strerror(code))


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


class Namespace:
    """The tree, the inode table, and the mount-wide memory budget of its streams."""

    def __init__(self, settings: StreamSettings, uid: int, gid: int) -> None:
        self.settings = settings
        self.budget = MemoryBudget(settings.max_memory)
        self.root = Directory(inode=ROOT_INODE, mode=stat.S_IFDIR | 0o755, uid=uid, gid=gid,
                              parent=None, name=b"", holds=1)
        self.nodes: dict[int, Node] = {ROOT_INODE: self.root}
        self._inodes = itertools.count(ROOT_INODE + 1)
        self.closed = False
        #: Called with (directory, name) when a name goes away, by rm, rmdir or
        #: mv, so that a door that caches names (the kernel does) can forget it.
        self.name_watchers: list[Callable[[Directory, bytes], None]] = []

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

    def path(self, node: Node) -> str:
        parts = []
        while node.parent is not None:
            parts.append(node.name)
            node = node.parent
        return "/" + os.fsdecode(b"/".join(reversed(parts)))

    # -- changing the tree ---------------------------------------------------

    def create(self, kind: type[N], parent: Directory, name: bytes, mode: int,
               uid: int, gid: int) -> N:
        """A new directory or stream named ``name`` in ``parent``, owned by ``uid``."""
        check_name(name)
        if name in parent.entries:
            raise fail(errno.EEXIST)
        file_type = stat.S_IFDIR if kind is Directory else stat.S_IFREG
        node = kind(inode=next(self._inodes), mode=file_type | stat.S_IMODE(mode),
                    uid=uid, gid=gid, parent=parent, name=name)
        if isinstance(node, StreamFile):
            node.stream = Stream(self.path(node), self.settings, self.budget)
            if self.closed:
                node.stream.close()
            log.info("stream %r created", node.stream.name)
        self._link(parent, name, node)
        return node

    def unlink(self, parent: Directory, name: bytes) -> None:
        """Remove a stream: its readers drain what is queued, then get EOF."""
        if isinstance(self.child(parent, name), Directory):
            raise fail(errno.EISDIR)
        self._remove(parent, name)

    def rmdir(self, parent: Directory, name: bytes) -> None:
        node = self.child(parent, name)
        if not isinstance(node, Directory):
            raise fail(errno.ENOTDIR)
        if node.entries:
            raise fail(errno.ENOTEMPTY)
        self._remove(parent, name)

    def remove_tree(self, parent: Directory, name: bytes) -> None:
        """rm -r: a stream, or a directory and all it holds, depth first, without recursion."""
        node = self.child(parent, name)
        if not isinstance(node, Directory):
            self.unlink(parent, name)
            return
        pending = [(parent, name, node)]
        while pending:
            parent, name, directory = pending[-1]
            if not directory.entries:
                self.rmdir(parent, name)
                pending.pop()
                continue
            child_name, child = next(iter(directory.entries.items()))
            if isinstance(child, Directory):
                pending.append((directory, child_name, child))
            else:
                self.unlink(directory, child_name)

    def rename(self, old_parent: Directory, old_name: bytes, new_parent: Directory,
               new_name: bytes, *, replace: bool = True) -> None:
        """Move a node; a stream replaced at the new name ends, as with rm."""
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
        old_parent.mtime_ns = old_parent.ctime_ns = node.ctime_ns = time.time_ns()
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
        parent.mtime_ns = parent.ctime_ns = time.time_ns()

    def _detach(self, parent: Directory, name: bytes) -> Node:
        node = parent.entries.pop(name)
        parent.subdirs -= isinstance(node, Directory)
        for watcher in self.name_watchers:
            watcher(parent, name)
        return node

    def _remove(self, parent: Directory, name: bytes) -> None:
        node = self._detach(parent, name)
        node.linked = False
        node.ctime_ns = parent.mtime_ns = parent.ctime_ns = time.time_ns()
        if isinstance(node, StreamFile):
            node.stream.close()
            log.info("stream %r removed", node.stream.name)
        self._forget_if_unused(node)

    # -- what the doors hold -------------------------------------------------

    def hold(self, node: Node, count: int = 1) -> None:
        node.holds += count

    def release(self, node: Node, count: int = 1) -> None:
        node.holds -= count
        self._forget_if_unused(node)

    def _forget_if_unused(self, node: Node) -> None:
        if not node.linked and node.holds <= 0:
            self.nodes.pop(node.inode, None)

    # -- the whole mount -----------------------------------------------------

    def close_all_streams(self) -> None:
        """Shutting down: every reader drains its queue, then gets EOF."""
        self.closed = True
        for node in self.nodes.values():
            if isinstance(node, StreamFile):
                node.stream.close()

    def memory_used(self) -> int:
        """What the streams hold: their rings, and what readers hold beyond them."""
        return self.budget.used + sum(node.stream.ring.nbytes for node in self.nodes.values()
                                      if isinstance(node, StreamFile))


def check_name(name: bytes) -> None:
    if len(name) > NAME_MAX:
        raise fail(errno.ENAMETOOLONG)
    if not name or b"/" in name or b"\0" in name or name in (b".", b".."):
        raise fail(errno.EINVAL)
