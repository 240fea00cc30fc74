"""`ami-edge train-demo` and `ami-edge eval-voe`. Heavy imports happen inside the commands: eval-voe needs only
numpy and ONNX Runtime, so it also runs on a device without torch."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ami_edge.bundle import Bundle


def train_demo(args: argparse.Namespace) -> int:

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from ami_edge import load_bundle

    from ..cli import quiet_exporter
    from ..loaders.base import LoadedModel, sha256_path
    from ..loaders.native import save_native
    from ..onnx_export import export_bundle
    from .data import IMAGENET_MEAN, IMAGENET_STD
    from .train import TrainConfig, demo_model_config, plot_history, residual_loss_for, save_history, train

    console = Console(stderr=True, log_path=False)
    shape = {"patch": args.patch, "width": args.width, "depth": args.depth}
    cfg = TrainConfig(seed=args.seed, steps=args.steps, batch=args.batch, threads=args.threads,
                      horizon=args.horizon, residual_steps=args.residual_steps,
                      residual_examples=args.residual_examples, residual_arch=args.residual_arch,
                      horizon_sampling=args.horizon_sampling, target_fraction=args.target_fraction, **shape)
    # checked before training: the second stage's loss targets the tokens this reduction reads
    cfg = replace(cfg, **residual_loss_for(args.surprise, demo_model_config(**shape).encoder.grid))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    columns = (TextColumn("training"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("train", total=cfg.steps + cfg.residual_steps, info="")

        def progress(step: int, total: int, row: dict) -> None:
            if "val_residual" in row:  # second stage: the residual predictor against copying the last step
                info = f"residual {row['val_residual']:.4f} copy-last {row['val_copy']:.4f}"
            else:
                info = (f"pred {row['val_pred']:.4f} ac {row.get('val_ac', float('nan')):.4f} "
                        f"rank {row['token_rank_frac']:.2f}")
            bar.update(task, completed=step, info=info)

        result = train(cfg, progress)
    save_history(result.history, out)
    plot_history(result.history, out / "training.png")
    ckpt = save_native(result.model, out / "demo.safetensors", {"recipe": json.dumps(result.metrics["recipe"])})
    console.log(f"trained in {result.metrics['train_seconds']:.0f} s; effective rank "
                f"{result.metrics['token_rank_frac']:.2f} of dim; wrote {ckpt} and {out / 'training.png'}")
    loaded = LoadedModel(model=result.model, loader="train-demo", source=str(ckpt), source_sha256=sha256_path(ckpt),
                         mean=tuple(float(v) for v in IMAGENET_MEAN), std=tuple(float(v) for v in IMAGENET_STD))
    with quiet_exporter(args.verbose):
        bundle = export_bundle(loaded, out / "default-fp32.amiedge", name="default-fp32", seed=args.seed,
                               on_stage=console.log, training=result.metrics, surprise=args.surprise)
    bundle = finish_fp32(bundle, args.stall_offset, args.eval_pairs, console.log, args.stall_clips)
    console.log("INT8 default from the FP32 bundle (calibration: the demo world, seed 5, 512 frames)")
    int8 = quantize_default(bundle.path, out, args.eval_pairs, console.log)
    print(f"wrote {load_bundle(bundle.path).path}")
    print(f"wrote {int8.path}")
    return 0


def finish_fp32(bundle: Bundle, stall_offset: float, eval_pairs: int, log: Callable[[str], None],
                stall_clips: int = 40) -> Bundle:
    """What train-demo adds to the exported `default-fp32` manifest: the stall term (`latent.stall`, fitted on
    `stall_clips` calm scenes; `stall_offset` 0 leaves it out) and the VoE report (`training.voe`; `eval_pairs` 0
    skips it). The manifest is plain JSON (the graphs carry their own sha256), so both are written into it.
    Returns the bundle reloaded."""
    from ami_edge import load_bundle
    from ami_edge.bundle import MANIFEST

    from .voe import bundle_scorer, evaluate, fit_stall

    path = bundle.path / MANIFEST
    manifest = json.loads(path.read_text())
    manifest["latent"].pop("stall", None)  # a bundle finished before is finished again, not added to
    manifest["training"].pop("voe", None)
    if stall_offset > 0:
        stall = fit_stall(bundle, stall_offset, stall_clips)  # reads the graphs only
        log(f"stall term: offset {stall.offset:g}, weight {stall.weight:.4f} (fitted on calm scenes)")
        manifest["latent"]["stall"] = asdict(stall)
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    bundle = load_bundle(bundle.path)
    if eval_pairs > 0:
        log(f"VoE evaluation on held-out seeds ({eval_pairs} pairs per type)")
        report = evaluate(bundle_scorer(bundle), pairs=eval_pairs)
        _print_voe(report, _surprise_name(bundle.manifest.latent))
        manifest["training"]["voe"] = report
        path.write_text(json.dumps(manifest, indent=2) + "\n")
        bundle = load_bundle(bundle.path)
    return bundle


# How the shipped INT8 `default` is made from `default-fp32`: calibration frames from the demo world (seed 5, away
# from the training and VoE seeds), QDQ int8 on the weight GEMMs, and the gate (latent cosine >= 0.999,
# VoE-AUC within 0.01 of FP32).
INT8_CALIBRATION = "synthetic://bouncing?seed=5"
INT8_CALIBRATION_FRAMES = 512


def quantize_default(fp32: Path, out: Path, voe_pairs: int, log: Callable[[str], None]) -> Bundle:
    from ..quantize import quantize_bundle

    # The AUC half of the gate needs the shipped evaluation size: with a few pairs per type one flipped ordering
    # moves the AUC by more than 0.01, so smaller (CI-sized) runs report the delta without gating on it.
    max_auc_drop = 0.01 if voe_pairs >= 40 else 1.0
    return quantize_bundle(fp32, out / "default.amiedge", precision="int8", source=INT8_CALIBRATION,
                           calib_frames=INT8_CALIBRATION_FRAMES, voe_pairs=voe_pairs, min_cosine=0.999,
                           max_auc_drop=max_auc_drop, name="default", log=log)


def eval_voe(args: argparse.Namespace) -> int:
    from ami_edge import load_bundle
    from ami_edge.bundle import check_surprise_option

    from .voe import bundle_scorer, evaluate

    bundle = load_bundle(args.model)
    if args.surprise is not None:
        check_surprise_option(args.surprise, bundle.manifest.latent.grid)
    report = evaluate(bundle_scorer(bundle, how=args.surprise, stall=not args.no_stall), pairs=args.pairs)
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
    else:
        latent = bundle.manifest.latent
        _print_voe(report, _surprise_name(replace(latent, surprise=args.surprise or latent.surprise,
                                                  stall=None if args.no_stall else latent.stall)))
    return 0


def _surprise_name(latent) -> str:
    """How a bundle's surprise is computed, in words: the reduction, and the stall term if it has one."""
    if latent.stall is None:
        return latent.surprise
    return f"{latent.surprise} + stall term (offset {latent.stall.offset:g}, weight {latent.stall.weight:.4f})"


def _print_voe(report: dict, surprise: str) -> None:
    print(f"surprise: {surprise} of the per-token prediction errors; ROC-AUC over all clips, paired: violating "
          "above its own normal clip")
    print(f"{'violation':<14} {'ROC-AUC':>8} {'paired':>7} {'pairs':>6} {'peak (violating)':>17} {'peak (normal)':>14}")
    for kind, row in report.items():
        print(f"{kind:<14} {row['auc']:>8.3f} {row['paired']:>7.3f} {row['pairs']:>6} "
              f"{row['mean_peak_violating']:>17.4f} {row['mean_peak_normal']:>14.4f}")
