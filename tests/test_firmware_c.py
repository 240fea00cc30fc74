"""The portable C side: built with -std=c99 -Wall -Wextra -Werror, run against the shared vectors (also under
AddressSanitizer/UBSan), and the example MCU loop talking to the Python codec over a real pseudo-terminal."""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import time
import tty
from pathlib import Path

import pytest

from ami_edge.firmware_bridge import (Action, FrameDecoder, Heartbeat, Hello, Surprise, decode_message,
                                      encode_frame)

from .conftest import run_cli

ROOT = Path(__file__).resolve().parent.parent
C_DIR = ROOT / "firmware_bridge" / "c"
CFLAGS = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", f"-I{C_DIR}"]

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")


def _build(tmp: Path, name: str, sources: list[Path], extra: list[str] = ()) -> Path:
    out = tmp / name
    proc = subprocess.run(["gcc", *CFLAGS, *extra, *map(str, sources), "-o", str(out)], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    return out


def _vectors_txt(tmp: Path) -> Path:
    v = json.loads((ROOT / "firmware_bridge" / "vectors" / "frames.json").read_text())
    lines = [f"crc {v['crc16_check']['input']} {v['crc16_check']['crc']:x}"]
    lines += [f"{x['name']} {x['type']} {x['seq']} {x['flags']} {x['t_us']} {x['payload'] or '-'} {x['body']} "
              f"{x['wire']}" for x in v["frames"]]
    path = tmp / "vectors.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("sanitize", [[], ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-g"]],
                         ids=["plain", "asan-ubsan"])
def test_c_reproduces_the_shared_vectors(tmp_path, sanitize):
    exe = _build(tmp_path, "test_vectors", [C_DIR / "ami_bridge.c", ROOT / "tests" / "c" / "test_vectors.c"],
                 ["-O1", *sanitize])
    proc = subprocess.run([str(exe), str(_vectors_txt(tmp_path))], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = proc.stdout.strip().splitlines()[-1]
    passed = int(summary.split()[0])
    assert summary.endswith("0 failed") and passed >= 4 * 20, proc.stdout  # 4 checks for each of the vectors


def test_example_mcu_over_a_pseudo_terminal(tmp_path):
    exe = _build(tmp_path, "mcu", [C_DIR / "ami_bridge.c", C_DIR / "example" / "main.c"])
    master, slave = os.openpty()
    tty.setraw(slave)  # raw before the MCU starts, so no byte meets a cooked line discipline
    proc = subprocess.Popen([str(exe), os.ttyname(slave)])
    try:
        os.write(master, encode_frame(Hello().frame(seq=0)) + encode_frame(Surprise(1, 5.0, 3.0, 1).frame(seq=1))
                 + encode_frame(Surprise(2, 0.5, 3.0, 0).frame(seq=2)))
        decoder, got = FrameDecoder(), []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            kinds = {type(decode_message(f)) for f in got}
            if {Hello, Action, Heartbeat} <= kinds and sum(isinstance(decode_message(f), Action) for f in got) >= 2:
                break
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                got += decoder.feed(os.read(master, 4096))
        actions = [decode_message(f) for f in got if isinstance(decode_message(f), Action)]
        assert [round(float(a.values[0]), 3) for a in actions[:2]] == [0.2, 0.3]  # brakes on the surprise event
        assert [float(a.values[1]) for a in actions[:2]] == [5.0, 0.5]
        assert any(isinstance(decode_message(f), Heartbeat) for f in got)
        assert decoder.stats.crc_errors == decoder.stats.malformed == 0
    finally:
        os.close(master)  # unplug: the MCU loop sees the link go and exits
        try:
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
            os.close(slave)


def test_firmware_export_c(tmp_path):
    out = tmp_path / "fw"
    proc = run_cli("firmware", "export-c", str(out))
    assert proc.returncode == 0, proc.stderr
    for rel in ("ami_bridge.h", "ami_bridge.c", "example/main.c", "vectors/frames.json", "firmware_bridge.md"):
        assert (out / rel).is_file(), rel
    assert (out / "ami_bridge.c").read_bytes() == (C_DIR / "ami_bridge.c").read_bytes()
    _build(tmp_path, "mcu", [out / "ami_bridge.c", out / "example" / "main.c"])  # builds from the export alone
    proc = run_cli("firmware", "export-c", str(out))
    assert proc.returncode == 1 and "already exists" in proc.stderr  # never overwrites a firmware tree
