"""The HTTP door: the same streams as the mount, over HTTP/1.1 (h11 on trio sockets).

Routes:

- ``GET /path``: a stream is sent with chunked transfer, like ``cat``: its
  history, then live data, until rm. A directory is listed as JSON, or as a
  small HTML page for a browser (``Accept: text/html``).
- ``HEAD /path``: the figures ``stat`` and the xattrs give, as headers.
- ``PUT /path``, ``POST /path``: append the request body, creating the stream
  if needed. Each piece of body read from the socket becomes a chunk as it
  arrives, so a chunked upload is a live source.
- ``DELETE /path``: rm (rmdir for an empty directory).

The AGFS HTTP API is served on top of this door by :mod:`.agfs`.

This door holds no stream policy: a response is a Reader and an upload a
Writer of the core, so history, fanout, slow-reader policies and EOF on rm
are the mount's. A client that goes away releases its reader at once. Errors
are the namespace's errno, sent as a status with an AGFS-style JSON body.
Request heads are bounded in size and must arrive within
:data:`HEAD_TIMEOUT`; bodies and responses never time out.
"""

from __future__ import annotations

import errno
import hmac
import html
import json
import logging
import os
import posixpath
import time
from dataclasses import asdict, dataclass
from http import HTTPStatus
from urllib.parse import unquote_to_bytes

import h11
import trio

from .namespace import NAME_MAX, Directory, Namespace, Node, StreamFile, fail
from .reader import ReaderDisconnected
from .stream import StreamClosed

__all__ = ["HTTPDoor", "HTTPSettings"]

log = logging.getLogger(__name__)

#: Longest request line plus headers; beyond it the request gets 431.
MAX_HEAD = 16 * 1024
#: A client gets this long to send a request's line and headers (slowloris).
HEAD_TIMEOUT = 10.0
#: Longest path, in bytes, as PATH_MAX.
MAX_PATH = 4096
#: Largest piece read from a reader, or from a socket, at once.
READ_SIZE = 1024 * 1024
#: Data at least this large is sent without copying it next to its chunk header.
LARGE_SEND = 64 * 1024

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

STATUS_BY_ERRNO = {
    errno.ENOENT: 404, errno.ENOTDIR: 404, errno.EEXIST: 409, errno.ENOTEMPTY: 409,
    errno.EISDIR: 409, errno.EINVAL: 400, errno.ENAMETOOLONG: 400, errno.EACCES: 403,
    errno.EPERM: 403,
}

WRITE_METHODS = {b"PUT", b"POST", b"DELETE"}
ALLOWED = b"GET, HEAD, PUT, POST, DELETE"

@dataclass(frozen=True)
class HTTPSettings:
    """Whether and how the daemon serves its streams over HTTP."""

    #: Where to listen, as (host, port); None serves no HTTP.
    address: tuple[str, int] | None = None
    #: A file holding the bearer token every request must carry.
    token_file: str | None = None
    #: Refuse PUT, POST and DELETE with 403.
    read_only: bool = False
    #: Where the tree appears in the AGFS API: AGFS's mount path (see :mod:`.agfs`).
    agfs_path: str = "/streamfs"


class Refused(Exception):
    """A request the door answers with ``status`` and an error message."""

    def __init__(self, status: int, message: str, allow: bytes = ALLOWED) -> None:
        super().__init__(message)
        self.status = status
        #: The methods a 405 names.
        self.allow = allow


def content_type(name: bytes) -> str:
    return CONTENT_TYPES.get(posixpath.splitext(os.fsdecode(name))[1].lower(),
                             "application/octet-stream")


