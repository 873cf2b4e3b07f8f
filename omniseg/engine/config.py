"""Typed experiment configs: flat dataclasses, YAML values, command-line overrides.

A run's config is a top-level dataclass whose fields are flat sub-config dataclasses
(``Config(model: ModelConfig, data: DataConfig, train: TrainConfig)``); each sub-config
holds plain typed fields only. :func:`load_config` fills it from a YAML file plus
``section.key=value`` overrides, converting every value to the declared field type
(int, float, bool, str, list/tuple, Optional, Literal) and refusing unknown keys with
an error that names the key and where it came from. Every float must be finite, and a field
declared with :func:`bounded` must lie in its range. The YAML is read by :func:`read_yaml`,
which also refuses duplicate keys (PyYAML keeps the last one silently). :func:`save_config`
writes the resolved config back as YAML next to the checkpoints, so a run can be repeated.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from omniseg.errors import UserError
from omniseg.utils.atomic import atomic_write_text

T = TypeVar("T")


class ConfigError(UserError, ValueError):
    """A config value or key is invalid. The message names the key and its source."""


def bounded(default: Any, *, ge: float | None = None, gt: float | None = None,
            le: float | None = None, lt: float | None = None) -> Any:
    """A dataclass field with a default and a range that :func:`config_from_dict` enforces.

    The bounds apply to the value, to every item of a list / tuple value, and not to None.
    """
    return field(default=default, metadata={"bounds": {"ge": ge, "gt": gt, "le": le, "lt": lt}})


_BOUND_TEXT = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
_BOUND_OK = {"ge": lambda v, b: v >= b, "gt": lambda v, b: v > b,
             "le": lambda v, b: v <= b, "lt": lambda v, b: v < b}


def check_bounds(value: Any, bounds: dict[str, float | None], where: str) -> None:
    """Raise :class:`ConfigError` naming ``where`` unless ``value`` (each item of it) is in ``bounds``."""
    items = value if isinstance(value, (list, tuple)) else [value]
    for v in items:
        if v is None:
            continue
        for op, bound in bounds.items():
            if bound is not None and not _BOUND_OK[op](v, bound):
                raise ConfigError(f"{where}: must be {_BOUND_TEXT[op]} {bound}, got {v!r}")


@dataclass
class TrainConfig:
    """Everything the training engine needs; one flat level, every field typed.

    Defaults follow the recipes in the papers (SGD, momentum 0.9, weight decay 1e-4,
    linear warm-up then cosine: alp-fcos-mo Sec. 3.4 "Implementation details").
    """

    output_dir: str = "runs/default"
    max_iter: int = bounded(1000, ge=1)
    seed: int = bounded(0, ge=0)
    deterministic: bool = False
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    # torch threads per process; None: automatic (omniseg.engine.threads.choose_threads: 1 on <= 2 cores, ...)
    threads: int | None = bounded(None, ge=1)
    # optimizer
    optimizer: Literal["sgd", "adamw"] = "sgd"
    # how torch.optim runs the update (engine/optim.py): foreach is bit-identical to single and faster
    optimizer_impl: Literal["foreach", "fused", "single"] = "foreach"
    lr: float = bounded(0.01, gt=0)
    momentum: float = bounded(0.9, ge=0, le=1)  # SGD only
    betas: tuple[float, float] = bounded((0.9, 0.999), ge=0, lt=1)  # AdamW only (MAL uses 0.9, 0.9)
    weight_decay: float = bounded(1e-4, ge=0)
    no_decay_norm_and_bias: bool = True
    # schedule
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    warmup_iters: int = bounded(0, ge=0)
    warmup_factor: float = bounded(0.001, gt=0, le=1)
    steps: tuple[int, ...] = bounded((), ge=1)  # step schedule: iterations where lr is multiplied by gamma
    gamma: float = bounded(0.1, gt=0)
    min_lr_factor: float = bounded(0.0, ge=0, le=1)  # cosine: final lr = lr * min_lr_factor
    # stability
    clip_grad_norm: float | None = bounded(None, gt=0)
    amp: Literal["none", "bf16", "fp16"] = "none"
    ema_decay: float | None = bounded(None, ge=0, le=1)  # e.g. 0.996 for MAL's teacher
    # periodic work
    log_period: int = bounded(20, ge=1)
    checkpoint_period: int = bounded(1000, ge=0)  # 0: only the final step is saved
    keep_checkpoints: int = bounded(2, ge=0)  # 0: keep all
    eval_period: int = bounded(0, ge=0)  # 0: evaluate only at the end (if an eval_fn is given)
    eval_ema: bool = False  # evaluate the EMA weights instead of the live ones
    progress: bool = True  # tqdm bar (also off when stderr is not a TTY)
    find_unused_parameters: bool = False  # DDP

    def __post_init__(self) -> None:
        if not self.output_dir.strip():  # "" would train into the current directory
            raise ConfigError("train.output_dir: empty path")


# --------------------------------------------------------------------------- conversion


def _is_optional(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType) and type(None) in typing.get_args(tp)


def _parse_str_scalar(value: str, tp: type, where: str) -> Any:
    try:
        return tp(value)
    except ValueError:
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}") from None


def convert_value(value: Any, tp: Any, where: str, strict: bool = False) -> Any:
    """Convert ``value`` (from YAML or the command line) to the field type ``tp``.

    Args:
        value: the raw value.
        tp: a resolved type annotation.
        where: "file: key" used in error messages.
        strict: a string is not an int, a bool or a non-string Literal (YAML, whose scalars are
            typed: ``max_iter: "1"`` is a mistake). Command-line values are always strings, so
            they are converted with ``strict=False``. Floats accept strings either way (YAML 1.1
            reads ``1e-3`` as a string).

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
                return convert_value(value, arg, where, strict)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: {value!r} matches none of {tp}: " + "; ".join(errors))
    if value is None:
        raise ConfigError(f"{where}: may not be null (type {tp})")
    if origin is Literal:
        for choice in args:  # allow "3" for Literal[3] from the command line
            if value == choice or (
                not strict and isinstance(value, str) and not isinstance(choice, str) and value == str(choice)
            ):
                return choice
        raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
    if origin in (list, tuple):
        if isinstance(value, str) and not strict:
            try:
                value = (
                    yaml.safe_load(value) if value.strip().startswith("[") else [v for v in value.split(",") if v]
                )
            except yaml.YAMLError:
                raise ConfigError(f"{where}: {value!r} is not a list like [1, 2] or 1,2") from None
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is list:
            (item,) = args or (Any,)
            return [convert_value(v, item, f"{where}[{i}]", strict) for i, v in enumerate(value)]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(convert_value(v, args[0], f"{where}[{i}]", strict) for i, v in enumerate(value))
        if args and len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(convert_value(v, a, f"{where}[{i}]", strict) for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if not strict and isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise ConfigError(f"{where}: expected a bool, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            if strict:
                raise ConfigError(f"{where}: expected int, got {value!r} (a string: write it without quotes)")
            return _parse_str_scalar(value, int, where)
        raise ConfigError(f"{where}: expected an int, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            number = _parse_str_scalar(value, float, where)
        else:
            raise ConfigError(f"{where}: expected a float, got {value!r}")
        if not math.isfinite(number):
            raise ConfigError(f"{where}: must be a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for section {tp.__name__}, got {value!r}")
        return config_from_dict(tp, value, where, _nested=True, strict=strict)
    raise ConfigError(f"{where}: unsupported field type {tp}")


def config_from_dict(cls: type[T], data: dict[str, Any], source: str = "<dict>", *, _nested: bool = False,
                     strict: bool = False) -> T:
    """Build dataclass ``cls`` from a (nested) dict, converting and validating every value.

    Args:
        cls: a dataclass type whose fields are typed values or sub-config dataclasses.
        data: mapping of field name to value (sections as nested mappings).
        source: a file name for error messages, which name a key as on the command line:
            ``<file>: train.max_iter: ...``.
        strict: see :func:`convert_value` (True for YAML files, False for command-line strings).
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
        where = f"{source}.{f.name}" if _nested else f"{source}: {f.name}"
        if f.name in data:
            kwargs[f.name] = convert_value(data[f.name], hints[f.name], where, strict)
            if "bounds" in f.metadata:
                check_bounds(kwargs[f.name], f.metadata["bounds"], where)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            if dataclasses.is_dataclass(hints[f.name]):
                kwargs[f.name] = config_from_dict(hints[f.name], {}, where, _nested=True, strict=strict)
            else:
                raise ConfigError(f"{source}: missing required key {f.name!r} for {cls.__name__}")
    try:
        return cls(**kwargs)
    except ConfigError as e:  # a __post_init__ check (it names the key as section.key)
        raise ConfigError(f"{source.split(':')[0]}: {e}") from None


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
    so ``model.name=1e3`` stays the string "1e3" for a str field. A key given twice is an error
    (which one was meant?).
    """
    nested: dict[str, Any] = {}
    seen: set[str] = set()
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"command line: override {item!r} is not of the form section.key=value")
        if key in seen:
            raise ConfigError(f"command line: {key} is given more than once")
        seen.add(key)
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


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key repeated in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # ``<<: *base`` may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in first_line:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (lines {first_line[key]} and {line})",
                        key_node.start_mark)
                first_line[key] = line
            except TypeError:  # an unhashable key: SafeLoader reports it below
                pass
        return super().construct_mapping(node, deep)


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """The top-level mapping of a YAML config file ({} for an empty file).

    Raises:
        ConfigError: ``<file>:<line>:<column>: ...`` for invalid YAML or a duplicate key, or
            ``<file>: ...`` when the file is not UTF-8 or its top level is not a mapping.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start})") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        what = "; ".join(str(x) for x in (e.context, e.problem) if x)
        raise ConfigError(f"{where}: invalid YAML: {what}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got a {type(data).__name__}")
    return data


def load_config(
    cls: type[T],
    yaml_path: str | os.PathLike | None = None,
    overrides: list[str] | None = None,
    *,
    data: dict[str, Any] | None = None,
) -> T:
    """Load ``cls`` from a YAML file and apply ``key=value`` command-line overrides.

    Args:
        cls: the top-level config dataclass (sections are dataclass-typed fields).
        yaml_path: YAML file with a mapping of sections; None uses the defaults.
        overrides: e.g. ``["train.max_iter=200", "train.steps=[100,150]"]``.
        data: the file's content when the caller has already read it with :func:`read_yaml`
            (the file is then not read again; ``yaml_path`` only names it in messages).

    Raises:
        ConfigError: for unknown keys (naming the key and the file), bad values or YAML.
    """
    source = str(yaml_path) if yaml_path is not None else "<defaults>"
    if data is None:
        data = read_yaml(yaml_path) if yaml_path is not None else {}
    cfg = config_from_dict(cls, data, source, strict=True)  # validates the file on its own first
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
    "bounded",
    "check_bounds",
    "config_from_dict",
    "config_to_dict",
    "convert_value",
    "load_config",
    "parse_overrides",
    "read_yaml",
    "save_config",
]
