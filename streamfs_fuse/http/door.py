"""The HTTP door's transport and protocol: listeners, connections, exchanges (h11 on trio).

Three objects, as hypercorn splits them:

- :class:`HTTPDoor` listens (TCP and Unix sockets), admits connections under
  a cap, and tells who each request is (:class:`~.access.Identity`);
- a connection reads request heads with a deadline and keeps the connection
  open between requests where HTTP/1.1 allows;
- an :class:`Exchange` is one request and its answer: the one place that
  turns h11 events into bytes on the socket and bytes into events.

What a request does is decided by the routes (:mod:`.native`, and the
AGFS API in :mod:`.agfs`), which see only an Exchange, and by the core.

Invariants:

- The door never runs the process out of descriptors: at most
  ``max_connections`` are served at once; past that the oldest connection
  waiting for a request is closed, or the newcomer gets 503.
- What a connection holds to send is views of chunks still counted by the
  core (see :meth:`~.reader.Reader.read_for_sending`), never a copy; what it
  buffers from its client is bounded by :data:`MAX_HEAD` (a request head and
  what came behind it: its body's start, or pipelined requests) and
  :data:`UPLOAD_PIECE` (a body). Each connection counts
  :data:`CONNECTION_COST` against the mount's memory cap: at the cap the
  oldest connection waiting for a request is closed, or the newcomer gets 503.
- A request head must arrive within :data:`HEAD_TIMEOUT`, and an upload
  that sends nothing for ``body_timeout`` is ended (what arrived is kept).
- A client that hangs up is normal: logged at debug level, never as an error.
"""

from __future__ import annotations

import errno
import hmac
import json
import logging
import math
import os
import resource
import socket
import ssl
import struct
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from http import HTTPStatus

import h11
import trio

from ..core.access import NOBODY, Identity
from ..core.budget import MemoryBudget
from ..settings import HTTPSettings
from ..logs import RepeatedLog
from ..core.reader import Reader, ReaderDisconnected

__all__ = ["Exchange", "HTTPDoor", "Refused", "STATUS_BY_ERRNO"]

log = logging.getLogger(__name__)

#: Longest request line plus headers; beyond it the request gets 431. Also
#: the most a connection buffers of requests pipelined behind a stream.
MAX_HEAD = 16 * 1024
#: A client gets this long to send a request's line and headers (slowloris).
HEAD_TIMEOUT = 10.0
#: Largest piece read from a reader at once: a 1 MiB chunk goes out in one writev.
READ_SIZE = 1024 * 1024
#: Largest socket read of a request body. A request head is read :data:`MAX_HEAD`
#: at a time, all it can be: a read ahead of the head is pipelined data that the
#: connection holds for as long as the request lasts (a live stream's GET: for
#: ever), and 500 connections that sent a GET and 200 KB behind it held +82 MiB
#: with 256 KiB head reads. A streaming client's few bytes are read
#: :data:`MAX_HEAD` at a time too (1,000 stalled readers cost the same RSS
#: either way: +51 MB at a 32 MB cap).
BODY_RECEIVE = 256 * 1024
#: What a connection costs the memory cap (``--max-memory``), beside what its
#: request holds (a reader, an upload's chunks, counted by the core): its objects
#: (trio's socket and task, h11's state, the Connection: 500 idle stream GETs
#: raised RSS by 14.7 KiB each, 3 KiB of it the reader, counted apart), and h11's
#: receive buffer, which may hold a head read and :data:`MAX_HEAD` kept behind
#: the request, in a bytearray that keeps its size (2,113 stream GETs with 200 KB
#: behind each: 45 KiB each).
CONNECTION_COST = 12 * 1024 + 2 * MAX_HEAD
#: Largest piece handed to TLS at once: what a stalled HTTPS client holds encrypted.
#: 100 stalled HTTPS readers cost 80, 168 and 575 KiB each at 16, 64 and 256 KiB
#: (3.1 MiB handing over 1 MiB); one reader got 315 MiB/s at 16 KiB, 505 at 64.
TLS_PIECE = 64 * 1024
#: Most chunks sent in one writev (the kernel takes at most 1,024 pieces).
SEND_GATHER = 512
#: Largest stream chunk an upload makes: one HTTP chunk is one stream chunk up
#: to this size, as one write() is through FUSE; a Content-Length body is cut
#: into pieces of this size.
UPLOAD_PIECE = 1024 * 1024
#: A chunk size beyond this is no upload but an attack: 400 at once.
MAX_DECLARED_CHUNK = 1 << 40
#: After an error, a request body up to this size is read and discarded so
#: that the connection can be kept; a longer one closes it.
DRAIN_LIMIT = 64 * 1024
#: Descriptors kept free of HTTP connections by default: FUSE, /proc reads,
#: Redis and the newcomers that get a 503.
RESERVED_DESCRIPTORS = 64
#: Newcomers past the cap answered 503 at once; beyond this they are closed unanswered.
MAX_REFUSING = 32
#: accept() errors that mean "out of something for now": wait and try again.
ACCEPT_RETRY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}

