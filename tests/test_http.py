"""The HTTP door against a real daemon, with real clients: curl, ffmpeg, raw sockets.

Every test mounts with ``--http 127.0.0.1:PORT`` on a free port and waits
until the port accepts connections. Synchronisation is on the daemon's own
figures (the xattrs count HTTP readers as the core readers they are), never
on sleeps.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from functools import partial

import pytest

from conftest import (DAEMON, REQUIRE_MOUNT, accepts, free_port, require_fuse, wait_parked,
                      wait_until, xattr)
from streamfs_fuse.mount import is_mounted

# -- helpers ------------------------------------------------------------------

#: Waits are on state, generous so that a loaded machine does not fail them.
until = partial(wait_until, timeout=30.0)


def http_mount(mount_with, *args):
    """A mount serving HTTP on a free loopback port: (mount, port)."""
    port = free_port()
    mnt = mount_with("--http", f"127.0.0.1:{port}", *args)
    until(lambda: accepts(port) or mnt.daemon.poll() is not None, what="the HTTP port")
    assert mnt.daemon.poll() is None, mnt.log()
    return mnt, port


def call(port, method, path, body=None, headers=None, timeout=10):
    """One request with http.client: (status, headers as a lowercased dict, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        reply = conn.getresponse()
        data = reply.read()
        return reply.status, {k.lower(): v for k, v in reply.getheaders()}, data
    finally:
        conn.close()


def error_of(body: bytes) -> str:
    message = json.loads(body)["error"]
    assert isinstance(message, str) and message
    return message


def seq(count: int, start: int = 0) -> bytes:
    """``count`` 8-byte big-endian counters from ``start``."""
    return b"".join(i.to_bytes(8, "big") for i in range(start, start + count))


def dechunk(raw: bytes) -> tuple[bytes, bool]:
    """A chunked body's payload, and whether it ended with the zero-length chunk."""
    body, pos = [], 0
    while True:
        eol = raw.find(b"\r\n", pos)
        if eol < 0:
            return b"".join(body), False
        size = int(raw[pos:eol].split(b";")[0], 16)
        if size == 0:
            return b"".join(body), raw[eol + 2:eol + 4] == b"\r\n"
        start = eol + 2
        if len(raw) < start + size + 2:
            body.append(raw[start:start + size])
            return b"".join(body), False
        assert raw[start + size:start + size + 2] == b"\r\n", "bad chunk framing"
        body.append(raw[start:start + size])
        pos = start + size + 2


def read_head(sock) -> tuple[int, dict, bytes]:
    """Read a response head: (status, headers, bytes already read past it)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise AssertionError(f"connection closed before a response head: {buf!r}")
        buf += data
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, rest


def read_to_end(sock, initial=b"", timeout=20.0) -> tuple[bytes, bool]:
    """Read until EOF; (bytes, whether the connection was reset rather than closed)."""
    chunks = [initial]
    sock.settimeout(timeout)
    try:
        while data := sock.recv(1 << 20):
            chunks.append(data)
    except ConnectionResetError:
        return b"".join(chunks), True
    return b"".join(chunks), False


def open_get(port, path, rcvbuf=None, extra=b""):
    """A raw GET with Connection: close, its head read: (socket, status, headers, rest)."""
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                 + extra + b"\r\n")
    status, headers, rest = read_head(sock)
    return sock, status, headers, rest


def raw_exchange(port, request: bytes, shut=False, timeout=10.0) -> bytes:
    """Send bytes on a fresh connection and read what comes back until EOF."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        if shut:
            sock.shutdown(socket.SHUT_WR)
        data, _ = read_to_end(sock, timeout=timeout)
        return data


def curl(*args, **kwargs):
    return subprocess.run(["curl", "-sS", *args], capture_output=True, timeout=30, **kwargs)


def serving(port) -> bool:
    status, _, body = call(port, "GET", "/")
    return status == 200 and isinstance(json.loads(body), list)


@pytest.fixture
def tools():
    missing = [t for t in ("curl", "ffmpeg", "ffprobe") if not shutil.which(t)]
    if missing:
        if REQUIRE_MOUNT:
            pytest.fail(f"missing {missing} but the HTTP tests are required here")
        pytest.skip(f"{missing} not installed")


# -- 1. curl: upload, stream, end ---------------------------------------------


def test_curl_uploads_stream_history_then_live_and_rm_ends_readers(tools, mount_with, tmp_path):
    mnt, port = http_mount(mount_with)
    url = f"http://127.0.0.1:{port}"
    a = mnt / "a.txt"

    made = curl("-X", "PUT", "--data-binary", "hello ", "-w", "%{http_code}", "-o", "/dev/null",
                f"{url}/a.txt")
    assert made.returncode == 0 and made.stdout == b"201", made
    assert xattr(a, "bytes_written") == 6

    readers = [mnt.spawn(["curl", "-sSN", f"{url}/a.txt"]) for _ in range(2)]
    until(lambda: xattr(a, "readers") == 2, what="two curl readers")

    posted = curl("-X", "POST", "--data-binary", "world ", "-w", "%{http_code}",
                  "-o", "/dev/null", f"{url}/a.txt")
    assert posted.returncode == 0 and posted.stdout == b"200", posted
    chunked = curl("-T", "-", "-w", "%{http_code}", "-o", "/dev/null", "-v", f"{url}/a.txt",
                   input=b"chunked upload\n")
    assert chunked.returncode == 0 and chunked.stdout == b"200", chunked
    assert b"transfer-encoding: chunked" in chunked.stderr.lower()  # really a chunked upload

    until(lambda: xattr(a, "bytes_written") == 27, what="all uploads")
    a.unlink()  # rm through the mount
    for reader in readers:
        out, err = reader.communicate(timeout=10)
        assert reader.returncode == 0, err
        assert out == b"hello world chunked upload\n"

    # The same with DELETE over HTTP ending the reader.
    assert curl("-X", "PUT", "--data-binary", "one ", f"{url}/b.log").returncode == 0
    reader = mnt.spawn(["curl", "-sSN", f"{url}/b.log"])
    until(lambda: xattr(mnt / "b.log", "readers") == 1, what="the curl reader")
    assert curl("-X", "PUT", "--data-binary", "two", f"{url}/b.log").returncode == 0
    deleted = curl("-X", "DELETE", "-w", "%{http_code}", f"{url}/b.log")
    assert deleted.returncode == 0 and deleted.stdout == b"204", deleted
    out, err = reader.communicate(timeout=10)
    assert reader.returncode == 0, err
    assert out == b"one two"


def test_http_delete_is_seen_by_the_mount_at_once(mount_with):
    """After DELETE over HTTP the mount must not show the name, and it can be reused at once."""
    mnt, port = http_mount(mount_with)
    b = mnt / "b"
    assert call(port, "PUT", "/b", body=b"old")[0] == 201
    assert b.stat().st_size == 3  # the kernel now has b's entry cached
    assert call(port, "DELETE", "/b")[0] == 204
    assert "b" not in os.listdir(mnt.path)
    assert not b.exists(), "stat through the mount still finds the name DELETE removed"
    with open(b, "ab", buffering=0) as f:  # as `echo new >> b`: a new stream
        f.write(b"new")
    assert xattr(b, "bytes_written") == 3


def test_stream_removed_during_upload_is_410(mount_with):
    mnt, port = http_mount(mount_with)
    up = mnt / "up"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"PUT /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5\r\nfirst\r\n")
        until(lambda: up.exists() and xattr(up, "bytes_written") == 5, what="first chunk")
        up.unlink()
        sock.sendall(b"6\r\nsecond\r\n0\r\n\r\n")
        status, _, rest = read_head(sock)
    assert status == 410
    assert serving(port)


