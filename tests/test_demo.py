"""The demo world model pipeline at CI size: train-demo -> checkpoint, plot, bundle with recipe; eval-voe."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ami_edge import load_bundle
from ami_edge.cli import DEMO_STALL_OFFSET, DEMO_SURPRISE
from ami_edge.errors import ConfigError
from ami_edge.export.demo.voe import EVENTS, KINDS, clip_events, make_pair, pair_events, roc_auc, scene
from ami_edge.world import World

from .conftest import assert_one_line_error, run_cli


def test_train_demo_then_eval_voe(tmp_path):
    out = tmp_path / "demo"
    proc = run_cli("train-demo", "--steps", "4", "--residual-steps", "3", "--residual-examples", "20", "--batch", "4",
                   "--out", str(out), "--eval-pairs", "2", "--stall-clips", "2")
    assert proc.returncode == 0, proc.stderr
    assert "Warning" not in proc.stderr
    for name in ("demo.safetensors", "training.png", "history.json"):
        assert (out / name).is_file()
    bundle = load_bundle(out / "default-fp32.amiedge")
    assert bundle.manifest.name == "default-fp32"
    t = bundle.manifest.training
    assert t["recipe"]["seed"] == 0 and t["steps"] == 4 and 0 < t["token_rank_frac"] <= 1
    assert (t["recipe"]["residual_topk"], t["recipe"]["residual_topk_weight"]) == (int(DEMO_SURPRISE[3:]), 1.0)
    assert set(t["voe"]) == set(KINDS) and all(0 <= r["auc"] <= 1 for r in t["voe"].values())
    assert set(bundle.manifest.graphs) == {"encoder", "predictor", "ac_predictor"}
    # second stage: a convolutional residual next-step predictor, logged against copying the last step
    assert bundle.manifest.model["predictor"]["arch"] == "conv" and t["recipe"]["residual_arch"] == "conv"
    assert bundle.manifest.model["predictor"]["residual"] is True and t["residual_steps"] == 3
    assert t["val_residual"] > 0 and t["val_copy_last"] > 0
    history = json.loads((out / "history.json").read_text())
    # logged every 25 steps and at the end of each stage; the second stage's steps continue the first's
    assert [(r["step"], r.get("stage")) for r in history] == [(0, None), (3, None), (4, "residual"), (6, "residual")]
    # ... and the INT8 `default` made from exactly those graphs, with its report against them
    int8 = load_bundle(out / "default.amiedge")
    q = int8.manifest.quantization
    assert {g.precision for g in int8.manifest.graphs.values()} == {"int8"} and int8.manifest.name == "default"
    assert q.reference["graphs"] == {name: g.sha256 for name, g in bundle.manifest.graphs.items()}
    assert q.report["latent_cosine_mean"] >= 0.999 and q.report["voe_pairs"] == 2
    # the surprise reduction train-demo records travels with the bundle into the INT8 one
    assert bundle.manifest.latent.surprise == int8.manifest.latent.surprise == DEMO_SURPRISE
    # ... and so does the stall term fitted on the FP32 graphs
    stall = bundle.manifest.latent.stall
    assert stall == int8.manifest.latent.stall and stall.offset == DEMO_STALL_OFFSET and stall.weight > 0
    proc = run_cli("eval-voe", "--model", str(bundle.path), "--pairs", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert set(report) == set(KINDS) and all(0 <= r["paired"] <= 1 for r in report.values())
    proc = run_cli("eval-voe", "--model", str(bundle.path), "--pairs", "2")
    assert proc.returncode == 0 and proc.stdout.startswith(f"surprise: {DEMO_SURPRISE} + stall term (offset 1,")
    proc = run_cli("eval-voe", "--model", str(bundle.path), "--pairs", "2", "--surprise", "mean", "--no-stall")
    assert proc.returncode == 0 and proc.stdout.startswith("surprise: mean of the per-token"), proc.stderr
    assert_one_line_error(run_cli("eval-voe", "--model", str(bundle.path), "--surprise", "top257"),
                          "--surprise: 'top257' is not a surprise reduction", "1 <= K <= 256")


def test_train_demo_checks_surprise_before_training(tmp_path):
    from ami_edge.export.demo.train import residual_loss_for

    out = tmp_path / "never"
    assert_one_line_error(run_cli("train-demo", "--surprise", "top257", "--out", str(out)),
                          "--surprise: 'top257' is not a surprise reduction", "1 <= K <= 256")  # 16x16 tokens
    # ... checked against the grid of the encoder asked for: 8 px patches make 8x8 tokens
    assert_one_line_error(run_cli("train-demo", "--patch", "8", "--surprise", "top65", "--out", str(out)),
                          "--surprise: 'top65' is not a surprise reduction", "1 <= K <= 64")
    assert_one_line_error(run_cli("train-demo", "--patch", "6", "--out", str(out)), "patch=6 must divide")
    assert not out.exists()  # failed before training or writing anything
    # the second stage's extra loss term reads the tokens the recorded reduction reads
    assert residual_loss_for("top8", (2, 8, 8)) == {"residual_topk": 8, "residual_topk_weight": 1.0}
    assert residual_loss_for("mean", (2, 8, 8)) == {"residual_topk_weight": 0.0}


def test_training_is_reproducible_from_its_seed():
    from ami_edge.export.demo.train import TrainConfig, train

    cfg = TrainConfig(steps=2, batch=4, pool=8, log_every=1, threads=1, residual_steps=2, residual_examples=16)
    a, b = train(cfg), train(cfg)
    for k, v in a.model.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), b.model.state_dict()[k].numpy())
    assert a.history == [{**r, "seconds": a.history[i]["seconds"]} for i, r in enumerate(b.history)]


def test_second_stage_predictor_choice():
    from ami_edge.export.demo.train import TrainConfig, train
    from ami_edge.export.models import ConvPredictor, Predictor

    small = dict(steps=2, batch=4, pool=8, log_every=1, threads=1, residual_steps=2, residual_examples=16)
    conv = train(TrainConfig(**small)).model
    assert isinstance(conv.predictor, ConvPredictor) and conv.cfg.predictor.arch == "conv"
    vit = train(TrainConfig(**small, residual_arch="vit")).model  # the previous recipe: stage 1's ViT fine-tuned
    assert isinstance(vit.predictor, Predictor) and vit.cfg.predictor.residual and vit.cfg.predictor.arch == "vit"
    with pytest.raises(ConfigError, match="residual_arch must be conv or vit"):
        TrainConfig(residual_arch="mlp")
    with pytest.raises(ConfigError, match=r"residual_objects=\(5, 3\) must be \(min, max\)"):
        TrainConfig(residual_objects=(5, 3))
    with pytest.raises(ConfigError, match="residual_topk_weight must be >= 0"):
        TrainConfig(residual_topk_weight=-1.0)


def test_stall_fit_evens_out_the_two_terms_on_calm_scenes(tmp_path):
    """`fit_stall` weights the stall term so that its 99th percentile over the calm clips' frames equals the plain
    term's; `finish_fp32` records it (offset 0: no term) in the manifest the runtime reads."""
    import shutil

    from ami_edge.export.demo.cli import finish_fp32
    from ami_edge.export.demo.voe import STALL_FIT_SEED, bundle_steps, calm_clip

    path = tmp_path / "fp32.amiedge"
    shutil.copytree(load_bundle("default-fp32").path, path)
    bundle = finish_fp32(load_bundle(path), 0.5, 0, lambda _: None, stall_clips=2)
    stall = bundle.manifest.latent.stall
    assert stall.offset == 0.5 and "voe" not in bundle.manifest.training
    m = bundle.manifest
    steps = bundle_steps(bundle)
    plain, relative = [], []
    for seed in (STALL_FIT_SEED, STALL_FIT_SEED + 1):
        for _, predicted, observed, last in steps(calm_clip(seed, size=m.input.height)):
            err = ((predicted - observed) ** 2).mean(-1)
            plain.append(np.sort(err, -1)[:, -4:].mean(-1))
            relative.append(np.sort(err / (((observed - last) ** 2).mean(-1) + 0.5), -1)[:, -4:].mean(-1))
    assert len(np.concatenate(plain)) == 2 * (36 - 5)  # every frame with a prediction, from both clips
    assert stall.weight * np.percentile(np.concatenate(relative), 99) == pytest.approx(
        np.percentile(np.concatenate(plain), 99), rel=1e-5)
    assert finish_fp32(bundle, 0, 0, lambda _: None).manifest.latent.stall is None


