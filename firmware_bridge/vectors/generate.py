"""Regenerate frames.json: `python -m ami_edge.firmware_bridge.vectors.generate`.

Every vector is one message as the Python codec encodes it; the C side must produce the same body and wire bytes
and decode them back to the same fields. Change this file only together with a protocol version bump.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..codec import Frame, crc16, encode_frame, frame_body
from ..messages import (DTYPE_F16, DTYPE_I8, Ack, Action, Command, Config, Heartbeat, Hello, Imu, Latent, Log,
                        Prediction, Proprio, Surprise, TimeSync)

CASES = [
    ("hello", Hello(1, 0xA1B2C3D4, 512, 0b101), 0, 1_000),
    ("heartbeat", Heartbeat(123_456, 2, 3, 4), 1, 2_000),
    ("ack", Ack(7, 0x10, 0), 2, 3_000),
    ("nack", Ack(8, 0x20, 3), 3, 3_001),
    ("time_sync", TimeSync(10, 20, 30), 4, 4_000),
    ("latent_f32", Latent(42, np.array([0.5, -1.25, 3.0, 0.0], np.float32)), 5, 5_000),
    ("latent_f16", Latent(43, np.array([0.5, -1.25, 3.0], np.float16), DTYPE_F16), 6, 5_001),
    ("latent_i8", Latent(44, np.array([127, -127, 0, 5, 0], np.int8), DTYPE_I8, 0.015625), 7, 5_002),
    ("surprise", Surprise(45, 2.5, 3.0, 0), 8, 5_003),
    ("surprise_event", Surprise(46, 4.5, 3.0, 1), 9, 5_004),
    ("prediction", Prediction(47, np.array([1.0, 2.0], np.float32)), 10, 5_005),
    ("config", Config(1, -16), 11, 6_000),
    ("action", Action(np.array([0.25, -0.5], np.float32)), 0, 7_000),
    ("imu", Imu(99, 0.0, 0.0, 9.81, 0.01, -0.02, 0.03), 1, 7_001),
    ("proprio", Proprio(np.array([0.1, 0.2, 0.3], np.float32)), 2, 7_002),
    ("command", Command(3, 1), 3, 7_003),
    ("log", Log(2, "hello mcu"), 4, 7_004),
    ("zeros_payload", Action(np.zeros(4, np.float32)), 5, 0),  # zero bytes exercise COBS
    ("long_payload", Latent(1, np.arange(120, dtype=np.float32)), 6, 0xFFFFFFFF),  # > 254 bytes: COBS blocks
]


def vectors() -> dict:
    frames = []
    for name, msg, seq, t_us in CASES:
        frame = msg.frame(seq=seq, t_us=t_us)
        frames.append({"name": name, "type": frame.type, "seq": seq, "flags": 0, "t_us": t_us,
                       "payload": frame.payload.hex(), "body": frame_body(frame).hex(),
                       "wire": encode_frame(frame).hex()})
    experimental = Frame(type=0x80, payload=bytes([1, 2, 3]), seq=0, flags=0xF0, t_us=1)  # ignorable high flags
    frames.append({"name": "experimental_ignorable_flags", "type": 0x80, "seq": 0, "flags": 0xF0, "t_us": 1,
                   "payload": "010203", "body": frame_body(experimental).hex(),
                   "wire": encode_frame(experimental).hex()})
    return {"crc16_check": {"input": b"123456789".hex(), "crc": crc16(b"123456789")}, "frames": frames}


if __name__ == "__main__":
    out = Path(__file__).with_name("frames.json")
    out.write_text(json.dumps(vectors(), indent=1) + "\n")
    print(f"wrote {out}")
