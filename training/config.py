"""Training configuration as data: `configs/default.yaml` < a named override file < `--set key=value`.

A config is a flat dict. Every key must exist in default.yaml, and every value is coerced to the type of the
default's value (lists are read as YAML, e.g. `--set box_sources=[fullbody,yolov5]`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from services.core.errors import ConfigError

CONFIG_DIR = Path(__file__).parent / "configs"
DEFAULT_NAME = "default"

KNOWN_BACKBONES = tuple(f"EfficientNetB{i}" for i in range(8)) + tuple(f"EfficientNetLite{i}" for i in range(3))
CHOICES = {
    "pooling": ("avg", "gem"),
    "head": ("arcface", "none"),
    "strategy": ("auto", "tpu", "mirrored", "default"),
    "backbone": KNOWN_BACKBONES,
}


def available_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read training config {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"training config {path} must be a mapping of key: value")
    return data


def _coerce(key: str, value: Any, default: Any) -> Any:
    kind = type(default)
    if isinstance(value, str) and kind is not str:
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"config {key}: cannot parse {value!r}: {exc}") from None
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config {key}: expected true/false, got {value!r}")
    if kind is float and isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads "1e-3" as a string
        except ValueError:
            pass
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is list:
        if value is None:
            return []
        if isinstance(value, list):
            return [str(v) for v in value]
        if isinstance(value, str):
            return [v for v in (s.strip() for s in value.split(",")) if v]
    if kind is str and value is not None:
        return str(value)
    if isinstance(value, kind) and kind not in (int, float, bool, list):
        return value
    raise ConfigError(f"config {key}: expected {kind.__name__}, got {value!r}")


def _merge(base: dict[str, Any], overrides: Mapping[str, Any], origin: str) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if key not in base:
            raise ConfigError(f"{origin}: unknown config key {key!r} (known: {', '.join(sorted(base))})")
        merged[key] = _coerce(key, value, base[key])
    return merged


def parse_set_options(items: Iterable[str]) -> dict[str, str]:
    """['a=1', 'b=x'] -> {'a': '1', 'b': 'x'}."""
    result = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r}")
        result[key.strip()] = value.strip()
    return result


def validate(config: dict[str, Any]) -> dict[str, Any]:
    for key, choices in CHOICES.items():
        if config[key] not in choices:
            raise ConfigError(f"config {key}: {config[key]!r} is not one of {', '.join(choices)}")
    positive = ("image_size", "embedding_size", "msd_samples", "epochs", "batch_per_replica", "folds",
                "snapshot_every")
    for key in positive:
        if config[key] <= 0:
            raise ConfigError(f"config {key} must be > 0, got {config[key]}")
    if not 0.0 <= config["msd_rate"] < 1.0:
        raise ConfigError(f"config msd_rate must be in [0, 1), got {config['msd_rate']}")
    for key in ("preserve_l2sp", "preserve_distill"):
        if config[key] < 0:
            raise ConfigError(f"config {key} must be >= 0 (0: off), got {config[key]}")
    if config["arcface_sigma"] < 0:
        raise ConfigError(f"config arcface_sigma must be >= 0, got {config['arcface_sigma']}")
    if not -1 <= config["fold"] < config["folds"]:
        raise ConfigError(f"config fold must be -1 (no validation) or in 0..{config['folds'] - 1}, got {config['fold']}")
    if config["warmup_epochs"] < 0 or config["warmup_epochs"] > config["epochs"]:
        raise ConfigError(f"config warmup_epochs must be in 0..epochs, got {config['warmup_epochs']}")
    if config["image_size"] < 32:
        raise ConfigError(f"config image_size must be >= 32 (EfficientNet), got {config['image_size']}")
    return config


def resolve_config_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    named = CONFIG_DIR / f"{name_or_path}.yaml"
    if named.exists():
        return named
    raise ConfigError(f"unknown training config {name_or_path!r}: not a file and not one of "
                      f"{', '.join(available_configs())}")


def load_config(name_or_path: str = DEFAULT_NAME, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The resolved config: default.yaml, then the named file (or a YAML path), then `overrides`."""
    default = _read_yaml(CONFIG_DIR / f"{DEFAULT_NAME}.yaml")
    config = dict(default)
    path = resolve_config_path(name_or_path)
    if path.resolve() != (CONFIG_DIR / f"{DEFAULT_NAME}.yaml").resolve():
        config = _merge(config, _read_yaml(path), str(path))
        config.setdefault("name", path.stem)
    config = _merge(config, dict(overrides or {}), "--set")
    return validate(config)


def save_config(config: Mapping[str, Any], path: Path) -> None:
    Path(path).write_text(yaml.safe_dump(dict(config), sort_keys=False))


def read_saved_config(path: Path) -> dict[str, Any]:
    """A run's resolved config.yaml, merged over today's defaults (so keys added later get their default)."""
    default = _read_yaml(CONFIG_DIR / f"{DEFAULT_NAME}.yaml")
    return validate(_merge(default, _read_yaml(Path(path)), str(path)))


def is_general(config: Mapping[str, Any]) -> bool:
    """True for the general identifier's config (`head: none`, training/general.py): never trained, so every fold
    is held out from it."""
    return config.get("head") == "none"


def general_model_id(config: Mapping[str, Any]) -> str:
    """The general identifier's model id, e.g. general-lite2-384 (a Triton model name: letters, digits, dashes)."""
    backbone = str(config["backbone"]).lower().replace("efficientnet", "")
    pooling = "" if config["pooling"] == "gem" else f"-{config['pooling']}"
    return f"{config['name']}-{backbone}-{config['image_size']}{pooling}"
