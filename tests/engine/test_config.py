from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from omniseg.engine.config import (
    ConfigError,
    TrainConfig,
    config_from_dict,
    config_to_dict,
    convert_value,
    load_config,
    parse_overrides,
    save_config,
)


@dataclass
class ModelCfg:
    name: str = "fcos_mo_r50"
    num_queries: int = 100
    dropout: float | None = None
    stages: list[int] = field(default_factory=lambda: [2, 3])
    norm: Literal["bn", "gn", "frozen_bn"] = "bn"


@dataclass
class DataCfg:
    root: str  # required
    size: tuple[int, int] = (32, 32)
    flip: bool = True


@dataclass
class Cfg:
    model: ModelCfg = field(default_factory=ModelCfg)
    data: DataCfg = field(default_factory=lambda: DataCfg(root="data"))
    train: TrainConfig = field(default_factory=TrainConfig)


def write(tmp_path, text: str):
    p = tmp_path / "exp.yaml"
    p.write_text(text)
    return p


def test_yaml_values_are_converted_to_field_types(tmp_path):
    p = write(
        tmp_path,
        "model:\n  num_queries: 50\n  dropout: 1e-1\n  stages: [1, 2, 3]\n  norm: gn\n"
        "data:\n  root: /x\n  size: [64, 48]\n"
        "train:\n  lr: 1e-3\n  max_iter: 7\n  steps: [3, 5]\n  clip_grad_norm: 1\n  amp: bf16\n",
    )
    cfg = load_config(Cfg, p)
    assert cfg.model.num_queries == 50 and cfg.model.dropout == 0.1  # "1e-1" is a YAML string
    assert cfg.model.stages == [1, 2, 3] and cfg.model.norm == "gn"
    assert cfg.data.root == "/x" and cfg.data.size == (64, 48) and cfg.data.flip is True
    assert cfg.train.lr == 1e-3 and isinstance(cfg.train.lr, float)
    assert cfg.train.steps == (3, 5) and cfg.train.max_iter == 7
    assert cfg.train.clip_grad_norm == 1.0 and isinstance(cfg.train.clip_grad_norm, float)
    assert cfg.train.amp == "bf16"
    assert cfg.model.name == "fcos_mo_r50"  # default kept


def test_command_line_overrides(tmp_path):
    p = write(tmp_path, "data:\n  root: /x\ntrain:\n  max_iter: 10\n")
    cfg = load_config(
        Cfg,
        p,
        [
            "train.max_iter=200",
            "train.lr=0.5",
            "train.steps=[100,150]",
            "train.deterministic=true",
            "model.name=1e3",  # a str field keeps the text
            "model.dropout=null",
            "model.stages=4,5",
            "data.flip=no",
            "train.clip_grad_norm=2.5",
        ],
    )
    assert cfg.train.max_iter == 200 and cfg.train.lr == 0.5 and cfg.train.steps == (100, 150)
    assert cfg.train.deterministic is True and cfg.data.flip is False
    assert cfg.model.name == "1e3" and cfg.model.dropout is None and cfg.model.stages == [4, 5]
    assert cfg.train.clip_grad_norm == 2.5
    assert cfg.data.root == "/x"  # from the file, untouched by overrides


def test_unknown_key_in_file_names_key_and_file(tmp_path):
    p = write(tmp_path, "data:\n  root: /x\ntrain:\n  max_iters: 10\n")
    with pytest.raises(ConfigError, match=r"exp\.yaml.*train.*'max_iters'"):
        load_config(Cfg, p)
    p = write(tmp_path, "optimiser: {}\n")
    with pytest.raises(ConfigError, match=r"exp\.yaml.*'optimiser'"):
        load_config(Cfg, p)


