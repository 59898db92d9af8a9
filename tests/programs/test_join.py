"""Where a late joiner starts: ``join`` = ring, keyframe, live or a duration back.

The MPEG-TS keyframe index is checked against ffprobe's own keyframe positions
for H.264, H.265 and MPEG-2, with and without the random-access flag; then
late joiners of real mounts (and over HTTP, and across hosts through Redis)
are decoded with ffmpeg.
"""

from __future__ import annotations

import errno
import http.client
import os
import random
import shutil
import subprocess

import pytest
import trio

from streamfs_fuse.testing import REQUIRE_MOUNT, accepts, free_port, wait_until, xattr
from streamfs_fuse.core.mpegts import PACKET, KeyframeIndex
from streamfs_fuse.core.stream import Stream
from streamfs_fuse.settings import Join, StreamSettings

FPS = 25
#: libx264 with a keyframe every 10 s and none elsewhere (testsrc has no scene cuts).
X264_10S_GOP = ["-c:v", "libx264", "-x264-params", f"keyint={10 * FPS}:min-keyint={10 * FPS}:"
                "scenecut=0", "-b:v", "1M"]


@pytest.fixture
def ffmpeg():
    if not (shutil.which("ffmpeg") and shutil.which("ffprobe")):
        if REQUIRE_MOUNT:
            pytest.fail("ffmpeg is missing but the video tests are required here")
        pytest.skip("ffmpeg and ffprobe are not installed")


def make_clip(path, seconds, *codec):
    subprocess.run(["ffmpeg", "-y", "-hide_banner", "-v", "error",
                    "-f", "lavfi", "-i", f"testsrc=size=320x240:rate={FPS}:duration={seconds}",
                    "-f", "lavfi", "-i", f"sine=duration={seconds}", *codec, "-c:a", "mp2",
                    "-f", "mpegts", str(path)], check=True, capture_output=True, timeout=120)
    return path.read_bytes()


def keyframe_positions(path):
    """Where ffprobe finds the video key packets (their first transport packet)."""
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v", "-show_entries",
                          "packet=pos,flags", "-of", "csv=p=0", str(path)],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    return [int(pos) for pos, flags in (line.split(",")[:2] for line in out.split())
            if "K" in flags]


def without_random_access_flags(data):
    """``data`` with every adaptation field's random_access_indicator cleared."""
    packets = bytearray(data)
    for at in range(0, len(packets), PACKET):
        if packets[at + 3] & 0x20 and packets[at + 4]:
            packets[at + 5] &= ~0x40
    return bytes(packets)


def index_of(data, chunks):
    index, offset = KeyframeIndex(), 0
    for size in chunks:
        index.add(data[offset:offset + size], offset, 0.0)
        offset += size
    assert offset >= len(data)
    return index


# -- the index ----------------------------------------------------------------


@pytest.mark.parametrize("codec", [
    ["-c:v", "libx264", "-g", "25"], ["-c:v", "libx265", "-x265-params", "log-level=error",
                                      "-g", "25"], ["-c:v", "mpeg2video", "-g", "12"]],
    ids=["h264", "h265", "mpeg2"])
