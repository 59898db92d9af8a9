"""The HTTP door against a hostile local client (issue 19): it cannot end the daemon,
make it grow past its cap, tear what others upload, or fill the log.

Every test mounts a real daemon with ``--http`` on a free loopback port and
drives it with raw sockets, whose bytes and timing the test controls.
Synchronisation is on the daemon's figures (xattrs, the port, parked reads)
or on a socket's own state, never on a sleep; sleeps only pace what a client
sends.
"""

from __future__ import annotations

import json
import os
import random
import re
import socket
import struct
import sys
import threading
import time

from streamfs_fuse.testing import accepts, free_port, is_mounted, wait_parked, xattr
from test_http import call, dechunk, open_get, read_head, until

MiB = 1 << 20
KiB = 1 << 10

# -- helpers ------------------------------------------------------------------


def http_mount(mount_with, *args: str, wrapper: tuple[str, ...] = ()):
    """A mount serving HTTP on a free loopback port: (mount, port).

    Its root is writable by all, since anonymous requests act as nobody.
    """
    port = free_port()
    mnt = mount_with("--http", f"127.0.0.1:{port}", *args, wrapper=wrapper)
    until(lambda: accepts(port) or mnt.daemon.poll() is not None, what="the HTTP port")
    assert mnt.daemon.poll() is None, mnt.log()
    os.chmod(mnt.path, 0o777)
    return mnt, port


def daemon_kib(pid: int, field: str = "VmRSS") -> int:
    """A figure of the daemon's /proc/PID/status, in KiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


#: A log line at WARNING or above in the foreground format "DATE TIME LEVEL message".
LOUD_LINE = re.compile(r"^\S+ \S+ (WARNING|ERROR|CRITICAL) ", re.MULTILINE)


def assert_up(mnt) -> None:
    assert mnt.daemon.poll() is None, \
        f"the daemon exited with {mnt.daemon.returncode}:\n{mnt.log()[-4000:]}"
    assert is_mounted(str(mnt.path)), f"the mount is gone:\n{mnt.log()[-4000:]}"


def record(number: int, size: int) -> bytes:
    """A record of ``size`` bytes that says its number at both ends and in between."""
    edge = struct.pack(">Q", number)
    return edge + bytes([number % 251]) * (size - 16) + edge


def check_records(data: bytes, size: int) -> list[int]:
    """The numbers of the whole, intact records ``data`` consists of, which must increase."""
    assert len(data) % size == 0, f"{len(data)} bytes is not whole {size}-byte records"
    numbers = []
    for at in range(0, len(data), size):
        number = struct.unpack(">Q", data[at:at + 8])[0]
        assert data[at:at + size] == record(number, size), \
            f"the record at byte {at} (number {number}) is torn"
        assert not numbers or number > numbers[-1], f"record {number} after {numbers[-1]}"
        numbers.append(number)
    return numbers


class BodyCollector:
    """A raw GET whose chunked body a thread collects until the server ends it or ``stop()``."""

    def __init__(self, port: int, path: str) -> None:
        self.sock, status, headers, rest = open_get(port, path)
        assert status == 200 and headers["transfer-encoding"] == "chunked", (status, headers)
        self.raw = bytearray(rest)
        self.ended = threading.Event()
        self._stopping = False
        self.thread = threading.Thread(target=self._collect, daemon=True)
        self.thread.start()

    def _collect(self) -> None:
        self.sock.settimeout(0.2)
        try:
            while not self._stopping:
                try:
                    data = self.sock.recv(MiB)
                except TimeoutError:
                    continue
                if not data:
                    break
                self.raw += data
        except OSError:
            pass
        finally:
            self.ended.set()

    def body(self) -> bytes:
        return dechunk(bytes(self.raw))[0]

    def stop(self) -> None:
        self._stopping = True
        self.thread.join(5)
        self.sock.close()


class Response:
    """One response read off a socket that may carry several (pipelining)."""

    def __init__(self, status: int, headers: dict, body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body


class ResponseReader:
    """Reads responses to requests written ahead, as a pipelining client does."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _more(self) -> bool:
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        self.buf += data
        return bool(data)

    def next(self, head_only: bool = False) -> Response:
        while b"\r\n\r\n" not in self.buf:
            assert self._more(), f"the connection closed before a response: {self.buf!r}"
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        status = int(lines[0].split()[1])
        length = 0 if head_only or status in (204, 304) else int(headers.get("content-length", 0))
        while len(self.buf) < length:
            assert self._more(), "the connection closed inside a response body"
        body, self.buf = self.buf[:length], self.buf[length:]
        return Response(status, headers, body)

    def closed(self, timeout: float) -> bool:
        """Whether the server ends the connection within ``timeout`` (bytes left are kept)."""
        self.sock.settimeout(timeout)
        try:
            while self._more():
                pass
            return True
        except TimeoutError:
            return False


