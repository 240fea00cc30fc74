"""`ami-edge calibrate camera` and `calibrate surprise`, run as a user runs them, on inputs with a known answer.

Camera: chessboard views rendered through a known pinhole + Brown-Conrady lens (tests/lens_render.py). The renderer
itself is verified first: the corners OpenCV finds in a rendered view sit within 0.25 px (0.06 px on average, no
common offset) of the true corners projected by cv2.projectPoints.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from ami_edge.camera_model import CameraModel, Undistorter

from .conftest import assert_one_line_error, run_cli
from .lens_render import COLS, DIST_TRUE, K_TRUE, ROWS, H, W, render_views, true_corners

POSES = 20


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """POSES rendered views as an image folder, plus the rays and true poses."""
    rays, poses, images = render_views(POSES, seed=7)
    folder = tmp_path_factory.mktemp("views")
    for i, image in enumerate(images):
        cv2.imwrite(str(folder / f"view_{i:02d}.png"), image)
    return folder, rays, poses, images


def test_renderer_is_the_lens_model(rendered):
    """The test's own ground truth: inversion, forward model and rendered corners all agree with OpenCV."""
    _, rays, poses, images = rendered
    sample = rays[::37, ::41].reshape(-1, 2)
    projected = cv2.projectPoints(np.hstack([sample, np.ones((len(sample), 1))]), np.zeros(3), np.zeros(3), K_TRUE,
                                  DIST_TRUE)[0].reshape(-1, 2)
    pixels = np.stack(np.meshgrid(np.arange(W), np.arange(H)), -1)[::37, ::41].reshape(-1, 2)
    assert np.abs(projected - pixels).max() < 1e-4  # each ray lands back on its pixel centre
    for image, (rvec, tvec) in zip(images[:8], poses[:8]):
        found, corners = cv2.findChessboardCorners(image, (COLS, ROWS))
        assert found
        grid = corners.reshape(ROWS, COLS, 2)
        spacing = min(np.linalg.norm(np.diff(grid, axis=a), axis=2).min() for a in (0, 1))
        win = int(min(5, spacing * 0.4))  # the refinement window must stay inside one (foreshortened) square
        cv2.cornerSubPix(image, corners, (win, win), (-1, -1),
                         (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_COUNT, 50, 1e-3))
        corners, truth = corners.reshape(-1, 2), true_corners(rvec, tvec)
        corners = min(corners, corners[::-1], key=lambda c: np.abs(c - truth).max())  # OpenCV numbers from either end
        error = np.linalg.norm(corners - truth, axis=1)
        assert error.max() < 0.25 and error.mean() < 0.1, error  # ~0.06 px: cornerSubPix's ideal-corner model
        assert np.abs((corners - truth).mean(0)).max() < 0.02  # and no common offset (pixel-centre convention)


# ------------------------------------------------------------------------------------------------ camera
def _world_line(rays: np.ndarray, horizontal: bool, at: int) -> np.ndarray:
    """(H, W, 3) uint8: a 3 px straight line of the world, seen through the true lens, passing through row (or
    column) `at` of the image centre line."""
    axis = 1 if horizontal else 0
    x, y = (int(K_TRUE[0, 2]), at) if horizontal else (at, int(K_TRUE[1, 2]))
    dist_px = np.abs(rays[..., axis] - rays[y, x, axis]) * K_TRUE[axis, axis]  # to the line, in pixels
    line = (np.clip(2.0 - dist_px, 0, 1) * 255).round().astype(np.uint8)  # anti-aliased
    return np.repeat(line[..., None], 3, axis=2)


def _bend(image: np.ndarray, horizontal: bool) -> float:
    """Peak-to-peak of a bright line's intensity-weighted row (column) across the image: 0 when straight."""
    gray = (image[..., 0] if horizontal else image[..., 0].T).astype(float)[:, 40:-40]
    weight = gray.sum(0)
    assert (weight > 0).all()  # the line crosses the whole span
    return float(np.ptp((gray * np.arange(gray.shape[0])[:, None]).sum(0) / weight))


