"""Mounts sharing streams through a real Redis Cluster of 3 masters and 3 replicas.

The cluster is shared by the module's tests, in order: the failover test,
which kills a master, comes last.
"""

from __future__ import annotations

import os
import secrets
import threading
import time

import pytest

from streamfs_fuse.testing import cli, wait_until, xattr
from streamfs_fuse.stores.redis.ids import shard_of



@pytest.fixture
def hosts(mount_with, redis_cluster):
    namespace = "c" + secrets.token_hex(4)
    made = []

    def start(n: int = 2, *args: str):
        mounts = [mount_with(f"--backend={redis_cluster.url}", f"--namespace={namespace}",
                             *args, name=f"host{len(made) + i}") for i in range(n)]
        made.extend(mounts)
        return mounts

    start.namespace = namespace
    return start


def master_of(cluster, namespace: str, path) -> int:
    """The port of the master holding the stream at ``path`` (its inode names its keys)."""
    inode = os.stat(path).st_ino
    return cluster.master_for_key(f"{{{namespace}:{shard_of(inode)}}}:{inode}")


def one_stream_per_master(mount, cluster, namespace: str) -> dict[int, str]:
    """Create streams in ``mount`` until each master holds one; their names by master."""
    names: dict[int, str] = {}
    for i in range(1000):
        path = mount / f"s{i}"
        path.touch()
        names.setdefault(master_of(cluster, namespace, path), path.name)
        if len(names) == len(cluster.masters()):
            return names
    raise AssertionError(f"1000 streams left a master without one: {names}")


def tree_master(cluster, namespace: str) -> int:
    return cluster.master_for_key(f"{{{namespace}}}:tree")


def test_a_thousand_streams_spread_over_every_master(hosts, redis_cluster):
    a, b = hosts(2)
    (a / "many").mkdir()
    for i in range(1000):
        os.close(os.open(a / "many" / f"s{i}", os.O_CREAT | os.O_WRONLY))
    wait_until(lambda: len(os.listdir(b / "many")) == 1000, what="B to see the creates")
    masters = {master_of(redis_cluster, hosts.namespace, a / "many" / f"s{i}")
               for i in range(1000)}
    assert masters == set(redis_cluster.masters())
    watched = [f"s{i}" for i in range(0, 1000, 50)]
    readers = {name: b.spawn(["cat", str(b / "many" / name)]) for name in watched}
    for name in watched:
        wait_until(lambda: xattr(b / "many" / name, "local_readers") == 1, what="the readers")
    for i in range(1000):
        with open(a / "many" / f"s{i}", "wb", buffering=0) as f:
            f.write(b"line %d\n" % i)
    for i in range(1000):
        os.unlink(b / "many" / f"s{i}")
    for name, reader in readers.items():
        assert reader.communicate(timeout=30)[0] == b"line %s\n" % name[1:].encode()
    # No command waited out the timeout, in the calls above or in the background
    # (counts, cursors): 16 blocking reads on a cluster once took every
    # connection coredis would make to one node.
    for host in (a, b):
        assert "did not answer" not in host.log()


def test_a_paused_master_stalls_only_its_own_streams(hosts, redis_cluster):
    a, b = hosts(2)
    tree = tree_master(redis_cluster, hosts.namespace)
    paused = next(port for port in redis_cluster.masters() if port != tree)
    by_master = one_stream_per_master(a, redis_cluster, hosts.namespace)
    stalled, flowing = by_master[paused], by_master[tree]
    readers = {name: b.spawn(["cat", str(b / name)]) for name in (stalled, flowing)}
    for name in readers:
        wait_until(lambda: xattr(b / name, "local_readers") == 1, what="the readers")
    assert cli(paused, "client", "pause", 4000) == "OK"
    paused_at = time.monotonic()
    with open(a / flowing, "wb", buffering=0) as f:
        f.write(b"through\n")
    os.unlink(a / flowing)
    assert readers[flowing].communicate(timeout=30)[0] == b"through\n"
    assert time.monotonic() - paused_at < 3, "a stream on another master waited for the pause"
    with open(a / stalled, "wb", buffering=0) as f:
        f.write(b"after the pause\n")
    os.unlink(a / stalled)
    assert readers[stalled].communicate(timeout=30)[0] == b"after the pause\n"


def test_a_failover_during_writes_loses_at_most_what_was_not_yet_replicated(
        hosts, redis_cluster):
    """Kill the master of one stream while a writer writes numbered lines to three.

    Replication is asynchronous: the old master may have acknowledged lines it
    never passed on. Only lines written shortly before the kill may be missing,
    readers never see a line twice or out of order, and the other streams lose
    nothing.
    """
    a, b = hosts(2, "--backend-timeout=30")
    tree = tree_master(redis_cluster, hosts.namespace)
    victim = next(port for port in redis_cluster.masters() if port != tree)
    names = one_stream_per_master(a, redis_cluster, hosts.namespace)
    readers = {name: b.spawn(["cat", str(b / name)]) for name in names.values()}
    for name in readers:
        wait_until(lambda: xattr(b / name, "local_readers") == 1, what="the readers")
    written = {name: [] for name in names.values()}  # (number, time written)
    done = threading.Event()

    def write():
        files = {name: os.open(a / name, os.O_WRONLY) for name in written}
        n = 0
        try:
            while not done.is_set():
                for name, fd in files.items():
                    os.write(fd, b"%d\n" % n)
                    written[name].append((n, time.monotonic()))
                n += 1
                time.sleep(0.002)
        finally:
            for fd in files.values():
                os.close(fd)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        time.sleep(2)
        killed_at = time.monotonic()
        redis_cluster.kill_node(victim)
        redis_cluster.wait_for_failover(victim)
        failed_over_at = time.monotonic()
        time.sleep(2)
    finally:
        done.set()
        writer.join()
    for name in written:
        os.unlink(a / name)
    for port, name in names.items():
        got = [int(x) for x in readers[name].communicate(timeout=60)[0].split()]
        assert got == sorted(set(got)), f"{name}: a line twice or out of order"
        missing = {n for n, _ in written[name]} - set(got)
        if port != victim:
            assert not missing, f"{name} lost lines though its master lived"
            continue
        late = [t for n, t in written[name] if n in missing]
        assert all(killed_at - 1.0 <= t <= failed_over_at for t in late), \
            f"{name}: lost lines written outside the failover"
        print(f"\nfailover took {failed_over_at - killed_at:.1f} s;"
              f" {len(missing)} of {len(written[name])} lines on the killed master lost")
