"""The native HTTP routes: the mount's tree, one URL per stream.

- ``GET /path``: a stream is sent with chunked transfer, like ``cat``: its
  history, then live data, until rm. A directory is listed as JSON, or for a
  browser (``Accept: text/html``) as a page that keeps its figures up to date
  (:mod:`.listing_page`). Range is ignored:
  the answer is always 200 and the stream from the reader's start.
- ``HEAD /path``: the figures ``stat`` and the xattrs give, as headers.
- ``PUT /path``, ``POST /path``: append the request body, creating the stream
  if needed; each HTTP chunk becomes one stream chunk as it arrives (see
  :meth:`.door.Exchange.body_pieces`), so a chunked upload is a live source.
- ``DELETE /path``: rm (rmdir for an empty directory).

Each route translates onto the core for the request's identity: the
tree decides who may do what, the stream how readers and writers
behave. Errors are the tree's errno, which the door turns into a status.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import posixpath
import pwd
from contextlib import aclosing
from dataclasses import asdict
from urllib.parse import parse_qsl, unquote_to_bytes

import trio

from ..core.access import Access, Identity, check, may
from ..settings import HTTPSettings
from .door import Exchange, Refused, http_date
from .listing_page import listing_page
from ..core.tree import NAME_MAX, Directory, Tree, Node, StreamFile, fail
from ..core.stream import StreamClosed
from ..settings import Join

__all__ = ["NativeRoutes", "check_path", "origin_form", "parse_path", "readers_first"]

#: Longest path, in bytes, as PATH_MAX.
MAX_PATH = 4096

#: By file name ending; everything else is application/octet-stream.
CONTENT_TYPES = {
    ".ts": "video/mp2t", ".m2ts": "video/mp2t", ".mp4": "video/mp4", ".webm": "video/webm",
    ".mkv": "video/x-matroska", ".flv": "video/x-flv", ".ogv": "video/ogg",
    ".mp3": "audio/mpeg", ".aac": "audio/aac", ".ogg": "audio/ogg", ".oga": "audio/ogg",
    ".opus": "audio/ogg", ".wav": "audio/wav", ".flac": "audio/flac",
    ".m3u8": "application/vnd.apple.mpegurl", ".json": "application/json",
    ".ndjson": "application/x-ndjson", ".jsonl": "application/x-ndjson",
    ".txt": "text/plain; charset=utf-8", ".log": "text/plain; charset=utf-8",
    ".csv": "text/csv; charset=utf-8",
}

WRITE_METHODS = {b"PUT", b"POST", b"DELETE"}
ALLOWED = b"GET, HEAD, PUT, POST, DELETE"
#: Mode of a stream made by an upload (as ``touch`` with umask 022).
UPLOAD_MODE = 0o644
#: An upload whose bytes times the stream's readers come to at most this is sent to
#: the readers before the writer is answered. AGFS's PUT per chunk with its Go client
#: (2 vCPU, load average 4-6, 3 runs each): 1 KiB every 1 ms reached 1 reader at p50
#: 212-246 us this way against 264-409 us answering first (16 readers: 393-536 against
#: 630-1,081); but 64 KiB PUTs to 16 readers delivered 961-1,124 MB/s this way against
#: 1,509-1,869 answering first, as the writer then sends its next PUT during the fanout.
READERS_FIRST = 32 * 1024


async def readers_first(node: StreamFile, written: int) -> None:
    """Let the readers a small write woke send it before its writer is answered
    (see :data:`READERS_FIRST`)."""
    if 0 < written * len(node.stream.readers) <= READERS_FIRST:
        # trio runs a batch of woken tasks in either order: after two passes
        # every reader the write woke has sent.
        await trio.lowlevel.checkpoint()
        await trio.lowlevel.checkpoint()


def content_type(name: bytes) -> str:
    return CONTENT_TYPES.get(posixpath.splitext(os.fsdecode(name))[1].lower(),
                             "application/octet-stream")


def primary_gid(identity: Identity, parent: Directory) -> int:
    """The group a node made by ``identity`` gets: its login group, else the directory's."""
    gid = login_group(identity.uid)
    return parent.gid if gid is None else gid


