"""A small, model-agnostic training loop.

Contract: ``model(batch) -> dict[str, Tensor]``; entries whose key starts with "loss" are
summed into the objective, the rest are only logged. Batches come from any iterable
(re-iterated when exhausted, ``set_epoch`` called if it has one) and are moved to the
device (tensors, dicts, lists, or objects with ``.to(device)``).

Per step: forward under autocast (bf16 / fp16 + GradScaler), a finite check of every
loss term (all ranks agree before anyone calls backward, so DDP never hangs), backward,
optional gradient clipping, optimizer + schedule step, EMA update. Periodically: a JSONL
metric record, a checkpoint (rank 0, atomic; see :mod:`omniseg.engine.checkpoint`; the final
step is always saved, ``checkpoint_period=0`` saves only it), and the evaluation callback. ``resume()`` continues a crashed run from its latest checkpoint:
weights, optimizer, schedule, grad scaler, EMA, data sampler and per-rank RNG states.
"""

from __future__ import annotations

import os
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from omniseg.engine import distributed as dist_utils
from omniseg.engine.checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    capture_rng_state,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from omniseg.engine.config import ConfigError, TrainConfig, config_to_dict, save_config
from omniseg.engine.ema import ModelEMA, unwrap_model
from omniseg.engine.logging import MetricLog, ProgressLines, make_progress
from omniseg.engine.precision import bf16_warning
from omniseg.engine.threads import apply_threads
from omniseg.errors import UserError

EvalFn = Callable[[nn.Module], dict[str, float]]


class NonFiniteLossError(UserError, FloatingPointError):
    """Training stopped on a NaN/Inf loss or gradient; no checkpoint was written for it."""


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (all devices); optionally force deterministic kernels.

    Deterministic mode calls ``torch.use_deterministic_algorithms(True, warn_only=True)``
    (ops without a deterministic kernel warn instead of failing), turns off cuDNN
    autotuning and sets the cuBLAS workspace variable that CUDA needs for it.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def resolve_device(spec: str = "auto", key: str = "train.device") -> torch.device:
    """Device for ``spec``: "auto" is cuda:LOCAL_RANK when CUDA is available, else cpu.

    Raises:
        ConfigError: naming ``key`` for a device name torch does not know or a device this
            machine does not have (e.g. "cuda" without CUDA).
    """
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", dist_utils.get_local_rank())
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError):
        raise ConfigError(f"{key}: {spec!r} is not a device (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{key}: {spec!r}, but CUDA is not available on this machine (use auto or cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"{key}: {spec!r}, but this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{key}: {spec!r} is not available on this machine (use auto or cpu)")
    return device


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Tensors, (nested) dicts/lists/tuples, and objects with ``.to(device)`` moved to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)) and not hasattr(batch, "_fields"):
        return type(batch)(move_to_device(v, device) for v in batch)
    if hasattr(batch, "to") and callable(batch.to):
        return batch.to(device)
    return batch


