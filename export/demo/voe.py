"""Violation-of-expectation (VoE) evaluation of surprise, as V-JEPA was evaluated on IntPhys.

For held-out seeds, each violation type gets pairs of clips: the normal course of events, and the same scene where
something impossible happens at a random frame (an object teleports, vanishes, freezes mid-air, passes through
another instead of bouncing, or the clip is spliced onto another scene). A model scores each clip by its peak
surprise; ROC-AUC of violating vs normal clips is reported per type.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ami_edge.world import World, WorldConfig

KINDS = ("teleport", "vanish", "freeze", "pass_through", "splice")


@dataclass
class Pair:
    kind: str
    seed: int
    normal: np.ndarray  # (L, H, W, 3) uint8
    violating: np.ndarray  # (L, H, W, 3) uint8
    frame: int  # first frame that shows the violation


def _scene(seed: int) -> WorldConfig:
    rng = np.random.default_rng(seed)
    return WorldConfig(seed=seed, objects=int(rng.integers(2, 6)), occluder=bool(rng.random() < 0.7))


def _render(world: World, steps: int, size: int, hook: Callable[[World, int], None] | None = None) -> np.ndarray:
    frames = []
    for k in range(steps):
        if hook is not None:
            hook(world, k)
        frames.append(world.render(size))
        world.step()
    return np.stack(frames)


def make_pair(kind: str, seed: int, length: int = 36, size: int = 64, earliest: int = 14) -> Pair | None:
    """A normal/violating clip pair, or None when this seed offers no valid moment (e.g. no collision)."""
    rng = np.random.default_rng(seed + 1)
    cfg = _scene(seed)
    probe = World(cfg)
    history = []  # per frame: which bodies are in view and moving in mid-air
    for _ in range(length):
        history.append([(probe.in_view(i), float(np.hypot(*b.vel)), b.pos[1]) for i, b in enumerate(probe.bodies)])
        probe.step()
    latest = length - 6
    if kind == "pass_through":
        hits = [(s, i, j) for s, i, j in probe.contacts if earliest <= s <= latest
                and history[s][i][0] and history[s][j][0]]
        if not hits:
            return None
        step, body, _ = hits[0]
        frame = step  # ghosted from the frame before the impulse: they overlap instead of bouncing
    else:
        frame = int(rng.integers(earliest, latest))
        ok = [i for i, (view, speed, y) in enumerate(history[frame]) if view
              and (kind != "freeze" or (speed > 0.25 and y < 0.75))]
        if not ok and kind != "splice":
            return None
        body = int(rng.choice(ok)) if ok else 0
    normal = _render(World(cfg), length, size)
    if kind == "splice":
        other = World(_scene(seed + 50_000))
        for _ in range(int(rng.integers(0, 60))):
            other.step()
        tail = _render(other, length - frame, size)
        return Pair(kind, seed, normal, np.concatenate([normal[:frame], tail]), frame)

    def hook(world: World, k: int) -> None:
        if k == frame:
            world.violate(kind, body)

    return Pair(kind, seed, normal, _render(World(cfg), length, size, hook), frame)


def make_pairs(kind: str, count: int, first_seed: int = 1_000_000, **kw) -> list[Pair]:
    """`count` pairs from held-out seeds (training uses small seeds; these start at one million)."""
    pairs, seed = [], first_seed
    while len(pairs) < count:
        pair = make_pair(kind, seed, **kw)
        seed += 1
        if pair is not None:
            pairs.append(pair)
    return pairs


def roc_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    pos, neg = np.asarray(positive, float)[:, None], np.asarray(negative, float)[None, :]
    return float((pos > neg).mean() + 0.5 * (pos == neg).mean())


def evaluate(score: Callable[[np.ndarray], np.ndarray], kinds: tuple[str, ...] = KINDS, pairs: int = 30,
             **kw) -> dict[str, dict[str, float]]:
    """AUC of per-clip peak surprise, violating vs normal, per kind. `score(frames)` -> surprise per frame (NaN
    where it has no prediction yet)."""
    report = {}
    for kind in kinds:
        items = make_pairs(kind, pairs, **kw)
        peak_v = [np.nanmax(score(p.violating)) for p in items]
        peak_n = [np.nanmax(score(p.normal)) for p in items]
        report[kind] = {"auc": roc_auc(np.array(peak_v), np.array(peak_n)), "pairs": len(items),
                        "mean_peak_violating": float(np.mean(peak_v)), "mean_peak_normal": float(np.mean(peak_n))}
    return report


def reduce_tokens(err: np.ndarray, how: str) -> np.ndarray:
    """(n, tokens) per-token errors -> (n,) surprise: `mean`, `max`, or `topK` (mean of the K largest)."""
    if how == "mean":
        return err.mean(1)
    if how == "max":
        return err.max(1)
    k = int(how[3:])
    return np.sort(err, axis=1)[:, -k:].mean(1)


def surprise_windows(x, frames: int, batch: int, stack: Callable, lag: int = 2):
    """Yield (frame indices t, context clips ending at t-lag, target clips ending at t), as (k, C, F, H, W).

    `x` is (L, C, H, W) normalised frames (numpy or torch); `stack` is np.stack or torch.stack; `lag` is the
    prediction horizon in frames (tubelet x steps).
    """
    ts = list(range(frames + lag - 1, len(x)))
    for start in range(0, len(ts), batch):
        chunk = ts[start:start + batch]
        ctx = stack([x[t - frames - lag + 1:t - lag + 1] for t in chunk])  # (k, F, C, H, W)
        tgt = stack([x[t - frames + 1:t + 1] for t in chunk])
        yield chunk, ctx.swapaxes(1, 2), tgt.swapaxes(1, 2)


def torch_scorer(model, frames_per_clip: int, batch: int = 64, how: str = "mean", horizon: int = 1
                 ) -> Callable[[np.ndarray], np.ndarray]:
    """Surprise per frame from a torch JEPA model: mean squared error between the tokens predicted for the step
    ending at frame t (from the clip ending at t-2) and the tokens the encoder sees for that step."""
    import torch

    from .data import normalize
    from .train import step_ids

    ctx_ids, tgt_ids = step_ids(model, horizon)
    hw = tgt_ids.numel()
    f = frames_per_clip

    @torch.no_grad()
    def score(frames: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(normalize(frames))  # (L, 3, H, W)
        out = np.full(len(frames), np.nan, np.float32)
        for chunk, ctx, tgt in surprise_windows(x, f, batch, torch.stack, 2 * horizon):
            z_ctx, z_tgt = model.encoder(ctx), model.encoder(tgt)
            n = len(chunk)
            pred = model.predictor(z_ctx, ctx_ids.expand(n, -1), tgt_ids.expand(n, -1))
            out[chunk] = reduce_tokens(((pred - z_tgt[:, -hw:]) ** 2).mean(2).numpy(), how)
        return out

    return score


def bundle_scorer(bundle, how: str = "mean", batch: int = 32) -> Callable[[np.ndarray], np.ndarray]:
    """The same surprise from an exported bundle through ONNX Runtime (numpy only, as on a device)."""
    import onnxruntime as ort

    m = bundle.manifest
    if m.input.layout != "BCTHW" or "predictor" not in m.graphs:
        raise ValueError(f"{bundle.path}: VoE needs a BCTHW video bundle with a predictor graph")
    f = m.input.frames
    t_steps, gh, gw = m.latent.grid
    hw = gh * gw
    n = t_steps * hw
    enc = ort.InferenceSession(str(bundle.graph_path("encoder")), providers=["CPUExecutionProvider"])
    pred = ort.InferenceSession(str(bundle.graph_path("predictor")), providers=["CPUExecutionProvider"])
    mean = np.array(m.input.mean, np.float32)[:, None, None]
    std = np.array(m.input.std, np.float32)[:, None, None]
    ctx_ids = np.arange(n, dtype=np.int64)
    tgt_ids = np.arange(n, n + hw, dtype=np.int64)

    def score(frames: np.ndarray) -> np.ndarray:
        x = ((frames.astype(np.float32) / 255.0).transpose(0, 3, 1, 2) - mean) / std  # (L, 3, H, W)
        out = np.full(len(frames), np.nan, np.float32)
        for chunk, ctx, tgt in surprise_windows(x, f, batch, np.stack):
            z_ctx = enc.run(None, {"pixels": np.ascontiguousarray(ctx)})[0]
            z_tgt = enc.run(None, {"pixels": np.ascontiguousarray(tgt)})[0]
            k = len(chunk)
            p = pred.run(None, {"context": z_ctx, "context_ids": np.tile(ctx_ids, (k, 1)),
                                "target_ids": np.tile(tgt_ids, (k, 1))})[0]
            out[chunk] = reduce_tokens(((p - z_tgt[:, -hw:]) ** 2).mean(2), how)
        return out

    return score
