"""The HTTP door against a real daemon, with real clients: curl, ffmpeg, raw sockets.

Every test mounts with ``--http 127.0.0.1:PORT`` on a free port and waits
until the port accepts connections. The mounts serve with ``--http-token`` on
a token file that root owns, and the helpers send the token, so requests act
as root unless a test says otherwise (``token=None``: anonymous, as nobody).
Synchronisation is on the daemon's own figures (the xattrs count HTTP readers
as the core readers they are), never on sleeps.
"""

from __future__ import annotations

import http.client
import json
import os
import pwd
import re
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path

import pytest

from streamfs_fuse.testing import (AUTH, DAEMON, REQUIRE_MOUNT, TOKEN, accepts, as_user, free_port,
                                   is_mounted, wait_parked, wait_until, write_token, xattr)

# -- helpers ------------------------------------------------------------------

#: Waits are on state, generous so that a loaded machine does not fail them.
until = partial(wait_until, timeout=30.0)


#: The token (streamfs_fuse.testing.TOKEN) the mounts below serve with, as a line of a raw
#: request; a request carrying it acts as the token file's owner.
AUTH_LINE = AUTH.encode() + b"\r\n"


@pytest.fixture
def http_mount(mount_with, tmp_path):
    """Start a mount serving HTTP on a free loopback port: ``(mount, port)``.

    It serves with ``--http-token`` on a token file that ``token_owner`` (root)
    owns, so requests with :data:`TOKEN` act as root; ``token=False`` serves
    without one.
    """

    def start(*args, token=True, token_owner=0, host="127.0.0.1"):
        port = free_port()
        if token:
            args = ("--http-token", str(write_token(tmp_path, token_owner)), *args)
        mnt = mount_with("--http", f"{host}:{port}", *args)
        until(lambda: accepts(port) or mnt.daemon.poll() is not None, what="the HTTP port")
        assert mnt.daemon.poll() is None, mnt.log()
        return mnt, port

    return start


def call(port, method, path, body=None, headers=None, timeout=10, token=TOKEN):
    """One request with http.client: (status, headers as a lowercased dict, body).

    It carries ``token`` as a bearer token; ``token=None`` sends none (anonymous).
    """
    if token is not None:
        headers = {"Authorization": f"Bearer {token}", **(headers or {})}
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


def open_get(port, path, rcvbuf=None, extra=AUTH_LINE):
    """A raw GET with Connection: close, its head read: (socket, status, headers, rest).

    ``extra`` is header lines to send; by default the token's.
    """
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


def curl_command(*args, token=TOKEN) -> list[str]:
    """curl, quiet but for errors, carrying ``token`` unless it is None."""
    return ["curl", "-sS", *(["-H", f"Authorization: Bearer {token}"] if token else []), *args]


def curl(*args, token=TOKEN, **kwargs):
    return subprocess.run(curl_command(*args, token=token), capture_output=True, timeout=30,
                          **kwargs)


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


def test_curl_uploads_stream_history_then_live_and_rm_ends_readers(tools, http_mount, tmp_path):
    mnt, port = http_mount()
    url = f"http://127.0.0.1:{port}"
    a = mnt / "a.txt"

    made = curl("-X", "PUT", "--data-binary", "hello ", "-w", "%{http_code}", "-o", "/dev/null",
                f"{url}/a.txt")
    assert made.returncode == 0 and made.stdout == b"201", made
    assert xattr(a, "bytes_written") == 6

    readers = [mnt.spawn(curl_command("-N", f"{url}/a.txt")) for _ in range(2)]
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
    reader = mnt.spawn(curl_command("-N", f"{url}/b.log"))
    until(lambda: xattr(mnt / "b.log", "readers") == 1, what="the curl reader")
    assert curl("-X", "PUT", "--data-binary", "two", f"{url}/b.log").returncode == 0
    deleted = curl("-X", "DELETE", "-w", "%{http_code}", f"{url}/b.log")
    assert deleted.returncode == 0 and deleted.stdout == b"204", deleted
    out, err = reader.communicate(timeout=10)
    assert reader.returncode == 0, err
    assert out == b"one two"


