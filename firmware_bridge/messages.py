"""Typed messages: explicit little-endian layouts, one class per frame type, registered by type code.

Messages evolve by appending fields: `unpack` zero-fills a short payload and ignores trailing bytes, so an old
receiver reads a newer sender and the reverse. Arrays (`data`, `values`) carry their own count and are clipped to
what the payload holds.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from .codec import Frame

MESSAGES: dict[int, type[Message]] = {}

DTYPE_F32, DTYPE_F16, DTYPE_I8 = 0, 1, 2
_NP = {DTYPE_F32: np.dtype("<f4"), DTYPE_F16: np.dtype("<f2"), DTYPE_I8: np.dtype("i1")}


def message(cls: type[Message]) -> type[Message]:
    """Register a Message subclass under its TYPE code."""
    MESSAGES[cls.TYPE] = cls
    return cls


def _fixed(fmt: struct.Struct, payload: bytes) -> tuple:
    """Unpack the fixed part, zero-filling a short payload (older sender)."""
    return fmt.unpack(bytes(payload[:fmt.size]).ljust(fmt.size, b"\0"))


class Message:
    TYPE: ClassVar[int]
    FIXED: ClassVar[struct.Struct]

    def pack(self) -> bytes:
        raise NotImplementedError

    @classmethod
    def unpack(cls, payload: bytes) -> Message:
        raise NotImplementedError

    def frame(self, seq: int = 0, t_us: int = 0, flags: int = 0) -> Frame:
        return Frame(type=self.TYPE, payload=self.pack(), seq=seq, t_us=t_us, flags=flags)


def _simple(type_code: int, fmt: str, names: tuple[str, ...]):
    """Decorator body for messages that are a fixed struct of scalars."""

    def wrap(cls):
        cls.TYPE, cls.FIXED = type_code, struct.Struct("<" + fmt)

        def pack(self) -> bytes:
            return self.FIXED.pack(*(getattr(self, n) for n in names))

        @classmethod
        def unpack(klass, payload: bytes):
            return klass(*_fixed(klass.FIXED, payload))

        cls.pack, cls.unpack = pack, unpack
        return message(cls)

    return wrap


@_simple(0x01, "BIHI", ("version", "schema_hash", "max_payload", "capabilities"))
@dataclass
class Hello(Message):
    version: int = 1
    schema_hash: int = 0
    max_payload: int = 512
    capabilities: int = 0


@_simple(0x02, "IBII", ("uptime_ms", "state", "crc_errors", "seq_gaps"))
@dataclass
class Heartbeat(Message):
    uptime_ms: int = 0
    state: int = 0
    crc_errors: int = 0
    seq_gaps: int = 0


@_simple(0x03, "BBB", ("acked_seq", "acked_type", "status"))
@dataclass
class Ack(Message):
    acked_seq: int = 0
    acked_type: int = 0
    status: int = 0  # 0 = ACK, anything else a NACK reason


@_simple(0x04, "III", ("origin_us", "receive_us", "transmit_us"))
@dataclass
class TimeSync(Message):
    origin_us: int = 0  # requester's clock when sent
    receive_us: int = 0  # responder's clock when received
    transmit_us: int = 0  # responder's clock when replied


@_simple(0x11, "IffB", ("step", "value", "threshold", "event"))
@dataclass
class Surprise(Message):
    step: int = 0
    value: float = 0.0
    threshold: float = 0.0
    event: int = 0


@_simple(0x13, "Hi", ("key", "value"))
@dataclass
class Config(Message):
    key: int = 0
    value: int = 0


@_simple(0x21, "Iffffff", ("sample_us", "ax", "ay", "az", "gx", "gy", "gz"))
@dataclass
class Imu(Message):
    sample_us: int = 0
    ax: float = 0.0
    ay: float = 0.0
    az: float = 0.0
    gx: float = 0.0
    gy: float = 0.0
    gz: float = 0.0


@_simple(0x23, "Hi", ("code", "arg"))
@dataclass
class Command(Message):
    code: int = 0
    arg: int = 0


@dataclass
class _Tensor(Message):
    """step u32, dtype u8, dim u16, scale f32, data[dim] (f32 / f16 / int8 with `scale`)."""

    step: int = 0
    data: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    dtype: int = DTYPE_F32
    scale: float = 1.0
    FIXED: ClassVar[struct.Struct] = struct.Struct("<IBHf")

    def pack(self) -> bytes:
        if self.dtype not in _NP:
            raise ValueError(f"unknown dtype code {self.dtype}; valid: 0 f32, 1 f16, 2 int8")
        raw = np.asarray(self.data).astype(_NP[self.dtype]).tobytes()
        return self.FIXED.pack(self.step, self.dtype, len(self.data), self.scale) + raw

    @classmethod
    def unpack(cls, payload: bytes):
        step, dtype, dim, scale = _fixed(cls.FIXED, payload)
        np_dtype = _NP.get(dtype, _NP[DTYPE_F32])
        body = payload[cls.FIXED.size:]
        dim = min(dim, len(body) // np_dtype.itemsize)
        return cls(step, np.frombuffer(bytes(body[:dim * np_dtype.itemsize]), np_dtype).copy(), dtype, scale)

    def values(self) -> np.ndarray:
        """The data as float32 (int8 dequantised with `scale`)."""
        return self.data.astype(np.float32) * (self.scale if self.dtype == DTYPE_I8 else 1.0)

    @classmethod
    def quantize(cls, step: int, values: np.ndarray, dtype: int):
        """Encode float values as f32, f16, or symmetric int8 with a per-message scale."""
        values = np.asarray(values, np.float32)
        if dtype != DTYPE_I8:
            return cls(step, values.astype(_NP[dtype]), dtype, 1.0)
        scale = float(np.abs(values).max()) / 127.0 or 1.0
        return cls(step, np.clip(np.round(values / scale), -127, 127).astype(np.int8), DTYPE_I8, scale)


@message
class Latent(_Tensor):
    TYPE = 0x10


@message
class Prediction(_Tensor):
    TYPE = 0x12


@dataclass
class _Vector(Message):
    """dim u8, values f32[dim]."""

    values: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    FIXED: ClassVar[struct.Struct] = struct.Struct("<B")

    def pack(self) -> bytes:
        values = np.asarray(self.values, "<f4")
        if len(values) > 255:
            raise ValueError(f"{type(self).__name__} holds at most 255 values, got {len(values)}")
        return self.FIXED.pack(len(values)) + values.tobytes()

    @classmethod
    def unpack(cls, payload: bytes):
        (dim,) = _fixed(cls.FIXED, payload)
        body = payload[1:]
        dim = min(dim, len(body) // 4)
        return cls(np.frombuffer(bytes(body[:dim * 4]), "<f4").copy())


@message
class Action(_Vector):
    TYPE = 0x20


@message
class Proprio(_Vector):
    TYPE = 0x22


@message
@dataclass
class Log(Message):
    TYPE: ClassVar[int] = 0x7E
    level: int = 0
    text: str = ""

    def pack(self) -> bytes:
        return bytes([self.level]) + self.text.encode("utf-8")

    @classmethod
    def unpack(cls, payload: bytes):
        return cls(payload[0] if payload else 0, bytes(payload[1:]).decode("utf-8", "replace"))


def decode_message(frame: Frame) -> Message | None:
    """The typed message of a frame, or None for types this side does not know (experimental 0x80-0xFF)."""
    cls = MESSAGES.get(frame.type)
    return cls.unpack(frame.payload) if cls is not None else None
