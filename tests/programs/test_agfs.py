"""The AGFS HTTP API of the door, driven by the AGFS Python SDK (pyagfs) unmodified.

A real daemon is mounted with ``--http`` and a root-owned ``--http-token``,
which the pyagfs client sends (pyagfs has no token setting of its own: it
goes in ``client.session.headers``), so its calls act as root. What pyagfs
does is checked through the mount, and what is written through the mount is
read with pyagfs. Error bodies and statuses are checked with raw requests.
"""

from __future__ import annotations

import http.client
import json
import os
import pwd
import select
import socket
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest
import trio
from pyagfs import AGFSClient
from pyagfs.exceptions import AGFSClientError

from streamfs_fuse.testing import (TOKEN, accepts, free_port, wait_parked, wait_until, write_token,
                                   xattr)
from streamfs_fuse.core.access import ROOT
from streamfs_fuse.http.agfs import AGFSRoutes
from streamfs_fuse.settings import HTTPSettings
from streamfs_fuse.http.door import HTTPDoor
from streamfs_fuse.core.tree import Tree
from streamfs_fuse.settings import StreamSettings

#: agfs-fuse, AGFS's FUSE client (Go), when built (docs/agfs-anchor-run.md says how).
AGFS_FUSE = os.environ.get("AGFS_FUSE")

#: The header that makes a request act as the token file's owner.
AUTHORIZATION = {"Authorization": f"Bearer {TOKEN}"}


def agfs_client(port: int, *, anonymous: bool = False) -> AGFSClient:
    """A pyagfs client of the door on ``port``, carrying the token unless ``anonymous``."""
    client = AGFSClient(f"http://127.0.0.1:{port}")
    if not anonymous:
        client.session.headers.update(AUTHORIZATION)
    return client


