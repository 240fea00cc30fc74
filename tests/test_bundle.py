"""Bundle verification: a damaged or foreign bundle is refused with a message naming the file and field."""

from __future__ import annotations

import json
import shutil

import pytest

from ami_edge import BundleError, BundleNotFoundError, load_bundle
from ami_edge.bundle import SCHEMA_VERSION

from .conftest import assert_one_line_error, run_cli


@pytest.fixture(scope="session")
def clean_bundle(tmp_path_factory):
    from ami_edge.export.loaders import load_preset
    from ami_edge.export.onnx_export import export_bundle

    out = tmp_path_factory.mktemp("clean") / "ij.amiedge"
    return export_bundle(load_preset("tiny-ijepa"), out, graphs=["encoder"]).path


@pytest.fixture
def bundle(tmp_path, clean_bundle):
    dst = tmp_path / clean_bundle.name
    shutil.copytree(clean_bundle, dst)
    return dst


def _edit(bundle, fn):
    path = bundle / "manifest.json"
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def test_loads_and_exposes_graphs(bundle):
    b = load_bundle(bundle)
    assert b.path == bundle and b.manifest.name == "ij" and b.manifest.schema_version == SCHEMA_VERSION
    assert b.graph_path("encoder") == bundle / "encoder.onnx" and b.has("encoder") and not b.has("predictor")
    with pytest.raises(BundleError, match="no 'predictor' graph"):
        b.graph_path("predictor")
    assert load_bundle(str(bundle)[: -len(".amiedge")]).path == bundle  # suffix optional


def test_corrupted_graph_fails_checksum(bundle):
    graph = bundle / "encoder.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"encoder.onnx: sha256 does not match graphs.encoder.sha256"):
        load_bundle(bundle)
    assert load_bundle(bundle, verify=False).manifest.name == "ij"


def test_missing_graph_file(bundle):
    (bundle / "encoder.onnx").unlink()
    with pytest.raises(BundleError, match=r"graphs.encoder.file 'encoder.onnx' is missing"):
        load_bundle(bundle)


def test_future_schema_is_refused(bundle):
    _edit(bundle, lambda d: d.update(schema_version=SCHEMA_VERSION + 1))
    with pytest.raises(BundleError, match="newer than this ami-edge reads"):
        load_bundle(bundle)