# -- 2. sequence-numbered data across the doors -------------------------------


def check_contiguous(data: bytes, last: int) -> int:
    """Data is whole counters, contiguous, ending with ``last``; return the first."""
    assert data and len(data) % 8 == 0, len(data)
    first = int.from_bytes(data[:8], "big")
    expected = seq(last + 1 - first, first)
    if data != expected:
        for i in range(0, min(len(data), len(expected)), 8):
            if data[i:i + 8] != expected[i:i + 8]:
                raise AssertionError(f"counter at byte {i} is {int.from_bytes(data[i:i+8], 'big')},"
                                     f" expected {first + i // 8} (got {len(data)} bytes)")
        raise AssertionError(f"got {len(data)} bytes, expected {len(expected)}")
    return first


def test_sequence_fuse_to_http_http_to_fuse_and_late_joiner(tools, mount_with, tmp_path):
    mnt, port = http_mount(mount_with, "--slow-reader=block", "--ring-buffer-size=1MB")
    url = f"http://127.0.0.1:{port}"
    count = 512 * 1024  # 4 MiB of counters
    data = seq(count)
    source = tmp_path / "seq.bin"
    source.write_bytes(data)

    # FUSE -> HTTP: dd writes through the mount, curl reads over HTTP.
    f2h = mnt / "f2h"
    f2h.touch()
    out = tmp_path / "f2h.out"
    reader = mnt.spawn(["curl", "-sSN", "-o", str(out), f"{url}/f2h"])
    until(lambda: xattr(f2h, "readers") == 1, what="the HTTP reader")
    writer = mnt.spawn(["dd", f"if={source}", f"of={f2h}", "bs=64K", "status=none"])
    assert writer.wait(30) == 0, writer.stderr.read()
    f2h.unlink()
    _, err = reader.communicate(timeout=20)
    assert reader.returncode == 0, err
    assert check_contiguous(out.read_bytes(), count - 1) == 0

    # HTTP -> FUSE: a chunked PUT from a raw socket, cat reads through the mount.
    h2f = mnt / "h2f"
    assert call(port, "PUT", "/h2f", body=b"")[0] == 201
    out = tmp_path / "h2f.out"
    with open(out, "wb") as sink:
        cat = mnt.spawn(["cat", str(h2f)], stdout=sink)
    wait_parked(h2f, 1)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"PUT /h2f HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(0, len(data), 100_000):  # pieces that cut counters apart
            piece = data[i:i + 100_000]
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        sock.sendall(b"0\r\n\r\n")
        status, _, rest = read_head(sock)
    assert status == 200
    until(lambda: xattr(h2f, "bytes_written") == len(data), what="the upload")
    h2f.unlink()
    assert cat.wait(20) == 0
    assert check_contiguous(out.read_bytes(), count - 1) == 0

    # Late HTTP joiner: the ring's history first, contiguous with live data.
    late = mnt / "late"
    late.touch()
    script = (
        "import sys\n"
        f"data = open({str(source)!r}, 'rb').read()\n"
        f"f = open({str(late)!r}, 'ab', buffering=0)\n"
        "half = len(data) // 2\n"
        "for i in range(0, half, 65536): f.write(data[i:i + 65536])\n"
        "print('ready', flush=True)\n"
        "sys.stdin.readline()\n"
        "for i in range(half, len(data), 65536): f.write(data[i:i + 65536])\n"
    )
    writer = mnt.spawn([sys.executable, "-c", script], stdin=subprocess.PIPE)
    assert writer.stdout.readline() == b"ready\n"
    out = tmp_path / "late.out"
    reader = mnt.spawn(["curl", "-sSN", "-o", str(out), f"{url}/late"])
    until(lambda: xattr(late, "readers") == 1, what="the late HTTP reader")
    writer.stdin.write(b"go\n")
    writer.stdin.flush()
    assert writer.wait(30) == 0, writer.stderr.read()
    late.unlink()
    _, err = reader.communicate(timeout=20)
    assert reader.returncode == 0, err
    got = out.read_bytes()
    first = check_contiguous(got, count - 1)
    assert 0 < first < count // 2, first  # joined with history, not from the start
    ring = count // 2 * 8 - first * 8  # history bytes it was given
    assert ring >= 15 * (1 << 20) // 16, ring


