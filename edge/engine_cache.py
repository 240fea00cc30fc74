"""TensorRT engine cache: an engine is only ever loaded on the exact device, TensorRT and ONNX it was built for.

A serialized TensorRT engine is valid for one GPU model (compute capability), one TensorRT version and one ONNX
graph; loading it anywhere else fails at best and mis-computes at worst (TensorRT#564, ultralytics#19423,
onnxruntime#22244). So every engine is stored next to a JSON sidecar holding its full `EngineKey`:

    NAME.amiedge/engines/encoder-<digest>.engine   the serialized engine
    NAME.amiedge/engines/encoder-<digest>.json     {"key": {...}, "engine_sha256": ..., "engine_bytes": ...}
    NAME.amiedge/engines/timing-<digest>.cache     TensorRT timing cache, one per GPU + TensorRT version
    NAME.amiedge/engines/ort-trt/encoder-<digest>/ ONNX Runtime TensorRT EP caches, keyed the same way

A lookup is a hit only when the sidecar's key equals the current key field for field and the engine file's sha256
matches the sidecar; anything else is reported (stale, foreign, corrupted) and rebuilt, never loaded. When the bundle
is read-only the cache lives in $AMI_EDGE_CACHE or ~/.cache/ami-edge/engines instead.

This module is pure Python (no tensorrt import): keys are computed from plain values, and the device queries that
produce those values (`ami_edge.gpu.query_device`) are separate.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from .bundle import MANIFEST, Manifest, _reject_constant, sha256_file
from .errors import BundleError, ConfigError

# Bump when the way ami-edge builds engines changes (flags, profiles, I/O handling): old engines are then stale.
ENGINE_FORMAT = 1
ENGINES_DIR = "engines"
PRECISIONS = ("fp16", "int8", "fp32")

# (min, opt, max) shapes of one input; a profile maps input names to them.
Shape = tuple[int, ...]
Profile = dict[str, tuple[Shape, Shape, Shape]]


class CacheError(ConfigError):
    """A cache entry or cache directory cannot be used (corrupted sidecar, unwritable directory)."""


# ----------------------------------------------------------------------------------------------------- the key
@dataclass(frozen=True)
class DeviceInfo:
    """What an engine is specific to on the device side."""

    gpu_name: str  # "Orin (nvgpu)", "NVIDIA H100 80GB HBM3"
    compute_capability: str  # "8.7"
    tensorrt_version: str  # "10.3.0"


@dataclass(frozen=True)
class EngineKey:
    """Everything a serialized engine depends on. Two engines are interchangeable only if their keys are equal."""

    graph: str
    onnx_sha256: str
    gpu_name: str
    compute_capability: str
    tensorrt_version: str
    precision: str
    profile: tuple[tuple[str, Shape, Shape, Shape], ...]  # sorted (input, min, opt, max)
    runtime: str = "tensorrt"  # "tensorrt" (ami-edge's builder) or "onnxruntime-<version>" (ORT's TensorRT EP)
    format_version: int = ENGINE_FORMAT

    @classmethod
    def make(cls, graph: str, onnx_sha256: str, device: DeviceInfo, precision: str, profile: Profile,
             runtime: str = "tensorrt") -> EngineKey:
        if precision not in PRECISIONS:
            raise ConfigError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
        rows = tuple((name, tuple(lo), tuple(opt), tuple(hi)) for name, (lo, opt, hi) in sorted(profile.items()))
        return cls(graph=graph, onnx_sha256=onnx_sha256, gpu_name=device.gpu_name,
                   compute_capability=device.compute_capability, tensorrt_version=device.tensorrt_version,
                   precision=precision, profile=rows, runtime=runtime)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["profile"] = {name: {"min": list(lo), "opt": list(opt), "max": list(hi)}
                           for name, lo, opt, hi in self.profile}
        return data

    @classmethod
    def from_json(cls, data: Any) -> EngineKey:
        """Strict inverse of `to_json`; raises ValueError naming the first field that does not fit."""
        if not isinstance(data, dict):
            raise ValueError("'key' is not an object")
        names = {f.name for f in fields(cls)}
        if set(data) != names:
            raise ValueError(f"'key' fields {sorted(data)} differ from {sorted(names)}")
        for name in names - {"profile", "format_version"}:
            if not isinstance(data[name], str):
                raise ValueError(f"'key.{name}' must be a string")
        if not isinstance(data["format_version"], int) or isinstance(data["format_version"], bool):
            raise ValueError("'key.format_version' must be an integer")
        profile = data["profile"]
        if not isinstance(profile, dict):
            raise ValueError("'key.profile' must be an object")
        rows = []
        for name, dims in sorted(profile.items()):
            if not isinstance(dims, dict) or set(dims) != {"min", "opt", "max"} or not all(
                    isinstance(v, list) and all(isinstance(d, int) and not isinstance(d, bool) for d in v)
                    for v in dims.values()):
                raise ValueError(f"'key.profile.{name}' must hold min/opt/max integer lists")
            rows.append((name, tuple(dims["min"]), tuple(dims["opt"]), tuple(dims["max"])))
        return cls(**{**data, "profile": tuple(rows)})

    def digest(self) -> str:
        """16 hex digits of the sha256 of the canonical JSON key: the file name part."""
        text = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def differences(self, other: EngineKey) -> list[str]:
        """Human-readable `field: theirs != ours` for every field that differs (why an entry is stale)."""
        mine, theirs = self.to_json(), other.to_json()
        return [f"{k} {json.dumps(theirs[k])} != {json.dumps(mine[k])}" for k in mine if mine[k] != theirs[k]]

    def profile_dict(self) -> Profile:
        return {name: (lo, opt, hi) for name, lo, opt, hi in self.profile}


def timing_cache_name(device: DeviceInfo) -> str:
    """The timing cache depends only on the GPU and the TensorRT version (it is shared across graphs)."""
    text = json.dumps(asdict(device), sort_keys=True) + f"/{ENGINE_FORMAT}"
    return f"timing-{hashlib.sha256(text.encode()).hexdigest()[:16]}.cache"


# ------------------------------------------------------------------------------------------------ profiles
_AXIS = re.compile(r"^(?:(\d+)\*)?([A-Za-z_]\w*)(?:\*(\d+))?$")


def profile_for(manifest: Manifest, graph: str, max_batch: int = 1) -> Profile:
    """Optimization profile (min, opt, max per input) from the manifest's named dynamic axes.

    batch: 1 .. max_batch (opt 1: the runtime streams one clip). Predictor `context`: one tubelet step .. the whole
    clip (opt: whole clip); `target`: 1 .. clip tokens (opt: one step). AC predictor `steps` (and `k*steps`): 1 ..
    the clip's steps (opt: all of them). These are the shapes `ami_edge.runtime.Runtime` feeds.
    """
    if max_batch < 1:
        raise ConfigError(f"max batch must be >= 1, got {max_batch}")
    if graph not in manifest.graphs:
        raise BundleError(f"bundle has no '{graph}' graph; it has: {', '.join(manifest.graphs)}")
    t, h, w = manifest.latent.grid
    hw, n = h * w, manifest.latent.tokens
    ranges = {"batch": (1, 1, max_batch), "context": (hw, n, n), "target": (1, hw, n), "steps": (1, t, t)}
    profile: Profile = {}
    for spec in manifest.graphs[graph].inputs:
        lo: list[int] = []
        opt: list[int] = []
        hi: list[int] = []
        for dim in spec.shape:
            if isinstance(dim, int):
                rng = (dim, dim, dim)
            else:
                m = _AXIS.match(dim.replace(" ", ""))
                if not m or m.group(2) not in ranges or (m.group(1) and m.group(3)):
                    raise BundleError(f"graph '{graph}' input '{spec.name}' has a dynamic axis {dim!r} that ami-edge "
                                      f"cannot size (known: {', '.join(ranges)}, or k*name); re-export the bundle")
                k = int(m.group(1) or m.group(3) or 1)
                rng = tuple(k * v for v in ranges[m.group(2)])
            lo.append(rng[0])
            opt.append(rng[1])
            hi.append(rng[2])
        profile[spec.name] = (tuple(lo), tuple(opt), tuple(hi))
    return profile


def ort_shapes(profile: Profile, which: int) -> str:
    """ORT TensorRT EP profile string "in1:1x3x16x224x224,in2:..." for min (0), opt (1) or max (2)."""
    return ",".join(f"{name}:{'x'.join(str(d) for d in dims[which])}" for name, dims in sorted(profile.items()))


# --------------------------------------------------------------------------------------------- the cache
@dataclass(frozen=True)
class Entry:
    """One engine on disk and what its sidecar says about it."""

    engine: Path
    sidecar: Path
    key: EngineKey | None  # None: the sidecar is missing or unreadable
    problem: str = ""  # why the entry cannot be used, for reports


@dataclass(frozen=True)
class Lookup:
    hit: Entry | None
    rejected: list[tuple[Entry, str]]  # entries for this graph that were not loaded, and why

    def report(self) -> list[str]:
        return [f"not loading {e.engine}: {why}" for e, why in self.rejected]


def default_fallback_dir() -> Path:
    env = os.environ.get("AMI_EDGE_CACHE")
    base = Path(env).expanduser() if env else Path.home() / ".cache" / "ami-edge"
    return base / ENGINES_DIR


def _writable(directory: Path) -> bool:
    """Can files be created here? (A real probe: os.access is wrong on read-only mounts and for root.)"""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".probe-"):
            pass
        return True
    except OSError:
        return False


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see either the old file or the whole new one (tmp + fsync + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class EngineCache:
    """Engines of one bundle: in `BUNDLE/engines/`, or in the fallback directory when the bundle is read-only.

    Lookups search both (bundle first); stores go to the first writable one. `cache_dir` overrides both.
    """

    def __init__(self, bundle_dir: str | Path, cache_dir: str | Path | None = None,
                 fallback: str | Path | None = None):
        self.bundle_dir = Path(bundle_dir)
        # BUNDLE/engines holds this bundle's engines only; the fallback and --cache-dir may be shared by bundles,
        # so there an engine of another ONNX is another model's (not reported, never pruned), not a stale one.
        self.own_dir: Path | None = None
        if cache_dir is not None:
            self.dirs = [Path(cache_dir).expanduser()]
        else:
            self.own_dir = self.bundle_dir / ENGINES_DIR
            self.dirs = [self.own_dir,
                         Path(fallback).expanduser() if fallback is not None else default_fallback_dir()]

    def write_dir(self) -> Path:
        """The first directory files can be written to; CacheError naming them all when none can."""
        for d in self.dirs:
            if _writable(d):
                return d
        raise CacheError(f"no writable engine cache directory ({', '.join(map(str, self.dirs))}); pass --cache-dir "
                         "or set AMI_EDGE_CACHE to a writable directory")

    # ------------------------------------------------------------------------------------------- entries
    def entries(self, graph: str) -> Iterator[Entry]:
        """Every engine (or orphan sidecar) for `graph` in the cache directories, with its parsed sidecar."""
        seen: set[Path] = set()
        for d in self.dirs:
            if not d.is_dir():
                continue
            stems = {p.stem for p in d.glob(f"{graph}-*.engine")} | {p.stem for p in d.glob(f"{graph}-*.json")}
            for stem in sorted(stems):
                engine = d / f"{stem}.engine"
                if engine.resolve() in seen:
                    continue
                seen.add(engine.resolve())
                yield self._read_entry(engine, d / f"{stem}.json")

    @staticmethod
    def _read_entry(engine: Path, sidecar: Path) -> Entry:
        if not sidecar.is_file():
            return Entry(engine, sidecar, None, f"its sidecar {sidecar.name} is missing, so its key is unknown")
        try:
            data = json.loads(sidecar.read_text(encoding="utf-8"), parse_constant=_reject_constant)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            key = EngineKey.from_json(data.get("key"))
            if not isinstance(data.get("engine_sha256"), str) or not isinstance(data.get("engine_bytes"), int):
                raise ValueError("'engine_sha256' / 'engine_bytes' missing")
        except (OSError, UnicodeDecodeError, ValueError, TypeError, RecursionError) as exc:
            return Entry(engine, sidecar, None, f"its sidecar {sidecar} is corrupted ({exc}); delete it or rebuild "
                                                "with `ami-edge build-engine --rebuild`")
        if not engine.is_file():
            return Entry(engine, sidecar, key, "the engine file is missing")
        return Entry(engine, sidecar, key)

    def lookup(self, key: EngineKey, verify: bool = True) -> Lookup:
        """The cached engine for exactly `key`, or None; every other entry for the graph is listed with why not.

        verify: also check the engine file's sha256 against the sidecar (catches truncated or replaced files).
        """
        hit, rejected, mine = None, [], f"{key.graph}-{key.digest()}"
        for entry in self.entries(key.graph):
            shared = entry.engine.parent != self.own_dir
            if entry.key is None or entry.problem:
                if not shared or entry.engine.stem == mine:  # in a shared directory: only the file of this key
                    rejected.append((entry, entry.problem))
                continue
            if shared and entry.key.onnx_sha256 != key.onnx_sha256:
                continue  # another bundle's graph
            if entry.key != key:
                rejected.append((entry, f"{_mismatch_kind(key, entry.key)}: {'; '.join(key.differences(entry.key))}"))
                continue
            if hit is not None:
                continue  # the same key in the fallback directory too: the first one wins
            if verify:
                meta = json.loads(entry.sidecar.read_text(encoding="utf-8"))
                size = entry.engine.stat().st_size
                if size != meta["engine_bytes"] or sha256_file(entry.engine) != meta["engine_sha256"]:
                    rejected.append((entry, "the engine file does not match the sha256 in its sidecar (truncated or "
                                            "modified)"))
                    continue
            hit = entry
        return Lookup(hit, rejected)

    def store(self, key: EngineKey, engine: bytes, extra: dict[str, Any] | None = None) -> Entry:
        """Write an engine and its sidecar atomically (engine first: the sidecar is the commit marker)."""
        d = self.write_dir()
        stem = f"{key.graph}-{key.digest()}"
        path, sidecar = d / f"{stem}.engine", d / f"{stem}.json"
        sidecar.unlink(missing_ok=True)  # a crash between the two writes leaves no sidecar: never a hit
        atomic_write(path, engine)
        meta = {"key": key.to_json(), "engine_sha256": hashlib.sha256(engine).hexdigest(),
                "engine_bytes": len(engine), **(extra or {})}
        atomic_write(sidecar, (json.dumps(meta, indent=2) + "\n").encode())
        return Entry(path, sidecar, key)

    def prune(self, key: EngineKey) -> list[Path]:
        """Delete entries in BUNDLE/engines that can never be valid again: another ONNX (re-exported bundle), an
        older engine format, or an unreadable sidecar. Engines for other GPUs / TensorRT versions of the same ONNX
        are kept (a bundle may be shared between devices); they are never loaded here. Shared directories are not
        pruned: an engine there may belong to another bundle."""
        removed = []
        for entry in self.entries(key.graph):
            if entry.engine.parent != self.own_dir:
                continue
            dead = entry.key is None or entry.key.onnx_sha256 != key.onnx_sha256 or \
                entry.key.format_version != key.format_version
            if dead and entry.key != key:
                for p in (entry.engine, entry.sidecar):
                    try:
                        p.unlink(missing_ok=True)
                        removed.append(p)
                    except OSError:
                        pass  # read-only bundle: still never loaded
        return removed

    def timing_cache_path(self, device: DeviceInfo) -> Path:
        """Where the timing cache for this GPU + TensorRT version lives (read from any dir, written to the first
        writable one)."""
        name = timing_cache_name(device)
        for d in self.dirs:
            if (d / name).is_file():
                return d / name
        return self.write_dir() / name

    # ------------------------------------------------------------------------------------- ORT TensorRT EP
    def ort_dir(self, key: EngineKey) -> Path:
        """A directory only ORT's TensorRT EP writes to, named by the key digest and holding the key as key.json.

        ORT names its own cache files by a hash of the graph and the compute capability, not the TensorRT version or
        GPU model; a directory per full key means a changed TensorRT, GPU, ONNX or profile gets an empty directory.
        A directory whose key.json disagrees (tampering, digest collision) is emptied before ORT sees it.
        """
        stem = f"{key.graph}-{key.digest()}"
        for d in self.dirs:
            candidate = d / "ort-trt" / stem
            if (candidate / "key.json").is_file() and _key_file_matches(candidate / "key.json", key):
                return candidate
        d = self.write_dir() / "ort-trt" / stem
        marker = d / "key.json"
        if d.is_dir() and not _key_file_matches(marker, key):
            shutil.rmtree(d)
        d.mkdir(parents=True, exist_ok=True)
        if not marker.is_file():
            atomic_write(marker, (json.dumps({"key": key.to_json()}, indent=2) + "\n").encode())
        return d


def _mismatch_kind(want: EngineKey, have: EngineKey) -> str:
    if have.onnx_sha256 != want.onnx_sha256 or have.format_version != want.format_version:
        return "stale (the ONNX graph or the engine format changed)"
    if (have.gpu_name, have.compute_capability, have.tensorrt_version) != (
            want.gpu_name, want.compute_capability, want.tensorrt_version):
        return "foreign (built for another GPU or TensorRT version)"
    return "built with other settings"


def _key_file_matches(path: Path, key: EngineKey) -> bool:
    try:
        return EngineKey.from_json(json.loads(path.read_text(encoding="utf-8")).get("key")) == key
    except (OSError, ValueError, TypeError, AttributeError, RecursionError):
        return False


def ort_tensorrt_options(cache: EngineCache, key: EngineKey, workspace_mib: int | None = None) -> dict[str, str]:
    """ONNX Runtime TensorRT EP provider options for `key`: engine and timing caches in a directory derived from the
    same key as ami-edge's own engines, precision and explicit optimization profiles from it.

    INT8 here means a QDQ graph (explicit quantization): no calibration table is needed or passed.
    """
    d = cache.ort_dir(key)
    profile = key.profile_dict()
    options = {
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(d),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(d),
        "trt_fp16_enable": "True" if key.precision in ("fp16", "int8") else "False",
        "trt_int8_enable": "True" if key.precision == "int8" else "False",
    }
    if profile:
        options.update(trt_profile_min_shapes=ort_shapes(profile, 0), trt_profile_opt_shapes=ort_shapes(profile, 1),
                       trt_profile_max_shapes=ort_shapes(profile, 2))
    if workspace_mib:
        options["trt_max_workspace_size"] = str(workspace_mib << 20)
    return options


# --------------------------------------------------------------------------------------------- bundle side
@dataclass(frozen=True)
class GraphContext:
    """A graph file and what its bundle's manifest says about it (read without re-hashing the file)."""

    bundle_dir: Path
    manifest: Manifest
    graph: str
    onnx_sha256: str


def graph_context(onnx_path: str | Path) -> GraphContext | None:
    """The manifest entry for the graph at `onnx_path`, from the manifest.json beside it; None outside a bundle.

    The sha256 is the manifest's (load_bundle verified it); a graph file not listed there is hashed instead.
    """
    path = Path(onnx_path)
    file = path.parent / MANIFEST
    if not file.is_file():
        return None
    try:
        manifest = Manifest.parse(json.loads(file.read_text(encoding="utf-8"), parse_constant=_reject_constant), file)
    except (OSError, ValueError, RecursionError):
        return None
    for name, spec in manifest.graphs.items():
        if spec.file == path.name:
            return GraphContext(path.parent, manifest, name, spec.sha256)
    return None


def default_precision(graph_precision: str) -> str:
    """What to build when not told: a QDQ int8 graph becomes an int8 engine, everything else fp16."""
    return "int8" if graph_precision == "int8" else "fp16"
