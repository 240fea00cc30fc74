"""The model bundle: `NAME.amiedge/` holding `manifest.json` and single-file ONNX graphs.

The bundle is the only thing that travels from workstation to device. `load_bundle` validates the manifest
against the schema below and checks every graph's sha256; any problem names the file and the field at fault.
This module is runtime code: numpy and the standard library only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import BundleError, BundleNotFoundError, ConfigError

# 2: latent.surprise (how per-token prediction errors become the frame's surprise); schema-1 bundles mean "mean"
# 3: latent.stall (an optional second surprise term; older runtimes would compute surprise without it)
SCHEMA_VERSION = 3
MANIFEST = "manifest.json"
SUFFIX = ".amiedge"
GRAPH_NAMES = ("encoder", "predictor", "ac_predictor")
FAMILIES = ("vjepa2", "vjepa", "ijepa", "native")
LAYOUTS = ("BCTHW", "BTCHW", "BCHW")
PRECISIONS = ("fp32", "fp16", "int8")
QUANT_PRECISIONS = ("int8", "fp16")
# INT8 calibration methods (ONNX Runtime's CalibrationMethod); an fp16 bundle records "float16" (a cast, no data).
QUANT_METHODS = ("minmax", "entropy", "percentile")
QUANT_FORMATS = ("QDQ", "float16")
SHIPPED_DIR = Path(__file__).parent / "bundles"


class _Reader:
    """Typed access to one JSON object, with errors that name the manifest path and the field."""

    def __init__(self, data: Any, where: str, file: Path):
        if not isinstance(data, dict):
            raise BundleError(f"{file}: field '{where}' must be an object, got {type(data).__name__}")
        self.data, self.where, self.file = data, where, file

    def _path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def positive(self, key: str) -> int:
        value = self.get(key, int)
        if value <= 0:
            raise BundleError(f"{self.file}: field '{self._path(key)}' must be a positive integer, got {value}")
        return value

    def get(self, key: str, kind: type | tuple[type, ...], optional: bool = False) -> Any:
        if key not in self.data:
            if optional:
                return None
            raise BundleError(f"{self.file}: missing field '{self._path(key)}'")
        value = self.data[key]
        if isinstance(value, bool) and kind in (int, float, (int, float)):
            value = None  # JSON true is not a number
        if value is None or not isinstance(value, kind):
            name = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            raise BundleError(f"{self.file}: field '{self._path(key)}' must be {name}, got {self.data[key]!r}")
        return value

    def choice(self, key: str, valid: tuple[str, ...]) -> str:
        value = self.get(key, str)
        if value not in valid:
            raise BundleError(f"{self.file}: field '{self._path(key)}'={value!r} is not one of {', '.join(valid)}")
        return value

    def sub(self, key: str) -> _Reader:
        return _Reader(self.get(key, dict), self._path(key), self.file)


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output. Dynamic dimensions are named strings ("batch", "context" ...)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    @classmethod
    def parse(cls, r: _Reader) -> TensorSpec:
        shape = r.get("shape", list)
        if not all(isinstance(d, (int, str)) and not isinstance(d, bool) for d in shape):
            raise BundleError(f"{r.file}: field '{r.where}.shape' must list ints or axis names, got {shape!r}")
        return cls(r.get("name", str), r.get("dtype", str), tuple(shape))


@dataclass(frozen=True)
class GraphSpec:
    file: str
    precision: str
    sha256: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    opset: int
    # Graphs over protobuf's 2 GB limit (fp32 ViT-H / ViT-g) keep their weights in one external data file.
    data_file: str | None = None
    data_sha256: str | None = None

    def files(self) -> list[tuple[str, str, str]]:
        """(field, file name, sha256) of every file this graph consists of."""
        out = [("file", self.file, self.sha256)]
        if self.data_file is not None and self.data_sha256 is not None:
            out.append(("data_file", self.data_file, self.data_sha256))
        return out

    @classmethod
    def parse(cls, r: _Reader) -> GraphSpec:
        def tensors(key: str) -> tuple[TensorSpec, ...]:
            items = r.get(key, list)
            if not items:
                raise BundleError(f"{r.file}: field '{r.where}.{key}' is empty")
            return tuple(TensorSpec.parse(_Reader(t, f"{r.where}.{key}[{i}]", r.file)) for i, t in enumerate(items))

        def plain_name(key: str, optional: bool = False) -> str | None:
            name = r.get(key, str, optional)
            if name is not None and (Path(name).name != name or name in ("", ".", "..")):
                raise BundleError(f"{r.file}: field '{r.where}.{key}'={name!r} must be a plain file name in the "
                                  "bundle")
            return name

        def digest(key: str) -> str:
            value = r.get(key, str)
            if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
                raise BundleError(f"{r.file}: field '{r.where}.{key}' must be 64 lowercase hex digits")
            return value

        file, data_file = plain_name("file") or "", plain_name("data_file", optional=True)
        if data_file == file:
            raise BundleError(f"{r.file}: field '{r.where}.data_file' must differ from '{r.where}.file'")
        return cls(file=file, precision=r.choice("precision", PRECISIONS), sha256=digest("sha256"),
                   inputs=tensors("inputs"), outputs=tensors("outputs"), opset=r.positive("opset"),
                   data_file=data_file, data_sha256=digest("data_sha256") if data_file else None)


@dataclass(frozen=True)
class InputSpec:
    layout: str
    frames: int
    tubelet: int
    height: int
    width: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def parse(cls, r: _Reader) -> InputSpec:
        mean, std = r.get("mean", list), r.get("std", list)
        channels = r.positive("channels")
        for key, vals in (("mean", mean), ("std", std)):
            if len(vals) != channels or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                and math.isfinite(v) for v in vals):
                raise BundleError(f"{r.file}: field 'input.{key}' must hold {channels} finite numbers, got {vals!r}")
        if any(s <= 0 for s in std):
            raise BundleError(f"{r.file}: field 'input.std' must be positive, got {std!r}")
        layout, frames, tubelet = r.choice("layout", LAYOUTS), r.positive("frames"), r.positive("tubelet")
        if (layout == "BCHW") != (frames == 1) or frames % tubelet:
            raise BundleError(f"{r.file}: fields 'input.layout'={layout}, 'input.frames'={frames}, "
                              f"'input.tubelet'={tubelet} do not fit together (BCHW is one frame; video frames are "
                              "a multiple of the tubelet)")
        return cls(layout=layout, frames=frames, tubelet=tubelet, height=r.positive("height"),
                   width=r.positive("width"), channels=channels, mean=tuple(float(m) for m in mean),
                   std=tuple(float(s) for s in std))


@dataclass(frozen=True)
class StallSpec:
    """`latent.stall`: a second surprise term for motion that was predicted and did not happen.

    Each token's prediction error is divided by how much the token actually changed since the context's last step
    plus `offset`, reduced like the first term (`latent.surprise`) and scaled by `weight`; raw surprise is the larger
    of the two terms (`ami_edge.runtime.step_surprise`). An object that stops in mid-air changes its tokens little
    where the predictor expected a move, so the ratio is large there, while collisions, whose tokens change a lot,
    are divided down. `weight` makes the two terms comparable on calm scenes; `train-demo` fits it.
    """

    offset: float
    weight: float

    @classmethod
    def parse(cls, r: _Reader) -> StallSpec:
        values = {}
        for key in ("offset", "weight"):
            value = float(r.get(key, (int, float)))
            if not (math.isfinite(value) and value > 0):
                raise BundleError(f"{r.file}: field '{r._path(key)}' must be a finite number > 0, got {value!r}")
            values[key] = value
        return cls(**values)


@dataclass(frozen=True)
class LatentSpec:
    """The encoder's token grid, and `surprise`: how the per-token prediction errors of one step reduce to the
    frame's raw surprise (see `check_surprise` and `ami_edge.runtime.step_surprise`), with an optional `stall`
    term (`StallSpec`)."""

    tokens: int
    dim: int
    grid: tuple[int, int, int]
    surprise: str = "mean"
    stall: StallSpec | None = None

    @classmethod
    def parse(cls, r: _Reader) -> LatentSpec:
        grid = r.get("grid", list)
        if len(grid) != 3 or not all(isinstance(g, int) and g > 0 for g in grid):
            raise BundleError(f"{r.file}: field 'latent.grid' must be [T, H, W] positive ints, got {grid!r}")
        tokens = r.get("tokens", int)
        if tokens != grid[0] * grid[1] * grid[2]:
            raise BundleError(f"{r.file}: field 'latent.tokens'={tokens} != product of latent.grid {grid}")
        surprise = r.get("surprise", str, optional=True) or "mean"
        try:
            check_surprise(surprise, grid[1] * grid[2])
        except ValueError as e:
            raise BundleError(f"{r.file}: field 'latent.surprise': {e}") from None
        stall = StallSpec.parse(r.sub("stall")) if r.data.get("stall") is not None else None
        return cls(tokens=tokens, dim=r.positive("dim"), grid=(grid[0], grid[1], grid[2]), surprise=surprise,
                   stall=stall)


def check_surprise(how: str, step_tokens: int) -> int | None:
    """Validate a surprise reduction for a step of `step_tokens` tokens: `mean` (None) or `topK` (K).

    `mean` averages the squared prediction error over every token of the step; `topK` over the K tokens with the
    largest error, so an event confined to a small object is not diluted by the static background around it.
    Raises ValueError naming the valid forms.
    """
    if how == "mean":
        return None
    k = how[3:]
    if not (how.startswith("top") and k.isdigit() and 1 <= int(k) <= step_tokens):
        raise ValueError(f"{how!r} is not a surprise reduction; use 'mean' or 'topK' with 1 <= K <= {step_tokens} "
                         "(tokens per step)")
    return int(k)


def check_surprise_option(how: str, grid: tuple[int, ...] | list[int]) -> int | None:
    """`check_surprise` for a command's `--surprise` against a model's (T, H, W) token grid: ConfigError naming it."""
    try:
        return check_surprise(how, grid[1] * grid[2])
    except ValueError as e:
        raise ConfigError(f"--surprise: {e}") from None


@dataclass(frozen=True)
class Quantization:
    """How a reduced-precision bundle was made from its FP32 reference, and how far it strays from it.

    `report` is measured on held-out frames (never the calibration frames): latent cosine (mean and worst clip),
    max abs, surprise correlation and the VoE-AUC delta, so `ami-edge info --json` tells users what they run.
    """

    precision: str
    format: str
    method: str
    per_channel: bool
    calibration: dict[str, Any] | None
    reference: dict[str, Any]
    report: dict[str, Any]
    settings: dict[str, Any] = field(default_factory=dict)  # activation / weight types, nodes quantized, gate

    @classmethod
    def parse(cls, r: _Reader, graphs: dict[str, GraphSpec]) -> Quantization:
        precision = r.choice("precision", QUANT_PRECISIONS)
        wrong = sorted(name for name, g in graphs.items() if g.precision != precision)
        if wrong:
            raise BundleError(f"{r.file}: field 'quantization.precision'={precision} but graphs {wrong} are not "
                              f"{precision}; re-run `ami-edge quantize`")
        fmt = r.choice("format", QUANT_FORMATS)
        int8 = precision == "int8"
        method = r.choice("method", QUANT_METHODS if int8 else ("float16",))
        if fmt != ("QDQ" if int8 else "float16"):
            raise BundleError(f"{r.file}: field 'quantization.format'={fmt} does not fit precision {precision}")
        calibration = None
        if int8:
            c = r.sub("calibration")
            c.get("source", str)
            c.positive("clips")
            calibration = c.data
        elif r.get("calibration", dict, optional=True) is not None:
            raise BundleError(f"{r.file}: field 'quantization.calibration' must be absent for fp16 (no calibration)")
        report = r.sub("report")
        report.get("eval_source", str)
        report.positive("eval_frames")
        # surprise_correlation and voe_auc_delta are null where they do not apply (no predictor, VoE skipped)
        nullable = ("surprise_correlation", "voe_auc_delta")
        values = {key: None if key in nullable and report.data.get(key) is None else report.get(key, (int, float))
                  for key in ("latent_cosine_mean", "latent_cosine_min", "latent_max_abs", *nullable)}
        for key in ("latent_cosine_mean", "latent_cosine_min", "surprise_correlation"):
            if values[key] is not None and not -1.000001 <= values[key] <= 1.000001:
                raise BundleError(f"{r.file}: field 'quantization.report.{key}'={values[key]} is not in [-1, 1]")
        if values["latent_max_abs"] < 0:
            raise BundleError(f"{r.file}: field 'quantization.report.latent_max_abs' must be >= 0")
        return cls(precision=precision, format=fmt, method=method, per_channel=r.get("per_channel", bool),
                   calibration=calibration, reference=r.get("reference", dict), report=report.data,
                   settings=r.get("settings", dict, optional=True) or {})


@dataclass(frozen=True)
class Manifest:
    schema_version: int
    name: str
    family: str
    input: InputSpec
    latent: LatentSpec
    graphs: dict[str, GraphSpec]
    parity: dict[str, Any]
    provenance: dict[str, Any]
    model: dict[str, Any] = field(default_factory=dict)  # the JEPA config, to rebuild the torch model
    training: dict[str, Any] = field(default_factory=dict)  # recipe, seed and metrics of bundles trained here
    quantization: Quantization | None = None  # INT8 / FP16 bundles made by `ami-edge quantize`

    @classmethod
    def parse(cls, data: Any, file: Path) -> Manifest:
        r = _Reader(data, "", file)
        version = r.get("schema_version", int)
        if version > SCHEMA_VERSION:
            raise BundleError(f"{file}: written with bundle schema {version}, newer than this ami-edge reads "
                              f"({SCHEMA_VERSION}); upgrade ami-edge (pip install -U ami-edge)")
        if version < 1:
            raise BundleError(f"{file}: field 'schema_version'={version} is not a valid schema version")
        graphs_r = r.sub("graphs")
        unknown = sorted(set(graphs_r.data) - set(GRAPH_NAMES))
        if unknown:
            raise BundleError(f"{file}: field 'graphs' has unknown graphs {unknown}; known: {', '.join(GRAPH_NAMES)}")
        if "encoder" not in graphs_r.data:
            raise BundleError(f"{file}: missing field 'graphs.encoder' (every bundle needs an encoder)")
        graphs = {name: GraphSpec.parse(graphs_r.sub(name)) for name in GRAPH_NAMES if name in graphs_r.data}
        files = [f for g in graphs.values() for _, f, _ in g.files()]
        if len(files) != len(set(files)):
            raise BundleError(f"{file}: field 'graphs' lists a file twice: {sorted(files)}")
        inp, latent = InputSpec.parse(r.sub("input")), LatentSpec.parse(r.sub("latent"))
        if latent.grid[0] not in (inp.frames // inp.tubelet, 1):
            raise BundleError(f"{file}: field 'latent.grid'={list(latent.grid)} does not fit input.frames / "
                              f"input.tubelet = {inp.frames // inp.tubelet}")
        parity = r.get("parity", dict)
        report = parity.get("graphs", {})
        if not isinstance(report, dict) or not all(isinstance(v, dict) for v in report.values()):
            raise BundleError(f"{file}: field 'parity.graphs' must map graph names to reports")
        name = r.get("name", str)
        if not name.isprintable():
            raise BundleError(f"{file}: field 'name' must be printable text")
        quantization = None
        if r.get("quantization", dict, optional=True) is not None:
            quantization = Quantization.parse(r.sub("quantization"), graphs)
        elif any(g.precision != "fp32" for g in graphs.values()):
            raise BundleError(f"{file}: graphs are not all fp32 but field 'quantization' is missing (reduced-"
                              "precision bundles record how they were made); re-run `ami-edge quantize`")
        return cls(schema_version=version, name=name, family=r.choice("family", FAMILIES), input=inp,
                   latent=latent, graphs=graphs, parity=parity, provenance=r.get("provenance", dict),
                   model=r.get("model", dict, optional=True) or {},
                   training=r.get("training", dict, optional=True) or {}, quantization=quantization)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def bundle_out_path(out: str | Path) -> Path:
    """Where a bundle will be written: `.amiedge` appended; refuses to replace anything that is not a bundle."""
    out = Path(out)
    if out.suffix != SUFFIX:
        out = out.with_name(out.name + SUFFIX)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ConfigError(f"--out {out} exists and is not a bundle directory; choose another path")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise ConfigError(f"--out {out} is a non-empty directory without {MANIFEST}; refusing to replace it")
    return out


@contextlib.contextmanager
def staged_bundle_dir(out: Path) -> Iterator[Path]:
    """A fresh OUT.partial directory to write a bundle into. It replaces `out` only when the block completes and is
    removed otherwise, so a failed export or quantization never leaves half a bundle behind."""
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Bundle:
    """A verified model bundle on disk."""

    path: Path
    manifest: Manifest

    def graph_path(self, name: str) -> Path:
        """Path of one graph's ONNX file. Raises BundleError when the bundle has no such graph."""
        if name not in self.manifest.graphs:
            raise BundleError(f"bundle {self.path} has no '{name}' graph; it has: {', '.join(self.manifest.graphs)}")
        return self.path / self.manifest.graphs[name].file

    def has(self, name: str) -> bool:
        return name in self.manifest.graphs


