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


def losses_and_grads(model: nn.Module, batch, bf16: bool) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``model(batch)``'s loss terms and the gradient of their sum (all parameters, flattened), the forward under
    CPU bf16 autocast when ``bf16`` (as ``train.amp=bf16``); the same seed either way."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(3)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        losses = {k: v for k, v in model(batch).items() if k.startswith("loss")}
    sum(losses.values()).backward()
    grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return {k: v.detach() for k, v in losses.items()}, grad


@pytest.fixture(name="assert_bf16_close")
def _assert_bf16_close_fixture():
    """Check that ``model``'s losses under bf16 autocast are fp32 and within ``rel`` of the fp32 run's, and that the
    two gradients point the same way (cosine >= ``cos``)."""

    def check(model: nn.Module, batch, rel: float = 0.03, cos: float = 0.95) -> None:
        (ref, g32), (got, g16) = losses_and_grads(model, batch, False), losses_and_grads(model, batch, True)
        assert set(got) == set(ref) and ref
        for k in ref:
            assert got[k].dtype == torch.float32, (k, got[k].dtype)
            assert abs(float(got[k]) - float(ref[k])) <= rel * abs(float(ref[k])) + 1e-4, (k, got[k], ref[k])
        assert float(torch.nn.functional.cosine_similarity(g32, g16, dim=0)) >= cos

    return check
