"""The VoE test with a learned object-centric dynamics model in the physics oracle's place: what would a model reach
that held every body's state as numbers (an object-centric state, one slot per body) and learned its physics?

    .venv/bin/python benchmarks/voe_state_model.py [--scenes 6000] [--steps 20000] [--noise POS,VEL]
        [--near POS,VEL [--near-px 4]] [--pairs 30] [--seed 0] [--json out.json]
        [--batch 256] [--hidden 128] [--clip 0] [--device auto|cpu|cuda] [--workers 1]

`benchmarks/voe_oracle.py` scores the simulator itself given a noisy state, which is the best any model with that
state could do. This script replaces the simulator by an interaction network learned from simulated states, so
that the two halves of an object-centric model can be measured apart: reading the state (the noise, as in the
oracle) and learning how it evolves (this model).

The model: for every ordered pair of present bodies an MLP reads relative position and velocity, distance, the gap
between their outlines and both sizes and shapes; the messages are summed per body, and a node MLP reads them with
the body's position, velocity, size and shape and outputs its position 1 and 2 frames ahead as a correction to
constant velocity. It trains with MSE on the states of `--scenes` bouncing scenes of 2-10 bodies (seeds from
10 000, 48 examples each; no scene of this world shows two bodies overlapping), with the state noise it is later
scored with added to its inputs. A second head on the node MLP's input predicts each body's spread: log sigma
(per axis) of its position error at +1 and +2 frames, trained by the Gaussian negative log-likelihood of the
(detached) errors, so that the positions train exactly as without it; the model then says how sure it is of each body (a
body in free flight, about to hit a wall, touching another). Held-out error (and the sigma given) is reported on 200
scenes from seed 900 000 by what the body did over those two frames (contact with another body, a wall bounce, free
flight).

Scoring, on the same pairs as `ami-edge eval-voe` (seeds from 1 000 000): from the state at t - 2 (violation flags
forgotten, noise added as in the oracle) the model predicts every body's position at t - 1 and t. The `pixels`
score renders those frames and scores them as the oracle does (squared error per 4x4 patch, mean of the 4 worst,
peak per clip); the `state` score is the largest distance in px between a body's predicted and true position at t
(vanish is left out: a vanished body has no position), and the `state/sigma` score the largest such distance
divided by the sigma the model predicted for that body: the surprise of a Gaussian prediction, which weighs an
error by how predictable that body was. Needs the [export] extra (torch).

The defaults fit the issue's 2 CPU cores. For longer runs, `--device cuda` trains on a GPU (`auto`, the default,
takes one when torch sees it) and `--workers N` simulates the training scenes in N processes (the same states in
the same order for any N). On the CPU the defaults reproduce the README's numbers; a GPU's kernels differ in the
last bits, so the same settings there give close but not equal numbers.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ami_edge.export.demo.voe import make_pairs, roc_auc
from ami_edge.runtime import step_surprise
from ami_edge.world import World, WorldConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from voe_oracle import KINDS, SURPRISE, near_another, parse_noise, patches, snapshots  # noqa: E402

PX = 64.0  # the VoE clips' size: world units -> pixels
MAX_BODIES = 10
FEATURES = 7  # x, y (world units), vx, vy (px / frame), size (px), is_ball, present
SCORES = ("pixels", "state", "state/sigma")
STATE_SCORES = SCORES[1:]  # scores on bodies' positions: none for vanish (a vanished body has no position)


def body_states(world: World) -> np.ndarray:
    """(MAX_BODIES, FEATURES) float32: every body's state as the model reads it; absent rows are zero."""
    s = np.zeros((MAX_BODIES, FEATURES), np.float32)
    for i, b in enumerate(world.bodies):
        s[i] = (*b.pos, *(b.vel * world.cfg.dt * PX), b.size * PX, b.shape == "ball", b.visible)
    return s


