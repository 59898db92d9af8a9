"""What a call answers is what happened, through Redis stalls and restarts.

Two mounts ("hosts") share a real redis-server started with DEBUG enabled,
so that ``DEBUG SLEEP`` can stall it for longer than ``--backend-timeout``.
After each test every stream is removed, every host unmounts, and the
namespace must hold only the keys the README documents.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import socket
import subprocess
import threading
import time

import pytest

from streamfs_fuse.testing import RedisServer, cli, scan, stray_keys, wait_until, xattr

#: Seconds a write waits for Redis, and a stall longer than that (but shorter
#: than twice that, so that a write in the stall is settled before it answers).
TIMEOUT = 2
STALL = 3
#: A stall shorter than the timeout.
SHORT_STALL = 1.5


@pytest.fixture
def debug_redis(tmp_path):
    server = RedisServer(tmp_path / "redis", args=("--enable-debug-command", "local"))
    yield server
    server.stop()


@pytest.fixture
def aof_redis(tmp_path):
    """A redis-server that appends every write to its AOF (fsync each), restartable from it."""
    server = RedisServer(tmp_path / "redis-aof",
                         args=("--appendonly", "yes", "--appendfsync", "always"))
    yield server
    server.stop()


def sharing(mount_with, server):
    """``hosts(n)``: n mounts sharing a fresh namespace of ``server``, checked for stray
    keys afterwards."""
    namespace = "f" + secrets.token_hex(4)
    mounts = []

    def start(n: int = 2, *args: str):
        started = [mount_with(f"--backend={server.url}", f"--namespace={namespace}",
                              f"--backend-timeout={TIMEOUT}", "--ring-buffer-size=64MB", *args,
                              name=f"host{len(mounts) + i}") for i in range(n)]
        mounts.extend(started)
        return started

    start.namespace = namespace
    yield start
    remove_everything(mounts)
    for mount in mounts:
        mount.close()
    assert stray_keys(server.port, namespace) == []


@pytest.fixture
def hosts(mount_with, debug_redis):
    yield from sharing(mount_with, debug_redis)


@pytest.fixture
def aof_hosts(mount_with, aof_redis):
    yield from sharing(mount_with, aof_redis)


def remove_everything(mounts) -> None:
    live = [m for m in mounts if m.daemon.poll() is None]
    if not live:
        return
    for name in os.listdir(live[0].path):
        path = live[0] / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    for mount in live:
        wait_until(lambda: os.listdir(mount.path) == [], what="the removals on every host")


def answers(port: int) -> bool:
    """Whether Redis answers PING within 0.3 s (it does not while DEBUG SLEEP runs)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.3) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16) == b"+PONG\r\n"
    except OSError:
        return False


def stall(server, seconds: float) -> subprocess.Popen:
    """``DEBUG SLEEP``: Redis stops answering anyone; returns once it has stopped."""
    sleeper = subprocess.Popen(["redis-cli", "-p", str(server.port), "debug", "sleep",
                                str(seconds)], stdout=subprocess.DEVNULL)
    wait_until(lambda: not answers(server.port), what="Redis to stall")
    return sleeper


def hold_writes(server, how: str):
    """Make Redis hold every write for STALL seconds (``sleep``: DEBUG SLEEP, everything;
    ``pause``: CLIENT PAUSE WRITE, which takes writes in and runs them after). Returns a
    function that waits for the end."""
    if how == "sleep":
        sleeper = stall(server, STALL)
        return lambda: sleeper.wait(30)
    assert cli(server.port, "client", "pause", STALL * 1000, "write") == "OK"
    return lambda: cli(server.port, "set", "pause-probe", 1)  # waits for the pause


def readers(hosts_, name: str):
    processes = [host.spawn(["cat", str(host / name)]) for host in hosts_]
    for host in hosts_:
        wait_until(lambda: xattr(host / name, "local_readers") == 1, what="the readers")
    return processes


def write_until_it_succeeds(fd: int, record: bytes) -> list[int]:
    """Write ``record`` as an application does: again after each error. The errnos seen."""
    failures = []
    while True:
        try:
            assert os.write(fd, record) == len(record)
            return failures
        except OSError as e:
            failures.append(e.errno)