# -- 3. ffmpeg as an HTTP source and viewer -----------------------------------


def frames(stderr: str) -> int:
    counts = re.findall(r"frame=\s*(\d+)", stderr)
    assert counts, f"no frame count in ffmpeg's output: {stderr!r}"
    return int(counts[-1])


def test_ffmpeg_source_and_viewer_over_http(tools, mount_with, tmp_path):
    clip = tmp_path / "clip.ts"
    subprocess.run(
        ["ffmpeg", "-y", "-hide_banner", "-v", "error",
         "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25:duration=3",
         "-f", "lavfi", "-i", "sine=frequency=440:duration=3",
         "-c:v", "mpeg2video", "-b:v", "1M", "-c:a", "mp2", "-f", "mpegts", str(clip)],
        check=True, timeout=60)
    mnt, port = http_mount(mount_with)
    url = f"http://127.0.0.1:{port}/live.ts"
    live = mnt / "live.ts"

    assert call(port, "PUT", "/live.ts", body=b"")[0] == 201
    sock, status, headers, _ = open_get(port, "/live.ts")
    sock.close()
    assert status == 200 and headers["content-type"] == "video/mp2t"
    assert headers["transfer-encoding"] == "chunked"
    until(lambda: xattr(live, "readers") == 0, what="the probe GET to go")

    viewer = mnt.spawn(["ffmpeg", "-hide_banner", "-v", "error", "-stats", "-i", url,
                        "-f", "null", "-"], text=True)
    until(lambda: xattr(live, "readers") == 1, what="the ffmpeg viewer")
    source = mnt.spawn(["ffmpeg", "-hide_banner", "-v", "error", "-re", "-i", str(clip),
                        "-c", "copy", "-f", "mpegts", "-method", "PUT", url], text=True)
    until(lambda: xattr(live, "writers") == 1 and xattr(live, "bytes_written") > 0,
               what="the ffmpeg source's first bytes")
    # A clip shorter than ffprobe's default 5 s of analysis would leave it waiting for more.
    probe = subprocess.run(["ffprobe", "-v", "error", "-analyzeduration", "1M",
                            "-show_entries", "stream=codec_type", "-of", "default=nw=1:nk=1",
                            url], capture_output=True, text=True, timeout=20)
    assert source.poll() is None, "the source ended before ffprobe was done"
    assert probe.returncode == 0, probe.stderr
    assert set(probe.stdout.split()) == {"video", "audio"}, probe.stdout

    _, err = source.communicate(timeout=30)
    assert source.returncode == 0, err
    assert call(port, "DELETE", "/live.ts")[0] == 204
    _, err = viewer.communicate(timeout=30)
    assert viewer.returncode == 0, err
    assert frames(err) >= 70, err


