"""Round-trip latency and throughput of the serial link, host <-> the compiled C example MCU over a pty cable.

    .venv/bin/python benchmarks/firmware_link.py [--rounds 2000] [--json out.json]

Latency: SURPRISE sent -> ACTION received (the MCU's full decode / react / encode path, plus two tty hops), one at a
time, median and p99. Throughput: SURPRISE frames sent back to back, ACTIONs counted until all arrive.
A pty is not a UART: the numbers bound the software path; a real link adds the baud-rate time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from ami_edge.firmware_bridge import Action, SerialLink, Surprise
from ami_edge.firmware_bridge.loopback import PtyCable

C_DIR = Path(__file__).resolve().parent.parent / "firmware_bridge" / "c"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(tmp) / "mcu"
        subprocess.run(["gcc", "-std=c99", "-O2", f"-I{C_DIR}", str(C_DIR / "ami_bridge.c"),
                        str(C_DIR / "example" / "main.c"), "-o", str(exe)], check=True)
        with PtyCable() as cable:
            mcu = subprocess.Popen([str(exe), cable.mcu_path])
            got = threading.Semaphore(0)
            received = []
            link = SerialLink(cable.host_path, on_message=lambda m, f: (received.append(time.perf_counter()),
                                                                         got.release())
                              if isinstance(m, Action) else None)
            try:
                link.start()
                if not link.wait_up(10):
                    raise SystemExit("the MCU did not answer HELLO")
                rtts = []
                for i in range(args.rounds):
                    t0 = time.perf_counter()
                    link.send(Surprise(i, 1.0, 3.0, 0))
                    if not got.acquire(timeout=5):
                        raise SystemExit(f"no ACTION for SURPRISE {i}")
                    rtts.append((received[-1] - t0) * 1e3)
                received.clear()
                t0 = time.perf_counter()
                for i in range(args.rounds):
                    link.send(Surprise(i, 1.0, 3.0, 0))
                for _ in range(args.rounds):
                    if not got.acquire(timeout=10):
                        break
                seconds = received[-1] - t0 if received else float("nan")
                rtts.sort()
                report = {"rounds": args.rounds, "rtt_ms_p50": round(statistics.median(rtts), 3),
                          "rtt_ms_p99": round(rtts[int(0.99 * (len(rtts) - 1))], 3),
                          "throughput_frames_per_s": round(len(received) / seconds),
                          "answered": len(received), "link": link.counters()}
            finally:
                link.close()
                mcu.kill()
                mcu.wait()
    print(json.dumps({k: v for k, v in report.items() if k != "link"}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
