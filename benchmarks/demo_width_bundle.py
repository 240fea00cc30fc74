"""The demo model's geometry at another width, random weights, exported: how INT8's gain grows with GEMM size.

    .venv/bin/python benchmarks/demo_width_bundle.py --width 384 --heads 6 --pred-width 192 --out build/wide384
    .venv/bin/python benchmarks/quantize_speed.py build/wide384.amiedge --threads 1 --rounds 30 --no-fp16 --voe-pairs 0

Same input (64 px, 4 frames, tubelet 2, patch 8: 128 tokens), depth (encoder 4, predictor 3) and 3-D RoPE as
`demo_model_config(patch=8, depth=4)` (the default before stop 17), only the widths and head counts changed; no AC
predictor. Weights are seeded N(0, 0.02) clamped at 2 sigma with zero biases, as `load_preset` does: this measures
speed and quantization error of the geometry, not a trained model.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import sys

import torch

from ami_edge.export.demo.train import demo_model_config
from ami_edge.export.loaders.base import LoadedModel
from ami_edge.export.models import JEPAModel
from ami_edge.export.onnx_export import export_bundle


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--width", type=int, default=384, help="encoder embed dim")
    p.add_argument("--heads", type=int, default=6, help="encoder heads (head dim = width / heads)")
    p.add_argument("--pred-width", type=int, default=192, help="predictor embed dim")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="bundle directory (.amiedge appended)")
    args = p.parse_args()
    cfg = demo_model_config(patch=8, depth=4)
    cfg = dataclasses.replace(cfg, encoder=dataclasses.replace(cfg.encoder, embed_dim=args.width, num_heads=args.heads),
                              predictor=dataclasses.replace(cfg.predictor, embed_dim=args.pred_width),
                              ac_predictor=None)
    gen = torch.Generator().manual_seed(args.seed)
    model = JEPAModel(cfg)
    with torch.no_grad():
        for key, param in model.named_parameters():
            if param.dim() > 1:
                param.copy_(torch.randn(param.shape, generator=gen).clamp_(-2, 2) * 0.02)
            elif key.endswith("bias"):
                param.zero_()
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().contiguous().numpy().tobytes())
    loaded = LoadedModel(model=model, loader="preset", source=f"demo-width-{args.width}",
                         source_sha256=digest.hexdigest(), notes=[f"seed={args.seed}", "random weights"])
    print(f"wrote {export_bundle(loaded, args.out).path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
