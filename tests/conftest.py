"""pytest fixtures built on the harness, streamfs_fuse.testing.

Tests import helpers from the harness, never from here. What is missing on
the machine (/dev/fuse, root) is a skip, or a failure under
STREAMFS_REQUIRE_MOUNT=1, as in CI.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from streamfs_fuse.testing import (REQUIRE_MOUNT, FuseUnavailable, Mount, RedisCluster,
                                   RedisServer, require_fuse, system_user)


@pytest.fixture(scope="session")
def fuse_device() -> None:
    """/dev/fuse is there: skip without it (fail under STREAMFS_REQUIRE_MOUNT=1)."""
    try:
        require_fuse()
    except FuseUnavailable as missing:
        if REQUIRE_MOUNT:
            pytest.fail(f"{missing}, but STREAMFS_REQUIRE_MOUNT=1")
        pytest.skip(str(missing))


@pytest.fixture
def mount_with(tmp_path, fuse_device):
    """Mount with extra command-line arguments: ``mount_with("--ring-buffer-size=1KB")``.

    ``wrapper`` prefixes the daemon's command line with a program that execs
    it (``("prlimit", "--nofile=1024:1024")``), so the daemon keeps its PID.
    """
    mounts: list[Mount] = []

    def start(*args: str, name: str = "mnt", parent: Path | None = None,
              wrapper: tuple[str, ...] = ()) -> Mount:
        path = (parent or tmp_path) / name
        path.mkdir()
        mount = Mount(path, tmp_path / f"{name}.log", list(args), wrapper)
        mounts.append(mount)
        return mount

    yield start
    for mount in reversed(mounts):
        mount.close()


@pytest.fixture
def mnt(mount_with) -> Mount:
    """A mount with the default settings."""
    return mount_with()


@pytest.fixture
def redis_server(tmp_path):
    """A standalone redis-server on a free port, stopped after the test."""
    server = RedisServer(tmp_path / "redis")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory):
    """A Redis Cluster of 3 masters with a replica each, shared by a module's tests."""
    cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster"))
    yield cluster
    cluster.stop()


@pytest.fixture
def unprivileged_user():
    """A system user without privileges, created for the test if missing (needs root)."""
    if os.geteuid() != 0:
        pytest.skip("creating a user needs root")
    with system_user() as name:
        yield name


@pytest.fixture
def world_readable_dir():
    """A directory other users can traverse (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="streamfs-perm-"))
    os.chmod(path, 0o755)
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=False)
