from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from omniseg.engine.config import TrainConfig
from omniseg.engine.optim import build_optimizer, build_scheduler, lr_factor, param_groups


def reference_factor(it: int, cfg: TrainConfig) -> float:
    """Slow, obvious version: compute the main schedule, then the warm-up ramp, by cases."""
    if cfg.schedule == "constant":
        main = 1.0
    elif cfg.schedule == "step":
        main = 1.0
        for s in cfg.steps:
            if it >= s:
                main = main * cfg.gamma
    else:
        progress = min(it, cfg.max_iter) / cfg.max_iter
        cos01 = (math.cos(math.pi * progress) + 1) / 2
        main = cfg.min_lr_factor + (1 - cfg.min_lr_factor) * cos01
    if it < cfg.warmup_iters:
        ramp = cfg.warmup_factor + (1 - cfg.warmup_factor) * it / cfg.warmup_iters
        main = main * ramp
    return main


@pytest.mark.parametrize(
    "cfg",
    [
        TrainConfig(schedule="cosine", max_iter=50, warmup_iters=10, warmup_factor=0.01),
        TrainConfig(schedule="cosine", max_iter=50, warmup_iters=0, min_lr_factor=0.1),
        TrainConfig(schedule="step", max_iter=50, warmup_iters=5, steps=(20, 40), gamma=0.1),
        TrainConfig(schedule="step", max_iter=50, steps=(40, 20), gamma=0.5),  # unsorted milestones
        TrainConfig(schedule="constant", max_iter=50, warmup_iters=3),
    ],
)
def test_lr_factor_matches_reference(cfg):
    for it in range(0, 60):
        assert lr_factor(it, cfg) == pytest.approx(reference_factor(it, cfg), rel=1e-12, abs=1e-15), it


def test_lr_factor_hand_values():
    cfg = TrainConfig(schedule="cosine", max_iter=100, warmup_iters=10, warmup_factor=0.0)
    assert lr_factor(0, cfg) == 0.0
    assert lr_factor(5, cfg) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.05)) / 2)
    assert lr_factor(50, cfg) == pytest.approx(0.5)  # half-way down the cosine
    assert lr_factor(100, cfg) == pytest.approx(0.0)
    assert lr_factor(150, cfg) == pytest.approx(0.0)  # clamped past the end
    step = TrainConfig(schedule="step", steps=(60, 80), gamma=0.1)  # Mask^X R-CNN's 0.02 -> 0.002 -> 0.0002
    assert [lr_factor(i, step) for i in (59, 60, 79, 80)] == pytest.approx([1.0, 0.1, 0.1, 0.01])


def test_scheduler_sets_lr_per_group_and_round_trips():
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 1))
    cfg = TrainConfig(lr=0.2, max_iter=20, warmup_iters=4, schedule="cosine")
    opt = build_optimizer(model, cfg)
    opt.param_groups[1]["lr"] = opt.param_groups[1]["initial_lr"] = 0.02  # a 10x lower group
    sched = build_scheduler(opt, cfg)
    seen = []
    for it in range(7):
        seen.append([g["lr"] for g in opt.param_groups])
        assert seen[-1] == pytest.approx([0.2 * reference_factor(it, cfg), 0.02 * reference_factor(it, cfg)])
        sched.step()
    state = sched.state_dict()
    assert state == {"iter": 7}
    opt2 = build_optimizer(model, cfg)
    opt2.param_groups[1]["lr"] = 0.02
    sched2 = build_scheduler(opt2, cfg)
    sched2.load_state_dict(state)
    assert sched2.get_last_lr() == pytest.approx(sched.get_last_lr())


