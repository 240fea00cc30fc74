"""`ami-edge serve --config serve.toml`: the flags as a TOML file, validated field by field.

    model = "build/tiny.amiedge"
    source = "auto"
    backend = "auto"
    publish = ["serial:///dev/ttyACM0?baud=921600&latent_dim=16"]
    threshold = 4.0                               # or leave out: 4, or the surprise calibration's
    max_frames = 1000
    surprise_calibration = "surprise.json"        # from `ami-edge calibrate surprise`

Flags given on the command line win over the file.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError


@dataclass
class ServeConfig:
    model: str = "default"
    source: str = "auto"  # the first camera found, else the synthetic world
    backend: str = "auto"
    publish: list[str] = field(default_factory=list)
    threshold: float | None = None  # default 4, or the surprise calibration's
    max_frames: int | None = None
    http: str | None = None
    http_token: str | None = None
    control: str | None = None
    control_token: str | None = None
    camera: str | None = None  # camera.json intrinsics: undistort frames before the model
    surprise_calibration: str | None = None  # surprise.json: calibrated calm baseline and threshold for the model

    def __post_init__(self) -> None:
        for name in ("model", "source", "backend"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ConfigError(f"serve config: '{name}' must be a non-empty string, got {getattr(self, name)!r}")
        if not isinstance(self.publish, list) or not all(isinstance(u, str) for u in self.publish):
            raise ConfigError(f"serve config: 'publish' must be a list of URIs, got {self.publish!r}")
        threshold = self.threshold  # None: 4, or the surprise calibration's
        if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                                      or not 0 < threshold < float("inf")):
            raise ConfigError(f"serve config: 'threshold' must be a number > 0, got {self.threshold!r}")
        for name in ("http", "http_token", "control", "control_token", "camera", "surprise_calibration"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(f"serve config: '{name}' must be a non-empty string, got {value!r}")
        if self.max_frames is not None and (isinstance(self.max_frames, bool) or not isinstance(self.max_frames, int)
                                            or self.max_frames <= 0):
            raise ConfigError(f"serve config: 'max_frames' must be a positive integer, got {self.max_frames!r}")

    @classmethod
    def load(cls, path: str | Path) -> ServeConfig:
        path = Path(path)
        try:
            data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from exc
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(valid))
        if unknown:
            raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(valid)}")
        try:
            return cls(**data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc


def merge(config: ServeConfig, flags: dict[str, Any]) -> ServeConfig:
    """The file's values, overridden by every flag the user actually gave (None means not given)."""
    given = {k: v for k, v in flags.items() if v is not None}
    return dataclasses.replace(config, **given)
