"""``GET /metrics`` on the HTTP door: the mount's figures in the Prometheus text format.

A scrape reads the figures the streams, the memory budget and the door
keep (each stream's :class:`~.stream.StreamStatistics`, what its xattrs
show) into a prometheus_client :class:`~prometheus_client.registry.Collector`;
only FUSE requests are counted for /metrics alone (:func:`count_fuse_requests`).

- Per stream, labelled ``stream="/path"``: only streams the scraper may read
  (through directories it may list), as their xattrs are; and only while
  there are at most ``metrics_max_streams`` of them and ``metrics_per_stream``
  is on, so the label set stays bounded. Otherwise, totals only.
- Daemon-wide: every stream's totals (counters that keep what removed
  streams counted, see :class:`Retired`), memory against the cap, connections,
  HTTP answers by status and FUSE requests by operation.

Who may scrape: any identity but nobody (a token, a Unix socket's peer);
nobody too with ``--metrics-public``.
"""

from __future__ import annotations

import itertools
import operator
import weakref
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import trio
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily, Metric)
from prometheus_client.registry import Collector

from ..core.access import NOBODY, Access, Identity, may
from ..settings import HTTPSettings
from .door import Exchange, HTTPDoor, Refused
from .native import origin_form
from ..core.tree import Directory, Tree, StreamFile
from ..core.stream import Stream, StreamStatistics

__all__ = ["MetricsRoutes", "PATH"]

PATH = b"/metrics"
#: Shared streams whose totals across hosts are fetched from Redis at once, per scrape.
REFRESH_CONCURRENCY = 32

#: Per-stream counters: (metric name, StreamStatistics field, help).
STREAM_COUNTERS = (
    ("written_bytes", "bytes_written", "bytes written, on every host"),
    ("written_chunks", "chunks_written", "chunks written, on every host"),
    ("delivered_bytes", "delivered_bytes", "bytes this host's readers have read"),
    ("dropped_chunks", "dropped_chunks", "chunks this host's slow readers missed"),
    ("dropped_bytes", "dropped_bytes", "bytes this host's slow readers missed"),
    ("disconnected_readers", "disconnected_readers",
     "this host's readers cut off by the disconnect policy"),
)
#: Per-stream gauges of this host: (metric name, field, help).
STREAM_GAUGES = (
    ("queued_bytes", "queued_bytes", "bytes queued for this host's readers, unread"),
    ("held_bytes", "held_bytes", "memory held for readers beyond the ring (counts against "
                                 "--max-memory)"),
    ("ring_bytes", "ring_bytes", "history the ring holds"),
    ("ring_buffer_size_bytes", "ring_buffer_size", "the ring's size"),
    ("waiting_reads", "waiting_reads", "reads waiting for data"),
    ("waiting_writes", "waiting_writes", "writes waiting for room"),
)
#: Counters whose daemon-wide totals go on counting after a stream is removed.
TOTALS = tuple(field for _, field, _ in STREAM_COUNTERS)


class Retired:
    """Daemon-wide counters that never go back: what removed streams counted is kept.

    Each stream seen is followed by a weak reference (a removed stream's ring
    is not kept alive for the next scrape). A stream removed since the last
    scrape and still in memory gives its final counts; one already collected
    gives what the last scrape saw of it.
    """

    def __init__(self) -> None:
        self.counts = [0] * len(TOTALS)
        self._seen: dict[int, tuple[weakref.ref[Stream], tuple[int, ...]]] = {}

    def totals(self, figures: dict[Stream, StreamStatistics]) -> dict[str, int]:
        """The counters summed over ``figures`` (every stream now) and the retired ones."""
        seen = self._seen
        for key, (ref, last) in list(seen.items()):
            stream = ref()
            if stream is not None and stream in figures:
                continue
            if stream is not None:
                last = counters(stream.statistics())
            self.counts = [a + b for a, b in zip(self.counts, last)]
            del seen[key]
        now = [counters(statistics) for statistics in figures.values()]
        for stream, values in zip(figures, now):
            seen[id(stream)] = (weakref.ref(stream), values)
        return dict(zip(TOTALS, (sum(column) for column in zip(self.counts, *now))))


#: The counters of a stream's statistics, in the order of :data:`TOTALS`.
counters = operator.attrgetter(*TOTALS)


@dataclass
class Scrape:
    """What one scrape reports, gathered before the text is made."""

    #: (label, figures) of the streams reported one by one; empty for totals only.
    streams: list[tuple[str, StreamStatistics]]
    #: Whether streams are reported one by one (not past the limit, not turned off).
    per_stream: bool
    stream_count: int
    totals: dict[str, int]
    local_readers: int
    local_writers: int
    queued_bytes: int
    held_bytes: int
    memory_cap: int | None
    memory_used: int
    connections: int
    active_requests: int
    max_connections: int
    responses: dict[int, int]
    fuse_requests: dict[str, int] | None
    #: With --backend: (upper bounds, cumulative counts, count, sum) of Redis calls, seconds.
    redis_round_trips: tuple | None = None