def simulate(first_seed: int, scenes: int, near_px: float, length: int = 50, workers: int = 1
             ) -> dict[str, np.ndarray]:
    """States of `scenes` scenes of 2-10 bodies: `x` (E, N, F) at frame k, `future` (E, 2, N, 2) positions at frames
    k + 1 and k + 2, `near` (E, N) bodies within `near_px` of another at k, `event` (E, N) what each body did in
    the two moves after k: 2 contact, 1 wall bounce, 0 free flight. `workers` > 1 simulates contiguous runs of
    seeds in that many processes and joins them in seed order."""
    if workers > 1 and scenes > 1:
        bounds = np.linspace(first_seed, first_seed + scenes, min(workers, scenes) + 1).astype(int)
        with ProcessPoolExecutor(len(bounds) - 1) as pool:
            parts = list(pool.map(simulate, bounds[:-1], np.diff(bounds), [near_px] * (len(bounds) - 1),
                                  [length] * (len(bounds) - 1)))
        return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
    xs, futures, nears, events = [], [], [], []
    for seed in range(first_seed, first_seed + scenes):
        objects = int(np.random.default_rng(seed).integers(2, MAX_BODIES + 1))
        world = World(WorldConfig(seed=seed, objects=objects, occluder=False))  # the occluder has no physics
        states, near, event = [], [], []
        for _ in range(length):
            states.append(body_states(world))
            near.append(near_another(world, near_px / PX) + [False] * (MAX_BODIES - objects))
            contacts, bounces = len(world.contacts), len(world.bounces)
            world.step()
            e = np.zeros(MAX_BODIES, np.int8)
            e[[i for _, i, _ in world.bounces[bounces:]]] = 1
            e[[i for c in world.contacts[contacts:] for i in c[1:]]] = 2
            event.append(e)
        states, event = np.stack(states), np.stack(event)
        xs.append(states[:-2])
        futures.append(np.stack([states[1:-1, :, :2], states[2:, :, :2]], 1))
        nears.append(np.array(near[:-2]))
        events.append(np.maximum(event[:-2], event[1:-1]))
    return {"x": np.concatenate(xs), "future": np.concatenate(futures), "near": np.concatenate(nears),
            "event": np.concatenate(events)}


