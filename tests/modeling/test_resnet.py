import pytest
import torch
import torch.nn.functional as F
from torch import nn

from omniseg.modeling.backbones.resnet import (
    BasicBlock,
    Bottleneck,
    build_resnet18,
    build_resnet50,
)
from omniseg.modeling.norm import FrozenBatchNorm2d

BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def torchvision_resnet_keys(layers, bottleneck: bool) -> list[str]:
    """torchvision's ``resnet*().state_dict()`` names, written out from its module layout."""
    keys = ["conv1.weight"] + [f"bn1.{k}" for k in BN_KEYS]
    n_convs = 3 if bottleneck else 2
    for stage, blocks in enumerate(layers, start=1):
        for b in range(blocks):
            p = f"layer{stage}.{b}."
            for c in range(1, n_convs + 1):
                keys.append(f"{p}conv{c}.weight")
                keys += [f"{p}bn{c}.{k}" for k in BN_KEYS]
            if b == 0 and (stage > 1 or bottleneck):
                keys.append(f"{p}downsample.0.weight")
                keys += [f"{p}downsample.1.{k}" for k in BN_KEYS]
    return keys + ["fc.weight", "fc.bias"]


def test_reference_key_lists_have_torchvision_sizes():
    # len(torchvision.models.resnet18().state_dict()) == 122, resnet50: 320.
    assert len(torchvision_resnet_keys((2, 2, 2, 2), False)) == 122
    assert len(torchvision_resnet_keys((3, 4, 6, 3), True)) == 320


@pytest.mark.parametrize(
    "builder,layers,bottleneck", [(build_resnet18, (2, 2, 2, 2), False), (build_resnet50, (3, 4, 6, 3), True)]
)
def test_state_dict_names_match_torchvision(builder, layers, bottleneck):
    with torch.device("meta"):
        model = builder(norm="BN")
    expected = [k for k in torchvision_resnet_keys(layers, bottleneck) if not k.startswith("fc.")]
    assert list(model.state_dict()) == expected


def test_resnet50_shapes_match_torchvision():
    with torch.device("meta"):
        sd = build_resnet50(norm="BN").state_dict()
    assert sd["conv1.weight"].shape == (64, 3, 7, 7)
    assert sd["layer1.0.conv1.weight"].shape == (64, 64, 1, 1)
    assert sd["layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)
    assert sd["layer2.0.conv2.weight"].shape == (128, 128, 3, 3)  # v1.5: stride on the 3x3
    assert sd["layer4.2.conv3.weight"].shape == (2048, 512, 1, 1)
    assert (
        sum(v.numel() for k, v in sd.items() if "running" not in k and "num_batches" not in k) == 23_508_032
    )
    # = torchvision resnet50's 25,557,032 parameters minus fc (2048 * 1000 + 1000).


def test_frozen_bn_model_keeps_bn_names_without_counter():
    with torch.device("meta"):
        model = build_resnet18(norm="FrozenBN")
    expected = [
        k
        for k in torchvision_resnet_keys((2, 2, 2, 2), False)
        if not k.startswith("fc.") and not k.endswith("num_batches_tracked")
    ]
    assert list(model.state_dict()) == expected


def test_resnet18_shapes_on_64x64_and_odd_size():
    model = build_resnet18(norm="BN").eval()
    out = model(torch.randn(2, 3, 64, 64))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "c2": (2, 64, 16, 16),
        "c3": (2, 128, 8, 8),
        "c4": (2, 256, 4, 4),
        "c5": (2, 512, 2, 2),
    }
    assert model.out_channels == {"c2": 64, "c3": 128, "c4": 256, "c5": 512}
    assert model.strides == {"c2": 4, "c3": 8, "c4": 16, "c5": 32}
    # conv1 and maxpool round up: 65 -> 33 -> 17 (c2) -> 9 -> 5 -> 3; 33 -> 17 -> 9 (c2) -> 5 -> 3 -> 2
    out = model(torch.randn(1, 3, 65, 33))
    assert [tuple(v.shape[-2:]) for v in out.values()] == [(17, 9), (9, 5), (5, 3), (3, 2)]


def test_tiny_resnet50_width_and_out_features():
    model = build_resnet50(norm="GN", width=8, out_features=("c3", "c4"))
    assert not hasattr(model, "layer4")
    out = model(torch.randn(1, 3, 32, 32))
    assert list(out) == ["c3", "c4"]
    assert out["c3"].shape == (1, 64, 4, 4) and out["c4"].shape == (1, 128, 2, 2)
    assert model.out_channels == {"c3": 64, "c4": 128}


def _reference_basic_block(block: BasicBlock, x):
    y = F.relu(F.conv2d(x, block.conv1.weight, stride=block.conv1.stride, padding=1))
    y = F.conv2d(y, block.conv2.weight, padding=1)
    identity = x if block.downsample is None else F.conv2d(x, block.downsample[0].weight, stride=2)
    return F.relu(y + identity)