STATUS_BY_ERRNO = {
    errno.ENOENT: 404, errno.ENOTDIR: 404, errno.EEXIST: 409, errno.ENOTEMPTY: 409,
    errno.EISDIR: 409, errno.EINVAL: 400, errno.ENAMETOOLONG: 400, errno.EACCES: 403,
    errno.EPERM: 403, errno.EBUSY: 409,
    errno.ENOSPC: 507,  # the mount's --max-memory is reached with nothing left to shed
}

#: Errors from a socket whose peer went away.
HANGUPS = (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError)

failures = RepeatedLog(log)


class Refused(Exception):
    """A request the door answers with ``status`` and an error message.

    ``close`` ends the connection after the answer (the request could not be
    framed, or the client misbehaved); ``headers`` are added to the answer.
    """

    def __init__(self, status: int, message: str, *, close: bool = False,
                 headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.close = close
        self.headers = headers


#: Reason phrases by status, looked up once (``HTTPStatus(status)`` per answer was 1% of
#: the daemon's time on AGFS's 64 KiB PUTs).
REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}


def response(status: int, headers: list) -> h11.Response:
    return h11.Response(status_code=status, headers=headers, reason=REASONS.get(status, b""))


class Exchange:
    """One request on a connection and the answer to it.

    Routes read the request's body and send the answer only through these
    methods. ``identity`` is who the request acts as.
    """

    def __init__(self, conn: h11.Connection, connection: Connection, request: h11.Request,
                 identity: Identity, body_timeout: float) -> None:
        self.conn = conn
        self.connection = connection
        self.sock = connection.sock
        self.request = request
        self.identity = identity
        self.body_timeout = body_timeout
        #: Set when the connection must close after this answer.
        self.close_after = False
        #: The status answered, once the answer has started (for the log).
        self.status: int | None = None
        #: Whether h11 framed a streamed answer's first piece as a chunk (None: not yet).
        self._chunked: bool | None = None
        self._header_values: dict[bytes, bytes] | None = None

    @property
    def method(self) -> bytes:
        return self.request.method

    @property
    def target(self) -> bytes:
        return self.request.target

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (lower case)."""
        if self._header_values is None:
            # One pass over h11's headers (each of its items is a Python-level
            # __getitem__), however many are asked for; the first of a name wins.
            self._header_values = dict(reversed(list(self.request.headers)))
        return self._header_values.get(name)

    # -- the request's body --------------------------------------------------

    async def _receive_event(self):
        """The next body event; raises :class:`Refused` on a stall or a bad chunk size."""
        conn = self.conn
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                if isinstance(event, h11.ConnectionClosed):
                    raise h11.RemoteProtocolError("the client closed before its body was "
                                                  "complete", error_status_hint=400)
                return event
            # h11 keeps to itself what is left of the body (Content-Length) or
            # of the chunk (the size its header declared; an absurd one would
            # have the connection wait for ever).
            reader = getattr(conn, "_reader", None)
            declared = getattr(reader, "_bytes_in_chunk", 0)
            if declared > MAX_DECLARED_CHUNK:
                raise Refused(400, "a chunk of the body declares an absurd size", close=True)
            # Read no further than MAX_HEAD past what the body still needs: what
            # comes behind a body is pipelined data, held as long as the next request.
            left = getattr(reader, "_remaining", declared)
            data = await self.connection.receive(min(BODY_RECEIVE, left + MAX_HEAD),
                                                 self.body_timeout)
            if data is None:
                raise Refused(408, f"the request body sent nothing for {self.body_timeout:g} s",
                              close=True)
            conn.receive_data(data)

    async def continue_body(self) -> None:
        """Answer ``Expect: 100-continue``: the route is ready for the body."""
        if self.conn.they_are_waiting_for_100_continue:
            await self.sock.send_all(self.conn.send(
                h11.InformationalResponse(status_code=100, headers=[])))

    async def body_pieces(self) -> AsyncIterator[bytes]:
        """The body as the sender cut it: each HTTP chunk whole, up to :data:`UPLOAD_PIECE`.

        A chunk larger than that, and a Content-Length body, come in pieces of
        exactly :data:`UPLOAD_PIECE` bytes (the last one shorter). When the
        body stalls or breaks off, what arrived of a Content-Length body is
        still given; a chunk that never ended is not (chunks stay whole).
        """
        await self.continue_body()
        chunked = self.header(b"transfer-encoding") is not None
        # A Content-Length body that comes in one event is given as it is (no second copy).
        whole = None if chunked else int(self.header(b"content-length") or 0)
        buffer = bytearray()
        while True:
            try:
                event = await self._receive_event()
            except (Refused, h11.RemoteProtocolError):
                if buffer and not chunked:
                    yield bytes(buffer)
                raise
            if isinstance(event, h11.EndOfMessage):
                if buffer:
                    yield bytes(buffer)
                return
            data = event.data
            if not buffer and (event.chunk_start and event.chunk_end or len(data) == whole):
                yield bytes(data)  # the usual case: a whole chunk, or body, in one event
                continue
            buffer += data
            while len(buffer) >= UPLOAD_PIECE:
                yield bytes(buffer[:UPLOAD_PIECE])
                del buffer[:UPLOAD_PIECE]
            if event.chunk_end and buffer:
                yield bytes(buffer)
                buffer.clear()

    async def read_body(self, limit: int) -> bytes:
        """The whole (small) body; 413 beyond ``limit`` bytes."""
        await self.continue_body()
        body = bytearray()
        while True:
            event = await self._receive_event()
            if isinstance(event, h11.EndOfMessage):
                return bytes(body)
            body += event.data
            if len(body) > limit:
                raise Refused(413, "request body too large", close=True)

    async def drain(self) -> bool:
        """Read and discard the rest of the body, if short; whether the connection can go on."""
        conn = self.conn
        if conn.their_state is h11.DONE:
            return True
        if conn.their_state is not h11.SEND_BODY or self.close_after:
            return False
        seen = 0
        with trio.move_on_after(1.0):
            try:
                while seen <= DRAIN_LIMIT:
                    event = await self._receive_event()
                    if isinstance(event, h11.EndOfMessage):
                        return True
                    seen += len(event.data)
            except (Refused, h11.RemoteProtocolError):
                pass
        return False

    # -- the answer ----------------------------------------------------------

    def _headers(self, headers) -> list:
        headers = list(headers)
        if self.close_after:
            headers.append((b"connection", b"close"))
        return headers

    async def reply(self, status: int, body: bytes = b"", kind: bytes | None = None,
                    headers=()) -> None:
        """A whole answer; HEAD gets its headers and no body."""
        headers = self._headers(headers)
        if kind is not None:
            headers.append((b"content-type", kind))
        headers.append((b"content-length", b"%d" % len(body)))
        send = self.conn.send
        self.status = status
        out = send(response(status, headers))
        if body and self.method != b"HEAD":
            out += send(h11.Data(data=body))
        out += send(h11.EndOfMessage())
        await self.connection.send(out)

    async def reply_json(self, status: int, value, *, newline: bool = False) -> None:
        body = json.dumps(value).encode() + (b"\n" if newline else b"")
        await self.reply(status, body, b"application/json")

    async def error(self, status: int, message: str, headers=()) -> None:
        """Answer with an AGFS-style ``{"error": ...}`` body, if an answer can still start."""
        if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        if status == 401:
            headers = (*headers, (b"www-authenticate", b"Bearer"))
        try:
            await self.reply(status, json.dumps({"error": message}).encode(),
                             b"application/json", headers)
        except (h11.LocalProtocolError, *HANGUPS):
            pass

    async def send_stream(self, reader: Reader, headers) -> None:
        """Send what ``reader`` gives, chunked, until it ends or the client goes away.

        The client hanging up ends the response at once, not at the next
        chunk. A reader cut off by the ``disconnect`` policy ends the body
        without its last chunk, so the client sees it incomplete.
        """
        conn, sock = self.conn, self.sock
        self.status = 200
        await sock.send_all(conn.send(response(200, self._headers(headers))))
        if self.method == b"HEAD":
            await sock.send_all(conn.send(h11.EndOfMessage()))
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.watch_hangup, nursery.cancel_scope)
            try:
                while True:
                    # A read that finds nothing queued parks, a pass through trio's
                    # scheduler: the send after it need not make another.
                    parks = not reader.pending and not reader.ended
                    data = await reader.read_for_sending(READ_SIZE, SEND_GATHER)
                    if not data:
                        break
                    await self._send_data(data, checkpoint=not parks)
                    data = None  # not held while the next read waits
            except ReaderDisconnected:
                conn.send_failed()
            except HANGUPS:
                conn.send_failed()
                log.debug("an HTTP client went away during a stream")
            nursery.cancel_scope.cancel()
        if conn.our_state is h11.SEND_BODY:
            await sock.send_all(conn.send(h11.EndOfMessage()))

    async def watch_hangup(self, scope: trio.CancelScope) -> None:
        """Read while an answer waits or streams: the client closing cancels ``scope``.

        Pipelined requests are kept for later, up to :data:`MAX_HEAD` with
        what h11 already holds behind this request.
        """
        kept = len(self.conn.trailing_data[0])
        try:
            while data := await self.sock.receive_some(MAX_HEAD):
                if kept + len(data) <= MAX_HEAD:
                    kept += len(data)
                    self.conn.receive_data(data)  # a pipelined request, kept for later
                else:
                    self.close_after = True  # too much to keep: close after this answer
        except (*HANGUPS, OSError):
            pass
        else:
            log.debug("an HTTP client closed its connection during a stream")
        self.conn.send_failed()
        scope.cancel()

    async def _send_data(self, views: list[memoryview], checkpoint: bool = True) -> None:
        """One HTTP chunk of ``views``, with its header and trailer, in one writev.

        The first chunk is framed by h11. When it framed it as chunked
        transfer, later ones get the same header and trailer without it: a
        Data event changes no state of h11's, and its framing was 6% of the
        daemon's time sending 1 KiB every 1 ms to 16 readers.
        """
        if self._chunked:
            pieces = [b"%x\r\n" % sum(map(len, views)), *views, b"\r\n"]
        else:
            framed = self.conn.send_with_data_passthrough(h11.Data(data=Gathered(views)))
            pieces = [view for piece in framed for view in (
                piece.views if isinstance(piece, Gathered) else (piece,))]
            if self._chunked is None:
                self._chunked = len(framed) == 3 and framed[0] == b"%x\r\n" % len(
                    framed[1]) and framed[2] == b"\r\n"
        if isinstance(self.sock, trio.SocketStream):
            await send_vectored(self.sock, pieces, checkpoint=checkpoint)
        else:  # TLS, or a memory stream (tests)
            await send_in_pieces(self.sock, pieces)


class Gathered:
    """Several views sent as one HTTP chunk: h11 frames it by its length, and
    passes it through untouched for :func:`send_vectored` to send without joining."""

    __slots__ = ("views", "size")

    def __init__(self, views: list[memoryview]) -> None:
        self.views = views
        self.size = sum(map(len, views))

    def __len__(self) -> int:
        return self.size


async def send_in_pieces(sock: trio.abc.Stream, views: list) -> None:
    """Send ``views`` at most :data:`TLS_PIECE` bytes at a time.

    trio's SSLStream encrypts all it is given before it waits for the socket,
    so a client that stops reading would hold a copy of all of it.
    """
    for view in views:
        for start in range(0, len(view), TLS_PIECE):
            await sock.send_all(view[start:start + TLS_PIECE])


async def send_vectored(sock: trio.SocketStream, pieces: list, *, checkpoint: bool = True) -> None:
    """Send ``pieces`` (a chunk's header, its data, its trailer) without joining them.

    One writev(2) per portion the kernel takes, and one checkpoint per call
    rather than one per syscall: trio's send_all costs a scheduler pass for
    every partial send, and the kernel takes a 1 MiB chunk in about four.
    Without ``checkpoint``, a send the kernel takes at once passes through no
    scheduler (a short answer: the connection gives way when it next waits).
    """
    fd = sock.socket.fileno()
    views = [memoryview(piece) for piece in pieces]
    first = 0  # views before it are sent
    if checkpoint:
        await trio.lowlevel.checkpoint()
    while first < len(views):
        try:
            sent = os.writev(fd, views[first:] if first else views)
        except BlockingIOError:
            await trio.lowlevel.wait_writable(fd)
            continue
        except OSError as e:
            raise trio.BrokenResourceError(str(e)) from e
        while first < len(views) and sent >= len(views[first]):
            sent -= len(views[first])
            first += 1
        if sent:
            views[first] = views[first][sent:]


Routes = Callable[[Exchange], Awaitable[None]]


class Connection:
    """One client connection; the door may close it while it waits for a request.

    On a plain socket (not TLS, not a test's memory stream) what the client
    has already sent is read, and a short answer sent, with direct system
    calls: trio's stream methods pass through its scheduler on every call,
    even when the call did not wait, and a request that waits for nothing
    then costs three passes where one (waiting for the next request) is
    needed. A connection still gives way at least every
    :data:`BODY_RECEIVE` bytes it reads, and once per request.
    """

    __slots__ = ("sock", "peer", "idle_scope", "evicted", "fd", "unyielded")

    def __init__(self, sock: trio.abc.Stream, peer: Identity | None) -> None:
        self.sock = sock
        #: Who the peer is, when the socket says (a Unix socket's credentials).
        self.peer = peer
        #: The connection's cancel scope: its deadline is a request head's, only while
        #: one is awaited, and the door cancels it to close an idle connection.
        self.idle_scope = trio.CancelScope()
        self.evicted = False
        #: The descriptor for direct reads and sends, or None (TLS, memory streams).
        self.fd = sock.socket.fileno() if isinstance(sock, trio.SocketStream) else None
        #: Bytes read since the task last passed through trio's scheduler.
        self.unyielded = 0

    async def receive(self, size: int, timeout: float = math.inf) -> bytes | None:
        """Up to ``size`` bytes, b"" at the end; None when nothing came within ``timeout``."""
        if self.fd is None:
            with trio.move_on_after(timeout):
                return await self.sock.receive_some(size)
            return None
        if self.unyielded >= BODY_RECEIVE:
            self.unyielded = 0
            await trio.lowlevel.checkpoint()
        try:
            return self._read_now(size)
        except BlockingIOError:
            pass
        self.unyielded = 0
        if timeout == math.inf:
            return await self._read_when_ready(size)
        with trio.move_on_after(timeout):
            return await self._read_when_ready(size)
        return None

    def _read_now(self, size: int) -> bytes:
        try:
            data = os.read(self.fd, size)
        except BlockingIOError:
            raise
        except OSError as e:
            raise trio.BrokenResourceError(f"socket connection broken: {e}") from e
        self.unyielded += len(data)
        return data

    async def _read_when_ready(self, size: int) -> bytes:
        while True:
            await trio.lowlevel.wait_readable(self.fd)
            try:
                return self._read_now(size)
            except BlockingIOError:
                pass

    async def send(self, data: bytes) -> None:
        """Send ``data`` whole, waiting only if the socket is full."""
        if self.fd is None:
            await self.sock.send_all(data)
        else:
            await send_vectored(self.sock, [data], checkpoint=False)


class HTTPDoor:
    """Serves the routes over HTTP/1.1 on every address in ``settings``.

    ``token`` and ``token_owner`` come from ``--http-token``: a request that
    carries the token acts as the token file's owner. Without one, a request
    over TCP acts as nobody (only the "other" permission bits apply), and one
    over a Unix socket as its peer.
    """

    def __init__(self, routes: Routes, settings: HTTPSettings, *, token: bytes | None = None,
                 token_owner: Identity | None = None, max_connections: int | None = None,
                 anonymous: bool = True, tls: ssl.SSLContext | None = None,
                 budget: MemoryBudget | None = None) -> None:
        self.routes = routes
        #: The mount's memory cap, which counts every connection (none: uncapped).
        self.budget = budget or MemoryBudget()
        self.settings = settings
        #: With a context, TCP connections are served over TLS (HTTPS); Unix sockets never.
        self.tls = tls
        self._token = token
        self._token_owner = token_owner
        #: Whether a request without a token is served (as nobody) on TCP.
        self.anonymous = anonymous
        self.max_connections = max_connections or settings.max_connections \
            or default_max_connections()
        #: Responses and uploads under way: shutdown lets them finish.
        self.active = 0
        self.connections: set[Connection] = set()
        #: Connections waiting for a request, oldest first: the first to go at the cap.
        self._idle: dict[Connection, None] = {}
        self._refusing = 0
        #: Answers given, by status (for /metrics).
        self.responses: Counter[int] = Counter()

    # -- listening -----------------------------------------------------------

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = []
        for address in self.settings.addresses:
            if isinstance(address, str):
                listeners.append(await unix_listener(address))
            else:
                host, port = address
                listeners.extend(await trio.open_tcp_listeners(port, host=host))
        for listener in listeners:
            log.info("serving %s on %s", "HTTPS" if self.tls and listener.socket.family
                     != socket.AF_UNIX else "HTTP", listener.socket.getsockname() or "?")
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(self._accept, listener, nursery)
            task_status.started(listeners)

    async def _accept(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        unix = listener.socket.family == socket.AF_UNIX
        async with listener:
            while True:
                try:
                    sock = await listener.accept()
                except OSError as e:
                    if e.errno not in ACCEPT_RETRY_ERRNOS:
                        raise
                    failures.warning("HTTP accept failed: %s; trying again", e.strerror)
                    await trio.sleep(0.1)
                    continue
                if self.tls is not None and not unix:
                    # The handshake is made by the first receive: under the head's deadline.
                    sock = trio.SSLStream(sock, self.tls, server_side=True,
                                          https_compatible=True)
                self._admit(sock, unix, nursery)

    def _admit(self, sock: trio.SocketStream, unix: bool, nursery: trio.Nursery) -> None:
        if len(self.connections) >= self.max_connections or not self._fits():
            if self._idle:
                oldest = next(iter(self._idle))
                del self._idle[oldest]
                oldest.evicted = True
                oldest.idle_scope.cancel()
            else:
                nursery.start_soon(self._refuse, sock)
                return
        connection = self._open(sock, peer_identity(sock) if unix else None)
        nursery.start_soon(self._connection, connection)

    def _fits(self) -> bool:
        """Whether one more connection fits under the memory cap, after shedding history."""
        try:
            self.budget.check(CONNECTION_COST, "an HTTP connection")
        except OSError:
            return False
        return True

    def _open(self, sock: trio.abc.Stream, peer: Identity | None) -> Connection:
        connection = Connection(sock, peer)
        self.connections.add(connection)
        self.budget.count(CONNECTION_COST)
        return connection

    async def _refuse(self, sock: trio.SocketStream) -> None:
        """Past the cap with every connection busy: 503, at once, or a plain close."""
        self._refusing += 1
        try:
            if self._refusing <= MAX_REFUSING:
                with trio.move_on_after(1.0):
                    await sock.send_all(b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\n"
                                        b"connection: close\r\ncontent-length: 0\r\n\r\n")
                    self.responses[503] += 1
        except HANGUPS:
            pass
        finally:
            self._refusing -= 1
            await trio.aclose_forcefully(sock)

    # -- one connection ------------------------------------------------------

    async def connection(self, sock: trio.abc.Stream, peer: Identity | None = None) -> None:
        """Serve one connection (tests hand in a memory stream and who its peer is)."""
        await self._connection(self._open(sock, peer))

    async def _connection(self, connection: Connection) -> None:
        sock = connection.sock
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        try:
            with connection.idle_scope:
                while True:
                    event = await self._next_request(connection, conn)
                    if event is None or isinstance(event, h11.ConnectionClosed):
                        break
                    if not await self._exchange(connection, conn, event):
                        break
                    conn.start_next_cycle()
            if connection.evicted:
                log.debug("an idle HTTP connection was closed to make room for another")
        except h11.RemoteProtocolError as e:
            # The request could not be parsed: answer if we still can, then close.
            exchange = Exchange(conn, connection, h11.Request(method=b"GET", target=b"/",
                                headers=[(b"host", b"-")]), NOBODY, 0)
            exchange.close_after = True
            await exchange.error(e.error_status_hint, str(e))
            if exchange.status:
                self.responses[exchange.status] += 1
        except HANGUPS:
            log.debug("an HTTP client went away")
        except Exception as e:  # a bug must cost one connection, not the daemon
            failures.error("an HTTP request failed (answered 500)", exc_info=e)
        finally:
            self._idle.pop(connection, None)
            self.connections.discard(connection)
            self.budget.refund(CONNECTION_COST)
            await trio.aclose_forcefully(sock)

    async def _next_request(self, connection: Connection, conn: h11.Connection):
        """The next request head, or None when the client closed.

        The head must come within :data:`HEAD_TIMEOUT`, and the door may need
        the slot meanwhile: either cancels the connection's scope, which ends
        the connection (also when it happens after the head came but before
        this task ran again, so an exchange never starts cancelled).
        """
        event = conn.next_event()
        if event is not h11.NEED_DATA:  # pipelined: one scheduler pass per request still
            connection.unyielded = 0
            await trio.lowlevel.checkpoint()
            return event
        scope = connection.idle_scope
        scope.deadline = trio.current_time() + HEAD_TIMEOUT
        self._idle[connection] = None
        try:
            while event is h11.NEED_DATA:
                conn.receive_data(await connection.receive(MAX_HEAD))
                event = conn.next_event()
        finally:
            self._idle.pop(connection, None)
            scope.deadline = math.inf
        if scope.cancel_called:
            await trio.lowlevel.checkpoint()  # raises Cancelled: the scope ends the connection
        return event

    async def _exchange(self, connection: Connection, conn: h11.Connection,
                        request: h11.Request) -> bool:
        """Answer one request; whether the connection can serve another."""
        exchange = Exchange(conn, connection, request, NOBODY, self.settings.body_timeout)
        self.active += 1
        try:
            check_framing(exchange)
            exchange.identity = self._identity(exchange, connection.peer)
            await self.routes(exchange)
        except Refused as e:
            exchange.close_after |= e.close
            await exchange.error(e.status, str(e), e.headers)
        except OSError as e:
            if e.errno is None or isinstance(e, ConnectionError):
                raise
            await exchange.error(STATUS_BY_ERRNO.get(e.errno, 500),
                                 f"{e.strerror}: {request.target.decode(errors='replace')}")
        except h11.RemoteProtocolError as e:
            exchange.close_after = True
            await exchange.error(e.error_status_hint, str(e))
        finally:
            self.active -= 1
            if exchange.status:
                self.responses[exchange.status] += 1
            if log.isEnabledFor(logging.INFO):
                log.info("HTTP %s %s as uid %d: %s", request.method.decode(errors="replace"),
                         request.target.decode(errors="replace"), exchange.identity.uid,
                         exchange.status or "no answer")
        if conn.our_state is h11.MUST_CLOSE or exchange.close_after:
            return False
        return conn.our_state is h11.DONE and await exchange.drain()

    def _identity(self, exchange: Exchange, peer: Identity | None) -> Identity:
        """Who the request acts as: the token's owner, the Unix peer, or nobody."""
        given = exchange.header(b"authorization")
        if given is not None and self._token is not None:
            scheme, _, credentials = given.partition(b" ")
            if scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(),
                                                                   self._token):
                return self._token_owner
            raise Refused(401, "a valid bearer token is required")
        if peer is not None:
            return peer
        if not self.anonymous:
            raise Refused(401, "a valid bearer token is required")
        return NOBODY


def check_framing(exchange: Exchange) -> None:
    """Refuse what HTTP/1.1 forbids and proxies misread (request smuggling)."""
    if exchange.header(b"transfer-encoding") is not None and \
            exchange.header(b"content-length") is not None:
        raise Refused(400, "a request may not carry both Content-Length and "
                           "Transfer-Encoding", close=True)


def peer_identity(sock: trio.SocketStream) -> Identity:
    """The credentials of the process at the other end of a Unix socket."""
    pid, uid, gid = struct.unpack("3i", sock.socket.getsockopt(
        socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    try:
        return Identity.of_process(pid, uid, gid)
    except OSError:  # out of descriptors for /proc, say: the primary group still counts
        return Identity(uid, frozenset({gid}))


async def unix_listener(path: str) -> trio.SocketListener:
    """A Unix socket at ``path`` that anyone may connect to (mode 0666).

    Each request on it acts as the peer's own uid and groups, so the mode
    grants nothing by itself. A stale socket left by a killed daemon is replaced.
    """
    try:
        os.unlink(path)  # mount.py checked that nothing listens there
    except FileNotFoundError:
        pass
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(path)
    os.chmod(path, 0o666)
    sock.listen(512)
    return trio.SocketListener(sock)


def default_max_connections() -> int:
    """What the descriptor limit allows, less a reserve for everything else."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(8, soft - max(RESERVED_DESCRIPTORS, soft // 8))


def http_date(ns: int) -> bytes:
    return time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(ns / 1e9)).encode()
