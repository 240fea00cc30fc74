"""The student's architecture (the teacher's, shrunk) and the teachers: torch checkpoints or bundles in ONNX
Runtime. Parameter and FLOP counts for the report."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ami_edge.bundle import MANIFEST, Bundle, load_bundle
from ami_edge.errors import CheckpointError, ConfigError

from ..loaders import load_checkpoint
from ..loaders.base import LoadedModel
from ..models import JEPAModel
from ..models.config import JEPAConfig
from ..models.conv_predictor import context_steps


# ----------------------------------------------------------------------------------------------------- student
@dataclass
class StudentSpec:
    """What makes the student smaller; None keeps the teacher's value (widths and depths default to half)."""

    width: int | None = None
    depth: int | None = None
    heads: int | None = None
    pred_width: int | None = None
    pred_depth: int | None = None
    pred_heads: int | None = None
    resolution: int | None = None
    frames: int | None = None
    patch: int | None = None


def _heads(width: int, teacher_heads: int, teacher_width: int) -> int:
    """Keep the teacher's head width where the student's width allows it (at least one head)."""
    head_dim = max(1, teacher_width // teacher_heads)
    heads = max(1, width // head_dim)
    while width % heads:
        heads -= 1
    return heads


def student_config(teacher: JEPAConfig, spec: StudentSpec) -> JEPAConfig:
    enc = teacher.encoder
    width = spec.width or max(8, enc.embed_dim // 2)
    frames = spec.frames or enc.num_frames
    if frames > enc.num_frames:
        raise ConfigError(f"--frames {frames}: a student sees at most the teacher's {enc.num_frames} frames")
    size = spec.resolution or enc.img_size[0]
    s_enc = replace(enc, img_size=(size, size * enc.img_size[1] // enc.img_size[0]), num_frames=frames,
                    patch_size=spec.patch or enc.patch_size, embed_dim=width,
                    depth=spec.depth or max(1, enc.depth // 2),
                    num_heads=spec.heads or _heads(width, enc.num_heads, enc.embed_dim),
                    layout=enc.layout if frames > 1 or not enc.is_video else "BCHW",
                    output_norms=1, rope_ref_grid=0, modality_embed=False, image_patch_embed=False)
    pred = ac = None
    if teacher.predictor is not None and enc.is_video:
        p = teacher.predictor
        pw = spec.pred_width or max(8, p.embed_dim // 2)
        pred = replace(p, embed_dim=pw, depth=spec.pred_depth or max(1, p.depth // 2),
                       num_heads=spec.pred_heads or _heads(pw, p.num_heads, p.embed_dim))
    if teacher.ac_predictor is not None and enc.is_video:
        a = teacher.ac_predictor
        aw = spec.pred_width or max(8, a.embed_dim // 2)
        ac = replace(a, embed_dim=aw, depth=spec.pred_depth or max(1, a.depth // 2),
                     num_heads=spec.pred_heads or _heads(aw, a.num_heads, a.embed_dim))
    return JEPAConfig(family="native", encoder=s_enc, predictor=pred, ac_predictor=ac)


def prediction_ids(cfg: JEPAConfig) -> dict[str, torch.Tensor]:
    """The runtime's next-step query: RoPE predictors take the clip and the step after it; sincos-table ones the
    clip's last T-1 steps and the last position of their table."""
    t, h, w = cfg.encoder.grid
    hw = h * w
    m = context_steps(cfg.encoder) * hw
    return {"skip": torch.tensor(t * hw - m), "ctx": torch.arange(m)[None], "tgt": torch.arange(m, m + hw)[None]}


# ----------------------------------------------------------------------------------------------------- teachers
def to_layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """(B, C, T, H, W) normalised clip -> the tensor an encoder of `layout` takes."""
    if layout == "BTCHW":
        return x.permute(0, 2, 1, 3, 4)
    if layout == "BCHW":
        return x[:, :, -1]
    return x


class Teacher:
    """A frozen JEPA: encode (B, C, T, H, W) normalised clips, predict the next step, act (AC predictor)."""

    config: JEPAConfig
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str
    source_sha256: str
    kind: str
    surprise: str = "mean"  # the runtime's surprise reduction (`latent.surprise`); a checkpoint records none

    def encode(self, x: torch.Tensor) -> torch.Tensor: ...
    def predict(self, ctx: torch.Tensor, ctx_ids: torch.Tensor, tgt_ids: torch.Tensor) -> torch.Tensor: ...
    def act(self, ctx: torch.Tensor, actions: torch.Tensor, states: torch.Tensor) -> torch.Tensor: ...


class TorchTeacher(Teacher):
    def __init__(self, loaded: LoadedModel, device: torch.device):
        self.model = loaded.model.eval().requires_grad_(False).to(device)
        self.config, self.mean, self.std = loaded.config, loaded.mean, loaded.std
        self.source, self.source_sha256, self.kind = loaded.source, loaded.source_sha256, f"torch ({loaded.loader})"
        self.device = device

    @torch.no_grad()
    def encode(self, x):
        return self.model.encoder(to_layout(x.to(self.device), self.config.encoder.layout))

    @torch.no_grad()
    def predict(self, ctx, ctx_ids, tgt_ids):
        return self.model.predictor(ctx.to(self.device), ctx_ids.to(self.device), tgt_ids.to(self.device))

    @torch.no_grad()
    def act(self, ctx, actions, states):
        return self.model.ac_predictor(ctx.to(self.device), actions.to(self.device), states.to(self.device))


class BundleTeacher(Teacher):
    """A bundle's graphs in ONNX Runtime (FP32 or quantized): no torch model or checkpoint needed."""

    def __init__(self, bundle: Bundle, device: torch.device, threads: int):
        import onnxruntime as ort

        m = bundle.manifest
        if not m.model:
            raise CheckpointError(f"{bundle.path}: the manifest has no model config; distill from its checkpoint")
        self.config = JEPAConfig.from_dict(m.model)
        self.mean, self.std = tuple(m.input.mean), tuple(m.input.std)
        self.source, self.kind = str(bundle.path), "bundle (ONNX Runtime)"
        self.source_sha256 = bundle.manifest.graphs["encoder"].sha256
        self.surprise = m.latent.surprise
        self.device = device
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        self.sessions = {g: ort.InferenceSession(str(bundle.graph_path(g)), opts, providers=["CPUExecutionProvider"])
                         for g in m.graphs}

    def _run(self, graph: str, **feeds: torch.Tensor) -> torch.Tensor:
        arrays = {k: np.ascontiguousarray(v.detach().cpu().numpy()) for k, v in feeds.items()}
        return torch.from_numpy(self.sessions[graph].run(None, arrays)[0]).to(self.device)

    def encode(self, x):
        return self._run("encoder", pixels=to_layout(x, self.config.encoder.layout))

    def predict(self, ctx, ctx_ids, tgt_ids):
        return self._run("predictor", context=ctx, context_ids=ctx_ids, target_ids=tgt_ids)

    def act(self, ctx, actions, states):
        return self._run("ac_predictor", context=ctx, actions=actions, states=states)


def load_teacher(src: str, family: str, device: torch.device, threads: int) -> Teacher:
    """A bundle directory or shipped bundle name -> BundleTeacher; any checkpoint or preset -> TorchTeacher."""
    path = Path(src).expanduser()
    if (path / MANIFEST).is_file() or (not path.exists() and not src.startswith("preset:") and "/" not in src
                                       and not src.endswith((".pt", ".pth", ".safetensors"))):
        return BundleTeacher(load_bundle(src), device, threads)
    return TorchTeacher(load_checkpoint(src, family), device)




# ------------------------------------------------------------------------------------------------------ report
def count(model: JEPAModel) -> dict[str, int]:
    """Parameters and forward FLOPs (torch.utils.flop_counter: matmuls, convolutions, attention) of the per-step
    path the runtime runs: one encoder pass on a clip plus one next-step prediction."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg = model.cfg
    enc = cfg.encoder
    shape = {"BCTHW": (1, 3, enc.num_frames, *enc.img_size), "BTCHW": (1, enc.num_frames, 3, *enc.img_size),
             "BCHW": (1, 3, *enc.img_size)}[enc.layout]
    device = next(model.parameters()).device
    ids = {k: v.to(device) for k, v in prediction_ids(cfg).items()}
    out = {"params": sum(p.numel() for p in model.parameters())}
    with torch.no_grad():
        with FlopCounterMode(display=False) as fc:
            z = model.encoder(torch.zeros(shape, device=device))
        out["encoder_flops"] = fc.get_total_flops()
        out["predictor_flops"] = 0
        if model.predictor is not None:
            with FlopCounterMode(display=False) as fc:
                model.predictor(z[:, int(ids["skip"]):], ids["ctx"], ids["tgt"])
            out["predictor_flops"] = fc.get_total_flops()
    out["flops"] = out["encoder_flops"] + out["predictor_flops"]
    return out


def teacher_model(teacher: Teacher) -> JEPAModel:
    if isinstance(teacher, TorchTeacher):
        return teacher.model
    torch.manual_seed(0)
    return JEPAModel(teacher.config)  # architecture only: FLOPs and parameter counts do not depend on weights


