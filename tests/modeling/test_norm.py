import pytest
import torch
from torch import nn

from omniseg.modeling.norm import (
    FrozenBatchNorm2d,
    build_norm,
    convert_sync_batchnorm,
    freeze_batchnorm,
    group_norm_groups,
)


def _reference_frozen_bn(x, weight, bias, mean, var, eps):
    out = torch.empty_like(x)
    for c in range(x.shape[1]):
        out[:, c] = (x[:, c] - mean[c]) / (var[c] + eps) ** 0.5 * weight[c] + bias[c]
    return out


def _random_bn(channels: int, seed: int = 0) -> nn.BatchNorm2d:
    g = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(channels, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(channels, generator=g))
        bn.running_mean.copy_(torch.randn(channels, generator=g))
        bn.running_var.copy_(torch.rand(channels, generator=g) + 0.1)
        bn.num_batches_tracked.fill_(7)
    return bn


def test_frozen_bn_hand_worked():
    fbn = FrozenBatchNorm2d(1, eps=0.0)
    fbn.weight.fill_(2.0)
    fbn.bias.fill_(3.0)
    fbn.running_mean.fill_(1.0)
    fbn.running_var.fill_(4.0)
    x = torch.tensor([5.0, 1.0, -1.0]).view(1, 1, 3, 1)
    # (5 - 1) / 2 * 2 + 3 = 7; (1 - 1) / 2 * 2 + 3 = 3; (-1 - 1) / 2 * 2 + 3 = 1
    assert fbn(x).flatten().tolist() == [7.0, 3.0, 1.0]


def test_frozen_bn_matches_reference_and_eval_bn():
    bn = _random_bn(5)
    fbn = FrozenBatchNorm2d(5)
    fbn.load_state_dict(bn.state_dict())  # num_batches_tracked accepted and ignored
    x = torch.randn(2, 5, 3, 4)
    ref = _reference_frozen_bn(x, bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.eps)
    torch.testing.assert_close(fbn(x), ref)
    torch.testing.assert_close(fbn(x), bn.eval()(x))


def test_frozen_bn_keeps_bn_buffer_names_and_has_no_parameters():
    fbn = FrozenBatchNorm2d(4)
    assert list(fbn.state_dict()) == ["weight", "bias", "running_mean", "running_var"]
    assert list(fbn.parameters()) == []
    missing, unexpected = fbn.load_state_dict(nn.BatchNorm2d(4).state_dict(), strict=True)
    assert missing == [] and unexpected == []


def test_frozen_bn_same_in_train_mode_and_gradient_reaches_input():
    fbn = FrozenBatchNorm2d.from_batchnorm(_random_bn(3))
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    before = {k: v.clone() for k, v in fbn.state_dict().items()}
    out_train = fbn.train()(x)
    torch.testing.assert_close(out_train, fbn.eval()(x))
    out_train.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for k, v in fbn.state_dict().items():
        assert torch.equal(v, before[k])


def test_frozen_bn_empty_batch():
    assert FrozenBatchNorm2d(3)(torch.zeros(0, 3, 2, 2)).shape == (0, 3, 2, 2)


@pytest.mark.parametrize(
    "channels,expected", [(256, 32), (64, 32), (24, 24), (48, 24), (7, 7), (100, 25), (1, 1)]
)
def test_group_norm_groups(channels, expected):
    assert group_norm_groups(channels) == expected
    assert channels % expected == 0


def test_build_norm_kinds():
    assert isinstance(build_norm("BN", 8), nn.BatchNorm2d)
    assert isinstance(build_norm("FrozenBN", 8), FrozenBatchNorm2d)
    gn = build_norm("GN", 64)
    assert isinstance(gn, nn.GroupNorm) and gn.num_groups == 32
    assert isinstance(build_norm("SyncBN", 8), nn.SyncBatchNorm)
    assert isinstance(build_norm("none", 8), nn.Identity)
    with pytest.raises(ValueError, match="unknown norm kind"):
        build_norm("LN", 8)  # type: ignore[arg-type]


def test_syncbn_eval_matches_bn_without_process_group():
    bn = _random_bn(4).eval()
    sync = build_norm("SyncBN", 4)
    sync.load_state_dict(bn.state_dict())
    x = torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(sync.eval()(x), bn(x))


def test_convert_sync_batchnorm_copies_stats():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), _random_bn(4), nn.ReLU(), FrozenBatchNorm2d(4))
    ref_state = model[1].state_dict()
    converted = convert_sync_batchnorm(model)
    assert isinstance(converted[1], nn.SyncBatchNorm)
    assert isinstance(converted[3], FrozenBatchNorm2d)  # frozen layers stay frozen
    for k, v in converted[1].state_dict().items():
        assert torch.equal(v, ref_state[k])


def test_freeze_batchnorm_replaces_nested_and_keeps_outputs():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), _random_bn(4, 1), nn.Sequential(_random_bn(4, 2)))
    model.eval()
    x = torch.randn(1, 3, 5, 5)
    ref = model(x)
    frozen = freeze_batchnorm(model)
    assert isinstance(frozen[1], FrozenBatchNorm2d) and isinstance(frozen[2][0], FrozenBatchNorm2d)
    torch.testing.assert_close(frozen.train()(x), ref)
    assert isinstance(freeze_batchnorm(_random_bn(2)), FrozenBatchNorm2d)


def test_gn_and_bn_train_eval_behaviour():
    x = torch.randn(4, 8, 3, 3) * 3 + 1
    bn = build_norm("BN", 8)
    bn.train()(x)
    assert bn.num_batches_tracked.item() == 1
    assert not torch.allclose(bn.running_mean, torch.zeros(8))
    gn = build_norm("GN", 8, num_groups=4)
    torch.testing.assert_close(gn.train()(x), gn.eval()(x))


def test_syncbn_on_cpu_process_group(tmp_path):
    import torch.distributed as dist

    if not dist.is_available() or dist.is_initialized():
        pytest.skip("torch.distributed unavailable or already initialized")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        x = torch.randn(3, 4, 5, 5)
        sync = convert_sync_batchnorm(nn.Sequential(_random_bn(4)))[0]
        with pytest.raises(ValueError, match="GPU"):  # PyTorch's own limitation
            sync.train()(x)
        kept = convert_sync_batchnorm(nn.Sequential(_random_bn(4)), device="cpu")
        assert type(kept[0]) is nn.BatchNorm2d
        torch.testing.assert_close(kept.train()(x), _random_bn(4).train()(x))
    finally:
        dist.destroy_process_group()


def test_frozen_bn_under_autocast():
    fbn = FrozenBatchNorm2d.from_batchnorm(_random_bn(3))
    conv = nn.Conv2d(2, 3, 1)
    x = torch.randn(1, 2, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fbn(conv(x))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), fbn(conv(x)), atol=0.05, rtol=0.02)
