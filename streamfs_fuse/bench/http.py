"""Sections http and http-stalled: curl readers of the HTTP door beside a server
sending from memory and Icecast 2, HTTP latency, and the daemon's RSS with stalled
and idle HTTP readers (issue 19)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import selectors
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from streamfs_fuse.testing import free_port, wait_until, xattr
from streamfs_fuse.testing.proc import PeakRSS, Processes, rss_kib

from .common import (MiB, Sizes, child, dd_bytes, mounted, percentiles, start, wait_listening,
                     wait_readers)
from .report import Report, mbs, verdict


@contextlib.contextmanager
def http_mounted(*args: str):
    """A fresh mount that also serves HTTP on a free port; yields (Mount, port)."""
    port = free_port()
    with mounted("--http", f"127.0.0.1:{port}", *args) as mount:
        wait_listening(port, mount.daemon)
        yield mount, port


@dataclass
class Listener:
    """``curl -s -N URL`` piped into a ``dd`` that counts (and, given a volume, stops)."""

    curl: subprocess.Popen
    sink: subprocess.Popen

    @classmethod
    def start(cls, owner, url: str, volume: int | None = None) -> Listener:
        read_end, write_end = os.pipe()
        with contextlib.suppress(OSError):
            fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, MiB)
        try:
            curl = start(owner, ["curl", "-s", "-N", "-w", "%{stderr}%{size_download}", url],
                         stdout=write_end, stderr=subprocess.PIPE, text=True)
            count = [f"count={volume // MiB}"] if volume is not None else []
            sink = start(owner, ["dd", "of=/dev/null", "bs=1M", "iflag=fullblock", *count],
                         stdin=read_end, stderr=subprocess.PIPE, text=True)
        finally:
            os.close(read_end)
            os.close(write_end)
        return cls(curl, sink)

    def received(self, timeout: float = 300) -> int:
        """Bytes the sink took, once it has ended (at EOF, or at its volume)."""
        return dd_bytes(self.sink.communicate(timeout=timeout)[1])

    def curl_size(self, timeout: float = 30) -> int:
        return int(self.curl.communicate(timeout=timeout)[1].strip() or -1)


def http_streamfs(sizes: Sizes, readers: int) -> float:
    """One dd writer through the mount, N curl readers over HTTP, block: delivered bytes/s."""
    volume = sizes.http_volume(readers)
    with http_mounted("--slow-reader=block") as (mount, port):
        live = mount / "live"
        live.touch()
        listeners = [Listener.start(mount, f"http://127.0.0.1:{port}/live")
                     for _ in range(readers)]
        wait_readers(live, readers)
        started = time.perf_counter()
        subprocess.run(["dd", "if=/dev/zero", f"of={live}", "bs=1M", f"count={volume // MiB}",
                        "status=none"], check=True)
        live.unlink()
        received = [listener.received() for listener in listeners]
        elapsed = time.perf_counter() - started
        assert received == [volume] * readers, f"an HTTP reader lost data: {received}"
        sizes_seen = [listener.curl_size() for listener in listeners]
        assert sizes_seen == [volume] * readers, f"curl counted otherwise: {sizes_seen}"
        return readers * volume / elapsed


def http_clients_ceiling(sizes: Sizes, readers: int) -> float:
    """The same curl readers fed by a server that sends from memory: what the clients can take.

    One thread per connection sends the volume as 1 MiB HTTP chunks from one
    prebuilt buffer (one copy per byte, into the socket), after every reader
    has connected. About what any server can deliver to these clients on this
    machine, so it bounds the ratio to Icecast that a run can show.
    """
    volume = sizes.http_volume(readers)
    frame = b"%x\r\n" % MiB + bytes(MiB) + b"\r\n"
    go, threads = threading.Event(), []
    connected = threading.Semaphore(0)

    def serve(conn: socket.socket) -> None:
        # A reader that goes away (the run failed) just ends its thread.
        with conn, contextlib.suppress(OSError):
            head = b""
            while b"\r\n\r\n" not in head:
                if not (data := conn.recv(4096)):
                    return
                head += data
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            connected.release()
            go.wait()
            for _ in range(volume // MiB):
                conn.sendall(frame)
            conn.sendall(b"0\r\n\r\n")

    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(30)
        url = f"http://127.0.0.1:{server.getsockname()[1]}/"
        try:
            with Processes() as processes:
                listeners = [Listener.start(processes, url) for _ in range(readers)]
                for _ in range(readers):
                    thread = threading.Thread(target=serve, args=(server.accept()[0],),
                                              daemon=True)
                    thread.start()
                    threads.append(thread)
                for _ in range(readers):
                    if not connected.acquire(timeout=30):
                        raise RuntimeError("a curl reader did not connect to the ceiling server")
                started = time.perf_counter()
                go.set()
                received = [listener.received() for listener in listeners]
                elapsed = time.perf_counter() - started
        finally:
            go.set()
            for thread in threads:
                thread.join(timeout=30)
    assert received == [volume] * readers, f"a reader of the ceiling server lost data: {received}"
    return readers * volume / elapsed


ICECAST_PASSWORD = "bench-source"
ICECAST_CONFIG = """<icecast>
  <location>streamfs-bench</location>
  <admin>bench@localhost</admin>
  <hostname>127.0.0.1</hostname>
  <limits>
    <clients>{clients}</clients>
    <sources>2</sources>
    <queue-size>{queue}</queue-size>
    <burst-on-connect>1</burst-on-connect>
    <burst-size>65536</burst-size>
    <client-timeout>60</client-timeout>
    <header-timeout>15</header-timeout>
    <source-timeout>120</source-timeout>
  </limits>
  <authentication>
    <source-password>{password}</source-password>
    <admin-user>admin</admin-user>
    <admin-password>{password}</admin-password>
  </authentication>
  <listen-socket><port>{port}</port><bind-address>127.0.0.1</bind-address></listen-socket>
  <mount type="normal">
    <mount-name>/bench</mount-name>
    <max-listeners>{clients}</max-listeners>
    <queue-size>{queue}</queue-size>
    <burst-size>65536</burst-size>
  </mount>
  <fileserve>1</fileserve>
  <paths>
    <basedir>{share}</basedir>
    <logdir>{tmp}</logdir>
    <webroot>{share}/web</webroot>
    <adminroot>{share}/admin</adminroot>
    <pidfile>{tmp}/icecast.pid</pidfile>
  </paths>
  <logging>
    <accesslog>access.log</accesslog>
    <errorlog>error.log</errorlog>
    <loglevel>3</loglevel>
  </logging>
  <security>
    <chroot>0</chroot>
    <changeowner><user>nobody</user><group>nogroup</group></changeowner>
  </security>
