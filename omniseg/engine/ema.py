"""Exponential moving average (EMA) of model weights.

MAL (mal-mask-auto-labeler Sec. 3.2, "Exponential moving average (EMA) teacher") updates
its teacher network as an EMA of the task network, like MoCo, with momentum 0.996
(Sec. 4.2, Phase 1): ``teacher = decay * teacher + (1 - decay) * student`` after every
optimizer step. The same class gives "EMA weights" for evaluation of any model.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel wrappers."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


class ModelEMA:
    """A frozen copy of a model whose floating-point weights track an EMA of the live model.

    Args:
        model: the live (student) model; DDP wrappers are unwrapped.
        decay: EMA momentum in [0, 1); 0.996 in MAL.
        warmup: if > 0, the effective decay is ``min(decay, (1 + n) / (warmup + n))``
            after ``n`` updates, so early teachers are not stuck at the random init.

    Floating-point parameters and buffers are averaged; integer buffers (e.g. BatchNorm's
    ``num_batches_tracked``) are copied.
    """

    def __init__(self, model: nn.Module, decay: float = 0.996, warmup: int = 0):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.module = copy.deepcopy(unwrap_model(model)).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.warmup, self.num_updates = decay, warmup, 0

    def current_decay(self) -> float:
        if self.warmup <= 0:
            return self.decay
        return min(self.decay, (1.0 + self.num_updates) / (self.warmup + self.num_updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step towards ``model``'s current weights."""
        d = self.current_decay()
        live = unwrap_model(model).state_dict()
        for name, ema_t in self.module.state_dict().items():
            src = live[name].detach()
            if ema_t.dtype.is_floating_point:
                ema_t.mul_(d).add_(src.to(ema_t.dtype), alpha=1.0 - d)
            else:
                ema_t.copy_(src)
        self.num_updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The EMA weights (tensors only; counters go in :meth:`extra_state`)."""
        return self.module.state_dict()

    def extra_state(self) -> dict[str, float | int]:
        return {"decay": self.decay, "warmup": self.warmup, "num_updates": self.num_updates}

    def load_state_dict(self, weights: dict[str, torch.Tensor], extra: dict | None = None) -> None:
        self.module.load_state_dict(weights, strict=True)
        if extra:
            self.num_updates = int(extra.get("num_updates", 0))
