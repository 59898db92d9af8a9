"""Live video through the mount with the real ffmpeg, as users run it."""

import re
import shutil
import signal
import subprocess
import time

import pytest

from conftest import REQUIRE_MOUNT, wait_until, xattr

SECONDS = 10
FPS = 25

WRITER = [
    "ffmpeg", "-y", "-hide_banner", "-v", "error", "-stats", "-re",
    "-f", "lavfi", "-i", f"testsrc=size=320x240:rate={FPS}:duration={SECONDS}",
    "-f", "lavfi", "-i", f"sine=frequency=440:duration={SECONDS}",
    "-c:v", "mpeg2video", "-b:v", "1M", "-c:a", "mp2",
    # Write each packet as it is made, as a live source does.
    "-flush_packets", "1", "-f", "mpegts",
]
DECODER = ["ffmpeg", "-hide_banner", "-v", "error", "-stats", "-f", "mpegts", "-i", "-",
           "-f", "null", "-"]


@pytest.fixture
def ffmpeg():
    if not (shutil.which("ffmpeg") and shutil.which("ffprobe")):
        if REQUIRE_MOUNT:
            pytest.fail("ffmpeg is missing but the video test is required here")
        pytest.skip("ffmpeg and ffprobe are not installed")


def frames(stderr: str) -> int:
    counts = re.findall(r"frame=\s*(\d+)", stderr)
    assert counts, f"no frame count in ffmpeg's output: {stderr!r}"
    return int(counts[-1])


def errors(stderr: str) -> list[str]:
    lines = re.split(r"[\r\n]+", stderr)
    return [line for line in lines if line.strip() and not line.startswith("frame=")]


class Viewer:
    """``cat LIVE | ffmpeg -f mpegts -i - -f null -``: a reader that decodes."""

    def __init__(self, mnt, live):
        self.cat = mnt.spawn(["cat", live])
        self.decoder = mnt.spawn(DECODER, stdin=self.cat.stdout, text=True)
        self.cat.stdout.close()

    def finish(self):
        _, stderr = self.decoder.communicate(timeout=30)
        self.cat.wait(10)
        return self.decoder.returncode, self.cat.returncode, stderr


def test_live_mpegts_reaches_early_late_and_slow_viewers(ffmpeg, mount_with):
    """Early viewer: every frame. Late joiner: history, then live. Slow: drops only its own."""
    mnt = mount_with("--channel-buffer-size=256KB", "--ring-buffer-size=2MB")
    live = mnt / "live"
    live.touch()
    early = Viewer(mnt, live)
    slow = Viewer(mnt, live)
    wait_until(lambda: xattr(live, "readers") == 2, what="the early viewers")
    writer = mnt.spawn([*WRITER, str(live)], text=True)
    started = time.monotonic()

    time.sleep(1)
    slow.cat.send_signal(signal.SIGSTOP)  # the slow viewer stalls for 3 s
    time.sleep(3)
    slow.cat.send_signal(signal.SIGCONT)

    time.sleep(max(0.0, started + SECONDS / 2 - time.monotonic()))
    late = Viewer(mnt, live)
    probe = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_name",
                            "-of", "default=noprint_wrappers=1", live],
                           capture_output=True, text=True, timeout=30)
    assert probe.returncode == 0, probe.stderr
    assert {"codec_name=mpeg2video", "codec_name=mp2"} <= set(probe.stdout.split()), probe.stdout

    _, written_log = writer.communicate(timeout=SECONDS + 20)
    assert writer.returncode == 0, written_log
    written = frames(written_log)
    assert written == SECONDS * FPS
    dropped = xattr(live, "dropped_chunks")
    live.unlink()  # every viewer drains, gets EOF and ends cleanly

    results = {name: viewer.finish() for name, viewer in
               [("early", early), ("late", late), ("slow", slow)]}
    for name, (decoder_status, cat_status, _) in results.items():
        assert (decoder_status, cat_status) == (0, 0), (name, results[name])
    early_log, late_log, slow_log = (results[n][2] for n in ("early", "late", "slow"))
    assert frames(early_log) == written and errors(early_log) == []
    # Opened after half the video: more than the live half means history came first.
    late_frames = frames(late_log)
    assert written // 2 < late_frames <= written
    assert dropped > 0 and frames(slow_log) < written
    print(f"\nframes written {written}; early {frames(early_log)}; late joiner {late_frames}"
          f" (resync messages: {len(errors(late_log))}); slow {frames(slow_log)}"
          f" after {dropped} dropped chunks")