def test_a_write_that_times_out_in_a_stall_reaches_every_reader_once(hosts, debug_redis):
    a, b = hosts(2)
    (a / "s").touch()
    cats = readers((a, b), "s")
    fd = os.open(a / "s", os.O_WRONLY)
    outcomes = []
    try:
        for n in range(5):
            os.write(fd, b"%04d\n" % n)
        for round_ in range(2):
            sleeper = stall(debug_redis, STALL)
            started = time.monotonic()
            outcomes.append(write_until_it_succeeds(fd, b"%04d\n" % (5 + round_)))
            # The write waited out the timeout, then Redis settled it.
            assert time.monotonic() - started > TIMEOUT
            sleeper.wait(30)
        for n in range(7, 10):
            os.write(fd, b"%04d\n" % n)
    finally:
        os.close(fd)
    assert all(failures in ([], [errno.EIO]) for failures in outcomes), outcomes
    (b / "s").unlink()
    expected = b"".join(b"%04d\n" % n for n in range(10))
    for cat in cats:
        out, _ = cat.communicate(timeout=30)
        assert cat.returncode == 0 and out == expected
    log = a.log()
    print(f"\nstalled writes: {outcomes}; "
          f"{log.count('applied the write late')} settled as applied")


@pytest.mark.parametrize("how", ["sleep", "pause"])
def test_tree_changes_that_fail_in_a_stall_leave_nothing_behind(hosts, debug_redis, how):
    a, b = hosts(2)
    held = hold_writes(debug_redis, how)
    changes = {name: b.spawn(command + [str(b / name)], text=True)
               for name, command in (("newfile", ["touch"]), ("newdir", ["mkdir"]))}
    results = {name: p.communicate(timeout=30) for name, p in changes.items()}
    held()
    # Every change after the stall is ordered after anything the stall held:
    # once A has this one, it has whatever the stall let through.
    (b / "after").mkdir()
    wait_until(lambda: (a / "after").is_dir(), what="A to see the change after the stall")
    for name, process in changes.items():
        if process.returncode == 0:
            assert (a / name).exists() and (b / name).exists()
        else:
            assert "Input/output error" in results[name][1]
            assert not (a / name).exists() and not (b / name).exists()
    print(f"\n{ {name: p.returncode for name, p in changes.items()} }")


def test_a_write_across_a_restart_empty_is_delivered_or_fails(hosts, debug_redis):
    """A record every 40 ms while Redis is killed and restarted empty on its port."""
    a, b = hosts(2)
    (a / "s").touch()
    inode = os.stat(a / "s").st_ino
    cats = readers((a, b), "s")
    succeeded, failed = [], []

    def write():
        fd = os.open(a / "s", os.O_WRONLY)
        try:
            for n in range(10_000):
                try:
                    os.write(fd, b"%05d\n" % n)
                    succeeded.append(n)
                except OSError as e:
                    failed.append((n, e.errno))
                    if e.errno == errno.EPIPE:
                        return  # the stream ended
                time.sleep(0.04)
        finally:
            os.close(fd)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        wait_until(lambda: len(succeeded) >= 10, what="some records")
        debug_redis.kill()
        debug_redis.start()
    finally:
        writer.join(60)
    assert not writer.is_alive() and failed and failed[-1][1] == errno.EPIPE, failed
    for cat in cats:
        out, _ = cat.communicate(timeout=30)
        got = [int(line) for line in out.split()]
        assert cat.returncode == 0
        # Whatever succeeded was delivered, once, in order.
        assert got[:len(succeeded)] == succeeded and len(got) - len(succeeded) <= 1, \
            (got[-3:], succeeded[-3:], failed)
    # The write in flight made no keys for the stream in the new Redis.
    assert scan(debug_redis.port, f"*}}:{inode}*") == []
    assert os.listdir(a.path) == []
    print(f"\n{len(succeeded)} records written, then {failed}")


def test_counts_never_make_keys_for_a_stream_redis_lost(hosts, debug_redis):
    a, b = hosts(2)
    (a / "s").touch()
    inode = os.stat(a / "s").st_ino
    reader = b.spawn(["cat", str(b / "s")])
    wait_until(lambda: xattr(a / "s", "readers") == 1, what="B's reader in the totals")
    keys = scan(debug_redis.port, f"*}}:{inode}*")
    assert len(keys) == 2 and cli(debug_redis.port, "del", *keys) == "2"
    reader.kill()  # B takes its reader out of totals that are gone
    reader.wait()
    wait_until(lambda: xattr(b / "s", "local_readers") == 0, what="B's reader to leave")
    # B's counts go in batches, in order: once A sees a later one, B sent that.
    (a / "later").touch()
    later = b.spawn(["cat", str(b / "later")])
    wait_until(lambda: xattr(a / "later", "readers") == 1, what="a later count from B")
    later.kill()
    assert scan(debug_redis.port, f"*}}:{inode}*") == []