def test_world_pool_scenes():
    from ami_edge.export.demo.data import WorldPool

    first = WorldPool(8, 0, 32, 4)  # the first stage's: 2-6 bodies, every other world a pusher scene
    assert [w.cfg.pusher for w in first.worlds] == [False, True] * 4
    assert all(2 <= w.cfg.objects <= 6 for w in first.worlds)
    second = WorldPool(40, 1, 32, 4, objects=(4, 10), pusher=False)  # the second stage's: bouncing scenes only
    assert not any(w.cfg.pusher for w in second.worlds) and not second.sample(8).pusher.any()
    counts = {w.cfg.objects for w in second.worlds}
    assert counts <= set(range(4, 11)) and len(counts) > 3


def test_next_step_examples_are_the_encoders_tokens_of_consecutive_clips():
    """The residual stage's cached examples: each clip of a window is the context of the step ending its successor."""
    import torch

    from ami_edge.export.demo.data import WorldPool
    from ami_edge.export.demo.train import TrainConfig, clip, demo_model_config, frozen_steps, next_steps
    from ami_edge.export.models import JEPAModel

    torch.manual_seed(0)
    model = JEPAModel(demo_model_config()).eval()
    frames = WorldPool(4, 3, 64, 10).sample(3).frames  # 3 windows of 10 frames: clips at 0, 2, 4, 6
    context, target = next_steps(model, frames, 4)
    assert context.shape == (9, 512, 64) and target.shape == (9, 256, 64)  # 2 x 16 x 16 tokens of 64
    with torch.no_grad():
        for i, start in enumerate((0, 2, 4)):  # examples are grouped by offset, windows in order within a group
            np.testing.assert_allclose(context[3 * i:3 * i + 3], model.encoder(clip(frames, start, 4)), atol=1e-5)
            np.testing.assert_allclose(target[3 * i:3 * i + 3], model.encoder(clip(frames, start + 2, 4))[:, -256:],
                                       atol=1e-5)
    cfg = TrainConfig(batch=2, pool=4, frames=4, horizon=3)
    context, target = frozen_steps(model, WorldPool(4, 3, 64, 10), 7, cfg)  # 6 per sample: two samples, trimmed
    assert context.shape == (7, 512, 64) and target.shape == (7, 256, 64)