def test_http_delete_is_seen_by_the_mount_at_once(http_mount):
    """After DELETE over HTTP the mount must not show the name, and it can be reused at once."""
    mnt, port = http_mount()
    b = mnt / "b"
    assert call(port, "PUT", "/b", body=b"old")[0] == 201
    assert b.stat().st_size == 3  # the kernel now has b's entry cached
    assert call(port, "DELETE", "/b")[0] == 204
    assert "b" not in os.listdir(mnt.path)
    assert not b.exists(), "stat through the mount still finds the name DELETE removed"
    with open(b, "ab", buffering=0) as f:  # as `echo new >> b`: a new stream
        f.write(b"new")
    assert xattr(b, "bytes_written") == 3


def test_stream_removed_during_upload_is_410(http_mount):
    mnt, port = http_mount()
    up = mnt / "up"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"PUT /up HTTP/1.1\r\nHost: t\r\n" + AUTH_LINE
                     + b"Transfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
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


def test_sequence_fuse_to_http_http_to_fuse_and_late_joiner(tools, http_mount, tmp_path):
    mnt, port = http_mount("--slow-reader=block", "--ring-buffer-size=1MB")
    url = f"http://127.0.0.1:{port}"
    count = 512 * 1024  # 4 MiB of counters
    data = seq(count)
    source = tmp_path / "seq.bin"
    source.write_bytes(data)

    # FUSE -> HTTP: dd writes through the mount, curl reads over HTTP.
    f2h = mnt / "f2h"
    f2h.touch()
    out = tmp_path / "f2h.out"
    reader = mnt.spawn(curl_command("-N", "-o", str(out), f"{url}/f2h"))
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
        sock.sendall(b"PUT /h2f HTTP/1.1\r\nHost: t\r\n" + AUTH_LINE
                     + b"Transfer-Encoding: chunked\r\n\r\n")
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
    reader = mnt.spawn(curl_command("-N", "-o", str(out), f"{url}/late"))
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


#: ffmpeg's and ffprobe's option that sends the token, before the URL it applies to.
FFMPEG_AUTH = ["-headers", f"{AUTH}\r\n"]


def frames(stderr: str) -> int:
    counts = re.findall(r"frame=\s*(\d+)", stderr)
    assert counts, f"no frame count in ffmpeg's output: {stderr!r}"
    return int(counts[-1])


