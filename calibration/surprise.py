"""`ami-edge calibrate surprise`: record a calm scene, write the surprise baseline and event threshold for a model.

    ami-edge calibrate surprise --model build/tiny.amiedge --source 0 --seconds 60 --out surprise.json
    ami-edge serve --model build/tiny.amiedge --source 0 --surprise-calibration surprise.json

Raw surprise (the prediction error) has a scale of its own for every model and scene. The runtime's default running
baseline learns it over a 20-frame warm-up and keeps drifting. A calibration measures it once on footage the user
says is calm, with the model, camera and backend that will serve.

Statistics. The baseline is robust: center = the median and scale = 1.4826 x the median absolute deviation (the
standard deviation for Gaussian data), so a few odd frames in the recording (someone walking by) move neither.
Mean, standard deviation and percentiles are stored too, for reports.

Threshold. Calm raw surprise is seldom Gaussian; its right tail is usually heavier, and a Gaussian 4-sigma rule
would then fire on ordinary frames. The threshold is therefore the calm recording's own `--quantile` (default
0.999: about one calm frame in a thousand above it) in robust z units, but never below `--floor` (default 4, the
runtime's default), which keeps a light-tailed recording from giving a hair trigger. The file records the share of
calm frames above the threshold (`calm_event_rate`). A quantile needs data: with fewer than 1 / (1 - q) samples it
is the calm maximum, and the command says so.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from ..errors import ConfigError

HELP = "calm-scene surprise baseline and event threshold for a model: surprise.json for `serve --surprise-calibration`"

MAD_TO_STD = 1.4826  # 1 / Phi^-1(3/4): the MAD of Gaussian data times this is its standard deviation
MIN_SAMPLES = 50


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default", help="bundle path or shipped name (default: default)")
    p.add_argument("--source", required=True, help="a calm view of the scene the model will serve: a camera (0, "
                                                   "v4l2://..., csi://0), a video file, synthetic://...")
    p.add_argument("--seconds", type=float, help="record this long (a camera); default: until the source ends")
    p.add_argument("--frames", type=int, help="stop after this many states (deterministic, for files and tests)")
    p.add_argument("--warmup", type=int, default=10,
                   help="surprise values discarded first, while exposure and the clip settle (default 10)")
    p.add_argument("--quantile", type=float, default=0.999,
                   help="calm quantile the threshold sits at, in (0, 1) (default 0.999)")
    p.add_argument("--floor", type=float, default=4.0, help="lowest threshold, z-score (default 4)")
    p.add_argument("--backend", default="auto", help="auto | onnxruntime[:cpu|cuda|tensorrt]: the one you serve with")
    p.add_argument("--camera", metavar="camera.json", help="undistort as `serve --camera` will")
    p.add_argument("--out", default="surprise.json", help="where to write (default surprise.json)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")


def _check_args(args: argparse.Namespace) -> None:
    if args.seconds is not None and not (math.isfinite(args.seconds) and args.seconds > 0):
        raise ConfigError(f"--seconds must be a positive number, got {args.seconds}")
    if args.frames is not None and args.frames <= 0:
        raise ConfigError(f"--frames must be a positive integer, got {args.frames}")
    if args.warmup < 0:
        raise ConfigError(f"--warmup must be >= 0, got {args.warmup}")
    if not 0 < args.quantile < 1:
        raise ConfigError(f"--quantile must be in (0, 1), e.g. 0.999, got {args.quantile}")
    if not (math.isfinite(args.floor) and args.floor > 0):
        raise ConfigError(f"--floor must be a positive z-score, got {args.floor}")
    if Path(args.out).exists() and not args.force:
        raise ConfigError(f"{args.out} already exists; pass --force to overwrite it or choose another --out")


def baseline_record(raw: np.ndarray, quantile: float, floor: float) -> tuple[dict, dict]:
    """The 'baseline' and 'threshold' objects of surprise.json from calm raw surprise values (S,)."""
    center = float(np.median(raw))
    scale = MAD_TO_STD * float(np.median(np.abs(raw - center)))
    if not scale > 1e-12 * max(abs(center), 1.0):  # over half the values equal: fall back on the standard deviation
        scale = float(raw.std())
    if not scale > 1e-12 * max(abs(center), 1.0):
        raise ConfigError(f"raw surprise was constant ({center:.6g}) over all {raw.size} samples: a frozen or blank "
                          "source? Calibrate on live footage of the scene")
    z = (raw - center) / scale
    threshold = max(floor, float(np.quantile(z, quantile)))
    levels = np.percentile(raw, [0.0, 1.0, 5.0, 25.0, 50.0, 75.0, 95.0, 99.0, 99.9, 100.0])
    names = ["min", "p1", "p5", "p25", "p50", "p75", "p95", "p99", "p99.9", "max"]
    baseline = {"center": center, "scale": scale, "mean": float(raw.mean()), "std": float(raw.std()),
                "percentiles": {n: float(v) for n, v in zip(names, np.maximum.accumulate(levels))}}
    return baseline, {"z": threshold, "quantile": quantile, "floor": floor,
                      "calm_event_rate": float(np.mean(z > threshold))}


def run(args: argparse.Namespace) -> int:
    from .. import __version__
    from ..runtime import Runtime
    from ..sources import LatestFrame
    from ..surprise_calibration import SurpriseCalibration, model_id

    _check_args(args)
    rt = Runtime(model=args.model, source=args.source, backend=args.backend, camera=args.camera)
    try:
        if rt.predictor is None:
            raise ConfigError(f"model {rt.bundle.manifest.name} at {rt.bundle.path} has no video predictor, so it "
                              "produces no surprise: nothing to calibrate")
        live = isinstance(rt.source, LatestFrame)  # the runtime wraps live sources (cameras, paced streams)
        if live and args.seconds is None and args.frames is None:
            raise ConfigError(f"{args.source} is live and never ends: give --seconds S (or --frames N)")
        print(f"ami-edge calibrate surprise: {rt.describe()}", file=sys.stderr, flush=True)
        raw: list[float] = []
        states = 0
        start = last_report = time.monotonic()
        for state in rt.stream(max_frames=args.frames):
            states += 1
            if state.raw_surprise is not None:
                raw.append(state.raw_surprise)
            now = time.monotonic()
            if now - last_report >= 1.0:
                print(f"  {states} states, {len(raw)} surprise values", file=sys.stderr, flush=True)
                last_report = now
            if args.seconds is not None and now - start >= args.seconds:
                break
        dropped = rt.source.dropped if live else 0
        manifest, bundle_path, ident, backend = rt.bundle.manifest, rt.bundle.path, model_id(rt.bundle), \
            rt.encoder.describe()
    finally:
        rt.close()

    calm = np.array(raw[args.warmup:], np.float64)
    if calm.size < MIN_SAMPLES:
        raise ConfigError(f"only {calm.size} surprise values after the warm-up of {args.warmup} ({states} states "
                          f"from {args.source}); need at least {MIN_SAMPLES}: record longer (--seconds / --frames)")
    baseline, threshold = baseline_record(calm, args.quantile, args.floor)
    camera = None
    if args.camera is not None:  # which intrinsics shaped the frames: name and content hash
        camera = f"{args.camera} sha256:{hashlib.sha256(Path(args.camera).read_bytes()).hexdigest()}"
    record = {
        "schema": "ami-edge.surprise-calibration", "schema_version": 1,
        "model": {"name": manifest.name, "id": ident},
        "baseline": baseline, "threshold": threshold,
        "samples": int(calm.size), "warmup": args.warmup, "frames": states, "dropped": dropped,
        "source": args.source, "backend": backend, "camera": camera,
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "ami_edge": __version__,
    }
    out = Path(args.out)
    SurpriseCalibration.parse(json.loads(json.dumps(record)), out)  # what we write is what the runtime accepts
    tmp = out.with_name(out.name + ".tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, out)
    except OSError as exc:
        raise ConfigError(f"cannot write {out}: {exc.strerror or exc}") from exc

    pct = baseline["percentiles"]
    print(f"ami-edge calibrate surprise: {calm.size} calm surprise values ({states} states, first {args.warmup} "
          f"skipped, {dropped} frames dropped) for model {manifest.name}")
    print(f"  raw surprise median {baseline['center']:.5g}, robust scale {baseline['scale']:.4g} (std "
          f"{baseline['std']:.4g}), p99 {pct['p99']:.5g}, max {pct['max']:.5g}")
    q = threshold["quantile"]
    print(f"  threshold z {threshold['z']:.2f} = max(floor {args.floor:g}, calm p{100 * q:g} "
          f"{(np.quantile(calm, q) - baseline['center']) / baseline['scale']:.2f}); calm frames above it: "
          f"{threshold['calm_event_rate']:.2%}")
    if calm.size * (1 - q) < 1:
        print(f"  note: {calm.size} samples are too few to estimate the p{100 * q:g} (it is the calm maximum); "
              f"record at least {math.ceil(1 / (1 - q))}")
    print(f"wrote {out}; use it with: ami-edge serve --model {bundle_path} --surprise-calibration {out}")
    return 0
