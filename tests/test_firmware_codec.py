"""The serial frame codec: shared vectors, message layouts, and a decoder that never accepts a damaged frame."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ami_edge.firmware_bridge import (MESSAGES, Action, Frame, FrameDecoder, Hello, Imu, Latent, Surprise, cobs_decode,
                                      cobs_encode, crc16, decode_message, encode_frame)
from ami_edge.firmware_bridge.codec import frame_body
from ami_edge.firmware_bridge.messages import DTYPE_F16, DTYPE_I8

VECTORS = json.loads((Path(__file__).resolve().parent.parent / "firmware_bridge" / "vectors" / "frames.json")
                     .read_text())


def test_crc_check_value():
    assert crc16(b"123456789") == 0x29B1 == VECTORS["crc16_check"]["crc"]


@pytest.mark.parametrize("raw, encoded", [  # examples from the COBS paper / its Wikipedia page
    (b"\x00", b"\x01\x01"), (b"\x00\x00", b"\x01\x01\x01"), (b"\x11\x22\x00\x33", b"\x03\x11\x22\x02\x33"),
    (b"\x11\x22\x33\x44", b"\x05\x11\x22\x33\x44"), (b"\x11\x00\x00\x00", b"\x02\x11\x01\x01\x01"),
    (bytes(range(1, 255)), b"\xff" + bytes(range(1, 255))),
    (bytes(range(0, 255)), b"\x01\xff" + bytes(range(1, 255))),
    (bytes(range(1, 256)), b"\xff" + bytes(range(1, 255)) + b"\x02\xff"),
    (bytes(range(2, 256)) + b"\x00", b"\xff" + bytes(range(2, 256)) + b"\x01\x01"),
    (bytes(range(3, 256)) + b"\x00\x01", b"\xfe" + bytes(range(3, 256)) + b"\x02\x01"),
])
def test_cobs_reference_examples(raw, encoded):
    assert cobs_encode(raw) == encoded and cobs_decode(encoded) == raw


@given(st.binary(max_size=1200))
def test_cobs_round_trip_has_no_zeros(data):
    enc = cobs_encode(data)
    assert 0 not in enc and cobs_decode(enc) == data and len(enc) <= len(data) + len(data) // 254 + 1


@pytest.mark.parametrize("vec", VECTORS["frames"], ids=lambda v: v["name"])
def test_vectors_reproduce_byte_for_byte(vec):
    frame = Frame(type=vec["type"], payload=bytes.fromhex(vec["payload"]), seq=vec["seq"], flags=vec["flags"],
                  t_us=vec["t_us"])
    assert frame_body(frame).hex() == vec["body"]
    assert encode_frame(frame).hex() == vec["wire"]
    (decoded,) = FrameDecoder().feed(bytes.fromhex(vec["wire"]))
    assert decoded == frame
    msg = decode_message(decoded)
    if vec["type"] < 0x80:
        assert msg is not None and msg.pack() == frame.payload  # typed unpack -> pack is the identity
    else:
        assert msg is None  # experimental types are passed through untyped


u32, u16, u8 = st.integers(0, 2**32 - 1), st.integers(0, 2**16 - 1), st.integers(0, 255)
f32 = st.floats(width=32, allow_nan=False)


@given(st.one_of(
    st.builds(Hello, u8, u32, u16, u32),
    st.builds(Surprise, u32, f32, f32, u8),
    st.builds(Imu, u32, f32, f32, f32, f32, f32, f32),
    st.builds(Latent, u32, st.lists(f32, max_size=100).map(lambda v: np.array(v, np.float32))),
    st.builds(Action, st.lists(f32, max_size=20).map(lambda v: np.array(v, np.float32))),
), st.integers(0, 255), u32)
def test_every_message_round_trips(msg, seq, t_us):
    (frame,) = FrameDecoder(max_payload=4096).feed(encode_frame(msg.frame(seq=seq, t_us=t_us)))
    back = decode_message(frame)
    assert type(back) is type(msg) and back.pack() == msg.pack() and (frame.seq, frame.t_us) == (seq, t_us)


def test_messages_evolve_by_appending_fields():
    full = Hello(1, 0xDEADBEEF, 256, 7).pack()
    old_sender = Hello.unpack(full[:5])  # an older sender without max_payload / capabilities
    assert (old_sender.schema_hash, old_sender.max_payload, old_sender.capabilities) == (0xDEADBEEF, 0, 0)
    newer = Hello.unpack(full + b"\x01\x02\x03")  # a newer sender's appended fields are ignored
    assert newer == Hello(1, 0xDEADBEEF, 256, 7)
    short_latent = Latent.unpack(Latent(5, np.ones(8, np.float32)).pack()[:-6])
    assert short_latent.step == 5 and len(short_latent.data) == 6  # clipped to whole values present
    assert set(MESSAGES) == {0x01, 0x02, 0x03, 0x04, 0x10, 0x11, 0x12, 0x13, 0x20, 0x21, 0x22, 0x23, 0x7E}


def test_latent_quantisation():
    values = np.linspace(-2, 3, 16).astype(np.float32)
    for dtype, tol in ((DTYPE_F16, 2e-3), (DTYPE_I8, 3 / 127)):
        msg = Latent.unpack(Latent.quantize(9, values, dtype).pack())
        np.testing.assert_allclose(msg.values(), values, atol=tol)


frames_st = st.lists(st.builds(Frame, type=st.integers(0, 255), payload=st.binary(max_size=300),
                               seq=st.integers(0, 255), flags=st.integers(0, 255).map(lambda f: f & 0xF0),
                               t_us=u32), min_size=1, max_size=12)


@settings(max_examples=150, deadline=None)
@given(frames_st, st.lists(st.binary(max_size=40), min_size=13, max_size=13), st.data())
def test_stream_split_anywhere_with_garbage_between(frames, garbage, data):
    stream = b"".join(g + encode_frame(f) for g, f in zip(garbage, frames)) + garbage[-1]
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    decoder = FrameDecoder()
    got = []
    for a, b in zip([0, *cuts], [*cuts, len(stream)]):
        got += decoder.feed(stream[a:b])
    assert got == frames


@settings(max_examples=200, deadline=None)
@given(frames_st, st.data())
def test_damaged_frames_are_never_accepted_and_intact_ones_all_arrive(frames, data):
    wires = [bytearray(encode_frame(f)) for f in frames]
    damaged = set()
    for i, wire in enumerate(wires):
        how = data.draw(st.sampled_from(["none", "none", "flip", "flip3", "drop"]))
        if how == "none" or len(wire) < 3:
            continue
        interior = range(1, len(wire) - 1)  # between the delimiters
        if how == "drop":
            del wire[data.draw(st.sampled_from(interior))]
        else:
            for pos in data.draw(st.lists(st.sampled_from(interior), min_size=1, max_size=1 if how == "flip" else 3,
                                          unique=True)):
                wire[pos] ^= 1 << data.draw(st.integers(0, 7))
        damaged.add(i)
    decoder = FrameDecoder()
    got = decoder.feed(b"".join(bytes(w) for w in wires))
    assert got == [f for i, f in enumerate(frames) if i not in damaged]
    lost = len(frames) - len(got)
    counted = decoder.stats.crc_errors + decoder.stats.malformed
    assert counted >= (1 if lost else 0)


def test_oversize_and_flags_and_gaps():
    decoder = FrameDecoder(max_payload=64)
    big = encode_frame(Frame(type=0x10, payload=bytes(100), seq=0))
    ok = encode_frame(Frame(type=0x11, payload=b"\x01", seq=1))
    runaway = b"\x05" * 500  # no delimiter for longer than any frame: discarded, the next frame still arrives
    must_understand = encode_frame(Frame(type=0x11, payload=b"", seq=2, flags=0x01))
    ignorable = encode_frame(Frame(type=0x11, payload=b"", seq=5, flags=0x80))
    got = decoder.feed(big + runaway + ok + must_understand + ignorable)
    assert [f.seq for f in got] == [1, 5]
    s = decoder.stats
    assert (s.oversize, s.unknown_flags, s.frames) == (2, 1, 2)
    assert s.seq_gaps == 3  # 2, 3, 4 never arrived (2 was dropped for its flag)


def test_frame_validation():
    with pytest.raises(ValueError, match="seq"):
        Frame(type=1, seq=256)
    with pytest.raises(ValueError, match="t_us"):
        Frame(type=1, t_us=-1)