@pytest.mark.parametrize("flags", ["random-access flag", "picture start only"])
def test_keyframes_are_found_where_ffprobe_finds_them(ffmpeg, tmp_path, codec, flags):
    data = make_clip(tmp_path / "clip.ts", 3, *codec)
    expected = keyframe_positions(tmp_path / "clip.ts")
    assert len(expected) >= 3
    if flags == "picture start only":
        data = without_random_access_flags(data)
    rng = random.Random(7)
    for chunks in ([len(data)], [PACKET * 7] * (len(data) // (PACKET * 7) + 1),
                   [rng.randint(1, 70000) for _ in range(len(data))]):
        index = index_of(data, chunks)
        assert index.is_ts
        assert [offset for offset, _ in index.keyframes] == expected
        assert index.prefix[0] == 0x47 and len(index.prefix) == 2 * PACKET


def test_a_stream_that_is_not_mpegts_is_looked_at_once():
    index = KeyframeIndex()
    index.add(b"hello, world\n" * 100, 0, 0.0)
    assert not index.is_ts and not index.keyframes


async def test_a_stream_drops_its_index_at_the_first_write_that_is_not_mpegts():
    stream = Stream("text", StreamSettings())
    writer = stream.open_writer()
    await writer.write(b"G" + b"\0" * 300)  # a sync byte, then no sync at 188
    assert stream.keyframes is None


# -- join, in the core ----------------------------------------------------------


def test_join_parses_its_four_forms():
    assert [str(Join.parse(text)) for text in ("ring", " Keyframe", "live", "10s", "1.5m",
                                                "250ms", "3")] == \
        ["ring", "keyframe", "live", "10s", "90s", "0.25s", "3s"]
    for bad in ("", "soon", "-1s", "10 parsecs"):
        with pytest.raises(ValueError, match="is not ring, keyframe, live or a duration"):
            Join.parse(bad)


async def read_queued(reader):
    data = b""
    while reader.pending:
        data += bytes(await reader.read(1 << 20))
    return data


async def test_join_ring_live_and_seconds_back_on_a_stream_that_is_not_mpegts(autojump_clock):
    stream = Stream("log", StreamSettings(join=Join.parse("live")))
    writer = stream.open_writer()
    await writer.write(b"old\n" * 2000)  # 8000 bytes: a unit of its own
    await trio.sleep(20)
    await writer.write(b"new\n" * 2000)
    assert await read_queued(stream.open_reader()) == b""
    assert await read_queued(stream.open_reader(join=Join.parse("ring"))) == \
        b"old\n" * 2000 + b"new\n" * 2000
    assert await read_queued(stream.open_reader(join=Join.parse("10s"))) == b"new\n" * 2000
    assert await read_queued(stream.open_reader(join=Join.parse("keyframe"))) == \
        b"old\n" * 2000 + b"new\n" * 2000, "not MPEG-TS: keyframe keeps the whole ring"
    reader = stream.open_reader()
    await writer.write(b"x")
    assert await read_queued(reader) == b"x"


async def test_join_keyframe_starts_at_the_newest_keyframe_with_pat_and_pmt(ffmpeg, tmp_path):
    data = make_clip(tmp_path / "clip.ts", 3, "-c:v", "mpeg2video", "-g", "25")
    keyframes = keyframe_positions(tmp_path / "clip.ts")
    stream = Stream("live.ts", StreamSettings(join=Join.parse("keyframe")))
    writer = stream.open_writer()
    for at in range(0, len(data), 100 * PACKET):
        await writer.write(data[at:at + 100 * PACKET])
    joined = await read_queued(stream.open_reader())
    prefix = stream.keyframes.prefix
    assert joined == prefix + data[keyframes[-1]:]
    assert joined[:3] == b"\x47\x40\x00", "the PAT first"


# -- join through mounts -------------------------------------------------------------


def compact(out):
    """ffprobe's ``-of compact=p=0`` lines as dicts."""
    return [dict(field.split("=", 1) for field in line.split("|") if "=" in field)
            for line in out.splitlines() if line.strip()]


def probe_frames(path, count):
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v", "-show_entries",
                          "frame=key_frame,pict_type,pts_time", "-read_intervals",
                          f"%+#{count}", "-of", "compact=p=0", str(path)],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    return compact(out)


def video_packets(path):
    """(position, pts in seconds) of every video packet of ``path``."""
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v", "-show_entries",
                          "packet=pos,pts_time", "-of", "compact=p=0", str(path)],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    return [(int(p["pos"]), float(p["pts_time"])) for p in compact(out)
            if p.get("pos", "N/A") != "N/A" and p.get("pts_time", "N/A") != "N/A"]


def media_seconds(path):
    """Seconds of video in the MPEG-TS file ``path`` so far, as it grows (0 before any)."""
    out = subprocess.run(["ffprobe", "-v", "quiet", "-select_streams", "v", "-show_entries",
                          "packet=pts_time", "-of", "compact=p=0", str(path)],
                         capture_output=True, text=True, timeout=60).stdout
    pts = [float(p["pts_time"]) for p in compact(out) if p.get("pts_time", "N/A") != "N/A"]
    return max(pts) - min(pts) if pts else 0


def decoder_errors(path):
    done = subprocess.run(["ffmpeg", "-hide_banner", "-v", "error", "-i", str(path),
                           "-f", "null", "-"], capture_output=True, text=True, timeout=60)
    return [line for line in done.stderr.splitlines() if line.strip()]


def test_keyframe_joiner_of_a_10s_gop_starts_on_a_picture_less_than_a_gop_behind(
        ffmpeg, mount_with, tmp_path):
    mnt = mount_with("--join=keyframe")
    path = mnt / "live.ts"
    path.touch()
    whole, late = tmp_path / "whole.ts", tmp_path / "late.ts"
    with open(whole, "wb") as out:
        mnt.spawn(["cat", str(path)], stdout=out)  # from the start: every byte
    wait_until(lambda: xattr(path, "readers") == 1, what="the first reader")
    # 24 s of media at 4x: keyframes at 0, 10 and 20 s.
    writer = mnt.spawn(["ffmpeg", "-y", "-hide_banner", "-v", "error", "-readrate", "4",
                        "-f", "lavfi", "-i", f"testsrc=size=320x240:rate={FPS}:duration=24",
                        "-f", "lavfi", "-i", "sine=duration=24", *X264_10S_GOP, "-c:a", "mp2",
                        "-flush_packets", "1", "-f", "mpegts", str(path)])
    # Past the 10 s keyframe, well before the 20 s one (1.75 s away at 4x).
    wait_until(lambda: media_seconds(whole) >= 13, timeout=60, interval=0.1,
               what="13 s of media through the first reader")
    live_edge = xattr(path, "bytes_written")
    with open(late, "wb") as out:
        mnt.spawn(["cat", str(path)], stdout=out)
    wait_until(lambda: xattr(path, "readers") == 2, what="the late joiner")
    assert writer.wait(60) == 0, writer.stderr.read()
    path.unlink()  # both readers drain and end
    for process in mnt.processes:
        assert process.wait(30) == 0

    assert decoder_errors(late) == []
    first, _ = probe_frames(late, 2)
    assert (first["key_frame"], first["pict_type"]) == ("1", "I"), first
    start = float(first["pts_time"])
    live = max(pts for pos, pts in video_packets(whole) if pos < live_edge)
    began = video_packets(whole)[0][1]
    print(f"\nkeyframe joiner: starts at {start - began:.2f}s of media, live was at "
          f"{live - began:.2f}s: {live - start:.2f}s behind (ring: {live - began:.2f}s)")
    assert 0 <= live - start < 10


