"""The harness's Redis servers (streamfs_fuse.testing.redis): start, restart, stop, fail over."""

import os

import pytest

from streamfs_fuse.testing import cli


def test_restart_comes_back_empty(redis_server):
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    assert cli(redis_server.port, "ping") == "PONG"
    assert cli(redis_server.port, "set", "key", "value") == "OK"
    redis_server.restart()
    assert cli(redis_server.port, "ping") == "PONG"
    assert cli(redis_server.port, "exists", "key") == "0"


def test_stop_ends_the_process(redis_server):
    redis_server.pause(100)
    redis_server.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(redis_server.pid, 0)


def test_cluster_fails_over_to_a_replica(redis_cluster):
    masters = redis_cluster.masters()
    assert len(masters) == 3
    assert redis_cluster.url == "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in masters)
    for i in range(100):
        assert cli(masters[0], "-c", "set", f"key{i}", i) == "OK"
    victim = redis_cluster.master_for_key("key42")
    redis_cluster.kill_node(victim)
    redis_cluster.wait_for_failover(victim)
    assert redis_cluster.roles()[victim] == "failed"
    assert len(redis_cluster.masters()) == 3
    survivor = redis_cluster.live()[0].port
    assert cli(survivor, "-c", "get", "key42") == "42"
    assert redis_cluster.master_for_key("key42") != victim
