"""INT8 / FP16 quantization: calibration frames, QDQ graphs, the accuracy report and gate, and `compare`.

Everything runs as a user would: `ami-edge calibrate collect`, `ami-edge quantize` and `ami-edge compare` in fresh
processes, on a tiny real bundle, with real ONNX Runtime sessions.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest

from ami_edge import BundleError, load_bundle

from .conftest import assert_one_line_error, run_cli

onnx = pytest.importorskip("onnx")

FAST = ["--eval-frames", "24", "--max-clips", "16"]  # CI-sized report and calibration


@pytest.fixture(scope="session")
def calib(tmp_path_factory):
    path = tmp_path_factory.mktemp("calib") / "calib.npz"
    proc = run_cli("calibrate", "collect", "--source", "synthetic://bouncing?seed=5&size=96", "--frames", "48",
                   "--window", "8", "--stride", "12", "--out", str(path))
    assert proc.returncode == 0, proc.stderr
    return path


@pytest.fixture(scope="session")
def full_bundle(tmp_path_factory):
    """The tiny preset with all three graphs (encoder, predictor, ac_predictor)."""
    from ami_edge.export.loaders import load_preset
    from ami_edge.export.onnx_export import export_bundle

    return export_bundle(load_preset("tiny", seed=3), tmp_path_factory.mktemp("full") / "tiny")


@pytest.fixture(scope="session")
def int8_bundle(tmp_path_factory, full_bundle, calib):
    out = tmp_path_factory.mktemp("q") / "tiny-int8.amiedge"
    cwd = tmp_path_factory.mktemp("cwd")
    proc = run_cli("quantize", str(full_bundle.path), "--out", str(out), "--calib", str(calib),
                   "--voe-pairs", "1", *FAST, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    # ONNX Runtime's shape inference dumps files into the working directory when it gives up (it does on the
    # ac_predictor); quantize keeps them in its scratch directory
    assert list(cwd.iterdir()) == []
    return load_bundle(out)


def _graph(bundle, name):
    return onnx.load(str(bundle.graph_path(name))).graph


def test_collect_keeps_consecutive_windows_with_stride(calib):
    with np.load(calib, allow_pickle=False) as npz:
        frames, seq = npz["frames"], npz["seq"]
        assert int(npz["window"]) == 8 and int(npz["stride"]) == 12 and str(npz["source"]).startswith("synthetic")
    assert frames.shape == (6, 8, 96, 96, 3) and frames.dtype == np.uint8
    assert (np.diff(seq, axis=1) == 1).all()  # consecutive frames inside a window: clips for a video encoder
    assert (np.diff(seq[:, 0]) >= 12).all()  # window starts at least --stride apart
    assert len({frames[i, -1].tobytes() for i in range(len(frames))}) == len(frames)


def test_collect_drops_near_duplicate_windows(tmp_path):
    """A camera staring at a still scene: only one window of it is kept; the moving part all is."""
    folder = tmp_path / "frames"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(24):
        image = np.full((48, 64, 3), 90, np.uint8) if i < 16 else rng.integers(0, 255, (48, 64, 3), np.uint8)
        cv2.imwrite(str(folder / f"{i:03d}.png"), image)
    out = tmp_path / "c.npz"
    proc = run_cli("calibrate", "collect", "--source", str(folder), "--frames", "100", "--window", "4",
                   "--stride", "4", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "3 near-duplicate windows dropped" in proc.stderr and "only 12 of 100 frames" in proc.stderr
    with np.load(out, allow_pickle=False) as npz:
        assert npz["seq"][:, 0].tolist() == [0, 16, 20] and int(npz["rejected"]) == 3


@pytest.fixture(scope="session")
def sincos_bundle(tmp_path_factory):
    """V-JEPA 1 style: a fixed sincos position table, so the predictor is asked for a step inside one clip."""
    from ami_edge.export.loaders import load_preset
    from ami_edge.export.onnx_export import export_bundle

    return export_bundle(load_preset("tiny-vjepa", seed=3), tmp_path_factory.mktemp("sincos") / "tiny-vjepa",
                         graphs=["encoder", "predictor"])


@pytest.mark.parametrize("which", ["video_bundle", "sincos_bundle"])
def test_reader_feeds_what_the_runtime_feeds(which, request, calib):
    """Calibration inputs are preprocessed exactly like the runtime's frames, and the predictor gets the FP32
    encoder's tokens in the runtime's query: RoPE predictors the whole clip and the step after it, sincos-table
    ones the clip's last steps and the last position of their table."""
    from ami_edge import Runtime
    from ami_edge.calibration.reader import FeedReader, GraphFeeds, load_calibration
    from ami_edge.runners import make_runner

    bundle = request.getfixturevalue(which)
    data = load_calibration(calib)
    feeds = GraphFeeds.build(bundle, data.frames[:2]).feeds
    assert len(feeds["encoder"]) == 2 * 3  # windows of 8, clips of 4 every tubelet (2) frames
    with Runtime(model=bundle, source=[], backend="onnxruntime:cpu") as rt:
        tokens = rt.encode(list(data.frames[0, 2:6]))  # the second clip of the first window
        expected = rt.predict(tokens)
    skip = 0 if which == "video_bundle" else expected.shape[0]  # sincos: the first step is not context
    feed = feeds["predictor"][1]
    np.testing.assert_allclose(feed["context"][0], tokens[skip:], rtol=1e-5, atol=1e-5)
    with make_runner("onnxruntime:cpu", bundle.graph_path("predictor")) as runner:
        np.testing.assert_allclose(runner.infer(feed)["prediction"][0], expected, rtol=1e-4, atol=1e-5)
    reader = FeedReader(feeds["predictor"])
    first = reader.get_next()
    assert set(first) == {"context", "context_ids", "target_ids"} and reader.get_next() is feed
    reader.rewind()
    assert reader.get_next() is first and len(reader) == 6