@pytest.mark.parametrize("edit, fragment", [
    (lambda d: d["latent"].pop("dim"), "missing field 'latent.dim'"),
    (lambda d: d["input"].update(frames="4"), "field 'input.frames' must be int"),
    (lambda d: d["input"].update(layout="NHWC"), "field 'input.layout'='NHWC' is not one of"),
    (lambda d: d["graphs"]["encoder"].update(precision="fp8"), "graphs.encoder.precision"),
    (lambda d: d["graphs"]["encoder"].update(file="../../etc/passwd"), "must be a plain file name"),
    (lambda d: d["graphs"].update(decoder=d["graphs"]["encoder"]), "unknown graphs ['decoder']"),
    (lambda d: d["input"].update(std=[0.2, 0.0, 0.2]), "input.std"),
    (lambda d: d["latent"].update(tokens=7), "latent.tokens"),
    (lambda d: d.update(schema_version=True), "field 'schema_version' must be int"),
    (lambda d: d["latent"].update(surprise="median"), "field 'latent.surprise': 'median' is not a surprise reduction"),
    (lambda d: d["latent"].update(surprise="top0"), "use 'mean' or 'topK' with 1 <= K <= 16"),
    (lambda d: d["latent"].update(surprise="top17"), "use 'mean' or 'topK' with 1 <= K <= 16"),
    (lambda d: d["latent"].update(surprise=4), "field 'latent.surprise' must be str"),
    (lambda d: d["latent"].update(stall={"offset": 1.0}), "missing field 'latent.stall.weight'"),
    (lambda d: d["latent"].update(stall={"offset": 0, "weight": 1.0}), "'latent.stall.offset' must be a finite "
                                                                         "number > 0"),
    (lambda d: d["latent"].update(stall={"offset": 1.0, "weight": -2}), "'latent.stall.weight' must be a finite"),
    (lambda d: d["latent"].update(stall={"offset": 1.0, "weight": "2"}), "'latent.stall.weight' must be int/float"),
    (lambda d: d["latent"].update(stall=[1.0, 2.0]), "field 'latent.stall' must be dict"),
])
def test_malformed_manifest_names_the_field(bundle, edit, fragment):
    _edit(bundle, edit)
    with pytest.raises(BundleError, match=fragment.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        load_bundle(bundle)


def test_schema_1_bundles_still_load_with_mean_surprise(bundle):
    """Bundles written before `latent.surprise` existed reduced surprise by the mean over tokens; they still do."""
    assert load_bundle(bundle).manifest.latent.surprise == "mean"  # what the exporter writes by default

    def as_schema_1(d):
        d["schema_version"] = 1
        del d["latent"]["surprise"]

    _edit(bundle, as_schema_1)
    m = load_bundle(bundle).manifest
    assert m.schema_version == 1 and m.latent.surprise == "mean"
    _edit(bundle, lambda d: d["latent"].update(surprise="top4"))
    assert load_bundle(bundle).manifest.latent.surprise == "top4"


def test_not_json_and_not_a_bundle(bundle, tmp_path):
    (bundle / "manifest.json").write_text("{ not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(bundle)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="manifest.json is missing"):
        load_bundle(tmp_path / "empty")
    with pytest.raises(BundleNotFoundError, match="not found"):
        load_bundle(tmp_path / "nowhere.amiedge")


def test_cli_info(bundle):
    proc = run_cli("info", str(bundle))
    assert proc.returncode == 0 and "encoder.onnx fp32 opset 18" in proc.stdout, proc.stderr
    _edit(bundle, lambda d: d.update(schema_version=99))
    assert_one_line_error(run_cli("info", str(bundle)), "schema 99", "upgrade ami-edge")


def test_external_data_graph_is_verified(tmp_path):
    """Graphs over 2 GB (fp32 ViT-H / ViT-g) keep weights in one data file; it is checksummed like the graph."""
    import numpy as np
    import onnxruntime as ort

    from ami_edge.export.loaders import load_preset
    from ami_edge.export.onnx_export import export_bundle

    b = export_bundle(load_preset("tiny-ijepa"), tmp_path / "ext", graphs=["encoder"], external_data_above=0)
    spec = b.manifest.graphs["encoder"]
    assert spec.data_file == "encoder.onnx.data" and len(spec.data_sha256) == 64
    assert b.manifest.parity["graphs"]["encoder"]["passed"]
    session = ort.InferenceSession(str(b.graph_path("encoder")), providers=["CPUExecutionProvider"])
    assert np.isfinite(session.run(None, {"pixels": np.zeros((1, 3, 64, 64), np.float32)})[0]).all()
    data = b.path / spec.data_file
    blob = bytearray(data.read_bytes())
    blob[0] ^= 1
    data.write_bytes(bytes(blob))
    with pytest.raises(BundleError, match="graphs.encoder.data_sha256"):
        load_bundle(b.path)
    data.unlink()
    with pytest.raises(BundleError, match="graphs.encoder.data_file 'encoder.onnx.data' is missing"):
        load_bundle(b.path)


@pytest.mark.parametrize("edit, fragment", [
    (lambda d: d["input"].update(std=[0.2, float("nan"), 0.2]), "NaN is not a valid manifest value"),
    (lambda d: d["input"].update(mean=[True, True, True]), "finite numbers"),
    (lambda d: d["input"].update(frames=0), "'input.frames' must be a positive integer"),
    (lambda d: d["input"].update(layout="BCTHW"), "do not fit together"),
    (lambda d: d["latent"].update(dim=-1), "'latent.dim' must be a positive integer"),
    (lambda d: d["graphs"]["encoder"].update(opset=-3), "'graphs.encoder.opset' must be a positive integer"),
    (lambda d: d["graphs"]["encoder"].update(sha256="abc"), "64 lowercase hex digits"),
    (lambda d: d["graphs"]["encoder"].update(data_file="encoder.onnx", data_sha256="0" * 64), "must differ"),
    (lambda d: d["parity"].update(graphs=["encoder"]), "'parity.graphs' must map graph names"),
    (lambda d: d.update(name="evil\x1b[2J"), "'name' must be printable"),
])
def test_inconsistent_manifest_values(bundle, edit, fragment):
    path = bundle / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))  # json.dumps writes NaN as the bare literal that json.loads accepts
    with pytest.raises(BundleError, match=fragment.replace("[", r"\[").replace(".", r"\.")):
        load_bundle(bundle)


def test_deeply_nested_manifest_and_escaping_links(bundle, tmp_path):
    (bundle / "manifest.json").write_text("[" * 100_000)
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(bundle)


def test_graph_symlink_outside_the_bundle(bundle, tmp_path):
    outside = tmp_path / "elsewhere.onnx"
    shutil.move(bundle / "encoder.onnx", outside)
    (bundle / "encoder.onnx").symlink_to(outside)
    with pytest.raises(BundleError, match="links outside the bundle"):
        load_bundle(bundle)


def test_tilde_user_that_does_not_exist():
    with pytest.raises(BundleNotFoundError):
        load_bundle("~no_such_user_here/x.amiedge")
