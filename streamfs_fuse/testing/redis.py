"""Real Redis servers: a standalone ``redis-server`` and a Redis Cluster, and redis-cli.

Every server is a ``redis-server --daemonize no`` started with subprocess.Popen
on a free loopback port, without persistence, and stopped by its PID.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from .net import free_port
from .waits import wait_until


def cli(port: int, *args) -> str:
    """The output of ``redis-cli -p PORT ARGS...``, stripped ("" if it cannot connect)."""
    return subprocess.run(["redis-cli", "-p", str(port), *map(str, args)],
                          capture_output=True, text=True, timeout=10).stdout.strip()


class RedisServer:
    """A ``redis-server`` on ``port`` (a free one by default) working in ``dir``."""

    def __init__(self, dir: Path, port: int | None = None, args: tuple[str, ...] = ()) -> None:
        self.dir = dir
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.args = args
        self.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def start(self) -> None:
        """Start the server and wait until it answers, as itself (not another server on the port)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        log = self.dir / "redis.log"
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                 "--save", "", "--appendonly", "no", "--daemonize", "no",
                 "--dir", str(self.dir), *self.args],
                cwd=self.dir, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: self.process.poll() is not None
                       or f"process_id:{self.pid}" in cli(self.port, "info", "server"),
                       what=f"redis-server on port {self.port}")
            if self.process.poll() is not None:
                raise AssertionError(f"redis-server exited with {self.process.returncode}:\n"
                                     f"{log.read_text(errors='replace')}")
        except BaseException:
            self.stop()
            raise

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        """SIGTERM the server, wait, and SIGKILL it if it does not exit within 10 s."""
        if self.running():
            self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL the server and reap it."""
        self.process.kill()
        self.process.wait()

    def restart(self) -> None:
        """Stop and start again on the same port, with no data."""
        self.stop()
        self.start()

    def pause(self, ms: int) -> None:
        """``CLIENT PAUSE ms``: the server holds clients' commands for ``ms`` milliseconds."""
        assert cli(self.port, "client", "pause", ms) == "OK"


class RedisCluster:
    """A Redis Cluster of ``masters`` masters with ``replicas`` replicas each, in ``dir``."""

    def __init__(self, dir: Path, masters: int = 3, replicas: int = 1) -> None:
        count = masters * (1 + replicas)
        ports: list[int] = []
        while len(ports) < 2 * count:  # a client port and a cluster bus port per node
            if (port := free_port()) not in ports:
                ports.append(port)
        self.nodes: list[RedisServer] = []
        try:
            for port, bus in zip(ports[:count], ports[count:]):
                self.nodes.append(RedisServer(dir / str(port), port, (
                    "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", "2000", "--cluster-port", str(bus),
                    "--repl-diskless-sync-delay", "0")))
            create = subprocess.run(
                ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
                 "--cluster-replicas", str(replicas), "--cluster-yes"],
                capture_output=True, text=True, timeout=60)
            if create.returncode:
                raise AssertionError(f"redis-cli --cluster create failed:\n{create.stdout}{create.stderr}")
            wait_until(lambda: all(self._settled(n.port, count - masters) for n in self.nodes),
                       timeout=30, interval=0.1, what="a settled cluster on every node")
        except BaseException:
            self.stop()
            raise
        self.url = "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.masters())

    def node(self, port: int) -> RedisServer:
        return next(n for n in self.nodes if n.port == port)

    def live(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.running()]

    def _ok(self, port: int) -> bool:
        return "cluster_state:ok" in cli(port, "cluster", "info")

    def _settled(self, port: int, replicas: int) -> bool:
        """Whether ``port`` sees the cluster ok with all its replicas, and is synced if a replica."""
        flags = [flags for flags, _ in self.cluster_nodes(port).values()]
        synced = "master_link_status:up" in cli(port, "info", "replication") \
            or ["myself", "master"] in flags
        return self._ok(port) and sum("slave" in f for f in flags) == replicas and synced

    def cluster_nodes(self, port: int | None = None) -> dict[int, tuple[list[str], list[str]]]:
        """``CLUSTER NODES`` as seen from ``port`` (a live node by default): port -> (flags, slots)."""
        table = {}
        for line in cli(port or self.live()[0].port, "cluster", "nodes").splitlines():
            fields = line.split()
            address = fields[1].split("@")[0]
            table[int(address.rsplit(":", 1)[1])] = (fields[2].split(","), fields[8:])
        return table

    def roles(self) -> dict[int, str]:
        """Each node's role: ``master``, ``replica``, or ``failed`` once the cluster knows it is down."""
        return {port: "failed" if "fail" in flags else "master" if "master" in flags else "replica"
                for port, (flags, _) in self.cluster_nodes().items()}

    def masters(self) -> list[int]:
        return sorted(port for port, role in self.roles().items() if role == "master")

    def master_for_key(self, key: str) -> int:
        """The port of the master that serves ``key``'s hash slot."""
        slot = int(cli(self.live()[0].port, "cluster", "keyslot", key))
        for port, (flags, slots) in self.cluster_nodes().items():
            for span in slots:
                low, _, high = span.partition("-")
                if "master" in flags and int(low) <= slot <= int(high or low):
                    return port
        raise LookupError(f"no master serves slot {slot}")

    def kill_node(self, port: int) -> None:
        """SIGKILL the node on ``port``."""
        self.node(port).kill()

    def wait_for_failover(self, port: int, timeout: float = 30.0) -> None:
        """Wait until every live node sees ``port`` without slots (a replica took them) and cluster_state:ok."""
        def failed_over(node: RedisServer) -> bool:
            table = self.cluster_nodes(node.port)
            return port in table and not table[port][1] and self._ok(node.port)
        wait_until(lambda: all(failed_over(n) for n in self.live()), timeout=timeout,
                   interval=0.1, what=f"a replica to take over the slots of node {port}")

    def stop(self) -> None:
        """Stop every node by PID."""
        for node in self.nodes:
            node.stop()


def scan(port: int, pattern: str) -> list[str]:
    """Every key matching ``pattern`` (SCAN, never KEYS)."""
    return subprocess.run(["redis-cli", "-p", str(port), "--scan", "--pattern", pattern],
                          capture_output=True, text=True, timeout=30, check=True).stdout.split()


def stray_keys(port: int, namespace: str) -> list[str]:
    """The keys of ``namespace`` that the README does not document, once its streams are
    removed and its hosts have left: all but the tree, its snapshot, the epoch, the ended
    logs of removed streams with their totals and cursors (which expire), and doorbells
    of killed hosts (which expire)."""
    kept = {f"{{{namespace}}}:{name}" for name in ("tree", "snapshot", "epoch")}
    strays = []
    for key in scan(port, f"{{{namespace}}}:*") + scan(port, f"{{{namespace}:*"):
        if key in kept:
            continue
        expiring = int(cli(port, "ttl", key)) > 0
        if key.endswith((":meta", ":cursors")) or ":bell:" in key:
            documented = expiring
        else:  # a stream's log: ended, and expiring
            newest = cli(port, "xrevrange", key, "+", "-", "count", 1).split()
            documented = expiring and newest[1:2] == ["end"]
        if not documented:
            strays.append(key)
    return strays