def total_loss(losses: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of the entries whose key starts with "loss" (each reduced to a scalar)."""
    terms = [v.float().sum() for k, v in losses.items() if k.startswith("loss")]
    if not terms:
        raise ValueError(f"model returned no loss terms (keys starting with 'loss'); got {sorted(losses)}")
    return torch.stack(terms).sum()


class Trainer:
    """Runs ``cfg.max_iter`` optimizer steps of ``model`` on batches from ``data``.

    Args:
        model: returns a dict of loss tensors for a batch. Wrapped in DDP when the process
            group is initialized (see :func:`omniseg.engine.distributed.init_distributed`).
        optimizer: e.g. from :func:`omniseg.engine.optim.build_optimizer`.
        scheduler: object with ``step()``, ``state_dict()``, ``load_state_dict()``.
        data: iterable of batches, or a zero-argument callable returning an iterator. If it
            has ``state_dict()``/``load_state_dict()`` (JSON-able), that state is checkpointed.
        cfg: the engine config.
        eval_fn: called on every rank with the model (EMA weights if ``cfg.eval_ema``);
            returns metrics (rank 0's are logged). Gather per-rank predictions inside it
            with :func:`omniseg.engine.distributed.all_gather_object`.
        ema: an EMA to update after each step; built from ``cfg.ema_decay`` if None.
        run_config: the full experiment config saved with checkpoints (default: ``cfg``).
        run_info: JSON-able description of the run kept in every checkpoint's ``state.json``
            extras (``omniseg.recipes.contract.RunInfo``: recipe, categories, text encoder).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        data: Iterable | Callable[[], Iterator],
        cfg: TrainConfig,
        *,
        eval_fn: EvalFn | None = None,
        ema: ModelEMA | None = None,
        run_config: Any = None,
        run_info: dict[str, Any] | None = None,
    ):
        apply_threads(cfg.threads)  # before any heavy torch work; the CLI has usually done it already
        self.cfg, self.optimizer, self.scheduler = cfg, optimizer, scheduler
        self.data, self.eval_fn = data, eval_fn
        self.device = resolve_device(cfg.device)
        self.rank, self.world = dist_utils.get_rank(), dist_utils.get_world_size()
        self.is_main = self.rank == 0
        if cfg.amp == "fp16" and self.device.type != "cuda":
            raise ValueError("amp='fp16' needs a CUDA device; use amp='bf16' (or 'none') on CPU")
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp)
        slow_bf16 = bf16_warning(cfg.amp, self.device)
        if slow_bf16 and self.is_main:
            print(slow_bf16, file=sys.stderr)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.amp == "fp16")
        model.to(self.device)
        self.model = dist_utils.wrap_ddp(model, self.device, cfg.find_unused_parameters)
        if ema is None and cfg.ema_decay is not None:
            ema = ModelEMA(model, cfg.ema_decay)
        if ema is not None:
            ema.module.to(self.device)
        self.ema = ema
        self.run_config = run_config if run_config is not None else cfg
        self.run_info = run_info
        self.output_dir = Path(cfg.output_dir)
        self.ckpt_dir = self.output_dir / "checkpoints"
        self.log = MetricLog(self.output_dir / "metrics.jsonl", enabled=self.is_main)
        self.step = 0
        self.epoch = 0
        self._iter: Iterator | None = None
        self.last_eval: dict[str, float] = {}
        self._lines: ProgressLines | None = None  # set by train()

    # ------------------------------------------------------------------ data

    def _new_iter(self) -> Iterator:
        if hasattr(self.data, "set_epoch"):
            self.data.set_epoch(self.epoch)
        if callable(self.data) and not hasattr(self.data, "__iter__"):
            return iter(self.data())
        return iter(self.data)

    def _next_batch(self) -> Any:
        if self._iter is None:
            self._iter = self._new_iter()
        for _ in range(2):
            try:
                return next(self._iter)
            except StopIteration:
                self.epoch += 1
                self._iter = self._new_iter()
        raise RuntimeError("the data iterable yielded no batches")

    # ------------------------------------------------------------------ checkpoints

    def resume(self, path: str | os.PathLike | None = None) -> bool:
        """Restore the latest checkpoint of this run (or ``path``); False if there is none.

        A damaged latest checkpoint (unreadable weights or state) is reported on stderr and the
        previous complete one is used instead; ``path`` given, or none left: :class:`CheckpointError`.
        A checkpoint that does not fit the model (:class:`CheckpointMismatchError`) is raised at once.
        """
        if path is not None:
            candidates = [Path(path)]
        else:
            latest = latest_checkpoint(self.ckpt_dir)
            if latest is None:
                return False
            candidates = [latest, *(p for _, p in reversed(list_checkpoints(self.ckpt_dir)) if p != latest)]
        for i, ckpt in enumerate(candidates):
            try:
                state = load_checkpoint(
                    ckpt,
                    model=self.model,
                    optimizer=self.optimizer,
                    scheduler=self.scheduler,
                    ema=self.ema,
                    scaler=self.scaler,
                )
                break
            except CheckpointMismatchError:
                raise  # another model or optimizer: an older checkpoint would not fit either
            except CheckpointError as e:
                if i + 1 == len(candidates):
                    raise
                if self.is_main:
                    print(f"warning: skipping damaged checkpoint {ckpt}: {e}; "
                          f"resuming from {candidates[i + 1]} instead", file=sys.stderr)
        self.step = int(state["step"])
        extra = state.get("extra") or {}
        self.epoch = int(extra.get("epoch", 0))
        data_states = extra.get("data_states")
        if data_states and hasattr(self.data, "load_state_dict"):
            self.data.load_state_dict(data_states[self.rank % len(data_states)])
        rngs = state.get("rng")
        if rngs:
            restore_rng_state(rngs[self.rank % len(rngs)])
        self._iter = None
        return True

    def save(self) -> Path | None:
        """Checkpoint the current step (a collective: call on every rank; rank 0 writes)."""
        rngs = dist_utils.all_gather_object(capture_rng_state())
        data_state = self.data.state_dict() if hasattr(self.data, "state_dict") else None
        data_states = dist_utils.all_gather_object(data_state) if data_state is not None else None
        path = None
        if self.is_main:
            path = save_checkpoint(
                self.ckpt_dir,
                self.step,
                model=self.model,
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                ema=self.ema,
                scaler=self.scaler if self.scaler.is_enabled() else None,
                rng_states=rngs,
                config=config_to_dict(self.run_config),
                extra={"epoch": self.epoch, "data_states": data_states, "world_size": self.world,
                       **({"run_info": self.run_info} if self.run_info is not None else {})},
                keep=self.cfg.keep_checkpoints,
            )
        dist_utils.barrier()
        return path

    # ------------------------------------------------------------------ steps

    def _raise_non_finite(self, what: str, values: dict[str, float]) -> None:
        bad = {k: v for k, v in values.items() if not np.isfinite(v)}
        terms = {k: v for k, v in bad.items() if k != "loss"} or bad  # name the culprit, not only the sum
        here = ", ".join(f"{k}={v}" for k, v in terms.items()) if terms else "on another rank"
        latest = latest_checkpoint(self.ckpt_dir)
        raise NonFiniteLossError(
            f"non-finite {what} at step {self.step + 1} (rank {self.rank}): {here}; training stopped "
            f"({f'latest good checkpoint: {latest}' if latest else 'no checkpoint written yet'}); try a lower "
            "train.lr" + (" or set train.clip_grad_norm (e.g. 1.0)" if self.cfg.clip_grad_norm is None else "")
        )

    def run_step(self, batch: Any) -> dict[str, float]:
        """One optimizer update on ``batch``; returns the loss terms as floats."""
        batch = move_to_device(batch, self.device)
        with torch.autocast(
            self.device.type, dtype=self.amp_dtype or torch.bfloat16, enabled=self.amp_dtype is not None
        ):
            losses = self.model(batch)
        loss = total_loss(losses)
        scalars = [v.detach().float().sum() for v in losses.values()] + [loss.detach()]
        values = dict(zip([*losses, "loss"], torch.stack(scalars).tolist()))  # one device sync
        if dist_utils.any_rank_true(not np.isfinite(values["loss"]), self.device):
            self._raise_non_finite("loss", values)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.clip_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
            norm = float(torch.nn.utils.clip_grad_norm_(params, self.cfg.clip_grad_norm))
            values["grad_norm"] = norm
            if not self.scaler.is_enabled() and not np.isfinite(norm):  # fp16 skips such steps itself
                self._raise_non_finite("gradient norm", {"grad_norm": norm})
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        after = getattr(unwrap_model(self.model), "after_optimizer_step", None)
        if after is not None:  # a model's own state that follows its weights (e.g. MAL's EMA teacher)
            after()
        self.step += 1
        return values

    def evaluate(self) -> dict[str, float]:
        """Run ``eval_fn`` (on every rank) and log its metrics; {} without an eval_fn."""
        if self.eval_fn is None:
            return {}
        target = self.ema.module if (self.cfg.eval_ema and self.ema is not None) else unwrap_model(self.model)
        was_training = target.training
        target.eval()
        with torch.no_grad():
            results = dict(self.eval_fn(target))
        target.train(was_training)
        self.last_eval = results
        self.log.write({"step": self.step, **{f"eval/{k}": v for k, v in results.items()}})
        if self._lines is not None:
            self._lines.evaluation(self.step, results)
        return results

    def train(self) -> dict[str, Any]:
        """Train until ``cfg.max_iter``; returns {"step", "losses" (last logged), "eval"}."""
        cfg = self.cfg
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.run_config, self.output_dir / "config.yaml")
        self.log.truncate_after(self.step)  # fresh run: empty log; resumed run: drop replayed steps
        self.model.train()
        bar = make_progress(cfg.max_iter, self.step, enabled=cfg.progress and self.is_main)
        self._lines = ProgressLines(str(self.output_dir), cfg.max_iter, enabled=self.is_main and bar.disable)
        last: dict[str, float] = {}
        t0, start = time.perf_counter(), self.step
        window: dict[str, float] = {}
        window_n = 0
        try:
            while self.step < cfg.max_iter:
                lr = self.optimizer.param_groups[0]["lr"]
                values = self.run_step(self._next_batch())
                for k, v in values.items():  # logged values are means over the log period
                    window[k] = window.get(k, 0.0) + v
                window_n += 1
                bar.update(1)
                done = self.step == cfg.max_iter
                if self.step % max(cfg.log_period, 1) == 0 or done:
                    last = dist_utils.reduce_mean({k: v / window_n for k, v in window.items()}, self.device)
                    window, window_n = {}, 0
                    per_iter = (time.perf_counter() - t0) / (self.step - start)
                    record = {"step": self.step, "lr": lr, **last, "s_per_iter": per_iter}
                    record["eta_s"] = per_iter * (cfg.max_iter - self.step)
                    self.log.write(record)
                    self._lines.step(self.step, record)
                    bar.set_postfix(loss=f"{last['loss']:.4g}", lr=f"{lr:.3g}")
                if done or (cfg.checkpoint_period > 0 and self.step % cfg.checkpoint_period == 0):
                    self.save()
                if cfg.eval_period > 0 and self.step % cfg.eval_period == 0 and not done:
                    self.evaluate()
            if self.eval_fn is not None:
                self.evaluate()
        finally:
            bar.close()
            self.log.close()
        return {"step": self.step, "losses": last, "eval": self.last_eval}