# -- 4. 1,000 concurrent HTTP readers -----------------------------------------


def test_thousand_http_readers(mount_with):
    mnt, port = http_mount(mount_with)
    fan = mnt / "fan"
    fan.touch()
    socks = []
    try:
        request = b"GET /fan HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        for _ in range(1000):
            s = socket.create_connection(("127.0.0.1", port), timeout=20)
            s.sendall(request)
            socks.append(s)
        rests = []
        for s in socks:
            status, headers, rest = read_head(s)
            assert status == 200 and headers["transfer-encoding"] == "chunked"
            rests.append(rest)
        until(lambda: xattr(fan, "readers") == 1000, what="1000 HTTP readers")
        wait_parked(fan, 1000)

        ls = subprocess.run(["ls", "-l", str(mnt.path)], capture_output=True, text=True, timeout=5)
        assert ls.returncode == 0 and "fan" in ls.stdout
        assert os.stat(fan).st_size == 0

        message = b"one message for everyone\n"
        with open(fan, "ab", buffering=0) as f:
            f.write(message)
        bodies = []
        for s, rest in zip(socks, rests):
            raw = rest
            while dechunk(raw)[0] != message:
                data = s.recv(65536)
                assert data, f"closed early: {raw!r}"
                raw += data
            bodies.append(raw)

        fan.unlink()
        for s, raw in zip(socks, bodies):
            rest, _ = read_to_end(s, raw)
            body, complete = dechunk(rest)
            assert body == message and complete, rest
            assert rest.endswith(b"0\r\n\r\n")
    finally:
        for s in socks:
            s.close()