</icecast>
"""


def icecast_binary() -> str | None:
    return shutil.which("icecast2") or shutil.which("icecast")


def icecast_mount(port: int) -> dict | None:
    """The /bench source in Icecast's status page, or None while it is not there."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status-json.xsl",
                                    timeout=5) as page:
            sources = json.loads(page.read().decode(errors="replace"))["icestats"].get(
                "source", [])
    except (OSError, ValueError):  # not up yet, or a page half written
        return None
    for source in sources if isinstance(sources, list) else [sources]:
        if source.get("listenurl", "").endswith("/bench"):
            return source
    return None


def http_icecast(sizes: Sizes, readers: int) -> float:
    """Icecast 2: a curl source fed by dd, N curl listeners; the same volume each, bytes/s.

    The source connects first and sends nothing until every listener is
    counted on the status page, so the timed volume reaches all of them from
    its first byte; the queue is larger than everything the source sends, so
    no listener can be dropped for falling behind.
    """
    volume = sizes.http_volume(readers)
    processes, source_feed = Processes(), None
    with tempfile.TemporaryDirectory(prefix="streamfs-bench-icecast-") as tmp:
        os.chmod(tmp, 0o777)  # icecast drops to nobody before it opens its logs
        port = free_port()
        config = Path(tmp) / "icecast.xml"
        share = next((d for d in ("/usr/share/icecast2", "/usr/share/icecast")
                      if Path(d).is_dir()), "/usr/share/icecast2")
        config.write_text(ICECAST_CONFIG.format(
            clients=readers + 16, queue=volume + 64 * MiB, password=ICECAST_PASSWORD, port=port,
            share=share, tmp=tmp))
        try:
            with open(Path(tmp) / "icecast.out", "wb") as out:
                server = start(processes, [icecast_binary(), "-c", str(config)],
                               stdout=out, stderr=subprocess.STDOUT)
            wait_listening(port, server)
            read_end, source_feed = os.pipe()
            with contextlib.suppress(OSError):
                fcntl.fcntl(source_feed, fcntl.F_SETPIPE_SZ, MiB)
            try:
                # No chunked upload: Icecast 2.4 would pass the chunk framing on as data.
                start(processes, ["curl", "-s", "-T", "-", "-H", "Transfer-Encoding:",
                                  "-H", "Content-Type: audio/mpeg",
                                  f"http://source:{ICECAST_PASSWORD}@127.0.0.1:{port}/bench"],
                      stdin=read_end)
            finally:
                os.close(read_end)
            wait_until(lambda: icecast_mount(port), timeout=60, interval=0.05,
                       what="the Icecast source")
            listeners = [Listener.start(processes, f"http://127.0.0.1:{port}/bench", volume)
                         for _ in range(readers)]
            wait_until(lambda: int((icecast_mount(port) or {}).get("listeners", 0)) >= readers,
                       timeout=60, interval=0.05, what=f"{readers} Icecast listeners")
            started = time.perf_counter()
            # A little more than the volume: Icecast may hold back a last partial block.
            start(processes, ["dd", "if=/dev/zero", "bs=1M", f"count={volume // MiB + 2}"],
                  stdout=source_feed)
            received = [listener.received() for listener in listeners]
            elapsed = time.perf_counter() - started
            assert received == [volume] * readers, f"an Icecast listener lost data: {received}"
            return readers * volume / elapsed
        finally:
            processes.close()
            if source_feed is not None:
                os.close(source_feed)


