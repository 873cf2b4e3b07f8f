"""engine/trainer: torch threads per process (train.threads) and what a run prints where no terminal is."""

from __future__ import annotations

import functools
import io
import re

import pytest
import torch
from torch import nn

import omniseg.engine.threads
from omniseg.engine import trainer as trainer_module
from omniseg.engine.config import ConfigError, TrainConfig, config_from_dict
from omniseg.engine.logging import ProgressLines, read_metric_log
from omniseg.engine.optim import build_optimizer, build_scheduler
from omniseg.engine.trainer import Trainer, seed_everything


class Regression(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 1)

    def forward(self, batch):
        x, y = batch
        return {"loss": ((self.lin(x) - y) ** 2).mean()}


def _trainer(tmp_path, **cfg_fields) -> Trainer:
    cfg = TrainConfig(output_dir=str(tmp_path / "run"), max_iter=4, lr=0.01, log_period=2, checkpoint_period=0,
                      **cfg_fields)
    seed_everything(0)
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, 3, generator=g), torch.randn(8, 1, generator=g)) for _ in range(3)]
    model = Regression()
    opt = build_optimizer(model, cfg)
    return Trainer(model, opt, build_scheduler(opt, cfg), data, cfg)


def test_train_threads_sets_torch_threads(tmp_path, threads_restored):
    torch.set_num_threads(1)
    _trainer(tmp_path, threads=2)
    assert torch.get_num_threads() == 2
    torch.set_num_threads(1)
    _trainer(tmp_path)  # automatic after an explicit choice: the explicit one stands
    assert torch.get_num_threads() == 1 and omniseg.engine.threads._applied == 2


def test_train_threads_is_bounded():
    with pytest.raises(ConfigError, match=r"threads: must be >= 1, got 0"):
        config_from_dict(TrainConfig, {"threads": 0}, "train")


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


LINE = re.compile(r"^(\S+): step (\d+)/4 \((\d+)%\) loss (\S+) lr (\S+) (\S+) s/it, (\d+m\d\ds) left$")


def test_plain_lines_on_a_non_terminal_stream(tmp_path, monkeypatch):
    """stderr redirected to a file (not a TTY): a plain line per logged step (throttle 0 s here), no bar."""
    monkeypatch.setattr(trainer_module, "ProgressLines", functools.partial(ProgressLines, every_s=0.0))
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    _trainer(tmp_path, progress=True).train()
    text = err.getvalue()
    assert "\r" not in text and "it/s" not in text  # no tqdm bar written into the log
    lines = text.splitlines()
    log = read_metric_log(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in log] == [2, 4] and len(lines) == 2
    for line, record, pct in zip(lines, log, ("50", "100")):
        m = LINE.match(line)
        assert m, line
        assert m.group(1) == str(tmp_path / "run") and int(m.group(2)) == record["step"] and m.group(3) == pct
        assert float(m.group(4)) == pytest.approx(record["loss"], rel=1e-3)
        assert float(m.group(5)) == pytest.approx(record["lr"], rel=1e-2)
    assert LINE.match(lines[-1]).group(7) == "0m00s"  # nothing left at the last step


def test_a_terminal_gets_the_bar_and_no_plain_lines(tmp_path, monkeypatch):
    monkeypatch.setattr(trainer_module, "ProgressLines", functools.partial(ProgressLines, every_s=0.0))
    tty = TTY()
    monkeypatch.setattr("sys.stderr", tty)
    _trainer(tmp_path, progress=True).train()
    text = tty.getvalue()
    assert "4/4" in text and "\r" in text  # tqdm redraws its line
    assert not any(LINE.match(ln) for ln in text.replace("\r", "\n").splitlines())


class Follower(Regression):
    """Records its weight each time the trainer calls the after-step hook."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def after_optimizer_step(self) -> None:
        self.seen.append(self.lin.weight.detach().clone())


def test_model_after_optimizer_step_sees_each_updated_weight(tmp_path):
    cfg = TrainConfig(output_dir=str(tmp_path / "run"), max_iter=3, lr=0.01, log_period=1, checkpoint_period=0)
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, 3, generator=g), torch.randn(8, 1, generator=g)) for _ in range(3)]
    model = Follower()
    opt = build_optimizer(model, cfg)
    t = Trainer(model, opt, build_scheduler(opt, cfg), data, cfg)
    before = model.lin.weight.detach().clone()
    weights = []
    for batch in data:
        t.run_step(batch)
        weights.append(model.lin.weight.detach().clone())
    assert len(model.seen) == 3 and not torch.equal(model.seen[0], before)
    assert all(torch.equal(a, b) for a, b in zip(model.seen, weights))
