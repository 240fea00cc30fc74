"""`ami-edge export`: checkpoint -> verified ONNX bundle, with rich progress and a parity table."""

from __future__ import annotations

import argparse
import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ami_edge.bundle import GRAPH_NAMES
from ami_edge.errors import ConfigError

from .loaders import LoadOptions, load_checkpoint
from .onnx_export import MIN_OPSET, bundle_out_path, export_bundle


@contextlib.contextmanager
def quiet_exporter(verbose: bool) -> Iterator[None]:
    """The torch exporter logs and warns a lot about things users cannot act on; keep it for --verbose."""
    if verbose:
        yield
        return
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def default_out(src: str) -> Path:
    stem = src.split(":", 1)[1] if src.startswith("preset:") else Path(src.rstrip("/")).stem
    return Path.cwd() / f"{stem}.amiedge"


def check_args(args: argparse.Namespace) -> None:
    """Flag errors that need no checkpoint, before loading one that may be gigabytes."""
    if args.opset < MIN_OPSET:
        raise ConfigError(f"--opset {args.opset} is too old: LayerNormalization needs opset >= {MIN_OPSET}")
    unknown = [g for g in args.graphs or [] if g not in GRAPH_NAMES]
    if unknown:
        raise ConfigError(f"--graphs: unknown graph {', '.join(unknown)}; valid: {', '.join(GRAPH_NAMES)}")
    if args.graphs and "encoder" not in args.graphs:
        raise ConfigError("--graphs must include encoder: every bundle needs one")
    if args.tolerance <= 0:
        raise ConfigError(f"--tolerance must be > 0, got {args.tolerance}")


def run(args: argparse.Namespace) -> int:
    check_args(args)
    console = Console(stderr=True, log_path=False)
    opts = LoadOptions(checkpoint_key=args.checkpoint_key, resolution=args.resolution, frames=args.frames,
                       num_heads=args.num_heads, pred_num_heads=args.pred_num_heads)
    out = bundle_out_path(args.out or default_out(args.src))  # refuse a bad --out before loading anything
    with quiet_exporter(args.verbose), console.status(f"loading {args.src}") as status:
        loaded = load_checkpoint(args.src, args.family, opts, seed=args.seed)
        cfg = loaded.config
        params = sum(p.numel() for p in loaded.model.parameters())
        console.log(f"loaded {args.src} with {loaded.loader}: {cfg.family}, encoder {cfg.encoder.embed_dim}x"
                    f"{cfg.encoder.depth} ({cfg.encoder.pos_embed}), {params / 1e6:.2f} M params, graphs "
                    f"{', '.join(loaded.model.graphs())}")
        for key in loaded.ignored_keys:
            console.log(f"ignored unused key {key}")
        for note in loaded.notes:
            console.log(note)

        def stage(msg: str) -> None:
            status.update(msg)
            console.log(msg)

        bundle = export_bundle(loaded, out, graphs=args.graphs, opset=args.opset, tolerance=args.tolerance,
                               seed=args.seed, name=args.name, on_stage=stage, surprise=args.surprise)
    table = Table(title=f"parity: ONNX Runtime (CPU) vs torch, tolerance {args.tolerance:g}")
    for col in ("graph", "output", "max abs diff", "cosine"):
        table.add_column(col)
    for graph, report in bundle.manifest.parity["graphs"].items():
        for output, stats in report["outputs"].items():
            table.add_row(graph, output, f"{stats['max_abs']:.2e}", f"{stats['cosine']:.8f}")
    Console().print(table)
    print(f"wrote {bundle.path}")
    return 0