def test_a_write_whose_connection_is_killed_in_a_pause_is_fenced_and_retried_once(
        hosts, debug_redis):
    """The append never reaches Redis: it is fenced off, and the retry goes in after it."""
    a, b = hosts(2)
    (a / "s").touch()
    inode = os.stat(a / "s").st_ino
    cats = readers((a, b), "s")
    with open(a / "s", "wb", buffering=0) as f:
        f.write(b"first\n")
        assert cli(debug_redis.port, "client", "pause", 1000, "write") == "OK"
        writing = threading.Thread(target=f.write, args=(b"second\n",))
        writing.start()
        # Once the append waits in Redis, drop every connection: the paused
        # XADD goes with its connection, unanswered.
        wait_until(lambda: "cmd=xadd" in cli(debug_redis.port, "client", "list"),
                   what="the append to wait in Redis")
        assert int(cli(debug_redis.port, "client", "kill", "type", "normal")) > 0
        writing.join(30)
        f.write(b"third\n")
    (key,) = [k for k in scan(debug_redis.port, f"*}}:{inode}") if not k.endswith(":meta")]
    ids = cli(debug_redis.port, "xrange", key, "-", "+").split()[::5]
    assert ids == ["0-1", "6-2", "13-1"]  # 6-1 was fenced off
    (b / "s").unlink()
    for cat in cats:
        out, _ = cat.communicate(timeout=30)
        assert out == b"first\nsecond\nthird\n"


def test_a_stall_shorter_than_the_timeout_only_delays(hosts, debug_redis):
    """Writes wait for the stall and succeed; ls answers at once, stat within 0.5 s with
    the last figures it had; readers lose nothing."""
    a, b = hosts(2)
    (a / "s").touch()
    cats = readers((a, b), "s")
    with open(a / "s", "wb", buffering=0) as f:
        f.write(b"before\n")
        wait_until(lambda: os.stat(b / "s").st_size == 7, what="B's size")
        sleeper = stall(debug_redis, SHORT_STALL)
        started = time.monotonic()
        listed = os.listdir(b.path)
        size = os.stat(b / "s").st_size
        looked = time.monotonic() - started
        f.write(b"during\n")
        wrote = time.monotonic() - started
        sleeper.wait(30)
    (b / "s").unlink()
    for cat in cats:
        out, _ = cat.communicate(timeout=30)
        assert cat.returncode == 0 and out == b"before\nduring\n"
    assert listed == ["s"] and size == 7 and looked < 1.0, (listed, size, looked)
    assert wrote < TIMEOUT
    print(f"\nls and stat during a {SHORT_STALL} s stall: {looked:.2f} s; the write waited"
          f" {wrote:.2f} s")


def test_a_restart_from_the_aof_loses_nothing_acknowledged(aof_hosts, aof_redis):
    """SIGKILL Redis and start it again from its AOF (appendfsync always) while a record
    goes every 20 ms: writes wait and go on, readers on both hosts get every record that
    succeeded, once, in order, and the tree is still there."""
    a, b = aof_hosts(2)
    (a / "d").mkdir()
    (a / "d" / "s").touch()
    cats = readers((a, b), "d/s")
    succeeded, failed, stop = [], [], threading.Event()

    def write():
        with open(a / "d" / "s", "wb", buffering=0) as f:
            n = 0
            while not stop.is_set():
                try:
                    f.write(b"%05d\n" % n)
                    succeeded.append((n, time.monotonic()))
                except OSError as e:
                    failed.append((n, e.errno))
                n += 1
                time.sleep(0.02)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        wait_until(lambda: len(succeeded) >= 10, what="some records")
        aof_redis.kill()
        killed = time.monotonic()
        aof_redis.start()
        wait_until(lambda: succeeded[-1][1] > killed + 1, what="records after the restart")
    finally:
        stop.set()
        writer.join(60)
    assert os.listdir(b / "d") == ["s"]
    gap = max(t2 - t1 for (_, t1), (_, t2) in zip(succeeded, succeeded[1:]))
    (b / "d" / "s").unlink()
    for cat in cats:
        out, _ = cat.communicate(timeout=30)
        assert cat.returncode == 0
        assert [int(line) for line in out.split()] == [n for n, _ in succeeded], failed
    assert failed == [] and "lost the namespace" not in a.log() + b.log()
    print(f"\n{len(succeeded)} records, none lost; the longest wait for a write {gap:.2f} s")
