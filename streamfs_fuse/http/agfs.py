"""The AGFS HTTP API, served by the HTTP door under ``/api/v1/``.

So that AGFS clients such as the ``pyagfs`` SDK work unmodified against a
streamfs-fuse daemon. AGFS paths are given as ``?path=`` and name the tree
under the AGFS mount path (``/streamfs`` by default, the TOML's
``[plugins.streamfs] path``): ``/streamfs/a/b`` is the native ``/a/b``. Paths
above it are the virtual directories leading to it; paths beside it are not
found. A native stream named ``/api/v1/...`` is therefore not reachable over
HTTP (it still is through the mount).

Each route translates onto the same verbs as the native routes (composed,
not inherited: :class:`AGFSRoutes` holds a :class:`~.native.NativeRoutes`),
for the request's identity: no stream policy and no tree rule lives here.
Errors carry AGFS's texts (see :func:`agfs_message`) with the status AGFS's
own error types map to. Routes AGFS has and this door does not (symlinks,
plugins, and a handle's seek and stream) answer 501, which AGFS's clients
take as "use the plain calls".

File handles (``/api/v1/handles/*``, see :class:`Handles`) hold a core
:class:`~.core.tree.OpenStream` between requests, so that agfs-fuse reads a
live stream as a file read does: history first, then waiting for new data.
"""

from __future__ import annotations

import errno
import itertools
import json
import logging
import math
import os
import stat
import time
from collections import Counter
from contextlib import asynccontextmanager, contextmanager
from dataclasses import asdict
from datetime import datetime, timezone
from importlib import metadata
from urllib.parse import parse_qsl

import trio

from ..core.access import Access, Identity, check, may
from ..settings import HTTPSettings
from .door import READ_SIZE, STATUS_BY_ERRNO, UPLOAD_PIECE, Exchange, Refused
from .native import (UPLOAD_MODE, NativeRoutes, check_path, origin_form, parse_path,
                     primary_gid, readers_first)
from ..core.tree import Directory, Tree, Node, OpenStream, StreamFile, fail
from ..core.reader import ReaderDisconnected
from ..core.stream import StreamClosed

__all__ = ["AGFSRoutes", "Handles"]

log = logging.getLogger(__name__)

#: Where the AGFS API lives; see :data:`API_ROUTES`.
API_PREFIX = b"/api/v1/"
#: Largest JSON body an AGFS call other than a write may carry.
MAX_API_BODY = 64 * 1024
#: What AGFS's streamfs answers a grep or digest of a stream: its content has no end.
USE_STREAM_MODE = "use stream mode for reading stream files"
#: The plugin name AGFS's streamfs puts in file info and mount listings.
PLUGIN_NAME = "streamfs"

#: The AGFS API: path -> {method: the AGFSRoutes method that answers it}. Each
#: is a translation onto the tree and stream calls the native routes use.
API_ROUTES: dict[bytes, dict[bytes, str]] = {
    b"/api/v1/health": {b"GET": "_api_health"},
    b"/api/v1/ready": {b"GET": "_api_health"},
    b"/api/v1/version": {b"GET": "_api_version"},
    b"/api/v1/mounts": {b"GET": "_api_mounts"},
    b"/api/v1/files": {b"GET": "_api_read", b"PUT": "_api_write", b"POST": "_api_create",
                       b"DELETE": "_api_delete"},
    b"/api/v1/directories": {b"GET": "_api_list", b"POST": "_api_mkdir",
                             b"DELETE": "_api_delete"},
    b"/api/v1/list": {b"GET": "_api_list"},
    b"/api/v1/mkdir": {b"POST": "_api_mkdir"},
    b"/api/v1/stat": {b"GET": "_api_stat"},
    b"/api/v1/touch": {b"POST": "_api_touch"},
    b"/api/v1/rename": {b"POST": "_api_rename"},
    b"/api/v1/chmod": {b"POST": "_api_chmod"},
    b"/api/v1/truncate": {b"POST": "_api_truncate"},
    b"/api/v1/grep": {b"POST": "_api_grep"},
    b"/api/v1/digest": {b"POST": "_api_digest"},
}
#: AGFS routes not served here: 501, so that AGFS's clients fall back to the
#: plain calls.
UNIMPLEMENTED = (b"/api/v1/symlink", b"/api/v1/readlink", b"/api/v1/plugins")
#: Where the file handle routes live: ``/open``, ``/ID``, ``/ID/OPERATION``.
HANDLES_PREFIX = b"/api/v1/handles"
#: A handle's operations: name -> {method: the AGFSRoutes method that answers it}.
HANDLE_ROUTES: dict[bytes, dict[bytes, str]] = {
    b"": {b"GET": "_handle_info", b"DELETE": "_handle_close"},
    b"read": {b"GET": "_handle_read"},
    b"write": {b"PUT": "_handle_write"},
    b"sync": {b"POST": "_handle_sync"},
    b"renew": {b"POST": "_handle_renew"},
    b"stat": {b"GET": "_handle_stat"},
    # agfs-fuse asks for /stream on every open for reading, and reads through
    # /read when it is refused: there a read waits READ_WAIT for data, where
    # agfs-fuse's own stream reads give up (EOF to cat) after 5 s.
    b"stream": {b"GET": "_handle_unimplemented"},
    b"seek": {b"POST": "_handle_unimplemented"},
}
#: AGFS's open flags (its Go SDK's OpenFlag, Linux's values).
O_ACCMODE, O_WRONLY, O_RDWR, O_CREATE, O_EXCL = 3, 1, 2, 0o100, 0o200


