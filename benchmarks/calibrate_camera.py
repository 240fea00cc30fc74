"""How well `ami-edge calibrate camera` recovers a known lens, over several sets of rendered chessboard views.

Each seed renders VIEWS views at random distinct poses through the lens of tests/lens_render.py (640x480, fx 520,
fy 516, k1 -0.30, k2 0.11, small p1 p2), writes them as an image folder, runs the real CLI on it and compares
camera.json with the truth. Prints one row per seed and the medians.

    .venv/bin/python benchmarks/calibrate_camera.py                 # 5 seeds x 20 views, ~1 min on 2 cores
    .venv/bin/python benchmarks/calibrate_camera.py --seeds 10 --views 12
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.lens_render import DIST_TRUE, K_TRUE, render_views  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--views", type=int, default=20)
    args = parser.parse_args()
    rows = []
    print("seed   fx err %   fy err %   cx err px   cy err px   k1 err    k2 err    RMS px")
    for seed in range(args.seeds):
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "views"
            folder.mkdir()
            for i, image in enumerate(render_views(args.views, seed)[2]):
                cv2.imwrite(str(folder / f"view_{i:02d}.png"), image)
            out = Path(tmp) / "camera.json"
            subprocess.run([sys.executable, "-m", "ami_edge", "calibrate", "camera", "--source", str(folder),
                            "--out", str(out)], check=True, capture_output=True)
            cam = json.loads(out.read_text())
        K, dist = np.array(cam["K"]), np.array(cam["dist"])
        row = [100 * (K[0, 0] / K_TRUE[0, 0] - 1), 100 * (K[1, 1] / K_TRUE[1, 1] - 1), K[0, 2] - K_TRUE[0, 2],
               K[1, 2] - K_TRUE[1, 2], dist[0] - DIST_TRUE[0], dist[1] - DIST_TRUE[1], cam["rms_px"]]
        rows.append(row)
        print(f"{seed:4d}  " + "  ".join(f"{v:+9.4f}" for v in row), flush=True)
    med = np.median(np.abs(rows), axis=0)
    print("median|" + "  ".join(f"{v:9.4f}" for v in med))


if __name__ == "__main__":
    main()
