"""`train-demo`'s second stage alone, on a shipped bundle's frozen encoder, scored by the VoE test: a 10-minute loop
for predictor experiments instead of a 25-minute `train-demo` run.

    .venv/bin/python benchmarks/stage2_voe.py [--model default-fp32] [--residual-steps N] [--residual-examples N]
        [--topk-weight W] [--width N] [--depth N] [--objects MIN,MAX] [--seed N] [--pairs 40] [--json out.json]

The second stage trains a next-step predictor on tokens of an encoder that no longer changes, so it does not need
the first stage to be re-run: this script runs the encoder graph of `--model` in ONNX Runtime in place of the torch
encoder and calls `finetune_residual`, the function `train-demo` calls, with the `TrainConfig` the bundle's manifest
records (seed, world pools, clip cache, steps, loss). Options override that recipe's second-stage fields. The
trained torch predictor is then scored as `ami-edge eval-voe` scores a bundle: the same pairs (seeds from
1 000 000), the bundle's surprise reduction, the encoder through ONNX Runtime, and, if the bundle has a stall term
(`latent.stall`), one with the bundle's offset whose weight is fitted to the new predictor as `train-demo` fits it
(`--stall-clips` calm clips); `auc_no_stall` in the report leaves it out.

On the shipped `default-fp32` with no options it reproduces the shipped predictor's VoE within the noise
of 40 pairs (README, "The default world model"). Needs the [export] extra (torch).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ami_edge import load_bundle
from ami_edge.errors import AmiEdgeError
from ami_edge.export.demo.train import (TrainConfig, TrainResult, demo_model_config, finetune_residual,
                                        held_out_batch)
from ami_edge.export.demo.voe import KINDS, evaluate, fit_stall_steps, latent_scorer, step_tokens
from ami_edge.runtime import predictor_extrapolates

class OnnxEncoder:
    """The bundle's encoder graph behind the torch call `finetune_residual` makes: (B, C, T, H, W) -> (B, N, D)."""

    def __init__(self, path: Path, threads: int):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def __call__(self, clip: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {"pixels": clip.contiguous().numpy()})[0])

    def requires_grad_(self, flag: bool = True) -> OnnxEncoder:
        return self  # frozen by construction


class FrozenModel:
    """What `finetune_residual` reads and writes of a `JEPAModel`: `cfg`, `encoder` and `predictor`."""

    def __init__(self, cfg, encoder: OnnxEncoder):
        self.cfg, self.encoder, self.predictor = cfg, encoder, None

    def eval(self) -> FrozenModel:
        return self