@functools.lru_cache(maxsize=1024)
def login_group(uid: int) -> int | None:
    """The user database's primary group of ``uid``, looked up once (it was 3.6% of the
    daemon's time on AGFS's 64 KiB PUTs: every upload names the group a new stream would get)."""
    try:
        return pwd.getpwuid(uid).pw_gid
    except KeyError:
        return None


class NativeRoutes:
    """The routes above, for one tree; see the module docstring."""

    def __init__(self, tree: Tree, settings: HTTPSettings) -> None:
        self.tree = tree
        self.settings = settings

    async def __call__(self, exchange: Exchange) -> None:
        method = exchange.method
        if method in WRITE_METHODS and self.settings.read_only:
            raise Refused(403, "this server is read-only")
        names = parse_path(exchange.target)
        if method in (b"GET", b"HEAD"):
            node = self.tree.resolve(names, exchange.identity)
            if method == b"HEAD":
                await self._head(exchange, node)
            elif isinstance(node, Directory):
                await self._listing(exchange, node, names)
            else:
                await self.stream(exchange, node)
        elif method in (b"PUT", b"POST"):
            node, created, written = await self.upload(exchange, names)
            await exchange.reply_json(201 if created else 200,
                                      {"path": self.tree.path(node), "written": written})
        elif method == b"DELETE":
            await self.remove(exchange, names)
            await exchange.reply(204)
        else:
            raise Refused(405, f"method {method.decode(errors='replace')} is not allowed",
                          headers=((b"allow", ALLOWED),))

    # -- the verbs every door's routes share ---------------------------------

    def parent_of(self, names: list[bytes], identity: Identity) -> Directory:
        """The directory the last of ``names`` is in."""
        if not names:
            raise fail(errno.EISDIR)
        parent = self.tree.resolve(names[:-1], identity)
        if not isinstance(parent, Directory):
            raise fail(errno.ENOTDIR)
        return parent

    async def stream(self, exchange: Exchange, node: Node, kind: bytes | None = None) -> None:
        """Send the stream at ``node``, as ``cat`` reads it, until rm."""
        opened = await self.tree.open(node, read=True, write=False,
                                           identity=exchange.identity,
                                           join=query_join(exchange.target))
        try:
            await exchange.send_stream(opened.reader, [
                (b"content-type", kind or content_type(node.name).encode()),
                (b"cache-control", b"no-cache, no-store"),
                (b"x-content-type-options", b"nosniff"),
            ])
        finally:
            opened.close()

    async def upload(self, exchange: Exchange, names: list[bytes]) -> tuple[StreamFile, bool, int]:
        """Append the request body to the stream at ``names``, creating it if needed.

        The stream is made only once the body's first piece has arrived
        whole, so a request whose body is malformed from the start makes
        nothing; who may do it is checked before the body is read as well.
        Returns the node, whether it was made, and the bytes written.
        """
        identity = exchange.identity
        tree = self.tree
        parent = self.parent_of(names, identity)
        tree.check_open_name(identity, parent, names[-1], read=False, write=True,
                                  create=True)
        async with aclosing(exchange.body_pieces()) as pieces:
            first = await anext(pieces, None)
            opened, created = await tree.open_name(
                parent, names[-1], read=False, write=True, create=True, mode=UPLOAD_MODE,
                uid=identity.uid, gid=primary_gid(identity, parent), identity=identity)
            written = 0
            try:
                if first is not None:
                    written += await opened.write(first)
                    first = None
                    async for piece in pieces:
                        written += await opened.write(piece)
            except StreamClosed:
                raise Refused(410, "the stream was removed while it was being written") from None
            finally:
                opened.close()
        await readers_first(opened.node, written)
        return opened.node, created, written

    async def remove(self, exchange: Exchange, names: list[bytes], *,
                     recursive: bool = False) -> None:
        """rm, rmdir for a directory, or rm -r."""
        identity = exchange.identity
        tree = self.tree
        if not names:
            raise Refused(409, "/ cannot be removed")
        parent = self.parent_of(names, identity)
        if recursive:
            await tree.remove_tree(parent, names[-1], identity=identity)
        elif isinstance(tree.child(parent, names[-1]), Directory):
            await tree.rmdir(parent, names[-1], identity=identity)
        else:
            await tree.unlink(parent, names[-1], identity=identity)
        await tree.settle()

    # -- listings and figures ------------------------------------------------

    async def _head(self, exchange: Exchange, node: Node) -> None:
        headers = [(b"last-modified", http_date(node.mtime_ns)),
                   (b"x-streamfs-mode", b"%o" % node.mode)]
        if isinstance(node, StreamFile):
            headers.append((b"content-type", content_type(node.name).encode()))
        # The figures are for those who may read the stream, as its xattrs are.
        if isinstance(node, StreamFile) and may(exchange.identity, Access.READ, node):
            await node.stream.refresh()
            for name, value in asdict(node.stream.statistics()).items():
                value = getattr(value, "value", value)
                headers.append((b"x-streamfs-" + name.replace("_", "-").encode(),
                                str(value).encode()))
        elif isinstance(node, Directory):
            headers.append((b"x-streamfs-type", b"directory"))
        await exchange.reply(200, headers=headers)

    async def _listing(self, exchange: Exchange, directory: Directory,
                       names: list[bytes]) -> None:
        check(exchange.identity, Access.READ, directory)
        entries = self.entries(directory, exchange.identity)
        if b"text/html" in (exchange.header(b"accept") or b""):
            await exchange.reply(200, listing_page(entries, names).encode(),
                                 b"text/html; charset=utf-8")
        else:
            await exchange.reply(200, json.dumps(entries).encode(), b"application/json")

    @staticmethod
    def entries(directory: Directory, identity: Identity) -> list[dict]:
        """The JSON listing, as ``ls -l`` shows it.

        ``readers`` and ``writers`` count every host's, as HEAD does, and only
        for streams ``identity`` may read (they are its xattrs through the mount).
        """
        entries = []
        for node in directory.entries.values():
            entry = {"name": os.fsdecode(node.name), "mode": node.mode,
                     "mtime": node.mtime_ns / 1e9, "type": "file", "size": 0,
                     "readers": 0, "writers": 0}
            if isinstance(node, StreamFile):
                statistics = node.stream.statistics()
                entry["size"] = statistics.bytes_written
                if may(identity, Access.READ, node):
                    entry.update(readers=statistics.readers, writers=statistics.writers)
            else:
                entry["type"] = "directory"
            entries.append(entry)
        return entries


