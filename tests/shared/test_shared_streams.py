"""Mounts on several "hosts" sharing one tree through a real redis-server.

Each host is its own daemon process and mountpoint; they share nothing but
Redis, which the test setup starts on a free loopback port.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import os
import re
import secrets
import signal
import subprocess
import threading
import time

import pytest

from streamfs_fuse.testing import (DAEMON, REQUIRE_MOUNT, accepts, cli, free_port, stray_keys,
                                   wait_until, xattr)
from streamfs_fuse.testing.video import FPS, WRITER, Viewer, errors, frames
from test_redis_faults import remove_everything

# Enough history that late joiners get everything a test writes.
RING = "64MB"


@pytest.fixture
def hosts(mount_with, redis_server):
    """``hosts(n, *args)``: n mounts sharing a fresh namespace of ``redis_server``.

    Afterwards every stream is removed and every host unmounts, and the namespace
    must hold only the keys the README documents.
    """
    namespace = "t" + secrets.token_hex(4)
    numbers = itertools.count()
    mounts = []

    def start(n: int = 3, *args: str):
        started = [mount_with(f"--backend={redis_server.url}", f"--namespace={namespace}",
                              f"--ring-buffer-size={RING}", *args, name=f"host{next(numbers)}")
                   for _ in range(n)]
        mounts.extend(started)
        return started

    start.namespace = namespace
    yield start
    if redis_server.running():
        remove_everything(mounts)
        for mount in mounts:
            mount.close()
        assert stray_keys(redis_server.port, namespace) == []


def local_readers(path) -> int:
    return xattr(path, "local_readers")


def cat(host, name: str):
    """``cat HOST/NAME``, once the host has registered it as the stream's only reader."""
    reader = host.spawn(["cat", str(host / name)])
    wait_until(lambda: local_readers(host / name) == 1, what=f"the reader of {name}")
    return reader


def test_the_tree_is_the_same_on_every_host(hosts):
    a, b, c = hosts(3)

    def seen(predicate, what):
        # The host that made a change has it when the call returns; the others
        # as soon as Redis hands them the event.
        wait_until(predicate, what=f"{what}, on every host")

    (a / "cams").mkdir()
    seen(lambda: (b / "cams").is_dir(), "the mkdir")
    (b / "cams" / "front").touch()
    seen(lambda: os.listdir(c / "cams") == os.listdir(a / "cams") == ["front"], "the create")
    os.chmod(a / "cams" / "front", 0o600)
    seen(lambda: (c / "cams" / "front").stat().st_mode & 0o777 == 0o600, "the chmod")
    os.chown(b / "cams" / "front", 1234, 5678)
    seen(lambda: (a / "cams" / "front").stat()[4:6] == (1234, 5678), "the chown")
    os.rename(c / "cams" / "front", c / "cams" / "back")
    seen(lambda: os.listdir(a / "cams") == os.listdir(b / "cams") == ["back"], "the rename")
    # The same rules everywhere: a name taken on one host is taken on all.
    with pytest.raises(FileExistsError):
        os.mkdir(b / "cams")
    with pytest.raises(OSError) as raised:
        os.rmdir(a / "cams")
    assert raised.value.errno == errno.ENOTEMPTY
    (b / "cams" / "back").unlink()
    seen(lambda: os.listdir(c / "cams") == [], "the unlink")
    os.rmdir(c / "cams")
    seen(lambda: os.listdir(a.path) == os.listdir(b.path) == os.listdir(c.path) == [],
         "the rmdir")
    # A host that mounts later replays the tree.
    (a / "late").mkdir()
    (d,) = hosts(1)
    assert os.listdir(d.path) == ["late"]


