import pytest
import torch
import torch.nn.functional as F
from torch import nn

from omniseg.modeling.heads.mask_heads import (
    MASK_HEAD_BUILDERS,
    FCNMaskHead,
    Hourglass,
    HourglassMaskHead,
    MLPMaskBranch,
    build_fcn_mask_head,
    build_hourglass20_mask_head,
    select_class_logits,
)
from omniseg.modeling.norm import FrozenBatchNorm2d


def _reference_fcn(head: FCNMaskHead, x, norm_by_hand):
    for block in head.convs:
        conv = block[0]
        x = F.relu(norm_by_hand(block[1], F.conv2d(x, conv.weight, conv.bias, padding=1)))
    x = F.relu(F.conv_transpose2d(x, head.deconv.weight, head.deconv.bias, stride=2))
    return F.conv2d(x, head.predictor.weight, head.predictor.bias)


@pytest.mark.parametrize("num_classes", [1, 5])
def test_fcn_head_shapes_and_reference(num_classes, norm_by_hand):
    torch.manual_seed(0)
    head = FCNMaskHead(6, conv_dim=8, num_classes=num_classes)
    assert sum(isinstance(m, nn.Conv2d) for m in head.convs.modules()) == 4
    x = torch.randn(3, 6, 14, 14)
    out = head(x)
    assert out.shape == (3, num_classes, 28, 28)
    torch.testing.assert_close(out, _reference_fcn(head, x, norm_by_hand))
    assert head(torch.zeros(0, 6, 14, 14)).shape == (0, num_classes, 28, 28)


def test_deconv_doubles_exactly():
    # A 2x2 stride-2 transposed conv puts each input pixel's 2x2 kernel copy in its own cell.
    head = FCNMaskHead(1, conv_dim=1, num_convs=0)
    with torch.no_grad():
        head.deconv.weight.copy_(torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]]))
        head.deconv.bias.zero_()
    up = head.deconv(torch.tensor([[[[1.0, -1.0]]]]))
    assert up.tolist() == [[[[1.0, 2.0, -1.0, -2.0], [3.0, 4.0, -3.0, -4.0]]]]


@pytest.mark.parametrize("norm", ["GN", "BN", "FrozenBN"])
def test_fcn_norm_variants_train_eval(norm, norm_by_hand):
    torch.manual_seed(0)
    head = build_fcn_mask_head(8, conv_dim=8, norm=norm)
    norm_type = {"GN": nn.GroupNorm, "BN": nn.BatchNorm2d, "FrozenBN": FrozenBatchNorm2d}[norm]
    assert all(isinstance(block[1], norm_type) for block in head.convs)
    if norm == "GN":  # the largest group count <= 32 dividing conv_dim
        assert all(block[1].num_groups == 8 for block in head.convs)
    with torch.no_grad():  # move every norm away from the identity so the check below means something
        for block in head.convs:
            block[1].weight.uniform_(0.5, 1.5)
            block[1].bias.normal_(0.0, 0.5)
            if norm == "FrozenBN":
                block[1].running_mean.normal_(0.0, 0.5)
                block[1].running_var.uniform_(0.5, 2.0)
        head.predictor.weight.normal_()  # default init is tiny
    x = torch.randn(4, 8, 7, 7)
    train_out = head.train()(x)
    train_out.sum().backward()
    assert all(p.grad is not None for p in head.parameters())
    if norm == "BN":  # the train pass moved the running statistics off their (0, 1) start
        assert not torch.equal(head.convs[0][1].running_mean, torch.zeros(8))
    head.eval()
    with torch.no_grad():
        eval_out = head(x)
    # eval mode = conv, hand-computed normalization (running statistics for BN / FrozenBN, the
    # sample's own group statistics for GN), ReLU, deconv, predictor
    torch.testing.assert_close(eval_out, _reference_fcn(head, x, norm_by_hand))
    if norm == "BN":  # batch statistics in train mode, running statistics in eval mode
        assert not torch.allclose(train_out.detach(), eval_out)
    else:  # GN and FrozenBN do not depend on the mode
        torch.testing.assert_close(train_out.detach(), eval_out)


def test_hourglass20_layer_count_and_shapes():
    head = build_hourglass20_mask_head(8, channels=8)
    main_path_convs = [
        name for name, m in head.named_modules() if isinstance(m, nn.Conv2d) and ".shortcut." not in name
    ]
    assert len(main_path_convs) == 20
    assert head.bottom_blocks == 3 and head.levels == 2
    x = torch.randn(2, 8, 16, 16)
    assert head(x).shape == (2, 1, 16, 16)
    assert head(torch.randn(1, 8, 15, 13)).shape == (1, 1, 15, 13)  # odd RoI sizes
    up = build_hourglass20_mask_head(8, channels=8, upsample=True, num_classes=3)
    assert up(x).shape == (2, 3, 32, 32)


