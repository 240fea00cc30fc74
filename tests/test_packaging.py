"""Packaging facts a fresh install depends on, checked from the files themselves."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Runtime requirements the Jetson image takes from JetPack / a Jetson wheel instead of PyPI, and why.
FROM_JETSON_BASE = {
    "onnxruntime": "onnxruntime-gpu",  # PyPI's aarch64 wheel is CPU-only
    "opencv-python-headless": "nvidia-opencv",  # pip's OpenCV has no GStreamer (CSI cameras)
    "numpy": "python3-numpy",
}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower()


def test_jetson_image_installs_every_runtime_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    docker = (ROOT / "Dockerfile.jetson").read_text()
    for requirement in project["dependencies"]:
        name = _name(requirement)
        assert f'"{name}' in docker or FROM_JETSON_BASE.get(name, "\0") in docker, (
            f"Dockerfile.jetson does not install runtime dependency {name}")
    assert not re.search(r"pip3? install[^\n]*opencv", docker), "pip OpenCV over JetPack's breaks CSI cameras"
    assert "torch" not in " ".join(project["dependencies"])


def test_package_dir_covers_every_package():
    """Every folder with an __init__.py under the mapped roots is listed, so a wheel install is complete."""
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping, listed = tool["package-dir"], set(tool["packages"])
    found = set()
    for package, folder in mapping.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([package, *rel.parts]))
    assert found <= listed, f"packages missing from pyproject: {sorted(found - listed)}"


def test_deploy_example_config_is_valid():
    """The serve.toml shipped beside the systemd unit parses and validates as ServeConfig."""
    from ami_edge.config import ServeConfig

    cfg = ServeConfig.load(ROOT / "deploy" / "serve.toml")
    assert cfg.source == "auto" and cfg.publish == ["zmq://0.0.0.0:5556"] and cfg.http == "127.0.0.1:8080"
    unit = (ROOT / "deploy" / "ami-edge.service").read_text()
    assert "ExecStart=/usr/local/bin/ami-edge serve --config /etc/ami-edge/serve.toml" in unit
    assert "SupplementaryGroups=video dialout" in unit and "KillSignal=SIGTERM" in unit


def test_wheel_ships_the_default_bundle(tmp_path):
    """A plain (non-editable) install gets the default bundle, within the 5 MB package-data budget."""
    import json
    import subprocess
    import sys
    import zipfile

    import shutil

    src = tmp_path / "src"  # a copy: setuptools builds in ./build, which must not touch the checkout
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", "build", ".git", "__pycache__", "*.egg-info",
                                                              ".pytest_cache", ".hypothesis"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (wheel,) = (tmp_path / "dist").glob("ami_edge-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        infos = {i.filename: i for i in zf.infolist()}
        shipped = {name: i.file_size for name, i in infos.items() if name.startswith("ami_edge/bundles/")}
        manifest = json.loads(zf.read("ami_edge/bundles/default.amiedge/manifest.json"))
        fp32 = json.loads(zf.read("ami_edge/bundles/default-fp32.amiedge/manifest.json"))
    for name, m in (("default", manifest), ("default-fp32", fp32)):
        for graph in m["graphs"].values():
            assert f"ami_edge/bundles/{name}.amiedge/{graph['file']}" in shipped
    assert sum(shipped.values()) <= 5_000_000, f"shipped bundles take {sum(shipped.values())} bytes"
    assert "ami_edge/firmware_bridge/c/ami_bridge.h" in infos


def test_default_bundle_records_its_recipe_and_metrics():
    """The manifest says how the default was made (recipe, seed) and how good it is (VoE, collapse guard)."""
    from ami_edge import load_bundle
    from ami_edge.world import VIOLATIONS

    training = load_bundle("default").manifest.training
    recipe = training["recipe"]
    assert isinstance(recipe["seed"], int) and recipe["steps"] == training["steps"] > 0
    assert set(training["voe"]) == {*VIOLATIONS, "splice"}
    assert all(0 <= row["auc"] <= 1 and row["pairs"] > 0 for row in training["voe"].values())
    assert training["token_rank_frac"] >= 0.25  # the collapse guard of the demo issue


def test_default_is_the_gated_int8_copy_of_default_fp32():
    """`default` is INT8 QDQ made from exactly the shipped `default-fp32` graphs, and passed the issue's gate:
    latent cosine >= 0.999 and VoE-AUC within 0.01 of FP32, as measured when it was made."""
    from ami_edge import load_bundle

    int8, fp32 = load_bundle("default"), load_bundle("default-fp32")
    assert {g.precision for g in int8.manifest.graphs.values()} == {"int8"}
    assert {g.precision for g in fp32.manifest.graphs.values()} == {"fp32"}
    q = int8.manifest.quantization
    assert q is not None and q.format == "QDQ"
    reference = q.reference["graphs"]
    assert reference == {name: g.sha256 for name, g in fp32.manifest.graphs.items()}
    report = q.report
    assert report["latent_cosine_mean"] >= 0.999 and abs(report["voe_auc_delta"]) <= 0.01
    assert report["voe_pairs"] >= 40