class AGFSRoutes:
    """The AGFS API in front of the native routes."""

    def __init__(self, tree: Tree, settings: HTTPSettings) -> None:
        self.tree = tree
        self.native = NativeRoutes(tree, settings)
        self.read_only = settings.read_only
        #: Where the tree appears in the AGFS API (AGFS's mount path), and its names.
        self._agfs_names = parse_path(os.fsencode(settings.agfs_path))
        self.agfs_path = "/" + "/".join(map(os.fsdecode, self._agfs_names))
        #: The file handles open through this door.
        self.handles = Handles()

    async def __call__(self, exchange: Exchange) -> None:
        if not origin_form(exchange.target).startswith(API_PREFIX):
            await self.native(exchange)
            return
        route, _, query = origin_form(exchange.target).partition(b"?")
        if route == HANDLES_PREFIX or route.startswith(HANDLES_PREFIX + b"/"):
            await self._handles_route(exchange, route[len(HANDLES_PREFIX):], query)
            return
        methods = API_ROUTES.get(route)
        if methods is None:
            if route.startswith(UNIMPLEMENTED):
                raise Refused(501, f"{route.decode(errors='replace')}: not implemented")
            raise Refused(404, "404 page not found")
        if exchange.method not in methods:
            raise Refused(405, "method not allowed",
                          headers=((b"allow", b", ".join(methods)),))
        if exchange.method in (b"PUT", b"POST", b"DELETE") and self.read_only:
            raise Refused(403, "this server is read-only")
        params = parse_query(query)
        # A write streams its body into the stream; any other call reads its
        # (small, JSON) body first, so that the connection can be kept.
        body = None if exchange.method == b"PUT" else await exchange.read_body(MAX_API_BODY)
        await getattr(self, methods[exchange.method])(exchange, params, body)

    def _api_names(self, params: dict[str, str], op: str) -> tuple[str, list[bytes]]:
        """The ``path`` parameter, and the names under the AGFS mount path it stands for."""
        path, names = self._api_path(params)
        inside = self._under_mount(names)
        if inside is None:
            if op in ("create", "mkdir"):
                raise Refused(403, f"{op}: {path}: permission denied (not allowed to create "
                                   "file in rootfs, use mount instead)")
            raise Refused(404, agfs_message(op, path, errno.ENOENT))
        return path, inside

    @staticmethod
    def _api_path(params: dict[str, str], default: str | None = None) -> tuple[str, list[bytes]]:
        path = params.get("path") or default
        if not path:
            raise Refused(400, "path parameter is required")
        if not path.startswith("/"):
            raise Refused(400, "the path must start with /")
        return path, check_path(os.fsencode(path))

    def _api_node(self, exchange: Exchange, op: str, path: str, names: list[bytes]) -> Node:
        """The node an AGFS path under the mount path names, or AGFS's error."""
        inside = self._under_mount(names)
        if inside is None:
            raise Refused(404, agfs_message(op, path, errno.ENOENT))
        with agfs_errors(op, path):
            return self.tree.resolve(inside, exchange.identity)

    def _under_mount(self, names: list[bytes]) -> list[bytes] | None:
        """``names`` relative to the AGFS mount path, or None when not under it."""
        mount = self._agfs_names
        return names[len(mount):] if names[:len(mount)] == mount else None

    def _above_mount(self, names: list[bytes]) -> bytes | None:
        """For a virtual directory leading to the mount path, its one entry's name."""
        mount = self._agfs_names
        return mount[len(names)] if mount[:len(names)] == names != mount else None

    async def _api_health(self, exchange, params, body) -> None:
        await exchange.reply_json(200, {
            "status": "healthy", **version_info(), "ready": True, "degraded": False,
            "mounts": {"total": 1, "pending": 0, "mounted": 1, "failed": 0}}, newline=True)

    async def _api_version(self, exchange, params, body) -> None:
        await exchange.reply_json(200, version_info(), newline=True)

    async def _api_mounts(self, exchange, params, body) -> None:
        await exchange.reply_json(200, {"mounts": [
            {"path": self.agfs_path, "pluginName": PLUGIN_NAME, "status": "mounted"}]},
            newline=True)

    async def _api_read(self, exchange, params, body) -> None:
        """Stream with ``stream=true`` (history, then live until rm), else what the ring holds."""
        path, names = self._api_names(params, "read")
        with agfs_errors("read", path):
            node = self.tree.resolve(names, exchange.identity)
            if isinstance(node, Directory):
                raise fail(errno.EISDIR)
            self.tree.open_check(exchange.identity, node, read=True, write=False)
        if params.get("stream") == "true":
            await self.native.stream(exchange, node, b"application/octet-stream")
            return
        offset, size = int_param(params, "offset", 0), int_param(params, "size", -1)
        if offset < 0:
            raise Refused(400, "invalid offset parameter")
        data = await self._snapshot(node, offset, math.inf if size < 0 else size)
        await exchange.reply(200, data, b"application/octet-stream")

    @staticmethod
    async def _snapshot(node: StreamFile, offset: int, size: float) -> bytes:
        """What a reader opened now is given at once: the ring, from stream ``offset`` on."""
        stream = node.stream
        reader = await stream.join(lossy=True)
        pieces = []
        try:
            if offset:
                reader.seek(offset)
            while size > 0:
                try:
                    data = await reader.read(min(READ_SIZE, size), nonblocking=True)
                except trio.WouldBlock:
                    break
                if not data:
                    break
                pieces.append(bytes(data))
                size -= len(data)
        finally:
            stream.release_reader(reader)
        return b"".join(pieces)

    async def _api_write(self, exchange, params, body) -> None:
        """Append the body, creating the stream if needed (AGFS's streamfs appends too)."""
        path, names = self._api_names(params, "write")
        with agfs_errors("write", path):
            if not names:
                raise fail(errno.EISDIR)
            _, _, written = await self.native.upload(exchange, names)
        await exchange.reply(200, b'{"message": "Written %d bytes"}\n' % written,
                             b"application/json")

    async def _create(self, exchange, kind, names: list[bytes], mode: int, op: str,
                      path: str) -> None:
        """Make a stream or directory; "already exists" names what is there, as AGFS does."""
        identity = exchange.identity
        with agfs_errors(op, path):
            parent = self._parent(exchange, names)
            try:
                await self.tree.create(kind, parent, names[-1], mode, identity.uid,
                                            primary_gid(identity, parent), identity=identity)
            except FileExistsError:
                existing = parent.entries.get(names[-1])
                raise Refused(409, agfs_message(op, path, errno.EEXIST, "directory" if isinstance(
                    existing, Directory) else "stream")) from None

    async def _api_create(self, exchange, params, body) -> None:
        path, names = self._api_names(params, "create")
        await self._create(exchange, StreamFile, names, UPLOAD_MODE, "create", path)
        await exchange.reply_json(201, {"message": "file created"}, newline=True)

    async def _api_mkdir(self, exchange, params, body) -> None:
        path, names = self._api_names(params, "mkdir")
        try:
            mode = int(params.get("mode") or "755", 8)
        except ValueError:
            raise Refused(400, "invalid mode") from None
        await self._create(exchange, Directory, names, mode, "mkdir", path)
        await exchange.reply_json(201, {"message": "directory created"}, newline=True)

    async def _api_delete(self, exchange, params, body) -> None:
        """rm, rmdir, or with ``recursive=true`` rm -r."""
        path, names = self._api_names(params, "remove")
        if not names:
            raise Refused(403, f"remove: {path}: permission denied (a mount point)")
        with agfs_errors("remove", path):
            await self.native.remove(exchange, names,
                                     recursive=params.get("recursive") == "true")
        await exchange.reply_json(200, {"message": "deleted"}, newline=True)

    async def _api_list(self, exchange, params, body) -> None:
        path, names = self._api_path(params, default="/")
        entry = self._above_mount(names)
        if entry is not None:
            files = [virtual_info(os.fsdecode(entry), "mount-point", "rootfs")]
        else:
            directory = self._api_node(exchange, "readdir", path, names)
            if not isinstance(directory, Directory):
                raise Refused(404, agfs_message("readdir", path, errno.ENOTDIR))
            with agfs_errors("readdir", path):
                check(exchange.identity, Access.READ, directory)
            files = [file_info(node, exchange.identity) for node in directory.entries.values()]
        await exchange.reply_json(200, {"files": files}, newline=True)

    async def _api_stat(self, exchange, params, body) -> None:
        path, names = self._api_path(params)
        if not names:
            info = virtual_info("/", "root")
        elif self._above_mount(names) is not None:
            info = virtual_info(os.fsdecode(names[-1]), "mount-point")
        else:
            node = self._api_node(exchange, "stat", path, names)
            if isinstance(node, StreamFile):
                await node.stream.refresh()
            info = file_info(node, exchange.identity, os.fsdecode(names[-1]))
        await exchange.reply_json(200, info, newline=True)

    async def _api_touch(self, exchange, params, body) -> None:
        """Create a stream, or set an existing one's times to now."""
        path, names = self._api_names(params, "touch")
        if not names:
            raise Refused(400, "cannot touch directory")
        with agfs_errors("touch", path):
            parent = self._parent(exchange, names)
            node = parent.entries.get(names[-1])
            if node is None:
                await self._create(exchange, StreamFile, names, UPLOAD_MODE, "touch", path)
            elif isinstance(node, Directory):
                raise Refused(400, "cannot touch directory")
            else:
                await self.tree.setattr(node, touch=True, identity=exchange.identity)
        await exchange.reply_json(200, {"message": "touched"}, newline=True)

    async def _api_rename(self, exchange, params, body) -> None:
        """``?path=OLD`` with ``{"newPath": NEW}``: mv, replacing a stream at NEW as mv does."""
        path, names = self._api_names(params, "rename")
        try:
            new_path = json.loads(body or b"{}").get("newPath")
        except (ValueError, AttributeError):
            raise Refused(400, "invalid request body") from None
        if not new_path or not isinstance(new_path, str):
            raise Refused(400, "newPath is required")
        _, new_names = self._api_path({"path": new_path})
        new_names = self._under_mount(new_names)
        if new_names is None or not names or not new_names:
            raise Refused(400, "cannot rename: paths not in same mounted filesystem")
        with agfs_errors("rename", path):
            await self.tree.rename(self._parent(exchange, names), names[-1],
                                        self._parent(exchange, new_names), new_names[-1],
                                        identity=exchange.identity)
        await self.tree.settle()
        await exchange.reply_json(200, {"message": "renamed"}, newline=True)

    async def _api_chmod(self, exchange, params, body) -> None:
        """``?path=P`` with ``{"mode": N}``: chmod, by the owner or root as through the mount."""
        path, names = self._api_names(params, "chmod")
        mode = json_body(body, "invalid request body").get("mode")
        if type(mode) is not int or not 0 <= mode <= 0o7777:
            raise Refused(400, "invalid mode")
        with agfs_errors("chmod", path):
            node = self.tree.resolve(names, exchange.identity)
            await self.tree.setattr(node, mode=mode, identity=exchange.identity)
        await exchange.reply_json(200, {"message": "permissions changed"}, newline=True)

    async def _api_truncate(self, exchange, params, body) -> None:
        """Accepted and ignored for one who may write, as a truncate through the mount is
        (and as AGFS's streamfs): a stream's past cannot be unwritten."""
        path, names = self._api_names(params, "truncate")
        if not params.get("size"):
            raise Refused(400, "size parameter is required")
        if int_param(params, "size", 0) < 0:
            raise Refused(400, "size must be non-negative")
        with agfs_errors("truncate", path):
            node = self.tree.resolve(names, exchange.identity)
            if isinstance(node, Directory):
                raise fail(errno.EISDIR)
            check(exchange.identity, Access.WRITE, node)
        await exchange.reply_json(200, {"message": "truncated"}, newline=True)

    async def _api_grep(self, exchange, params, body) -> None:
        """AGFS's checks, then its streamfs's refusal: a stream is read in stream mode."""
        request = json_body(body, "invalid request body")
        if not request.get("path"):
            raise Refused(400, "path is required")
        if not request.get("pattern"):
            raise Refused(400, "pattern is required")
        is_directory = self._api_lookup(exchange, "failed to stat path", str(request["path"]))
        if is_directory and not request.get("recursive"):
            raise Refused(400, "path is a directory, use recursive=true to search")
        raise Refused(400, f"grep failed: {USE_STREAM_MODE}")

    async def _api_digest(self, exchange, params, body) -> None:
        """AGFS's checks, then its streamfs's refusal: a live stream has no digest."""
        request = json_body(body, "invalid request body")
        algorithm = request.get("algorithm")
        if algorithm not in ("xxh3", "md5"):
            raise Refused(400, f"unsupported algorithm: {algorithm} (supported: xxh3, md5)")
        if not request.get("path"):
            raise Refused(400, "path is required")
        path = str(request["path"])
        if self._api_lookup(exchange, "failed to calculate digest", path):
            raise Refused(409, "failed to calculate digest: "
                               + agfs_message("digest", path, errno.EISDIR))
        raise Refused(400, f"failed to calculate digest: {USE_STREAM_MODE}")

    def _api_lookup(self, exchange: Exchange, context: str, path: str) -> bool:
        """Whether the AGFS path a JSON body names is a directory; 404 or 403 (errors
        prefixed with ``context``, as AGFS's) unless it exists and may be read."""
        _, names = self._api_path({"path": path})
        if not names or self._above_mount(names) is not None:
            return True
        try:
            node = self._api_node(exchange, "stat", path, names)
            with agfs_errors("read", path):
                check(exchange.identity, Access.READ, node)
        except Refused as e:
            raise Refused(e.status, f"{context}: {e}") from None
        return isinstance(node, Directory)

    # -- file handles --------------------------------------------------------

    async def _handles_route(self, exchange: Exchange, rest: bytes, query: bytes) -> None:
        """``/open``, the caller's list, and ``/ID[/OPERATION]`` for the handle's owner."""
        params = parse_query(query)
        if rest in (b"/open", b"", b"/"):
            method = b"POST" if rest == b"/open" else b"GET"
            if exchange.method != method:
                raise Refused(405, "method not allowed", headers=((b"allow", method),))
            await exchange.read_body(MAX_API_BODY)
            if rest == b"/open":
                await self._handle_open(exchange, params)
            else:
                await exchange.reply_json(200, self.handles.listing(exchange.identity))
            return
        handle_id, _, operation = rest[1:].partition(b"/")
        methods = HANDLE_ROUTES.get(operation)
        if methods is None:
            raise Refused(404, f"unknown operation: {operation.decode(errors='replace')}")
        if exchange.method not in methods:
            raise Refused(405, "method not allowed", headers=((b"allow", b", ".join(methods)),))
        try:
            number = int(handle_id)
        except ValueError:
            raise Refused(400, "invalid handle ID: must be a number") from None
        handle = self.handles.get(number, exchange.identity)
        if exchange.method != b"PUT":  # a write reads its body as the chunk
            await exchange.read_body(MAX_API_BODY)
        async with self.handles.using(handle):
            await getattr(self, methods[exchange.method])(exchange, handle, params)

    async def _handle_open(self, exchange: Exchange, params: dict[str, str]) -> None:
        """Open a stream as open(2) would (flags as AGFS's: Linux's values), into a handle.

        ``mode`` is checked as AGFS does and not used: a stream made here is
        0644, as every stream made over HTTP (pyagfs sends 0644 as "420",
        which AGFS reads as octal 420).
        """
        path, names = self._api_names(params, "open")
        flags = int_param(params, "flags", 0)
        access = flags & O_ACCMODE
        if flags < 0 or access == O_ACCMODE:
            raise Refused(400, "invalid flags parameter")
        try:
            int(params.get("mode") or "644", 8)
        except ValueError:
            raise Refused(400, "invalid mode parameter") from None
        lease = lease_param(params)
        write = access in (O_WRONLY, O_RDWR)
        if write and self.read_only:
            raise Refused(403, "this server is read-only")
        identity = exchange.identity
        self.handles.check_room(identity)
        with agfs_errors("open", path):
            if not names:
                raise fail(errno.EISDIR)
            parent = self._parent(exchange, names)
            opened, _ = await self.tree.open_name(
                parent, names[-1], read=access != O_WRONLY, write=write,
                create=bool(flags & O_CREATE), exclusive=bool(flags & O_EXCL), mode=UPLOAD_MODE,
                uid=identity.uid, gid=primary_gid(identity, parent), identity=identity)
        handle = self.handles.add(identity, path, flags, opened, lease)
        await exchange.reply_json(200, handle.info(("handle_id", "path", "flags", "lease",
                                                    "expires_at")))

    async def _handle_info(self, exchange, handle, params) -> None:
        await exchange.reply_json(200, handle.info())

    async def _handle_close(self, exchange, handle, params) -> None:
        self.handles.close(handle)
        await exchange.reply_json(200, {"message": "handle closed"})

    async def _handle_read(self, exchange, handle, params) -> None:
        """Up to ``size`` bytes (4096 unless given; -1: up to 1 MiB) as a file read gives
        them: what is queued, history first, else the next data to come, waiting up to
        :attr:`Handles.read_wait`; nothing (EOF) after rm. An ``offset`` other than where
        the handle's last read ended moves it there in the stream first, as pread(2)."""
        if handle.opened.reader is None:
            raise Refused(400, f"read: {handle.path}: the handle is not open for reading")
        size = int_param(params, "size", 4096)
        size = READ_SIZE if size < 0 else min(size, READ_SIZE)
        offset = None
        if params.get("offset"):
            offset = int_param(params, "offset", 0)
            if offset < 0:
                raise Refused(400, "invalid offset parameter")
        try:
            data = await self.handles.read(exchange, handle, size, offset)
        except ReaderDisconnected:
            raise Refused(500, f"read: {handle.path}: the reader fell behind and was cut off "
                               "(the stream's disconnect policy)") from None
        if data is not None:
            await exchange.reply(200, data, b"application/octet-stream",
                                 ((b"x-bytes-read", b"%d" % len(data)),))

    async def _handle_write(self, exchange, handle, params) -> None:
        """Append the body as one chunk (up to 1 MiB); ``offset`` is checked, not used:
        a stream only appends."""
        if handle.opened.writer is None:
            raise Refused(400, f"write: {handle.path}: the handle is not open for writing")
        if params.get("offset") and int_param(params, "offset", 0) < 0:
            raise Refused(400, "invalid offset parameter")
        body = await exchange.read_body(UPLOAD_PIECE)
        try:
            written = await handle.opened.write(body)
        except StreamClosed:
            raise Refused(410, "the stream was removed while it was being written") from None
        await readers_first(handle.opened.node, written)
        await exchange.reply_json(200, {"bytes_written": written})

    async def _handle_sync(self, exchange, handle, params) -> None:
        """A write is in the stream when it is answered: nothing to flush."""
        await exchange.reply_json(200, {"message": "synced"})

    async def _handle_renew(self, exchange, handle, params) -> None:
        handle.lease = lease_param(params)
        await exchange.reply_json(200, handle.info(("expires_at", "lease")))

    async def _handle_stat(self, exchange, handle, params) -> None:
        node = handle.opened.node
        await node.stream.refresh()
        await exchange.reply_json(200, file_info(node, exchange.identity,
                                                 handle.path.rpartition("/")[2]))

    async def _handle_unimplemented(self, exchange, handle, params) -> None:
        operation = origin_form(exchange.target).partition(b"?")[0].rpartition(b"/")[2]
        raise Refused(501, f"{operation.decode()}: not implemented")

    def _parent(self, exchange: Exchange, names: list[bytes]) -> Directory:
        """The directory ``names`` would be in (the mount root itself has none here)."""
        if not names:
            raise Refused(409, agfs_message("", self.agfs_path, errno.EEXIST, "directory"))
        return self.native.parent_of(names, exchange.identity)