def exchange(port: int, request: bytes, timeout: float = 10.0):
    """Send ``request`` on a fresh connection: (its first response, whether the server then
    closed within 2 s)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        reader = ResponseReader(sock)
        answer = reader.next(head_only=request.startswith(b"HEAD "))
        return answer, reader.closed(2.0)


def announced(answer: Response, closed: bool) -> None:
    """A server that closes after a response says so in it (RFC 9112 9.6)."""
    if closed:
        assert answer.headers.get("connection", "").lower() == "close", \
            f"the server closed after a {answer.status} without Connection: close"


# -- 1. a descriptor flood -----------------------------------------------------

#: Opens COUNT connections to PORT over SPREAD seconds without sending a byte,
#: says "opened", holds them HOLD seconds, prints how many were established,
#: and closes them.
FLOOD = r"""
import socket, sys, time
port, count = int(sys.argv[1]), int(sys.argv[2])
spread, hold = float(sys.argv[3]), float(sys.argv[4])
socks = []
started = time.monotonic()
for i in range(count):
    s = socket.socket()
    s.setblocking(False)
    s.connect_ex(("127.0.0.1", port))
    socks.append(s)
    ahead = started + spread * (i + 1) / count - time.monotonic()
    if ahead > 0:
        time.sleep(ahead)
print("opened", flush=True)
time.sleep(hold)
established = 0
for s in socks:
    try:
        s.getpeername()
        established += 1
    except OSError:
        pass
for s in socks:
    s.close()
