"""Where an MPEG-TS stream's keyframes start, found as its chunks are written.

A reader that joins at a keyframe is given the stream from the first
transport packet of the newest keyframe in the ring, with the latest PAT
and PMT in front, so that a decoder starts on a picture (``join=keyframe``).

The index looks at a stream's first write: if it does not start with the
sync byte, the stream is not MPEG-TS and is never looked at again, so other
streams pay one check per write. For MPEG-TS it reads only the packets that
start a PES on the video PID (found with ``bytes.find``) and PAT/PMT packets.
"""

from __future__ import annotations

from collections import deque

__all__ = ["PACKET", "KeyframeIndex"]

PACKET = 188
SYNC = 0x47
#: PMT stream types of the video codecs whose keyframes are recognised.
H264, H265, MPEG2, MPEG1 = 0x1B, 0x24, 0x02, 0x01
VIDEO_TYPES = frozenset({H264, H265, MPEG2, MPEG1})
#: Keyframes remembered: far more than a ring holds at any sane GOP.
MAX_KEYFRAMES = 4096


class KeyframeIndex:
    """Keyframe offsets (and when they were written) of one MPEG-TS stream.

    ``add`` is given every chunk in stream order. ``is_ts`` turns False for
    good at the first packet boundary without a sync byte (then nothing more
    is indexed: a stream that loses sync is not trusted again).
    """

    __slots__ = ("is_ts", "keyframes", "pat", "pmt", "_pmt_pid", "_video_pid", "_video_type",
                 "_carry", "_carry_offset", "_next")

    def __init__(self) -> None:
        self.is_ts = True
        #: (stream offset of the keyframe's first packet, time written), oldest first.
        self.keyframes: deque[tuple[int, float]] = deque(maxlen=MAX_KEYFRAMES)
        #: The latest PAT and PMT packets, put in front of a keyframe join.
        self.pat: bytes | None = None
        self.pmt: bytes | None = None
        self._pmt_pid: int | None = None
        self._video_pid: int | None = None
        self._video_type = 0
        # The start of a packet cut by the end of the last chunk, and its offset.
        self._carry = b""
        self._carry_offset = 0
        # Where the next chunk should start: a chunk elsewhere follows a gap
        # (a shared log trimmed before this host read it) or a reload.
        self._next = 0

    def add(self, data: bytes, offset: int, now: float) -> None:
        """Index the chunk ``data`` written at stream ``offset`` at time ``now``."""
        if offset != self._next:
            self._carry = b""
            if offset < self._next:  # the history is being loaded again
                self.keyframes.clear()
        self._next = offset + len(data)
        start = 0
        if self._carry:
            need = PACKET - len(self._carry)
            if len(data) < need:
                self._carry += data
                return
            packet = self._carry + data[:need]
            self._carry = b""
            self._packet(packet, 0, self._carry_offset, now)
            start = need
        end = start + (len(data) - start) // PACKET * PACKET
        if end > start and data[start:end:PACKET].count(SYNC) != (end - start) // PACKET:
            self._lost_sync()
            return
        if end < len(data):
            if data[end] != SYNC:
                self._lost_sync()
                return
            self._carry, self._carry_offset = data[end:], offset + end
        if not self.is_ts:
            return
        # One after the other: the PAT names the PMT, which names the video PID.
        self._scan(data, start, end, 0, offset, now)
        if self._pmt_pid is not None:
            self._scan(data, start, end, self._pmt_pid, offset, now)
        if self._video_pid is not None:
            self._scan(data, start, end, self._video_pid, offset, now)

    def _scan(self, data: bytes, start: int, end: int, pid: int, offset: int, now: float) -> None:
        """Look at each packet of ``pid`` that starts a payload unit."""
        header = bytes((SYNC, 0x40 | pid >> 8, pid & 0xFF))
        at = data.find(header, start, end)
        while at >= 0:
            if (at - start) % PACKET == 0:
                self._packet(data, at, offset + at, now)
                at = data.find(header, at + PACKET, end)
            else:
                at = data.find(header, at + 1, end)

    def _packet(self, data: bytes, at: int, offset: int, now: float) -> None:
        """One packet of ``data`` at ``at`` (stream ``offset``)."""
        flags = data[at + 1]
        if data[at] != SYNC:
            self._lost_sync()
            return
        if not flags & 0x40:  # not the start of a PES or section
            return
        pid = (flags & 0x1F) << 8 | data[at + 2]
        payload = self._payload_start(data, at)
        if pid == self._video_pid:
            if self._is_keyframe(data, at, payload):
                self.keyframes.append((offset, now))
        elif pid == 0:
            self._pat(data, at, payload)
        elif pid == self._pmt_pid:
            self._pmt(data, at, payload)

    @staticmethod
    def _payload_start(data: bytes, at: int) -> int:
        control = data[at + 3] >> 4 & 3
        if control & 2:  # an adaptation field
            return at + 5 + data[at + 4]
        return at + 4

    def _is_keyframe(self, data: bytes, at: int, payload: int) -> bool:
        control = data[at + 3] >> 4 & 3
        if control & 2 and data[at + 4] and data[at + 5] & 0x40:
            return True  # random_access_indicator
        end = at + PACKET
        if not control & 1 or payload + 9 > end or data[payload:payload + 3] != b"\0\0\1":
            return False
        es = payload + 9 + data[payload + 8]  # past the PES header
        return self._starts_picture(data[es:end])

    def _starts_picture(self, es: bytes) -> bool:
        """Whether the start of a PES payload holds a keyframe (or the headers before one)."""
        kind = self._video_type
        at = es.find(b"\0\0\1")
        while 0 <= at < len(es) - 3:
            code = es[at + 3]
            if kind == H264 and code & 0x1F in (5, 7):  # IDR slice, SPS
                return True
            if kind == H265 and (16 <= code >> 1 & 0x3F <= 21 or code >> 1 & 0x3F in (32, 33)):
                return True  # IRAP slice, VPS, SPS
            if kind in (MPEG2, MPEG1):
                if code == 0xB3:  # sequence header
                    return True
                if code == 0 and at + 5 < len(es) and es[at + 5] >> 3 & 7 == 1:
                    return True  # I picture
            at = es.find(b"\0\0\1", at + 3)
        return False

    def _section(self, data: bytes, at: int, payload: int) -> tuple[int, int] | None:
        """Start and end of the PSI section in this packet, or None if it does not fit."""
        start = payload + 1 + data[payload]  # past the pointer field
        if start + 3 > at + PACKET:
            return None
        end = start + 3 + ((data[start + 1] & 0x0F) << 8 | data[start + 2])
        return (start, end) if end <= at + PACKET else None

    def _pat(self, data: bytes, at: int, payload: int) -> None:
        section = self._section(data, at, payload)
        if section is None or data[section[0]] != 0:
            return
        start, end = section
        for entry in range(start + 8, end - 4, 4):
            if data[entry] << 8 | data[entry + 1]:  # program 0 is the network PID
                self._pmt_pid = (data[entry + 2] & 0x1F) << 8 | data[entry + 3]
                self.pat = bytes(data[at:at + PACKET])
                return

    def _pmt(self, data: bytes, at: int, payload: int) -> None:
        section = self._section(data, at, payload)
        if section is None or data[section[0]] != 2:
            return
        start, end = section
        entry = start + 12 + ((data[start + 10] & 0x0F) << 8 | data[start + 11])
        while entry + 5 <= end - 4:
            kind = data[entry]
            if kind in VIDEO_TYPES:
                pid = (data[entry + 1] & 0x1F) << 8 | data[entry + 2]
                if pid != self._video_pid:
                    self._video_pid, self._video_type = pid, kind
                    self.keyframes.clear()
                self.pmt = bytes(data[at:at + PACKET])
                return
            entry += 5 + ((data[entry + 3] & 0x0F) << 8 | data[entry + 4])

    def _lost_sync(self) -> None:
        self.is_ts = False
        self.keyframes.clear()
        self._carry = b""

    def newest(self, oldest_offset: int, before: float | None = None) -> int | None:
        """The newest keyframe at or after ``oldest_offset`` (written by ``before``)."""
        found = None
        for offset, written in reversed(self.keyframes):
            if offset < oldest_offset:
                break
            found = offset
            if before is None or written <= before:
                return offset
        return found if before is not None else None

    @property
    def prefix(self) -> bytes:
        """The PAT and PMT packets to put in front of a keyframe join."""
        return (self.pat or b"") + (self.pmt or b"") if self.pat and self.pmt else b""
