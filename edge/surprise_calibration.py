"""surprise.json: a calm-scene surprise baseline and event threshold, written by `ami-edge calibrate surprise`.

    {"schema": "ami-edge.surprise-calibration", "schema_version": 1,
     "model": {"name": "tiny", "id": "<sha256 of what surprise depends on>"},
     "baseline": {"center": 0.0997, "scale": 0.0370, "mean": ..., "std": ...,
                  "percentiles": {"min": ..., "p1": ..., ..., "p99.9": ..., "max": ...}},
     "threshold": {"z": 4.0, "quantile": 0.999, "floor": 4.0, "calm_event_rate": 0.0},
     "samples": 280, "warmup": 10, "frames": 300, "dropped": 0, "source": "...", "backend": "...",
     "camera": null, "created_utc": "...", "ami_edge": "0.1.0"}

The runtime z-scores raw surprise as (raw - center) / scale, where center is the median and scale 1.4826 x the
median absolute deviation of calm raw surprise: a few odd frames in the recording cannot move either. A baseline
is only meaningful for the model it was measured with, so `model.id` hashes what raw surprise depends on
(preprocessing, latent grid and surprise reduction, encoder and predictor weights) and a calibration made for
another model is refused.
The file is plain JSON, validated field by field; unknown fields and non-finite numbers are errors.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .bundle import Bundle, _reject_constant
from .errors import ConfigError

SCHEMA = "ami-edge.surprise-calibration"
SCHEMA_VERSION = 1
PERCENTILES = {"min": 0.0, "p1": 1.0, "p5": 5.0, "p25": 25.0, "p50": 50.0, "p75": 75.0, "p95": 95.0, "p99": 99.0,
               "p99.9": 99.9, "max": 100.0}
_FIELDS = {"schema", "schema_version", "model", "baseline", "threshold", "samples", "warmup", "frames", "dropped",
           "source", "backend", "camera", "created_utc", "ami_edge"}
FIX = "re-run `ami-edge calibrate surprise`"


def model_id(bundle: Bundle) -> str:
    """sha256 of what raw surprise depends on: input preprocessing, the latent grid and surprise reduction, and the
    encoder and predictor graphs (their sha256 from the verified manifest). Renaming or moving a bundle keeps its id."""
    m = bundle.manifest
    graphs = {name: [digest for _, _, digest in m.graphs[name].files()] for name in ("encoder", "predictor")
              if name in m.graphs}
    latent = asdict(m.latent)
    if latent["surprise"] == "mean":  # the reduction schema-1 bundles had implicitly: their ids stay what they were
        del latent["surprise"]
    if latent["stall"] is None:  # bundles without a stall term keep the ids they had before it existed
        del latent["stall"]
    what = {"input": asdict(m.input), "latent": latent, "graphs": graphs}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


class _Fields:
    """Typed, strict access to one JSON object of the file; every error names the file and the field.

    Like bundle._Reader, but a user's config file rather than a bundle: ConfigError, unknown fields rejected (a
    misspelt key must not fall back silently), and numbers checked finite and in range."""

    def __init__(self, data: Any, where: str, path: Path, known: set[str]):
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: '{where or 'the file'}' must be a JSON object; {FIX}")
        self.data, self.where, self.path = data, where, path
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{path}: unknown field(s) {', '.join(self._name(k) for k in unknown)}; valid "
                              f"{'fields' if not where else f'in {where}'}: {', '.join(sorted(known))}")

    def _name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def get(self, key: str, kind: type | tuple[type, ...], what: str, optional: bool = False) -> Any:
        if key not in self.data:
            if optional:
                return None
            raise ConfigError(f"{self.path}: missing field '{self._name(key)}'; {FIX}")
        value = self.data[key]
        if (value is None and optional) or (isinstance(value, kind) and not isinstance(value, bool)):
            return value
        raise ConfigError(f"{self.path}: field '{self._name(key)}' must be {what}, got {value!r}; {FIX}")

    def number(self, key: str, low: float = -math.inf, positive: bool = False) -> float:
        value = float(self.get(key, (int, float), "a number"))
        if not math.isfinite(value) or value < low or (positive and value <= 0):
            bound = "a number > 0" if positive else f"a finite number >= {low:g}"
            raise ConfigError(f"{self.path}: field '{self._name(key)}' must be {bound}, got {value!r}; {FIX}")
        return value

    def count(self, key: str) -> int:
        value = self.get(key, int, "an integer")
        if value < 0:
            raise ConfigError(f"{self.path}: field '{self._name(key)}' must be >= 0, got {value}; {FIX}")
        return value

    def sub(self, key: str, known: set[str]) -> _Fields:
        return _Fields(self.get(key, dict, "a JSON object"), self._name(key), self.path, known)


@dataclass(frozen=True)
class SurpriseCalibration:
    """A validated surprise.json. `data` keeps the whole file (the percentiles and provenance) for reports."""

    path: Path
    model_name: str
    model_id: str
    center: float  # median raw surprise of the calm recording
    scale: float  # 1.4826 x its median absolute deviation (a robust standard deviation)
    threshold: float  # z-score above which a frame is an event
    samples: int
    data: dict[str, Any]

    @classmethod
    def parse(cls, data: Any, path: Path) -> SurpriseCalibration:
        top = _Fields(data, "", path, _FIELDS)
        schema = top.get("schema", str, "a string")
        if schema != SCHEMA:
            raise ConfigError(f"{path} is not a surprise calibration (schema {schema!r}, expected {SCHEMA!r})")
        version = top.get("schema_version", int, "an integer")
        if version > SCHEMA_VERSION:
            raise ConfigError(f"{path}: written with surprise calibration schema {version}, newer than this ami-edge "
                              f"reads ({SCHEMA_VERSION}); upgrade ami-edge")
        if version < 1:
            raise ConfigError(f"{path}: field 'schema_version'={version} is not a valid version; {FIX}")
        model = top.sub("model", {"name", "id"})
        name, ident = model.get("name", str, "a string"), model.get("id", str, "a string")
        if len(ident) != 64 or any(c not in "0123456789abcdef" for c in ident):
            raise ConfigError(f"{path}: field 'model.id' must be 64 lowercase hex digits; {FIX}")
        base = top.sub("baseline", {"center", "scale", "mean", "std", "percentiles"})
        center, scale = base.number("center"), base.number("scale", positive=True)
        base.number("mean")
        base.number("std", low=0.0)
        pct = base.sub("percentiles", set(PERCENTILES))
        values = [pct.number(k) for k in PERCENTILES]
        if any(b < a for a, b in zip(values, values[1:])):
            raise ConfigError(f"{path}: field 'baseline.percentiles' must not decrease from min to max; {FIX}")
        thr = top.sub("threshold", {"z", "quantile", "floor", "calm_event_rate"})
        z = thr.number("z", positive=True)
        quantile, floor, rate = thr.number("quantile", positive=True), thr.number("floor", low=0.0), \
            thr.number("calm_event_rate", low=0.0)
        if quantile >= 1 or rate > 1:
            raise ConfigError(f"{path}: fields 'threshold.quantile' must be in (0, 1) and "
                              f"'threshold.calm_event_rate' in [0, 1]; {FIX}")
        samples = top.count("samples")
        if samples < 2:
            raise ConfigError(f"{path}: field 'samples' must be >= 2, got {samples}; {FIX}")
        for key in ("warmup", "frames", "dropped"):
            top.count(key)
        for key in ("source", "backend", "created_utc", "ami_edge"):
            top.get(key, str, "a string")
        top.get("camera", str, "a string or null", optional=True)
        return cls(path, name, ident, center, scale, z, samples, data)

    @classmethod
    def load(cls, path: str | Path) -> SurpriseCalibration:
        """Read and validate a surprise.json.

        Raises:
            ConfigError: unreadable, not JSON, or any field missing, unknown, of the wrong type or out of range.
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"), parse_constant=_reject_constant)
        except OSError as exc:
            raise ConfigError(f"cannot read surprise calibration {path}: {exc.strerror or exc}") from exc
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
            raise ConfigError(f"{path} is not valid JSON ({exc}); {FIX}") from exc
        return cls.parse(data, path)

    def check_model(self, bundle: Bundle) -> None:
        """Refuse a calibration measured with another model: its raw surprise lives on another scale."""
        ident = model_id(bundle)
        if ident != self.model_id:
            raise ConfigError(f"{self.path} was calibrated for model '{self.model_name}' ({self.model_id[:12]}), not "
                              f"'{bundle.manifest.name}' ({ident[:12]}) at {bundle.path}; surprise differs between "
                              f"models: run `ami-edge calibrate surprise --model {bundle.path} --source ...`")

    def describe(self) -> str:
        return (f"surprise baseline from {self.path} (model {self.model_name}, {self.samples} calm samples, "
                f"median {self.center:.4g}, scale {self.scale:.3g}), event above z {self.threshold:.2f}")