# -- 5. a client that goes away frees its reader ------------------------------


def test_disconnecting_client_frees_its_reader_at_once(mount_with):
    mnt, port = http_mount(mount_with)
    idle = mnt / "idle"
    idle.touch()
    sock, status, _, _ = open_get(port, "/idle")
    assert status == 200
    until(lambda: xattr(idle, "readers") == 1, what="the HTTP reader")
    sock.close()
    until(lambda: xattr(idle, "readers") == 0, timeout=2.0, what="the reader to be freed")
    assert xattr(idle, "waiting_reads") == 0


# -- 6. slow HTTP readers obey the mount's policy -----------------------------


def stalled_reader(port, path):
    sock, status, _, rest = open_get(port, path, rcvbuf=4096)
    assert status == 200
    return sock, rest


def test_slow_http_reader_drop(mount_with, tmp_path):
    mnt, port = http_mount(mount_with, "--slow-reader=drop", "--channel-buffer-size=256KB")
    s = mnt / "s"
    s.touch()
    sock, _ = stalled_reader(port, "/s")
    try:
        until(lambda: xattr(s, "readers") == 1, what="the stalled reader")
        writer = mnt.spawn(["dd", "if=/dev/zero", f"of={s}", "bs=1M", "count=50", "status=none"])
        assert writer.wait(30) == 0, writer.stderr.read()
        assert xattr(s, "bytes_written") == 50 << 20
        assert xattr(s, "dropped_chunks") > 0
        assert xattr(s, "readers") == 1
    finally:
        sock.close()


def test_slow_http_reader_disconnect(mount_with, tmp_path):
    mnt, port = http_mount(mount_with, "--slow-reader=disconnect", "--channel-buffer-size=256KB")
    s = mnt / "s"
    s.touch()
    sock, rest = stalled_reader(port, "/s")
    try:
        until(lambda: xattr(s, "readers") == 1, what="the stalled reader")
        writer = mnt.spawn(["dd", "if=/dev/zero", f"of={s}", "bs=1M", "count=50", "status=none"])
        assert writer.wait(30) == 0, writer.stderr.read()
        until(lambda: xattr(s, "disconnected_readers") == 1, what="the cut-off")
        raw, reset = read_to_end(sock, rest)  # drains what was sent, then EOF or reset
        body, complete = dechunk(raw)
        assert not complete, "a cut-off reader must not see a clean end"
        assert len(body) < 50 << 20
        until(lambda: xattr(s, "readers") == 0, what="the reader to be released")
        assert s.exists()
    finally:
        sock.close()


def test_slow_http_reader_block(mount_with, tmp_path):
    mnt, port = http_mount(mount_with, "--slow-reader=block", "--channel-buffer-size=256KB")
    count = 2 * 1024 * 1024  # 16 MiB of counters
    source = tmp_path / "seq.bin"
    source.write_bytes(seq(count))
    s = mnt / "s"
    s.touch()
    sock, rest = stalled_reader(port, "/s")
    try:
        until(lambda: xattr(s, "readers") == 1, what="the stalled reader")
        writer = mnt.spawn(["dd", f"if={source}", f"of={s}", "bs=1M", "status=none"])
        until(lambda: xattr(s, "waiting_writes") == 1, what="the writer to wait")
        assert writer.poll() is None
        assert xattr(s, "dropped_chunks") == 0

        result = {}
        drain = threading.Thread(target=lambda: result.update(raw=read_to_end(sock, rest, 30)))
        drain.start()
        assert writer.wait(30) == 0, writer.stderr.read()
        assert xattr(s, "dropped_chunks") == 0 and xattr(s, "disconnected_readers") == 0
        s.unlink()
        drain.join(30)
        raw, _ = result["raw"]
        body, complete = dechunk(raw)
        assert complete
        assert check_contiguous(body, count - 1) == 0
    finally:
        sock.close()


