"""A tiny training run for the engine tests (importable by path, and runnable as a script).

``python tests/engine/tiny_run.py OUT_DIR [--resume] [--sleep S] [train.key=value ...]``
trains a 2-layer MLP with dropout on deterministic random batches.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from omniseg.engine.config import TrainConfig, load_config
from omniseg.engine.optim import build_optimizer, build_scheduler
from omniseg.engine.trainer import Trainer, seed_everything


class TinyModel(nn.Module):
    """2-layer MLP regression; returns two loss terms and one logged (non-loss) metric."""

    def __init__(self, d_in: int = 4, d_hidden: int = 8, dropout: float = 0.1):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d_in, d_hidden), nn.Linear(d_hidden, 1)
        self.drop = nn.Dropout(dropout)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        pred = self.fc2(self.drop(torch.relu(self.fc1(batch["x"])))).squeeze(-1)
        err = pred - batch["y"]
        return {"loss_mse": (err**2).mean(), "loss_l1": 0.1 * err.abs().mean(), "max_err": err.abs().max()}


def make_batch(seed: int, pos: int, batch_size: int = 8, d_in: int = 4) -> dict[str, torch.Tensor]:
    """Batch number ``pos`` of stream ``seed``: a pure function of (seed, pos)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + pos)
    x = torch.randn(batch_size, d_in, generator=g)
    w = torch.arange(1, d_in + 1, dtype=torch.float32) / d_in
    return {"x": x, "y": x @ w + 0.05 * torch.randn(batch_size, generator=g)}


class RandomBatches:
    """Infinite deterministic batches with a JSON-able position (like a resumable sampler)."""

    def __init__(self, seed: int = 0, batch_size: int = 8, sleep: float = 0.0):
        self.seed, self.batch_size, self.sleep, self.pos = seed, batch_size, sleep, 0

    def __iter__(self):
        while True:
            if self.sleep:
                time.sleep(self.sleep)
            batch = make_batch(self.seed, self.pos, self.batch_size)
            self.pos += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"pos": self.pos}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.pos = int(state["pos"])


@dataclass
class RunConfig:
    train: TrainConfig = field(default_factory=TrainConfig)


def build(out_dir: str | Path, overrides: list[str], sleep: float = 0.0) -> Trainer:
    base = [
        f"train.output_dir={out_dir}",
        "train.progress=false",
        "train.log_period=1",
        "train.deterministic=true",
    ]
    cfg = load_config(RunConfig, None, base + list(overrides))
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    model = TinyModel()
    opt = build_optimizer(model, cfg.train)
    return Trainer(
        model,
        opt,
        build_scheduler(opt, cfg.train),
        RandomBatches(cfg.train.seed, sleep=sleep),
        cfg.train,
        run_config=cfg,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("out_dir")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("overrides", nargs="*")
    args = p.parse_intermixed_args(argv)
    trainer = build(args.out_dir, args.overrides, args.sleep)
    if args.resume:
        trainer.resume()
    trainer.train()
    return 0


if __name__ == "__main__":
    sys.exit(main())