def test_param_groups_exclude_norm_and_bias_from_decay():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    model[3].weight.requires_grad_(False)  # frozen: left out entirely
    groups = param_groups(model, weight_decay=1e-4)
    decay_ids = {id(p) for p in groups[0]["params"]}
    no_decay_ids = {id(p) for p in groups[1]["params"]}
    assert decay_ids == {id(model[0].weight)}
    assert no_decay_ids == {id(model[0].bias), id(model[1].weight), id(model[1].bias), id(model[3].bias)}
    assert groups[0]["weight_decay"] == 1e-4 and groups[1]["weight_decay"] == 0.0
    one = param_groups(model, weight_decay=1e-4, no_decay_norm_and_bias=False)
    assert len(one) == 1 and len(one[0]["params"]) == 5  # all trainable ones


def test_shared_parameter_counted_once():
    lin = nn.Linear(2, 2)
    model = nn.Sequential(lin, lin)
    groups = param_groups(model, 0.1)
    assert sum(len(g["params"]) for g in groups) == 2


def test_build_optimizer_kinds_and_sgd_update_by_hand():
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(2.0)
    cfg = TrainConfig(optimizer="sgd", lr=0.1, momentum=0.0, weight_decay=0.0)
    opt = build_optimizer(model, cfg)
    assert isinstance(opt, torch.optim.SGD)
    loss = (model(torch.tensor([[3.0]])) ** 2).sum()  # d/dw (3w)^2 = 18w = 36
    loss.backward()
    opt.step()
    assert model.weight.item() == pytest.approx(2.0 - 0.1 * 36.0)
    adam = build_optimizer(model, TrainConfig(optimizer="adamw", lr=1e-3, betas=(0.9, 0.9)))
    assert isinstance(adam, torch.optim.AdamW) and adam.param_groups[0]["betas"] == (0.9, 0.9)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(nn.ReLU(), cfg)


def _optimizer_run(impl: str | None, cfg: TrainConfig, steps: int = 6) -> list[torch.Tensor]:
    """``steps`` updates of a small conv/norm/linear model (decay and no-decay groups, a frozen
    parameter, a parameter without a gradient, NaN-free random gradients, lr changed every step)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8), nn.Flatten(), nn.Linear(8 * 4 * 4, 5),
                          nn.Linear(5, 2))
    model[4].weight.requires_grad_(False)
    opt = build_optimizer(model, cfg, impl)
    sched = build_scheduler(opt, cfg)
    g = torch.Generator().manual_seed(1)
    for i in range(steps):
        for j, p in enumerate(model.parameters()):
            # the first linear's bias gets no gradient on odd steps (optimizers skip p.grad None)
            p.grad = None if (not p.requires_grad or (j == 5 and i % 2)) else torch.randn(p.shape, generator=g)
        opt.step()
        sched.step()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_foreach_optimizer_equals_single_tensor_exactly(kind):
    """The default multi-tensor path takes exactly the single-tensor path's steps (bit for bit)."""
    cfg = TrainConfig(optimizer=kind, lr=0.05, momentum=0.9, weight_decay=1e-2, max_iter=6, warmup_iters=2)
    opt = build_optimizer(nn.Linear(2, 2), cfg)
    assert opt.param_groups[0]["foreach"] is True  # the default
    single = _optimizer_run("single", cfg)
    for a, b in zip(single, _optimizer_run(None, cfg)):
        assert torch.equal(a, b)
    for a, b in zip(single, _optimizer_run("fused", cfg)):  # fused: float rounding only
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_optimizer_impl_from_config_and_unknown():
    cfg = TrainConfig(optimizer="adamw")
    cfg.optimizer_impl = "fused"  # type: ignore[attr-defined]  # a config that carries the choice
    assert build_optimizer(nn.Linear(2, 2), cfg).param_groups[0]["fused"] is True
    assert build_optimizer(nn.Linear(2, 2), cfg, "single").param_groups[0]["foreach"] is False
    with pytest.raises(ValueError, match="unknown optimizer implementation 'fast'"):
        build_optimizer(nn.Linear(2, 2), TrainConfig(), "fast")  # type: ignore[arg-type]
