"""`ami-edge distill`: a smaller JEPA student from any loadable teacher, by layer-pair knowledge distillation.

Teacher: any checkpoint `ami-edge export` loads (official, Hugging Face, native, preset) run in torch, or a bundle run
in ONNX Runtime (no gradient flows through the teacher, so its exported graphs are enough). Student: the teacher's
architecture made smaller (width, depth, heads, resolution, frames, patch), same position scheme and layout.

Losses, per pair of layers (ModelOpt's layer-pair KD; each term is smooth-L1 plus 1 - cosine):
- `feature`: student encoder tokens, through a learned projection P (student width -> teacher width), match the
  teacher's tokens resampled onto the student's token grid (the student's clip is the teacher clip's last frames);
- `predictor`: the student predictor's next-step prediction, through the same P, matches the teacher predictor's
  next-step prediction on the same grid. Sharing P keeps the two in one student space: a prediction is right when
  it maps where the teacher's prediction lies, exactly as the student's tokens map onto the teacher's;
- `self`: the student prediction matches the student encoder's own tokens of that step (stop-gradient), so the
  directions P ignores cannot drift and surprise (prediction vs observation, in student space) stays meaningful;
- `ac`: the action-conditioned predictor's next-step prediction, like `predictor`, on clips that carry actions.
Teacher targets are divided by the teacher token std measured on the first batch (recorded), so the loss scale does
not depend on how large a given checkpoint's latents are.

Runs on one process or under `torchrun` (DistributedDataParallel: gloo on CPU, nccl on GPU); rank 0 writes the
resumable checkpoint (safetensors + JSON, no pickle), the metrics plot, the report and the student bundle.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ami_edge.bundle import MANIFEST, Bundle, load_bundle
from ami_edge.errors import CheckpointError, ConfigError

from .loaders import load_checkpoint
from .loaders.base import LoadedModel
from .models import JEPAModel
from .models.config import JEPAConfig

CHECKPOINT = "checkpoint.safetensors"


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


# --------------------------------------------------------------------------------------------------------- data
@dataclass
class Clips:
    frames: np.ndarray  # (B, W, H, W, 3) uint8: the teacher's clip plus one tubelet of future
    actions: np.ndarray  # (B, W, A)
    states: np.ndarray  # (B, W, S)
    pusher: np.ndarray  # (B,) bool: the clip carries actions


class DemoData:
    """The built-in synthetic world (`--source demo`): hundreds of running scenes, half with the pusher agent."""

    def __init__(self, window: int, size: int, seed: int):
        from .demo.data import WorldPool

        self.pool = WorldPool(192, seed, size, window)
        self.action_dims = (2, 2)  # the pusher's velocity and position

    def sample(self, batch: int) -> Clips:
        return Clips(*self.pool.sample_raw(batch))


class SourceData:
    """Windows of consecutive frames from source URIs (files loop), drawn at random from a shuffle buffer."""

    def __init__(self, uris: list[str], window: int, size: int, seed: int, stride: int = 2, buffer: int = 512):
        from ami_edge.sources import open_source

        self.open = open_source
        self.uris, self.window, self.size, self.stride = uris, window, size, stride
        self.rng = np.random.default_rng(seed)
        self.buffer: list[tuple[np.ndarray, np.ndarray, np.ndarray, bool]] = []
        self.capacity = buffer
        self.iters = [iter(self.open(u)) for u in uris]
        self.recent: list[list] = [[] for _ in uris]

    def _frame(self, i: int):
        try:
            return next(self.iters[i])
        except StopIteration:  # a file ended: loop it
            self.iters[i] = iter(self.open(self.uris[i]))
            self.recent[i].clear()
            return next(self.iters[i])

    def _fill(self, count: int) -> None:
        import cv2

        for _ in range(count):
            i = int(self.rng.integers(len(self.uris)))
            for _ in range(self.stride):
                frame = self._frame(i)
                image = frame.image
                if image.shape[:2] != (self.size, self.size):
                    image = cv2.resize(image, (self.size, self.size), interpolation=cv2.INTER_AREA)
                act = getattr(frame, "action", None)
                state = getattr(frame, "state", None)
                keep = self.recent[i][max(0, len(self.recent[i]) - self.window + 1):]  # the last window - 1
                self.recent[i] = [*keep, (image, act, state)]
            if len(self.recent[i]) == self.window:
                items = self.recent[i]
                pusher = all(a is not None and s is not None for _, a, s in items)
                none = np.zeros((self.window, 2), np.float32)
                acts = np.stack([np.asarray(a, np.float32) for _, a, _ in items]) if pusher else none
                sts = np.stack([np.asarray(s, np.float32) for _, _, s in items]) if pusher else none
                entry = (np.stack([im for im, _, _ in items]), acts, sts, pusher)
                if len(self.buffer) < self.capacity:
                    self.buffer.append(entry)
                else:
                    self.buffer[int(self.rng.integers(self.capacity))] = entry

    def sample(self, batch: int, remove: bool = False) -> Clips:
        self._fill(batch if len(self.buffer) >= batch else 4 * batch + self.window)
        while len(self.buffer) < batch:
            self._fill(batch)
        pick = self.rng.choice(len(self.buffer), size=batch, replace=False)
        rows = [self.buffer[k] for k in pick]
        if remove:
            self.buffer = [e for k, e in enumerate(self.buffer) if k not in set(pick.tolist())]
        dims = max(r[1].shape[1] for r in rows)
        pad = lambda a: np.pad(a, ((0, 0), (0, dims - a.shape[1])))  # noqa: E731
        return Clips(np.stack([r[0] for r in rows]), np.stack([pad(r[1]) for r in rows]),
                     np.stack([pad(r[2]) for r in rows]), np.array([r[3] for r in rows]))

    def take(self, batch: int) -> Clips:
        """A batch removed from the buffer: held-out clips training never samples (the stream moves on)."""
        return self.sample(batch, remove=True)


def normalise(frames: np.ndarray, size: int, mean, std) -> torch.Tensor:
    """(B, W, H, W, 3) uint8 -> (B, 3, W, size, size) float32, resized like the runtime (INTER_AREA)."""
    import cv2

    b, w = frames.shape[:2]
    if frames.shape[2] != size:
        flat = frames.reshape(b * w, *frames.shape[2:])
        frames = np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in flat]).reshape(
            b, w, size, size, 3)
    x = (frames.astype(np.float32) / 255.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 4, 1, 2, 3)))


# ------------------------------------------------------------------------------------------------------ losses
def resample(tokens: torch.Tensor, grid: tuple[int, int, int], to: tuple[int, int, int]) -> torch.Tensor:
    """(B, T*H*W, D) tokens on `grid` -> (B, T'*H'*W', D) on grid `to`: the last T' steps, area-averaged in space."""
    b, _, d = tokens.shape
    t, h, w = grid
    x = tokens.reshape(b, t, h, w, d)[:, t - to[0]:]
    if (h, w) != to[1:]:
        x = F.adaptive_avg_pool3d(x.permute(0, 4, 1, 2, 3), to).permute(0, 2, 3, 4, 1)
    return x.reshape(b, -1, d)


def match(student: torch.Tensor, teacher: torch.Tensor, cosine_weight: float) -> torch.Tensor:
    return F.smooth_l1_loss(student, teacher) + cosine_weight * (1 - F.cosine_similarity(student, teacher, -1)).mean()


@dataclass
class DistillConfig:
    steps: int = 1500
    batch: int = 16
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup: int = 100
    cosine_weight: float = 1.0
    feature_weight: float = 1.0
    predictor_weight: float = 1.0
    self_weight: float = 0.5
    ac_weight: float = 1.0
    seed: int = 0
    save_every: int = 250
    log_every: int = 25

    def __post_init__(self) -> None:
        for name in ("steps", "batch", "save_every", "log_every"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"distill: --{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")


class Pair(nn.Module):
    """The trainable part: the student and the projection of its tokens into the teacher's space. Its forward
    returns the losses, so DistributedDataParallel sees every parameter use inside one forward."""

    def __init__(self, student: JEPAModel, teacher_dim: int, cfg: DistillConfig):
        super().__init__()
        self.student = student
        self.proj = nn.Linear(student.cfg.encoder.embed_dim, teacher_dim)
        self.cfg = cfg

    def forward(self, b: Batchwise, ids: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        s, c = self.student, self.cfg
        layout = s.cfg.encoder.layout
        _, gh, gw = s.cfg.encoder.grid
        z = s.encoder(to_layout(b.x, layout))
        parts = {"feature": match(self.proj(z), b.tokens, c.cosine_weight)}
        if s.predictor is not None and b.pred is not None:
            n, skip = z.shape[0], int(ids["skip"])
            pred = s.predictor(z[:, skip:], ids["ctx"].expand(n, -1), ids["tgt"].expand(n, -1))
            with torch.no_grad():
                nxt = s.encoder(to_layout(b.x_next, layout))[:, -gh * gw:]
            parts["predictor"] = match(self.proj(pred), b.pred, c.cosine_weight)
            parts["self"] = F.smooth_l1_loss(pred, nxt)
        if s.ac_predictor is not None and b.ac is not None:
            ac = s.ac_predictor(z[:b.acts.shape[0]], b.acts, b.states)[:, -gh * gw:]
            parts["ac"] = match(self.proj(ac), b.ac, c.cosine_weight)
        weights = {"feature": c.feature_weight, "predictor": c.predictor_weight, "self": c.self_weight,
                   "ac": c.ac_weight}
        parts["loss"] = sum(weights[k] * v for k, v in parts.items())
        return parts


def prediction_ids(cfg: JEPAConfig) -> dict[str, torch.Tensor]:
    """The runtime's next-step query: RoPE predictors take the clip and the step after it; sincos-table ones the
    clip's last T-1 steps and the last position of their table."""
    t, h, w = cfg.encoder.grid
    hw, n = h * w, t * h * w
    skip = 0 if cfg.encoder.pos_embed == "rope" else hw
    return {"skip": torch.tensor(skip), "ctx": torch.arange(n - skip)[None],
            "tgt": torch.arange(n - skip, n - skip + hw)[None]}


def step_inputs(actions: np.ndarray, states: np.ndarray, frames: int, tubelet: int, first: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per tubelet step of the clip starting at frame `first`: mean action over the step, state at its first frame
    (how train-demo feeds the AC predictor)."""
    a = torch.from_numpy(actions[:, first:first + frames])
    s = torch.from_numpy(states[:, first:first + frames:tubelet])
    return a.reshape(a.shape[0], frames // tubelet, tubelet, -1).mean(2), s


# -------------------------------------------------------------------------------------------------- distributed
@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> tuple[Dist, torch.device]:
    """torchrun sets WORLD_SIZE / RANK / LOCAL_RANK: join the process group (nccl on GPU, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if cuda and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is visible to torch")
    if world == 1:
        return Dist(), torch.device("cuda" if cuda else "cpu")
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(local)
    return Dist(dist.get_rank(), dist.get_world_size(), local), torch.device(f"cuda:{local}" if cuda else "cpu")


# ---------------------------------------------------------------------------------------------------- training
def lr_at(step: int, cfg: DistillConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass
class Batchwise:
    """One step's tensors: student clips now and one tubelet later, teacher targets on the student grid."""

    x: torch.Tensor
    x_next: torch.Tensor
    tokens: torch.Tensor
    pred: torch.Tensor | None
    ac: torch.Tensor | None
    acts: torch.Tensor | None
    states: torch.Tensor | None


class Distiller:
    def __init__(self, teacher: Teacher, student_cfg: JEPAConfig, cfg: DistillConfig, data_uris: list[str],
                 dist: Dist, device: torch.device):
        self.teacher, self.cfg, self.dist, self.device = teacher, cfg, dist, device
        t_enc = teacher.config.encoder
        self.tubelet = t_enc.tubelet_size if t_enc.is_video else 1
        self.window = t_enc.num_frames + (self.tubelet if t_enc.is_video else 0)
        self.uris = data_uris
        self.data = self._data(cfg.seed + 1000 * dist.rank)
        # held-out clips: other scenes of the demo world; for other sources, clips taken out of the stream
        self.held_out = (self._data(cfg.seed + 987_654).sample(cfg.batch) if data_uris == ["demo"]
                         else self.data.take(cfg.batch))
        self.notes: list[str] = []
        a = student_cfg.ac_predictor
        if a is not None:
            dims = self.data.action_dims if isinstance(self.data, DemoData) else (
                (self.held_out.actions.shape[-1], self.held_out.states.shape[-1]) if self.held_out.pusher.any()
                else None)
            if dims != (a.action_dim, a.state_dim):
                found = "no actions" if dims is None else f"actions/states of {dims[0]}/{dims[1]} dims"
                self.notes.append(f"the training frames carry {found}, the teacher's AC predictor takes "
                                  f"{a.action_dim}/{a.state_dim}: the student has no AC predictor")
                student_cfg = replace(student_cfg, ac_predictor=None)
        torch.manual_seed(cfg.seed)  # the same initial student on every rank (DDP also broadcasts rank 0's)
        self.student = JEPAModel(student_cfg)
        s_enc = student_cfg.encoder
        self.t_grid, self.s_grid = t_enc.grid, s_enc.grid
        if s_enc.is_video and (s_enc.tubelet_size != self.tubelet):
            raise ConfigError("the student keeps the teacher's tubelet size")
        self.pair = Pair(self.student, t_enc.embed_dim, cfg).to(device)
        self.module: nn.Module = self.pair
        if dist.world > 1:
            self.module = nn.parallel.DistributedDataParallel(
                self.pair, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)
        decay = [p for p in self.pair.parameters() if p.dim() > 1]
        rest = [p for p in self.pair.parameters() if p.dim() <= 1]
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                      {"params": rest, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.99))
        self.t_ids, self.s_ids = prediction_ids(teacher.config), prediction_ids(student_cfg)
        self.s_ids = {k: v.to(device) for k, v in self.s_ids.items()}
        self.scale = 0.0  # teacher token std, fixed on the first batch
        self.step = 0
        self.data_digest = 0.0
        self.history: list[dict[str, float]] = []

    def _data(self, seed: int):
        size = self.teacher.config.encoder.img_size[0]
        if self.uris == ["demo"]:
            return DemoData(self.window, size, seed)
        return SourceData(self.uris, self.window, size, seed)

    # ---- one batch of teacher targets
    def targets(self, clips: Clips) -> Batchwise:
        t_cfg, s_cfg = self.teacher.config, self.student.cfg
        tf, sf = t_cfg.encoder.num_frames, s_cfg.encoder.num_frames
        x_t = normalise(clips.frames[:, :tf], t_cfg.encoder.img_size[0], self.teacher.mean, self.teacher.std)
        frames_s = normalise(clips.frames, s_cfg.encoder.img_size[0], self.teacher.mean, self.teacher.std)
        first = tf - sf  # the student's clip is the teacher clip's last frames
        x = frames_s[:, :, first:tf].to(self.device)
        x_next = frames_s[:, :, first + self.tubelet:tf + self.tubelet].to(self.device)
        z_t = self.teacher.encode(x_t)
        if not self.scale:
            self.scale = float(z_t.float().std())
        s_grid = (self.s_grid[0], *self.s_grid[1:])
        tokens = resample(z_t, self.t_grid, s_grid) / self.scale
        pred = ac = acts = states = None
        if self.student.predictor is not None:
            b = z_t.shape[0]
            skip = int(self.t_ids["skip"])
            p = self.teacher.predict(z_t[:, skip:].contiguous(), self.t_ids["ctx"].expand(b, -1),
                                     self.t_ids["tgt"].expand(b, -1))
            pred = resample(p, (1, *self.t_grid[1:]), (1, *s_grid[1:])) / self.scale
        rows = np.flatnonzero(clips.pusher)
        if self.student.ac_predictor is not None and len(rows):
            a_t, s_t = step_inputs(clips.actions[rows], clips.states[rows], tf, self.tubelet, 0)
            p = self.teacher.act(z_t[rows].contiguous(), a_t, s_t)
            hw = self.t_grid[1] * self.t_grid[2]
            ac = resample(p[:, -hw:], (1, *self.t_grid[1:]), (1, *s_grid[1:])) / self.scale
            acts, states = step_inputs(clips.actions[rows], clips.states[rows], sf, self.tubelet, first)
            order = np.concatenate([rows, np.flatnonzero(~clips.pusher)])  # pusher rows first for the AC slice
            x, x_next, tokens = x[order], x_next[order], tokens[order]
            pred = pred[order] if pred is not None else None
            acts, states = acts.to(self.device), states.to(self.device)
        return Batchwise(x, x_next, tokens.to(self.device), None if pred is None else pred.to(self.device),
                         None if ac is None else ac.to(self.device), acts, states)

    def losses(self, b: Batchwise) -> dict[str, torch.Tensor]:
        return self.module(b, self.s_ids)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Held-out losses and the teacher<->student latent cosine (student tokens through P vs teacher tokens)."""
        self.pair.eval()
        b = self.targets(self.held_out)
        parts = self.losses(b)
        z = self.student.encoder(to_layout(b.x, self.student.cfg.encoder.layout))
        cos = F.cosine_similarity(self.pair.proj(z), b.tokens, -1).mean()
        row = {f"val_{k}": float(v) for k, v in parts.items()}
        row["latent_cosine"] = float(cos)
        if b.pred is not None:
            s = self.student
            skip = int(self.s_ids["skip"])
            p = s.predictor(z[:, skip:], self.s_ids["ctx"].expand(len(z), -1), self.s_ids["tgt"].expand(len(z), -1))
            row["prediction_cosine"] = float(F.cosine_similarity(self.pair.proj(p), b.pred, -1).mean())
        self.pair.train()
        return row

    def train(self, out: Path, progress: Callable[[int, int, dict], None] | None = None) -> None:
        c = self.cfg
        start = time.perf_counter()
        self.pair.train()
        while self.step < c.steps:
            for group in self.opt.param_groups:
                group["lr"] = lr_at(self.step, c)
            clips = self.data.sample(c.batch)
            self.data_digest += float(clips.frames[:, 0].sum(dtype=np.float64))
            parts = self.losses(self.targets(clips))
            self.opt.zero_grad(set_to_none=True)
            parts["loss"].backward()
            torch.nn.utils.clip_grad_norm_(self.pair.parameters(), 1.0)
            self.opt.step()
            self.step += 1
            if self.step % c.log_every == 0 or self.step == c.steps:
                row = {"step": self.step, "lr": lr_at(self.step - 1, c), "seconds": time.perf_counter() - start}
                row.update({k: float(v.detach()) for k, v in parts.items()})
                row.update(self.evaluate())
                self.history.append(row)
                if progress is not None and self.dist.main:
                    progress(self.step, c.steps, row)
            if self.dist.main and (self.step % c.save_every == 0 or self.step == c.steps):
                self.save(out / CHECKPOINT)

    def rank_digests(self) -> dict[str, list[float]]:
        """Per rank: a digest of the student's weights (DDP keeps them equal) and of the frames it trained on
        (each rank reads its own stream). Collective: every rank must call it."""
        mine = torch.tensor([sum(float(p.double().sum()) for p in self.pair.parameters()), self.data_digest],
                            dtype=torch.float64, device=self.device)  # nccl gathers device tensors
        if self.dist.world == 1:
            rows = [mine]
        else:
            import torch.distributed as tdist

            rows = [torch.zeros_like(mine) for _ in range(self.dist.world)]
            tdist.all_gather(rows, mine)
        return {"weights": [float(r[0]) for r in rows], "data": [float(r[1]) for r in rows]}

    # ---- resumable checkpoint: tensors in safetensors, everything else in its JSON metadata
    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        tensors = {f"pair.{k}": v.detach().cpu().contiguous() for k, v in self.pair.state_dict().items()}
        state = self.opt.state_dict()
        for idx, st in state["state"].items():
            for key, value in st.items():
                tensors[f"opt.{idx}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
        meta = {"step": self.step, "scale": self.scale, "param_groups": state["param_groups"],
                "student": self.student.cfg.to_dict(), "teacher_sha256": self.teacher.source_sha256,
                "recipe": asdict(self.cfg), "history": self.history}
        tmp = path.with_suffix(".tmp")
        save_file(tensors, str(tmp), metadata={"ami_edge_distill": json.dumps(meta)})
        tmp.replace(path)  # a crash mid-write leaves the previous checkpoint intact

    def resume(self, path: Path) -> None:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {}).get("ami_edge_distill", "{}"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        if not meta:
            raise CheckpointError(f"{path} is not an ami-edge distillation checkpoint")
        if meta["teacher_sha256"] != self.teacher.source_sha256:
            raise CheckpointError(f"{path} was distilled from another teacher; use a new --out or drop --resume")
        if meta["student"] != json.loads(json.dumps(self.student.cfg.to_dict())):
            raise CheckpointError(f"{path} holds a different student; pass the same student flags or a new --out")
        self.pair.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("pair.")})
        opt_state: dict[int, dict[str, torch.Tensor]] = {}
        for k, v in tensors.items():
            if k.startswith("opt."):
                _, idx, key = k.split(".", 2)
                opt_state.setdefault(int(idx), {})[key] = v
        self.opt.load_state_dict({"state": opt_state, "param_groups": meta["param_groups"]})
        self.step, self.scale, self.history = meta["step"], meta["scale"], meta["history"]
        # a fresh data stream from (seed, step): not the stream an uninterrupted run would have seen
        self.data = self._data(self.cfg.seed + 1000 * self.dist.rank + 7 * self.step)


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


def teacher_scorer(teacher: Teacher) -> Callable[[np.ndarray], np.ndarray]:
    """Per-frame surprise from the teacher, computed as the runtime computes it (see `latent_scorer`)."""
    from .demo.voe import latent_scorer

    enc = teacher.config.encoder

    def encode(x: np.ndarray) -> np.ndarray:
        return teacher.encode(torch.from_numpy(x)).cpu().numpy()

    def predict(c: np.ndarray, ci: np.ndarray, ti: np.ndarray) -> np.ndarray:
        return teacher.predict(torch.from_numpy(c), torch.from_numpy(ci), torch.from_numpy(ti)).cpu().numpy()

    return latent_scorer(encode, predict, enc.grid, enc.num_frames, enc.pos_embed == "rope", teacher.mean,
                         teacher.std)


def voe(score: Callable[[np.ndarray], np.ndarray], pairs: int, size: int) -> dict[str, Any]:
    """VoE-AUC per violation type and their mean on the demo world's held-out seeds, rendered at `size`."""
    from .demo.voe import evaluate

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
        finish(args, teacher, distiller, t_count, s_count, bundle_path, console, Table, digests)
    if dist.world > 1:
        import torch.distributed as tdist

        tdist.barrier()
        tdist.destroy_process_group()
    return 0


def finish(args: Any, teacher: Teacher, distiller: Distiller, t_count: dict, s_count: dict, bundle_path: Path,
           console: Any, table_cls: Any, digests: dict[str, list[float]]) -> None:
    """Rank 0: student checkpoint, plot, bundle, report (params, FLOPs, cosine, VoE of both)."""
    from ami_edge.bundle import MANIFEST as MANIFEST_NAME

    from .cli import quiet_exporter
    from .loaders.base import sha256_path
    from .loaders.native import save_native
    from .onnx_export import export_bundle

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
        "rank_digests": digests, "notes": distiller.notes,
        "data": args.source or ["demo"], "recipe": asdict(distiller.cfg),
    }
    (out / "history.json").write_text(json.dumps(distiller.history, indent=1) + "\n")
    plot(distiller.history, out / "distill.png")
    ckpt = save_native(student, out / "student.safetensors", {"distillation": json.dumps(report)})
    loaded = LoadedModel(model=student, loader="distill", source=str(ckpt), source_sha256=sha256_path(ckpt),
                         mean=tuple(teacher.mean), std=tuple(teacher.std))
    with quiet_exporter(args.verbose):
        bundle = export_bundle(loaded, bundle_path, name=args.name, seed=args.seed, on_stage=console.log,
                               training={"distillation": report})
    if args.voe_pairs > 0 and student.predictor is not None:
        from .demo.voe import bundle_scorer

        console.log(f"VoE on the demo world ({args.voe_pairs} pairs per violation type), teacher and student")
        report["voe_teacher"] = voe(teacher_scorer(teacher), args.voe_pairs, teacher.config.encoder.img_size[0])
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