def test_unknown_override_key_is_named():
    with pytest.raises(ConfigError, match=r"command line.*'train\.lrr'"):
        load_config(Cfg, None, ["train.lrr=1"])
    with pytest.raises(ConfigError, match=r"'train' is a section"):
        load_config(Cfg, None, ["train=1"])
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(Cfg, None, ["train.lr"])


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("train:\n  max_iter: 1.5\n", r"exp\.yaml: train\.max_iter: expected an int"),
        ("train:\n  max_iter: abc\n", r"max_iter: expected int, got 'abc'"),
        ("train:\n  amp: fp8\n", r"amp: 'fp8' is not one of \['none', 'bf16', 'fp16'\]"),
        ("train:\n  deterministic: 2\n", r"deterministic: expected a bool"),
        ("train:\n  betas: [0.9]\n", r"betas: expected 2 values, got 1"),
        ("train:\n  lr: null\n", r"lr: may not be null"),
        ("train:\n  lr: true\n", r"lr: expected a float"),
        ("train: 3\n", r"train: expected a mapping"),
        ("- 1\n- 2\n", r"top level must be a mapping"),
        ("train: [\n", r"exp\.yaml:2:1: invalid YAML"),
    ],
)
def test_bad_values_are_reported_with_file_and_key(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        load_config(Cfg, write(tmp_path, text))


def test_missing_required_key():
    with pytest.raises(ConfigError, match=r"missing required key 'root' for DataCfg"):
        config_from_dict(DataCfg, {}, "d.yaml")


def test_convert_value_reference_cases():
    # (value, type, expected) worked by hand
    cases = [
        ("3", int, 3),
        (3, float, 3.0),
        ("true", bool, True),
        ("OFF", bool, False),
        ("7", int | None, 7),
        ("None", int | None, None),
        (None, str | None, None),
        ([1, "2"], list[int], [1, 2]),
        ("[1, 2]", tuple[int, ...], (1, 2)),
        ((), tuple[int, ...], ()),
        ("", tuple[int, ...], ()),
        (5, str, "5"),
    ]
    for value, tp, expected in cases:
        got = convert_value(value, tp, "k")
        assert got == expected and type(got) is type(expected), (value, tp, got)
    with pytest.raises(ConfigError):
        convert_value(True, int, "k")  # bools are not ints here


def test_parse_overrides_nesting():
    assert parse_overrides(["a.b=1", "a.c=x=y", "d=2"]) == {"a": {"b": "1", "c": "x=y"}, "d": "2"}
    assert parse_overrides([]) == {}


def test_save_then_load_round_trip(tmp_path):
    cfg = load_config(
        Cfg, None, ["data.root=/d", "train.steps=[4,8]", "model.dropout=0.25", "train.ema_decay=0.996"]
    )
    save_config(cfg, tmp_path / "run" / "config.yaml")
    again = load_config(Cfg, tmp_path / "run" / "config.yaml")
    assert again == cfg
    assert config_to_dict(again)["train"]["steps"] == [4, 8]


def test_defaults_without_file():
    cfg = load_config(Cfg)
    assert cfg == Cfg()
    assert load_config(TrainConfig, None, ["max_iter=5"]).max_iter == 5  # a flat config works too


# --------------------------------------------------------------------------- hostile YAML and values


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("train:\n  lr: [\n", r"exp\.yaml:3:1: invalid YAML: .*expected the node content"),
        ("train:\n  lr: 0.1\n lr2: 1\n", r"exp\.yaml:3:2: invalid YAML"),
        ("- 1\n- 2\n", r"exp\.yaml: top level must be a mapping of sections, got a list"),
        ("42\n", r"exp\.yaml: top level must be a mapping of sections, got a int"),
        ("train:\n  lr: 0.1\n  max_iter: 3\n  lr: 0.2\n", r"exp\.yaml:4:3: .*duplicate key 'lr' \(lines 2 and 4\)"),
        ("train: {}\ndata:\n  root: /x\ntrain: {}\n", r"exp\.yaml:4:1: .*duplicate key 'train' \(lines 1 and 4\)"),
    ],
)
def test_yaml_errors_name_file_line_and_column(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        load_config(Cfg, write(tmp_path, text))


def test_yaml_merge_keys_are_not_duplicates(tmp_path):
    text = "data:\n  root: /x\ntrain:\n  <<: {lr: 0.1, max_iter: 3}\n  lr: 0.2\n"
    assert load_config(Cfg, write(tmp_path, text)).train.lr == 0.2  # an explicit key overrides a merged one


def test_not_utf8_config_is_a_config_error(tmp_path):
    p = tmp_path / "exp.yaml"
    p.write_bytes(b"train:\n  lr: \xff\n")
    with pytest.raises(ConfigError, match=r"exp\.yaml: not a UTF-8 text file"):
        load_config(Cfg, p)


@pytest.mark.parametrize(
    ("text", "overrides", "match"),
    [
        ("train:\n  lr: .nan\n", [], r"exp\.yaml: train\.lr: must be a finite number"),
        ("train:\n  lr: .inf\n", [], r"exp\.yaml: train\.lr: must be a finite number"),
        ("", ["train.lr=inf"], r"command line: train\.lr: must be a finite number, got 'inf'"),
        ("", ["train.clip_grad_norm=nan"], r"train\.clip_grad_norm: .*finite"),
        ("", ["model.dropout=nan"], r"model\.dropout: .*finite"),  # any float field, not only TrainConfig's
        ("train:\n  max_iter: -3\n", [], r"exp\.yaml: train\.max_iter: must be >= 1, got -3"),
        ("", ["train.max_iter=0"], r"train\.max_iter: must be >= 1, got 0"),
        ("", ["train.lr=0"], r"train\.lr: must be > 0, got 0\.0"),
        ("", ["train.lr=-0.1"], r"train\.lr: must be > 0, got -0\.1"),
        ("", ["train.checkpoint_period=-1"], r"train\.checkpoint_period: must be >= 0"),
        ("", ["train.eval_period=-1"], r"train\.eval_period: must be >= 0"),
        ("", ["train.log_period=-1"], r"train\.log_period: must be >= 1"),
        ("", ["train.warmup_iters=-5"], r"train\.warmup_iters: must be >= 0"),
        ("", ["train.keep_checkpoints=-1"], r"train\.keep_checkpoints: must be >= 0"),
        ("", ["train.weight_decay=-1e-4"], r"train\.weight_decay: must be >= 0"),
        ("", ["train.betas=[0.9,1.5]"], r"train\.betas: must be < 1, got 1\.5"),
        ("", ["train.steps=[0,5]"], r"train\.steps: must be >= 1, got 0"),
        ("", ["train.clip_grad_norm=0"], r"train\.clip_grad_norm: must be > 0"),
        ("", ["train.steps=[1,"], r"train\.steps: '\[1,' is not a list"),
    ],
)
def test_values_are_validated_with_the_key_in_the_message(tmp_path, text, overrides, match):
    p = write(tmp_path, "data:\n  root: /x\n" + text)
    with pytest.raises(ConfigError, match=match):
        load_config(Cfg, p, overrides)


def test_valid_edge_values_are_accepted():
    cfg = load_config(TrainConfig, None, ["max_iter=1", "checkpoint_period=0", "keep_checkpoints=0",
                                          "clip_grad_norm=null", "ema_decay=0.999", "min_lr_factor=1"])
    assert (cfg.max_iter, cfg.checkpoint_period, cfg.clip_grad_norm, cfg.ema_decay) == (1, 0, None, 0.999)


@dataclass
class TrainOnly:
    train: TrainConfig = field(default_factory=TrainConfig)


def test_yaml_strings_are_not_ints_but_command_line_strings_parse(tmp_path):
    quoted = tmp_path / "q.yaml"
    quoted.write_text('train: {max_iter: "1"}\n')
    with pytest.raises(ConfigError, match=rf"{quoted}: train.max_iter: expected int, got '1' \(a string"):
        load_config(TrainOnly, quoted)
    quoted.write_text('train: {progress: "false"}\n')
    with pytest.raises(ConfigError, match="train.progress: expected a bool"):
        load_config(TrainOnly, quoted)
    quoted.write_text("train: {lr: 1e-3}\n")  # YAML 1.1 reads this as a string: still a float
    cfg = load_config(TrainOnly, quoted, ["train.max_iter=7", "train.progress=false"])
    assert (cfg.train.lr, cfg.train.max_iter, cfg.train.progress) == (1e-3, 7, False)


def test_a_repeated_override_names_the_key():
    with pytest.raises(ConfigError, match="command line: train.max_iter is given more than once"):
        parse_overrides(["train.max_iter=1", "train.max_iter=2"])


@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_output_dir_is_refused(value):
    with pytest.raises(ConfigError, match="command line: train.output_dir: empty path"):
        config_from_dict(TrainConfig, {"output_dir": value}, "command line")
