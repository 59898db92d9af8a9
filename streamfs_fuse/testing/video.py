"""Live MPEG-TS made and decoded by the real ffmpeg, as users run it."""

from __future__ import annotations

import re

__all__ = ["DECODER", "FPS", "SECONDS", "WRITER", "Viewer", "errors", "frames"]

SECONDS = 10
FPS = 25

#: A live source: ``WRITER + [PATH]`` writes SECONDS of test pattern and tone at
#: real-time pace, each packet as it is made.
WRITER = [
    "ffmpeg", "-y", "-hide_banner", "-v", "error", "-stats", "-re",
    "-f", "lavfi", "-i", f"testsrc=size=320x240:rate={FPS}:duration={SECONDS}",
    "-f", "lavfi", "-i", f"sine=frequency=440:duration={SECONDS}",
    "-c:v", "mpeg2video", "-b:v", "1M", "-c:a", "mp2",
    "-flush_packets", "1", "-f", "mpegts",
]
#: Decodes MPEG-TS from stdin and prints its frame count and any decoder error.
DECODER = ["ffmpeg", "-hide_banner", "-v", "error", "-stats", "-f", "mpegts", "-i", "-",
           "-f", "null", "-"]


def frames(stderr: str) -> int:
    """The last frame count ffmpeg's ``-stats`` printed."""
    counts = re.findall(r"frame=\s*(\d+)", stderr)
    if not counts:
        raise AssertionError(f"no frame count in ffmpeg's output: {stderr!r}")
    return int(counts[-1])


def errors(stderr: str) -> list[str]:
    """ffmpeg's output lines other than its ``-stats`` progress."""
    lines = re.split(r"[\r\n]+", stderr)
    return [line for line in lines if line.strip() and not line.startswith("frame=")]


class Viewer:
    """``cat LIVE | ffmpeg -f mpegts -i - -f null -``: a reader that decodes.

    ``mount`` is a :class:`~.mounts.Mount`, whose ``spawn`` it starts both with.
    """

    def __init__(self, mount, live) -> None:
        self.cat = mount.spawn(["cat", live])
        self.decoder = mount.spawn(DECODER, stdin=self.cat.stdout, text=True)
        self.cat.stdout.close()

    def finish(self) -> tuple[int, int, str]:
        """Wait for both to end: the decoder's status, cat's, and the decoder's output."""
        _, stderr = self.decoder.communicate(timeout=30)
        self.cat.wait(10)
        return self.decoder.returncode, self.cat.returncode, stderr