def send_stamped(fd: int, seconds: float, interval: float = 0.001) -> int:
    """1 KiB messages every ``interval``: sequence number and CLOCK_MONOTONIC ns, padded."""
    sent = 0
    next_send = time.perf_counter()
    deadline = next_send + seconds
    while next_send < deadline:
        os.write(fd, b"%020d%020d" % (sent, time.monotonic_ns()) + b"x" * 984)
        sent += 1
        next_send += interval
        time.sleep(max(0.0, next_send - time.perf_counter()))
    return sent


def http_latency(sizes: Sizes, readers: int) -> dict[str, float]:
    """Write (through the mount) to arrival (over HTTP), 1 KiB every 1 ms, N socket readers."""
    with http_mounted("--slow-reader=block") as (mount, port):
        live = mount / "live"
        live.touch()
        procs = [start(mount, child("http_latency_reader", port, "/live"),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(readers)]
        for proc in procs:
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError(f"an HTTP latency reader failed: {proc.communicate()[1]}")
        wait_readers(live, readers)
        fd = os.open(live, os.O_WRONLY)
        try:
            sent = send_stamped(fd, sizes.http_latency_seconds)
        finally:
            os.close(fd)
        live.unlink()
        latencies: list[int] = []
        for proc in procs:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, f"an HTTP latency reader failed: {err.strip()}"
            got = [int(x) for x in out.split()]
            assert len(got) == sent, f"a reader got {len(got)} of {sent} messages"
            latencies += got
        return {**percentiles(latencies), "messages": sent, "readers": readers}


# -- HTTP readers that stop reading, and idle ones (issue 19) ----------------------

def stalled_get(port: int, path: str, rcvbuf: int | None = 4096) -> socket.socket:
    """A GET whose response head is read and whose body is not (by default, into a 4 KiB
    receive buffer)."""
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(30)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        data = sock.recv(1)  # the head alone: the body stays in the kernel
        if not data:
            raise RuntimeError(f"the connection closed before the response head: {head!r}")
        head += data
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"unexpected response: {head!r}")
    return sock


