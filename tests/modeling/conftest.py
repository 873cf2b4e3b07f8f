"""Shared helpers of the modeling tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn


def norm_by_hand(layer: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """What an eval-mode norm layer computes, written out: (y - mean) / sqrt(var + eps) * w + b."""
    if isinstance(layer, nn.Identity):
        return y
    c = (1, -1, 1, 1)
    if isinstance(layer, nn.GroupNorm):  # statistics of each sample's channel group
        g = y.reshape(y.shape[0], layer.num_groups, -1)
        mean = g.mean(-1, keepdim=True)
        var = ((g - mean) ** 2).mean(-1, keepdim=True)
        y = ((g - mean) / torch.sqrt(var + layer.eps)).reshape(y.shape)
    else:  # BatchNorm in eval mode and FrozenBN: the stored running statistics
        y = (y - layer.running_mean.view(c)) / torch.sqrt(layer.running_var.view(c) + layer.eps)
    return y * layer.weight.view(c) + layer.bias.view(c)


@pytest.fixture(name="norm_by_hand")
def _norm_by_hand_fixture():
    """The slow, written-out eval-mode normalization (:func:`norm_by_hand`)."""
    return norm_by_hand