class Handle:
    """An open stream that AGFS's handle routes use between requests.

    ``busy`` counts requests on it under way: a handle is idle, and its lease
    runs, only while it is 0. ``position`` is where its last read ended.
    """

    __slots__ = ("id", "identity", "path", "flags", "opened", "lease", "position", "busy",
                 "idle_since", "created_ns", "used_ns", "read_lock", "scopes")

    def __init__(self, handle_id: int, identity: Identity, path: str, flags: int,
                 opened: OpenStream, lease: int) -> None:
        self.id = handle_id
        self.identity = identity
        self.path = path
        self.flags = flags
        self.opened = opened
        self.lease = lease
        self.position = 0
        self.busy = 0
        self.idle_since = trio.current_time()
        self.created_ns = self.used_ns = time.time_ns()
        self.read_lock = trio.Lock()
        #: The waits of requests under way, cancelled when the handle closes.
        self.scopes: set[trio.CancelScope] = set()

    def expiry(self) -> float:
        """When, in trio's clock, the lease ends if nothing uses the handle."""
        return math.inf if self.busy else self.idle_since + self.lease

    def info(self, keys: tuple[str, ...] | None = None) -> dict:
        idle_since = time.time_ns() if self.busy else self.used_ns
        info = {"handle_id": self.id, "path": self.path, "flags": self.flags,
                "lease": self.lease, "expires_at": rfc3339(idle_since + self.lease * 10**9),
                "created_at": rfc3339(self.created_ns), "last_access": rfc3339(self.used_ns)}
        return info if keys is None else {key: info[key] for key in keys}


