"""The connection to Redis: its URL and password, the call tried again while Redis
is away, the write settled before it is tried again, and the loop that follows
Redis through outages."""

from __future__ import annotations

import errno
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import coredis
import coredis.exceptions
import coredis.retry
import trio

from ...core.access import fail
from ...settings import BACKEND_SCHEMES, BackendSettings, read_secret

__all__ = ["BackendError", "Connection", "Script", "UNREACHABLE", "describe", "probe_backend",
           "shown"]

log = logging.getLogger(__name__)

#: Hash slots the streams of a namespace are spread over, and the most
#: blocking reads (connections) a host keeps for following streams.
SHARDS = 16
#: Connections a cluster client may keep to each node: every blocking read
#: (one per shard, one for the tree) may be on one node, and each holds a
#: connection until it returns; other commands share the rest (each holds one
#: only while it is sent). coredis's default, 32 for the whole cluster, gave
#: 5 to 8 per node, and with that many blocking reads on one node every other
#: command to it waited until one returned (logged: "connections free per
#: node ... 0/8"; the cluster test's unlinks then failed with EIO after 10 s).
NODE_CONNECTIONS = SHARDS + 1 + 8
#: Wait between attempts to reach a Redis that went away.
RECONNECT_DELAY = 0.2

#: What a Redis that went away (or is failing over) raises: wait, and try again.
UNREACHABLE = (coredis.exceptions.ConnectionError, coredis.exceptions.ClusterDownError,
               coredis.exceptions.BusyLoadingError, TimeoutError, OSError)


class BackendError(Exception):
    """The backend cannot be used; the message says why, for the user."""


def connect(settings: BackendSettings) -> coredis.Redis | coredis.RedisCluster:
    url = settings.url or ""
    password = None
    if settings.password_file:
        try:
            password = read_secret(settings.password_file)
        except OSError as e:
            raise BackendError(f"cannot read {settings.password_file}: {e.strerror}") from None
        except ValueError as e:
            raise BackendError(str(e)) from None
    kwargs: dict = {"password": password} if password else {}
    parts = urlsplit(url)
    if parts.scheme not in BACKEND_SCHEMES:
        raise BackendError(f"{url}: the backend must be a "
                           f"{', '.join(scheme + '://' for scheme in BACKEND_SCHEMES)} URL")
    if parts.scheme.endswith("+cluster"):
        nodes = []
        for host in parts.netloc.rpartition("@")[2].split(","):
            name, _, port = host.rpartition(":")
            if not name or not port.isdigit():
                raise BackendError(f"{url}: expected {parts.scheme}://HOST:PORT[,HOST:PORT...]")
            nodes.append(coredis.connection.TCPLocation(host=name, port=int(port)))
        if parts.username:
            kwargs["username"] = parts.username
        if parts.password and not password:
            kwargs["password"] = parts.password
        # Only a refusal that says nothing was done (CLUSTERDOWN) is tried again
        # inside coredis: a write whose connection failed is settled by
        # Connection.write, never sent again blindly (a tree event sent twice
        # is applied twice). Failing commands still make coredis look for a new
        # master, which write's own attempts then reach.
        retry = coredis.retry.ConstantRetryPolicy(
            (coredis.exceptions.ClusterDownError,), retries=2, delay=0.1)
        return coredis.RedisCluster(startup_nodes=nodes, ssl=parts.scheme == "rediss+cluster",
                                    max_connections=NODE_CONNECTIONS,
                                    max_connections_per_node=True, retry_policy=retry, **kwargs)
    # No retries inside coredis, so that a follower sees each lost connection
    # (commands are tried again by Connection.call, as long as the user allows).
    return coredis.Redis.from_url(url, retry_policy=coredis.retry.NoRetryPolicy(), **kwargs)


def describe(error: BaseException) -> str:
    """The first real cause inside coredis's and trio's exception groups."""
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return str(error) or type(error).__name__


def probe_backend(settings: BackendSettings) -> None:
    """Raise BackendError unless Redis answers now: nothing is mounted without it."""
    async def ping() -> None:
        client = connect(settings)
        async with client:
            await client.ping()

    try:
        trio.run(_within, settings.timeout, ping)
    except BackendError:
        raise
    except trio.TooSlowError:
        raise BackendError(f"cannot reach Redis at {shown(settings.url)}: no answer within"
                           f" {settings.timeout:g} s") from None
    except BaseException as e:
        raise BackendError(f"cannot reach Redis at {shown(settings.url)}: {describe(e)}") from None


async def _within(seconds: float, call) -> None:
    with trio.fail_after(seconds):
        await call()


def shown(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.replace(":" + parts.password + "@", ":***@")).geturl()


class Script:
    """A Lua script, run on the node of its keys alone: EVALSHA, or EVAL where that node
    does not have it yet (EVAL keeps it there).

    coredis's registered scripts load a missing script with SCRIPT LOAD on every
    node of a cluster, so while one node was paused (or dead) the first run of a
    script waited for it on every other node: a stream on a live master took 4 s
    to end while another master was paused.
    """

    def __init__(self, client: coredis.Redis | coredis.RedisCluster, source: str) -> None:
        self.client = client
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, keys: list[str], args: list | tuple = ()):
        try:
            return await self.client.evalsha(self.sha, keys=keys, args=args)
        except coredis.exceptions.NoScriptError:
            return await self.client.eval(self.source, keys=keys, args=args)


