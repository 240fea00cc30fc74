"""Losses, the trainable student + projection, DDP set-up and the training loop with resumable checkpoints."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ami_edge.errors import CheckpointError, ConfigError

from ..demo.train import adamw, lr_at
from ..models import JEPAModel
from ..models.config import JEPAConfig
from .data import Clips, DemoData, SourceData, normalise
from .models import Teacher, prediction_ids, to_layout

CHECKPOINT = "checkpoint.safetensors"

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
        self.opt = adamw(self.pair.parameters(), cfg.lr, cfg.weight_decay)
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
        tokens = resample(z_t, self.t_grid, self.s_grid) / self.scale
        pred = ac = acts = states = None
        if self.student.predictor is not None:
            b = z_t.shape[0]
            skip = int(self.t_ids["skip"])
            p = self.teacher.predict(z_t[:, skip:].contiguous(), self.t_ids["ctx"].expand(b, -1),
                                     self.t_ids["tgt"].expand(b, -1))
            pred = resample(p, (1, *self.t_grid[1:]), (1, *self.s_grid[1:])) / self.scale
        rows = np.flatnonzero(clips.pusher)
        if self.student.ac_predictor is not None and len(rows):
            a_t, s_t = step_inputs(clips.actions[rows], clips.states[rows], tf, self.tubelet, 0)
            p = self.teacher.act(z_t[rows].contiguous(), a_t, s_t)
            hw = self.t_grid[1] * self.t_grid[2]
            ac = resample(p[:, -hw:], (1, *self.t_grid[1:]), (1, *self.s_grid[1:])) / self.scale
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


