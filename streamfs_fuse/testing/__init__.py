"""The plain harness shared by the tests and the benchmark, as trio ships trio.testing.

It starts real processes (the daemon, redis-server, programs as other users)
and waits on their state. It imports nothing of the package but
``streamfs_fuse.settings`` and ``streamfs_fuse.mountinfo``, and neither pyfuse3
nor pytest: the pytest fixtures in tests/conftest.py are built on it.
"""

from .mounts import DAEMON, REQUIRE_MOUNT, FuseUnavailable, Mount, is_mounted, require_fuse
from .net import accepts, free_port
from .redis import RedisCluster, RedisServer, cli, scan, stray_keys
from .tokens import AUTH, TOKEN, write_token
from .users import UNPRIVILEGED_USER, as_user, system_user
from .waits import wait_parked, wait_until, xattr

__all__ = [
    "DAEMON", "REQUIRE_MOUNT", "FuseUnavailable", "Mount", "is_mounted", "require_fuse",
    "accepts", "free_port",
    "RedisCluster", "RedisServer", "cli", "scan", "stray_keys",
    "AUTH", "TOKEN", "write_token",
    "UNPRIVILEGED_USER", "as_user", "system_user",
    "wait_parked", "wait_until", "xattr",
]