class RoundTrips:
    """A histogram of how long this host's calls to Redis took, answered or not.

    Cumulative counts per bound, as Prometheus wants them; /metrics renders it.
    """

    #: Upper bounds of the buckets, in seconds: loopback answers in about 0.3 ms.
    BOUNDS = (0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)

    def __init__(self) -> None:
        self.counts = [0] * len(self.BOUNDS)
        self.count = 0
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.count += 1
        self.sum += seconds
        for i, bound in enumerate(self.BOUNDS):
            if seconds <= bound:
                self.counts[i] += 1


class Connection:
    """The client, and the three ways this host talks to a Redis that may go away.

    - :meth:`call`: a command that is safe to send again, tried again for
      ``timeout``;
    - :meth:`write`: a write Redis must apply once or not at all, settled
      before it is tried again;
    - :meth:`follow`: a loop of blocking reads, which waits out any outage.
    """

    def __init__(self, settings: BackendSettings) -> None:
        self.settings = settings
        self.client = connect(settings)
        #: How long calls to Redis took (not the blocking reads, which wait by design).
        self.round_trips = RoundTrips()
        #: Calls while Redis is unreachable: again every RECONNECT_DELAY, until
        #: the caller's deadline (``timeout`` for a call, none for a follower).
        self.reconnecting = coredis.retry.ConstantRetryPolicy(
            UNREACHABLE, retries=None, delay=RECONNECT_DELAY)
        #: Says how many blocking reads this host holds, for :meth:`pool_view`.
        self.blocking_reads: Callable[[], int] = lambda: 1

    async def call(self, command, *args, **kwargs):
        """A command, tried again while Redis is unreachable, for up to ``timeout``."""
        async def attempt():
            started = time.perf_counter()
            try:
                return await command(*args, **kwargs)
            finally:
                self.round_trips.observe(time.perf_counter() - started)

        with trio.move_on_after(self.settings.timeout):
            return await self.reconnecting.call_with_retries(
                attempt, failure_hook=self.unreachable)
        log.error("redis at %s did not answer for %g s (%s)", shown(self.settings.url),
                  self.settings.timeout, self.pool_view())
        raise fail(errno.EIO)

    def unreachable(self, error: BaseException) -> None:
        """A command found Redis unreachable: it will be tried again.

        A cluster client is told, so that it looks for a new master after a
        failover (its own retries, which did so, are off: they resend writes).
        """
        log.debug("redis: %s; trying again", describe(error))
        layout = getattr(self.client.connection_pool, "cluster_layout", None)
        if layout is not None and isinstance(error, coredis.exceptions.RedisError):
            layout.report_errors(None, error)

    def pool_view(self) -> str:
        """coredis's connections as it sees them, for the log when Redis seems not to answer:
        those free per node (a command waits for one), those open, and this host's
        blocking reads (each holds one)."""
        pool = self.client.connection_pool
        reads = self.blocking_reads()
        try:  # coredis's private state: a view for the log, nothing relies on it
            queues = getattr(pool, "_cluster_available_connections", None)
            if queues is None:
                queues = {"redis": pool._available_connections}
            free = ", ".join(f"{getattr(where, 'port', where)} {len(queue)}/{queue._maxsize}"
                             for where, queue in queues.items())
            return (f"coredis: connections free per node {free}; open"
                    f" {len(pool._online_connections)}; blocking reads {reads}")
        except AttributeError:
            return f"blocking reads {reads}"

    async def write(self, attempt: Callable[[], Awaitable[bool]],
                    settle: Callable[[], Awaitable[bool]]) -> None:
        """Try ``attempt()`` until it returns True: a write Redis applies once, or not at all.

        An attempt whose answer never came (a dropped connection, or time up)
        may still be applied by Redis. Before trying again, and before failing,
        ``settle()`` finds out: True if it was applied, else it makes sure it
        never will be. Attempts go on for ``timeout``; settling the last one,
        for as long again. Raises EIO if it was not applied. (Not a coredis
        retry policy: those send the same command again, where this must
        settle the last one first.)
        """
        timeout = self.settings.timeout
        unanswered = False
        with trio.move_on_after(timeout):
            while True:
                try:
                    if unanswered:
                        if await settle():
                            return
                        unanswered = False
                    unanswered = True
                    started = time.perf_counter()
                    try:
                        applied = await attempt()
                    finally:
                        self.round_trips.observe(time.perf_counter() - started)
                    if applied:
                        return
                    unanswered = False
                except UNREACHABLE as e:
                    self.unreachable(e)
                    await trio.sleep(RECONNECT_DELAY)
        log.error("redis at %s did not answer for %g s (%s)", shown(self.settings.url), timeout,
                  self.pool_view())
        if unanswered:
            with trio.move_on_after(timeout) as settling:
                while True:
                    try:
                        if await settle():
                            log.warning("redis applied the write late: it succeeds")
                            return
                        break
                    except UNREACHABLE:
                        await trio.sleep(RECONNECT_DELAY)
            if settling.cancelled_caught:
                log.error("redis at %s did not answer for %g s more: the write that fails"
                          " may still be applied", shown(self.settings.url), timeout)
        raise fail(errno.EIO)

    async def follow(self, step: Callable[[], Awaitable[None]],
                     recover: Callable[[], Awaitable[None]]) -> None:
        """Run ``step`` forever; after an outage, ``recover`` (once it gets through) first.

        ``recover`` looks whether Redis lost data before reading on: reading
        on from the last entry of a Redis that restarted empty would wait forever.
        """
        while True:
            try:
                await step()
                continue
            except UNREACHABLE as e:
                self.unreachable(e)
            await trio.sleep(RECONNECT_DELAY)
            await self.reconnecting.call_with_retries(recover)