class InteractionNet(nn.Module):
    """Bodies' states (B, N, F) -> (B, N, 4): position corrections (px) to constant velocity at +1 and +2 frames;
    with `spread`, also (B, N, 2): log sigma (px, per axis) of the position error at +1 and +2 frames, from a head that
    reads the node features detached (its loss does not move the positions)."""

    def __init__(self, hidden: int = 128):
        super().__init__()
        self.edge = nn.Sequential(nn.Linear(10, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                  nn.Linear(hidden, hidden), nn.GELU())
        self.node = nn.Sequential(nn.Linear(8 + hidden, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                  nn.Linear(hidden, 4))
        self.spread = nn.Sequential(nn.Linear(8 + hidden, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                    nn.Linear(hidden, 2))

    def forward(self, s: torch.Tensor, spread: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        xy, v, size, ball, present = s[..., :2], s[..., 2:4], s[..., 4:5], s[..., 5:6], s[..., 6:7]
        n = s.shape[1]
        d = (xy[:, None] - xy[:, :, None]) * PX  # (B, i, j, 2): j relative to i, px
        dist = d.norm(dim=-1, keepdim=True)
        pair = lambda t: (t[:, :, None].expand(-1, -1, n, -1), t[:, None].expand(-1, n, -1, -1))  # noqa: E731
        (size_i, size_j), (ball_i, ball_j) = pair(size), pair(ball)
        edge = torch.cat([d / 10, (v[:, None] - v[:, :, None]) / 4, dist / 10, (dist - size_i - size_j) / 5,
                          size_i / 5, size_j / 5, ball_i, ball_j], -1)
        others = 1 - torch.eye(n, dtype=s.dtype, device=s.device)
        mask = present[:, :, None] * present[:, None] * others[None, :, :, None]
        messages = (self.edge(edge) * mask).sum(2)
        node = torch.cat([xy, 1 - xy, v / 4, size / 5, ball, messages], -1)  # both wall distances per axis
        out = self.node(node) * present
        return (out, self.spread(node.detach())) if spread else out


def add_noise(x: np.ndarray, near: np.ndarray, noise: tuple[float, float], near_noise: tuple[float, float] | None,
              rng: np.random.Generator) -> np.ndarray:
    """Gaussian state noise (position px, velocity px / frame), `near_noise` for the bodies `near` marks."""
    pos = np.full(x.shape[:-1], noise[0], np.float32)
    vel = np.full(x.shape[:-1], noise[1], np.float32)
    if near_noise is not None:
        pos[near], vel[near] = near_noise
    x = x.copy()
    x[..., :2] += rng.normal(0.0, 1.0, x[..., :2].shape).astype(np.float32) * pos[..., None] / PX
    x[..., 2:4] += rng.normal(0.0, 1.0, x[..., 2:4].shape).astype(np.float32) * vel[..., None]
    return x


def predict(model: InteractionNet, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(..., N, F) states -> (..., 2, N, 2) predicted positions (px) at +1 and +2 frames, and (..., 2, N) the
    sigma (px) the model gives each body's position error there."""
    device = next(model.parameters()).device
    with torch.no_grad():
        out, log_sigma = model(torch.from_numpy(x.reshape(-1, *x.shape[-2:])).to(device), spread=True)
    out = out.cpu().numpy().reshape(*x.shape[:-1], 4)
    sigma = np.exp(log_sigma.cpu().numpy()).reshape(*x.shape[:-1], 2)
    p, v = x[..., :2] * PX, x[..., 2:4]
    return np.stack([p + v + out[..., :2], p + 2 * v + out[..., 2:]], -3), np.moveaxis(sigma, -1, -2)


def losses(model: InteractionNet, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The positions' MSE (px^2, over present bodies) and the spread head's Gaussian negative log-likelihood of the
    detached 2-D errors (2 log sigma + e^2 / 2 sigma^2, whose minimum is at sigma = |e| / sqrt 2)."""
    present = x[..., 6:7]
    out, log_sigma = model(x, spread=True)
    err = (out - target) ** 2 * present
    sq = err.detach().reshape(*err.shape[:-1], 2, 2).sum(-1)  # (B, N, 2): squared 2-D error at +1, +2
    nll = ((2 * log_sigma + sq / (2 * torch.exp(2 * log_sigma))) * present).sum() / present.sum() / 2
    return err.sum() / present.sum() / 4, nll


def train(data: dict[str, np.ndarray], steps: int, noise, near_noise, seed: int, batch: int = 256,
          hidden: int = 128, device: str = "cpu", clip: float = 0.0, log=print) -> InteractionNet:
    """`clip` > 0 clips the gradient's norm to it (wider models at larger batches can diverge at the peak rate)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = InteractionNet(hidden).to(device)
    opt = torch.optim.AdamW(model.parameters(), 1e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps,
                                                pct_start=min(0.5, max(0.05, 2 / steps)))  # >= 2 warm-up steps
    start = time.perf_counter()
    for step in range(steps):
        idx = rng.integers(0, len(data["x"]), batch)
        x = add_noise(data["x"][idx], data["near"][idx], noise, near_noise, rng)
        p, v = x[..., :2] * PX, x[..., 2:4]  # targets: the true positions, relative to the noisy extrapolation
        future = data["future"][idx] * PX
        target = np.concatenate([future[:, 0] - p - v, future[:, 1] - p - 2 * v], -1)
        loss, nll = losses(model, torch.from_numpy(x).to(device), torch.from_numpy(target).to(device))
        opt.zero_grad()
        (loss + nll).backward()
        if clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        sched.step()
        if step % 1000 == 0 or step == steps - 1:
            log(f"step {step:6d}  loss {loss.item():.4f}  nll {nll.item():7.3f}  ({time.perf_counter() - start:.0f} s)")
    return model


def held_out_errors(model: InteractionNet, data: dict[str, np.ndarray], noise, near_noise) -> dict[str, list[float]]:
    """Per event (contact, bounce, free flight): median and 90th percentile of the 2-frame position error (px), and
    the median sigma (px) the model gave those bodies."""
    x = add_noise(data["x"], data["near"], noise, near_noise, np.random.default_rng(123))
    predicted, sigma = predict(model, x)
    err = np.linalg.norm(predicted[:, 1] - data["future"][:, 1] * PX, axis=-1)
    present = data["x"][..., 6] > 0
    out = {}
    for code, name in ((2, "contact"), (1, "bounce"), (0, "free")):
        if (which := present & (data["event"] == code)).any():
            e = err[which]
            out[name] = [float(np.median(e)), float(np.percentile(e, 90)), float(np.median(sigma[:, 1][which]))]
    return out


def surprise_traces(model: InteractionNet, states: list[World], frames: np.ndarray, noise, near_noise,
                    near_px: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The model's surprise at every frame of a clip (NaN before frame 5, as in the runtime), scored on rendered
    pixels and on the state (see the module doc)."""
    traces = {score: np.full(len(frames), np.nan) for score in SCORES}
    for t in range(5, len(frames)):
        world = copy.deepcopy(states[t - 2])
        n = len(world.bodies)
        near = np.array(near_another(world, near_px / PX) + [False] * (MAX_BODIES - n))
        predicted, sigma = predict(model, add_noise(body_states(world), near, noise, near_noise, rng))  # px
        seen = body_states(states[t])
        visible = seen[:n, 6] > 0
        err = np.linalg.norm(predicted[1, :n] - seen[:n, :2] * PX, axis=-1)[visible]
        traces["state"][t] = float(err.max()) if len(err) else 0.0
        traces["state/sigma"][t] = float((err / sigma[1, :n][visible]).max()) if len(err) else 0.0
        rendered = []
        for k in range(2):
            for i, body in enumerate(world.bodies):
                body.pos = predicted[k, i].astype(float) / PX
            rendered.append(world.render(frames.shape[1]).astype(np.float32))
        traces["pixels"][t] = float(step_surprise(patches(np.stack(rendered), 4), patches(frames[t - 1:t + 1], 4),
                                                  SURPRISE))
    return traces


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenes", type=int, default=6000, help="training scenes (default 6000: 288 000 examples)")
    p.add_argument("--steps", type=int, default=20000, help="training steps of --batch examples (default 20000)")
    p.add_argument("--noise", default="0,0", help="POS,VEL: state noise in px and px / frame (default exact)")
    p.add_argument("--near", metavar="POS,VEL", help="noise for bodies within --near-px of another (as voe_oracle.py)")
    p.add_argument("--near-px", type=float, default=4.0, help="what --near counts as near, edge to edge (default 4)")
    p.add_argument("--pairs", type=int, default=30, help="pairs per violation type (default 30)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="also write the report here")
    p.add_argument("--batch", type=int, default=256, help="training examples per step (default 256)")
    p.add_argument("--hidden", type=int, default=128, help="width of the edge, node and sigma MLPs (default 128)")
    p.add_argument("--clip", type=float, default=0.0, help="clip the gradient norm to this (default 0: off)")
    p.add_argument("--device", default="auto", help="auto (cuda when torch sees a GPU, else cpu), cpu or cuda")
    p.add_argument("--workers", type=int, default=1, help="processes that simulate the training scenes (default 1)")
    args = p.parse_args()
    try:
        noise = parse_noise(args.noise)
        near_noise = parse_noise(args.near) if args.near else None
    except ValueError:
        print("error: --noise and --near take POS,VEL pairs of non-negative numbers", file=sys.stderr)
        return 1
    if min(args.scenes, args.steps, args.batch, args.hidden, args.workers) < 1 or args.pairs < 2:
        print("error: --scenes, --steps, --batch, --hidden and --workers must be >= 1 and --pairs >= 2",
              file=sys.stderr)
        return 1
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device not in ("cpu", "cuda") or (device == "cuda" and not torch.cuda.is_available()):
        print(f"error: --device {args.device}: use auto, cpu, or cuda on a machine where torch sees a GPU",
              file=sys.stderr)
        return 1
    print(f"device {device}", flush=True)
    start = time.perf_counter()
    data = simulate(10_000, args.scenes, args.near_px, workers=args.workers)
    print(f"{len(data['x'])} training states ({time.perf_counter() - start:.0f} s)", flush=True)
    start = time.perf_counter()
    model = train(data, args.steps, noise, near_noise, args.seed, args.batch, args.hidden, device,
                  args.clip, log=lambda m: print(m, flush=True))
    seconds = time.perf_counter() - start
    errors = held_out_errors(model, simulate(900_000, 200, args.near_px, workers=args.workers), noise, near_noise)
    print("held-out 2-frame position error, px (median, p90; median sigma): "
          + ", ".join(f"{k} {m:.3f} {q:.3f}; {sd:.3f}" for k, (m, q, sd) in errors.items()), flush=True)
    rng = np.random.default_rng(args.seed)
    aucs, state_peaks = {score: {} for score in SCORES}, {}
    print(f"{'ROC-AUC':>13}  " + "  ".join(f"{score:>11}" for score in SCORES)
          + "  (state peak px: normal, violating; median)")
    for kind in KINDS:
        peaks = {(score, violate): [] for score in SCORES for violate in (True, False)}
        for pair in make_pairs(kind, args.pairs):
            for violate in (True, False):
                for score, trace in surprise_traces(model, *snapshots(pair, violate), noise, near_noise,
                                                    args.near_px, rng).items():
                    peaks[score, violate].append(np.nanmax(trace))
        for score in SCORES:
            if score in STATE_SCORES and kind == "vanish":
                continue  # a vanished body has no position to compare
            aucs[score][kind] = roc_auc(np.array(peaks[score, True]), np.array(peaks[score, False]))
        state_peaks[kind] = [float(np.median(peaks["state", v])) for v in (False, True)]
        print(f"{kind:>13}  " + "  ".join(f"{aucs[score].get(kind, float('nan')):11.3f}" for score in SCORES)
              + f"  ({state_peaks[kind][0]:.2f}, {state_peaks[kind][1]:.2f})", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"scenes": args.scenes, "steps": args.steps, "batch": args.batch,
                                         "hidden": args.hidden, "clip": args.clip, "device": device,
                                         "train_seconds": seconds,
                                         "noise": noise, "near": near_noise, "near_px": args.near_px,
                                         "held_out_error_px": errors, "auc": aucs,
                                         "state_peak_px_median": state_peaks},
                                        indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
