from __future__ import annotations

import pytest
import torch
from torch import nn

from omniseg.engine.ema import ModelEMA


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))


def test_ema_matches_reference_over_updates():
    model = tiny()
    ema = ModelEMA(model, decay=0.9)
    ref = {k: v.clone().double() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for step in range(4):
        model.train()
        out = model(torch.randn(5, 3)).sum()  # BN updates running stats in train mode
        opt.zero_grad()
        out.backward()
        opt.step()
        ema.update(model)
        for k, v in model.state_dict().items():  # slow reference, in float64
            if v.dtype.is_floating_point:
                ref[k] = 0.9 * ref[k] + 0.1 * v.double()
            else:
                ref[k] = v.clone()
        for k, v in ema.state_dict().items():
            torch.testing.assert_close(
                v.double(), ref[k].double(), rtol=1e-5, atol=1e-6, msg=f"{k} at step {step}"
            )
    assert ema.state_dict()["1.num_batches_tracked"].item() == 4  # integer buffer copied, not averaged
    assert ema.num_updates == 4


def test_ema_is_frozen_and_separate():
    model = tiny()
    ema = ModelEMA(model, decay=0.5)
    assert not ema.module.training
    assert all(not p.requires_grad for p in ema.module.parameters())
    with torch.no_grad():
        model[0].weight.add_(1.0)
    assert not torch.equal(ema.module[0].weight, model[0].weight)  # a copy, not a view


def test_ema_hand_values_and_warmup():
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = ModelEMA(model, decay=0.996)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)
    assert ema.module.weight.item() == pytest.approx(0.004)  # 0.996 * 0 + 0.004 * 1
    ema.update(model)
    assert ema.module.weight.item() == pytest.approx(0.004 + 0.996 * 0.004)
    warm = ModelEMA(model, decay=0.99, warmup=10)
    assert warm.current_decay() == pytest.approx(1 / 10)
    warm.num_updates = 1000
    assert warm.current_decay() == pytest.approx(0.99)
    with pytest.raises(ValueError, match="decay"):
        ModelEMA(model, decay=1.0)


def test_ema_state_round_trip():
    model = tiny()
    ema = ModelEMA(model, decay=0.9)
    with torch.no_grad():
        model[0].weight.mul_(2)
    ema.update(model)
    other = ModelEMA(tiny(), decay=0.9)
    other.load_state_dict(ema.state_dict(), ema.extra_state())
    assert other.num_updates == 1
    for k, v in ema.state_dict().items():
        assert torch.equal(v, other.state_dict()[k])
