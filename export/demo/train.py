"""`ami-edge train-demo`: train the default JEPA world model on the synthetic world, on CPU, in minutes.

Recipe:
- the encoder sees a clip of F frames (F/2 tubelet steps of (64/patch)^2 tokens: 16x16 for the default's 4 px
  patches);
- the predictor gets the tokens of the clip and predicts the tokens of the step k steps after it, i.e. the last step
  of the clip 2k frames later (token ids k steps past the clip: RoPE positions extrapolate), k in 1..H; the default
  draws one k per clip and asks for a random quarter of that step's tokens (`horizon_sampling`, `target_fraction`):
  on 512-token clips that takes a step from 2.0 s to 0.7 s on 2 CPU cores at the same effective rank, and the
  stage-1 predictor is discarded anyway;
- the action-conditioned predictor does the same on pusher scenes, given per-step actions (mean velocity over the
  tubelet) and states (position), trained on the clip's last step;
- targets come from an EMA copy of the encoder (V-JEPA); SIGReg (LeJEPA) on the context tokens rules out
  collapse, computed after centring each token position across the batch. Measured here: with targets from the
  same encoder (with gradient) the encoder makes its targets easy and the token rank falls to 8 %; without the
  centring, encoding *where* a token is (background gradient) satisfies the regulariser predictably.
- then, with the encoder frozen, a next-step *residual* predictor (last step's tokens plus a predicted change; its
  output layer starts at zero, i.e. at copy-last) is trained against the final encoder's own tokens, as the runtime
  compares them: by default a fresh convolutional predictor over the token grid (`ConvPredictor`), which replaces
  the stage-1 ViT predictor. Its clips are bouncing scenes with more bodies (more collisions, where normal
  clips' surprise peaks) and its loss adds each example's worst tokens (`residual_objects`, `residual_topk`). The
  frozen encoder's tokens for its clips are computed once, so the stage is mostly predictor steps. Measured: as
  trained in the first stage the ViT predictor is no better than copying the last step (most tokens are static
  background it re-synthesises imprecisely); after this stage the held-out error is about a third of copy-last's,
  and the predictor's quality is what moved the VoE most. Trained residual from the start, copying is free and the
  encoder collapses towards static tokens (rank 0.43 -> 0.15 in 175 steps), hence the two stages.
Collapse is watched, not assumed: per-dimension token std and effective rank are logged and stored.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ami_edge.bundle import check_surprise_option
from ami_edge.errors import ConfigError

from ..models import JEPAModel, make_predictor
from ..models.config import ACPredictorConfig, EncoderConfig, JEPAConfig, PredictorConfig
from .data import Batch, WorldPool
from .sigreg import effective_rank, sigreg


def demo_model_config(image_size: int = 64, frames: int = 4, patch: int = 4, width: int = 64,
                      depth: int = 3) -> JEPAConfig:
    """The demo model: a small ViT encoder (`patch`-pixel patches, `width` wide, `depth` blocks), small enough for 2
    CPU cores and a < 5 MB package, with stage-1 ViT predictors (the second stage replaces the future one)."""
    enc = EncoderConfig(img_size=(image_size, image_size), patch_size=patch, num_frames=frames, tubelet_size=2,
                        embed_dim=width, depth=depth, num_heads=4, pos_embed="rope", layout="BCTHW")
    return JEPAConfig(family="native", encoder=enc,
                      predictor=PredictorConfig(embed_dim=64, depth=3, num_heads=4, num_mask_tokens=1, mask_index=0),
                      ac_predictor=ACPredictorConfig(embed_dim=64, depth=3, num_heads=4, action_dim=2, state_dim=2))


@dataclass
class TrainConfig:
    seed: int = 0
    steps: int = 2000
    batch: int = 24
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup: int = 100
    # SIGReg weight. Measured (1000 steps, horizons 1-3, VoE 30 pairs): at 1.0 the regulariser spreads every token
    # dimension, background variation included, and teleport AUC was 0.61; at 0.05 (LeJEPA's order of magnitude)
    # it was 0.76 with the effective rank still 0.30 of the dimension.
    sigreg_weight: float = 0.05
    sigreg_tokens: int = 2048  # tokens sampled per step for the anti-collapse term
    target: str = "ema"  # "ema": V-JEPA teacher; "shared": targets from the same encoder, with gradient (LeJEPA)
    ema: float = 0.99
    regularizer: str = "sigreg"  # "sigreg" or "vicreg" (per-dimension std hinge + covariance)
    # Centre tokens per position across the batch before the regulariser: otherwise encoding *where* a token is
    # (background gradient, stripes) satisfies it, perfectly predictably, and objects are never represented.
    position_centered: bool = True
    # Weight each target token's loss by how much it changes from the context's last step (1 + motion_weight * change
    # / mean change): most tokens are static background, so an unweighted loss teaches "copy the last frame" and the
    # dynamics (what makes a frozen or vanished object surprising) stay under-trained.
    motion_weight: float = 0.0
    # Tubelet steps ahead: the predictor learns every horizon 1..H (target = last step of the clip shifted by 2h
    # frames) and surprise compares the H-step prediction. One step ahead (2 frames, ~1-3 px of motion at 64 px)
    # is cheap to fake by copying the last frame; further ahead, copying costs and the dynamics must be learned.
    horizon: int = 1
    # "all": the predictor learns every horizon 1..H on every clip; "one": one horizon drawn per clip, so the teacher
    # encodes one later clip and the predictor runs once (a third of their cost at H = 3).
    horizon_sampling: str = "all"
    # The fraction of a target step's tokens the first-stage predictor predicts, a random subset per clip (as
    # I-JEPA and V-JEPA predict masked blocks): its cost grows with the tokens it is asked for.
    target_fraction: float = 1.0
    # The encoder: `patch`-pixel patches (a 64 px frame is a 64/patch square token grid per tubelet step),
    # `width` channels, `depth` blocks (`demo_model_config`).
    patch: int = 4
    width: int = 64
    depth: int = 3
    # Second stage: steps training a residual next-step predictor on the frozen encoder (0: none).
    residual_steps: int = 0
    residual_lr: float = 1e-3
    residual_batch: int = 64
    residual_examples: int = 256  # next-step examples encoded once by the frozen encoder for the second stage
    # The second stage's predictor: "conv", a fresh ConvPredictor (3x3 convolutions over the token grid,
    # `residual_width` channels, `residual_depth` blocks) replacing the stage-1 ViT predictor; or "vit", the stage-1
    # predictor itself fine-tuned as a residual predictor (the previous recipe). Measured on one frozen encoder and
    # one cache of 24000 examples: conv 10000 steps of 64 in 270 s, held-out loss 0.031, VoE mean 0.81 (top-4); vit
    # 3500 steps of 32 in 385 s, 0.041, 0.76.
    residual_arch: str = "conv"
    residual_width: int = 64
    residual_depth: int = 3
    # The second stage's clips: bouncing scenes only (the unconditioned predictor; the pusher's random actions are
    # noise to it) with `residual_objects` (min, max) bodies, and a loss that adds `residual_topk_weight` x the mean
    # loss of each example's `residual_topk` worst tokens, the tokens surprise is read from. Normal clips peak at
    # object collisions, which a predictor trained on the first stage's clips (2-6 bodies, half pusher scenes) did
    # not learn; 4-10 bodies have three times the collisions. Measured on one frozen encoder (lab runs, 40 VoE
    # pairs, top-4): VoE mean 0.799 with the first stage's clips and the plain loss, 0.807-0.822 with either change
    # alone, 0.846 with both (freeze 0.59 -> 0.68, pass-through 0.57 -> 0.64).
    # `train-demo` sets the top-K term from its `--surprise` (`residual_loss_for`): top4 by default.
    residual_objects: tuple[int, int] = (4, 10)
    residual_topk: int = 4
    residual_topk_weight: float = 1.0
    image_size: int = 64
    frames: int = 4
    pool: int = 192  # running worlds
    threads: int = 2
    log_every: int = 25

    def __post_init__(self) -> None:
        for name in ("steps", "batch", "image_size", "frames", "pool", "threads", "log_every", "horizon",
                     "residual_batch", "residual_examples", "residual_width", "residual_depth", "residual_topk",
                     "patch", "width", "depth"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"train-demo: {name} must be > 0, got {getattr(self, name)}")
        if self.frames % 2 or self.frames < 4:
            raise ConfigError(f"train-demo: frames={self.frames} must be an even number >= 4 (tubelet 2)")
        if self.image_size % self.patch:
            raise ConfigError(f"train-demo: patch={self.patch} must divide image_size={self.image_size}")
        if self.width % 4:
            raise ConfigError(f"train-demo: width={self.width} must be a multiple of 4 (4 attention heads)")
        if self.horizon_sampling not in ("all", "one"):
            raise ConfigError(f"train-demo: horizon_sampling must be all or one, got {self.horizon_sampling!r}")
        if not 0 < self.target_fraction <= 1:
            raise ConfigError(f"train-demo: target_fraction must be in (0, 1], got {self.target_fraction}")
        if self.residual_steps < 0:
            raise ConfigError(f"train-demo: residual_steps must be >= 0, got {self.residual_steps}")
        if self.batch > self.pool:
            raise ConfigError(f"train-demo: batch={self.batch} cannot exceed pool={self.pool}")
        lo, hi = self.residual_objects
        if not 1 <= lo <= hi <= 12:
            raise ConfigError(f"train-demo: residual_objects={self.residual_objects} must be (min, max) with "
                              "1 <= min <= max <= 12")
        if self.residual_topk_weight < 0:
            raise ConfigError(f"train-demo: residual_topk_weight must be >= 0, got {self.residual_topk_weight}")
        if self.residual_arch not in ("conv", "vit"):
            raise ConfigError(f"train-demo: residual_arch must be conv or vit, got {self.residual_arch!r}")
        if self.target not in ("shared", "ema") or self.regularizer not in ("sigreg", "vicreg"):
            raise ConfigError("train-demo: target must be shared|ema and regularizer sigreg|vicreg")


def residual_loss_for(surprise: str, grid: tuple[int, int, int]) -> dict[str, Any]:
    """The second stage's extra loss term for a surprise reduction (`TrainConfig` fields): `topK` reads the K worst
    predicted tokens of a step, so the term averages each example's K worst; `mean` reads every token, which the
    plain per-token loss already weighs, so there is no extra term. Raises ConfigError for a reduction a step of
    the (T, H, W) token `grid` cannot take (before any training)."""
    k = check_surprise_option(surprise, grid)
    return {"residual_topk": k, "residual_topk_weight": 1.0} if k else {"residual_topk_weight": 0.0}


@dataclass
class TrainResult:
    model: JEPAModel
    history: list[dict[str, float]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)


def clip(frames: torch.Tensor, start: int, length: int) -> torch.Tensor:
    """(B, W, C, H, W) window -> (B, C, T, H, W) clip of `length` frames from `start` (the encoder's layout)."""
    return frames[:, start:start + length].permute(0, 2, 1, 3, 4)


def step_ids(model: JEPAModel, horizon: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Context ids (the whole clip) and target ids (the step `horizon` steps after the clip's last one)."""
    t, h, w = model.cfg.encoder.grid
    n, hw = t * h * w, h * w
    return torch.arange(n), torch.arange(n + (horizon - 1) * hw, n + horizon * hw)


def vicreg(z: torch.Tensor) -> torch.Tensor:
    """Variance hinge (every dimension's std >= 1) plus off-diagonal covariance: a direct effective-rank guard."""
    z = z - z.mean(0)
    std = torch.sqrt(z.var(0) + 1e-4)
    cov = (z.T @ z) / (z.shape[0] - 1)
    off = cov - torch.diag(torch.diag(cov))
    return torch.relu(1 - std).mean() + (off**2).sum() / z.shape[1]


def losses(model: JEPAModel, batch: Batch, cfg: TrainConfig, gen: torch.Generator,
           teacher: torch.nn.Module | None = None) -> dict[str, torch.Tensor]:
    f = cfg.frames
    t, h, w = model.cfg.encoder.grid
    n, hw = t * h * w, h * w
    b = batch.frames.shape[0]
    z_ctx = model.encoder(clip(batch.frames, 0, f))  # (B, N, D): frames [0, F)
    encode = model.encoder if teacher is None else teacher
    if cfg.horizon_sampling == "one":  # k in 1..H per clip: frames [2k, F + 2k)
        k = torch.randint(1, cfg.horizon + 1, (b,), generator=gen)
        horizons = [k]
    else:  # every horizon for every clip
        horizons = [torch.full((b,), k) for k in range(1, cfg.horizon + 1)]
    keep = hw if cfg.target_fraction >= 1 else max(1, round(hw * cfg.target_fraction))
    # the target tokens of each clip's step (all of them, or a random subset drawn per clip)
    sel = torch.rand(b, hw, generator=gen).argsort(1)[:, :keep] if keep < hw else torch.arange(hw).expand(b, -1)
    preds, targets, first = [], [], None
    for k in horizons:
        with torch.set_grad_enabled(teacher is None):
            later = batch.frames[torch.arange(b)[:, None], 2 * k[:, None] + torch.arange(f)]  # (B, F, C, H, W)
            z_tgt = encode(later.permute(0, 2, 1, 3, 4))  # (B, N, D)
        step = z_tgt[:, -hw:]  # last step of the later clip = k steps after the context clip
        if first is None:
            first = (step, k == 1)  # the next step's tokens, where drawn (the action-conditioned target)
        targets.append(step.gather(1, sel[..., None].expand(-1, -1, step.shape[-1])))
        tgt_ids = n + (k[:, None] - 1) * hw + sel  # (B, keep)
        preds.append(model.predictor(z_ctx, torch.arange(n).expand(b, -1), tgt_ids))  # (B, keep, D)
    pred, target = torch.cat(preds, 1), torch.cat(targets, 1)  # (B, len(horizons) * keep, D)
    if cfg.motion_weight > 0:
        with torch.no_grad():
            last = z_ctx[:, -hw:].gather(1, sel[..., None].expand(-1, -1, z_ctx.shape[-1]))
            change = (target - last.repeat(1, len(horizons), 1)).pow(2).mean(-1)  # (B, ·keep) motion
            weight = 1 + cfg.motion_weight * change / change.mean().clamp_min(1e-6)
        per_token = F.smooth_l1_loss(pred, target, reduction="none").mean(-1)
        out = {"pred": (weight * per_token).sum() / weight.sum()}
    else:
        out = {"pred": F.smooth_l1_loss(pred, target)}
    if batch.pusher.any():
        rows = batch.pusher
        step, drawn = first
        missing = (rows & ~drawn).nonzero()[:, 0]
        if len(missing):  # one horizon per clip: encode the pusher clips' next step where another was drawn
            with torch.set_grad_enabled(teacher is None):
                step = step.index_put((missing,), encode(clip(batch.frames[missing], 2, f))[:, -hw:])
        acts = batch.actions[rows, :f].view(-1, t, 2, 2).mean(2)  # (B', T, 2) mean velocity per step
        states = batch.states[rows, :f:2]  # (B', T, 2) position at each step's first frame
        ac = model.ac_predictor(z_ctx[rows], acts, states)  # (B', T*HW, D) next-step predictions per step
        out["ac"] = F.smooth_l1_loss(ac[:, -hw:], step[rows])
    z = torch.cat([z_ctx, z_tgt]) if teacher is None else z_ctx  # (·B, N, D)
    if cfg.position_centered:
        z = z - z.mean(0, keepdim=True)
    tokens = z.flatten(0, 1)  # (·B·N, D)
    pick = torch.randperm(tokens.shape[0], generator=gen)[: cfg.sigreg_tokens]
    out["sigreg"] = sigreg(tokens[pick], generator=gen) if cfg.regularizer == "sigreg" else vicreg(tokens[pick])
    return out


@torch.no_grad()
def latent_health(model: JEPAModel, batch: Batch, cfg: TrainConfig) -> dict[str, float]:
    """Collapse guards: per-dimension std of tokens and of pooled clip latents, and their effective ranks."""
    z = model.encoder(clip(batch.frames, 0, cfg.frames))  # (B, N, D)
    tokens = z.flatten(0, 1)
    pooled = z.mean(1)
    d = tokens.shape[1]
    return {"token_std_min": float(tokens.std(0).min()), "token_std_mean": float(tokens.std(0).mean()),
            "token_rank": effective_rank(tokens), "token_rank_frac": effective_rank(tokens) / d,
            "pooled_rank": effective_rank(pooled), "dim": d}


def adamw(params: Any, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on biases, norms or mask tokens)."""
    params = list(params)
    return torch.optim.AdamW([{"params": [p for p in params if p.dim() > 1], "weight_decay": weight_decay},
                              {"params": [p for p in params if p.dim() <= 1], "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.99))


def lr_at(step: int, cfg: TrainConfig) -> float:
    return warmup_cosine(step, cfg.steps, cfg.lr, cfg.warmup)


def warmup_cosine(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up to `peak` over `warmup` steps, then cosine decay to 0 at `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * progress))


def held_out_batch(cfg: TrainConfig) -> Batch:
    """The held-out clips both stages report on: worlds seeded apart from the training pools."""
    return WorldPool(cfg.batch, cfg.seed + 10_000, cfg.image_size, cfg.frames + 2 * cfg.horizon).sample(cfg.batch)


def train(cfg: TrainConfig, progress: Any = None) -> TrainResult:
    """Train the demo model. `progress(step, total, row)` is called every `log_every` steps (a progress bar); `total`
    counts both stages."""
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = JEPAModel(demo_model_config(cfg.image_size, cfg.frames, cfg.patch, cfg.width, cfg.depth))
    _init(model, gen)
    pool = WorldPool(cfg.pool, cfg.seed, cfg.image_size, cfg.frames + 2 * cfg.horizon)
    held_out = held_out_batch(cfg)
    opt = adamw(model.parameters(), cfg.lr, cfg.weight_decay)
    result = TrainResult(model)
    teacher = None
    if cfg.target == "ema":
        teacher = copy.deepcopy(model.encoder).requires_grad_(False)
    start = time.perf_counter()
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        model.train()
        parts = losses(model, pool.sample(cfg.batch), cfg, gen, teacher)
        loss = parts["pred"] + parts.get("ac", 0.0) + cfg.sigreg_weight * parts["sigreg"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if teacher is not None:
            with torch.no_grad():
                for pt, ps in zip(teacher.parameters(), model.encoder.parameters()):
                    pt.lerp_(ps, 1 - cfg.ema)
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            model.eval()
            row = {"step": step, "loss": loss.item(), "lr": lr_at(step, cfg), "seconds": time.perf_counter() - start}
            row.update({k: v.item() for k, v in parts.items()})
            with torch.no_grad():
                held = losses(model, held_out, cfg, gen, teacher)
            row.update({f"val_{k}": float(v) for k, v in held.items()})
            row.update(latent_health(model, held_out, cfg))
            result.history.append(row)
            if progress is not None:
                progress(step + 1, cfg.steps + cfg.residual_steps, row)
    model.eval()
    last = result.history[-1]
    result.metrics = {"train_seconds": round(time.perf_counter() - start, 1), "steps": cfg.steps,
                      "val_pred": last["val_pred"], "val_ac": last.get("val_ac"), "token_rank": last["token_rank"],
                      "token_rank_frac": last["token_rank_frac"], "token_std_min": last["token_std_min"],
                      "token_std_mean": last["token_std_mean"], "recipe": asdict(cfg)}
    if cfg.residual_steps:
        finetune_residual(model, cfg, held_out, result, progress, start)
    return result


@torch.no_grad()
def next_steps(model: JEPAModel, frames: torch.Tensor, f: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-step examples from (B, W, C, H, W) windows: the clips at every tubelet offset are encoded once and each
    clip is the context of the step that ends its successor, so W = F + 2H frames give B*H examples for B*(H + 1)
    encoder passes. Returns contexts (B*H, N, D) and targets (B*H, HW, D)."""
    hw = model.cfg.encoder.grid[1] * model.cfg.encoder.grid[2]
    z = [model.encoder(clip(frames, start, f)) for start in range(0, frames.shape[1] - f + 1, 2)]
    return torch.cat(z[:-1]), torch.cat([later[:, -hw:] for later in z[1:]])


def frozen_steps(model: JEPAModel, pool: WorldPool, count: int, cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` next-step examples of the frozen encoder from the pool's worlds (see `next_steps`), written into
    tensors allocated once (24000 examples are 1.8 GB; concatenating a list of chunks would need twice that)."""
    enc = model.cfg.encoder
    contexts = torch.empty(count, enc.num_tokens, enc.embed_dim)
    targets = torch.empty(count, enc.grid[1] * enc.grid[2], enc.embed_dim)
    filled = 0
    while filled < count:
        context, target = next_steps(model, pool.sample(cfg.batch).frames, cfg.frames)
        k = min(len(context), count - filled)
        contexts[filled:filled + k] = context[:k]
        targets[filled:filled + k] = target[:k]
        filled += k
    return contexts, targets


def finetune_residual(model: JEPAModel, cfg: TrainConfig, held_out: Batch, result: TrainResult, progress: Any,
                      start: float) -> None:
    """Second stage: a residual next-step predictor (`cfg.residual_arch`), trained on the frozen encoder's tokens.

    The encoder is frozen, so its tokens for `residual_examples` clips are computed once and the predictor trains on
    them for `residual_steps` steps of `residual_batch`: the predictor alone is a small fraction of a training
    step's cost, and measured on the same clock, more predictor steps on cached tokens beat fewer on fresh clips.
    """
    if cfg.residual_arch == "conv":  # a fresh predictor; its head starts at zero, i.e. at "copy the last step"
        conv = PredictorConfig(arch="conv", residual=True, embed_dim=cfg.residual_width, depth=cfg.residual_depth)
        model.cfg = replace(model.cfg, predictor=conv)
        torch.manual_seed(cfg.seed + 2)
        model.predictor = make_predictor(model.cfg.predictor, model.cfg.encoder)
    else:
        model.cfg = replace(model.cfg, predictor=replace(model.cfg.predictor, residual=True))
        model.predictor.cfg = model.cfg.predictor
        with torch.no_grad():  # start at "copy the last step"
            model.predictor.predictor_proj.weight.zero_()
            model.predictor.predictor_proj.bias.zero_()
    model.encoder.requires_grad_(False)
    params = list(model.predictor.parameters())
    opt = adamw(params, cfg.residual_lr, cfg.weight_decay)
    hw = model.cfg.encoder.grid[1] * model.cfg.encoder.grid[2]
    ctx_ids, tgt_ids = step_ids(model)
    window = cfg.frames + 2 * cfg.horizon  # as in the first stage: `horizon` next-step examples per window
    scenes = WorldPool(cfg.pool, cfg.seed + 1, cfg.image_size, window, objects=cfg.residual_objects, pusher=False)
    context, target = frozen_steps(model, scenes, cfg.residual_examples, cfg)
    val_context, val_target = next_steps(model, held_out.frames, cfg.frames)
    val_copy = float(F.smooth_l1_loss(val_context[:, -hw:], val_target))  # copying the last step, for comparison
    gen = torch.Generator().manual_seed(cfg.seed + 1)

    def predict(z: torch.Tensor) -> torch.Tensor:
        return model.predictor(z, ctx_ids.expand(len(z), -1), tgt_ids.expand(len(z), -1))

    health = {k: v for k, v in result.history[-1].items() if k.startswith("token_") or k == "dim"}
    for i in range(cfg.residual_steps):
        lr = warmup_cosine(i, cfg.residual_steps, cfg.residual_lr, min(50, cfg.warmup))
        for group in opt.param_groups:
            group["lr"] = lr
        model.predictor.train()
        pick = torch.randint(0, len(context), (cfg.residual_batch,), generator=gen)
        per_token = F.smooth_l1_loss(predict(context[pick]), target[pick], reduction="none").mean(-1)  # (B, HW)
        loss = per_token.mean()
        if cfg.residual_topk_weight:
            k = min(cfg.residual_topk, hw)
            loss = loss + cfg.residual_topk_weight * per_token.topk(k, 1).values.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if i % cfg.log_every == 0 or i == cfg.residual_steps - 1:
            model.predictor.eval()
            with torch.no_grad():
                val = float(F.smooth_l1_loss(predict(val_context), val_target))
            row = {"step": cfg.steps + i, "stage": "residual", "loss": loss.item(), "lr": lr,
                   "seconds": time.perf_counter() - start, "val_residual": val,
                   "val_copy": val_copy, **health}
            result.history.append(row)
            if progress is not None:
                progress(cfg.steps + i + 1, cfg.steps + cfg.residual_steps, row)
    model.eval()
    last = result.history[-1]
    result.metrics.update({"train_seconds": round(time.perf_counter() - start, 1),
                           "residual_steps": cfg.residual_steps, "val_residual": last["val_residual"],
                           "val_copy_last": last["val_copy"]})


def _init(model: JEPAModel, gen: torch.Generator) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.copy_((torch.randn(p.shape, generator=gen) * 0.02).clamp_(-0.04, 0.04))
            elif name.endswith("bias"):
                p.zero_()
            elif "mask_token" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)


def save_history(history: list[dict[str, float]], out: Path) -> None:
    (out / "history.json").write_text(json.dumps(history, indent=1) + "\n")


def plot_history(history: list[dict[str, float]], path: Path) -> None:
    """Loss and collapse metrics over training, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in history]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for key, label in (("val_pred", "prediction (held-out)"), ("val_ac", "action-conditioned (held-out)"),
                       ("sigreg", "SIGReg"), ("val_residual", "residual next step (held-out)"),
                       ("val_copy", "copy last step (held-out)")):
        if any(key in r for r in history):
            axes[0].plot(steps, [r.get(key, float("nan")) for r in history], label=label)
    axes[0].set_yscale("log")
    axes[0].set_title("losses")
    axes[0].legend()
    axes[1].plot(steps, [r["token_rank_frac"] for r in history], label="token effective rank / dim")
    axes[1].axhline(0.25, color="grey", linestyle="--", label="25 % floor")
    axes[1].set_ylim(0, 1)
    axes[1].set_title("collapse guard: effective rank")
    axes[1].legend()
    axes[2].plot(steps, [r["token_std_min"] for r in history], label="min per-dim std")
    axes[2].plot(steps, [r["token_std_mean"] for r in history], label="mean per-dim std")
    axes[2].set_title("collapse guard: token std")
    axes[2].legend()
    for ax in axes:
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
