"""Fuzz the serial frame decoder at scale: no damaged frame may be accepted, every intact frame must arrive.

    .venv/bin/python benchmarks/firmware_fuzz.py --frames 1000000 [--seed 0] [--json out.json]

A seeded stream of random frames (types 0-255, payloads 0-300 bytes, ignorable flags) where a third of the frames
are damaged between their delimiters (1-3 bit flips, or one byte dropped), random garbage sits between frames, and
the stream reaches the decoder in random-sized chunks. Exit status 1 if any damaged frame was accepted or any
intact frame was lost.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

from ami_edge.firmware_bridge import Frame, FrameDecoder, encode_frame


def run(frames: int, seed: int, batch: int = 20_000) -> dict:
    rng = random.Random(seed)
    decoder = FrameDecoder()
    sent_intact = accepted = damaged_total = 0
    decode_seconds = 0.0
    wire_bytes = 0
    expected: list[Frame] = []
    for start in range(0, frames, batch):
        chunks, expected = [], []
        for i in range(start, min(frames, start + batch)):
            payload = rng.randbytes(rng.choice((0, 1, 8, 32, rng.randrange(0, 301))))
            frame = Frame(type=rng.randrange(256), payload=payload, seq=i % 256, flags=rng.choice((0, 0x10, 0xF0)),
                          t_us=rng.randrange(2**32))
            wire = bytearray(encode_frame(frame))
            if rng.random() < 1 / 3 and len(wire) > 3:
                damaged_total += 1
                if rng.random() < 0.5:
                    del wire[rng.randrange(1, len(wire) - 1)]
                else:
                    for pos in rng.sample(range(1, len(wire) - 1), k=min(rng.randint(1, 3), len(wire) - 2)):
                        wire[pos] ^= 1 << rng.randrange(8)
            else:
                expected.append(frame)
            if rng.random() < 0.2:
                chunks.append(rng.randbytes(rng.randrange(1, 40)))  # line noise between frames
            chunks.append(bytes(wire))
        stream = b"".join(chunks)
        wire_bytes += len(stream)
        got = []
        t0 = time.perf_counter()
        pos = 0
        while pos < len(stream):
            step = rng.randint(1, 4096)
            got += decoder.feed(stream[pos:pos + step])
            pos += step
        decode_seconds += time.perf_counter() - t0
        sent_intact += len(expected)
        # Garbage is separated by delimiters from the frames around it, so the accepted frames must be exactly the
        # intact ones, in order: anything else is a damaged (or invented) frame accepted, or an intact one lost.
        matched = sum(1 for a, b in zip(got, expected) if a == b)
        accepted += len(got)
        if got != expected:
            return {"ok": False, "error": f"batch at frame {start}: {len(got)} accepted, {len(expected)} intact, "
                                           f"{matched} matching"}
    stats = decoder.stats.as_dict()
    return {"ok": True, "frames": frames, "damaged": damaged_total, "intact": sent_intact, "accepted": accepted,
            "damaged_accepted": accepted - sent_intact, "intact_recovered_pct": 100.0 * accepted / sent_intact,
            "decoder": stats, "wire_mb": round(wire_bytes / 1e6, 1),
            "decode_frames_per_s": round(frames / decode_seconds), "decode_mb_per_s": round(wire_bytes / 1e6 /
                                                                                             decode_seconds, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    report = run(args.frames, args.seed)
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
