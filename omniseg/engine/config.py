"""Typed experiment configs: flat dataclasses, YAML values, command-line overrides.

A run's config is a top-level dataclass whose fields are flat sub-config dataclasses
(``Config(model: ModelConfig, data: DataConfig, train: TrainConfig)``); each sub-config
holds plain typed fields only. :func:`load_config` fills it from a YAML file plus
``section.key=value`` overrides, converting every value to the declared field type
(int, float, bool, str, list/tuple, Optional, Literal) and refusing unknown keys with
an error that names the key and where it came from. :func:`save_config` writes the
resolved config back as YAML next to the checkpoints, so a run can be repeated.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from omniseg.errors import UserError
from omniseg.utils.atomic import atomic_write_text

T = TypeVar("T")


class ConfigError(UserError, ValueError):
    """A config value or key is invalid. The message names the key and its source."""


@dataclass
class TrainConfig:
    """Everything the training engine needs; one flat level, every field typed.

    Defaults follow the recipes in the papers (SGD, momentum 0.9, weight decay 1e-4,
    linear warm-up then cosine: alp-fcos-mo Sec. 3.4 "Implementation details").
    """

    output_dir: str = "runs/default"
    max_iter: int = 1000
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    # optimizer
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.01
    momentum: float = 0.9  # SGD only
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW only (MAL uses 0.9, 0.9)
    weight_decay: float = 1e-4
    no_decay_norm_and_bias: bool = True
    # schedule
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    warmup_iters: int = 0
    warmup_factor: float = 0.001
    steps: tuple[int, ...] = ()  # step schedule: iterations where lr is multiplied by gamma
    gamma: float = 0.1
    min_lr_factor: float = 0.0  # cosine: final lr = lr * min_lr_factor
    # stability
    clip_grad_norm: float | None = None
    amp: Literal["none", "bf16", "fp16"] = "none"
    ema_decay: float | None = None  # e.g. 0.996 for MAL's teacher
    # periodic work
    log_period: int = 20
    checkpoint_period: int = 1000
    keep_checkpoints: int = 2
    eval_period: int = 0  # 0: evaluate only at the end (if an eval_fn is given)
    eval_ema: bool = False  # evaluate the EMA weights instead of the live ones
    progress: bool = True  # tqdm bar (also off when stderr is not a TTY)
    find_unused_parameters: bool = False  # DDP


# --------------------------------------------------------------------------- conversion


def _is_optional(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType) and type(None) in typing.get_args(tp)


def _parse_str_scalar(value: str, tp: type, where: str) -> Any:
    try:
        return tp(value)
    except ValueError:
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}") from None


def convert_value(value: Any, tp: Any, where: str) -> Any:
    """Convert ``value`` (from YAML or the command line) to the field type ``tp``.

    Args:
        value: the raw value.
        tp: a resolved type annotation.
        where: "file: key" used in error messages.

    Raises:
        ConfigError: naming ``where`` when the value does not fit the type.
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~")):
            if type(None) in args:
                return None
            raise ConfigError(f"{where}: may not be null")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return convert_value(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: {value!r} matches none of {tp}: " + "; ".join(errors))
    if value is None:
        raise ConfigError(f"{where}: may not be null (type {tp})")
    if origin is Literal:
        for choice in args:  # allow "3" for Literal[3] from the command line
            if value == choice or (
                isinstance(value, str) and not isinstance(choice, str) and value == str(choice)
            ):
                return choice
        raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
    if origin in (list, tuple):
        if isinstance(value, str):
            value = (
                yaml.safe_load(value) if value.strip().startswith("[") else [v for v in value.split(",") if v]
            )
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is list:
            (item,) = args or (Any,)
            return [convert_value(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(convert_value(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if args and len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(convert_value(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise ConfigError(f"{where}: expected a bool, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            return _parse_str_scalar(value, int, where)
        raise ConfigError(f"{where}: expected an int, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            return _parse_str_scalar(value, float, where)
        raise ConfigError(f"{where}: expected a float, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for section {tp.__name__}, got {value!r}")
        return config_from_dict(tp, value, where)
    raise ConfigError(f"{where}: unsupported field type {tp}")


def config_from_dict(cls: type[T], data: dict[str, Any], source: str = "<dict>") -> T:
    """Build dataclass ``cls`` from a (nested) dict, converting and validating every value.

    Args:
        cls: a dataclass type whose fields are typed values or sub-config dataclasses.
        data: mapping of field name to value (sections as nested mappings).
        source: a file name or key prefix for error messages.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in data:
        if key not in names:
            raise ConfigError(f"{source}: unknown key {key!r} for {cls.__name__} (known: {sorted(names)})")
    kwargs = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in data:
            kwargs[f.name] = convert_value(data[f.name], hints[f.name], f"{source}: {f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            if dataclasses.is_dataclass(hints[f.name]):
                kwargs[f.name] = config_from_dict(hints[f.name], {}, f"{source}: {f.name}")
            else:
                raise ConfigError(f"{source}: missing required key {f.name!r} for {cls.__name__}")
    return cls(**kwargs)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of a config (tuples as lists), ready for YAML or JSON."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(cfg)


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Turn ``["train.lr=0.1", "model.name=x"]`` into a nested dict of raw strings.

    Values stay strings here; :func:`convert_value` converts them using the field type,
    so ``model.name=1e3`` stays the string "1e3" for a str field.
    """
    nested: dict[str, Any] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"command line: override {item!r} is not of the form section.key=value")
        node = nested
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"command line: {key!r} conflicts with another override")
        node[parts[-1]] = value
    return nested


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _check_override_keys(cls: type, overrides: dict[str, Any], prefix: str = "") -> None:
    hints = typing.get_type_hints(cls)
    for key, value in overrides.items():
        full = f"{prefix}{key}"
        if key not in hints:
            raise ConfigError(
                f"command line: unknown key {full!r} (known in {cls.__name__}: {sorted(hints)})"
            )
        if isinstance(value, dict):
            if not dataclasses.is_dataclass(hints[key]):
                raise ConfigError(f"command line: {full!r} is not a section")
            _check_override_keys(hints[key], value, f"{full}.")
        elif dataclasses.is_dataclass(hints[key]):
            raise ConfigError(f"command line: {full!r} is a section; set {full}.<key>=value")


def load_config(
    cls: type[T], yaml_path: str | os.PathLike | None = None, overrides: list[str] | None = None
) -> T:
    """Load ``cls`` from a YAML file and apply ``key=value`` command-line overrides.

    Args:
        cls: the top-level config dataclass (sections are dataclass-typed fields).
        yaml_path: YAML file with a mapping of sections; None uses the defaults.
        overrides: e.g. ``["train.max_iter=200", "train.steps=[100,150]"]``.

    Raises:
        ConfigError: for unknown keys (naming the key and the file), bad values or YAML.
    """
    source = str(yaml_path) if yaml_path is not None else "<defaults>"
    data: dict[str, Any] = {}
    if yaml_path is not None:
        try:
            data = yaml.safe_load(Path(yaml_path).read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{source}: invalid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: top level must be a mapping, got {type(data).__name__}")
    cfg = config_from_dict(cls, data, source)  # validates the file on its own first
    if overrides:
        parsed = parse_overrides(overrides)
        _check_override_keys(cls, parsed)
        cfg = config_from_dict(cls, _merge(config_to_dict(cfg), parsed), "command line")
    return cfg


def save_config(cfg: Any, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML (atomically), loadable again by :func:`load_config`."""
    atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


__all__ = [
    "ConfigError",
    "TrainConfig",
    "config_from_dict",
    "config_to_dict",
    "convert_value",
    "load_config",
    "parse_overrides",
    "save_config",
]