def test_int8_of_a_sincos_video_bundle(tmp_path, sincos_bundle, calib):
    """An official V-JEPA (1) bundle quantizes: its predictor is calibrated with ids inside its position table."""
    out = tmp_path / "vjepa-int8.amiedge"
    proc = run_cli("quantize", str(sincos_bundle.path), "--out", str(out), "--calib", str(calib), "--voe-pairs", "0",
                   *FAST)
    assert proc.returncode == 0, proc.stderr
    q = load_bundle(out).manifest.quantization
    assert q.report["prediction_cosine_mean"] >= 0.99 and q.report["latent_cosine_mean"] >= 0.99


def test_int8_bundle_is_qdq_on_weight_gemms_only(int8_bundle):
    m = int8_bundle.manifest
    assert {g.precision for g in m.graphs.values()} == {"int8"} and m.quantization.format == "QDQ"
    assert set(m.graphs) == {"encoder", "predictor", "ac_predictor"}
    for name in ("encoder", "predictor", "ac_predictor"):
        graph = _graph(int8_bundle, name)
        ops = [n.op_type for n in graph.node]
        assert ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") > 0
        assert "QLinearSoftmax" not in ops and "Softmax" in ops
        producer = {o: n for n in graph.node for o in n.output}
        consumers = {i: n for n in graph.node for i in n.input}
        for node in graph.node:
            if node.op_type == "Softmax":  # stays float on both sides
                assert producer[node.input[0]].op_type != "DequantizeLinear"
                assert consumers[node.output[0]].op_type != "QuantizeLinear"
        # every MatMul fed a weight reads it through DequantizeLinear (an int8 initializer), the rest stay float
        inits = {i.name: i for i in graph.initializer}
        weights = [producer[n.input[1]] for n in graph.node if n.op_type == "MatMul" and n.input[1] in producer
                   and producer[n.input[1]].op_type == "DequantizeLinear"]
        assert len(weights) == m.quantization.settings["graphs"][name]["quantized_nodes"]
        assert all(inits[w.input[0]].data_type == onnx.TensorProto.INT8 for w in weights)
        # the patch-embedding Conv stays float (ONNX Runtime has no integer Conv with a float output)
        convs = [n for n in graph.node if n.op_type == "Conv"]
        assert all(producer.get(i) is None or producer[i].op_type != "DequantizeLinear" for n in convs for i in n.input)
        # float readers (Shape, Conv, LayerNorm ...) take the float tensor, not a Q -> DQ copy of it
        quantized = {n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] in producer
                     and producer[n.input[1]].op_type == "DequantizeLinear"}
        for node in graph.node:
            if node.op_type not in ("QuantizeLinear", "DequantizeLinear") and node.name not in quantized:
                assert not any(producer.get(i) is not None and producer[i].op_type == "DequantizeLinear"
                               for i in node.input), node.name


