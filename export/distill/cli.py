"""`ami-edge distill`: run a distillation, then the student bundle and the report (rank 0)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ami_edge.bundle import check_surprise_option, load_bundle
from ami_edge.errors import ConfigError

from ..loaders.base import LoadedModel
from .models import StudentSpec, Teacher, count, load_teacher, student_config, teacher_model
from .trainer import CHECKPOINT, DistillConfig, Distiller, init_distributed


def teacher_scorer(teacher: Teacher, how: str | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """Per-frame surprise from the teacher, computed as the runtime computes it (see `latent_scorer`), reduced over
    a step's tokens as `how` says (default: the teacher's own `surprise`)."""
    from ..demo.voe import latent_scorer

    enc = teacher.config.encoder

    def encode(x: np.ndarray) -> np.ndarray:
        return teacher.encode(torch.from_numpy(x)).cpu().numpy()

    def predict(c: np.ndarray, ci: np.ndarray, ti: np.ndarray) -> np.ndarray:
        return teacher.predict(torch.from_numpy(c), torch.from_numpy(ci), torch.from_numpy(ti)).cpu().numpy()

    return latent_scorer(encode, predict, enc.grid, enc.num_frames, enc.pos_embed == "rope", teacher.mean,
                         teacher.std, how=how or teacher.surprise)


def voe(score: Callable[[np.ndarray], np.ndarray], pairs: int, size: int) -> dict[str, Any]:
    """VoE-AUC per violation type and their mean on the demo world's held-out seeds, rendered at `size`."""
    from ..demo.voe import evaluate

    per_kind = evaluate(score, pairs=pairs, size=size)
    return {"auc": {k: round(v["auc"], 4) for k, v in per_kind.items()},
            "mean_auc": round(float(np.mean([v["auc"] for v in per_kind.values()])), 4), "pairs": pairs}