@pytest.mark.parametrize("num_layers,levels", [(16, 2), (26, 2), (10, 1), (22, 3)])
def test_hourglass_depths(num_layers, levels):
    head = HourglassMaskHead(4, channels=4, num_layers=num_layers, levels=levels, norm="none")
    convs = [n for n, m in head.named_modules() if isinstance(m, nn.Conv2d) and ".shortcut." not in n]
    assert len(convs) == num_layers
    assert head(torch.randn(1, 4, 16, 16)).shape == (1, 1, 16, 16)


@pytest.mark.parametrize("num_layers,levels", [(14, 2), (19, 2), (20, 0)])
def test_hourglass_bad_depth(num_layers, levels):
    with pytest.raises(ValueError, match="num_layers"):
        HourglassMaskHead(4, channels=4, num_layers=num_layers, levels=levels)


def test_hourglass_level_against_reference():
    torch.manual_seed(0)
    hg = Hourglass(1, 4, 1, "none")
    x = torch.randn(2, 4, 6, 6)
    low = hg.up(hg.inner(hg.down(x)))  # 3 x 3
    ref = hg.skip(x) + low.repeat_interleave(2, 2).repeat_interleave(2, 3)
    torch.testing.assert_close(hg(x), ref)
    # The down block halves the size; the residual inside it is projected with stride 2.
    assert hg.down(x).shape == (2, 4, 3, 3) and isinstance(hg.down.shortcut, nn.Sequential)


def test_hourglass_gradients_reach_every_parameter():
    head = build_hourglass20_mask_head(4, channels=4, norm="GN")
    head(torch.randn(2, 4, 16, 16)).square().mean().backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_mlp_branch_against_reference():
    torch.manual_seed(0)
    mlp = MLPMaskBranch(3, 4, out_size=8, hidden_dim=10, num_fc=2)
    with torch.no_grad():
        mlp.predictor.weight.normal_()  # default init is tiny; make the check meaningful
    x = torch.randn(5, 3, 4, 4)
    h = x.reshape(5, -1)
    for layer in mlp.fcs:
        if isinstance(layer, nn.Linear):
            h = F.relu(h @ layer.weight.t() + layer.bias)
    ref = (h @ mlp.predictor.weight.t() + mlp.predictor.bias).view(5, 1, 8, 8)
    out = mlp(x)
    assert out.shape == (5, 1, 8, 8)
    torch.testing.assert_close(out, ref)
    with pytest.raises(ValueError, match="expects 48 inputs"):
        mlp(torch.randn(5, 3, 5, 5))


def test_mlp_branch_reduce_and_no_hidden():
    mlp = MLPMaskBranch(8, 2, out_size=4, num_fc=0, reduce_channels=2)
    assert mlp.in_features == 8 and len(mlp.fcs) == 0
    assert mlp(torch.randn(3, 8, 2, 2)).shape == (3, 1, 4, 4)


def test_select_class_logits():
    logits = torch.arange(2 * 3 * 1 * 1, dtype=torch.float).view(2, 3, 1, 1)
    assert select_class_logits(logits, torch.tensor([2, 0])).flatten().tolist() == [2.0, 3.0]
    agn = torch.randn(2, 1, 4, 4)
    assert torch.equal(select_class_logits(agn, torch.tensor([5, 9])), agn[:, 0])
    with pytest.raises(ValueError, match="classes"):
        select_class_logits(logits, torch.tensor([0]))
    assert select_class_logits(torch.zeros(0, 3, 2, 2), torch.zeros(0, dtype=torch.long)).shape == (0, 2, 2)


@pytest.mark.parametrize("name", sorted(MASK_HEAD_BUILDERS))
def test_builders_overfit_one_batch(name):
    torch.manual_seed(0)
    kwargs = {
        "fcn4": dict(conv_dim=8),
        "hourglass20": dict(channels=8),
    }
    head = MASK_HEAD_BUILDERS[name](4, **kwargs[name])
    x = torch.randn(2, 4, 8, 8)
    out_size = head(x).shape[-1]
    target = torch.zeros(2, 1, out_size, out_size)
    target[0, :, : out_size // 2] = 1.0
    target[1, :, :, out_size // 2 :] = 1.0
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = F.binary_cross_entropy_with_logits(head(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("name", sorted(MASK_HEAD_BUILDERS))
def test_safetensors_round_trip(tmp_path, name):
    from safetensors.torch import load_file, save_file

    kwargs = {
        "fcn4": dict(conv_dim=8, norm="BN"),
        "hourglass20": dict(channels=8),
    }
    torch.manual_seed(0)
    head = MASK_HEAD_BUILDERS[name](4, **kwargs[name])
    x = torch.randn(2, 4, 8, 8)
    head.train()(x)  # moves BN statistics away from their defaults
    save_file(head.state_dict(), str(tmp_path / "head.safetensors"))
    torch.manual_seed(1)
    fresh = MASK_HEAD_BUILDERS[name](4, **kwargs[name])
    fresh.load_state_dict(load_file(str(tmp_path / "head.safetensors")), strict=True)
    torch.testing.assert_close(fresh.eval()(x), head.eval()(x))
