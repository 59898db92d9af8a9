"""GET /metrics against a real mount: Prometheus's own parser reads it, counters move as
data flows through the mount and over HTTP, and who may scrape follows the door's rules."""

from __future__ import annotations

import os
import subprocess
from functools import partial

from prometheus_client.parser import text_string_to_metric_families

from streamfs_fuse.testing import TOKEN, accepts, as_user, free_port, wait_until, write_token, xattr
from test_http import call

until = partial(wait_until, timeout=30.0)


def scrape(port, token=TOKEN) -> dict:
    """/metrics parsed by prometheus_client: {(sample name, sorted labels): value}."""
    status, headers, body = call(port, "GET", "/metrics", token=token)
    assert status == 200, body
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def stream_figure(samples, name, stream, **labels):
    return samples.get((f"streamfs_stream_{name}",
                        tuple(sorted({"stream": stream, **labels}.items()))))


def serve(mount_with, tmp_path, *args, name="mnt"):
    """A mount serving HTTP on a free loopback port with a root-owned token: (mount, port)."""
    port = free_port()
    mnt = mount_with("--http", f"127.0.0.1:{port}", "--http-token", str(write_token(tmp_path)),
                     *args, name=name)
    until(lambda: accepts(port) or mnt.daemon.poll() is not None, what="the HTTP port")
    assert mnt.daemon.poll() is None, mnt.log()
    return mnt, port


def test_metrics_parse_and_counters_move_as_data_flows(mount_with, tmp_path):
    mnt, port = serve(mount_with, tmp_path, "--max-memory", "64MB")
    live = mnt / "live"
    with open(live, "wb", buffering=0) as writer:
        writer.write(b"a" * 1000)
        reader = mnt.spawn(["cat", str(live)], stdout=subprocess.DEVNULL)
        # An HTTP reader too: what it is sent counts as delivered.
        mnt.spawn(["curl", "-sSN", "-o", "/dev/null", "-H", f"Authorization: Bearer {TOKEN}",
                   f"http://127.0.0.1:{port}/live"])
        until(lambda: xattr(live, "readers") == 2 and xattr(live, "delivered_bytes") == 2000,
              what="both readers to read the history")
        first = scrape(port)
        assert stream_figure(first, "written_bytes_total", "/live") == 1000
        assert stream_figure(first, "delivered_bytes_total", "/live") == 2000
        assert stream_figure(first, "readers", "/live", hosts="all") == 2
        assert stream_figure(first, "readers", "/live", hosts="this") == 2
        assert stream_figure(first, "writers", "/live", hosts="this") == 1
        assert first[("streamfs_memory_cap_bytes", ())] == 64 << 20
        assert first[("streamfs_streams", ())] == 1
        assert first[("streamfs_metrics_per_stream", ())] == 1

        for _ in range(5):
            writer.write(b"b" * 4000)
        until(lambda: xattr(live, "delivered_bytes") == 42000, what="the readers to read on")
    second = scrape(port)
    assert stream_figure(second, "written_bytes_total", "/live") == 21000
    assert stream_figure(second, "written_chunks_total", "/live") == 6
    assert stream_figure(second, "delivered_bytes_total", "/live") == 42000
    assert stream_figure(second, "writers", "/live", hosts="this") == 0
    assert second[("streamfs_written_bytes_total", ())] == 21000
    # The first scrape was answered 200, and counted.
    assert second[("streamfs_http_responses_total", (("status", "200"),))] >= 1
    assert second[("streamfs_http_connections", ())] >= 1
    # FUSE requests by operation: the writer's six writes, and more.
    fuse = {labels[0][1]: value for (name, labels), value in second.items()
            if name == "streamfs_fuse_requests_total"}
    assert fuse["write"] >= 6 and fuse["read"] >= 1 and fuse["getxattr"] >= 1, fuse
    assert fuse["write"] - first[("streamfs_fuse_requests_total", (("operation", "write"),))] >= 5

    # rm: the stream's series go, the daemon-wide counters keep what it counted.
    os.unlink(live)
    reader.wait(10)
    # Gone once both readers have let go of it (FUSE's release comes after cat exits).
    until(lambda: scrape(port)[("streamfs_streams", ())] == 0, what="the stream to go")
    third = scrape(port)
    assert stream_figure(third, "written_bytes_total", "/live") is None
    assert third[("streamfs_written_bytes_total", ())] == 21000
    assert third[("streamfs_delivered_bytes_total", ())] == 42000