def _reference_bottleneck(block: Bottleneck, x):
    y = F.relu(F.conv2d(x, block.conv1.weight))
    y = F.relu(F.conv2d(y, block.conv2.weight, stride=block.conv2.stride, padding=1))
    y = F.conv2d(y, block.conv3.weight)
    identity = (
        x if block.downsample is None else F.conv2d(x, block.downsample[0].weight, stride=block.conv2.stride)
    )
    return F.relu(y + identity)


@pytest.mark.parametrize("stride,cin", [(1, 4), (2, 4)])
def test_basic_block_against_reference(stride, cin):
    torch.manual_seed(0)
    block = BasicBlock(cin, 4 if stride == 1 else 8, stride, "none")
    x = torch.randn(2, cin, 6, 6)
    torch.testing.assert_close(block(x), _reference_basic_block(block, x))


@pytest.mark.parametrize("stride,cin", [(1, 16), (2, 8), (1, 8)])
def test_bottleneck_against_reference(stride, cin):
    torch.manual_seed(0)
    block = Bottleneck(cin, 4, stride, "none")
    assert (block.downsample is None) == (stride == 1 and cin == 16)
    x = torch.randn(2, cin, 5, 5)
    torch.testing.assert_close(block(x), _reference_bottleneck(block, x))


def _frozen_names(model) -> set[str]:
    return {n for n, p in model.named_parameters() if not p.requires_grad}


def test_freeze_at():
    names = lambda m: {n for n, _ in m.named_parameters()}  # noqa: E731
    m0 = build_resnet18(norm="BN", freeze_at=0, width=8)
    assert _frozen_names(m0) == set()
    m1 = build_resnet18(norm="BN", freeze_at=1, width=8)
    assert isinstance(m1.bn1, FrozenBatchNorm2d) and isinstance(m1.layer1[0].bn1, nn.BatchNorm2d)
    assert _frozen_names(m1) == {"conv1.weight"}
    m2 = build_resnet18(norm="BN", freeze_at=2, width=8)
    assert _frozen_names(m2) == {"conv1.weight"} | {
        n for n in names(m0) if n.startswith("layer1.") and "conv" in n
    }
    assert isinstance(m2.layer1[1].bn2, FrozenBatchNorm2d)
    m5 = build_resnet18(norm="BN", freeze_at=5, width=8)
    assert all(not p.requires_grad for p in m5.parameters())
    with pytest.raises(ValueError, match="freeze_at"):
        build_resnet18(freeze_at=6)


def test_gradients_flow_only_to_trainable_stages():
    model = build_resnet18(norm="BN", freeze_at=2, width=8)
    out = model(torch.randn(2, 3, 64, 64))
    sum(v.square().mean() for v in out.values()).backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


@pytest.mark.parametrize("norm", ["BN", "FrozenBN", "GN", "none"])
def test_norm_variants_train_eval(norm, norm_by_hand):
    torch.manual_seed(0)
    model = build_resnet18(norm=norm, width=8)
    # every norm slot: the stem's bn1, two per BasicBlock, one per projection shortcut
    norms = {
        n: m
        for n, m in model.named_modules()
        if n.rpartition(".")[2].startswith("bn") or n.endswith("downsample.1")
    }
    assert len(norms) == 1 + 8 * 2 + 3
    types = {"BN": nn.BatchNorm2d, "FrozenBN": FrozenBatchNorm2d, "GN": nn.GroupNorm, "none": nn.Identity}
    norm_type = types[norm]
    assert all(type(m) is norm_type for m in norms.values())
    with torch.no_grad():  # move every norm away from the identity so the check below means something
        for m in norms.values():
            if norm != "none":
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)
            if norm == "FrozenBN":
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 32, 32)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()(x)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, state[k])]
    if norm == "BN":
        assert changed and all("running" in k or "num_batches" in k for k in changed)
    else:
        assert changed == []
    # In eval mode every norm layer's output is the hand-computed normalization of its input.
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def record(name):
        # clone: the ReLU after the norm works in place
        return lambda mod, inp, out: seen.__setitem__(name, (inp[0].clone(), out.clone()))

    hooks = [m.register_forward_hook(record(n)) for n, m in norms.items()]
    model.eval()
    with torch.no_grad():
        c5 = model(x)["c5"]
    for h in hooks:
        h.remove()
    assert seen.keys() == norms.keys()
    for name, (inp, out) in seen.items():
        torch.testing.assert_close(out, norm_by_hand(norms[name], inp), msg=lambda m, n=name: f"{n}: {m}")
    # ... so each image's features do not depend on the rest of the batch (BN in train mode would)
    with torch.no_grad():
        torch.testing.assert_close(model(x[1:])["c5"], c5[1:])


def test_bad_arguments():
    with pytest.raises(ValueError, match="out_features"):
        build_resnet18(out_features=("c6",))
    with pytest.raises(ValueError, match="out_features"):
        build_resnet18(out_features=())


def test_autocast_and_channels_last():
    model = build_resnet18(norm="FrozenBN", width=8).eval()
    x = torch.randn(1, 3, 32, 32)
    ref = model(x)["c5"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)["c5"]
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=0.1 * ref.abs().max().item(), rtol=0.1)
    cl = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))["c5"]
    torch.testing.assert_close(cl, ref, atol=1e-4, rtol=1e-4)