def test_one_horizon_per_clip_targets_the_teachers_tokens_of_that_clip():
    """horizon_sampling="one", target_fraction < 1: one predictor call whose query for each clip is a random subset of
    the token ids k steps past the context, scored against the teacher's tokens of the clip 2k frames later at
    those ids; the action-conditioned predictor keeps the next step as its target."""
    import copy

    import torch
    import torch.nn.functional as F

    from ami_edge.export.demo.data import WorldPool
    from ami_edge.export.demo.train import TrainConfig, clip, demo_model_config, losses
    from ami_edge.export.models import JEPAModel

    torch.manual_seed(0)
    cfg = TrainConfig(batch=8, pool=8, horizon=3, horizon_sampling="one", target_fraction=0.25)
    model = JEPAModel(demo_model_config()).eval()
    teacher = copy.deepcopy(model.encoder)
    predictor, queries = model.predictor, []

    class Spy(torch.nn.Module):
        def forward(self, context, context_ids, target_ids):
            queries.append(target_ids)
            return predictor(context, context_ids, target_ids)

    model.predictor = Spy()
    batch = WorldPool(8, 0, 64, 10).sample(8)  # every other clip a pusher scene
    with torch.no_grad():
        out = losses(model, batch, cfg, torch.Generator().manual_seed(0), teacher)
        assert len(queries) == 1
        ids = queries[0]
        t, h, w = model.cfg.encoder.grid
        n, hw = t * h * w, h * w
        assert ids.shape == (8, hw // 4)
        k, token = (ids - n) // hw + 1, (ids - n) % hw
        assert (k == k[:, :1]).all() and set(k[:, 0].tolist()) == {1, 2, 3}  # one horizon per clip, all drawn
        assert all(len(set(row.tolist())) == hw // 4 for row in token)  # distinct tokens
        z_ctx = model.encoder(clip(batch.frames, 0, 4))
        expected = torch.stack([teacher(clip(batch.frames[i:i + 1], 2 * int(k[i, 0]), 4))[0, -hw:][token[i]]
                                for i in range(8)])
        torch.testing.assert_close(out["pred"], F.smooth_l1_loss(predictor(z_ctx, torch.arange(n).expand(8, -1), ids),
                                                                 expected))
        rows = batch.pusher
        assert rows.sum() == 4
        acts = batch.actions[rows, :4].view(-1, t, 2, 2).mean(2)
        ac = model.ac_predictor(z_ctx[rows], acts, batch.states[rows, :4:2])[:, -hw:]
        torch.testing.assert_close(out["ac"], F.smooth_l1_loss(ac, teacher(clip(batch.frames[rows], 2, 4))[:, -hw:]))
    with pytest.raises(ConfigError, match="horizon_sampling must be all or one"):
        TrainConfig(horizon_sampling="some")
    with pytest.raises(ConfigError, match=r"target_fraction must be in \(0, 1\]"):
        TrainConfig(target_fraction=0.0)
    with pytest.raises(ConfigError, match="patch=6 must divide image_size=64"):
        TrainConfig(patch=6)


@pytest.mark.parametrize("kind", KINDS)
def test_violation_pairs_differ_only_from_the_violation_on(kind):
    pair = next(p for s in range(1_000_000, 1_000_050) if (p := make_pair(kind, s, length=30, size=48)))
    assert pair.normal.shape == pair.violating.shape == (30, 48, 48, 3)
    np.testing.assert_array_equal(pair.normal[:pair.frame], pair.violating[:pair.frame])
    assert np.abs(pair.normal[pair.frame + 2:].astype(int) - pair.violating[pair.frame + 2:]).sum() > 0
    if kind == "splice":
        assert pair.body is None
        return
    # `body` names the body that breaks physics: re-simulating the scene with it reproduces the clip exactly
    # (benchmarks/voe_oracle.py relies on this). (For pass-through either body of the collision gives the same clip.)
    def replay(body):
        world, frames = World(scene(pair.seed)), []
        for k in range(len(pair.normal)):
            if k == pair.frame:
                world.violate(kind, body)
            frames.append(world.render(48))
            world.step()
        return np.stack(frames)
    np.testing.assert_array_equal(replay(pair.body), pair.violating)
    if kind != "pass_through":
        others = [i for i in range(len(World(scene(pair.seed)).bodies)) if i != pair.body]
        assert not all(np.array_equal(replay(i), pair.violating) for i in others)


def test_roc_auc():
    assert roc_auc(np.array([3, 4]), np.array([1, 2])) == 1.0
    assert roc_auc(np.array([1, 2]), np.array([3, 4])) == 0.0
    assert roc_auc(np.array([1, 1]), np.array([1, 1])) == 0.5


def test_second_stage_benchmark_reuses_train_demos_stage_on_the_shipped_encoder(tmp_path):
    """benchmarks/stage2_voe.py: the shipped encoder graph in ONNX Runtime stands in for the torch encoder, so its
    held-out next-step examples are train-demo's own: copying the last step scores what the shipped run recorded."""
    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "stage2.json"
    proc = subprocess.run([sys.executable, str(root / "benchmarks" / "stage2_voe.py"), "--residual-steps", "1",
                           "--residual-examples", "40", "--pairs", "2", "--stall-clips", "2", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    shipped = load_bundle("default-fp32").manifest.training
    assert report["val_copy_last"] == pytest.approx(shipped["val_copy_last"], abs=1e-4)
    # the fresh conv predictor starts at "copy the last step"; one warm-up step barely moves it
    assert report["val_residual"] == pytest.approx(report["val_copy_last"], rel=0.05)
    assert report["recipe"]["residual_steps"] == 1 and report["recipe"]["residual_examples"] == 40
    assert report["recipe"]["residual_topk"] == shipped["recipe"]["residual_topk"]
    assert set(report["auc"]) == set(KINDS) | {"mean"} and all(0 <= v <= 1 for v in report["auc"].values())
    # the shipped bundle has a stall term: the benchmark fits one to its own predictor, with the bundle's offset
    stall = load_bundle("default-fp32").manifest.latent.stall
    assert report["stall"]["offset"] == stall.offset and report["stall"]["weight"] > 0
    assert set(report["auc_no_stall"]) == set(report["auc"])
    for argv, says in ((["--model", "default"], "reads an FP32 encoder"), (["--objects", "4-10"], "MIN,MAX")):
        bad = subprocess.run([sys.executable, str(root / "benchmarks" / "stage2_voe.py"), *argv],
                             capture_output=True, text=True, timeout=120)
        assert bad.returncode == 1 and "Traceback" not in bad.stderr and says in bad.stderr, bad.stderr


def _benchmark(name: str):
    """Import benchmarks/NAME.py."""
    root = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(root / "benchmarks"))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(root / "benchmarks"))


def test_physics_oracle_without_solidity_lets_overlapping_bodies_pass():
    """benchmarks/voe_oracle.py --overlap pass: from an exact state where bodies overlap (a pass-through violation
    leaves them so), the oracle predicts them passing through each other, which is what the clip shows, while the
    world's own physics (the default) pushes them apart and is surprised. Frames that start from states without an
    overlap score the same in both modes."""
    voe_oracle = _benchmark("voe_oracle")
    pair = next(p for s in range(1_000_000, 1_000_050) if (p := make_pair("pass_through", s)))
    states, frames = voe_oracle.snapshots(pair, violate=True)
    rng = np.random.default_rng(0)
    solid, passing = (voe_oracle.surprise_trace(states, frames, 2, 0.0, 0.0, rng, 4, solid=mode)
                      for mode in (True, False))
    overlap = np.array([any(voe_oracle.overlapping(w)) for w in states])
    starts = np.arange(len(frames)) - 2  # the state each frame's prediction starts from
    scored = ~np.isnan(solid)
    from_overlap = scored & overlap[np.clip(starts, 0, None)] & (starts >= 0)
    assert from_overlap.sum() >= 2 and not overlap[:pair.frame].any()
    assert (passing[from_overlap] == 0).all() and (solid[from_overlap] > 0).all()
    same = scored & ~overlap[np.clip(starts, 0, None)]
    np.testing.assert_array_equal(solid[same], passing[same])
    # normal clips of the same scene never overlap, so the mode changes nothing there
    normal_states, _ = voe_oracle.snapshots(pair, violate=False)
    assert not any(any(voe_oracle.overlapping(w)) for w in normal_states)


def test_physics_oracle_near_noise_reaches_only_bodies_near_another():
    """benchmarks/voe_oracle.py --near: with exact state elsewhere, noise given only to bodies within 4 px of
    another body leaves every frame whose starting state has no such body exactly predicted, and makes the oracle
    err around the normal clip's collision, where two bodies approach."""
    voe_oracle = _benchmark("voe_oracle")
    pair = next(p for s in range(1_000_000, 1_000_050) if (p := make_pair("pass_through", s)))
    states, frames = voe_oracle.snapshots(pair, violate=False)
    trace = voe_oracle.surprise_trace(states, frames, 2, 0.0, 0.0, np.random.default_rng(0), 4,
                                      near=(0.5, 0.3, 4.0))
    size = frames.shape[1]
    close = np.array([any(voe_oracle.near_another(w, 4.0 / size)) for w in states])
    starts = np.arange(len(frames)) - 2
    scored = ~np.isnan(trace)
    from_close = scored & close[np.clip(starts, 0, None)]
    assert from_close.sum() >= 2 and (scored & ~from_close).sum() >= 5
    assert (trace[scored & ~from_close] == 0).all() and (trace[from_close] > 0).any()
    # the pair's collision is the normal clip's contact at pair.frame: its bodies are near each other just before
    assert close[pair.frame - 1]
    touching = states[pair.frame - 1].bodies[pair.body]
    assert min(voe_oracle.gap(touching, b) for b in states[pair.frame - 1].bodies if b is not touching) < 4.0 / size


def test_clip_events_label_what_the_simulator_did():
    """`clip_events` against the bodies' velocities: in a frame labelled free flight, gravity is the only thing that
    changed any velocity over the three moves the prediction there depends on (into the context's last frame and
    the two predicted); a contact or a bounce frame has a body whose velocity changed otherwise; an occluder frame
    has a visible body that went behind the occluder or came out."""
    seed = next(s for s in range(1_000_000, 1_000_050) if scene(s).occluder and scene(s).objects >= 4)
    cfg, length = scene(seed), 36
    events = clip_events(cfg, length)
    world, vel, hidden = World(cfg), [], []
    for _ in range(length):
        vel.append(np.array([b.vel for b in world.bodies]))
        hidden.append([b.visible and not world.in_view(i) for i, b in enumerate(world.bodies)])
        world.step()
    gravity = np.array([0.0, cfg.gravity * cfg.dt])
    odd = [False] + [not np.allclose(vel[k] - vel[k - 1], gravity, atol=1e-9) for k in range(1, length)]
    crossed = [False] + [hidden[k] != hidden[k - 1] for k in range(1, length)]
    assert all(ev <= set(EVENTS) for ev in events)
    for t in range(1, length):
        moves = range(max(1, t - 2), t + 1)  # frames t-2, t-1 and t each arrive by one move
        if not events[t] & {"contact", "bounce"}:
            assert not any(odd[k] for k in moves), t
        else:
            assert any(odd[k] for k in moves), t
        assert ("occluder" in events[t]) == any(crossed[k] for k in moves), t
    assert set(EVENTS) <= set().union(*events) and frozenset() in events
    # a frozen body stops: the violating clip of a freeze pair labels the same events up to the freeze
    pair = next(p for s in range(1_000_000, 1_000_050) if (p := make_pair("freeze", s)))
    normal, violating = pair_events(pair)
    assert normal[:pair.frame] == violating[:pair.frame] and normal != violating


def test_voe_events_scores_only_the_named_events_as_calm(tmp_path):
    """benchmarks/voe_events.py: frames with a dropped event fall to the clip's median frame, except the violating
    clip's frames from the violation on; the AUC moves accordingly."""
    voe_events = _benchmark("voe_events")
    nan = np.nan
    trace = np.array([nan, nan, 1.0, 5.0, 1.0, 2.0])
    events = [frozenset(), frozenset(), frozenset(), frozenset({"contact"}), frozenset(), frozenset({"bounce"})]
    np.testing.assert_array_equal(voe_events.calmed(trace, events, ("contact",)), [nan, nan, 1.0, 1.5, 1.0, 2.0])
    np.testing.assert_array_equal(voe_events.calmed(trace, events, ("contact", "bounce"), keep_from=4),
                                  [nan, nan, 1.0, 1.5, 1.0, 2.0])
    # normal clips peak at a contact (5), violating ones at their violation (3, frame 4)
    normal = [trace, trace + 0.1]
    violating = [np.array([nan, nan, 1.0, 1.0, 3.0, 1.0])] * 2
    flat = [frozenset()] * 6
    args = (violating, normal, [flat, flat], [events, events], [4, 4])
    assert voe_events.auc_if_calm(*args, ()) == 0.0
    assert voe_events.auc_if_calm(*args, ("contact",)) == 1.0
    assert voe_events.label(frozenset({"occluder", "bounce"})) == "bounce" and voe_events.label(frozenset()) == "free"
    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "events.json"
    proc = subprocess.run([sys.executable, str(root / "benchmarks" / "voe_events.py"), "--pairs", "1", "--kinds",
                           "freeze", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert sum(report["peaks"].values()) == 1 and set(report["auc"]) == {"freeze"}
    assert set(report["auc"]["freeze"]) == {"as measured", "contact", "bounce", "occluder", "contact+bounce",
                                            "contact+bounce+occluder"}
    bad = subprocess.run([sys.executable, str(root / "benchmarks" / "voe_events.py"), "--kinds", "splice"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr and "splices cannot be labelled" in bad.stderr


def test_state_model_spread_head_learns_sigma_and_leaves_the_positions_alone():
    """benchmarks/voe_state_model.py: the sigma head's likelihood reaches only the sigma head, so the positions
    train as without it, and it fits what it is given: on a batch whose 2-D errors are all 0.6 * sqrt 2 px, the
    predicted sigma goes to the maximum-likelihood 0.6 px for every present body."""
    import torch

    vsm = _benchmark("voe_state_model")
    torch.manual_seed(0)
    model = vsm.InteractionNet(hidden=16)
    x = torch.from_numpy(vsm.simulate(10_000, 2, near_px=4.0)["x"][:8])
    with torch.no_grad():
        target = model(x) + 0.6  # both axes, both horizons: |e|^2 = 0.72
    loss, nll = vsm.losses(model, x, target)
    assert abs(loss.item() - 0.36) < 1e-5
    nll.backward()
    assert all(p.grad is None or not p.grad.any() for p in [*model.edge.parameters(), *model.node.parameters()])
    assert all(p.grad is not None and p.grad.any() for p in model.spread.parameters())
    opt = torch.optim.Adam(model.spread.parameters(), 0.02)
    for _ in range(400):
        opt.zero_grad()
        vsm.losses(model, x, target)[1].backward()
        opt.step()
    _, sigma = vsm.predict(model, x.numpy())  # (8, 2, N)
    present = x.numpy()[:, None, :, 6].repeat(2, 1) > 0
    np.testing.assert_allclose(sigma[present], 0.6, rtol=0.03)


def test_state_model_benchmark_lines_up_states_and_scores(tmp_path):
    """benchmarks/voe_state_model.py: its training states line up with the world (a body in free flight is, two
    frames on, where constant velocity and the 8 substeps of gravity put it: 2.25 g dt^2 lower), and a model that
    predicts constant velocity (output layer zeroed) scores a teleport, in state space, by the distance the body
    jumped at the frame it jumps, above anything the same scene's normal clip scores from then on (both scores
    follow the normal clip's until then); the script runs end to end."""
    import torch

    vsm = _benchmark("voe_state_model")
    oracle = _benchmark("voe_oracle")
    data = vsm.simulate(10_000, 4, near_px=4.0)
    split = vsm.simulate(10_000, 4, near_px=4.0, workers=3)  # seeds 10000, 10001, 10002-10003 in three processes
    assert data.keys() == split.keys() and all(np.array_equal(data[k], split[k]) for k in data)
    cfg = scene(0)
    present = data["x"][..., 6] > 0
    drift = data["future"][:, 1] * vsm.PX - data["x"][..., :2] * vsm.PX - 2 * data["x"][..., 2:4]
    fall = np.array([0.0, 2.25 * cfg.gravity * cfg.dt ** 2 * vsm.PX])
    free, hit = present & (data["event"] == 0), present & (data["event"] > 0)
    assert free.sum() > 100 and hit.sum() > 10
    np.testing.assert_allclose(drift[free], np.broadcast_to(fall, drift[free].shape), atol=1e-4)
    assert (np.abs(drift[hit] - fall).max(-1) > 1e-3).mean() > 0.9
    assert present.sum(-1).min() >= 2

    model = vsm.InteractionNet()
    torch.nn.init.zeros_(model.node[-1].weight)
    torch.nn.init.zeros_(model.node[-1].bias)
    pair = next(p for s in range(1_000_000, 1_000_050) if (p := make_pair("teleport", s)))
    traces, states = {}, {}
    for violate in (True, False):
        states[violate], frames = oracle.snapshots(pair, violate)
        traces[violate] = vsm.surprise_traces(model, states[violate], frames, (0.0, 0.0), None, 4.0,
                                              np.random.default_rng(0))
    jump = np.linalg.norm(states[True][pair.frame].bodies[pair.body].pos
                          - states[False][pair.frame].bodies[pair.body].pos) * vsm.PX
    assert set(traces[True]) == set(vsm.SCORES)
    for score in vsm.SCORES:
        normal, violating = traces[False][score], traces[True][score]
        assert np.isnan(normal[:5]).all() and not np.isnan(normal[5:]).any()
        np.testing.assert_array_equal(normal[:pair.frame], violating[:pair.frame])
        assert not np.array_equal(normal[pair.frame:], violating[pair.frame:])
    normal, violating = traces[False]["state"], traces[True]["state"]
    assert abs(violating[pair.frame] - jump) < 1.0 and jump > 5 and violating[pair.frame] > normal[pair.frame:].max()

    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "state.json"
    proc = subprocess.run([sys.executable, str(root / "benchmarks" / "voe_state_model.py"), "--scenes", "3",
                           "--steps", "20", "--pairs", "2", "--batch", "16", "--hidden", "16", "--clip", "1",
                           "--device", "cpu", "--workers", "2", "--json", str(out)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert (report["steps"], report["batch"], report["hidden"], report["clip"], report["device"]) == (
        20, 16, 16, 1.0, "cpu")
    assert set(report["auc"]["pixels"]) == set(oracle.KINDS)
    assert all(set(report["auc"][score]) == set(oracle.KINDS) - {"vanish"} for score in vsm.STATE_SCORES)
    assert set(report["held_out_error_px"]) <= {"contact", "bounce", "free"}
    assert all(len(v) == 3 and v[2] > 0 for v in report["held_out_error_px"].values())
    bad = subprocess.run([sys.executable, str(root / "benchmarks" / "voe_state_model.py"), "--noise", "1"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr and "POS,VEL" in bad.stderr
    bad = subprocess.run([sys.executable, str(root / "benchmarks" / "voe_state_model.py"), "--device", "tpu"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr and "--device tpu" in bad.stderr