def setup(args: argparse.Namespace):
    """The bundle, the second stage's `TrainConfig` and the demo model config its encoder has; ValueError naming
    what is wrong otherwise."""
    bundle = load_bundle(args.model)
    m = bundle.manifest
    if m.input.layout != "BCTHW" or "predictor" not in m.graphs:
        raise ValueError(f"{args.model}: needs a demo video bundle (BCTHW, with a predictor graph)")
    if m.graphs["encoder"].precision != "fp32":
        raise ValueError(f"{args.model}: the encoder is {m.graphs['encoder'].precision}; train-demo's second stage "
                         "reads an FP32 encoder (try --model default-fp32)")
    recipe = (m.training or {}).get("recipe")
    if not recipe:
        raise ValueError(f"{args.model}: the manifest records no train-demo recipe (make it with ami-edge train-demo)")
    if args.stall_clips < 1:
        raise ValueError(f"--stall-clips must be >= 1, got {args.stall_clips}")
    if args.residual_steps is not None and args.residual_steps < 1:
        raise ValueError(f"--residual-steps must be >= 1, got {args.residual_steps}")
    given = {"residual_steps": args.residual_steps, "residual_examples": args.residual_examples,
             "residual_topk_weight": args.topk_weight, "residual_width": args.width, "residual_depth": args.depth,
             "seed": args.seed, "threads": args.threads}
    if args.objects is not None:
        parts = args.objects.split(",")
        if len(parts) != 2 or not all(x.strip().isdigit() for x in parts):
            raise ValueError(f"--objects takes MIN,MAX (e.g. 4,10), got {args.objects!r}")
        given["residual_objects"] = tuple(int(x) for x in parts)
    cfg = TrainConfig(**{**recipe, "residual_objects": tuple(recipe["residual_objects"]),
                         **{k: v for k, v in given.items() if v is not None}})
    model_cfg = demo_model_config(cfg.image_size, cfg.frames, cfg.patch, cfg.width, cfg.depth)
    if list(model_cfg.encoder.grid) != list(m.latent.grid):
        raise ValueError(f"{args.model}: token grid {m.latent.grid} is not a demo encoder's")
    return bundle, cfg, model_cfg


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default-fp32", help="an FP32 demo bundle (default: the shipped one)")
    p.add_argument("--residual-steps", type=int, help="second-stage steps (default: the recipe's)")
    p.add_argument("--residual-examples", type=int, help="cached next-step clips (default: the recipe's)")
    p.add_argument("--topk-weight", type=float, help="weight of the worst-K-tokens term (default: the recipe's)")
    p.add_argument("--width", type=int, help="conv predictor channels (default: the recipe's)")
    p.add_argument("--depth", type=int, help="conv predictor blocks (default: the recipe's)")
    p.add_argument("--objects", help="bodies per second-stage scene, MIN,MAX (default: the recipe's)")
    p.add_argument("--seed", type=int, help="seed of the worlds, the predictor and its data order (default: the "
                   "recipe's)")
    p.add_argument("--pairs", type=int, default=40, help="VoE pairs per violation type (default 40)")
    p.add_argument("--stall-clips", type=int, default=40, help="calm clips the stall term's weight is fitted on "
                   "(default 40, as train-demo)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, help="also write the report here")
    args = p.parse_args()

    try:
        bundle, cfg, model_cfg = setup(args)
    except (AmiEdgeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    m = bundle.manifest

    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    model = FrozenModel(model_cfg, OnnxEncoder(bundle.graph_path("encoder"), cfg.threads))
    held_out = held_out_batch(cfg)  # the clips train-demo reports its held-out losses on
    result = TrainResult(model, history=[{}])
    start = time.perf_counter()

    def progress(step: int, total: int, row: dict) -> None:
        if row.get("val_residual") is not None and (step - cfg.steps) % 500 == 1:
            print(f"step {step - cfg.steps - 1:5d}  held-out {row['val_residual']:.4f}  copy-last "
                  f"{row['val_copy']:.4f}  {row['seconds']:.0f} s", flush=True)

    finetune_residual(model, cfg, held_out, result, progress, start)
    seconds = time.perf_counter() - start
    predictor = model.predictor.eval()

    def predict(context: np.ndarray, context_ids: np.ndarray, target_ids: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return predictor(*(torch.from_numpy(a) for a in (context, context_ids, target_ids))).numpy()

    def encode(x: np.ndarray) -> np.ndarray:
        return model.encoder.session.run(None, {"pixels": x})[0]

    graphs = (encode, predict, tuple(m.latent.grid), m.input.frames, predictor_extrapolates(m), m.input.mean,
              m.input.std)
    stall = None
    if m.latent.stall is not None:
        stall = fit_stall_steps(step_tokens(*graphs), m.latent.surprise, m.input.height, m.latent.stall.offset,
                                args.stall_clips)
    report = evaluate(latent_scorer(*graphs, how=m.latent.surprise, stall=stall), pairs=args.pairs)
    plain = report if stall is None else evaluate(latent_scorer(*graphs, how=m.latent.surprise), pairs=args.pairs)
    out = {"model": args.model, "surprise": m.latent.surprise, "train_seconds": round(seconds, 1),
           "stall": None if stall is None else {"offset": stall.offset, "weight": stall.weight},
           "val_residual": result.metrics["val_residual"], "val_copy_last": result.metrics["val_copy_last"],
           "recipe": {k: getattr(cfg, k) for k in ("residual_steps", "residual_examples", "residual_batch",
                                                  "residual_objects", "residual_topk", "residual_topk_weight",
                                                  "residual_width", "residual_depth",
                                                  "seed")},
           "auc": {k: round(report[k]["auc"], 3) for k in KINDS},
           "paired": {k: round(report[k]["paired"], 3) for k in KINDS}}
    out["auc"]["mean"] = round(float(np.mean([report[k]["auc"] for k in KINDS])), 4)
    out["auc_no_stall"] = {k: round(plain[k]["auc"], 3) for k in KINDS}
    out["auc_no_stall"]["mean"] = round(float(np.mean([plain[k]["auc"] for k in KINDS])), 4)
    print(f"second stage {seconds:.0f} s, held-out {out['val_residual']:.4f} (copy-last {out['val_copy_last']:.4f})")
    print("ROC-AUC " + "  ".join(f"{k} {v:.3f}" for k, v in out["auc"].items()))
    if stall is not None:
        print(f"(stall term: offset {stall.offset:g}, weight {stall.weight:.4f} fitted to this predictor; without it: "
              + "  ".join(f"{k} {v:.3f}" for k, v in out["auc_no_stall"].items()) + ")")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