def test_calibrate_camera_recovers_the_lens(rendered, tmp_path):
    folder, rays, _, _ = rendered
    out = tmp_path / "camera.json"
    proc = run_cli("calibrate", "camera", "--source", str(folder), "--board", "9x6", "--square", "0.025",
                   "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert f"{POSES} distinct views, {POSES} used" in proc.stdout and "RMS reprojection error" in proc.stdout
    data = json.loads(out.read_text())
    cam = CameraModel.load(out)  # exactly what `serve --camera` loads
    assert (cam.width, cam.height) == (W, H) and data["views"] == POSES and len(data["per_view"]) == POSES
    K, dist = cam.K, cam.dist
    assert K[0, 0] == pytest.approx(K_TRUE[0, 0], rel=0.01) and K[1, 1] == pytest.approx(K_TRUE[1, 1], rel=0.01)
    assert abs(K[0, 2] - K_TRUE[0, 2]) < 3 and abs(K[1, 2] - K_TRUE[1, 2]) < 3  # pixels
    assert dist[0] == pytest.approx(DIST_TRUE[0], abs=0.02) and dist[1] == pytest.approx(DIST_TRUE[1], abs=0.03)
    assert 0 < data["rms_px"] < 0.2 and max(v["rms_px"] for v in data["per_view"]) < 0.3

    # Straight lines of the world near the edges, bent by the true lens: the produced camera.json straightens them.
    undistorter = Undistorter(cam)
    for horizontal, at in ((True, 60), (True, H - 60), (False, 70), (False, W - 70)):
        bent = _world_line(rays, horizontal, at)
        assert _bend(bent, horizontal) > 8  # 11-16 px of bend
        assert _bend(undistorter.apply(bent), horizontal) < 0.5  # ~0.2 px (the true model gives ~0.15)


@pytest.fixture(scope="module")
def held_video(rendered, tmp_path_factory):
    """An mp4 holding each rendered pose for 3 frames, as a hand-held recording lingers on a pose."""
    _, _, _, images = rendered
    path = tmp_path_factory.mktemp("video") / "board.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (W, H))
    assert writer.isOpened()
    for image in images:
        for _ in range(3):
            writer.write(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR))
    writer.release()
    return path


