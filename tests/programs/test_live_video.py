"""Live video through the mount with the real ffmpeg, as users run it."""

import os
import re
import shutil
import signal
import subprocess
import threading
import time

import pytest

from streamfs_fuse.testing import REQUIRE_MOUNT, wait_parked, wait_until, xattr
from streamfs_fuse.testing.video import FPS, SECONDS, WRITER, Viewer, errors, frames

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


def clip(seconds, *, bitrate="1M", audio_bitrate=None):
    """A test-pattern MPEG-TS writer of ``seconds``, video at about ``bitrate`` (constant)."""
    audio = ["-b:a", audio_bitrate] if audio_bitrate else []
    return ["ffmpeg", "-y", "-hide_banner", "-v", "error",
            "-f", "lavfi", "-i", f"testsrc=size=320x240:rate={FPS}:duration={seconds}",
            "-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}",
            "-c:v", "mpeg2video", "-b:v", bitrate, "-minrate", bitrate, "-maxrate", bitrate,
            "-bufsize", "500k", "-c:a", "mp2", *audio, "-flush_packets", "1", "-f", "mpegts"]


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


class StatusLines:
    """A player's status lines, read in a thread: each value ``PATTERN`` finds, with
    when it was printed."""

    PATTERN: re.Pattern

    def __init__(self, stream):
        self.seen: list[tuple[float, float]] = []
        self.output = bytearray()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream):
        while data := stream.read1(65536):
            now = time.monotonic()
            self.output += data
            for line in re.split(rb"[\r\n]+", data):
                if found := self.PATTERN.search(line):
                    self.seen.append((now, float(found.group(1))))

    def log(self) -> str:
        return self.output.decode(errors="replace")[-2000:]


class Frames(StatusLines):
    """mpv's frame count, from the status line it was asked for."""

    PATTERN = re.compile(rb"FRAME (\d+)")

    def played_by(self, moment):
        return int(max((n for t, n in self.seen if t <= moment), default=0))


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
    first = min((t for t, n in frames.seen), default=None)
    log = frames.log()
    assert first is not None, log
    print(f"\nmpv showed its first frame {first - started:.2f}s after the writer started"
          f" and played {played} of {5 * FPS} frames before it ended")
    assert played >= 50, log
    # Still playing: it waits at the live edge (nothing was removed).
    wait_parked(path, 1, timeout=10)
    assert player.poll() is None, log


#: The issue's slow writer: video 250 kbit/s and audio 64 kbit/s make 400 kbit/s
#: of MPEG-TS (50 KB/s; measured 399 kbit/s), written as it is made.
SLOW = {"bitrate": "250k", "audio_bitrate": "64k"}
SLOW_SECONDS = 8

#: The players' documented options that make them start within 2 s of the first
#: keyframe; with their defaults they wait for data no file system can hasten
#: (README, "Players and probers"):
#: - mpv: libavformat estimates an MPEG-TS file's duration by reading 250,000
#:   bytes of packets from max(0, size - 250 KB); mpv serves that seek from its
#:   own buffer, so the mount sees only reads going on, and mpv shows nothing
#:   until 250 KB more are written (5.8 s at 400 kbit/s, 1.3 s at 2 Mbit/s).
#: - ffplay (like ffmpeg) sets scan_all_pmts=1, so the MPEG-TS demuxer never
#:   says it has all streams and libavformat analyses 5 s of media at any
#:   bitrate (5.2 s).
PLAYERS = {
    "mpv": ["mpv", "--no-config", "--no-input-terminal", "--vo=null", "--ao=null",
            "--demuxer-lavf-o=skip_estimate_duration_from_pts=1",
            "--term-status-msg=SHOWN ${=time-pos}"],
    "ffplay": ["ffplay", "-hide_banner", "-scan_all_pmts", "0"],
}


class Shown(StatusLines):
    """The media time a player has shown.

    mpv prints ``SHOWN <time-pos>`` (as asked); ffplay prints its clock
    (``1.44 A-V: ...``) once it shows pictures, ``nan`` before.
    """

    PATTERN = re.compile(rb"(?:SHOWN |^\s*)(\d+\.\d+)(?: A-V| M-V|\s*$)")

    @property
    def first(self) -> float | None:
        return self.seen[0][0] if self.seen else None

    def played_by(self, moment) -> float:
        """Seconds of media shown from the first picture to ``moment``."""
        shown = [media for t, media in self.seen if t <= moment]
        return shown[-1] - shown[0] if shown else 0.0


@pytest.fixture
def ffplay(ffmpeg):
    if not shutil.which("ffplay"):
        if REQUIRE_MOUNT:
            pytest.fail("ffplay is missing but required here (it comes with ffmpeg)")
        pytest.skip("ffplay is not installed")


@pytest.mark.parametrize("name", PLAYERS)
def test_player_started_before_a_slow_writer_shows_it_live_within_2s(name, request, mnt):
    """The issue's case: the player opens the path, then a 400 kbit/s writer starts.

    Its first picture comes within 2 s of the first keyframe written (the
    writer's first write: PAT, PMT and the first I-frame), and it goes on
    showing the stream while the writer writes; nothing is removed.
    """
    request.getfixturevalue("mpv" if name == "mpv" else "ffplay")
    path = mnt / "live.ts"
    path.touch()
    # ffplay shows its window through SDL; the dummy drivers stand in for a display.
    player = mnt.spawn([*PLAYERS[name], str(path)], stdin=subprocess.DEVNULL,
                       stderr=subprocess.STDOUT,
                       env=dict(os.environ, SDL_VIDEODRIVER="dummy", SDL_AUDIODRIVER="dummy"))
    shown = Shown(player.stdout)
    wait_parked(path, 1, timeout=20)
    writer = mnt.spawn(["ffmpeg", "-re", *clip(SLOW_SECONDS, **SLOW)[1:], str(path)],
                       stdin=subprocess.DEVNULL, text=True)
    wait_until(lambda: xattr(path, "bytes_written") > 0, timeout=20, interval=0.005,
               what="the writer's first keyframe")
    keyframe_written = time.monotonic()
    wait_until(lambda: shown.first is not None or player.poll() is not None, timeout=20,
               what=f"{name}'s first picture")
    assert shown.first is not None, shown.log()
    first_picture = shown.first - keyframe_written
    assert writer.poll() is None, "the writer ended before the first picture"

    _, writer_log = writer.communicate(timeout=SLOW_SECONDS + 20)
    ended = time.monotonic()
    assert writer.returncode == 0, writer_log
    rate = xattr(path, "bytes_written") * 8 / SLOW_SECONDS / 1000
    played = shown.played_by(ended)
    print(f"\n{name} at {rate:.0f} kbit/s: first picture {first_picture:.2f} s after the"
          f" first keyframe written; {played:.1f} s of {SLOW_SECONDS} s shown while the"
          f" writer wrote")
    assert 350 < rate < 450, f"the writer wrote {rate:.0f} kbit/s, not about 400"
    assert first_picture < 2.0, shown.log()
    # Live: it showed what was written as it was written, up to within 2 s and a
    # margin for a loaded machine.
    assert played >= SLOW_SECONDS - 3, shown.log()
    # And it is still there, waiting at the live edge for more.
    wait_parked(path, 1, timeout=10)
    assert player.poll() is None, shown.log()