def lowest_rss_kib(pid: int, seconds: float) -> int:
    """The lowest RSS of ``pid`` over the next ``seconds``, sampled every 0.2 s."""
    lowest = rss_kib(pid)
    settle = time.monotonic() + seconds
    while time.monotonic() < settle:
        time.sleep(0.2)
        lowest = min(lowest, rss_kib(pid))
    return lowest


def http_stalled_burst(sizes: Sizes) -> dict[str, float]:
    """Daemon RSS before, during and after N stalled HTTP readers of a stream that first
    holds a 1 MB ring of 128 KiB writes and then receives the volume, under a 32 MB cap."""
    count = sizes.stalled_http_readers
    with http_mounted("--max-memory=32MB", "--ring-buffer-size=1MB",
                      "--channel-buffer-size=64MB") as (mount, port):
        pid, live = mount.daemon.pid, mount / "live"
        live.touch()
        write = ["dd", "if=/dev/zero", f"of={live}", "bs=128K", "status=none"]
        subprocess.run([*write, "count=8"], check=True)  # the history each reader is sent
        before = rss_kib(pid)
        socks: list[socket.socket] = []
        try:
            with PeakRSS(pid) as during:
                for _ in range(count):
                    socks.append(stalled_get(port, "/live"))
                wait_readers(live, count)
                started = time.perf_counter()
                subprocess.run([*write, f"count={sizes.stalled_http_bytes // (128 * 1024)}"],
                               check=True)
                writer_seconds = time.perf_counter() - started
                held = xattr(live, "held_bytes")
        finally:
            for sock in socks:
                sock.close()
        with contextlib.suppress(AssertionError):  # readers_left reports any that stay
            wait_until(lambda: not xattr(live, "readers"), timeout=60, interval=0.05)
        # The daemon hands freed heap back every few seconds (mount._trim_heap):
        # the lowest RSS over the next 5 s is what the burst left behind.
        after = lowest_rss_kib(pid, 5)
        return {"readers": count, "rss_before_mb": before / 1024,
                "rss_during_mb": during.peak_kib / 1024, "rss_after_mb": after / 1024,
                "growth_mb": (during.peak_kib - before) / 1024, "held_bytes_mb": held / MiB,
                "writer_mb_s": sizes.stalled_http_bytes / 1e6 / writer_seconds,
                "readers_left": xattr(live, "readers")}


def drain_until_parked(socks: list[socket.socket], live: Path, count: int) -> None:
    """Read every response until the daemon has ``count`` reads of ``live`` parked:
    each reader has been sent its history."""
    with selectors.DefaultSelector() as selector:
        for sock in socks:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        deadline = time.monotonic() + 120
        while xattr(live, "waiting_reads") < count:
            if time.monotonic() > deadline:
                raise RuntimeError("the HTTP readers were not all sent their history")
            for key, _ in selector.select(0.05):
                with contextlib.suppress(BlockingIOError):
                    if not key.fileobj.recv(1 << 20):
                        raise RuntimeError("an idle HTTP reader's response ended")