def get(port, target, timeout=10):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    connection.request("GET", target)
    return connection, connection.getresponse()


def test_join_live_over_http_gets_only_what_was_written_after_it_joined(mount_with):
    port = free_port()
    mnt = mount_with("--http", f"127.0.0.1:{port}")
    wait_until(lambda: accepts(port), what="the HTTP door")
    path = mnt / "live"
    with open(path, "ab", buffering=0) as writer:
        writer.write(b"before\n")
        live_conn, live = get(port, "/live?join=live")
        ring_conn, ring = get(port, "/live")
        agfs_conn, agfs = get(port, "/api/v1/files?path=/streamfs/live&stream=true&join=live")
        assert (live.status, ring.status, agfs.status) == (200, 200, 200)
        wait_until(lambda: xattr(path, "readers") == 3, what="three HTTP readers")
        writer.write(b"after\n")
    path.unlink()
    assert live.read() == b"after\n"
    assert agfs.read() == b"after\n"
    assert ring.read() == b"before\nafter\n"
    for connection in (live_conn, ring_conn, agfs_conn):
        connection.close()
    connection, missing = get(port, "/missing?join=soon")
    assert missing.status == 404  # the path first
    connection.close()
    (mnt / "x").touch()
    connection, bad = get(port, "/x?join=soon")
    assert bad.status == 400 and b"is not ring, keyframe, live" in bad.read()
    connection.close()


def test_keyframes_are_found_on_the_host_that_reads(ffmpeg, mount_with, redis_server,
                                                     tmp_path):
    """Written on host A, joined at a keyframe on host B: B indexes the chunks it follows."""
    a = mount_with(f"--backend={redis_server.url}", "--namespace=join", name="a")
    b = mount_with(f"--backend={redis_server.url}", "--namespace=join", "--join=keyframe",
                   name="b")
    data = make_clip(tmp_path / "clip.ts", 3, "-c:v", "mpeg2video", "-g", "25")
    keyframes = keyframe_positions(tmp_path / "clip.ts")
    with open(a / "cam.ts", "ab", buffering=0) as writer:
        for at in range(0, len(data), 50 * PACKET):
            writer.write(data[at:at + 50 * PACKET])
    wait_until(lambda: (b / "cam.ts").exists() and xattr(b / "cam.ts", "bytes_written")
               == len(data), what="host B to see every write")
    late = b.spawn(["cat", str(b / "cam.ts")])
    wait_until(lambda: xattr(b / "cam.ts", "local_readers") == 1, what="the joiner on B")
    (a / "cam.ts").unlink()
    joined, _ = late.communicate(timeout=30)
    assert joined[2 * PACKET:] == data[keyframes[-1]:]
    assert joined[:3] == b"\x47\x40\x00" and len(joined) == len(data) - keyframes[-1] + 2 * PACKET


def test_join_per_stream_is_set_by_its_owner_as_an_xattr(mount_with):
    """``setfattr -n user.streamfs.join``: readers that open afterwards start where it says."""
    mnt = mount_with()
    path = mnt / "s"
    path.write_bytes(b"history ")
    os.setxattr(path, "user.streamfs.join", b"live")
    assert os.getxattr(path, "user.streamfs.join") == b"live"
    with open(path, "rb", buffering=0) as late:  # registered once open() returns
        with open(path, "ab", buffering=0) as writer:
            writer.write(b"live")
        assert late.read(100) == b"live"  # no history: it joined live
    with pytest.raises(OSError) as refused:
        os.setxattr(path, "user.streamfs.join", b"sometimes")
    assert refused.value.errno == errno.EINVAL
    os.setxattr(path, "user.streamfs.join", b"ring")
    with open(path, "rb", buffering=0) as joiner:
        assert joiner.read(100) == b"history live"