def shipped_bundles() -> list[str]:
    """Names of the bundles that ship inside the package (for `load_bundle("default")`)."""
    if not SHIPPED_DIR.is_dir():
        return []
    return sorted(p.name[: -len(SUFFIX)] for p in SHIPPED_DIR.glob(f"*{SUFFIX}") if p.is_dir())


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a valid manifest value")


def resolve_bundle(name_or_path: str | Path) -> Path:
    try:
        path = Path(name_or_path).expanduser()
    except RuntimeError:  # "~nosuchuser/..."
        path = Path(name_or_path)
    if path.is_dir():
        return path
    if path.suffix != SUFFIX and path.with_name(path.name + SUFFIX).is_dir():
        return path.with_name(path.name + SUFFIX)
    text = str(name_or_path)
    if "/" not in text and "\\" not in text:
        shipped = SHIPPED_DIR / (text if text.endswith(SUFFIX) else text + SUFFIX)
        if shipped.is_dir():
            return shipped
    names = shipped_bundles()
    hint = f"shipped bundles: {', '.join(names)}" if names else "no bundles ship with this install"
    raise BundleNotFoundError(f"model bundle '{name_or_path}' not found: pass a path to a NAME{SUFFIX} directory "
                              f"(made by `ami-edge export`) or a shipped name ({hint})")


