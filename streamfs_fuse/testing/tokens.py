"""The HTTP door's bearer token, for daemons started with ``--http-token``."""

from __future__ import annotations

import os
from pathlib import Path

TOKEN = "streamfs-test-token"
#: The header that carries it, for curl and ffmpeg, and as a line of a raw request.
AUTH = f"Authorization: Bearer {TOKEN}"


def write_token(directory: Path, owner: int = 0, mode: int = 0o600) -> Path:
    """A token file holding :data:`TOKEN`, owned by ``owner``."""
    path = directory / f"token-{owner}"
    path.write_text(TOKEN + "\n")
    path.chmod(mode)
    os.chown(path, owner, -1)
    return path
