"""Normalization layers for backbones and heads: BN, frozen BN, GroupNorm, SyncBN.

``FrozenBatchNorm2d`` keeps the four BatchNorm buffer names (``weight``, ``bias``,
``running_mean``, ``running_var``) so an ImageNet checkpoint saved from a torchvision
ResNet (``bn1.weight``, ``layer1.0.bn1.running_var`` ...) loads into it unchanged; the
``num_batches_tracked`` entry such checkpoints also carry is accepted and ignored.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import torch
from torch import nn

logger = logging.getLogger(__name__)

NormKind = Literal["BN", "FrozenBN", "GN", "SyncBN", "none"]
NORM_KINDS: tuple[str, ...] = ("BN", "FrozenBN", "GN", "SyncBN", "none")


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters (all buffers, no parameters).

    Computes ``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias`` per channel,
    in train and eval mode alike.

    Args:
        num_features: number of channels C.
        eps: added to the variance, as in ``nn.BatchNorm2d`` (1e-5).
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # BatchNorm checkpoints carry a step counter that a frozen layer has no use for.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize.

        Args:
            x: B x C x H x W (any trailing spatial dims).

        Returns:
            Same shape and dtype as ``x``.
        """
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * scale.view(shape).to(x.dtype) + shift.view(shape).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"

    @classmethod
    def from_batchnorm(cls, bn: nn.modules.batchnorm._BatchNorm) -> FrozenBatchNorm2d:
        """A frozen copy of a (Sync)BatchNorm layer's current statistics and affine terms."""
        tensors = list(bn.parameters()) + list(bn.buffers())
        frozen = cls(bn.num_features, eps=bn.eps)
        if tensors:
            frozen = frozen.to(device=tensors[0].device)
        with torch.no_grad():
            if bn.affine:
                frozen.weight.copy_(bn.weight)
                frozen.bias.copy_(bn.bias)
            if bn.track_running_stats:
                frozen.running_mean.copy_(bn.running_mean)
                frozen.running_var.copy_(bn.running_var)
        return frozen


def group_norm_groups(channels: int, max_groups: int = 32) -> int:
    """The largest group count <= ``max_groups`` that divides ``channels`` (32 for 256 channels)."""
    for groups in range(min(max_groups, channels), 0, -1):
        if channels % groups == 0:
            return groups
    raise ValueError(f"channels must be positive, got {channels}")


def build_norm(kind: NormKind, channels: int, *, num_groups: int = 32) -> nn.Module:
    """Build a 2-D normalization layer.

    Args:
        kind: "BN" (``nn.BatchNorm2d``), "FrozenBN" (:class:`FrozenBatchNorm2d`), "GN"
            (``nn.GroupNorm`` with the largest group count <= ``num_groups`` dividing
            ``channels``), "SyncBN" (``nn.SyncBatchNorm``; needs an initialized process group
            when run in train mode) or "none" (``nn.Identity``).
        channels: number of channels C.
        num_groups: upper bound on GroupNorm groups.
    """
    if kind == "BN":
        return nn.BatchNorm2d(channels)
    if kind == "FrozenBN":
        return FrozenBatchNorm2d(channels)
    if kind == "GN":
        return nn.GroupNorm(group_norm_groups(channels, num_groups), channels)
    if kind == "SyncBN":
        return nn.SyncBatchNorm(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm kind {kind!r}; expected one of {NORM_KINDS}")


def convert_sync_batchnorm(module: nn.Module, *, device: str | torch.device | None = None) -> nn.Module:
    """Replace every BatchNorm layer (not frozen ones) with ``nn.SyncBatchNorm`` for DDP.

    Statistics and affine terms are copied. Call before wrapping the model in
    ``DistributedDataParallel``. PyTorch's SyncBatchNorm refuses CPU tensors in train mode
    once a process group is initialized, so with ``device`` of type "cpu" (e.g. gloo DDP in CI)
    the module is returned unchanged: each process keeps its own BatchNorm statistics.
    """
    if device is not None and torch.device(device).type == "cpu":
        logger.info("convert_sync_batchnorm: device is CPU, keeping per-process BatchNorm")
        return module
    return nn.SyncBatchNorm.convert_sync_batchnorm(module)


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every (Sync)BatchNorm layer inside ``module`` with :class:`FrozenBatchNorm2d`.

    Returns the converted module (a new object when ``module`` itself is a BatchNorm layer).
    """
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return FrozenBatchNorm2d.from_batchnorm(module)
    for name, child in module.named_children():
        new_child = freeze_batchnorm(child)
        if new_child is not child:
            setattr(module, name, new_child)
    return module