def test_ffmpeg_source_and_viewer_over_http(tools, http_mount, tmp_path):
    clip = tmp_path / "clip.ts"
    subprocess.run(
        ["ffmpeg", "-y", "-hide_banner", "-v", "error",
         "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25:duration=3",
         "-f", "lavfi", "-i", "sine=frequency=440:duration=3",
         "-c:v", "mpeg2video", "-b:v", "1M", "-c:a", "mp2", "-f", "mpegts", str(clip)],
        check=True, timeout=60)
    mnt, port = http_mount()
    url = f"http://127.0.0.1:{port}/live.ts"
    live = mnt / "live.ts"

    assert call(port, "PUT", "/live.ts", body=b"")[0] == 201
    sock, status, headers, _ = open_get(port, "/live.ts")
    sock.close()
    assert status == 200 and headers["content-type"] == "video/mp2t"
    assert headers["transfer-encoding"] == "chunked"
    until(lambda: xattr(live, "readers") == 0, what="the probe GET to go")

    viewer = mnt.spawn(["ffmpeg", "-hide_banner", "-v", "error", "-stats", *FFMPEG_AUTH, "-i", url,
                        "-f", "null", "-"], text=True)
    until(lambda: xattr(live, "readers") == 1, what="the ffmpeg viewer")
    source = mnt.spawn(["ffmpeg", "-hide_banner", "-v", "error", "-re", "-i", str(clip),
                        "-c", "copy", "-f", "mpegts", "-method", "PUT", *FFMPEG_AUTH, url],
                       text=True)
    until(lambda: xattr(live, "writers") == 1 and xattr(live, "bytes_written") > 0,
               what="the ffmpeg source's first bytes")
    # A clip shorter than ffprobe's default 5 s of analysis would leave it waiting for more.
    probe = subprocess.run(["ffprobe", "-v", "error", "-analyzeduration", "1M", *FFMPEG_AUTH,
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


def test_thousand_http_readers(http_mount):
    mnt, port = http_mount()
    fan = mnt / "fan"
    fan.touch()
    socks = []
    try:
        request = b"GET /fan HTTP/1.1\r\nHost: t\r\nConnection: close\r\n" + AUTH_LINE + b"\r\n"
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


def test_disconnecting_client_frees_its_reader_at_once(http_mount):
    mnt, port = http_mount()
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


def test_slow_http_reader_drop(http_mount, tmp_path):
    mnt, port = http_mount("--slow-reader=drop", "--channel-buffer-size=256KB")
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


def test_slow_http_reader_disconnect(http_mount, tmp_path):
    mnt, port = http_mount("--slow-reader=disconnect", "--channel-buffer-size=256KB")
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


def test_slow_http_reader_block(http_mount, tmp_path):
    mnt, port = http_mount("--slow-reader=block", "--channel-buffer-size=256KB")
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


def test_sigterm_ends_http_readers_cleanly(tools, http_mount):
    mnt, port = http_mount()
    assert call(port, "PUT", "/t", body=b"before ")[0] == 201
    readers = [mnt.spawn(curl_command("-N", f"http://127.0.0.1:{port}/t")) for _ in range(2)]
    until(lambda: xattr(mnt / "t", "readers") == 2, what="the curl readers")
    assert call(port, "POST", "/t", body=b"after")[0] == 200
    wait_parked(mnt / "t", 2)
    assert mnt.stop() == 0, mnt.log()
    for reader in readers:
        out, err = reader.communicate(timeout=10)
        assert reader.returncode == 0, err
        assert out == b"before after"


# -- 8. bad input -------------------------------------------------------------


def test_bad_requests(tools, http_mount):
    mnt, port = http_mount()
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

        bad_chunk = raw_exchange(port, b"PUT /bad HTTP/1.1\r\nHost: t\r\n" + AUTH_LINE
                                 + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n")
        assert bad_chunk.startswith(b"HTTP/1.1 400"), bad_chunk
        error_of(bad_chunk.split(b"\r\n\r\n", 1)[1])
        assert serving(port)

        # A body cut short: the chunks that arrived whole are kept and the writer
        # is closed; of a Content-Length body, what arrived is kept.
        short = raw_exchange(port, b"PUT /short HTTP/1.1\r\nHost: t\r\n" + AUTH_LINE
                             + b"Transfer-Encoding: chunked\r\n\r\n5\r\nwhole\r\n3\r\nha",
                             shut=True)
        assert short == b"" or short.startswith(b"HTTP/1.1 4"), short
        assert serving(port)
        assert xattr(mnt / "short", "bytes_written") == 5
        assert xattr(mnt / "short", "writers") == 0
        short = raw_exchange(port, b"PUT /shorter HTTP/1.1\r\nHost: t\r\n" + AUTH_LINE
                             + b"Content-Length: 1000\r\n\r\nonly a little", shut=True)
        assert short == b"" or short.startswith(b"HTTP/1.1 4"), short
        assert serving(port)
        assert xattr(mnt / "shorter", "bytes_written") == len(b"only a little")
        assert xattr(mnt / "shorter", "writers") == 0

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


def status_of(result: subprocess.CompletedProcess) -> tuple[int, str]:
    """(status, body) from a curl run with ``-w '\\n%{http_code}'``."""
    assert result.returncode == 0, result
    body, _, code = result.stdout.rpartition("\n")
    return int(code), body


def test_bearer_token(http_mount):
    mnt, port = http_mount()
    private = mnt / "private"
    private.write_bytes(b"root only")
    private.chmod(0o600)

    # The token acts as the token file's owner, root; its scheme in any case.
    assert call(port, "PUT", "/x", body=b"yes")[0] == 201
    assert os.stat(mnt / "x").st_uid == 0
    assert call(port, "GET", "/", headers={"Authorization": f"bEaReR {TOKEN}"})[0] == 200

    # A wrong token, or one without its scheme, is refused outright.
    status, headers, body = call(port, "GET", "/", token="wrong")
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    error_of(body)
    status, _, body = call(port, "PUT", "/y", body=b"no", headers={"Authorization": TOKEN})
    assert status == 401
    assert not (mnt / "y").exists()

    # No token on loopback: nobody, whom only the "other" bits let in.
    assert call(port, "GET", "/", token=None)[0] == 200
    assert call(port, "PUT", "/y", body=b"no", token=None)[0] == 403
    assert call(port, "GET", "/private", token=None)[0] == 403
    assert not (mnt / "y").exists()


def test_anonymous_requests_get_the_other_bits(tools, http_mount):
    """Without a token, a loopback request acts as nobody: it reads what all may read, no more."""
    mnt, port = http_mount(token=False)
    url = f"http://127.0.0.1:{port}"
    public, private = mnt / "public.txt", mnt / "private"
    public.write_bytes(b"for everyone")
    public.chmod(0o644)
    private.write_bytes(b"root only")
    private.chmod(0o600)

    for method, path in [("PUT", "/public.txt"), ("POST", "/public.txt"), ("PUT", "/new"),
                         ("DELETE", "/public.txt"), ("DELETE", "/private"),
                         ("POST", "/api/v1/directories?path=/streamfs/dir")]:
        status, _, body = call(port, method, path, body=b"x" if method == "PUT" else None,
                               token=None)
        assert status == 403, (method, path, status)
        error_of(body)
    assert sorted(os.listdir(mnt.path)) == ["private", "public.txt"]
    assert xattr(public, "bytes_written") == 12 and xattr(private, "bytes_written") == 9

    status, body = status_of(curl("-w", "\n%{http_code}", f"{url}/private", token=None,
                                  text=True))
    assert status == 403 and "root only" not in body
    reader = mnt.spawn(curl_command("-N", f"{url}/public.txt", token=None))
    until(lambda: xattr(public, "readers") == 1, what="the anonymous reader")
    public.unlink()
    out, err = reader.communicate(timeout=10)
    assert reader.returncode == 0, err
    assert out == b"for everyone"


def test_anonymous_uploads_in_a_sticky_public_directory(http_mount):
    mnt, port = http_mount(token=False)
    drop = mnt / "drop"
    drop.mkdir()
    drop.chmod(0o1777)
    (drop / "roots").write_bytes(b"kept")

    assert call(port, "PUT", "/drop/upload", body=b"anonymous", token=None)[0] == 201
    made = os.stat(drop / "upload")
    nobody = pwd.getpwnam("nobody")
    assert (made.st_uid, made.st_gid) == (nobody.pw_uid, nobody.pw_gid)
    assert stat.S_IMODE(made.st_mode) == 0o644
    assert xattr(drop / "upload", "bytes_written") == 9

    # Sticky: nobody may remove what it made, not what root made there.
    assert call(port, "DELETE", "/drop/roots", token=None)[0] == 403
    assert call(port, "PUT", "/drop/roots", body=b"x", token=None)[0] == 403
    assert xattr(drop / "roots", "bytes_written") == 4
    assert call(port, "DELETE", "/drop/upload", token=None)[0] == 204
    assert os.listdir(drop) == ["roots"]


def test_off_loopback_every_tcp_request_needs_the_token(http_mount):
    mnt, port = http_mount(host="0.0.0.0")
    status, headers, body = call(port, "GET", "/", token=None)
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    error_of(body)
    assert call(port, "GET", "/")[0] == 200


def test_a_token_acts_as_its_files_owner(http_mount, unprivileged_user):
    user = pwd.getpwnam(unprivileged_user)
    mnt, port = http_mount(token_owner=user.pw_uid)
    home = mnt / "home"
    home.mkdir()
    os.chown(home, user.pw_uid, user.pw_gid)
    private = mnt / "private"
    private.write_bytes(b"root only")
    private.chmod(0o600)

    assert call(port, "PUT", "/home/theirs", body=b"mine")[0] == 201
    made = os.stat(home / "theirs")
    assert (made.st_uid, made.st_gid) == (user.pw_uid, user.pw_gid)
    # Not root: the user's rights, and no more.
    assert call(port, "PUT", "/elsewhere", body=b"x")[0] == 403
    assert call(port, "GET", "/private")[0] == 403
    assert call(port, "DELETE", "/private")[0] == 403
    assert sorted(os.listdir(mnt.path)) == ["home", "private"]


def unix_accepts(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(str(path))
            return True
        except OSError:
            return False


def test_unix_socket_requests_act_as_the_connecting_user(mount_with, world_readable_dir,
                                                         unprivileged_user):
    path = world_readable_dir / "http.sock"
    mnt = mount_with("--http", f"unix:{path}")
    until(lambda: unix_accepts(path) or mnt.daemon.poll() is not None, what="the Unix socket")
    assert mnt.daemon.poll() is None, mnt.log()
    mode = os.stat(path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o666

    user = pwd.getpwnam(unprivileged_user)
    home = mnt / "home"
    home.mkdir()
    os.chown(home, user.pw_uid, user.pw_gid)
    private = mnt / "private"
    private.write_bytes(b"root only")
    private.chmod(0o600)

    def curl_as_user(*args) -> tuple[int, str]:
        return status_of(as_user(unprivileged_user, "curl", "-sS", "--unix-socket", path,
                                 "-w", "\n%{http_code}", *args))

    assert curl_as_user("-X", "PUT", "--data-binary", "mine", "http://x/home/theirs")[0] == 201
    made = os.stat(home / "theirs")
    assert (made.st_uid, made.st_gid) == (user.pw_uid, user.pw_gid)
    assert curl_as_user("http://x/api/v1/files?path=/streamfs/home/theirs") == (200, "mine")

    status, body = curl_as_user("http://x/private")
    assert status == 403 and "root only" not in body
    assert curl_as_user("-X", "DELETE", "http://x/private")[0] == 403
    assert curl_as_user("-X", "PUT", "--data-binary", "x", "http://x/private")[0] == 403
    assert xattr(private, "bytes_written") == 9
    assert sorted(os.listdir(mnt.path)) == ["home", "private"]


def test_read_only(http_mount):
    mnt, port = http_mount("--http-read-only")
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


def refused_at_start(tmp_path, *args) -> str:
    """The one line of error a daemon started with ``args`` exits 2 with, mounting nothing."""
    path = tmp_path / "mnt"
    path.mkdir()
    try:
        run = subprocess.run([*DAEMON, str(path), *args], capture_output=True, text=True,
                             timeout=20)
        assert run.returncode == 2, run
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1, run.stderr
        assert not is_mounted(str(path))
        return lines[0]
    finally:
        if is_mounted(str(path)):
            subprocess.run(["fusermount3", "-u", "-z", str(path)], check=False)


def test_public_address_without_token_is_refused(tmp_path, fuse_device):
    assert "--http-token" in refused_at_start(tmp_path, "--http", f"0.0.0.0:{free_port()}")


def test_token_file_that_others_may_read_is_refused(tmp_path, fuse_device):
    token = write_token(tmp_path, mode=0o644)
    line = refused_at_start(tmp_path, "--http", f"127.0.0.1:{free_port()}",
                            "--http-token", str(token))
    assert f"chmod 600 {token}" in line


# -- 10. listings and HEAD ----------------------------------------------------


def test_listing_and_head(http_mount):
    mnt, port = http_mount()
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
