"""Section join: late joiners of a live MPEG-TS stream under join=ring, keyframe and
live, and what the keyframe index costs."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from streamfs_fuse.testing import xattr
from streamfs_fuse.testing.proc import cpu_seconds

from .common import MiB, Sizes, mounted, start
from .report import Report, gbs, verdict
from .throughput import throughput_fuse, throughput_pipe

JOINS = ("ring", "keyframe", "live")
TS_RATE = 20e6 / 8  # bytes/s of the TS stream whose indexing is costed
FFMPEG_CHUNK = 32 * 1024  # ffmpeg's I/O buffer: the most one of its writes holds


def tee_into(source, paths: list[Path]) -> None:
    """Copy ``source`` (a pipe) into every path, chunk by chunk in turn, until its EOF."""
    fds = [os.open(path, os.O_WRONLY | os.O_CREAT, 0o644) for path in paths]
    try:
        while data := os.read(source.fileno(), 65536):
            for fd in fds:
                os.write(fd, data)
    finally:
        for fd in fds:
            os.close(fd)


class Joiner:
    """``cat PATH | ffmpeg -i - -vf showinfo -f null -`` opened now: when its first frame
    was decoded and that frame's PTS, and the decoder's error lines."""

    def __init__(self, mount, path: Path) -> None:
        self.edge = xattr(path, "bytes_written")
        self.opened = time.monotonic()
        cat = start(mount, ["cat", str(path)], stdout=subprocess.PIPE)
        self.decoder = start(
            mount, ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "level+info", "-copyts",
                    "-i", "-", "-map", "0:v", "-vf", "showinfo", "-f", "null", "-"],
            stdin=cat.stdout, stderr=subprocess.PIPE, text=True)
        cat.stdout.close()
        self.first_seconds = self.first_pts = self.first_is_key = None
        self.error_lines: list[str] = []
        self.pictured = threading.Event()
        self._pump = threading.Thread(target=self._read_log)
        self._pump.start()

    def _read_log(self) -> None:
        for line in self.decoder.stderr:
            if not self.pictured.is_set() and "n:   0 " in line and "pts_time:" in line:
                self.first_seconds = time.monotonic() - self.opened
                self.first_pts = float(line.split("pts_time:")[1].split()[0])
                self.first_is_key = int("iskey:1" in line)
                self.pictured.set()
            elif "[error]" in line or "[fatal]" in line:
                self.error_lines.append(line.strip())

    def finish(self) -> None:
        self.decoder.wait(30)
        self._pump.join(10)


def video_pts_by_offset(path: Path) -> list[tuple[int, float]]:
    """(byte offset, PTS in s) of each video packet of the MPEG-TS file ``path``."""
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v", "-show_entries",
                          "packet=pos,pts_time", "-of", "compact=p=0", str(path)],
                         capture_output=True, text=True, check=True).stdout
    packets = []
    for line in out.splitlines():  # pts_time=1.48|pos=564, among lines of side data
        fields = dict(field.split("=", 1) for field in line.split("|") if "=" in field)
        if fields.get("pts_time", "N/A") != "N/A" and fields.get("pos", "N/A") != "N/A":
            packets.append((int(fields["pos"]), float(fields["pts_time"])))
    return packets


def live_writer(mount, sizes: Sizes) -> subprocess.Popen:
    """``ffmpeg -re``: a libx264 test pattern, CBR 1 Mbit/s, a keyframe every
    sizes.join_gop_seconds, mp2 audio, as MPEG-TS on its stdout."""
    keyint = round(sizes.join_gop_seconds * 25)
    return start(mount, [
        "ffmpeg", "-nostdin", "-v", "error", "-re", "-f", "lavfi", "-i",
        "testsrc=size=320x240:rate=25", "-f", "lavfi", "-i", "sine=frequency=440",
        "-t", str(sizes.join_after_seconds + 2 * sizes.join_gop_seconds + 60),
        "-c:v", "libx264", "-x264-params",
        f"keyint={keyint}:min-keyint={keyint}:scenecut=0:nal-hrd=cbr", "-b:v", "1M",
        "-minrate", "1M", "-maxrate", "1M", "-bufsize", "1M", "-c:a", "mp2", "-b:a", "64k",
        "-flush_packets", "1", "-f", "mpegts", "pipe:1"], stdout=subprocess.PIPE)


def late_joiners(sizes: Sizes) -> dict[str, float]:
    """A late joiner of a live stream under each join: media s behind live, s to the first
    picture, and the decoder's error lines.

    One live_writer is copied chunk by chunk into one stream per join (set by
    xattr; sizes.join_ring rings, so that the ring's oldest byte is mid-GOP as on
    any stream running longer than its ring) and into a file. After
    sizes.join_after_seconds a ``cat | ffmpeg`` opens each. Behind live is the
    newest video PTS in the bytes written when it opened (read back from the
    file) less the PTS of its first decoded frame."""
    with mounted(f"--ring-buffer-size={sizes.join_ring}") as mount, \
            tempfile.TemporaryDirectory(prefix="streamfs-bench-join-") as tmp:
        paths = {join: mount / f"{join}.ts" for join in JOINS}
        for join, path in paths.items():
            path.touch()
            os.setxattr(path, "user.streamfs.join", join.encode())
        whole = Path(tmp) / "whole.ts"
        writer = live_writer(mount, sizes)
        tee = threading.Thread(target=tee_into, args=(writer.stdout, [whole, *paths.values()]))
        tee.start()
        try:
            time.sleep(sizes.join_after_seconds)  # the workload: join this far into the stream
            joiners = {join: Joiner(mount, path) for join, path in paths.items()}
            deadline = time.monotonic() + 2 * sizes.join_gop_seconds + 30
            for join, joiner in joiners.items():
                if not joiner.pictured.wait(max(0.0, deadline - time.monotonic())):
                    raise RuntimeError(f"the join={join} late joiner decoded no picture:"
                                       f" {joiner.error_lines[-3:]}")
        finally:
            writer.terminate()
            tee.join()
            for path in paths.values():
                path.unlink()
        packets = video_pts_by_offset(whole)
        result = {}
        for join, joiner in joiners.items():
            joiner.finish()
            live = max(pts for offset, pts in packets if offset < joiner.edge)
            result |= {f"{join}_behind_s": live - joiner.first_pts,
                       f"{join}_first_picture_s": joiner.first_seconds,
                       f"{join}_first_is_key": joiner.first_is_key,
                       f"{join}_error_lines": len(joiner.error_lines)}
        return result


def ts_clip(path: Path, seconds: float) -> None:
    """``seconds`` of a 20 Mbit/s CBR libx264 720p test pattern in MPEG-TS."""
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=1280x720:rate=25", "-t", str(seconds), "-c:v", "libx264",
                    "-preset", "ultrafast", "-x264-params", "keyint=50:nal-hrd=cbr",
                    "-b:v", "20M", "-minrate", "20M", "-maxrate", "20M", "-bufsize", "20M",
                    "-f", "mpegts", "-y", str(path)], check=True)


def index_cpu(clip: Path, ts: bool) -> dict[str, float]:
    """Daemon CPU per second of stream while ``clip`` is written at 20 Mbit/s in
    ffmpeg-sized writes, with no reader. With ``ts`` False the same bytes with the first
    zeroed: the index gives up on that stream at its first write, so the difference is
    what indexing MPEG-TS costs."""
    data = bytearray(clip.read_bytes())
    if not ts:
        data[0] = 0
    with mounted() as mount:
        pid, live = mount.daemon.pid, mount / "live.ts"
        fd = os.open(live, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            before, started = cpu_seconds(pid), time.perf_counter()
            for at in range(0, len(data), FFMPEG_CHUNK):
                os.write(fd, data[at:at + FFMPEG_CHUNK])
                time.sleep(max(0.0, started + (at + FFMPEG_CHUNK) / TS_RATE
                               - time.perf_counter()))
            used = cpu_seconds(pid) - before
        finally:
            os.close(fd)
        seconds = len(data) / TS_RATE
        return {"stream_seconds": seconds, "cpu_ms_per_stream_s": 1000 * used / seconds}


def join_section(report: Report, sizes: Sizes, args) -> None:
    if shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None:
        print("  (join skipped: ffmpeg and ffprobe are not installed: apt-get install ffmpeg)",
              flush=True)
        return
    late = report.measure("join_late", late_joiners, sizes)
    runs, gop = report.results["join_late"]["runs"], sizes.join_gop_seconds
    for join in JOINS:
        label = f"join={join}: late joiner, {gop:g} s GOP, behind live"
        figures = (f"first picture {late[f'{join}_first_picture_s']:.1f} s,"
                   f" {late[f'{join}_error_lines']:.0f} decoder errors")
        if join == "keyframe":  # issue 21's targets, in every run
            outcome = verdict(all(run["keyframe_behind_s"] < gop
                                  and run["keyframe_error_lines"] == 0
                                  and run["keyframe_first_is_key"] for run in runs),
                              "< 1 GOP behind, 0 decoder errors, key first")
        else:
            outcome = "reported"
        report.row(label, f"{late[f'{join}_behind_s']:.2f} s", figures, outcome)
    ours, pipe = report.compare("join_index_throughput_1 MiB",
                                [("", throughput_fuse, sizes, MiB),
                                 ("_pipe", throughput_pipe, sizes, MiB)])
    report.row("join index: 1 -> 1, 1 MiB non-TS writes", gbs(ours),
               f"pipe {gbs(pipe)} {ours / pipe:.2f}x",
               "reported: the index looks at the first write only")
    with tempfile.TemporaryDirectory(prefix="streamfs-bench-clip-") as tmp:
        clip = Path(tmp) / "clip.ts"
        ts_clip(clip, sizes.index_seconds)
        ts, other = report.compare("join_index_cpu", [("_ts", index_cpu, clip, True),
                                                      ("_nonts", index_cpu, clip, False)])
    indexing = ts["cpu_ms_per_stream_s"] - other["cpu_ms_per_stream_s"]
    report.results["join_index_cpu_ts"]["index_ms_per_stream_s"] = indexing
    report.row("join index: daemon CPU, 20 Mbit/s TS writer",
               f"{ts['cpu_ms_per_stream_s']:.1f} ms/s",
               f"same bytes not TS {other['cpu_ms_per_stream_s']:.1f} ms/s",
               f"reported: indexing {indexing:.1f} ms of CPU per s of TS"
               f" ({indexing / 10:.2f}% of a core)")