def test_onnx_runtime_runs_every_quantized_gemm_in_int8(int8_bundle, tmp_path):
    """ONNX Runtime's CPU graph optimizer turns each DQ -> MatMul of the saved graph into MatMulIntegerToFloat; a
    DequantizeLinear left standing would mean a float GEMM fed weights dequantized on every call."""
    import onnxruntime as ort

    settings = int8_bundle.manifest.quantization.settings["graphs"]
    for name in ("encoder", "predictor", "ac_predictor"):
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(tmp_path / f"{name}.opt.onnx")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED  # no CPU-layout ops
        ort.InferenceSession(str(int8_bundle.graph_path(name)), sess_options=options,
                             providers=["CPUExecutionProvider"])
        ops = [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
        assert ops.count("MatMulIntegerToFloat") == settings[name]["quantized_nodes"], name
        assert "DequantizeLinear" not in ops, name


def test_int8_report_is_sane(int8_bundle, full_bundle):
    q = int8_bundle.manifest.quantization
    r = q.report
    assert q.method == "minmax" and q.per_channel and q.calibration["clips"] == 16
    assert 0.99 < r["latent_cosine_mean"] <= 1.0 and r["latent_cosine_min"] <= r["latent_cosine_mean"]
    assert r["latent_cosine_mean"] < 1.0 - 1e-9 and r["latent_max_abs"] > 0  # really quantized, not a copy
    assert 0.9 < r["surprise_correlation"] <= 1.0 and 0.9 < r["prediction_cosine_mean"] <= 1.0
    assert r["voe_auc_delta"] == pytest.approx(r["voe_auc"] - r["voe_auc_fp32"])
    assert r["eval_source"] != q.calibration["source"] and r["eval_frames"] == 24
    assert q.reference["graphs"]["encoder"] == full_bundle.manifest.graphs["encoder"].sha256
    assert "int8" in run_cli("info", str(int8_bundle.path)).stdout


def test_fp16_bundle_keeps_float32_io(tmp_path, video_bundle):
    out = tmp_path / "fp16.amiedge"
    proc = run_cli("quantize", str(video_bundle.path), "--out", str(out), "--precision", "fp16",
                   "--voe-pairs", "0", *FAST)
    assert proc.returncode == 0, proc.stderr
    b = load_bundle(out)
    assert b.manifest.quantization.calibration is None and b.manifest.quantization.report["voe_auc_delta"] is None
    graph = _graph(b, "encoder")
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in graph.initializer)
    assert 0.999 < b.manifest.quantization.report["latent_cosine_mean"] <= 1.0


def test_gate_refuses_and_leaves_nothing(tmp_path, video_bundle):
    """Calibration straight from a source, entropy ranges, and a cosine no INT8 model reaches: refused."""
    out = tmp_path / "strict.amiedge"
    proc = run_cli("quantize", str(video_bundle.path), "--out", str(out), "--source",
                   "synthetic://bouncing?seed=8&size=64", "--calib-frames", "16", "--method", "entropy",
                   "--voe-pairs", "0", "--min-cosine", "0.999999", *FAST)
    assert_one_line_error(proc, "accuracy gate", "< --min-cosine 0.999999")
    assert "QDQ int8 (entropy)" in proc.stderr and "latent cosine mean 0.99" in proc.stderr  # report, then refusal
    assert not out.exists() and not list(tmp_path.glob("*.partial"))


def test_report_frames_must_be_held_out(tmp_path, video_bundle):
    src = "synthetic://bouncing?seed=8&size=64"
    proc = run_cli("quantize", str(video_bundle.path), "--out", str(tmp_path / "x"), "--source", src,
                   "--eval-source", src)
    assert_one_line_error(proc, "held-out frames")


@pytest.mark.parametrize("content, fragment", [
    (b"not a zip file at all", "cannot be read as a calibration .npz"),
    ("pickled", "cannot be read as a calibration .npz"),
    ("short", "re-collect with `ami-edge calibrate collect --window 4`"),
    ("nokeys", "is not a calibration file"),
])
def test_bad_calibration_file_is_one_line(tmp_path, video_bundle, content, fragment):
    path = tmp_path / "calib.npz"
    if content == "pickled":  # an object array needs pickle to load: refused, never unpickled
        np.savez(path, frames=np.array([{"x": 1}], dtype=object), seq=np.zeros(1), source="s", window=1, version=1)
    elif content == "short":
        np.savez(path, frames=np.zeros((2, 2, 8, 8, 3), np.uint8), seq=np.zeros((2, 2), np.int64), source="s",
                 window=2, version=1)
    elif content == "nokeys":
        np.savez(path, something=np.zeros(3))
    else:
        path.write_bytes(content)
    out = tmp_path / "x.amiedge"
    proc = run_cli("quantize", str(video_bundle.path), "--out", str(out), "--calib", str(path))
    assert_one_line_error(proc, fragment)
    assert not out.exists()