def load_bundle(name_or_path: str | Path, verify: bool = True) -> Bundle:
    """Open and verify a model bundle.

    Args:
        name_or_path: a `NAME.amiedge` directory, or the name of a bundle shipped in the package.
        verify: check every graph file's sha256 against the manifest (default on).
    Returns:
        The Bundle, whose `.manifest` has been validated against the schema.
    Raises:
        BundleNotFoundError: nothing at that path or name.
        BundleError: the manifest is missing, unreadable, of a newer schema, or a graph file is missing or corrupted.
    """
    path = resolve_bundle(name_or_path)
    file = path / MANIFEST
    if not file.is_file():
        raise BundleError(f"{path} is not a model bundle: {MANIFEST} is missing (re-run `ami-edge export`)")
    try:
        data = json.loads(file.read_text(encoding="utf-8"), parse_constant=_reject_constant)
    except OSError as exc:
        raise BundleError(f"{file} cannot be read ({exc.strerror or exc})") from exc
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise BundleError(f"{file}: not valid JSON ({exc}); the bundle is corrupted, re-export it") from exc
    manifest = Manifest.parse(data, file)
    root = path.resolve()
    for name, spec in manifest.graphs.items():
        for key, fname, digest in spec.files():
            graph = path / fname
            if not graph.is_file():
                raise BundleError(f"{file}: graphs.{name}.{key} '{fname}' is missing from {path}")
            if graph.resolve().parent != root:
                raise BundleError(f"{file}: graphs.{name}.{key} '{fname}' links outside the bundle")
            sha_key = "sha256" if key == "file" else "data_sha256"
            if verify and sha256_file(graph) != digest:
                raise BundleError(f"{graph}: sha256 does not match graphs.{name}.{sha_key} in {MANIFEST}; "
                                  "the file is corrupted or was modified, re-export the bundle")
    return Bundle(path=path, manifest=manifest)
