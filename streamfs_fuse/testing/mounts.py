"""A streamfs-fuse daemon mounted in the foreground, and the processes started against it.

Every mount is torn down even on failure: processes started through it are
killed by PID, the daemon is stopped with SIGTERM (which ends every stream,
so readers blocked in read() return), and a mount still left is lazily
unmounted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from .waits import wait_until
from ..mountinfo import is_mounted

#: In CI the mount tests must run: a missing /dev/fuse (or test program) is then a failure.
REQUIRE_MOUNT = os.environ.get("STREAMFS_REQUIRE_MOUNT") == "1"

#: The daemon's command line, without the mount point and options.
DAEMON = [sys.executable, "-m", "streamfs_fuse"]


class FuseUnavailable(RuntimeError):
    """This machine cannot mount: /dev/fuse is missing."""


def require_fuse() -> None:
    """Raise FuseUnavailable unless /dev/fuse exists."""
    if not os.path.exists("/dev/fuse"):
        raise FuseUnavailable("/dev/fuse is missing: mount tests need the fuse kernel module")


class Mount:
    """A streamfs-fuse daemon in the foreground, and the processes a test starts.

    ``wrapper`` prefixes the daemon's command line with a program that execs
    it (``("prlimit", "--nofile=1024:1024")``), so the daemon keeps its PID.
    Use it as a context manager, or call close().
    """

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

    def __enter__(self) -> Mount:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def spawn(self, args, **kwargs) -> subprocess.Popen:
        """Start a process that close() will kill if it is still running."""
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
        """Kill the spawned processes, stop the daemon (SIGKILL after 10 s) and unmount."""
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