print(established, flush=True)
"""


def test_descriptor_flood_leaves_daemon_mount_and_readers_whole(mount_with):
    """3,000 idle connections against a daemon allowed 1,024 descriptors (issue 19, 1)."""
    mnt, port = http_mount(mount_with, wrapper=("prlimit", "--nofile=1024:1024"))
    with open(f"/proc/{mnt.daemon.pid}/limits") as limits:
        assert re.search(r"Max open files\s+1024\s+1024", limits.read())
    flood_path = mnt / "flood"
    flood_path.touch()
    reader = BodyCollector(port, "/flood")
    try:
        until(lambda: xattr(flood_path, "readers") == 1, what="the reader before the flood")
        flood = mnt.spawn(["prlimit", "--nofile=8192:8192", sys.executable, "-c", FLOOD,
                           str(port), "3000", "3", "5"], text=True)
        written, errors = [], []
        flood_over = threading.Event()

        def write_records():
            try:
                with open(flood_path, "ab", buffering=0) as f:
                    while not flood_over.is_set():
                        f.write(record(len(written), 64))
                        written.append(len(written))
                        time.sleep(0.01)
            except OSError as e:
                errors.append(e)

        writer = threading.Thread(target=write_records)
        writer.start()
        assert flood.stdout.readline() == "opened\n"
        # Past the cap a newcomer is served (an idle connection makes room), or gets a 503
        # that says when to come back; the door does not just hang up on it.
        during, _ = exchange(port, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert during.status in (200, 503), during.status
        if during.status == 503:
            assert during.headers.get("connection") == "close" and "retry-after" in during.headers
        try:
            out, err = flood.communicate(timeout=30)
        finally:
            flood_over.set()
            writer.join(10)
        assert_up(mnt)
        assert not errors, f"writes through the mount failed during the flood: {errors}"
        established = int(out.strip())
        assert established >= 2000, f"the flood itself failed: {established} connected, {err}"
        assert len(written) > 100, len(written)

        expected = b"".join(record(n, 64) for n in written)
        until(lambda: len(reader.body()) >= len(expected) or reader.ended.is_set(),
              what="the pre-flood reader to get every record")
        assert reader.body() == expected, \
            f"the pre-flood reader got {len(reader.body())} of {len(expected)} bytes"

        started = time.monotonic()
        status, _, body = call(port, "GET", "/", timeout=1)
        assert status == 200 and "flood" in {e["name"] for e in json.loads(body)}
        assert time.monotonic() - started < 1.0
        assert_up(mnt)
    finally:
        reader.stop()


# -- 2. stalled readers under the memory cap ------------------------------------

#: Beyond the cap and 64 KiB per stalled connection, what the daemon may grow by
#: while 64 MiB pass: the 1 MiB ring (not under --max-memory), the chunks the
#: stalled readers are part-way through (shared, a few at most: they stall in
#: their first send), pyfuse3's 1 MiB request buffers for the write and the read
#: in flight, glibc's 960 KiB heap top pad and freed chunks not yet reused:
#: about 8 MiB; as much again for the interpreter's own churn (300 tasks, their
#: sockets and h11 state are in the 64 KiB each).
RSS_SLACK = 16 * MiB
PIECE = 128 * KiB  # as cat writes


def piece(number: int) -> bytes:
    return struct.pack(">Q", number) * (PIECE // 8)


def test_stalled_readers_stay_under_the_memory_cap(mount_with, tmp_path):
    """300 readers that never read, joining a ring of small writes, while 64 MiB pass
    (issue 19, 2): the daemon grows by at most the cap and 64 KiB per reader."""
    cap, stalled_count = 32 * MiB, 300
    # A channel buffer above the cap, so that the cap is what bounds the stalled readers.
    mnt, port = http_mount(mount_with, "--max-memory=32MB", "--ring-buffer-size=1MB",
                           "--channel-buffer-size=64MB")
    s = mnt / "s"
    s.touch()
    out = tmp_path / "legit.out"
    legit = mnt.spawn(["dd", f"if={s}", f"of={out}", "bs=1M", "status=none"])
    wait_parked(s, 1)
    pid = mnt.daemon.pid
    stalled = []
    sampling = threading.Event()
    try:
        with open(s, "ab", buffering=0) as writer:
            pieces = 0

            def write_mib():
                """1 MiB as cat writes it, then wait for the legit reader: it keeps up."""
                nonlocal pieces
                for _ in range(MiB // PIECE):
                    writer.write(piece(pieces))
                    pieces += 1
                until(lambda: out.stat().st_size == pieces * PIECE,
                      what=f"the legit reader to get piece {pieces - 1}")

            write_mib()  # the ring's history: each stalled reader is sent it first
            before = daemon_kib(pid)
            peak = {"rss": before, "held": 0}

            def sample():
                while not sampling.is_set():
                    peak["rss"] = max(peak["rss"], daemon_kib(pid))
                    peak["held"] = max(peak["held"], xattr(s, "held_bytes"))
                    time.sleep(0.01)

            sampler = threading.Thread(target=sample)
            sampler.start()
            try:
                for _ in range(stalled_count):
                    sock, status, _, _ = open_get(port, "/s", rcvbuf=4096)
                    stalled.append(sock)
                    assert status == 200
                until(lambda: xattr(s, "readers") == stalled_count + 1, what="every reader")
                for _ in range(64):
                    write_mib()
            finally:
                sampling.set()
                sampler.join(10)
        growth = (peak["rss"] - before) * KiB
        bound = cap + stalled_count * 64 * KiB + RSS_SLACK
        assert growth <= bound, (f"RSS grew {growth / MiB:.1f} MiB with {stalled_count}"
                                 f" stalled readers (bound {bound / MiB:.1f} MiB)")
        readers = stalled_count + 1
        assert peak["held"] <= cap + readers * (MiB + 160), \
            f"held_bytes reached {peak['held']} over a cap of {cap}"
        assert_up(mnt)
        s.unlink()
        assert legit.wait(20) == 0
        got = out.read_bytes()
        assert len(got) == pieces * PIECE == 65 * MiB
        for n in range(pieces):
            assert got[n * PIECE:(n + 1) * PIECE] == piece(n), f"piece {n}"
    finally:
        sampling.set()
        for sock in stalled:
            sock.close()


# -- 3. malformed requests --------------------------------------------------------


def test_content_length_with_transfer_encoding_is_400_and_closed(mount_with):
    """Request smuggling (RFC 9112 6.1): 400, the connection closed, nothing written."""
    mnt, port = http_mount(mount_with)
    for name, headers in [("a", b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n"),
                          ("b", b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n")]:
        answer, closed = exchange(port, b"PUT /" + name.encode() + b" HTTP/1.1\r\nHost: t\r\n"
                                  + headers + b"\r\n5\r\nhello\r\n0\r\n\r\n")
        assert answer.status == 400, (name, answer.status, answer.body)
        assert closed, f"{name}: the connection stayed open after a smuggling attempt"
        assert not (mnt / name).exists()
        announced(answer, closed)
    assert_up(mnt)


def test_absurd_chunk_size_is_400_at_once(mount_with):
    mnt, port = http_mount(mount_with)
    for size in (b"ffffffffffffffff", b"f" * 40):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"PUT /big HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                         + size + b"\r\nsome data")
            sock.settimeout(2)  # at once: no waiting for 2**64 bytes
            status, headers, _ = read_head(sock)
        assert status == 400, (size, status)
    assert_up(mnt)


def test_malformed_chunked_head_creates_no_stream(mount_with):
    mnt, port = http_mount(mount_with)
    for name, head in [("zz", b"zz\r\nhello\r\n"), ("minus", b"-5\r\nhello\r\n")]:
        answer, closed = exchange(port, b"PUT /" + name.encode() + b" HTTP/1.1\r\nHost: t\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n" + head)
        assert answer.status == 400, (name, answer.status)
        assert not (mnt / name).exists(), f"a PUT with a malformed chunk head created {name}"
        assert call(port, "GET", "/" + name)[0] == 404
        announced(answer, closed)
    assert_up(mnt)


def test_bearer_scheme_is_case_insensitive(mount_with, tmp_path):
    """RFC 9110 11.1: any case of "Bearer" carries the token (and so its owner's rights)."""
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    token.chmod(0o600)
    mnt, port = http_mount(mount_with, "--http-token", str(token))
    os.chmod(mnt.path, 0o755)  # root's: only the token's owner may create here
    assert call(port, "PUT", "/anonymous", body=b"x")[0] in (401, 403)
    for scheme in ("Bearer", "bearer", "BEARER", "bEaReR"):
        status, _, body = call(port, "PUT", f"/{scheme}", body=b"x",
                               headers={"Authorization": f"{scheme} s3cret"})
        assert status == 201, (scheme, status, body)
    assert call(port, "GET", "/", headers={"Authorization": "bearer wrong"})[0] == 401
    assert call(port, "GET", "/", headers={"Authorization": "Basic s3cret"})[0] == 401


def test_pipelined_requests_after_head_and_errors_are_answered(mount_with):
    mnt, port = http_mount(mount_with)
    assert call(port, "PUT", "/s", body=b"abc")[0] == 201
    (mnt / "dir").mkdir()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"HEAD /s HTTP/1.1\r\nHost: t\r\n\r\n"
                     b"GET /missing HTTP/1.1\r\nHost: t\r\n\r\n"
                     b"GET /%2e%2e/x HTTP/1.1\r\nHost: t\r\n\r\n"
                     b"DELETE /dir/nothing HTTP/1.1\r\nHost: t\r\n\r\n"
                     b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        reader = ResponseReader(sock)
        statuses = [reader.next(head_only=True).status]
        statuses += [reader.next().status for _ in range(4)]
        assert statuses == [200, 404, 400, 404, 200]
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        last = reader.next()
        assert last.status == 200 and {e["name"] for e in json.loads(last.body)} == {"s", "dir"}
    # An error on a request with a body: the connection is kept (the body read) or its
    # close announced (exchange checks Connection: close).
    answer, closed = exchange(port, b"PUT /dir HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\nx")
    assert answer.status == 409
    announced(answer, closed)
    assert_up(mnt)


def test_absolute_form_targets_are_accepted(mount_with):
    mnt, port = http_mount(mount_with)
    assert call(port, "PUT", "/s", body=b"history")[0] == 201
    host = f"127.0.0.1:{port}".encode()
    answer, closed = exchange(port, b"GET http://" + host + b"/ HTTP/1.1\r\nHost: " + host
                              + b"\r\n\r\n")
    assert answer.status == 200 and [e["name"] for e in json.loads(answer.body)] == ["s"]
    assert not closed
    answer, _ = exchange(port, b"GET http://" + host + b"/api/v1/health HTTP/1.1\r\nHost: "
                         + host + b"\r\n\r\n")
    assert answer.status == 200
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET http://" + host + b"/s HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
        status, headers, raw = read_head(sock)
        assert status == 200 and headers["transfer-encoding"] == "chunked"
        while dechunk(raw)[0] != b"history":
            data = sock.recv(65536)
            assert data, raw
            raw += data
    assert_up(mnt)


def test_unimplemented_agfs_routes_are_501(mount_with):
    """What AGFS has and this door does not: 501, so AGFS's clients use the plain calls."""
    mnt, port = http_mount(mount_with)
    for method, target in [("POST", "/api/v1/symlink?path=/streamfs/s"),
                           ("GET", "/api/v1/readlink?path=/streamfs/s"),
                           ("GET", "/api/v1/plugins")]:
        status, _, body = call(port, method, target)
        assert status == 501, (method, target, status, body)
        assert json.loads(body)["error"]
    assert_up(mnt)


def test_an_upload_that_sends_nothing_is_ended_and_kept(mount_with):
    """--http-body-timeout: silence ends an upload; what arrived stays in the stream."""
    mnt, port = http_mount(mount_with, "--http-body-timeout", "1")
    up = mnt / "up"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"PUT /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        # Slow but never silent for a second: 2.4 s in all, the upload goes on.
        for n in range(6):
            sock.sendall(b"1\r\n%d\r\n" % n)
            time.sleep(0.4)
        until(lambda: up.exists() and xattr(up, "bytes_written") == 6, what="the slow chunks")
        assert xattr(up, "writers") == 1, "an upload that kept sending was ended"
        sock.sendall(b"5\r\nhello\r\n")
        until(lambda: xattr(up, "bytes_written") == 11, what="the last chunk")
        silent_since = time.monotonic()
        reader = ResponseReader(sock)
        assert reader.closed(10), "the silent upload was not ended"
        elapsed = time.monotonic() - silent_since
    assert 0.9 <= elapsed < 5, elapsed
    if reader.buf:
        assert reader.buf.startswith(b"HTTP/1.1 4"), reader.buf
    until(lambda: xattr(up, "writers") == 0, what="the upload's writer to close")
    fd = os.open(up, os.O_RDONLY)
    try:
        assert os.read(fd, 100) == b"012345hello"
    finally:
        os.close(fd)
    assert_up(mnt)


# -- 4. a client reset is not an error ------------------------------------------


def reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the peer gets RST, not FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_client_reset_during_streaming_get_is_not_logged_as_error(mount_with):
    mnt, port = http_mount(mount_with, "-vv")
    s = mnt / "s"
    with open(s, "ab", buffering=0) as writer:
        writer.write(b"history\n")
        # Parked: the reader waits for data when the reset comes.
        for _ in range(3):
            sock, status, _, _ = open_get(port, "/s")
            assert status == 200
            wait_parked(s, 1)
            reset(sock)
            until(lambda: xattr(s, "readers") == 0, what="the reset reader to go")
        # Mid-send: the daemon is blocked sending to a reader that stopped reading.
        for _ in range(3):
            sock, status, _, _ = open_get(port, "/s", rcvbuf=4096)
            assert status == 200
            until(lambda: xattr(s, "readers") == 1, what="the stalled reader")
            for _ in range(4):
                writer.write(bytes(256 * KiB))
            until(lambda: xattr(s, "waiting_reads") == 0, what="the daemon to be sending")
            reset(sock)
            until(lambda: xattr(s, "readers") == 0, what="the reset reader to go")
        # Right after the head, with the history still being sent.
        for _ in range(3):
            sock, status, _, _ = open_get(port, "/s")
            reset(sock)
        until(lambda: xattr(s, "readers") == 0, what="the reset readers to go")
    assert call(port, "GET", "/")[0] == 200
    assert_up(mnt)
    log = mnt.log()
    assert "serving HTTP" in log, "the log is not the daemon's -vv log"
    loud = LOUD_LINE.findall(log)
    assert not loud and "Traceback" not in log, f"a reset was logged as a problem:\n{log[-4000:]}"


# -- 5. an upload's chunks stay whole -------------------------------------------


def test_http_chunks_reach_a_dropping_reader_whole(mount_with):
    """One HTTP chunk is one stream chunk, so a dropping reader loses whole records only."""
    size, count = 8 * KiB, 800
    mnt, port = http_mount(mount_with, "--channel-buffer-size=64KB", "--ring-buffer-size=0")
    assert call(port, "PUT", "/rec", body=b"")[0] == 201
    rec = mnt / "rec"
    fd = os.open(rec, os.O_RDONLY)  # a reader that does not read yet: it will drop
    got = bytearray()
    try:
        until(lambda: xattr(rec, "readers") == 1, what="the reader")
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(b"PUT /rec HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
            framed = b"".join(b"%x\r\n%s\r\n" % (size, record(n, size)) for n in range(count))
            half = len(framed) // 2
            # Sends that cut records apart, so socket reads do not align with chunks.
            for at in range(0, half, 100_000):
                sock.sendall(framed[at:min(at + 100_000, half)])
            until(lambda: xattr(rec, "bytes_written") == count // 2 * size,
                  what="the first half")
            assert xattr(rec, "dropped_chunks") > 0, "the stalled reader did not drop"

            def drain():
                while data := os.read(fd, MiB):
                    got.extend(data)

            draining = threading.Thread(target=drain)
            draining.start()
            for at in range(half, len(framed), 100_000):
                sock.sendall(framed[at:min(at + 100_000, len(framed))])
            sock.sendall(b"0\r\n\r\n")
            status, _, _ = read_head(sock)
            assert status == 200
        assert xattr(rec, "chunks_written") == count, "HTTP chunks were not kept whole"
        rec.unlink()
        draining.join(20)
        assert not draining.is_alive()
    finally:
        os.close(fd)
    numbers = check_records(bytes(got), size)
    assert numbers and len(numbers) < count, len(numbers)
    assert numbers[-1] >= count // 2  # it read on once resumed
    assert_up(mnt)


def test_large_bodies_go_in_pieces_of_at_most_1_mib(mount_with):
    mnt, port = http_mount(mount_with)
    body = bytes(3 * MiB + 1)
    assert call(port, "PUT", "/cl", body=body)[0] == 201
    assert xattr(mnt / "cl", "chunks_written") >= 4
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"PUT /te HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
        assert read_head(sock)[0] == 201
    assert xattr(mnt / "te", "chunks_written") >= 4
    assert xattr(mnt / "te", "bytes_written") == len(body)


# -- 6. a bounded fuzz -------------------------------------------------------------

#: Valid requests the fuzz mutates. None touches /keep, where the legit stream is.
TEMPLATES = [
    b"GET / HTTP/1.1\r\nHost: t\r\n\r\n",
    b"GET /fz/a HTTP/1.1\r\nHost: t\r\n\r\n",
    b"HEAD /fz/a HTTP/1.1\r\nHost: t\r\n\r\n",
    b"PUT /fz/a HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /fz/b HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nabc",
    b"PUT /fz/c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n3;x=y\r\nabc\r\n0\r\nTrailer: v\r\n\r\n",
    b"PUT /fz/d HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok",
    b"DELETE /fz/b HTTP/1.1\r\nHost: t\r\n\r\n",
    b"GET /api/v1/files?path=/streamfs/fz/a&stream=true HTTP/1.1\r\nHost: t\r\n\r\n",
    b"GET /api/v1/stat?path=/streamfs/fz/a HTTP/1.1\r\nHost: t\r\n\r\n",
    b"PUT /api/v1/files?path=/streamfs/fz/e HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\ndata",
    b"POST /api/v1/directories?path=/streamfs/fz/sub HTTP/1.1\r\nHost: t\r\n"
    b"Content-Length: 0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: t\r\n\r\nHEAD /fz/a HTTP/1.1\r\nHost: t\r\n\r\n",
]
JUNK = [b"\r\n", b"\n", b"\0", b" ", b":", b"%", b"%2e%2e/", b"\xff", b"chunked", b"-1",
        b"ffffffffffffffff", b"Transfer-Encoding: chunked\r\n", b"Content-Length: 99\r\n",
        b"HTTP/1.0", b"http://t", b"?", b"&", b"=", b"9" * 30, b"\t"]


def mutate(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(len(data) + 1)
        kind = rng.randrange(6)
        if kind == 0 and data:  # flip a byte
            data[min(at, len(data) - 1)] = rng.randrange(256)
        elif kind == 1:
            data[at:at] = rng.choice(JUNK)
        elif kind == 2:  # delete a range
            del data[at:at + rng.randint(1, 12)]
        elif kind == 3:  # repeat a range
            data[at:at] = data[at:at + rng.randint(1, 40)] * rng.randint(2, 50)
        elif kind == 4:  # truncate
            del data[at:]
        else:
            data[at:at] = rng.randbytes(rng.randint(1, 64))
    return bytes(data)


#: Status lines that start a response anywhere in what came back.
STATUS_LINE = re.compile(rb"HTTP/1\.1 (\d{3}) ")


def fuzz_case(port: int, payload: bytes) -> str | None:
    """Send ``payload`` and end our side; a description of what was wrong, or None."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            try:
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                return None  # refused or reset mid-send: a close
            reply = b""
            try:
                while len(reply) < MiB and (data := sock.recv(65536)):
                    reply += data
            except TimeoutError:
                return f"neither answered nor closed within 10 s: got {reply[:200]!r}"
            except ConnectionResetError:
                pass
    except OSError as e:
        return f"could not connect: {e}"
    if not reply:
        return None
    if not reply.startswith(b"HTTP/1.1 "):
        return f"not an HTTP response: {reply[:200]!r}"
    for status in STATUS_LINE.findall(reply[:4096]):
        if int(status) // 100 not in (1, 2, 4, 5):
            return f"status {status.decode()}: {reply[:200]!r}"
    first = int(STATUS_LINE.match(reply).group(1))
    if first // 100 == 2 and not payload.startswith((b"GET ", b"HEAD ", b"PUT ", b"POST ",
                                                     b"DELETE ")):
        return f"{first} for a request that is not one: {reply[:200]!r}"
    return None


def test_fuzz_never_stops_the_door_or_costs_a_legit_reader(mount_with):
    mnt, port = http_mount(mount_with)
    (mnt / "keep").mkdir()
    (mnt / "fz").mkdir()
    legit = mnt / "keep" / "legit-stream"
    legit.touch()
    reader = BodyCollector(port, "/keep/legit-stream")
    problems: list[str] = []
    cases = [0]
    stop = threading.Event()

    def fuzz(seed: int):
        rng = random.Random(seed)
        while not stop.is_set():
            if rng.random() < 0.3:
                payload = rng.randbytes(rng.randint(1, 300))
            else:
                payload = mutate(rng, rng.choice(TEMPLATES))
            problem = fuzz_case(port, payload)
            cases[0] += 1
            if problem:
                problems.append(f"seed {seed}, payload {payload!r}: {problem}")

    try:
        until(lambda: xattr(legit, "readers") == 1, what="the legit reader")
        workers = [threading.Thread(target=fuzz, args=(1900 + n,)) for n in range(8)]
        for worker in workers:
            worker.start()
        written = 0
        deadline = time.monotonic() + 20
        try:
            with open(legit, "ab", buffering=0) as writer:
                while time.monotonic() < deadline and not problems:
                    writer.write(record(written, 64))
                    written += 1
                    time.sleep(0.005)
        finally:
            stop.set()
            for worker in workers:
                worker.join(30)
        assert not problems, f"{len(problems)} bad answers, first: {problems[:3]}"
        assert cases[0] > 200, cases[0]
        assert_up(mnt)
        expected = b"".join(record(n, 64) for n in range(written))
        until(lambda: len(reader.body()) >= len(expected) or reader.ended.is_set(),
              what="the legit reader to get every record")
        assert reader.body() == expected, \
            f"the legit reader got {len(reader.body())} of {len(expected)} bytes"
        assert "Traceback" not in mnt.log(), mnt.log()[-4000:]
    finally:
        stop.set()
        reader.stop()
