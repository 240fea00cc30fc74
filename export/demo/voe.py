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

from ami_edge.bundle import StallSpec
from ami_edge.runtime import predictor_extrapolates, predictor_query, step_surprise, surprise_terms
from ami_edge.world import World, WorldConfig

KINDS = ("teleport", "vanish", "freeze", "pass_through", "splice")


@dataclass
class Pair:
    kind: str
    seed: int
    normal: np.ndarray  # (L, H, W, 3) uint8
    violating: np.ndarray  # (L, H, W, 3) uint8
    frame: int  # first frame that shows the violation
    body: int | None = None  # index of the body that violates physics (None for a splice)


def scene(seed: int) -> WorldConfig:
    """The world of a VoE seed: 2-5 objects, an occluder in 70 % of scenes (no pan, no pusher)."""
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


def calm_clip(seed: int, length: int = 36, size: int = 64) -> np.ndarray:
    """The normal course of events in the VoE-style scene of `seed`: (length, size, size, 3) uint8."""
    return _render(World(scene(seed)), length, size)


def make_pair(kind: str, seed: int, length: int = 36, size: int = 64, earliest: int = 14) -> Pair | None:
    """A normal/violating clip pair, or None when this seed offers no valid moment (e.g. no collision)."""
    rng = np.random.default_rng(seed + 1)
    cfg = scene(seed)
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
    normal = calm_clip(seed, length, size)
    if kind == "splice":
        other = World(scene(seed + 50_000))
        for _ in range(int(rng.integers(0, 60))):
            other.step()
        tail = _render(other, length - frame, size)
        return Pair(kind, seed, normal, np.concatenate([normal[:frame], tail]), frame)

    return Pair(kind, seed, normal, _render(World(cfg), length, size, _violation(kind, frame, body)), frame, body)


def _violation(kind: str, frame: int, body: int) -> Callable[[World, int], None]:
    """The `_render` hook that makes `body` violate physics (`kind`) from `frame` on."""

    def hook(world: World, k: int) -> None:
        if k == frame:
            world.violate(kind, body)

    return hook


EVENTS = ("contact", "bounce", "occluder")


def clip_events(cfg: WorldConfig, length: int, hook: Callable[[World, int], None] | None = None
                ) -> list[frozenset[str]]:
    """What the simulator did around the step the runtime scores at each frame t, for the clip `_render` makes of
    `cfg` with `hook`: in the moves to frames t-2, t-1 and t (the step ending at t is frames t-1 and t, predicted from
    the clip ending at t-2, whose last frame shows an event of the move before it only half-way: a velocity read
    across it is off). A subset of `EVENTS`: "contact" (two bodies collided), "bounce" (a body bounced off a wall,
    the floor or the ceiling), "occluder" (a visible body went behind the occluder or came out); empty is free
    flight."""
    world = World(cfg)
    arrived: list[set[str]] = [set() for _ in range(length)]  # events of the move from frame k - 1 to frame k
    hidden = None
    for k in range(length):
        if hook is not None:
            hook(world, k)
        now = [b.visible and not world.in_view(i) for i, b in enumerate(world.bodies)]
        if hidden is not None and now != hidden:
            arrived[k].add("occluder")
        hidden = now
        if k + 1 < length:
            contacts, bounces = len(world.contacts), len(world.bounces)
            world.step()
            if len(world.contacts) > contacts:
                arrived[k + 1].add("contact")
            if len(world.bounces) > bounces:
                arrived[k + 1].add("bounce")
    return [frozenset(set().union(*arrived[max(0, t - 2):t + 1])) for t in range(length)]


def pair_events(pair: Pair) -> tuple[list[frozenset[str]], list[frozenset[str]]]:
    """`clip_events` of a pair's normal and violating clip. Splices have no single world to label: ValueError."""
    if pair.kind == "splice":
        raise ValueError("pair_events: a splice joins two worlds; only physics violations can be labelled")
    cfg, length = scene(pair.seed), len(pair.normal)
    return clip_events(cfg, length), clip_events(cfg, length, _violation(pair.kind, pair.frame, pair.body))


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
    """Per kind: `auc`, the ROC-AUC of per-clip peak surprise over all violating vs all normal clips (the issue's
    measure: each clip judged on its own), and `paired`, the fraction of pairs whose violating clip peaks above
    its own normal clip (ties count half), the relative measure the V-JEPA intuitive-physics paper reports on
    IntPhys. `score(frames)` -> surprise per frame (NaN where it has no prediction yet)."""
    report = {}
    for kind in kinds:
        items = make_pairs(kind, pairs, **kw)
        peak_v = np.array([np.nanmax(score(p.violating)) for p in items])
        peak_n = np.array([np.nanmax(score(p.normal)) for p in items])
        report[kind] = {"auc": roc_auc(peak_v, peak_n), "paired": float((peak_v > peak_n).mean()
                                                                          + 0.5 * (peak_v == peak_n).mean()),
                        "pairs": len(items), "mean_peak_violating": float(peak_v.mean()),
                        "mean_peak_normal": float(peak_n.mean())}
    return report


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