class Door:
    """A mount with its HTTP door, a pyagfs client, and raw requests to the door."""

    def __init__(self, mount, port: int) -> None:
        self.mount = mount
        self.port = port
        self.client = agfs_client(port)

    def raw(self, method: str, target: str, body: bytes | None = None):
        """``(status, headers, body)`` for a request whose target is sent exactly as given."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request(method, target, body=body, headers=AUTHORIZATION)
            response = connection.getresponse()
            return response.status, response.headers, response.read()
        finally:
            connection.close()

    def error(self, method: str, target: str) -> tuple[int, dict]:
        status, headers, body = self.raw(method, target)
        assert headers["content-type"] == "application/json", target
        return status, json.loads(body)


@pytest.fixture
def door(mount_with, tmp_path):
    port = free_port()
    mount = mount_with("--http", f"127.0.0.1:{port}", "--http-token", str(write_token(tmp_path)))
    wait_until(lambda: accepts(port), what="the HTTP door to accept connections")
    door = Door(mount, port)
    yield door
    door.client.session.close()


def names(entries) -> set[str]:
    return {entry["name"] for entry in entries}


def test_health_mounts_and_the_root(door):
    client = door.client
    health = client.health()
    assert health["status"] == "healthy" and health["ready"] is True
    assert client.mounts() == [{"path": "/streamfs", "pluginName": "streamfs",
                                "status": "mounted"}]
    [entry] = client.ls("/")
    assert entry["name"] == "streamfs" and entry["isDir"] is True
    assert entry["meta"] == {"Name": "rootfs", "Type": "mount-point", "Content": None}
    assert client.stat("/")["isDir"] is True
    assert client.ls("/streamfs") == []
    root = client.stat("/streamfs")
    assert root["name"] == "streamfs" and root["isDir"] is True and root["mode"] == 0o755


def test_files_and_directories_through_pyagfs_show_in_the_mount(door):
    client, mnt = door.client, door.mount
    assert client.mkdir("/streamfs/dir") == {"message": "directory created"}
    assert (mnt / "dir").is_dir()
    assert client.create("/streamfs/dir/a") == {"message": "file created"}
    assert (mnt / "dir" / "a").is_file()
    with pytest.raises(AGFSClientError, match="already exists"):
        client.create("/streamfs/dir/a")
    assert client.touch("/streamfs/dir/b") == {"message": "touched"}
    before = client.stat("/streamfs/dir/b")["modTime"]
    assert client.touch("/streamfs/dir/b") == {"message": "touched"}
    assert client.stat("/streamfs/dir/b")["modTime"] >= before

    assert client.write("/streamfs/dir/a", b"hello") == "Written 5 bytes"
    assert client.write("/streamfs/dir/a", b" world") == "Written 6 bytes"  # appends
    info = client.stat("/streamfs/dir/a")
    assert info["name"] == "a" and info["size"] == 11 and info["isDir"] is False
    assert info["mode"] == 0o644 and info["modTime"].endswith("Z")
    assert info["meta"]["Name"] == "streamfs" and info["meta"]["Type"] == "stream"
    assert info["meta"]["Content"]["total_written"] == "11"
    assert info["meta"]["Content"]["active_readers"] == "0"
    listing = {entry["name"]: entry for entry in client.ls("/streamfs/dir")}
    assert set(listing) == {"a", "b"} and listing["a"]["size"] == 11
    assert names(client.ls("/streamfs")) == {"dir"}
    assert client.ls("/streamfs")[0]["isDir"] is True

    assert client.mv("/streamfs/dir/a", "/streamfs/c") == {"message": "renamed"}
    assert sorted(os.listdir(mnt.path)) == ["c", "dir"] and os.listdir(mnt / "dir") == ["b"]
    assert client.cat("/streamfs/c") == b"hello world"

    with pytest.raises(AGFSClientError, match="not empty"):
        client.rm("/streamfs/dir")
    assert client.rm("/streamfs/c") == {"message": "deleted"}
    client.mkdir("/streamfs/dir/sub")
    client.write("/streamfs/dir/sub/deep", b"x")
    assert client.rm("/streamfs/dir", recursive=True) == {"message": "deleted"}
    assert os.listdir(mnt.path) == []
    with pytest.raises(AGFSClientError, match="not found"):
        client.stat("/streamfs/dir")
    with pytest.raises(AGFSClientError, match="not found"):
        client.rm("/streamfs/dir")


@pytest.mark.timeout(60)
def test_cat_stream_gives_history_then_live_data_until_rm_through_the_mount(door):
    client, mnt = door.client, door.mount
    client.write("/streamfs/live", b"history\n")
    response = client.cat("/streamfs/live", stream=True)
    try:
        assert response.headers["content-type"] == "application/octet-stream"
        pieces = response.iter_content(chunk_size=None)
        received = b""
        while received != b"history\n":
            received += next(pieces)
        assert client.stat("/streamfs/live")["meta"]["Content"]["active_readers"] == "1"
        with open(mnt / "live", "wb", buffering=0) as writer:
            writer.write(b"live\n")
            while received != b"history\nlive\n":
                received += next(pieces)
        client.write("/streamfs/live", b"more\n")
        while received != b"history\nlive\nmore\n":
            received += next(pieces)
        os.unlink(mnt / "live")  # rm through the mount ends the response
        assert b"".join(pieces) == b""
    finally:
        response.close()


def test_cat_without_stream_gives_what_the_ring_holds_now(door):
    client, mnt = door.client, door.mount
    client.create("/streamfs/s")
    assert client.cat("/streamfs/s") == b""
    with open(mnt / "s", "wb", buffering=0) as writer:
        writer.write(b"0123456789")
        assert client.cat("/streamfs/s") == b"0123456789"  # and does not wait for more
        assert client.cat("/streamfs/s", offset=3, size=4) == b"3456"
        assert client.cat("/streamfs/s", size=2) == b"01"
    assert client.read("/streamfs/s", offset=8) == b"89"


def test_errors_have_agfs_shape_and_status(door):
    door.client.mkdir("/streamfs/d")
    door.client.write("/streamfs/d/s", b"x")
    # AGFS's streamfs's words ("stream not found: P"), its memfs's for directories,
    # with the status of AGFS's error types (its streamfs answers every error 500).
    assert door.error("GET", "/api/v1/stat?path=/streamfs/missing") == (
        404, {"error": "stream not found: /streamfs/missing"})
    assert door.error("GET", "/api/v1/files?path=/streamfs/missing") == (
        404, {"error": "stream not found: /streamfs/missing"})
    assert door.error("DELETE", "/api/v1/files?path=/streamfs/missing") == (
        404, {"error": "stream not found: /streamfs/missing"})
    assert door.error("GET", "/api/v1/directories?path=/elsewhere") == (
        404, {"error": "directory not found: /elsewhere"})
    assert door.error("GET", "/api/v1/directories?path=/streamfs/d/s") == (
        404, {"error": "not a directory: /streamfs/d/s"})
    assert door.error("PUT", "/api/v1/files?path=/elsewhere/x") == (
        404, {"error": "stream not found: /elsewhere/x"})
    assert door.error("GET", "/api/v1/stat") == (400, {"error": "path parameter is required"})
    assert door.error("POST", "/api/v1/directories?path=/streamfs/d") == (
        409, {"error": "directory already exists: /streamfs/d"})
    assert door.error("POST", "/api/v1/files?path=/streamfs/d/s") == (
        409, {"error": "stream already exists: /streamfs/d/s"})
    assert door.error("POST", "/api/v1/files?path=/streamfs/d") == (
        409, {"error": "directory already exists: /streamfs/d"})
    assert door.error("POST", "/api/v1/files?path=/streamfs") == (
        409, {"error": "directory already exists: /streamfs"})
    assert door.error("DELETE", "/api/v1/files?path=/streamfs/d") == (
        409, {"error": "directory not empty: /streamfs/d"})
    assert door.error("POST", "/api/v1/directories?path=/streamfs/e&mode=9x") == (
        400, {"error": "invalid mode"})
    assert door.error("POST", "/api/v1/rename?path=/streamfs/d")[0] == 400  # no newPath
    assert door.error("PATCH", "/api/v1/files?path=/streamfs/d") == (
        405, {"error": "method not allowed"})
    assert door.error("GET", "/api/v1/nonsense")[0] == 404
    # Confinement holds for path= as for native paths.
    for target in ("/api/v1/stat?path=/streamfs/../etc",
                   "/api/v1/stat?path=/streamfs/%2e%2e/etc",
                   "/api/v1/files?path=/streamfs/%2E%2E",
                   "/api/v1/stat?path=/streamfs/a%00b",
                   "/api/v1/stat?path=/streamfs/" + "n" * 300,
                   "/api/v1/stat?path=/" + "a/" * 2100,
                   "/api/v1/stat?path=streamfs"):
        status, body = door.error("GET", target)
        assert status == 400 and "error" in body, target
    with pytest.raises(AGFSClientError, match="not found"):
        door.client.cat("/streamfs/missing", stream=True)


def test_native_routes_are_unchanged(door):
    status, _, body = door.raw("PUT", "/native", b"abc")
    assert status == 201 and json.loads(body) == {"path": "/native", "written": 3}
    status, _, body = door.raw("GET", "/")
    assert status == 200 and [e["name"] for e in json.loads(body)] == ["native"]
    assert door.client.stat("/streamfs/native")["size"] == 3
    status, _, _ = door.raw("DELETE", "/native")
    assert status == 204 and door.client.ls("/streamfs") == []
    status, _, body = door.raw("GET", "/%2e%2e/x")
    assert status == 400 and "error" in json.loads(body)


async def test_the_agfs_mount_path_is_a_constructor_argument():
    tree = Tree(StreamSettings(), os.getuid(), os.getgid())
    settings = HTTPSettings(addresses=(("127.0.0.1", 0),), agfs_path="/data/streams")
    door = HTTPDoor(AGFSRoutes(tree, settings), settings, token=TOKEN.encode(),
                    token_owner=ROOT)
    async with trio.open_nursery() as nursery:
        [listener, *_] = await nursery.start(door.serve)
        port = listener.socket.getsockname()[1]
        client = agfs_client(port)

        def drive():
            try:
                assert names(client.ls("/")) == {"data"}
                assert names(client.ls("/data")) == {"streams"}
                assert client.stat("/data")["meta"]["Type"] == "mount-point"
                client.write("/data/streams/s", b"abc")
                assert names(client.ls("/data/streams")) == {"s"}
                assert client.cat("/data/streams/s") == b"abc"
                with pytest.raises(AGFSClientError, match="not found"):
                    client.stat("/streamfs/s")
            finally:
                client.session.close()

        await trio.to_thread.run_sync(drive)
        assert tree.child(tree.root, b"s").stream.bytes_written == 3
        nursery.cancel_scope.cancel()


def test_pyagfs_with_the_token_acts_as_root(door):
    client, mnt = door.client, door.mount
    assert client.write("/streamfs/s", b"abc") == "Written 3 bytes"
    assert os.stat(mnt / "s").st_uid == 0
    assert client.cat("/streamfs/s") == b"abc"
    assert names(client.ls("/streamfs")) == {"s"}
    assert client.rm("/streamfs/s") == {"message": "deleted"}
    assert os.listdir(mnt.path) == []


def test_pyagfs_without_a_token_reads_what_all_may_read_and_writes_nothing(door):
    mnt = door.mount
    public, private = mnt / "public", mnt / "private"
    public.write_bytes(b"for everyone")
    public.chmod(0o644)
    private.write_bytes(b"root only")
    private.chmod(0o600)
    anonymous = agfs_client(door.port, anonymous=True)
    try:
        assert anonymous.cat("/streamfs/public") == b"for everyone"
        assert names(anonymous.ls("/streamfs")) == {"public", "private"}
        with pytest.raises(AGFSClientError, match="permission denied"):
            anonymous.cat("/streamfs/private")
        with pytest.raises(AGFSClientError, match="permission denied"):
            anonymous.write("/streamfs/public", b"more")
        with pytest.raises(AGFSClientError, match="permission denied"):
            anonymous.write("/streamfs/new", b"x")
        with pytest.raises(AGFSClientError, match="permission denied"):
            anonymous.mkdir("/streamfs/dir")
        with pytest.raises(AGFSClientError, match="permission denied"):
            anonymous.rm("/streamfs/public")
    finally:
        anonymous.session.close()
    assert sorted(os.listdir(mnt.path)) == ["private", "public"]
    assert xattr(public, "bytes_written") == 12


def test_unimplemented_agfs_routes_answer_501(door):
    door.client.write("/streamfs/s", b"abc")
    handle = door.client.open_handle("/streamfs/s")
    for method, target in [("GET", f"/api/v1/handles/{handle.handle_id}/stream"),
                           ("POST", f"/api/v1/handles/{handle.handle_id}/seek?offset=0"),
                           ("POST", "/api/v1/symlink?path=/streamfs/l"),
                           ("GET", "/api/v1/readlink?path=/streamfs/l"),
                           ("GET", "/api/v1/plugins")]:
        status, body = door.error(method, target)
        assert status == 501 and "not implemented" in body["error"], (target, status, body)
    handle.close()


O_WRONLY, O_RDWR, O_CREATE, O_EXCL = 1, 2, 0o100, 0o200  # AGFS's open flags


def test_a_handle_reads_history_then_waits_for_live_data_until_rm(door):
    """As a file read through the mount: what is queued (history first), else the next write."""
    client, mnt = door.client, door.mount
    client.write("/streamfs/s", b"history\n")
    handle = client.open_handle("/streamfs/s")
    assert xattr(mnt / "s", "readers") == 1  # counted while the handle is open
    assert client.stat("/streamfs/s")["meta"]["Content"]["active_readers"] == "1"
    assert handle.read(100) == b"history\n"
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(handle.read, 100)
        wait_parked(mnt / "s")
        with open(mnt / "s", "ab", buffering=0) as writer:
            writer.write(b"live\n")
            assert waiting.result(timeout=10) == b"live\n"
            writer.write(b"more\n")
        assert handle.read(100) == b"more\n"
        waiting = pool.submit(handle.read, 100)
        wait_parked(mnt / "s")
        os.unlink(mnt / "s")  # rm ends the stream: the waiting read gets EOF
        assert waiting.result(timeout=10) == b""
    assert handle.read_at(100, 0) == b"history\nlive\nmore\n"  # pread: from the ring
    assert handle.read(100) == b""
    info = handle.info()
    assert info["handle_id"] == handle.handle_id and info["path"] == "/streamfs/s"
    assert [entry["handle_id"] for entry in client.list_handles()] == [handle.handle_id]
    assert handle.close() is None and client.list_handles() == []
    with pytest.raises(AGFSClientError, match=f"^handle {handle.handle_id} not found$"):
        client.handle_read(handle.handle_id, 1)


def test_a_handle_writes_one_chunk_per_request(door):
    client, mnt = door.client, door.mount
    handle = client.open_handle("/streamfs/w", flags=O_WRONLY | O_CREATE)
    assert os.stat(mnt / "w").st_mode & 0o7777 == 0o644
    with open(mnt / "w", "rb", buffering=0) as reader:
        assert handle.write(b"one\n") == 4
        assert reader.read(100) == b"one\n"
        assert handle.write_at(b"two\n", 0) == 4  # a stream appends: the offset is not used
        assert reader.read(100) == b"two\n"
    assert xattr(mnt / "w", "chunks_written") == 2 and xattr(mnt / "w", "writers") == 1
    assert client.handle_sync(handle.handle_id) == {"message": "synced"}
    assert handle.stat()["meta"]["Content"]["total_written"] == "8"
    handle.close()
    assert xattr(mnt / "w", "writers") == 0
    both = client.open_handle("/streamfs/w", flags=O_RDWR)
    assert both.read(100) == b"one\ntwo\n"  # its own read side, from the history
    both.write(b"three\n")
    assert both.read(100) == b"three\n"
    both.close()


def test_handle_errors(door):
    client, mnt = door.client, door.mount
    client.write("/streamfs/s", b"abc")
    (mnt / "d").mkdir()
    for flags, path, error in [
            (0, "/streamfs/missing", "stream not found: /streamfs/missing"),
            (O_WRONLY | O_CREATE | O_EXCL, "/streamfs/s", "stream already exists: /streamfs/s"),
            (0, "/streamfs/d", "is a directory: /streamfs/d"),
            (0, "/streamfs", "is a directory: /streamfs"),
            (3, "/streamfs/s", "invalid flags parameter")]:
        with pytest.raises(AGFSClientError, match=f"^{error}$"):
            client.open_handle(path, flags=flags)
    reading = client.open_handle("/streamfs/s")
    writing = client.open_handle("/streamfs/s", flags=O_WRONLY)
    with pytest.raises(AGFSClientError, match="the handle is not open for writing"):
        reading.write(b"x")
    with pytest.raises(AGFSClientError, match="the handle is not open for reading"):
        writing.read(1)
    for method, target, status, error in [
            ("GET", f"/api/v1/handles/{reading.handle_id}/nonsense", 404,
             "unknown operation: nonsense"),
            ("GET", "/api/v1/handles/x/read", 400, "invalid handle ID: must be a number"),
            ("PUT", f"/api/v1/handles/{reading.handle_id}/read", 405, "method not allowed"),
            ("GET", "/api/v1/handles/open?path=/streamfs/s", 405, "method not allowed"),
            ("GET", f"/api/v1/handles/{reading.handle_id}/read?offset=-1", 400,
             "invalid offset parameter"),
            ("POST", "/api/v1/handles/open?path=/streamfs/s&mode=9", 400,
             "invalid mode parameter"),
            ("POST", "/api/v1/handles/open?path=/streamfs/s&lease=301", 400,
             "invalid lease parameter (1 to 300 seconds)")]:
        assert door.error(method, target) == (status, {"error": error}), target
    reading.close()
    writing.close()
    assert xattr(mnt / "s", "readers") == 0 and xattr(mnt / "s", "writers") == 0


def test_a_handle_is_its_openers_alone(door):
    """Another identity is told the handle does not exist; who may not read the stream
    may not open it."""
    client, mnt = door.client, door.mount
    client.write("/streamfs/s", b"abc")
    (mnt / "s").chmod(0o600)
    handle = client.open_handle("/streamfs/s")
    anonymous = agfs_client(door.port, anonymous=True)
    try:
        for call in (lambda: anonymous.handle_read(handle.handle_id, 10),
                     lambda: anonymous.handle_write(handle.handle_id, b"x"),
                     lambda: anonymous.get_handle_info(handle.handle_id),
                     lambda: anonymous.close_handle(handle.handle_id)):
            with pytest.raises(AGFSClientError, match=f"^handle {handle.handle_id} not found$"):
                call()
        assert anonymous.list_handles() == []
        with pytest.raises(AGFSClientError, match="^open: /streamfs/s: permission denied$"):
            anonymous.open_handle("/streamfs/s")
    finally:
        anonymous.session.close()
    assert handle.read(10) == b"abc"  # still open for its owner
    handle.close()


def test_a_handle_nobody_uses_is_released_when_its_lease_runs_out(door):
    client, mnt = door.client, door.mount
    client.write("/streamfs/s", b"abc")
    handle = client.open_handle("/streamfs/s", lease=1)
    assert handle.info()["lease"] == 1
    assert client.renew_handle(handle.handle_id, lease=2)["lease"] == 2
    assert xattr(mnt / "s", "readers") == 1
    wait_until(lambda: xattr(mnt / "s", "readers") == 0, what="the lease to run out")
    with pytest.raises(AGFSClientError, match="not found"):
        handle.info()


def test_a_read_whose_client_hangs_up_loses_nothing(door):
    """The client going away cancels the waiting read: the next write stays queued."""
    client, mnt = door.client, door.mount
    client.write("/streamfs/s", b"")
    client.create("/streamfs/t")
    handle = client.open_handle("/streamfs/t")
    with socket.create_connection(("127.0.0.1", door.port)) as sock:
        sock.sendall(f"GET /api/v1/handles/{handle.handle_id}/read?size=100 HTTP/1.1\r\n"
                     f"Host: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode())
        wait_parked(mnt / "t")
    wait_parked(mnt / "t", reads=0, timeout=5)  # at once, not at the 30 s bound
    with open(mnt / "t", "ab", buffering=0) as writer:
        writer.write(b"kept\n")
    assert handle.read(100) == b"kept\n"
    handle.close()


def run_door(routes: AGFSRoutes, drive) -> None:
    """Serve ``routes`` in this thread's own trio run while ``drive(port)`` runs in another
    thread; the run ends (as a daemon stops) when ``drive`` returns."""

    async def main():
        door = HTTPDoor(routes, HTTPSettings(addresses=(("127.0.0.1", 0),)),
                        token=TOKEN.encode(), token_owner=ROOT)
        async with trio.open_nursery() as nursery:
            [listener, *_] = await nursery.start(door.serve)
            await trio.to_thread.run_sync(drive, listener.socket.getsockname()[1])
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_handles_have_a_wait_bound_a_limit_and_go_when_the_daemon_stops():
    tree = Tree(StreamSettings(), os.getuid(), os.getgid())
    routes = AGFSRoutes(tree, HTTPSettings())
    routes.handles.read_wait = 0.2
    routes.handles.limit = 2

    def drive(port):
        client = agfs_client(port)
        try:
            client.write("/streamfs/s", b"abc")
            first, second = client.open_handle("/streamfs/s"), client.open_handle("/streamfs/s")
            assert first.read(100) == b"abc"
            assert first.read(100) == b""  # nothing came within the wait: 200, empty
            with pytest.raises(AGFSClientError, match=r"^too many open handles \(2 per user\)$"):
                client.open_handle("/streamfs/s")
            second.close()
            client.open_handle("/streamfs/s")
        finally:
            client.session.close()

    run_door(routes, drive)
    stream = tree.child(tree.root, b"s").stream
    assert stream.statistics().readers == 0 and len(routes.handles) == 0

def test_chmod_as_through_the_mount(door):
    client, mnt = door.client, door.mount
    client.write("/streamfs/s", b"abc")
    assert client.chmod("/streamfs/s", 0o600) == {"message": "permissions changed"}
    assert os.stat(mnt / "s").st_mode & 0o7777 == 0o600
    client.mkdir("/streamfs/d")
    assert client.chmod("/streamfs/d", 0o1777) == {"message": "permissions changed"}
    assert client.stat("/streamfs/d")["mode"] == 0o1777 and (mnt / "d").is_dir()
    with pytest.raises(AGFSClientError, match="^stream not found: /streamfs/missing$"):
        client.chmod("/streamfs/missing", 0o600)
    for body in (b'{"mode": 70000}', b'{"mode": "600"}', b"{}"):
        status, _, answer = door.raw("POST", "/api/v1/chmod?path=/streamfs/s", body)
        assert (status, json.loads(answer)) == (400, {"error": "invalid mode"}), body
    status, _, answer = door.raw("POST", "/api/v1/chmod?path=/streamfs/s", b"[")
    assert (status, json.loads(answer)) == (400, {"error": "invalid request body"})
    anonymous = agfs_client(door.port, anonymous=True)
    try:  # only the owner or root may chmod, as through the mount
        with pytest.raises(AGFSClientError, match="^chmod: /streamfs/d: permission denied$"):
            anonymous.chmod("/streamfs/d", 0o777)
    finally:
        anonymous.session.close()
    assert os.stat(mnt / "d").st_mode & 0o7777 == 0o1777


def test_truncate_is_accepted_and_ignored_as_through_the_mount(door):
    client, mnt = door.client, door.mount
    client.write("/streamfs/s", b"kept")
    status, _, answer = door.raw("POST", "/api/v1/truncate?path=/streamfs/s&size=0")
    assert (status, json.loads(answer)) == (200, {"message": "truncated"})
    assert client.cat("/streamfs/s") == b"kept" and xattr(mnt / "s", "bytes_written") == 4
    for target, error in [("/api/v1/truncate?path=/streamfs/s", "size parameter is required"),
                          ("/api/v1/truncate?path=/streamfs/s&size=-1",
                           "size must be non-negative")]:
        assert door.error("POST", target) == (400, {"error": error})
    assert door.error("POST", "/api/v1/truncate?path=/streamfs/missing&size=0") == (
        404, {"error": "stream not found: /streamfs/missing"})
    (mnt / "d").mkdir()
    assert door.error("POST", "/api/v1/truncate?path=/streamfs/d&size=0") == (
        409, {"error": "is a directory: /streamfs/d"})
    anonymous = http.client.HTTPConnection("127.0.0.1", door.port, timeout=10)
    try:  # truncating needs write permission, as truncate(2) does
        anonymous.request("POST", "/api/v1/truncate?path=/streamfs/s&size=0")
        response = anonymous.getresponse()
        assert (response.status, json.loads(response.read())) == (
            403, {"error": "truncate: /streamfs/s: permission denied"})
    finally:
        anonymous.close()


def test_grep_and_digest_refuse_a_stream_with_agfs_words(door):
    client, mnt = door.client, door.mount
    client.write("/streamfs/s", b"hello\n")
    with pytest.raises(AGFSClientError,
                       match="^grep failed: use stream mode for reading stream files$"):
        client.grep("/streamfs/s", "hello")
    with pytest.raises(AGFSClientError, match="^failed to calculate digest: use stream mode "
                                              "for reading stream files$"):
        client.digest("/streamfs/s")
    with pytest.raises(AGFSClientError,
                       match="^failed to stat path: stream not found: /streamfs/missing$"):
        client.grep("/streamfs/missing", "x")
    with pytest.raises(AGFSClientError, match="^failed to calculate digest: stream not found: "
                                              "/streamfs/missing$"):
        client.digest("/streamfs/missing")
    with pytest.raises(AGFSClientError, match="^path is a directory, use recursive=true"):
        client.grep("/streamfs", "x")
    for route, body, error in [
            ("grep", {"path": "/streamfs/s"}, "pattern is required"),
            ("grep", {"pattern": "x"}, "path is required"),
            ("digest", {"path": "/streamfs/s", "algorithm": "sha1"},
             "unsupported algorithm: sha1 (supported: xxh3, md5)"),
            ("digest", {"algorithm": "md5"}, "path is required")]:
        status, _, answer = door.raw("POST", f"/api/v1/{route}", json.dumps(body).encode())
        assert (status, json.loads(answer)) == (400, {"error": error}), body
    (mnt / "s").chmod(0o600)
    anonymous = agfs_client(door.port, anonymous=True)
    try:  # who may not read a stream learns no more than that
        with pytest.raises(AGFSClientError, match="^failed to stat path: read: /streamfs/s: "
                                                  "permission denied$"):
            anonymous.grep("/streamfs/s", "hello")
    finally:
        anonymous.session.close()


@pytest.mark.skipif(not AGFS_FUSE, reason="AGFS_FUSE does not name an agfs-fuse binary: CI "
                    "cannot build it (Go modules need the network); docs/agfs-anchor-run.md")
@pytest.mark.timeout(120)
def test_agfs_fuse_on_the_door_reads_and_writes_live_streams(mount_with, tmp_path):
    """AGFS's own FUSE client, unmodified, mounted on the door (anonymous: it sends no token).

    It opens files through /api/v1/handles, and reads through /read when
    /stream is refused: ``cat`` through it follows a live stream, each line
    arriving while the writer is still writing, until rm. Its writes are one
    handle write each, read live through our mount. Skipped unless AGFS_FUSE
    names the binary only because CI cannot build agfs-fuse (no network for
    its Go modules); the handle routes themselves are tested above with
    pyagfs, and the manual run is in docs/agfs-anchor-run.md.
    """
    port = free_port()
    mnt = mount_with("--http", f"127.0.0.1:{port}")
    wait_until(lambda: accepts(port), what="the HTTP door to accept connections")
    mnt.path.chmod(0o1777)  # agfs-fuse acts as nobody: a public drop directory
    agfs_mnt = tmp_path / "agfs"
    agfs_mnt.mkdir()
    log_path = tmp_path / "agfs-fuse.log"
    cat = None
    with open(log_path, "wb") as log:
        agfs = subprocess.Popen([AGFS_FUSE, "--agfs-server-url", f"http://127.0.0.1:{port}",
                                 "--mount", str(agfs_mnt), "--log-level", "debug"],
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: os.path.ismount(agfs_mnt) or agfs.poll() is not None,
                       what="agfs-fuse to mount")
            assert agfs.poll() is None, log_path.read_text()
            streams = agfs_mnt / "streamfs"

            with open(mnt / "live", "wb", buffering=0) as writer:  # a live stream
                (mnt / "live").chmod(0o644)
                writer.write(b"history\n")
                cat = subprocess.Popen(["cat", str(streams / "live")], stdout=subprocess.PIPE)
                assert read_some(cat.stdout, 8) == b"history\n"
                for n in range(3):  # each written after cat parked, arriving as written
                    wait_parked(mnt / "live")
                    assert xattr(mnt / "live", "readers") == 1
                    writer.write(b"live %d\n" % n)
                    assert read_some(cat.stdout, 7) == b"live %d\n" % n
            wait_parked(mnt / "live")
            os.unlink(mnt / "live")  # rm ends the stream: cat gets EOF
            assert cat.wait(timeout=10) == 0 and cat.stdout.read() == b""

            with open(streams / "made", "ab", buffering=0) as writer:  # handle writes
                writer.write(b"one\n")
                with open(mnt / "made", "rb", buffering=0) as reader:
                    assert reader.read(100) == b"one\n"
                    writer.write(b"two\n")
                    assert reader.read(100) == b"two\n"
            assert os.stat(mnt / "made").st_uid == pwd.getpwnam("nobody").pw_uid
            assert xattr(mnt / "made", "chunks_written") == 2
            assert xattr(mnt / "made", "writers") == 0  # released on close
            os.unlink(streams / "made")
            assert os.listdir(mnt.path) == []
            text = log_path.read_text()
            assert "Opened remote handle" in text and "HandleFS not supported" not in text
        finally:
            if cat is not None:
                if cat.poll() is None:
                    cat.kill()  # ends once its read returns: at most the 30 s read bound
                    cat.wait(timeout=40)
                cat.stdout.close()
            subprocess.run(["fusermount3", "-u", "-z", str(agfs_mnt)], check=False)
            try:
                agfs.wait(timeout=10)
            except subprocess.TimeoutExpired:
                agfs.kill()
                agfs.wait()


def read_some(pipe, size: int, timeout: float = 10.0) -> bytes:
    """``size`` bytes from ``pipe`` as they come; fails if they take over ``timeout`` s."""
    data = b""
    while len(data) < size:
        ready, _, _ = select.select([pipe], [], [], timeout)
        assert ready, f"nothing after {data!r} within {timeout} s"
        piece = os.read(pipe.fileno(), size - len(data))
        assert piece, f"EOF after {data!r}"
        data += piece
    return data
