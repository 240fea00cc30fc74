"""Export parity at the official model geometries, through the real CLI.

Writes random-weight checkpoints shaped exactly like the released ones (official `.pt` with `module.backbone.`
prefixes, Hugging Face directories), runs `ami-edge export` on each as a user would, and reports parity,
graph size and wall time per export. No download: the weights are random (std 0.02, the official init scale), so
this measures the export path, not accuracy on data.

    .venv/bin/python benchmarks/export_parity.py                 # all cases (~15 min on 2 cores, ~12 GB RAM)
    .venv/bin/python benchmarks/export_parity.py --only vjepa2-vitl --json out.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ami_edge import load_bundle
from ami_edge.export.models import JEPAModel
from ami_edge.export.models.config import EncoderConfig, JEPAConfig, PredictorConfig
from ami_edge.export.models.presets import preset_config


def _random(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1 or "mask_token" in name:
                p.copy_((torch.randn(p.shape, generator=gen) * 0.02).clamp_(-0.04, 0.04))
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    return model


def _save_official(path: Path, parts: dict[str, dict[str, torch.Tensor]], prefix: str) -> None:
    torch.save({k: {prefix + n: t for n, t in sd.items()} for k, sd in parts.items()} | {"epoch": 1}, path)


def _split(model: JEPAModel, group: str) -> dict[str, torch.Tensor]:
    return {k[len(group) + 1:]: v for k, v in model.state_dict().items() if k.startswith(group + ".")}


def vjepa2_vitl(tmp: Path) -> tuple[Path, list[str]]:
    m = _random(JEPAModel(preset_config("vjepa2-vitl")), 1)
    e = _split(m, "encoder") | {"pos_embed": torch.zeros(1, 8 * 16 * 16, 1024)}  # the unused table in releases
    path = tmp / "vitl.pt"
    _save_official(path, {"encoder": e, "target_encoder": e, "predictor": _split(m, "predictor")},
                   "module.backbone.")
    return path, ["--resolution", "256", "--frames", "16"]


def vjepa2_ac(tmp: Path) -> tuple[Path, list[str]]:
    # The released AC model pairs a ViT-g encoder with this predictor; a ViT-L encoder keeps the run in memory.
    cfg = dataclasses.replace(preset_config("vjepa2-ac-vitg"),
                              encoder=dataclasses.replace(preset_config("vjepa2-vitl").encoder, num_frames=2))
    m = _random(JEPAModel(cfg), 2)
    path = tmp / "vjepa2-ac.pt"
    _save_official(path, {"encoder": _split(m, "encoder"), "predictor": _split(m, "ac_predictor")}, "module.")
    return path, ["--resolution", "256"]  # per-frame encoding (frames = tubelet) is the AC default


def vjepa1_vitl(tmp: Path) -> tuple[Path, list[str]]:
    enc = EncoderConfig(img_size=(224, 224), patch_size=16, num_frames=16, embed_dim=1024, depth=24, num_heads=16,
                        uniform_power=True)
    m = _random(JEPAModel(JEPAConfig(family="vjepa", encoder=enc, predictor=PredictorConfig(
        embed_dim=384, depth=12, num_heads=16, num_mask_tokens=2))), 3)
    path = tmp / "vitl16.pth.tar"
    _save_official(path, {"encoder": _split(m, "encoder"), "target_encoder": _split(m, "encoder"),
                          "predictor": _split(m, "predictor")}, "module.backbone.")
    return path, ["--family", "vjepa"]


def ijepa_vith(tmp: Path) -> tuple[Path, list[str]]:
    # 632 M params: 2.5 GB in fp32, past protobuf's 2 GB, so the graph keeps its weights as external data.
    enc = EncoderConfig(img_size=(224, 224), patch_size=14, embed_dim=1280, depth=32, num_heads=16, layout="BCHW")
    m = _random(JEPAModel(JEPAConfig(family="ijepa", encoder=enc)), 4)
    path = tmp / "IN1K-vit.h.14-300e.pth.tar"
    _save_official(path, {"encoder": _split(m, "encoder"), "target_encoder": _split(m, "encoder")}, "module.")
    return path, []


def vjepa21_vitb(tmp: Path) -> tuple[Path, list[str]]:
    enc = EncoderConfig(img_size=(384, 384), patch_size=16, num_frames=16, embed_dim=768, depth=12, num_heads=12,
                        pos_embed="rope", rope_layout="interleaved", rope_ref_grid=16, output_norms=4,
                        modality_embed=True, image_patch_embed=True)
    m = _random(JEPAModel(JEPAConfig(family="vjepa2", encoder=enc)), 5)
    path = tmp / "vjepa2_1_vitb_dist_vitG_384.pt"
    _save_official(path, {"ema_encoder": _split(m, "encoder")}, "module.backbone.")
    return path, ["--checkpoint-key", "ema_encoder", "--resolution", "384", "--frames", "16"]


def hf_vjepa2_vitl(tmp: Path) -> tuple[Path, list[str]]:
    import transformers

    cfg = transformers.VJEPA2Config(crop_size=256, frames_per_clip=64, hidden_size=1024, num_hidden_layers=24,
                                    num_attention_heads=16)
    model = _random(transformers.VJEPA2Model(cfg), 6)
    path = tmp / "vjepa2-vitl-fpc64-256"
    model.save_pretrained(path)
    return path, ["--frames", "16"]


CASES: dict[str, Callable[[Path], tuple[Path, list[str]]]] = {
    "vjepa2-vitl": vjepa2_vitl, "vjepa2-ac": vjepa2_ac, "vjepa1-vitl": vjepa1_vitl, "ijepa-vith": ijepa_vith,
    "vjepa2.1-vitb": vjepa21_vitb, "hf-vjepa2-vitl": hf_vjepa2_vitl,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", choices=sorted(CASES), help="cases to run (default: all)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    results = []
    for name in args.only or list(CASES):
        with tempfile.TemporaryDirectory() as tmp_dir:
            tmp = Path(tmp_dir)
            src, flags = CASES[name](tmp)
            out = tmp / f"{name}.amiedge"
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "ami_edge", "export", str(src), *flags, "--out", str(out)],
                                  capture_output=True, text=True)
            seconds = time.perf_counter() - start
            if proc.returncode != 0:
                print(f"{name}: export failed\n{proc.stderr}", file=sys.stderr)
                results.append({"case": name, "ok": False, "error": proc.stderr.strip().splitlines()[-1]})
                continue
            bundle = load_bundle(out)
            for graph, report in bundle.manifest.parity["graphs"].items():
                spec = bundle.manifest.graphs[graph]
                size = sum((out / f).stat().st_size for _, f, _ in spec.files())
                worst_cos = min(s["cosine"] for s in report["outputs"].values())
                results.append({"case": name, "ok": True, "graph": graph, "max_abs": report["max_abs"],
                                "min_cosine": worst_cos, "size_mb": round(size / 1e6, 1),
                                "external_data": spec.data_file is not None, "export_s": round(seconds, 1),
                                "loader": bundle.manifest.provenance["loader"]})
            print(f"{name}: done in {seconds:.0f} s", file=sys.stderr)
    print(f"{'case':<16} {'graph':<13} {'max abs':>9} {'min cosine':>12} {'MB':>8} {'ext':>4} {'export s':>9}")
    for r in results:
        if r["ok"]:
            print(f"{r['case']:<16} {r['graph']:<13} {r['max_abs']:>9.2e} {r['min_cosine']:>12.9f} "
                  f"{r['size_mb']:>8.1f} {'yes' if r['external_data'] else 'no':>4} {r['export_s']:>9.1f}")
        else:
            print(f"{r['case']:<16} FAILED: {r['error']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all(r["ok"] and r["max_abs"] <= 1e-4 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