def test_who_may_scrape(mount_with, tmp_path, unprivileged_user, world_readable_dir):
    socket_path = world_readable_dir / "door.sock"
    mnt, port = serve(mount_with, tmp_path, "--http", f"unix:{socket_path}")
    (mnt / "open").write_bytes(b"o")
    # Anonymous (nobody): refused, whatever it may read; a wrong token too.
    status, headers, _ = call(port, "GET", "/metrics", token=None)
    assert status == 401 and headers["www-authenticate"] == "Bearer"
    assert call(port, "GET", "/metrics", token="wrong")[0] == 401
    assert call(port, "POST", "/metrics")[0] == 405
    # A Unix socket's peer is someone: served, as that user.
    until(lambda: socket_path.exists(), what="the Unix socket")
    result = as_user(unprivileged_user, "curl", "-sS", "-w", "\\n%{http_code}",
                     "--unix-socket", socket_path, "http://localhost/metrics")
    body, _, code = result.stdout.rpartition("\n")
    assert code == "200", result.stderr
    names = {s.name for f in text_string_to_metric_families(body) for s in f.samples}
    assert "streamfs_stream_written_bytes_total" in names


def test_public_metrics_show_nobody_what_nobody_may_read(mount_with, tmp_path):
    mnt, port = serve(mount_with, tmp_path, "--metrics-public")
    (mnt / "open").write_bytes(b"o" * 10)
    (mnt / "private").write_bytes(b"p" * 20)
    os.chmod(mnt / "private", 0o600)
    os.mkdir(mnt / "closed", 0o700)
    (mnt / "closed" / "inside").write_bytes(b"i" * 30)
    anonymous = scrape(port, token=None)
    assert stream_figure(anonymous, "written_bytes_total", "/open") == 10
    assert stream_figure(anonymous, "written_bytes_total", "/private") is None
    assert stream_figure(anonymous, "written_bytes_total", "/closed/inside") is None
    # The daemon-wide figures are the whole mount's.
    assert anonymous[("streamfs_written_bytes_total", ())] == 60
    root = scrape(port)
    assert stream_figure(root, "written_bytes_total", "/private") == 20
    assert stream_figure(root, "written_bytes_total", "/closed/inside") == 30


def test_totals_only_past_the_limit_or_when_asked(mount_with, tmp_path):
    mnt, port = serve(mount_with, tmp_path, "--metrics-max-streams", "2")
    for name in ("a", "b"):
        (mnt / name).write_bytes(b"x" * 100)
    assert stream_figure(scrape(port), "written_bytes_total", "/a") == 100
    (mnt / "c").write_bytes(b"x" * 100)
    samples = scrape(port)
    assert not [name for name, _ in samples if name.startswith("streamfs_stream_")]
    assert samples[("streamfs_metrics_per_stream", ())] == 0
    assert samples[("streamfs_written_bytes_total", ())] == 300
    assert samples[("streamfs_streams", ())] == 3

    other, other_port = serve(mount_with, tmp_path, "-o", "metrics_per_stream=no",
                              name="other")
    (other / "a").write_bytes(b"x")
    samples = scrape(other_port)
    assert not [name for name, _ in samples if name.startswith("streamfs_stream_")]
    assert samples[("streamfs_written_bytes_total", ())] == 1


def test_redis_round_trips_are_a_histogram_with_a_backend(mount_with, tmp_path, redis_server):
    mnt, port = serve(mount_with, tmp_path, f"--backend={redis_server.url}")
    before = scrape(port)
    count = before[("streamfs_redis_round_trip_seconds_count", ())]
    (mnt / "s").touch()  # a tree event
    with open(mnt / "s", "ab", buffering=0) as writer:
        for _ in range(5):
            writer.write(b"x" * 100)  # an append each
    after = scrape(port)
    assert after[("streamfs_redis_round_trip_seconds_count", ())] >= count + 6
    assert after[("streamfs_redis_round_trip_seconds_sum", ())] > 0
    buckets = sorted((float(dict(labels)["le"]), value) for (name, labels), value in after.items()
                     if name == "streamfs_redis_round_trip_seconds_bucket")
    assert [value for _, value in buckets] == sorted(value for _, value in buckets)
    assert buckets[-1] == (float("inf"), after[("streamfs_redis_round_trip_seconds_count", ())])


def test_no_redis_histogram_without_a_backend(mount_with, tmp_path):
    _, port = serve(mount_with, tmp_path)
    assert not any(name.startswith("streamfs_redis") for name, _ in scrape(port))