def test_racing_creates_on_two_hosts_give_one_winner(hosts):
    a, b = hosts(2)
    results = {}

    def create(host, name):
        try:
            fd = os.open(host / "race", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            os.close(fd)
            results[name] = "created"
        except FileExistsError:
            results[name] = "exists"

    threads = [threading.Thread(target=create, args=(h, n)) for h, n in ((a, "a"), (b, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results.values()) == ["created", "exists"]


def test_writers_on_two_hosts_reach_readers_on_all_three_in_one_order(hosts):
    """Sequence-numbered lines from two writers for 30 s; early and late readers everywhere."""
    a, b, c = hosts(3)
    live = "live"
    (a / live).touch()
    early = [host.spawn(["cat", str(host / live)]) for host in (a, b, c)]
    for host in (a, b, c):
        wait_until(lambda: local_readers(host / live) == 1, what="an early reader per host")
    stop = time.monotonic() + 30
    counts = {}

    def write(host, tag):
        fd = os.open(host / live, os.O_WRONLY)
        n = 0
        try:
            while time.monotonic() < stop:
                os.write(fd, f"{tag} {n:08d}\n".encode())
                n += 1
                time.sleep(0.001)
        finally:
            os.close(fd)
            counts[tag] = n

    writers = [threading.Thread(target=write, args=(h, t)) for h, t in ((a, "A"), (b, "B"))]
    for w in writers:
        w.start()
    time.sleep(15)
    late = [host.spawn(["cat", str(host / live)]) for host in (a, b, c)]
    for w in writers:
        w.join()
    (b / live).unlink()  # every reader drains, then gets EOF
    outputs = [p.communicate(timeout=30)[0] for p in early + late]
    assert all(p.returncode == 0 for p in early + late)
    # One order: every reader saw the same bytes (the late ones all history, as the ring holds it).
    assert len(set(outputs)) == 1
    lines = outputs[0].decode().splitlines()
    for tag in "AB":
        numbers = [int(line.split()[1]) for line in lines if line.startswith(tag)]
        assert numbers == list(range(counts[tag])), f"writer {tag}: missing or reordered lines"
    assert len(lines) == sum(counts.values())
    print(f"\n{counts['A']} + {counts['B']} lines, same order on 6 readers of 3 hosts")


def test_late_joiners_meet_live_data_without_gap_or_duplicate(hosts):
    """A small ring: a late joiner's history is a suffix of the stream that runs on into live data."""
    a, b = hosts(2, "--ring-buffer-size=64KB")
    (a / "s").touch()
    fd = os.open(a / "s", os.O_WRONLY)
    n = 0
    joiners = []
    try:
        for round_ in range(20):
            for _ in range(500):
                os.write(fd, b"%08d\n" % n)
                n += 1
            joiners.append(b.spawn(["cat", str(b / "s")]))
            wait_until(lambda: local_readers(b / "s") == len(joiners), what="the joiner")
    finally:
        os.close(fd)
    (a / "s").unlink()
    for joiner in joiners:
        numbers = [int(x) for x in joiner.communicate(timeout=30)[0].split()]
        assert joiner.returncode == 0
        assert numbers == list(range(numbers[0], n)) and numbers[0] < n - 500


def test_rm_on_one_host_drains_then_ends_readers_and_writers_everywhere(hosts):
    a, b, c = hosts(3)
    (a / "s").touch()
    readers = [host.spawn(["cat", str(host / "s")]) for host in (a, b, c)]
    for host in (a, b, c):
        wait_until(lambda: local_readers(host / "s") == 1, what="the readers")
    fd = os.open(c / "s", os.O_WRONLY)
    payload = os.urandom(3 << 20)
    for i in range(0, len(payload), 65536):
        os.write(fd, payload[i:i + 65536])
    (b / "s").unlink()
    for reader in readers:
        out, _ = reader.communicate(timeout=30)
        assert reader.returncode == 0 and out == payload
    with pytest.raises(BrokenPipeError):
        os.write(fd, b"more")
    os.close(fd)
    assert not (a / "s").exists() and not (c / "s").exists()


def test_size_and_figures_are_totals_across_hosts(hosts):
    a, b, c = hosts(3)
    (a / "s").touch()
    reader = cat(b, "s")
    with open(a / "s", "wb", buffering=0) as f:
        f.write(b"x" * 1000)
    with open(c / "s", "wb", buffering=0) as f:
        f.write(b"y" * 500)
    # A host knows at once what it wrote or read; the totals follow a batch later.
    assert (c / "s").stat().st_size == 1500  # the offset its own write went to
    wait_until(lambda: (b / "s").stat().st_size == 1500, what="B's reader to get it all")
    wait_until(lambda: (a / "s").stat().st_size == 1500 and xattr(a / "s", "chunks_written") == 2,
               what="the totals on A")
    wait_until(lambda: xattr(a / "s", "readers") == 1, what="the total of readers")
    assert xattr(a / "s", "local_readers") == 0 and xattr(b / "s", "local_readers") == 1
    reader.kill()


def test_redis_unreachable_at_mount_time_is_a_one_line_error(tmp_path):
    path = tmp_path / "m"
    path.mkdir()
    result = subprocess.run(
        [*DAEMON, str(path),
         f"--backend=redis://127.0.0.1:{free_port()}/0", "--backend-timeout=2"],
        capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert re.fullmatch(r"streamfs-fuse: error: cannot reach Redis at redis://127\.0\.0\.1:\d+/0:"
                        r" .+\n", result.stderr), result.stderr
    assert not os.path.ismount(path)


def test_lost_connections_resume_from_the_last_entry(hosts, redis_server):
    a, b = hosts(2)
    (a / "s").touch()
    reader = cat(b, "s")
    with open(a / "s", "wb", buffering=0) as f:
        for round_ in range(5):
            for n in range(100):
                f.write(b"%d-%d\n" % (round_, n))
            # Redis drops every client connection; nothing in the ring is lost.
            assert int(cli(redis_server.port, "client", "kill", "type", "normal") or 0) > 0
    (a / "s").unlink()
    out, _ = reader.communicate(timeout=30)
    assert out.decode().split() == [f"{r}-{n}" for r in range(5) for n in range(100)]


def test_writes_fail_with_eio_while_redis_is_gone_and_readers_wait(hosts, redis_server):
    a, b = hosts(2, "--backend-timeout=1")
    (a / "s").touch()
    reader = cat(b, "s")
    fd = os.open(a / "s", os.O_WRONLY)
    os.write(fd, b"before\n")
    wait_until(lambda: (a / "s").stat().st_size == 7, what="the size")
    redis_server.stop()
    assert (a / "s").stat().st_size == 7  # the last totals, not EIO
    started = time.monotonic()
    with pytest.raises(OSError) as raised:
        os.write(fd, b"during\n")
    assert raised.value.errno == errno.EIO and time.monotonic() - started < 10
    os.close(fd)
    assert reader.poll() is None  # still waiting, not ended
    # Redis comes back empty: every stream ends, logged once per host.
    redis_server.start()
    out, _ = reader.communicate(timeout=30)
    assert reader.returncode == 0 and out == b"before\n"
    wait_until(lambda: os.listdir(a.path) == [], what="the emptied tree")
    assert b.log().count("lost the namespace") == 1


def test_redis_restarted_empty_ends_every_stream(hosts, redis_server):
    a, b = hosts(2)
    (a / "d").mkdir()
    for name in ("s1", "s2"):
        (a / "d" / name).touch()
    readers = [b.spawn(["cat", str(b / "d" / n)]) for n in ("s1", "s2")]
    for n in ("s1", "s2"):
        wait_until(lambda: local_readers(b / "d" / n) == 1, what="the readers")
    redis_server.restart()
    back = time.monotonic()
    for reader in readers:
        reader.communicate(timeout=30)
        assert reader.returncode == 0
    eof = time.monotonic() - back
    wait_until(lambda: os.listdir(b.path) == [] and os.listdir(a.path) == [],
               what="the emptied tree")
    emptied = time.monotonic() - back
    # Each host looks at the epoch every second, and its followers on reconnecting.
    assert eof < 3 and emptied < 3, (eof, emptied)
    print(f"\nafter Redis came back empty: readers' EOF in {eof:.2f} s, empty tree on both"
          f" hosts in {emptied:.2f} s")
    # And the namespace works again from scratch.
    (b / "again").touch()
    wait_until(lambda: os.listdir(a.path) == ["again"], what="A to see B's create")


def test_one_host_killed_leaves_the_others_streaming(hosts):
    a, b, c = hosts(3)
    (a / "s").touch()
    reader_a = a.spawn(["cat", str(a / "s")])
    reader_c = c.spawn(["cat", str(c / "s")])
    for host in (a, c):
        wait_until(lambda: local_readers(host / "s") == 1, what="the readers")
    a.stop(signal.SIGKILL)
    reader_a.kill()
    with open(b / "s", "wb", buffering=0) as f:
        f.write(b"after the kill\n")
    (b / "s").unlink()
    out, _ = reader_c.communicate(timeout=30)
    assert out == b"after the kill\n"


@pytest.fixture
def ffmpeg():
    import shutil
    if not shutil.which("ffmpeg"):
        if REQUIRE_MOUNT:
            pytest.fail("ffmpeg is missing but the video test is required here")
        pytest.skip("ffmpeg is not installed")


def test_video_written_on_one_host_decodes_on_two_others(ffmpeg, hosts):
    a, b, c = hosts(3)
    (a / "live.ts").touch()
    viewers = [Viewer(host, host / "live.ts") for host in (b, c)]
    for host in (b, c):
        wait_until(lambda: local_readers(host / "live.ts") == 1, what="the viewers")
    seconds = 4
    writer = a.spawn([*[w.replace("duration=10", f"duration={seconds}") for w in WRITER],
                      str(a / "live.ts")], text=True)
    _, log = writer.communicate(timeout=60)
    assert writer.returncode == 0, log
    assert frames(log) == seconds * FPS
    (c / "live.ts").unlink()
    for viewer in viewers:
        decoder_status, cat_status, stderr = viewer.finish()
        assert (decoder_status, cat_status) == (0, 0), stderr
        assert frames(stderr) == seconds * FPS and errors(stderr) == []


def test_http_on_one_host_serves_streams_written_on_another(hosts):
    port = free_port()
    a, b = hosts(2)
    (c,) = hosts(1, "--http", f"127.0.0.1:{port}")
    wait_until(lambda: accepts(port), what="the HTTP port")
    (a / "s").touch()
    os.chmod(a / "s", 0o666)  # anonymous HTTP requests act as nobody: the "other" bits
    curl = c.spawn(["curl", "-sS", "-N", f"http://127.0.0.1:{port}/s"])
    wait_until(lambda: local_readers(c / "s") == 1, what="the HTTP reader")
    with open(a / "s", "wb", buffering=0) as f:
        f.write(b"from A ")
    put = subprocess.run(["curl", "-sSf", "-X", "PUT", "--data-binary", "and HTTP",
                          f"http://127.0.0.1:{port}/s"], capture_output=True, timeout=30)
    assert put.returncode == 0, put.stderr
    (b / "s").unlink()
    out, err = curl.communicate(timeout=30)
    assert curl.returncode == 0 and out == b"from A and HTTP", err


def test_a_password_from_a_file_or_the_url_and_a_wrong_one_refused(
        tmp_path, mount_with, redis_server):
    assert cli(redis_server.port, "config", "set", "requirepass", "s3cret") == "OK"
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    a = mount_with(f"--backend={redis_server.url}", f"--backend-password-file={secret}",
                   name="a")
    url = redis_server.url.replace("redis://", "redis://:s3cret@")
    b = mount_with(f"--backend={url}", name="b")
    (a / "s").touch()
    wait_until(lambda: os.listdir(b.path) == ["s"], what="B to see A's create")
    path = tmp_path / "m"
    path.mkdir()
    wrong = redis_server.url.replace("redis://", "redis://:wrong@")
    result = subprocess.run([*DAEMON, str(path), f"--backend={wrong}"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and not os.path.ismount(path)
    assert result.stderr.startswith("streamfs-fuse: error: cannot reach Redis at redis://:***@")
    assert "wrong" not in result.stderr and len(result.stderr.splitlines()) == 1


def test_a_follower_goes_on_when_redis_loses_entries_it_had_read(hosts, redis_server):
    """As after a failover to a replica that had not got the newest entries."""
    a, b = hosts(2)
    (a / "s").touch()
    reader = cat(b, "s")
    with open(a / "s", "wb", buffering=0) as f:
        f.write(b"kept ")
        wait_until(lambda: xattr(b / "s", "local_ring_bytes") == 5, what="B to read it")
        inode = os.stat(a / "s").st_ino
        keys = cli(redis_server.port, "keys", f"*}}:{inode}*").split()
        assert len(keys) == 2 and cli(redis_server.port, "del", *keys) == "2"
        wait_until(lambda: "Redis lost the chunks after offset 0" in b.log(),
                   what="B to notice")
        f.write(b"then more")
    (a / "s").unlink()
    out, _ = reader.communicate(timeout=30)
    assert out == b"kept then more"


def test_the_tree_history_is_trimmed_behind_snapshots(hosts, redis_server):
    from streamfs_fuse.stores.redis.tree import SNAPSHOT_EVERY
    a, b = hosts(2)
    (a / "d").mkdir()
    (a / "d" / "s").touch()
    for i in range(2 * SNAPSHOT_EVERY + 100):
        os.chmod(a / "d", 0o700 + i % 64)
    events = int(cli(redis_server.port, "xlen", f"{{{hosts.namespace}}}:tree"))
    assert events < 2 * SNAPSHOT_EVERY + 100
    (late,) = hosts(1)  # starts from the snapshot
    assert os.listdir(late / "d") == ["s"]
    assert (late / "d").stat().st_mode & 0o777 == 0o700 + (2 * SNAPSHOT_EVERY + 99) % 64
    (b / "d" / "s").unlink()
    wait_until(lambda: os.listdir(late / "d") == [], what="the late host to see the unlink")


def test_foreign_entries_in_redis_are_ignored(hosts, redis_server):
    a, b = hosts(2)
    tree = f"{{{hosts.namespace}}}:tree"
    for fields in (["e", "not json"], ["x", "1"], ["e", '{"op": "create"}'],
                   ["e", '{"op": "explode", "parent": 1, "name": "x", "time": 0}']):
        assert cli(redis_server.port, "xadd", tree, "*", *fields)
    (a / "d").mkdir()
    wait_until(lambda: os.listdir(b.path) == ["d"], what="B to see A's mkdir")
    assert a.daemon.poll() is None and b.daemon.poll() is None


def test_rm_while_a_block_reader_is_full_still_drains_it_to_the_end(hosts):
    a, b = hosts(2, "--slow-reader=block", "--channel-buffer-size=64KB")
    (a / "s").touch()
    reader = cat(b, "s")
    reader.send_signal(signal.SIGSTOP)
    payload = os.urandom(2 << 20)
    with open(a / "s", "wb", buffering=0) as f:
        for i in range(0, len(payload), 65536):
            f.write(payload[i:i + 65536])
    wait_until(lambda: xattr(b / "s", "queued_bytes") >= 64 << 10, what="B's reader to fill")
    (a / "s").unlink()
    reader.send_signal(signal.SIGCONT)
    out, _ = reader.communicate(timeout=30)
    assert reader.returncode == 0 and out == payload


def test_a_host_that_leaves_takes_its_readers_and_writers_out_of_the_totals(hosts):
    a, b = hosts(2)
    (a / "s").touch()
    reader = b.spawn(["cat", str(b / "s")])
    writer = os.open(b / "s", os.O_WRONLY)
    try:
        wait_until(lambda: (xattr(a / "s", "readers"), xattr(a / "s", "writers")) == (1, 1),
                   what="B's reader and writer in the totals")
        assert b.stop() == 0  # SIGTERM: the reader gets EOF, the writer's file stays open
        wait_until(lambda: (xattr(a / "s", "readers"), xattr(a / "s", "writers")) == (0, 0),
                   what="B's figures taken back")
        assert reader.wait(10) == 0
    finally:
        with contextlib.suppress(OSError):
            os.close(writer)


def test_block_paces_a_writer_to_a_slow_reader_on_another_host(hosts):
    """Nothing is trimmed before the slow host has read it: the writer on A waits for B.

    B's reader is ``pv -L`` at 1 MiB/s; the log may run at most the ring (256 KiB)
    ahead of B's follower, so 4 MiB take A's writer over 2.5 s.
    """
    a, b = hosts(2, "--slow-reader=block", "--ring-buffer-size=256KB",
                 "--channel-buffer-size=64KB")
    (a / "s").touch()
    reader = b.spawn(["sh", "-c", f"pv -q -L 1m -B 64k '{b / 's'}' | sha256sum"], text=True)
    wait_until(lambda: local_readers(b / "s") == 1, what="B's pv reader")
    payload = os.urandom(4 << 20)
    written = threading.Event()

    def write():
        with open(a / "s", "wb", buffering=0) as f:
            for i in range(0, len(payload), 64 << 10):
                f.write(payload[i:i + (64 << 10)])
        written.set()

    started = time.monotonic()
    writer = threading.Thread(target=write)
    writer.start()
    try:
        wait_until(lambda: xattr(a / "s", "waiting_writes") == 1 or written.is_set(),
                   what="A's writer to wait for B")
        assert not written.is_set(), "the writer never waited for the slow host"
    finally:
        writer.join(60)
    elapsed = time.monotonic() - started
    assert xattr(b / "s", "dropped_chunks") == 0
    (a / "s").unlink()
    out, _ = reader.communicate(timeout=60)
    assert out.split()[0] == hashlib.sha256(payload).hexdigest(), "B's reader lost bytes"
    assert elapsed > 2.5, f"A wrote 4 MiB in {elapsed:.1f} s: not paced to B's 1 MiB/s"
    print(f"\n4 MiB to a 1 MiB/s reader on another host in {elapsed:.1f} s, none dropped")


def test_a_killed_host_stops_holding_block_writers_back(hosts):
    """B's reader never reads; once B's daemon is SIGKILLed, A's writer goes on after
    B's cursor lapses (2 x --backend-timeout + 1 s), and says so."""
    a, b = hosts(2, "--slow-reader=block", "--ring-buffer-size=64KB",
                 "--channel-buffer-size=64KB", "--backend-timeout=1")
    (a / "s").touch()
    stalled = cat(b, "s")
    stalled.send_signal(signal.SIGSTOP)
    written = threading.Event()

    def write():
        with open(a / "s", "wb", buffering=0) as f:
            for _ in range(32):
                f.write(bytes(64 << 10))
        written.set()

    writer = threading.Thread(target=write)
    writer.start()
    try:
        wait_until(lambda: xattr(a / "s", "waiting_writes") == 1 or written.is_set(),
                   what="A's writer to wait for B")
        assert not written.is_set(), "the writer never waited for the stalled host"
        killed = time.monotonic()
        b.stop(signal.SIGKILL)
        assert written.wait(30), "A's writer still waits for a killed host"
        waited = time.monotonic() - killed
    finally:
        writer.join(60)
    wait_until(lambda: "has not renewed its cursor" in a.log(), what="A to log B's lapse")
    assert 1.5 < waited < 10, waited
    print(f"\nA's writer went on {waited:.1f} s after B was killed")


def test_a_block_writer_waiting_for_another_host_can_be_interrupted(hosts):
    a, b = hosts(2, "--slow-reader=block", "--ring-buffer-size=64KB",
                 "--channel-buffer-size=64KB")
    (a / "s").touch()
    stalled = cat(b, "s")
    stalled.send_signal(signal.SIGSTOP)
    dd = a.spawn(["dd", "if=/dev/zero", f"of={a / 's'}", "bs=64k", "count=64"])
    wait_until(lambda: xattr(a / "s", "waiting_writes") == 1, what="A's writer to wait for B")
    dd.send_signal(signal.SIGTERM)
    assert dd.wait(5) == -signal.SIGTERM
    stalled.send_signal(signal.SIGCONT)