class Handles:
    """One door's table of open handles, each usable only by the identity that opened it.

    A handle is released by its close, when its lease runs out with no
    request on it (a client that went away), and when the daemon stops (the
    task keeping the leases is a trio system task, cancelled when the run
    ends). Each identity may hold :attr:`limit` at once: a client cannot run
    the daemon out of memory or readers.
    """

    #: Open handles per identity (all clients without a token are one: nobody).
    LIMIT = 1024
    #: How long a read waits for data before it answers nothing (which a FUSE
    #: client passes on as EOF): AGFS's streamfs waits 30 s, within agfs-fuse's
    #: 60 s HTTP timeout (pyagfs's default of 10 s gives up sooner).
    READ_WAIT = 30.0

    def __init__(self) -> None:
        self.limit = self.LIMIT
        self.read_wait = self.READ_WAIT
        self._handles: dict[int, Handle] = {}
        self._ids = itertools.count(1)
        self._held: Counter[Identity] = Counter()
        #: The lease keeper's sleep, moved earlier when a lease would end sooner.
        self._sleep: trio.CancelScope | None = None
        self._keeping = False

    def __len__(self) -> int:
        return len(self._handles)

    def check_room(self, identity: Identity) -> None:
        if self._held[identity] >= self.limit:
            raise Refused(429, f"too many open handles ({self.limit} per user)")

    def add(self, identity: Identity, path: str, flags: int, opened: OpenStream,
            lease: int) -> Handle:
        try:
            self.check_room(identity)  # again: others may have opened during the open
        except Refused:
            opened.close()
            raise
        handle = Handle(next(self._ids), identity, path, flags, opened, lease)
        self._handles[handle.id] = handle
        self._held[identity] += 1
        self._lease_ends(handle.expiry())
        if not self._keeping:
            self._keeping = True
            trio.lowlevel.spawn_system_task(self._keep_leases, name="AGFS handle leases")
        return handle

    def get(self, handle_id: int, identity: Identity) -> Handle:
        """The handle, for its owner; 404 for anyone else, as for a handle never opened."""
        handle = self._handles.get(handle_id)
        if handle is None or handle.identity != identity:
            raise Refused(404, f"handle {handle_id} not found")
        return handle

    def listing(self, identity: Identity) -> dict:
        mine = [handle.info() for handle in self._handles.values() if handle.identity == identity]
        return {"handles": mine, "count": len(mine), "max": self.limit}

    @asynccontextmanager
    async def using(self, handle: Handle):
        """A request on ``handle``: its lease does not run meanwhile, and restarts after."""
        handle.busy += 1
        try:
            yield
        finally:
            handle.busy -= 1
            handle.idle_since = trio.current_time()
            handle.used_ns = time.time_ns()
            if handle.id in self._handles:
                self._lease_ends(handle.expiry())

    async def read(self, exchange: Exchange, handle: Handle, size: int,
                   offset: int | None) -> bytes | None:
        """Read as :meth:`AGFSRoutes._handle_read` says; None if the client went away.

        A client hanging up while the read waits cancels it, which loses
        nothing: what comes next stays queued for the handle's next read.
        """
        async with handle.read_lock:
            reader = handle.opened.reader
            if offset is not None and offset != handle.position:
                reader.seek(offset)
                handle.position = offset
            data = b""
            hung_up = cut_off = False

            async def watch_hangup(scope: trio.CancelScope) -> None:
                nonlocal hung_up
                await exchange.watch_hangup(scope)
                hung_up = True

            with trio.CancelScope(deadline=trio.current_time() + self.read_wait) as wait:
                handle.scopes.add(wait)
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(watch_hangup, nursery.cancel_scope)
                        try:
                            data = bytes(await reader.read(size))
                        except ReaderDisconnected:
                            cut_off = True  # raised here, not out of the nursery's group
                        nursery.cancel_scope.cancel()
                finally:
                    handle.scopes.discard(wait)
            if cut_off:
                raise ReaderDisconnected
            if hung_up:
                return None
            handle.position += len(data)
            return data

    def close(self, handle: Handle) -> None:
        """Release the handle's stream; requests waiting on it end (a read with nothing)."""
        if self._handles.pop(handle.id, None) is None:
            return
        self._held[handle.identity] -= 1
        if not self._held[handle.identity]:
            del self._held[handle.identity]
        for scope in handle.scopes:
            scope.cancel()
        handle.opened.close()

    def _lease_ends(self, when: float) -> None:
        if self._sleep is not None and when < self._sleep.deadline:
            self._sleep.deadline = when

    async def _keep_leases(self) -> None:
        """Close handles whose lease ran out; all of them when cancelled (the daemon stops)."""
        try:
            while self._handles:
                with trio.CancelScope(deadline=min(
                        handle.expiry() for handle in self._handles.values())) as self._sleep:
                    await trio.sleep_forever()
                self._sleep = None
                now = trio.current_time()
                for handle in [h for h in self._handles.values() if h.expiry() <= now]:
                    log.info("AGFS handle %d on %s: its lease of %d s ran out; released",
                             handle.id, handle.path, handle.lease)
                    self.close(handle)
        finally:
            self._sleep = None
            self._keeping = False
            for handle in list(self._handles.values()):
                self.close(handle)