# -- 7. SIGTERM ends HTTP readers cleanly -------------------------------------


def test_sigterm_ends_http_readers_cleanly(tools, mount_with):
    mnt, port = http_mount(mount_with)
    assert call(port, "PUT", "/t", body=b"before ")[0] == 201
    readers = [mnt.spawn(["curl", "-sSN", f"http://127.0.0.1:{port}/t"]) for _ in range(2)]
    until(lambda: xattr(mnt / "t", "readers") == 2, what="the curl readers")
    assert call(port, "POST", "/t", body=b"after")[0] == 200
    wait_parked(mnt / "t", 2)
    assert mnt.stop() == 0, mnt.log()
    for reader in readers:
        out, err = reader.communicate(timeout=10)
        assert reader.returncode == 0, err
        assert out == b"before after"


# -- 8. bad input -------------------------------------------------------------


def test_bad_requests(tools, mount_with):
    mnt, port = http_mount(mount_with)
    url = f"http://127.0.0.1:{port}"

    # A slowloris: half a request line, then nothing.
    slow = socket.create_connection(("127.0.0.1", port), timeout=20)
    slow.sendall(b"GET /x HT")
    slow_since = time.monotonic()
    try:
        for path in ["/%2e%2e/x", "/a/%2E%2E/x", "/x%00y", "/" + "n" * 300,
                     "/" + "d/" * 2500 + "x", "/./x"]:
            status, _, body = call(port, "GET", path)
            assert status == 400, (path[:40], status, body)
            error_of(body)
        dotdot = curl("--path-as-is", "-w", "\n%{http_code}", f"{url}/../x")
        assert dotdot.stdout.endswith(b"\n400"), dotdot
        error_of(dotdot.stdout.rsplit(b"\n", 1)[0])

        status, _, body = call(port, "GET", "/missing")
        assert status == 404
        error_of(body)
        status, _, body = call(port, "GET", "/missing/deeper")
        assert status == 404

        (mnt / "dir").mkdir()
        (mnt / "dir" / "f").touch()
        status, _, body = call(port, "PUT", "/dir", body=b"x")
        assert status == 409
        error_of(body)
        status, _, body = call(port, "DELETE", "/dir")
        assert status == 409
        error_of(body)
        status, headers, body = call(port, "PATCH", "/dir/f", body=b"x")
        assert status == 405 and "GET" in headers["allow"]
        error_of(body)

        # Other requests are served while the slowloris hangs on.
        assert serving(port)
        assert time.monotonic() - slow_since < 10

        bad_chunk = raw_exchange(port, b"PUT /bad HTTP/1.1\r\nHost: t\r\n"
                                       b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n")
        assert bad_chunk.startswith(b"HTTP/1.1 400"), bad_chunk
        error_of(bad_chunk.split(b"\r\n\r\n", 1)[1])
        assert serving(port)

        short = raw_exchange(port, b"PUT /short HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n"
                                   b"\r\nonly a little", shut=True)
        assert short == b"" or short.startswith(b"HTTP/1.1 4"), short
        assert serving(port)
        assert xattr(mnt / "short", "writers") == 0  # the upload's writer was closed

        # The slowloris is cut off after HEAD_TIMEOUT (10 s).
        slow.settimeout(max(0.1, slow_since + 15 - time.monotonic()))
        try:
            leftover = slow.recv(65536)
        except ConnectionResetError:
            leftover = b""
        elapsed = time.monotonic() - slow_since
        assert leftover == b"" or leftover.startswith(b"HTTP/1.1 4"), leftover
        assert 8 < elapsed < 15, elapsed
        assert serving(port)
        assert "Traceback" not in mnt.log() and "failed" not in mnt.log(), mnt.log()
    finally:
        slow.close()


# -- 9. token and read-only ---------------------------------------------------


def test_bearer_token(mount_with, tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    mnt, port = http_mount(mount_with, "--http-token", str(token))
    status, headers, body = call(port, "GET", "/")
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    error_of(body)
    status, _, body = call(port, "GET", "/", headers={"Authorization": "Bearer wrong"})
    assert status == 401
    status, _, body = call(port, "PUT", "/x", body=b"no", headers={"Authorization": "s3cret-token"})
    assert status == 401
    assert not (mnt / "x").exists()
    good = {"Authorization": "Bearer s3cret-token"}
    assert call(port, "GET", "/", headers=good)[0] == 200
    assert call(port, "PUT", "/x", body=b"yes", headers=good)[0] == 201
    assert (mnt / "x").exists()


def test_read_only(mount_with):
    mnt, port = http_mount(mount_with, "--http-read-only")
    (mnt / "r").write_bytes(b"data")
    for method in ("PUT", "POST", "DELETE"):
        status, _, body = call(port, method, "/r", body=b"x" if method != "DELETE" else None)
        assert status == 403, method
        error_of(body)
    assert call(port, "PUT", "/new", body=b"x")[0] == 403
    assert not (mnt / "new").exists()
    assert xattr(mnt / "r", "bytes_written") == 4
    sock, status, _, _ = open_get(port, "/r")
    try:
        assert status == 200
        until(lambda: xattr(mnt / "r", "readers") == 1, what="the reader")
    finally:
        sock.close()
    assert call(port, "GET", "/")[0] == 200


def test_public_address_without_token_is_refused(tmp_path):
    require_fuse()
    path = tmp_path / "mnt"
    path.mkdir()
    try:
        run = subprocess.run([*DAEMON, str(path), "--http", f"0.0.0.0:{free_port()}"],
                             capture_output=True, text=True, timeout=20)
        assert run.returncode == 2, run
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and "--http-token" in lines[0], run.stderr
        assert not is_mounted(str(path))
    finally:
        if is_mounted(str(path)):
            subprocess.run(["fusermount3", "-u", "-z", str(path)], check=False)


# -- 10. listings and HEAD ----------------------------------------------------


def test_listing_and_head(mount_with):
    mnt, port = http_mount(mount_with)
    assert call(port, "PUT", "/s.txt", body=b"abc")[0] == 201
    (mnt / "d").mkdir()
    sock, _, _, _ = open_get(port, "/s.txt")
    try:
        until(lambda: xattr(mnt / "s.txt", "readers") == 1, what="the reader")
        status, headers, body = call(port, "GET", "/")
        assert status == 200 and headers["content-type"] == "application/json"
        entries = {e["name"]: e for e in json.loads(body)}
        assert set(entries) == {"s.txt", "d"}
        for entry in entries.values():
            assert {"name", "size", "mode", "mtime", "readers", "writers", "type"} <= set(entry)
        s = entries["s.txt"]
        st = os.stat(mnt / "s.txt")
        assert (s["type"], s["size"], s["readers"], s["writers"]) == ("file", 3, 1, 0)
        assert s["mode"] == st.st_mode
        assert abs(s["mtime"] - st.st_mtime) < 1
        assert entries["d"]["type"] == "directory"

        status, headers, body = call(port, "GET", "/", headers={"Accept": "text/html"})
        assert status == 200 and headers["content-type"].startswith("text/html")
        assert b'<a href="/s.txt">' in body and b'<a href="/d/">' in body
        assert json.loads(call(port, "GET", "/d")[2]) == []

        status, headers, body = call(port, "HEAD", "/s.txt")
        assert status == 200 and body == b""
        assert headers["x-streamfs-bytes-written"] == "3"
        assert headers["x-streamfs-readers"] == "1"
        assert headers["x-streamfs-writers"] == "0"
        assert "x-streamfs-slow-reader" in headers and "last-modified" in headers
        assert headers["content-type"].startswith("text/plain")
        status, headers, _ = call(port, "HEAD", "/d")
        assert status == 200 and headers["x-streamfs-type"] == "directory"
        assert call(port, "HEAD", "/nothing")[0] == 404
    finally:
        sock.close()