def plot(history: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in history]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for key in ("val_feature", "val_predictor", "val_self", "val_ac"):
        if key in history[-1]:
            axes[0].plot(steps, [r.get(key, float("nan")) for r in history], label=key[4:])
    axes[0].set_yscale("log")
    axes[0].set_title("held-out distillation losses")
    axes[0].legend()
    for key in ("latent_cosine", "prediction_cosine"):
        if key in history[-1]:
            axes[1].plot(steps, [r[key] for r in history], label=key.replace("_", " "))
    axes[1].set_title("teacher <-> student cosine (held-out)")
    axes[1].legend()
    for ax in axes:
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# --------------------------------------------------------------------------------------------------------- CLI
def run(args: Any) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from rich.table import Table

    from ami_edge.bundle import bundle_out_path

    sources = args.source or ["demo"]
    if "demo" in sources and len(sources) > 1:
        raise ConfigError("--source demo is the whole built-in world; do not mix it with other sources")
    dist, device = init_distributed(args.device)
    threads = args.threads or max(1, (os.cpu_count() or 1) // dist.world)
    torch.set_num_threads(threads)
    console = Console(stderr=True, log_path=False, quiet=not dist.main)
    out = Path(args.out)
    bundle_path = bundle_out_path(out / f"{args.name}.amiedge")  # refuse a bad --out before loading anything
    cfg = DistillConfig(steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed, save_every=args.save_every,
                        self_weight=args.self_weight)
    ckpt = out / CHECKPOINT
    if ckpt.exists() and not args.resume:
        raise ConfigError(f"{ckpt} exists: pass --resume to continue that run, or choose another --out")
    if args.resume and not ckpt.exists():
        raise ConfigError(f"--resume: no checkpoint at {ckpt}")
    teacher = load_teacher(args.teacher, args.family, device, threads)
    s_cfg = student_config(teacher.config, StudentSpec(args.width, args.depth, args.heads, args.pred_width,
                                                       args.pred_depth, args.pred_heads, args.resolution,
                                                       args.frames, args.patch))
    surprise = args.surprise or teacher.surprise
    check_surprise_option(surprise, s_cfg.encoder.grid)  # before training, not after it
    distiller = Distiller(teacher, s_cfg, cfg, sources, dist, device)
    for note in distiller.notes:
        console.log(note)
    if args.resume:
        distiller.resume(ckpt)
        console.log(f"resumed {ckpt} at step {distiller.step}")
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
    t_count, s_count = count(teacher_model(teacher)), count(distiller.student)
    console.log(f"teacher {teacher.kind} {teacher.source}: {t_count['params'] / 1e6:.2f} M params, "
                f"{t_count['flops'] / 1e6:.1f} MFLOPs per step; student {s_count['params'] / 1e6:.2f} M params, "
                f"{s_count['flops'] / 1e6:.1f} MFLOPs ({t_count['flops'] / s_count['flops']:.1f}x fewer); "
                f"{dist.world} process(es), {threads} thread(s) each")
    columns = (TextColumn("distilling"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, disable=not dist.main) as bar:
        task = bar.add_task("distill", total=cfg.steps, completed=distiller.step, info="")

        def progress(step: int, total: int, row: dict) -> None:
            info = f"feature {row['val_feature']:.4f} cos {row['latent_cosine']:.3f}"
            if "prediction_cosine" in row:
                info += f" pred cos {row['prediction_cosine']:.3f}"
            bar.update(task, completed=step, info=info)

        distiller.train(out, progress)
    digests = distiller.rank_digests()
    if dist.main:
        finish(args, teacher, distiller, t_count, s_count, bundle_path, console, Table, digests, surprise)
    if dist.world > 1:
        import torch.distributed as tdist

        tdist.barrier()
        tdist.destroy_process_group()
    return 0


def finish(args: Any, teacher: Teacher, distiller: Distiller, t_count: dict, s_count: dict, bundle_path: Path,
           console: Any, table_cls: Any, digests: dict[str, list[float]], surprise: str) -> None:
    """Rank 0: student checkpoint, plot, bundle, report (params, FLOPs, cosine, VoE of both). Teacher and student
    surprise are both reduced as `surprise` says, and the student bundle records it."""
    from ami_edge.bundle import MANIFEST as MANIFEST_NAME

    from ..cli import quiet_exporter
    from ..loaders.base import sha256_path
    from ..loaders.native import save_native
    from ..onnx_export import export_bundle

    out = Path(args.out)
    student = distiller.student.eval().cpu()
    last = distiller.history[-1]
    report: dict[str, Any] = {
        "teacher": {"source": teacher.source, "sha256": teacher.source_sha256, "kind": teacher.kind, **t_count},
        "student": {**s_count, "config": student.cfg.to_dict()},
        "flops_ratio": round(t_count["flops"] / s_count["flops"], 2),
        "latent_cosine": round(last["latent_cosine"], 4),
        "prediction_cosine": round(last["prediction_cosine"], 4) if "prediction_cosine" in last else None,
        "teacher_token_std": distiller.scale, "world_size": distiller.dist.world, "steps": distiller.step,
        "rank_digests": digests, "notes": distiller.notes, "surprise": surprise,
        "data": args.source or ["demo"], "recipe": asdict(distiller.cfg),
    }
    (out / "history.json").write_text(json.dumps(distiller.history, indent=1) + "\n")
    plot(distiller.history, out / "distill.png")
    ckpt = save_native(student, out / "student.safetensors", {"distillation": json.dumps(report)})
    loaded = LoadedModel(model=student, loader="distill", source=str(ckpt), source_sha256=sha256_path(ckpt),
                         mean=tuple(teacher.mean), std=tuple(teacher.std))
    with quiet_exporter(args.verbose):
        bundle = export_bundle(loaded, bundle_path, name=args.name, seed=args.seed, on_stage=console.log,
                               training={"distillation": report}, surprise=surprise)
    if args.voe_pairs > 0 and student.predictor is not None:
        from ..demo.voe import bundle_scorer

        console.log(f"VoE on the demo world ({args.voe_pairs} pairs per violation type), teacher and student")
        report["voe_teacher"] = voe(teacher_scorer(teacher, surprise), args.voe_pairs,
                                    teacher.config.encoder.img_size[0])
        report["voe_student"] = voe(bundle_scorer(bundle), args.voe_pairs, student.cfg.encoder.img_size[0])
        report["voe_retained"] = round(report["voe_student"]["mean_auc"] / report["voe_teacher"]["mean_auc"], 4)
        manifest_path = bundle.path / MANIFEST_NAME  # plain JSON; the graphs carry their own sha256
        manifest = json.loads(manifest_path.read_text())
        manifest["training"] = {"distillation": report}
        manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    table = table_cls(title="distillation report")
    for col in ("", "teacher", "student"):
        table.add_column(col)
    table.add_row("params", f"{t_count['params'] / 1e6:.3f} M", f"{s_count['params'] / 1e6:.3f} M")
    table.add_row("MFLOPs / step", f"{t_count['flops'] / 1e6:.1f}", f"{s_count['flops'] / 1e6:.1f} "
                  f"({report['flops_ratio']:.1f}x fewer)")
    table.add_row("latent cosine (via P)", "", f"{report['latent_cosine']:.4f}")
    if "voe_student" in report:
        for kind, auc in report["voe_teacher"]["auc"].items():
            table.add_row(f"VoE-AUC {kind}", f"{auc:.3f}", f"{report['voe_student']['auc'][kind]:.3f}")
        table.add_row("VoE-AUC mean", f"{report['voe_teacher']['mean_auc']:.3f}",
                      f"{report['voe_student']['mean_auc']:.3f} ({100 * report['voe_retained']:.1f} % kept)")
    from rich.console import Console

    Console().print(table)
    print(f"wrote {load_bundle(bundle.path).path}")
