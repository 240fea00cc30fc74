"""The frame codec: pure functions and a streaming decoder, no I/O.

On the wire: ``00 | COBS(body | crc16-le) | 00``. Body (little-endian): version u8, flags u8, seq u8, type u8,
len u16, t_us u32, payload[len]. CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF) over the body. COBS removes every
0x00 from the frame, so a receiver resynchronises at the next delimiter whatever came before it.
See docs/firmware_bridge.md.
"""

from __future__ import annotations

import binascii
import struct
from dataclasses import dataclass, field

VERSION = 1
HEADER = struct.Struct("<BBBBHI")  # version, flags, seq, type, len, t_us
HEADER_SIZE = HEADER.size  # 10
CRC_SIZE = 2
DEFAULT_MAX_PAYLOAD = 512
MUST_UNDERSTAND_MASK = 0x0F  # low nibble of flags: a receiver drops frames with bits it does not know
KNOWN_FLAGS = 0x00  # protocol version 1 defines no must-understand flags yet


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE: check value 0x29B1 for b"123456789"."""
    return binascii.crc_hqx(data, 0xFFFF)


def cobs_encode(data: bytes) -> bytes:
    """Consistent Overhead Byte Stuffing: the result has no 0x00 and is at most len/254 + 1 bytes longer."""
    out = bytearray([0])  # placeholder for the first code byte
    code_at, code = 0, 1
    for i, byte in enumerate(data):
        if byte == 0:
            out[code_at] = code
            code_at, code = len(out), 1
            out.append(0)
            continue
        out.append(byte)
        code += 1
        if code == 0xFF and i + 1 < len(data):  # a full block; open the next only if data follows (canonical)
            out[code_at] = code
            code_at, code = len(out), 1
            out.append(0)
    out[code_at] = code
    return bytes(out)


def cobs_decode(data: bytes) -> bytes | None:
    """Inverse of cobs_encode; None when `data` is not valid COBS (a zero byte, or a code past the end)."""
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        code = data[i]
        if code == 0 or i + code > n:
            return None
        block = data[i + 1:i + code]
        if 0 in block:
            return None
        out += block
        i += code
        if code < 0xFF and i < n:
            out.append(0)
    return bytes(out)


def max_wire_size(max_payload: int) -> int:
    """Largest encoded frame (without delimiters) for a payload limit: what a receiver must buffer."""
    raw = HEADER_SIZE + max_payload + CRC_SIZE
    return raw + raw // 254 + 1


@dataclass(frozen=True)
class Frame:
    """One protocol frame. `payload` is the message body; see messages.py for typed access."""

    type: int
    payload: bytes = b""
    seq: int = 0
    flags: int = 0
    t_us: int = 0
    version: int = VERSION

    def __post_init__(self) -> None:
        for name, value, hi in (("type", self.type, 0xFF), ("seq", self.seq, 0xFF), ("flags", self.flags, 0xFF),
                                ("version", self.version, 0xFF), ("t_us", self.t_us, 0xFFFFFFFF)):
            if not 0 <= value <= hi:
                raise ValueError(f"Frame.{name}={value} is outside 0..{hi}")
        if len(self.payload) > 0xFFFF:
            raise ValueError(f"Frame payload of {len(self.payload)} bytes exceeds the u16 length field")


def frame_body(frame: Frame) -> bytes:
    return HEADER.pack(frame.version, frame.flags, frame.seq, frame.type, len(frame.payload), frame.t_us) + \
        bytes(frame.payload)


def encode_frame(frame: Frame) -> bytes:
    """Wire bytes of one frame, delimiters included."""
    body = frame_body(frame)
    return b"\x00" + cobs_encode(body + crc16(body).to_bytes(2, "little")) + b"\x00"


@dataclass
class DecoderStats:
    frames: int = 0
    crc_errors: int = 0
    malformed: int = 0  # bad COBS, too short, length field disagrees, unknown version
    oversize: int = 0  # payload above the agreed maximum, or an undelimited run longer than any frame
    unknown_flags: int = 0  # must-understand flags this side does not know: dropped
    seq_gaps: int = 0  # frames missing between consecutive sequence numbers

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class FrameDecoder:
    """Streaming decoder: feed any chunking of the byte stream, get back every intact frame.

    A frame is accepted only when its COBS, length field and CRC all check out; anything else is counted and
    skipped up to the next delimiter.
    """

    max_payload: int = DEFAULT_MAX_PAYLOAD
    stats: DecoderStats = field(default_factory=DecoderStats)

    def __post_init__(self) -> None:
        self._buf = bytearray()
        self._discarding = False
        self._expected_seq: int | None = None

    def feed(self, data: bytes) -> list[Frame]:
        frames = []
        limit = max_wire_size(self.max_payload)
        for part, delimited in _split_keep(data):
            if not self._discarding:
                self._buf += part
                if len(self._buf) > limit:
                    self.stats.oversize += 1
                    self._buf.clear()
                    self._discarding = True
            if delimited:
                if not self._discarding and self._buf:
                    frame = self._decode(bytes(self._buf))
                    if frame is not None:
                        frames.append(frame)
                self._buf.clear()
                self._discarding = False
        return frames

    def _decode(self, encoded: bytes) -> Frame | None:
        raw = cobs_decode(encoded)
        if raw is None or len(raw) < HEADER_SIZE + CRC_SIZE:
            self.stats.malformed += 1
            return None
        body, crc = raw[:-CRC_SIZE], int.from_bytes(raw[-CRC_SIZE:], "little")
        if crc16(body) != crc:
            self.stats.crc_errors += 1
            return None
        version, flags, seq, ftype, length, t_us = HEADER.unpack_from(body)
        payload = body[HEADER_SIZE:]
        if version != VERSION or length != len(payload):
            self.stats.malformed += 1
            return None
        if length > self.max_payload:
            self.stats.oversize += 1
            return None
        if flags & MUST_UNDERSTAND_MASK & ~KNOWN_FLAGS:
            self.stats.unknown_flags += 1
            return None
        if self._expected_seq is not None:
            self.stats.seq_gaps += (seq - self._expected_seq) % 256
        self._expected_seq = (seq + 1) % 256
        self.stats.frames += 1
        return Frame(type=ftype, payload=payload, seq=seq, flags=flags, t_us=t_us, version=version)


def _split_keep(data: bytes) -> list[tuple[bytes, bool]]:
    """Split at 0x00 into (part, ended_by_delimiter) pairs; the last part may be unterminated."""
    parts = bytes(data).split(b"\x00")
    return [(p, i < len(parts) - 1) for i, p in enumerate(parts)]