def lease_param(params: dict[str, str]) -> int:
    """A handle's lease in seconds: AGFS's 60 unless given, at most its 300."""
    lease = int_param(params, "lease", 60)
    if not 0 < lease <= 300:
        raise Refused(400, "invalid lease parameter (1 to 300 seconds)")
    return lease


def parse_query(query: bytes) -> dict[str, str]:
    """A query string's parameters, the first of each name kept (as Go's Query().Get)."""
    params: dict[str, str] = {}
    for name, value in parse_qsl(query.decode("ascii", "surrogateescape"),
                                 keep_blank_values=True, errors="surrogateescape"):
        params.setdefault(name, value)
    return params


def int_param(params: dict[str, str], name: str, default: int) -> int:
    value = params.get(name)
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise Refused(400, f"invalid {name} parameter") from None


def json_body(body: bytes | None, invalid: str) -> dict:
    """A call's JSON object body; 400 with ``invalid`` otherwise."""
    try:
        request = json.loads(body or b"{}")
    except ValueError:
        raise Refused(400, invalid) from None
    if not isinstance(request, dict):
        raise Refused(400, invalid)
    return request


def agfs_message(op: str, path: str, error: int, kind: str | None = None) -> str:
    """AGFS's text for ``error`` on ``path``.

    Where AGFS's plugins have their own words, theirs: ``stream not found: P``
    and ``stream already exists: P`` (its streamfs; ``directory ...`` for what
    is or should be a directory, as its memfs), ``directory not empty: P``,
    ``not a directory: P``. Otherwise its typed errors' ``op: P: reason``
    (``permission denied`` for EACCES and EPERM). P is the path as the client
    gave it, where AGFS gives it inside its mount.
    """
    if kind is None:
        kind = "directory" if op in ("readdir", "mkdir") else "stream"
    if error == errno.ENOENT:
        return f"{kind} not found: {path}"
    if error == errno.EEXIST:
        return f"{kind} already exists: {path}"
    if error in (errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
        return f"{os.strerror(error).lower()}: {path}"
    if error in (errno.EACCES, errno.EPERM):
        return f"{op}: {path}: permission denied"
    return f"{op}: {path}: {os.strerror(error).lower()}"


@contextmanager
def agfs_errors(op: str, path: str):
    """Turn the tree's OSError into AGFS's error text and the status of its error type
    (404, 409, 403, 400, 507: AGFS's streamfs answers every error 500, its server maps typed ones)."""
    try:
        yield
    except OSError as e:
        raise Refused(STATUS_BY_ERRNO.get(e.errno, 500), agfs_message(op, path, e.errno)) from None


def file_info(node: Node, identity: Identity, name: str | None = None) -> dict:
    """AGFS's file info object for a node (``meta`` keys are capitalised, as AGFS sends them).

    A stream's figures are there for those who may read it, as its extended
    attributes are through the mount.
    """
    info = {"name": os.fsdecode(node.name) if name is None else name, "size": 0,
            "mode": stat.S_IMODE(node.mode), "modTime": rfc3339(node.mtime_ns),
            "isDir": isinstance(node, Directory),
            "meta": {"Name": PLUGIN_NAME, "Type": "", "Content": None}}
    if isinstance(node, StreamFile):
        info["meta"]["Type"] = "stream"
        if not may(identity, Access.READ, node):
            return info
        statistics = node.stream.statistics()
        content = {"total_written": str(statistics.bytes_written),
                   "active_readers": str(statistics.readers)}
        for key, value in asdict(statistics).items():
            content[key] = str(getattr(value, "value", value))
        info["size"] = statistics.bytes_written
        info["meta"].update(Type="stream", Content=content)
    return info


def virtual_info(name: str, kind: str, plugin: str = "") -> dict:
    """File info for the root and the directories leading to the AGFS mount path."""
    return {"name": name, "size": 0, "mode": 0o755, "modTime": rfc3339(time.time_ns()),
            "isDir": True, "meta": {"Name": plugin, "Type": kind, "Content": None}}


def rfc3339(ns: int) -> str:
    """Go's RFC3339Nano, in UTC: trailing zeros of the fraction dropped."""
    seconds, fraction = divmod(ns, 1_000_000_000)
    text = datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    if fraction:
        text += "." + f"{fraction:09d}".rstrip("0")
    return text + "Z"


def version_info() -> dict[str, str]:
    try:
        version = metadata.version("streamfs-fuse")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return {"version": version, "gitCommit": "", "buildTime": ""}