def test_video_near_duplicates_are_skipped_and_views_capped(held_video, tmp_path):
    out = tmp_path / "camera.json"
    proc = run_cli("calibrate", "camera", "--source", f"file://{held_video}", "--max-views", "12", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert f"{3 * POSES} frames, board found in {3 * POSES}, {POSES} distinct views, 12 used" in proc.stdout
    data = json.loads(out.read_text())
    assert data["views"] == 12 and len({v["frame"] // 3 for v in data["per_view"]}) == 12  # 12 different poses
    assert CameraModel.load(out).K[0, 0] == pytest.approx(K_TRUE[0, 0], rel=0.02)
    # the output exists now: refused without --force
    assert_one_line_error(run_cli("calibrate", "camera", "--source", str(held_video), "--out", str(out)),
                          "already exists", "--force")


def test_a_warped_view_is_dropped_as_an_outlier(rendered, tmp_path):
    """A view that no lens can produce (the print wobbles by 3 px) stands out by its reprojection error and is
    dropped; the refit without it still recovers the lens."""
    folder = tmp_path / "views"
    shutil.copytree(rendered[0], folder)
    centres = [true_corners(*pose).mean(0) for pose in rendered[2]]
    i = int(np.argmin([np.hypot(*(c - (W / 2, H / 2))) for c in centres]))  # room to move it 12 px
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)  # moved (a new pose for the duplicate check) and wobbled
    wobble = cv2.remap(rendered[3][i], xx + 12 + 3 * np.sin(yy / 9), yy + 3 * np.sin(xx / 13), cv2.INTER_LINEAR)
    cv2.imwrite(str(folder / "warped.png"), wobble)  # sorts last: frame 20
    out = tmp_path / "camera.json"
    proc = run_cli("calibrate", "camera", "--source", str(folder), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert f"{POSES + 1} distinct views, {POSES} used (1 dropped as outliers: frame {POSES} " in proc.stdout
    data = json.loads(out.read_text())
    assert POSES not in [v["frame"] for v in data["per_view"]] and data["rms_px"] < 0.2
    assert data["K"][0][0] == pytest.approx(K_TRUE[0, 0], rel=0.01)


def test_live_source_stops_at_max_views(rendered, tmp_path):
    """A camera never ends: with no --frames / --seconds, calibration starts once --max-views distinct views are in.
    An image folder paced at 50 fps and looped is a live source that never ends either."""
    out = tmp_path / "camera.json"
    proc = run_cli("calibrate", "camera", "--source", f"file://{rendered[0]}?fps=50&loop=1", "--max-views", "12",
                   "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "12 distinct views, 12 used" in proc.stdout and CameraModel.load(out).width == W


def test_camera_bad_inputs_are_one_line(rendered, tmp_path):
    folder = rendered[0]
    out = str(tmp_path / "camera.json")
    assert_one_line_error(run_cli("calibrate", "camera", "--source", str(folder), "--board", "9-6", "--out", out),
                          "--board '9-6' must be COLSxROWS", "9x6")
    assert_one_line_error(run_cli("calibrate", "camera", "--source", str(folder), "--square", "-1", "--out", out),
                          "--square must be a positive number")
    # a board of another size is never found
    assert_one_line_error(run_cli("calibrate", "camera", "--source", "synthetic://bouncing?frames=5&size=64",
                                  "--out", out), "no 9x6 chessboard found in any of the 5 frames")
    # the same view many times over is one view
    dupes = tmp_path / "dupes"
    dupes.mkdir()
    for i in range(12):
        shutil.copy(folder / "view_00.png", dupes / f"copy_{i:02d}.png")
    for i in range(1, 4):
        shutil.copy(folder / f"view_{i:02d}.png", dupes / f"other_{i:02d}.png")
    assert_one_line_error(run_cli("calibrate", "camera", "--source", str(dupes), "--out", out),
                          "only 4 distinct views of the board (found in 15 of 15 frames)", "at least 10")
    assert not Path(out).exists()


# ------------------------------------------------------------------------------------------------ surprise
CALM = "synthetic://bouncing?seed=1&size=64"


@pytest.fixture(scope="module")
def persistence_bundle(video_bundle, tmp_path_factory):
    """The tiny bundle's encoder with a persistence predictor: "the next step looks like the last one".

    The fixture's predictor has random weights, so its error barely reacts to what happens in the scene (a splice
    even lowers it). Persistence is the simplest real world model: its error is how much the scene's tokens changed
    in k frames, small for smooth motion and large for a jump. It is a genuine ONNX graph run by ONNX Runtime.
    """
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    path = tmp_path_factory.mktemp("persist") / "persist.amiedge"
    shutil.copytree(video_bundle.path, path)
    manifest = json.loads((path / "manifest.json").read_text())
    dim = manifest["latent"]["dim"]
    graph = helper.make_graph(
        [helper.make_node("Shape", ["target_ids"], ["target_shape"]),
         helper.make_node("Gather", ["target_shape", "one"], ["targets"], axis=0),
         helper.make_node("Neg", ["targets"], ["start"]),
         helper.make_node("Slice", ["context", "start", "end", "one"], ["prediction"])],  # the last `targets` tokens
        "persistence",
        [helper.make_tensor_value_info("context", TensorProto.FLOAT, ["batch", "context", dim]),
         helper.make_tensor_value_info("context_ids", TensorProto.INT64, ["batch", "context"]),
         helper.make_tensor_value_info("target_ids", TensorProto.INT64, ["batch", "target"])],
        [helper.make_tensor_value_info("prediction", TensorProto.FLOAT, ["batch", "target", dim])],
        initializer=[helper.make_tensor("one", TensorProto.INT64, [1], [1]),
                     helper.make_tensor("end", TensorProto.INT64, [1], [2 ** 62])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path / "predictor.onnx")
    from ami_edge.bundle import sha256_file

    manifest["graphs"]["predictor"]["sha256"] = sha256_file(path / "predictor.onnx")
    manifest["name"] = "tiny-persistence"
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


def _calm_frames(n: int) -> list[np.ndarray]:
    from ami_edge import open_source

    return [f.image for f in open_source(f"{CALM}&frames={n}")]


@pytest.fixture(scope="module")
def surprise_json(persistence_bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("surprise") / "surprise.json"
    proc = run_cli("calibrate", "surprise", "--model", str(persistence_bundle), "--source", CALM, "--frames", "300",
                   "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "288 calm surprise values (300 states, first 10 skipped" in proc.stdout
    return out


def test_calibrate_surprise_writes_the_calm_statistics(persistence_bundle, surprise_json):
    from ami_edge import Runtime, load_bundle
    from ami_edge.surprise_calibration import model_id

    data = json.loads(surprise_json.read_text())
    # The same stream through a plain Runtime, statistics computed here
    with Runtime(persistence_bundle, source=_calm_frames(303)) as rt:  # 300 states from 303 frames (4-frame clips)
        raw = np.array([s.raw_surprise for s in rt.stream() if s.raw_surprise is not None])[10:]
    median = np.median(raw)
    assert data["samples"] == raw.size == 288 and data["frames"] == 300
    assert data["baseline"]["center"] == pytest.approx(median, rel=1e-6)
    assert data["baseline"]["scale"] == pytest.approx(1.4826 * np.median(np.abs(raw - median)), rel=1e-6)
    assert data["baseline"]["percentiles"]["p99"] == pytest.approx(np.percentile(raw, 99), rel=1e-6)
    z = (raw - median) / data["baseline"]["scale"]
    assert data["threshold"]["z"] == pytest.approx(max(4.0, np.quantile(z, 0.999)), rel=1e-6)
    assert data["threshold"]["calm_event_rate"] == pytest.approx(np.mean(z > data["threshold"]["z"]))
    assert data["model"] == {"name": "tiny-persistence", "id": model_id(load_bundle(persistence_bundle))}
    assert data["schema_version"] == 1 and data["source"] == CALM


def test_model_id_covers_the_surprise_reduction(persistence_bundle, tmp_path):
    """Existing calibrations of mean-surprise bundles stay valid (their id is unchanged); a bundle whose surprise is
    reduced differently gets another id, so a calibration of the other reduction is refused."""
    import hashlib
    from dataclasses import asdict

    from ami_edge import load_bundle
    from ami_edge.surprise_calibration import model_id

    m = load_bundle(persistence_bundle).manifest
    assert m.latent.surprise == "mean"
    latent = {"tokens": m.latent.tokens, "dim": m.latent.dim, "grid": list(m.latent.grid)}  # as schema 1 had it
    graphs = {g: [d for _, _, d in m.graphs[g].files()] for g in ("encoder", "predictor") if g in m.graphs}
    before = json.dumps({"input": asdict(m.input), "latent": latent, "graphs": graphs}, sort_keys=True)
    assert model_id(load_bundle(persistence_bundle)) == hashlib.sha256(before.encode()).hexdigest()
    other = tmp_path / "topk.amiedge"
    shutil.copytree(persistence_bundle, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["latent"]["surprise"] = "top2"
    (other / "manifest.json").write_text(json.dumps(manifest))
    assert model_id(load_bundle(other)) != model_id(load_bundle(persistence_bundle))
    manifest["latent"]["stall"] = {"offset": 1.0, "weight": 2.0}  # a stall term changes raw surprise, hence the id
    (other / "manifest.json").write_text(json.dumps(manifest))
    with_stall = model_id(load_bundle(other))
    manifest["latent"]["stall"]["weight"] = 2.5
    (other / "manifest.json").write_text(json.dumps(manifest))
    assert len({with_stall, model_id(load_bundle(other)), model_id(load_bundle(persistence_bundle))}) == 3


def test_calibrated_runtime_is_calm_then_flags_a_jump(persistence_bundle, surprise_json):
    from ami_edge import Runtime

    cal = json.loads(surprise_json.read_text())
    center, scale, threshold = cal["baseline"]["center"], cal["baseline"]["scale"], cal["threshold"]["z"]
    frames = _calm_frames(160)
    # Uncalibrated: the running baseline needs 20 surprise values before its first z-score.
    with Runtime(persistence_bundle, source=frames[:40]) as rt:
        assert sum(s.surprise is not None for s in rt.stream()) == 37 - 2 - 20
    # Calibrated, the same calm stream: a z-score from the first surprise value on, centred near 0, no event.
    with Runtime(persistence_bundle, source=frames, surprise_calibration=surprise_json) as rt:
        calm = [s for s in rt.stream() if s.raw_surprise is not None]
    zs = np.array([s.surprise for s in calm])
    assert len(calm) == 160 - 3 - 2 and abs(np.median(zs)) < 0.5 and not any(s.event for s in calm)
    for s in calm:
        assert s.surprise == pytest.approx((s.raw_surprise - center) / scale) and s.event == (s.surprise > threshold)
    # An explicit threshold wins over the calibrated one; the calibrated centre and scale stay.
    with Runtime(persistence_bundle, source=frames[:40], surprise_calibration=surprise_json, threshold=0.5) as rt:
        low = [s for s in rt.stream() if s.surprise is not None]
    assert any(s.event for s in low) and all(s.event == (s.surprise > 0.5) for s in low)
    assert low[0].surprise == pytest.approx((low[0].raw_surprise - center) / scale)
    # The camera jumps sideways at frame 100 (the same scene, spliced 20 px over): events there, and only there.
    jumped = frames[:100] + [np.roll(f, 20, axis=1) for f in frames[100:160]]
    with Runtime(persistence_bundle, source=jumped, surprise_calibration=surprise_json) as rt:
        states = list(rt.stream())
    flagged = [s.seq for s in states if s.event]
    assert flagged and min(flagged) >= 100 and max(flagged) < 100 + 4  # within a clip of the jump
    assert max(s.surprise for s in states if s.seq in flagged) > 2 * threshold


def test_serve_loads_the_calibration_and_refuses_another_models(persistence_bundle, video_bundle, surprise_json,
                                                                tmp_path):
    config = tmp_path / "serve.toml"
    config.write_text(f'model = "{persistence_bundle}"\nsource = "{CALM}"\nmax_frames = 30\n'
                      f'surprise_calibration = "{surprise_json}"\n')
    proc = run_cli("serve", "--config", str(config))
    assert proc.returncode == 0, proc.stderr
    assert f"surprise baseline from {surprise_json} (model tiny-persistence, 288 calm samples" in proc.stderr
    assert_one_line_error(run_cli("serve", "--model", str(video_bundle.path), "--source", CALM, "--max-frames", "5",
                                  "--surprise-calibration", str(surprise_json)),
                          "was calibrated for model 'tiny-persistence'", "not 'tiny'", "calibrate surprise --model")


def _edited(source: Path, tmp_path: Path, edit) -> Path:
    data = json.loads(source.read_text())
    edit(data)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("edit, fragment", [
    (lambda d: d["baseline"].update(scale=-1.0), "'baseline.scale' must be a number > 0"),
    (lambda d: d["baseline"].pop("center"), "missing field 'baseline.center'"),
    (lambda d: d["threshold"].update(z="4"), "'threshold.z' must be a number"),
    (lambda d: d["threshold"].update(z=True), "'threshold.z' must be a number"),
    (lambda d: d.update(extra=1), "unknown field(s) extra"),
    (lambda d: d.update(schema_version=2), "newer than this ami-edge reads"),
    (lambda d: d.update(schema="something-else"), "is not a surprise calibration"),
    (lambda d: d["model"].update(id="abc"), "'model.id' must be 64 lowercase hex digits"),
    (lambda d: d["baseline"]["percentiles"].update(p99=1e9), "must not decrease"),
])
def test_malformed_calibration_is_refused(persistence_bundle, surprise_json, tmp_path, edit, fragment):
    from ami_edge import ConfigError, Runtime

    with pytest.raises(ConfigError, match=re.escape(fragment)):
        Runtime(persistence_bundle, source=[], surprise_calibration=_edited(surprise_json, tmp_path, edit))


def test_calibration_file_errors_are_one_line(persistence_bundle, surprise_json, tmp_path):
    bad = tmp_path / "nan.json"
    bad.write_text(surprise_json.read_text().replace('"center": ', '"center": NaN, "was": '))
    assert_one_line_error(run_cli("serve", "--model", str(persistence_bundle), "--source", CALM,
                                  "--surprise-calibration", str(bad)), "is not valid JSON", "NaN")
    assert_one_line_error(run_cli("serve", "--model", str(persistence_bundle), "--source", CALM,
                                  "--surprise-calibration", str(tmp_path / "missing.json")),
                          "cannot read surprise calibration")
    out = str(tmp_path / "s.json")
    assert_one_line_error(run_cli("calibrate", "surprise", "--model", str(persistence_bundle), "--source", CALM,
                                  "--frames", "40", "--out", out),
                          "only 28 surprise values after the warm-up of 10 (40 states", "record longer")
    assert_one_line_error(run_cli("calibrate", "surprise", "--model", str(persistence_bundle), "--source",
                                  f"{CALM}&fps=30", "--out", out), "is live and never ends", "--seconds")
    assert_one_line_error(run_cli("calibrate", "surprise", "--model", str(persistence_bundle), "--source", CALM,
                                  "--frames", "60", "--out", str(surprise_json)), "already exists", "--force")
    assert not Path(out).exists()
