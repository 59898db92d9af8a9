"""Fixtures that mount a real streamfs-fuse in a temporary directory.

Every mount is torn down even when the test fails: processes the test
started are killed by PID, the daemon is stopped with SIGTERM (which ends
every stream, so readers blocked in read() return), and a mount still left
is lazily unmounted.
"""

from __future__ import annotations

import os
import pwd
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from streamfs_fuse.mount import is_mounted

#: In CI the mount tests must run: a missing /dev/fuse is then a failure.
REQUIRE_MOUNT = os.environ.get("STREAMFS_REQUIRE_MOUNT") == "1"

DAEMON = [sys.executable, "-m", "streamfs_fuse"]


def require_fuse() -> None:
    if not os.path.exists("/dev/fuse"):
        if REQUIRE_MOUNT:
            pytest.fail("/dev/fuse is missing but STREAMFS_REQUIRE_MOUNT=1")
        pytest.skip("/dev/fuse is missing: mount tests need the fuse kernel module")


def xattr(path, name):
    """A stream's figure from its user.streamfs.* extended attribute."""
    value = os.getxattr(path, f"user.streamfs.{name}")
    return value.decode() if name == "slow_reader" else int(value)


def wait_until(predicate, timeout=10.0, interval=0.02, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def wait_parked(path, reads=1, timeout=60.0):
    """Wait until the daemon reports ``reads`` reads of ``path`` parked, waiting for data."""
    wait_until(lambda: xattr(path, "waiting_reads") == reads, timeout=timeout,
               what=f"{reads} parked read(s) of {path.name}")


def free_port() -> int:
    """A loopback TCP port nobody listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def accepts(port: int) -> bool:
    """Whether something accepts connections on the loopback ``port``."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


class Mount:
    """A streamfs-fuse daemon in the foreground, and the processes a test starts."""

    def __init__(self, path: Path, log_path: Path, args: list[str],
                 wrapper: tuple[str, ...] = ()) -> None:
        self.path = path
        self.log_path = log_path
        self.processes: list[subprocess.Popen] = []
        self._log = open(log_path, "wb")
        self.daemon = subprocess.Popen(
            [*wrapper, *DAEMON, str(path), "-f", *args], stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until(lambda: is_mounted(str(path)) or self.daemon.poll() is not None,
                       what="the mount")
            if self.daemon.poll() is not None:
                raise AssertionError(f"daemon exited with {self.daemon.returncode}:\n{self.log()}")
        except BaseException:
            self.close()
            raise

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def spawn(self, args, **kwargs) -> subprocess.Popen:
        """Start a process that the teardown will kill if it is still running."""
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        process = subprocess.Popen(args, **kwargs)
        self.processes.append(process)
        return process

    def stop(self, sig=signal.SIGTERM, timeout=10.0) -> int:
        """Signal the daemon and wait for it to exit; return its status."""
        if self.daemon.poll() is None:
            self.daemon.send_signal(sig)
        return self.daemon.wait(timeout)

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
        try:
            self.stop(timeout=10)
        except subprocess.TimeoutExpired:
            self.daemon.kill()
            self.daemon.wait()
        if is_mounted(str(self.path)):
            subprocess.run(["fusermount3", "-u", "-z", str(self.path)], check=False)
        for process in self.processes:
            try:
                process.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self._log.close()


@pytest.fixture
def mount_with(tmp_path):
    """Mount with extra command-line arguments: ``mount_with("--ring-buffer-size=1KB")``.

    ``wrapper`` prefixes the daemon's command line with a program that execs
    it (``("prlimit", "--nofile=1024:1024")``), so the daemon keeps its PID.
    """
    require_fuse()
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
    from redis_servers import RedisServer  # here: redis_servers imports this module
    server = RedisServer(tmp_path / "redis")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory):
    """A Redis Cluster of 3 masters with a replica each, shared by a module's tests."""
    from redis_servers import RedisCluster
    cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster"))
    yield cluster
    cluster.stop()


@pytest.fixture
def unprivileged_user():
    if os.geteuid() != 0:
        pytest.skip("creating a user needs root")
    name = "streamfs-test"
    created = False
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/bin/sh", name],
                       check=True)
        created = True
    yield name
    if created:
        subprocess.run(["userdel", name], check=False)


def as_user(user, *command, **kwargs):
    return subprocess.run(["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups",
                           *map(str, command)], capture_output=True, text=True, timeout=20,
                          **kwargs)


@pytest.fixture
def world_readable_dir():
    """A directory other users can traverse (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="streamfs-perm-"))
    os.chmod(path, 0o755)
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=False)
