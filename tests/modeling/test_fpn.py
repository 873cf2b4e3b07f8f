import pytest
import torch
import torch.nn.functional as F
from torch import nn

from omniseg.modeling.backbones.fpn import (
    BACKBONE_BUILDERS,
    FPN,
    build_resnet18_fpn,
    build_resnet18_fpn_p3p7,
    build_resnet50_fpn,
)


class FixedTrunk(nn.Module):
    """Returns stored C-features (c3: 8x8, c4: 4x4, c5: 2x2) whatever the input."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.feats = {
            "c3": torch.randn(1, 3, 8, 8, generator=g),
            "c4": torch.randn(1, 5, 4, 4, generator=g),
            "c5": torch.randn(1, 7, 2, 2, generator=g),
        }
        self.out_channels = {"c3": 3, "c4": 5, "c5": 7}
        self.strides = {"c3": 8, "c4": 16, "c5": 32}

    def forward(self, x):
        return dict(self.feats)


def _conv(seq, x):
    conv = seq[0]
    return F.conv2d(x, conv.weight, conv.bias, padding=conv.padding)


def _reference_fpn(fpn: FPN, feats):
    """Top-down by hand: P5 = out(lat(C5)); P4 = out(lat(C4) + up2(lat(C5))); ..."""
    lat5 = _conv(fpn.lateral_convs[2], feats["c5"])
    lat4 = _conv(fpn.lateral_convs[1], feats["c4"]) + lat5.repeat_interleave(2, 2).repeat_interleave(2, 3)
    lat3 = _conv(fpn.lateral_convs[0], feats["c3"]) + lat4.repeat_interleave(2, 2).repeat_interleave(2, 3)
    return [_conv(fpn.output_convs[i], t) for i, t in enumerate([lat3, lat4, lat5])]


def test_fpn_against_reference_with_maxpool_top():
    fpn = FPN(bottom_up=FixedTrunk(), in_features=("c3", "c4", "c5"), out_channels=6, top_block="maxpool")
    out = fpn(torch.zeros(1))
    p3, p4, p5 = _reference_fpn(fpn, fpn.bottom_up.feats)
    assert list(out) == ["p3", "p4", "p5", "p6"]
    torch.testing.assert_close(out["p3"], p3)
    torch.testing.assert_close(out["p4"], p4)
    torch.testing.assert_close(out["p5"], p5)
    torch.testing.assert_close(out["p6"], p5[:, :, ::2, ::2])  # max-pool kernel 1 stride 2
    assert fpn.strides == {"p3": 8, "p4": 16, "p5": 32, "p6": 64}


@pytest.mark.parametrize("source", ["c5", "p5"])
def test_p6p7_source(source):
    fpn = FPN(
        bottom_up=FixedTrunk(),
        in_features=("c3", "c4", "c5"),
        out_channels=6,
        top_block="p6p7",
        top_block_in=source,
    )
    out = fpn(torch.zeros(1))
    assert list(out) == ["p3", "p4", "p5", "p6", "p7"]
    src = fpn.bottom_up.feats["c5"] if source == "c5" else out["p5"]
    assert fpn.top_block.p6.in_channels == (7 if source == "c5" else 6)
    tb = fpn.top_block
    p6 = F.conv2d(src, tb.p6.weight, tb.p6.bias, stride=2, padding=1)
    torch.testing.assert_close(out["p6"], p6)
    torch.testing.assert_close(out["p7"], F.conv2d(F.relu(p6), tb.p7.weight, tb.p7.bias, stride=2, padding=1))
    assert fpn.strides["p7"] == 128


def test_no_top_block_and_single_level():
    fpn = FPN(bottom_up=FixedTrunk(), in_features=("c5",), out_channels=4, top_block="none")
    out = fpn(torch.zeros(1))
    assert list(out) == ["p5"] and out["p5"].shape == (1, 4, 2, 2)


def test_bad_in_features():
    with pytest.raises(ValueError, match="consecutive"):
        FPN(bottom_up=FixedTrunk(), in_features=("c3", "c5"))
    with pytest.raises(ValueError, match="does not return"):
        FPN(bottom_up=FixedTrunk(), in_features=("c2", "c3"))
    with pytest.raises(ValueError, match="top_block"):
        FPN(bottom_up=FixedTrunk(), in_features=("c5",), top_block="p6")  # type: ignore[arg-type]


def test_resnet18_fpn_shapes_p2_p6():
    model = build_resnet18_fpn(out_channels=16, width=8).eval()
    out = model(torch.randn(2, 3, 64, 64))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "p2": (2, 16, 16, 16),
        "p3": (2, 16, 8, 8),
        "p4": (2, 16, 4, 4),
        "p5": (2, 16, 2, 2),
        "p6": (2, 16, 1, 1),
    }
    assert model.out_channels == dict.fromkeys(out, 16)


def test_resnet18_fpn_p3p7_odd_size_and_gradients():
    model = build_resnet18_fpn_p3p7(out_channels=16, width=8, fpn_norm="GN", norm="BN", freeze_at=1)
    out = model(torch.randn(2, 3, 72, 40))
    assert list(out) == ["p3", "p4", "p5", "p6", "p7"]
    assert [tuple(v.shape[-2:]) for v in out.values()] == [(9, 5), (5, 3), (3, 2), (2, 1), (1, 1)]
    assert model.strides == {"p3": 8, "p4": 16, "p5": 32, "p6": 64, "p7": 128}
    sum(v.mean() for v in out.values()).backward()
    for name, p in model.named_parameters():
        if name.startswith("bottom_up.conv1"):
            assert not p.requires_grad and p.grad is None
        else:
            assert p.grad is not None, name


def test_resnet50_fpn_trunk_names_and_builders():
    with torch.device("meta"):
        model = build_resnet50_fpn(norm="FrozenBN")
    keys = list(model.state_dict())
    assert "bottom_up.layer1.0.downsample.1.running_var" in keys
    assert "bottom_up.layer4.2.bn3.weight" in keys
    assert "lateral_convs.0.0.weight" in keys and "output_convs.3.0.bias" in keys
    assert set(BACKBONE_BUILDERS) == {
        "resnet18_fpn",
        "resnet50_fpn",
        "resnet18_fpn_p3p7",
        "resnet50_fpn_p3p7",
    }
    for name, builder in BACKBONE_BUILDERS.items():
        with torch.device("meta"):
            m = builder()
        expected = ["p3", "p4", "p5", "p6", "p7"] if name.endswith("p3p7") else ["p2", "p3", "p4", "p5", "p6"]
        assert m.out_features == expected, name
