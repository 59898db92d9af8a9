"""Running programs as another, unprivileged user (needs root)."""

from __future__ import annotations

import pwd
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

#: The system user that permission tests and benchmarks run programs as.
UNPRIVILEGED_USER = "streamfs-test"


@contextmanager
def system_user(name: str = UNPRIVILEGED_USER) -> Iterator[str]:
    """The system user ``name``, created if missing and then removed again on exit."""
    created = False
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/bin/sh", name],
                       check=True)
        created = True
    try:
        yield name
    finally:
        if created:
            subprocess.run(["userdel", name], check=False)


def as_user(user, *command, **kwargs):
    """Run ``command`` as ``user`` (uid, gid and groups) and capture its output as text."""
    return subprocess.run(["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups",
                           *map(str, command)], capture_output=True, text=True, timeout=20,
                          **kwargs)