def test_compare_two_bundles(int8_bundle, full_bundle):
    src = "synthetic://bouncing?seed=21&size=64"
    proc = run_cli("compare", str(full_bundle.path), str(int8_bundle.path), "--source", src, "--frames", "16",
                   "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    latent = report["outputs"]["latent"]
    assert report["passed"] and report["frames"] == 16 and latent["elements"] == 13 * 32 * 96
    assert 0 < latent["max_abs"] and 0.99 < latent["cosine_min"] <= latent["cosine"] <= 1.0
    assert report["outputs"]["surprise"]["elements"] == 11  # states from the (k + 1)-th on carry a surprise
    table = run_cli("compare", str(full_bundle.path), str(int8_bundle.path), "--source", src, "--frames", "16")
    assert table.returncode == 0 and "prediction" in table.stdout and "PASSED" in table.stdout, table.stderr
    # the same bundle on two backends names of the same CPU provider: bit-identical
    same = run_cli("compare", str(full_bundle.path), "--backend-a", "onnxruntime:cpu", "--source", src,
                   "--frames", "8", "--json")
    assert json.loads(same.stdout)["outputs"]["latent"]["max_abs"] == 0.0, same.stderr
    failed = run_cli("compare", str(full_bundle.path), str(int8_bundle.path), "--source", src, "--frames", "8",
                     "--atol", "1e-9")
    assert_one_line_error(failed, "latent max abs", "> --atol 1e-09")
    assert "FAILED" in failed.stdout


@pytest.mark.parametrize("edit, fragment", [
    (lambda q: q.update(precision="fp16"), "graphs ['ac_predictor', 'encoder', 'predictor'] are not fp16"),
    (lambda q: q.update(method="kmeans"), "'quantization.method'='kmeans' is not one of"),
    (lambda q: q["report"].update(latent_cosine_mean=1.5), "latent_cosine_mean'=1.5 is not in [-1, 1]"),
    (lambda q: q["report"].pop("latent_max_abs"), "missing field 'quantization.report.latent_max_abs'"),
    (lambda q: q["calibration"].update(clips=0), "'quantization.calibration.clips' must be a positive"),
    (lambda q: q.update(per_channel="yes"), "'quantization.per_channel' must be bool"),
])
def test_quantization_section_is_validated(tmp_path, int8_bundle, edit, fragment):
    dst = tmp_path / "b.amiedge"
    shutil.copytree(int8_bundle.path, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    edit(manifest["quantization"])
    (dst / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=fragment.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        load_bundle(dst)


def test_int8_graphs_without_the_section_are_refused(tmp_path, int8_bundle):
    dst = tmp_path / "b.amiedge"
    shutil.copytree(int8_bundle.path, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    del manifest["quantization"]
    (dst / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="field 'quantization' is missing"):
        load_bundle(dst)


def test_runtime_side_needs_no_onnx(tmp_path, int8_bundle):
    """collect and compare run on a device without onnx / torch; quantize names the extra it needs."""
    out = tmp_path / "c.npz"
    code = textwrap.dedent(f"""
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {{"torch", "onnx", "onnxscript"}}:
                    raise ImportError(f"No module named {{name!r}}", name=name)
        sys.meta_path.insert(0, Block())
        from ami_edge.cli import main
        assert main(["calibrate", "collect", "--source", "synthetic://bouncing?size=32", "--frames", "8",
                     "--out", {str(out)!r}]) == 0
        import ami_edge.calibration.reader
        assert main(["compare", {str(int8_bundle.path)!r}, "--backend-a", "onnxruntime:cpu", "--frames", "6"]) == 0
        sys.exit(main(["quantize", {str(int8_bundle.path)!r}, "--out", {str(tmp_path / 'x')!r}]))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert_one_line_error(proc, "needs onnx", "pip install 'ami-edge[export]'")
    assert out.is_file() and "PASSED" in proc.stdout