def latent_scorer(encode: Callable[[np.ndarray], np.ndarray], predict: Callable[..., np.ndarray],
                  grid: tuple[int, int, int], frames: int, extrapolates: bool, mean, std, batch: int = 32,
                  how: str = "mean", stall: StallSpec | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """Surprise per frame as the runtime computes it (`step_surprise`): squared error between the tokens predicted
    for the step ending at frame t (from the clip ending one tubelet earlier) and the tokens the encoder sees for
    that step, averaged over the step's tokens as `how` says (`mean`, or `topK`: the K largest), and with `stall`
    (`latent.stall`) the larger of that and the stall term.

    `encode((k, C, F, H, W) float32) -> (k, N, D)`, `predict(context, context_ids, target_ids) -> (k, HW, D)`.
    RoPE predictors (`extrapolates`) take the whole clip and the step after it; sincos-table ones the clip's last
    T-1 steps and the last position inside their table (see `Runtime`).
    """
    steps = step_tokens(encode, predict, grid, frames, extrapolates, mean, std, batch)

    def score(clip: np.ndarray) -> np.ndarray:
        out = np.full(len(clip), np.nan, np.float32)
        for chunk, predicted, observed, last in steps(clip):
            out[chunk] = step_surprise(predicted, observed, how, last, stall)
        return out

    return score


def step_tokens(encode: Callable[[np.ndarray], np.ndarray], predict: Callable[..., np.ndarray],
                grid: tuple[int, int, int], frames: int, extrapolates: bool, mean, std, batch: int = 32):
    """`steps(clip)` yields (frame indices t, predicted, observed, context's last step), each (k, HW, D): what
    surprise at t compares (see `latent_scorer`)."""
    t_steps, gh, gw = grid
    hw = gh * gw
    tubelet = frames // t_steps
    skip, ctx_ids, tgt_ids = predictor_query(grid, extrapolates)
    mean = np.asarray(mean, np.float32)[:, None, None]
    std = np.asarray(std, np.float32)[:, None, None]

    def steps(clip: np.ndarray):
        x = ((clip.astype(np.float32) / 255.0).transpose(0, 3, 1, 2) - mean) / std  # (L, 3, H, W)
        for chunk, ctx, tgt in surprise_windows(x, frames, batch, np.stack, tubelet):
            z_ctx = encode(np.ascontiguousarray(ctx))
            z_tgt = encode(np.ascontiguousarray(tgt))
            k = len(chunk)
            p = predict(np.ascontiguousarray(z_ctx[:, skip:]), np.tile(ctx_ids, (k, 1)), np.tile(tgt_ids, (k, 1)))
            yield chunk, p, z_tgt[:, -hw:], z_ctx[:, -hw:]

    return steps


def bundle_scorer(bundle, how: str | None = None, batch: int = 32, stall: bool = True
                  ) -> Callable[[np.ndarray], np.ndarray]:
    """The same surprise from an exported bundle through ONNX Runtime (numpy only, as on a device); `how` overrides
    the bundle's own reduction (`latent.surprise`), and `stall=False` leaves out its stall term (`latent.stall`)."""
    m = bundle.manifest
    return latent_scorer(*_bundle_graphs(bundle), batch, how or m.latent.surprise,
                         m.latent.stall if stall else None)


def bundle_steps(bundle, batch: int = 32):
    """`step_tokens` for a bundle's graphs in ONNX Runtime."""
    return step_tokens(*_bundle_graphs(bundle), batch)


def _bundle_graphs(bundle) -> tuple:
    """(encode, predict, grid, frames, extrapolates, mean, std) of a bundle's graphs in ONNX Runtime."""
    import onnxruntime as ort

    m = bundle.manifest
    if m.input.layout == "BCHW" or "predictor" not in m.graphs:
        raise ValueError(f"{bundle.path}: VoE needs a video bundle with a predictor graph")
    enc = ort.InferenceSession(str(bundle.graph_path("encoder")), providers=["CPUExecutionProvider"])
    pred = ort.InferenceSession(str(bundle.graph_path("predictor")), providers=["CPUExecutionProvider"])
    btchw = m.input.layout == "BTCHW"

    def encode(x: np.ndarray) -> np.ndarray:
        return enc.run(None, {"pixels": np.ascontiguousarray(x.swapaxes(1, 2)) if btchw else x})[0]

    def predict(context: np.ndarray, context_ids: np.ndarray, target_ids: np.ndarray) -> np.ndarray:
        return pred.run(None, {"context": context, "context_ids": context_ids, "target_ids": target_ids})[0]

    return encode, predict, tuple(m.latent.grid), m.input.frames, predictor_extrapolates(m), m.input.mean, m.input.std


# Calm clips for fitting a stall term's weight: normal scenes like the VoE's, from seeds neither training (small
# seeds) nor the VoE (one million on) uses.
STALL_FIT_SEED = 500_000


def fit_stall(bundle, offset: float, clips: int = 40, quantile: float = 99.0) -> StallSpec:
    """A stall term (`latent.stall`) for `bundle` with this `offset`: its weight makes the two terms' `quantile`
    over every frame of `clips` calm clips equal, so that on calm scenes neither term dominates the other."""
    m = bundle.manifest
    return fit_stall_steps(bundle_steps(bundle), m.latent.surprise, m.input.height, offset, clips, quantile)


def fit_stall_steps(steps, how: str, size: int, offset: float, clips: int = 40,
                    quantile: float = 99.0) -> StallSpec:
    """`fit_stall` for any model: `steps` as `step_tokens` makes it, `how` its surprise reduction, `size` its input
    resolution."""
    plain, relative = [], []
    for seed in range(STALL_FIT_SEED, STALL_FIT_SEED + clips):
        for _, predicted, observed, last in steps(calm_clip(seed, size=size)):
            plain_term, relative_term = surprise_terms(predicted, observed, how, last, offset)
            plain.append(plain_term)
            relative.append(relative_term)
    ratio = np.percentile(np.concatenate(plain), quantile) / np.percentile(np.concatenate(relative), quantile)
    return StallSpec(offset=float(offset), weight=round(float(ratio), 6))