def parse_path(target: bytes) -> list[bytes]:
    """The names along a request's path, confined to the tree.

    An absolute-form target (``http://host/path``, RFC 9112 §3.2.2) names its
    path. Percent-escapes are decoded first, so ``%2e%2e`` is ``..``; "." and
    ".." components, NUL bytes and overlong paths or names are refused with 400.
    """
    path = origin_form(target).split(b"?", 1)[0]
    if not path.startswith(b"/"):
        raise Refused(400, "the path must start with /")
    return check_path(unquote_to_bytes(path))


def query_join(target: bytes) -> Join | None:
    """A GET's ``?join=`` (where the reader starts), or None for the stream's own setting."""
    query = origin_form(target).partition(b"?")[2].decode("ascii", "surrogateescape")
    value = next((v for k, v in parse_qsl(query) if k == "join"), None)
    try:
        return None if value is None else Join.parse(value)
    except ValueError as e:
        raise Refused(400, f"join: {e}") from None


def origin_form(target: bytes) -> bytes:
    """The path and query of a target in origin form, or in absolute form (``http://h/p``)."""
    scheme, sep, rest = target.partition(b"://")
    if sep and scheme.lower() in (b"http", b"https"):
        return b"/" + rest.partition(b"/")[2]
    return target


def check_path(decoded: bytes) -> list[bytes]:
    """The names along an already decoded path, refused with 400 as :func:`parse_path` says."""
    if len(decoded) > MAX_PATH:
        raise Refused(400, "the path is too long")
    if b"\0" in decoded:
        raise Refused(400, "the path holds a NUL byte")
    names = [name for name in decoded.split(b"/") if name]
    for name in names:
        if name in (b".", b".."):
            raise Refused(400, "the path may not hold . or ..")
        if len(name) > NAME_MAX:
            raise Refused(400, "a name in the path is longer than 255 bytes")
    return names
