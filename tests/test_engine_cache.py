"""TensorRT engine cache: keys, exact-match lookups, stale / foreign / corrupted entries, atomic writes, ORT's
TensorRT EP options, and `ami-edge build-engine` without TensorRT.

The cache is plain files and JSON, tested here with real files. Nothing imitates TensorRT: the tests that need it
build and run real engines and are skipped (with the reason) where TensorRT or an NVIDIA GPU is missing.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shutil

import numpy as np
import onnxruntime as ort
import pytest

from ami_edge import BundleError, ConfigError, Manifest, MissingExtraError, Runtime
from ami_edge.engine_cache import (CacheError, DeviceInfo, EngineCache, EngineKey, atomic_write,
                                   default_fallback_dir, graph_context, ort_shapes, ort_tensorrt_options, profile_for)
from ami_edge.gpu import query_device
from ami_edge.runners import tensorrt_ep_options

from .conftest import assert_one_line_error, run_cli

ORIN = DeviceInfo(gpu_name="Orin (nvgpu)", compute_capability="8.7", tensorrt_version="10.3.0")
HAVE_TENSORRT = importlib.util.find_spec("tensorrt") is not None
DEVICE = query_device() if HAVE_TENSORRT else None
needs_trt = pytest.mark.skipif(
    DEVICE is None, reason="TensorRT and an NVIDIA GPU are required: "
    + ("no NVIDIA GPU visible to cuda-python / nvidia-smi" if HAVE_TENSORRT
       else "the tensorrt module is not installed"))


def _key(video_bundle, graph: str = "encoder", device: DeviceInfo = ORIN, precision: str = "fp16") -> EngineKey:
    spec = video_bundle.manifest.graphs[graph]
    return EngineKey.make(graph, spec.sha256, device, precision, profile_for(video_bundle.manifest, graph))


def _feeds(name_shapes: dict[str, tuple[int, ...]], manifest: Manifest, graph: str) -> dict[str, np.ndarray]:
    n = manifest.latent.tokens
    out = {}
    for spec in manifest.graphs[graph].inputs:
        shape = name_shapes[spec.name]
        if spec.dtype == "int64":  # token ids: valid positions
            out[spec.name] = np.broadcast_to(np.arange(shape[-1]) % n, shape).astype(np.int64)
        else:
            out[spec.name] = np.random.default_rng(0).standard_normal(shape).astype(spec.dtype)
    return out


# --------------------------------------------------------------------------------------------------- profiles
def test_profiles_are_shapes_the_graphs_accept(video_bundle):
    """min / opt / max of every profile run through the real graph in ONNX Runtime (so TensorRT gets valid ones)."""
    m = video_bundle.manifest
    for graph in m.graphs:
        profile = profile_for(m, graph, max_batch=2)
        assert set(profile) == {t.name for t in m.graphs[graph].inputs}
        session = ort.InferenceSession(str(video_bundle.graph_path(graph)), providers=["CPUExecutionProvider"])
        for which in range(3):
            shapes = {name: dims[which] for name, dims in profile.items()}
            assert all(s[0] == (1, 1, 2)[which] for s in shapes.values())  # the batch axis
            session.run(None, _feeds(shapes, m, graph))
    t, h, w = m.latent.grid
    ctx = profile_for(m, "predictor")["context"]
    assert [d[1] for d in ctx] == [h * w, m.latent.tokens, m.latent.tokens]  # one step .. the whole clip
    assert ort_shapes({"a": ((1, 2), (3, 4), (5, 6))}, 1) == "a:3x4"


def test_profile_axes_it_cannot_size_are_rejected(video_bundle):
    data = json.loads((video_bundle.path / "manifest.json").read_text())
    data["graphs"]["predictor"]["inputs"][0]["shape"] = ["batch", "2*context", 96]
    doubled = profile_for(Manifest.parse(data, video_bundle.path / "manifest.json"), "predictor")["context"]
    assert [d[1] for d in doubled] == [2 * d[1] for d in profile_for(video_bundle.manifest, "predictor")["context"]]
    data["graphs"]["predictor"]["inputs"][0]["shape"] = ["batch", "wobble", 96]
    with pytest.raises(BundleError, match="'wobble'"):
        profile_for(Manifest.parse(data, video_bundle.path / "manifest.json"), "predictor")


# -------------------------------------------------------------------------------------------------------- key
def test_key_round_trips_and_every_field_changes_the_digest(video_bundle):
    key = _key(video_bundle)
    assert EngineKey.from_json(json.loads(json.dumps(key.to_json()))) == key
    changed = {"graph": "predictor", "onnx_sha256": "0" * 64, "gpu_name": "NVIDIA H100", "compute_capability": "9.0",
               "tensorrt_version": "10.7.0", "precision": "int8", "profile": (("pixels", (1,), (1,), (2,)),),
               "runtime": "onnxruntime-1.20.0", "format_version": key.format_version + 1}
    assert set(changed) == {f.name for f in dataclasses.fields(EngineKey)}
    digests = {key.digest()}
    for field, value in changed.items():
        other = dataclasses.replace(key, **{field: value})
        digests.add(other.digest())
        assert [d.split(" ")[0] for d in key.differences(other)] == [field]
    assert len(digests) == len(changed) + 1
    with pytest.raises(ValueError, match="precision"):
        EngineKey.make("encoder", "0" * 64, ORIN, "int4", {})


# ------------------------------------------------------------------------------------------------------ cache
def test_lookup_hits_only_the_exact_key_and_reports_the_rest(video_bundle, tmp_path):
    cache = EngineCache(tmp_path / "b.amiedge", fallback=tmp_path / "fallback")
    key = _key(video_bundle)
    assert cache.lookup(key).hit is None
    entry = cache.store(key, b"engine for orin")
    assert entry.engine == tmp_path / "b.amiedge" / "engines" / f"encoder-{key.digest()}.engine"
    found = cache.lookup(key)
    assert found.hit is not None and found.hit.engine.read_bytes() == b"engine for orin" and not found.rejected

    cases = {"tensorrt_version": ("10.7.0", "foreign"), "gpu_name": ("NVIDIA H100", "foreign"),
             "onnx_sha256": ("f" * 64, "stale"), "precision": ("int8", "other settings")}
    for field, (value, kind) in cases.items():
        other = dataclasses.replace(key, **{field: value})
        found = cache.lookup(other)
        assert found.hit is None, field
        [(rejected, why)] = found.rejected
        assert rejected.engine == entry.engine and kind in why and field in why
        assert "not loading" in found.report()[0]


def test_corrupted_sidecar_or_engine_is_never_loaded(video_bundle, tmp_path):
    cache = EngineCache(tmp_path, cache_dir=tmp_path / "engines")
    key = _key(video_bundle)
    entry = cache.store(key, b"x" * 1000)
    entry.sidecar.write_text('{"key": {"graph": "encoder"')
    found = cache.lookup(key)
    assert found.hit is None and "corrupted" in found.rejected[0][1] and str(entry.sidecar) in found.rejected[0][1]

    entry = cache.store(key, b"x" * 1000)  # a rebuild repairs it
    assert cache.lookup(key).hit == entry
    entry.engine.write_bytes(b"x" * 999 + b"y")  # same size, other bytes
    assert cache.lookup(key).hit is None and "sha256" in cache.lookup(key).rejected[0][1]
    assert cache.lookup(key, verify=False).hit is not None  # only the hash tells them apart

    entry.sidecar.unlink()
    assert "sidecar" in cache.lookup(key).rejected[0][1] and cache.lookup(key).hit is None


def test_atomic_write_leaves_the_old_file_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "a.engine"
    atomic_write(path, b"old")

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space"):
        atomic_write(path, b"new" * 1000)
    assert path.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.engine"]


def test_an_interrupted_store_leaves_no_loadable_entry(video_bundle, tmp_path, monkeypatch):
    cache = EngineCache(tmp_path, cache_dir=tmp_path / "engines")
    key = _key(video_bundle)
    cache.store(key, b"first build")
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(5, "I/O error")))
    with pytest.raises(OSError):
        cache.store(key, b"second build")
    found = cache.lookup(key)
    assert found.hit is None and "sidecar" in found.rejected[0][1]  # the old engine without its key: not loaded


def test_read_only_bundle_uses_the_fallback_cache(video_bundle, tmp_path, monkeypatch):
    bundle = tmp_path / "b.amiedge"
    bundle.mkdir()
    (bundle / "engines").write_text("not a directory")  # engines/ cannot be created: the bundle is not writable
    monkeypatch.setenv("AMI_EDGE_CACHE", str(tmp_path / "cache"))
    assert default_fallback_dir() == tmp_path / "cache" / "engines"
    cache = EngineCache(bundle)
    key = _key(video_bundle)
    entry = cache.store(key, b"engine")
    assert entry.engine.parent == tmp_path / "cache" / "engines" and cache.lookup(key).hit == entry
    assert cache.timing_cache_path(ORIN).parent == tmp_path / "cache" / "engines"
    cache = EngineCache(bundle, fallback=bundle / "engines" / "sub")
    with pytest.raises(CacheError, match="no writable engine cache directory"):
        cache.write_dir()


def test_prune_removes_other_onnx_and_keeps_other_devices(video_bundle, tmp_path):
    cache = EngineCache(tmp_path / "b.amiedge", fallback=tmp_path / "shared")
    key = _key(video_bundle)
    old_onnx = cache.store(dataclasses.replace(key, onnx_sha256="a" * 64), b"old")
    other_gpu = cache.store(dataclasses.replace(key, gpu_name="NVIDIA H100"), b"h100")
    current = cache.store(key, b"current")
    removed = cache.prune(key)
    assert sorted(removed) == sorted([old_onnx.engine, old_onnx.sidecar])
    assert other_gpu.engine.is_file() and current.engine.is_file() and cache.lookup(key).hit == current

    # A shared directory (fallback, --cache-dir) also holds other bundles' graphs: not stale, not pruned.
    other_bundle = EngineCache(tmp_path / "other.amiedge", cache_dir=tmp_path / "shared")
    theirs = other_bundle.store(dataclasses.replace(key, onnx_sha256="b" * 64), b"another model")
    shared = EngineCache(tmp_path / "third.amiedge", cache_dir=tmp_path / "shared")
    assert shared.lookup(key).rejected == [] and shared.prune(key) == [] and theirs.engine.is_file()
    foreign = shared.store(dataclasses.replace(key, tensorrt_version="10.7.0"), b"same model, older TensorRT")
    assert [e.engine for e, _ in shared.lookup(key).rejected] == [foreign.engine]  # same ONNX: reported
    newer = dataclasses.replace(ORIN, tensorrt_version="10.7.0")
    assert cache.timing_cache_path(ORIN) != cache.timing_cache_path(newer)  # one timing cache per TensorRT


# ------------------------------------------------------------------------------------------ ORT TensorRT EP
def test_ort_tensorrt_options_live_in_a_directory_of_the_same_key(video_bundle, tmp_path):
    cache = EngineCache(tmp_path, cache_dir=tmp_path / "engines")
    key = _key(video_bundle, "predictor", precision="int8")
    options = ort_tensorrt_options(cache, key, workspace_mib=512)
    d = tmp_path / "engines" / "ort-trt" / f"predictor-{key.digest()}"
    assert options["trt_engine_cache_path"] == options["trt_timing_cache_path"] == str(d)
    assert EngineKey.from_json(json.loads((d / "key.json").read_text())["key"]) == key
    assert (options["trt_engine_cache_enable"], options["trt_int8_enable"], options["trt_fp16_enable"]) == (
        "True", "True", "True")
    profile = key.profile_dict()
    assert [options[f"trt_profile_{w}_shapes"] for w in ("min", "opt", "max")] == [ort_shapes(profile, i)
                                                                                   for i in range(3)]
    assert options["trt_max_workspace_size"] == str(512 << 20)
    newer = ort_tensorrt_options(cache, dataclasses.replace(key, tensorrt_version="10.7.0"))
    assert newer["trt_engine_cache_path"] != options["trt_engine_cache_path"]  # a TensorRT upgrade starts empty

    (d / "TensorrtExecutionProvider_x.engine").write_bytes(b"ort engine")
    assert ort_tensorrt_options(cache, key)["trt_engine_cache_path"] == str(d)  # kept while the key matches
    (d / "key.json").write_text(json.dumps({"key": dataclasses.replace(key, gpu_name="other").to_json()}))
    ort_tensorrt_options(cache, key)
    assert not (d / "TensorrtExecutionProvider_x.engine").exists()  # a foreign directory is emptied, not used


def test_onnxruntime_runner_keys_the_ep_cache_like_build_engine(video_bundle, tmp_path, monkeypatch, capsys):
    bundle = shutil.copytree(video_bundle.path, tmp_path / "copy.amiedge")  # the shared fixture stays untouched
    path = bundle / video_bundle.manifest.graphs["encoder"].file
    ctx = graph_context(path)
    assert (ctx.graph, ctx.onnx_sha256, ctx.bundle_dir) == ("encoder", video_bundle.manifest.graphs["encoder"].sha256,
                                                            bundle)
    if DEVICE is None:  # this machine: no GPU to key by, so no engine cache at all
        assert tensorrt_ep_options(path, ort.__version__) == {}
        assert "engine cache off" in capsys.readouterr().err
    # The device query is a separate function; given a device, the runner's options follow the shared key.
    monkeypatch.setattr("ami_edge.gpu.query_device", lambda device=0: ORIN)
    options = tensorrt_ep_options(path, ort.__version__)
    key = EngineKey.make("encoder", ctx.onnx_sha256, ORIN, "fp32", profile_for(video_bundle.manifest, "encoder"),
                         runtime=f"onnxruntime-{ort.__version__}")
    assert options["trt_engine_cache_path"] == str(bundle / "engines" / "ort-trt" / f"encoder-{key.digest()}")
    assert options["trt_fp16_enable"] == "False"  # an fp32 graph keeps fp32 numerics under the EP


# ----------------------------------------------------------------------------------------------------- CLI
@pytest.mark.skipif(HAVE_TENSORRT, reason="tensorrt is installed here; this checks the message without it")
def test_build_engine_without_tensorrt_says_how_to_get_it(video_bundle):
    proc = run_cli("build-engine", str(video_bundle.path), "--precision", "fp16")
    assert_one_line_error(proc, "pip install 'ami-edge[tensorrt]'", "JetPack")
    with pytest.raises(MissingExtraError, match=r"ami-edge\[tensorrt\]"):
        Runtime(video_bundle, source=[], backend="tensorrt")


def test_build_engine_flags_are_checked(video_bundle):
    proc = run_cli("build-engine", str(video_bundle.path), "--precision", "int4")
    assert proc.returncode == 2 and "invalid choice: 'int4'" in proc.stderr


# ------------------------------------------------------------------------------------- real TensorRT + GPU
@needs_trt
def test_build_cache_hit_and_run_match_onnxruntime(video_bundle, tmp_path):
    from ami_edge.trt import TensorRTRunner, ensure_engine

    cache_dir = tmp_path / "engines"
    path = video_bundle.graph_path("encoder")
    entry, built = ensure_engine(path, "fp32", workspace_mib=512, cache_dir=cache_dir)
    again, rebuilt = ensure_engine(path, "fp32", workspace_mib=512, cache_dir=cache_dir)
    assert built and not rebuilt and again.engine == entry.engine
    assert entry.key.tensorrt_version == DEVICE.tensorrt_version
    pixels = np.random.default_rng(0).standard_normal((1, 3, 4, 64, 64)).astype(np.float32)
    reference = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"pixels": pixels})[0]
    with TensorRTRunner(path, precision="fp32", cache_dir=cache_dir) as runner:
        tokens = runner.infer({"pixels": pixels})["tokens"]
    np.testing.assert_allclose(tokens, reference, atol=1e-3)


@needs_trt
def test_cli_build_engine_builds_then_reuses(video_bundle, tmp_path):
    args = ("build-engine", str(video_bundle.path), "--graphs", "encoder", "--cache-dir", str(tmp_path))
    first, second = run_cli(*args, timeout=1200), run_cli(*args, timeout=600)
    assert first.returncode == 0 and "encoder: built" in first.stdout, first.stderr
    assert second.returncode == 0 and "encoder: cached" in second.stdout, second.stderr


def test_precision_follows_the_tensorrt_generation():
    from ami_edge.trt import choose_precision

    assert choose_precision(None, "fp32", weak=True, trt_version="10.3.0") == "fp16"  # builder flags lower it
    assert choose_precision(None, "int8", weak=True, trt_version="10.3.0") == "int8"  # a QDQ graph
    assert choose_precision(None, "fp32", weak=False, trt_version="11.4.0") == "fp32"  # strongly typed: the graph's
    assert choose_precision("int8", "fp32", weak=False, trt_version="11.4.0") == "int8"  # Q/DQ is checked at build
    with pytest.raises(ConfigError, match=r"strongly typed.*--precision fp32"):
        choose_precision("fp16", "fp32", weak=False, trt_version="11.4.0")