class HTTPDoor:
    """Serves one namespace over HTTP; see the module docstring for the routes."""

    def __init__(self, namespace: Namespace, settings: HTTPSettings,
                 token: bytes | None = None) -> None:
        self.namespace = namespace
        self.settings = settings
        self._expected_authorization = b"Bearer " + token if token else None
        #: Responses and uploads under way: shutdown lets them finish.
        self.active = 0
        self._logged_failures: set[type] = set()

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        host, port = self.settings.address
        listeners = await trio.open_tcp_listeners(port, host=host)
        for listener in listeners:
            log.info("serving HTTP on %s", listener.socket.getsockname())
        task_status.started(listeners)
        await trio.serve_listeners(self._connection, listeners)

    # -- connections ---------------------------------------------------------

    async def _connection(self, sock: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        try:
            while True:
                event = None
                with trio.move_on_after(HEAD_TIMEOUT):
                    event = await self._next_event(conn, sock)
                if event is None:
                    return  # no complete request head in time: cut off
                if isinstance(event, h11.ConnectionClosed):
                    return
                await self._request(conn, sock, event)
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except h11.RemoteProtocolError as e:
            await self._send_error(conn, sock, e.error_status_hint, str(e))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception as e:  # a bug must cost one connection, not the daemon
            if type(e) not in self._logged_failures:
                self._logged_failures.add(type(e))
                log.error("an HTTP request failed (answered 500; further such failures are "
                          "not logged)", exc_info=e)
            await self._send_error(conn, sock, 500, "internal error")
        finally:
            await sock.aclose()

    @staticmethod
    async def _next_event(conn: h11.Connection, sock: trio.SocketStream):
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            conn.receive_data(await sock.receive_some(READ_SIZE))

    async def _request(self, conn: h11.Connection, sock: trio.SocketStream,
                       request: h11.Request) -> None:
        try:
            self._authorize(request)
            if request.method in WRITE_METHODS and self.settings.read_only:
                raise Refused(403, "this server is read-only")
            await self._route(conn, sock, request)
        except Refused as e:
            await self._send_error(conn, sock, e.status, str(e), e.allow)
        except OSError as e:
            await self._send_error(conn, sock, STATUS_BY_ERRNO.get(e.errno, 500),
                                   f"{e.strerror}: {request.target.decode(errors='replace')}")

    async def _route(self, conn, sock, request: h11.Request) -> None:
        """The native routes; a subclass may put its own in front."""
        names = parse_path(request.target)
        if request.method == b"GET":
            await self._get(conn, sock, request, names)
        elif request.method == b"HEAD":
            await self._head(conn, sock, names)
        elif request.method in (b"PUT", b"POST"):
            await self._put(conn, sock, names)
        elif request.method == b"DELETE":
            await self._delete(conn, sock, names)
        else:
            raise Refused(405, f"method {request.method.decode(errors='replace')} "
                               "is not allowed")

    def _authorize(self, request: h11.Request) -> None:
        if self._expected_authorization is None:
            return
        given = next((value for name, value in request.headers if name == b"authorization"),
                     b"")
        if not hmac.compare_digest(given, self._expected_authorization):
            raise Refused(401, "a valid bearer token is required")

    # -- routes --------------------------------------------------------------

    def _resolve(self, names: list[bytes]) -> Node:
        node: Node = self.namespace.root
        for name in names:
            if not isinstance(node, Directory):
                raise fail(errno.ENOTDIR)
            node = self.namespace.child(node, name)
        return node

    async def _get(self, conn, sock, request: h11.Request, names: list[bytes]) -> None:
        node = self._resolve(names)
        if isinstance(node, Directory):
            accept = next((v for n, v in request.headers if n == b"accept"), b"")
            if b"text/html" in accept:
                body = self._listing_html(node, names).encode()
                kind = b"text/html; charset=utf-8"
            else:
                body = json.dumps(self._listing(node)).encode()
                kind = b"application/json"
            await self._send_whole(conn, sock, 200, body, kind)
            return
        await self._stream(conn, sock, node)

    async def _stream(self, conn, sock, node: StreamFile, kind: bytes | None = None) -> None:
        namespace = self.namespace
        stream = node.stream
        namespace.hold(node)
        reader = await stream.join()
        self.active += 1
        try:
            await sock.send_all(conn.send(response(status_code=200, headers=[
                (b"content-type", kind or content_type(node.name).encode()),
                (b"cache-control", b"no-cache, no-store"),
                (b"x-content-type-options", b"nosniff"),
            ])))
            async with trio.open_nursery() as nursery:
                # A client that goes away must free its reader at once, not
                # when the next chunk fails to send.
                nursery.start_soon(self._watch_hangup, conn, sock, nursery.cancel_scope)
                try:
                    while data := await reader.read(READ_SIZE):
                        await self._send_data(conn, sock, data)
                except ReaderDisconnected:
                    # Cut off by the disconnect policy: end without the last
                    # chunk, so the client sees an incomplete body.
                    conn.send_failed()
                    nursery.cancel_scope.cancel()
                    return
                nursery.cancel_scope.cancel()
            if conn.our_state is h11.SEND_BODY:  # the client is still there
                await sock.send_all(conn.send(h11.EndOfMessage()))
        finally:
            self.active -= 1
            stream.release_reader(reader)
            namespace.release(node)

    @staticmethod
    async def _watch_hangup(conn, sock, scope: trio.CancelScope) -> None:
        while data := await sock.receive_some(READ_SIZE):
            conn.receive_data(data)  # a pipelined request, kept for later
        conn.send_failed()
        scope.cancel()

    @staticmethod
    async def _send_data(conn, sock, data) -> None:
        pieces = conn.send_with_data_passthrough(h11.Data(data=data))
        if len(data) < LARGE_SEND:
            await sock.send_all(b"".join(pieces))
        elif isinstance(sock, trio.SocketStream):
            await send_vectored(sock, pieces)
        else:
            for piece in pieces:
                await sock.send_all(piece)

    async def _head(self, conn, sock, names: list[bytes]) -> None:
        node = self._resolve(names)
        headers = [(b"last-modified", http_date(node.mtime_ns)),
                   (b"x-streamfs-mode", b"%o" % node.mode)]
        if isinstance(node, StreamFile):
            headers.append((b"content-type", content_type(node.name).encode()))
            await node.stream.refresh()
            for name, value in asdict(node.stream.statistics()).items():
                value = getattr(value, "value", value)
                headers.append((b"x-streamfs-" + name.replace("_", "-").encode(),
                                str(value).encode()))
        else:
            headers.append((b"x-streamfs-type", b"directory"))
        await sock.send_all(conn.send(response(status_code=200, headers=headers)))
        await sock.send_all(conn.send(h11.EndOfMessage()))

    async def _put(self, conn, sock, names: list[bytes]) -> None:
        node, created, written = await self._upload(conn, sock, names)
        body = json.dumps({"path": self.namespace.path(node), "written": written}).encode()
        await self._send_whole(conn, sock, 201 if created else 200, body, b"application/json")

    async def _upload(self, conn, sock, names: list[bytes]) -> tuple[StreamFile, bool, int]:
        """Append the request body to the stream at ``names``, creating it if needed.

        Returns the stream's node, whether it was created, and the bytes written.
        """
        if not names:
            raise Refused(409, "/ is a directory")
        namespace = self.namespace
        parent = self._resolve(names[:-1])
        if not isinstance(parent, Directory):
            raise fail(errno.ENOTDIR)
        node = parent.entries.get(names[-1])
        created = node is None
        if created:
            node = await namespace.create(StreamFile, parent, names[-1], 0o644,
                                    parent.uid, parent.gid)
        elif not isinstance(node, StreamFile):
            raise fail(errno.EISDIR)
        namespace.hold(node)
        writer = node.stream.open_writer()
        self.active += 1
        written = 0
        try:
            if conn.they_are_waiting_for_100_continue:
                await sock.send_all(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
            while True:
                event = await self._next_event(conn, sock)
                if isinstance(event, h11.Data):
                    written += await writer.write(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage):
                    break
                else:  # the client closed before its body was complete
                    raise h11.RemoteProtocolError("incomplete body", error_status_hint=400)
            node.mtime_ns = node.ctime_ns = time.time_ns()
        except StreamClosed:
            raise Refused(410, "the stream was removed while it was being written") from None
        finally:
            self.active -= 1
            writer.close()
            namespace.release(node)
        return node, created, written

    async def _delete(self, conn, sock, names: list[bytes]) -> None:
        if not names:
            raise Refused(409, "/ cannot be removed")
        parent = self._resolve(names[:-1])
        if not isinstance(parent, Directory):
            raise fail(errno.ENOTDIR)
        if isinstance(self.namespace.child(parent, names[-1]), Directory):
            await self.namespace.rmdir(parent, names[-1])
        else:
            await self.namespace.unlink(parent, names[-1])
        await self.namespace.settle()
        await sock.send_all(conn.send(response(status_code=204, headers=[])))
        await sock.send_all(conn.send(h11.EndOfMessage()))

    # -- the AGFS API --------------------------------------------------------

    # -- listings and replies ------------------------------------------------

    def _listing(self, directory: Directory) -> list[dict]:
        entries = []
        for node in directory.entries.values():
            entry = {"name": os.fsdecode(node.name), "mode": node.mode,
                     "mtime": node.mtime_ns / 1e9, "type": "file", "size": 0,
                     "readers": 0, "writers": 0}
            if isinstance(node, StreamFile):
                stream = node.stream
                entry.update(size=stream.size, readers=len(stream.readers),
                             writers=stream.writers)
            else:
                entry["type"] = "directory"
            entries.append(entry)
        return entries

    def _listing_html(self, directory: Directory, names: list[bytes]) -> str:
        base = "/" + "".join(os.fsdecode(n) + "/" for n in names)
        rows = []
        for entry in self._listing(directory):
            name = entry["name"] + ("/" if entry["type"] == "directory" else "")
            rows.append(f'<li><a href="{html.escape(base + name, quote=True)}">'
                        f'{html.escape(name)}</a> {entry["size"]} bytes, '
                        f'{entry["readers"]} readers</li>')
        title = html.escape(base)
        return (f"<!doctype html><meta charset=utf-8><title>{title}</title>"
                f"<h1>{title}</h1><ul>{''.join(rows)}</ul>")

    @staticmethod
    async def _send_whole(conn, sock, status: int, body: bytes, kind: bytes) -> None:
        await sock.send_all(conn.send(response(status_code=status, headers=[
            (b"content-type", kind), (b"content-length", b"%d" % len(body))])))
        await sock.send_all(conn.send(h11.Data(data=body)))
        await sock.send_all(conn.send(h11.EndOfMessage()))

    async def _send_error(self, conn, sock, status: int, message: str,
                          allow: bytes = ALLOWED) -> None:
        """Answer with an AGFS-style ``{"error": ...}`` body, if a reply can still start."""
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        body = json.dumps({"error": message}).encode()
        headers = [(b"content-type", b"application/json"),
                   (b"content-length", b"%d" % len(body))]
        if status == 405:
            headers.append((b"allow", allow))
        if status == 401:
            headers.append((b"www-authenticate", b"Bearer"))
        try:
            await sock.send_all(conn.send(response(status_code=status, headers=headers)))
            await sock.send_all(conn.send(h11.Data(data=body)))
            await sock.send_all(conn.send(h11.EndOfMessage()))
        except (h11.LocalProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass


async def send_vectored(sock: trio.SocketStream, pieces: list) -> None:
    """Send ``pieces`` (a chunk's header, its data, its trailer) without joining them.

    One writev(2) per portion the kernel takes, and one checkpoint per call
    rather than one per syscall: trio's send_all costs a scheduler pass for
    every partial send, and the kernel takes a 1 MiB chunk in about four.
    """
    fd = sock.socket.fileno()
    views = [memoryview(piece) for piece in pieces]
    await trio.lowlevel.checkpoint()
    while views:
        try:
            sent = os.writev(fd, views)
        except BlockingIOError:
            await trio.lowlevel.wait_writable(fd)
            continue
        except OSError as e:
            raise trio.BrokenResourceError(str(e)) from e
        while views and sent >= len(views[0]):
            sent -= len(views.pop(0))
        if sent:
            views[0] = views[0][sent:]


def response(*, status_code: int, headers: list) -> h11.Response:
    return h11.Response(status_code=status_code, headers=headers,
                        reason=HTTPStatus(status_code).phrase.encode())


def parse_path(target: bytes) -> list[bytes]:
    """The names along a request's path, confined to the tree.

    Percent-escapes are decoded first, so ``%2e%2e`` is ``..``; "." and ".."
    components, NUL bytes and overlong paths or names are refused with 400.
    """
    path = target.split(b"?", 1)[0]
    if not path.startswith(b"/"):
        raise Refused(400, "the path must start with /")
    return check_path(unquote_to_bytes(path))


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


def http_date(ns: int) -> bytes:
    return time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(ns / 1e9)).encode()