def http_idle_readers(sizes: Sizes) -> dict[str, float]:
    """Daemon RSS per HTTP reader once each has been sent a full 6 MB ring and waits."""
    count = sizes.idle_http_readers
    with http_mounted("--ring-buffer-size=6MB") as (mount, port):
        pid, live = mount.daemon.pid, mount / "live"
        live.touch()
        subprocess.run(["dd", "if=/dev/zero", f"of={live}", "bs=1M", "count=6", "status=none"],
                       check=True)
        before = rss_kib(pid)
        socks = [stalled_get(port, "/live", rcvbuf=None) for _ in range(count)]
        try:
            drain_until_parked(socks, live, count)
            after = rss_kib(pid)
        finally:
            for sock in socks:
                sock.close()
        return {"readers": count, "rss_before_mb": before / 1024, "rss_after_mb": after / 1024,
                "rss_kib_per_reader": (after - before) / count}


def http_section(report: Report, sizes: Sizes, args) -> None:
    icecast = sizes.icecast and icecast_binary() is not None
    if not sizes.icecast:
        print("  (--quick: Icecast skipped)", flush=True)
    elif not icecast:
        print("  (icecast2 is not installed, so Icecast is skipped:"
              " apt-get install icecast2)", flush=True)
    for readers in sizes.http_readers:
        label = f"HTTP to {readers} curl reader(s)"
        ours, ceiling, *theirs = report.compare(f"http_{readers}", [
            ("", http_streamfs, sizes, readers),
            ("_clients", http_clients_ceiling, sizes, readers),
            *([("_icecast", http_icecast, sizes, readers)] if icecast else []),
        ])
        result = report.results[f"http_{readers}"]
        result["bytes_per_reader"] = sizes.http_volume(readers)
        result["ratio_vs_clients_alone"] = ours / ceiling
        if not theirs:
            report.row(label, mbs(ours), f"clients alone {mbs(ceiling)}",
                       f"reported: {ours / ceiling:.2f}x the clients alone; Icecast skipped")
            continue
        ratio = ours / theirs[0]
        result["ratio_vs_icecast"] = ratio
        result["clients_alone_vs_icecast"] = ceiling / theirs[0]
        report.row(label, mbs(ours), f"Icecast {mbs(theirs[0])}",
                   verdict(ratio >= 10, f"{ratio:.2f}x Icecast (>= 10x); the clients"
                                        f" alone take {mbs(ceiling)} ="
                                        f" {ceiling / theirs[0]:.1f}x"))
    readers = sizes.http_latency_readers
    lat = report.measure(f"http_latency_{readers}", http_latency, sizes, readers)
    report.row(f"HTTP latency 1 KiB/1 ms, {readers} readers",
               f"p50 {lat['p50_ms']:.2f} p99 {lat['p99_ms']:.2f} ms", "",
               f"reported; max {lat['max_ms']:.1f} ms, none lost")


def http_stalled_section(report: Report, sizes: Sizes, args) -> None:
    burst = report.measure("http_stalled", http_stalled_burst, sizes)
    n, bound = burst["readers"], 32 + burst["readers"] * 64 / 1024
    report.row(f"RSS, {n} stalled HTTP readers, 32 MB cap",
               f"+{burst['growth_mb']:.1f} MB",
               f"{burst['rss_before_mb']:.0f} -> {burst['rss_during_mb']:.0f}"
               f" -> {burst['rss_after_mb']:.0f} MB; writer {burst['writer_mb_s']:.1f} MB/s",
               verdict(burst["growth_mb"] <= bound,
                       f"growth <= cap + 64 KiB each = {bound:.1f} MB"))
    idle = report.measure("http_idle_readers", http_idle_readers, sizes)
    report.row(f"RSS per idle HTTP reader after a 6 MB history, {idle['readers']}",
               f"{idle['rss_kib_per_reader']:.1f} KiB",
               f"{idle['rss_before_mb']:.0f} -> {idle['rss_after_mb']:.0f} MB",
               verdict(idle["rss_kib_per_reader"] <= 64,
                       "<= 64 KiB (AGFS: 27-34 KB, agfs-anchor)"))