class ScrapeCollector(Collector):
    """Turns a :class:`Scrape` into metric families."""

    def __init__(self, scrape: Scrape) -> None:
        self.scrape = scrape

    def collect(self) -> Iterator[Metric]:
        s = self.scrape
        if s.streams:
            yield from self._per_stream(s.streams)
        yield GaugeMetricFamily("streamfs_streams", "streams in the mount (removed ones still "
                                "open included)", value=s.stream_count)
        yield GaugeMetricFamily("streamfs_metrics_per_stream", "1 when the streamfs_stream_* "
                                "series are given, 0 when past --metrics-max-streams or off",
                                value=int(s.per_stream))
        for name, field, help_text in STREAM_COUNTERS:
            yield CounterMetricFamily(f"streamfs_{name}", f"every stream: {help_text}",
                                      value=s.totals[field])
        for name, value, help_text in (
                ("readers", s.local_readers, "this host's open readers, every stream"),
                ("writers", s.local_writers, "this host's open writers, every stream"),
                ("queued_bytes", s.queued_bytes, "bytes queued for readers, every stream"),
                ("memory_held_bytes", s.held_bytes, "memory held for readers beyond the rings"),
                ("memory_used_bytes", s.memory_used, "what --max-memory caps: the rings, what "
                                                     "readers hold beyond them, bookkeeping")):
            yield GaugeMetricFamily(f"streamfs_{name}", help_text, value=value)
        if s.memory_cap is not None:
            yield GaugeMetricFamily("streamfs_memory_cap_bytes", "--max-memory",
                                    value=s.memory_cap)
        yield GaugeMetricFamily("streamfs_http_connections", "HTTP connections open",
                                value=s.connections)
        yield GaugeMetricFamily("streamfs_http_active_requests",
                                "HTTP requests being answered (streams being sent included)",
                                value=s.active_requests)
        yield GaugeMetricFamily("streamfs_http_max_connections",
                                "HTTP connections served at once", value=s.max_connections)
        answers = CounterMetricFamily("streamfs_http_responses", "HTTP answers by status",
                                      labels=["status"])
        for status, count in sorted(s.responses.items()):
            answers.add_metric([str(status)], count)
        yield answers
        if s.redis_round_trips is not None:
            bounds, counts, count, total = s.redis_round_trips
            yield HistogramMetricFamily(
                "streamfs_redis_round_trip_seconds",
                "how long this host's calls to Redis took (not the blocking reads)",
                buckets=[*((f"{bound:g}", n) for bound, n in zip(bounds, counts)),
                         ("+Inf", count)],
                sum_value=total)
        if s.fuse_requests is not None:
            requests = CounterMetricFamily("streamfs_fuse_requests", "FUSE requests by operation",
                                           labels=["operation"])
            for operation, count in sorted(s.fuse_requests.items()):
                requests.add_metric([operation], count)
            yield requests

    @staticmethod
    def _per_stream(streams: list[tuple[str, StreamStatistics]]) -> Iterator[Metric]:
        for name, field, help_text in STREAM_COUNTERS:
            family = CounterMetricFamily(f"streamfs_stream_{name}", help_text, labels=["stream"])
            for label, figures in streams:
                family.add_metric([label], getattr(figures, field))
            yield family
        for name, fields in (("readers", ("readers", "local_readers")),
                             ("writers", ("writers", "local_writers"))):
            family = GaugeMetricFamily(f"streamfs_stream_{name}",
                                       f"open {name}: on every host, and on this one",
                                       labels=["stream", "hosts"])
            for label, figures in streams:
                family.add_metric([label, "all"], getattr(figures, fields[0]))
                family.add_metric([label, "this"], getattr(figures, fields[1]))
            yield family
        for name, field, help_text in STREAM_GAUGES:
            family = GaugeMetricFamily(f"streamfs_stream_{name}", help_text, labels=["stream"])
            for label, figures in streams:
                family.add_metric([label], getattr(figures, field))
            yield family


