"""Live video through the mount with the real ffmpeg, as users run it."""

import re
import shutil
import signal
import subprocess
import threading
import time

import pytest

from conftest import REQUIRE_MOUNT, wait_parked, wait_until, xattr

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


@pytest.fixture
def mpv(ffmpeg):
    if not shutil.which("mpv"):
        if REQUIRE_MOUNT:
            pytest.fail("mpv is missing but required here (scripts/test installs it)")
        pytest.skip("mpv is not installed")


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
    found, took = probe(live)
    assert {"codec_name=mpeg2video", "codec_name=mp2"} <= found, found
    assert took < 2.0, f"ffprobe of the live stream took {took:.2f}s"

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
    print(f"\nffprobe of the live stream took {took:.2f}s")
    print(f"frames written {written}; early {frames(early_log)}; late joiner {late_frames}"
          f" (resync messages: {len(errors(late_log))}); slow {frames(slow_log)}"
          f" after {dropped} dropped chunks")


def clip(seconds, *, bitrate="1M"):
    """A test-pattern MPEG-TS writer of ``seconds``, at about ``bitrate`` (constant)."""
    return ["ffmpeg", "-y", "-hide_banner", "-v", "error",
            "-f", "lavfi", "-i", f"testsrc=size=320x240:rate={FPS}:duration={seconds}",
            "-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}",
            "-c:v", "mpeg2video", "-b:v", bitrate, "-minrate", bitrate, "-maxrate", bitrate,
            "-bufsize", "500k", "-c:a", "mp2", "-flush_packets", "1", "-f", "mpegts"]


def probe(path):
    """ffprobe's codecs and duration for ``path``, and how long it took."""
    started = time.monotonic()
    done = subprocess.run(["ffprobe", "-v", "error", "-show_entries",
                           "stream=codec_name:format=duration", "-of",
                           "default=noprint_wrappers=1", str(path)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split()), time.monotonic() - started


def test_ffprobe_answers_at_once_on_an_idle_stream(ffmpeg, mnt):
    """libavformat reads 5 s of MPEG-TS, then seeks near the end and reads to EOF for
    the duration: that read gets EOF at the live edge, as on a growing file."""
    path = mnt / "idle.ts"
    subprocess.run([*clip(8), str(path)], check=True, capture_output=True, timeout=60,
                   stdin=subprocess.DEVNULL)
    found, took = probe(path)
    print(f"\nffprobe on an idle stream answered in {took:.2f}s")
    assert {"codec_name=mpeg2video", "codec_name=mp2"} <= found, found
    assert any(f.startswith("duration=8.") for f in found), found
    assert took < 2.0
    assert path.exists() and xattr(path, "readers") == 0


class Frames:
    """mpv's frame count from its status line, with the time each count was printed."""

    def __init__(self, stream):
        self.counts: list[tuple[float, int]] = []
        self.output = bytearray()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream):
        while data := stream.read1(65536):
            now = time.monotonic()
            self.output += data
            self.counts += [(now, int(n)) for n in re.findall(rb"FRAME (\d+)", data)]

    def played_by(self, moment):
        return max((n for t, n in self.counts if t <= moment), default=0)


def test_mpv_started_before_the_writer_plays_live(mpv, mnt):
    """mpv opens the path before anything is written, then plays while the writer writes.

    As it opens, libavformat reads 250 KB to estimate the duration (1 s at 2 Mbit/s):
    the seek that estimate makes gets EOF at the live edge; mpv's seek back to play
    then follows the stream, waiting at the live edge, as long as the stream lasts.
    """
    path = mnt / "live.ts"
    path.touch()
    player = mnt.spawn(["mpv", "--no-config", "--no-input-terminal", "--vo=null", "--ao=null",
                        "--term-status-msg=FRAME ${estimated-frame-number}", str(path)],
                       stdin=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    frames = Frames(player.stdout)
    wait_parked(path, 1, timeout=20)
    started = time.monotonic()
    writer = subprocess.run(["ffmpeg", "-re", *clip(5, bitrate="2M")[1:], str(path)],
                            capture_output=True, text=True, timeout=30,
                            stdin=subprocess.DEVNULL)
    ended = time.monotonic()
    assert writer.returncode == 0, writer.stderr
    played = frames.played_by(ended)
    first = min((t for t, n in frames.counts), default=None)
    log = frames.output.decode(errors="replace")[-2000:]
    assert first is not None, log
    print(f"\nmpv showed its first frame {first - started:.2f}s after the writer started"
          f" and played {played} of {5 * FPS} frames before it ended")
    assert played >= 50, log
    # Still playing: it waits at the live edge (nothing was removed).
    wait_parked(path, 1, timeout=10)
    assert player.poll() is None, log