class MetricsRoutes:
    """``GET /metrics`` in front of ``inner`` (the other routes), which gets everything else.

    A stream named ``/metrics`` is therefore not reachable over HTTP (it still
    is through the mount).
    """

    def __init__(self, inner, tree: Tree, door: HTTPDoor | None,
                 settings: HTTPSettings) -> None:
        self.inner = inner
        self.tree = tree
        #: Set once the door exists (it is made with these routes).
        self.door = door
        self.settings = settings
        self.retired = Retired()
        #: FUSE requests by operation, when the mount counts them (see count_fuse_requests).
        self.fuse_requests: Counter[str] | None = None

    async def __call__(self, exchange: Exchange) -> None:
        if origin_form(exchange.target).partition(b"?")[0] != PATH:
            await self.inner(exchange)
            return
        if exchange.method not in (b"GET", b"HEAD"):
            raise Refused(405, "/metrics answers GET and HEAD",
                          headers=((b"allow", b"GET, HEAD"),))
        if exchange.identity == NOBODY and not self.settings.metrics_public:
            raise Refused(401, "/metrics needs a bearer token (or --metrics-public)")
        registry = CollectorRegistry(auto_describe=False)
        registry.register(ScrapeCollector(await self.scrape(exchange.identity)))
        # The text format Prometheus asks for (OpenMetrics, say); 0.0.4 by default.
        encode, kind = choose_encoder((exchange.header(b"accept") or b"").decode("latin-1"))
        # In a thread: the text of 1,000 streams takes 100 ms, which would stall
        # every reader and writer; beside them it takes its share of the GIL.
        body = await trio.to_thread.run_sync(encode, registry)
        await exchange.reply(200, body, kind.encode(), headers=[(b"cache-control", b"no-store")])

    async def scrape(self, identity: Identity) -> Scrape:
        """The figures now; each stream's statistics are made once (4 µs each)."""
        tree, settings = self.tree, self.settings
        visible: list[tuple[bytes, StreamFile]] = []
        if settings.metrics_per_stream:
            visible = list(itertools.islice(readable_streams(tree.root, identity),
                                            settings.metrics_max_streams + 1))
        per_stream = settings.metrics_per_stream and len(visible) <= settings.metrics_max_streams
        if per_stream:
            await refresh([node.stream for _, node in visible])
        # Nothing awaits from here on: the figures are of one moment.
        figures = {node.stream: node.stream.statistics() for node in list(tree.nodes.values())
                   if isinstance(node, StreamFile)}
        reported = [(label_of(path), figures[node.stream]) for path, node in visible
                    if per_stream and node.stream in figures]
        local = figures.values()
        door = self.door
        return Scrape(
            streams=reported, per_stream=per_stream, stream_count=len(figures),
            totals=self.retired.totals(figures),
            local_readers=sum(s.local_readers for s in local),
            local_writers=sum(s.local_writers for s in local),
            queued_bytes=sum(s.queued_bytes for s in local),
            held_bytes=tree.budget.held, memory_cap=tree.budget.limit,
            memory_used=tree.memory_used(),
            connections=len(door.connections) if door else 0,
            active_requests=door.active if door else 0,
            max_connections=door.max_connections if door else 0,
            responses=dict(door.responses) if door else {},
            fuse_requests=None if self.fuse_requests is None else dict(self.fuse_requests),
            redis_round_trips=round_trips_of(tree.store),
        )


def round_trips_of(store) -> tuple | None:
    """A shared store's histogram of Redis calls, copied, or None without a backend."""
    trips = getattr(store, "round_trips", None)
    if trips is None:
        return None
    return trips.BOUNDS, list(trips.counts), trips.count, trips.sum


#: The FUSE requests counted by operation: every pyfuse3 handler StreamFS may get.
FUSE_OPERATIONS = ("access", "create", "flush", "forget", "fsync", "fsyncdir", "getattr",
                   "getxattr", "link", "listxattr", "lookup", "mkdir", "mknod", "open",
                   "opendir", "poll", "read", "readdir", "readlink", "release", "releasedir",
                   "removexattr", "rename", "rmdir", "setattr", "setxattr", "statfs",
                   "symlink", "unlink", "write")


def count_fuse_requests(operations) -> Counter[str]:
    """Count the FUSE requests ``operations`` (a pyfuse3.Operations) is given, by operation.

    Each handler is replaced, on the instance, by one that counts and returns
    the handler's coroutine, which pyfuse3 awaits as before.
    """
    counts: Counter[str] = Counter()
    for name in FUSE_OPERATIONS:
        handler = getattr(operations, name)

        def counted(*args, _handler=handler, _name=name):
            counts[_name] += 1
            return _handler(*args)
        setattr(operations, name, counted)
    return counts


def readable_streams(directory: Directory, identity: Identity,
                     prefix: bytes = b"") -> Iterator[tuple[bytes, StreamFile]]:
    """The streams ``identity`` may read, below directories it may list and search."""
    if not may(identity, Access.READ | Access.SEARCH, directory):
        return
    for name, node in list(directory.entries.items()):
        path = prefix + b"/" + name
        if isinstance(node, StreamFile):
            if may(identity, Access.READ, node):
                yield path, node
        elif isinstance(node, Directory):
            yield from readable_streams(node, identity, path)


def label_of(path: bytes) -> str:
    """A path as a label value: UTF-8, with any other byte shown as ``\\xNN``."""
    return path.decode("utf-8", "backslashreplace")


async def refresh(streams: list[Stream]) -> None:
    """Fetch the totals across hosts of the shared streams among ``streams``."""
    shared = [stream for stream in streams if stream.log.shared]
    if not shared:
        return
    limiter = trio.CapacityLimiter(REFRESH_CONCURRENCY)

    async def one(stream: Stream) -> None:
        async with limiter:
            await stream.refresh()

    async with trio.open_nursery() as nursery:
        for stream in shared:
            nursery.start_soon(one, stream)
