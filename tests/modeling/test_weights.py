import logging

import pytest
import torch
from safetensors.torch import load_file, save_file

from omniseg.modeling.backbones.fpn import build_resnet18_fpn
from omniseg.modeling.backbones.resnet import build_resnet18
from omniseg.modeling.backbones.vit import VisionTransformer, resize_pos_embed
from omniseg.modeling.weights import (
    CheckpointError,
    convert_to_safetensors,
    load_pretrained,
    resnet_filter_fn,
    unwrap_state_dict,
    vit_filter_fn,
)


def _randomized(sd: dict) -> dict:
    """Every float tensor random (distinct from a fresh model's init), counters kept."""
    g = torch.Generator().manual_seed(1)
    out = {}
    for k, v in sd.items():
        if v.is_floating_point():
            out[k] = torch.rand(v.shape, generator=g) + (0.5 if "running_var" in k else 0.0)
        else:
            out[k] = v.clone()
    return out


def torchvision_style_resnet18(width: int = 8) -> dict:
    """A state dict as torchvision's resnet18 saves it: our names plus the ImageNet fc."""
    sd = _randomized(build_resnet18(norm="BN", width=width).state_dict())
    sd["fc.weight"] = torch.randn(1000, 8 * width)
    sd["fc.bias"] = torch.randn(1000)
    return sd


@pytest.mark.parametrize("fmt", ["pth", "safetensors", "ddp_pth", "nested_pth"])
def test_resnet_checkpoint_round_trip(tmp_path, fmt):
    sd = torchvision_style_resnet18()
    path = tmp_path / f"r18.{'safetensors' if fmt == 'safetensors' else 'pth'}"
    if fmt == "safetensors":
        save_file(sd, str(path))
    elif fmt == "ddp_pth":
        torch.save({"module." + k: v for k, v in sd.items()}, path)
    elif fmt == "nested_pth":
        torch.save({"state_dict": sd, "epoch": 90}, path)
    else:
        torch.save(sd, path)
    model = build_resnet18(norm="FrozenBN", freeze_at=2, width=8)
    report = load_pretrained(model, path, resnet_filter_fn, strict=True)
    assert report.ok and report.missing == [] and report.unexpected == []
    own = model.state_dict()
    assert len(report.loaded) == len(own)
    for k, v in own.items():
        torch.testing.assert_close(v, sd[k])
    # Same outputs as a BatchNorm model in eval mode holding the torchvision tensors.
    bn_model = build_resnet18(norm="BN", width=8)
    bn_model.load_state_dict({k: v for k, v in sd.items() if not k.startswith("fc.")})
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(model.train()(x)["c5"], bn_model.eval()(x)["c5"])


def test_resnet_into_fpn_gets_prefix_and_reports_fpn_keys(tmp_path, caplog):
    sd = torchvision_style_resnet18()
    path = tmp_path / "r18.pth"
    torch.save(sd, path)
    model = build_resnet18_fpn(width=8, out_channels=16)
    with caplog.at_level(logging.WARNING, logger="omniseg.modeling.weights"):
        report = load_pretrained(model, path, resnet_filter_fn)
    assert report.unexpected == [] and report.mismatched == []
    assert report.missing and all(k.startswith(("lateral_convs.", "output_convs.")) for k in report.missing)
    torch.testing.assert_close(
        model.bottom_up.layer3[0].downsample[1].running_var, sd["layer3.0.downsample.1.running_var"]
    )
    assert "missing in checkpoint" in caplog.text and str(path) in caplog.text
    with pytest.raises(CheckpointError, match="r18.pth"):
        load_pretrained(model, path, resnet_filter_fn, strict=True)


def test_resnet_filter_fn_drops_fc_only():
    sd = {"module.conv1.weight": torch.zeros(1), "fc.weight": torch.zeros(1), "fc.bias": torch.zeros(1)}
    sd["module.fcx.weight"] = torch.zeros(1)  # not the classifier: kept
    assert sorted(resnet_filter_fn(sd)) == ["conv1.weight", "fcx.weight"]


def test_gn_model_reports_unexpected_bn_stats(tmp_path):
    path = tmp_path / "r18.safetensors"
    save_file(torchvision_style_resnet18(), str(path))
    report = load_pretrained(build_resnet18(norm="GN", width=8), path, resnet_filter_fn)
    assert report.unexpected and all(
        k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in report.unexpected
    )
    assert report.missing == []


def test_shape_mismatch_reported_not_loaded(tmp_path):
    sd = torchvision_style_resnet18(width=16)  # wider than the model
    path = tmp_path / "wide.pth"
    torch.save(sd, path)
    model = build_resnet18(norm="BN", width=8)
    before = model.conv1.weight.clone()
    report = load_pretrained(model, path, resnet_filter_fn, min_loaded=0.0)
    assert ("conv1.weight", (16, 3, 7, 7), (8, 3, 7, 7)) in report.mismatched
    assert "conv1.weight" in report.missing
    assert torch.equal(model.conv1.weight, before)
    assert "shape mismatch" in report.summary()


def tiny_vit(img_size: int) -> VisionTransformer:
    return VisionTransformer(img_size=img_size, patch_size=8, embed_dim=16, depth=2, num_heads=2)


def mae_style_checkpoint(encoder: dict) -> dict:
    """MAE pre-training checkpoint layout: {"model": encoder + decoder + mask_token, ...}."""
    model = dict(encoder)
    model["mask_token"] = torch.zeros(1, 1, 8)
    model["decoder_embed.weight"] = torch.randn(8, 16)
    model["decoder_pos_embed"] = torch.randn(1, 17, 8)
    model["decoder_blocks.0.attn.qkv.weight"] = torch.randn(24, 8)
    model["decoder_pred.weight"] = torch.randn(192, 8)
    return {"model": model, "epoch": 799, "args": {"lr": 1.5e-4}}


def test_mae_checkpoint_into_larger_image_size(tmp_path):
    src = _randomized(tiny_vit(32).state_dict())  # 4 x 4 grid
    path = tmp_path / "mae.pth"
    torch.save(mae_style_checkpoint(src), path)
    model = tiny_vit(64)  # 8 x 8 grid
    report = load_pretrained(model, path, vit_filter_fn, strict=True)
    assert report.ok
    own = model.state_dict()
    torch.testing.assert_close(own["pos_embed"], resize_pos_embed(src["pos_embed"], (8, 8)))
    torch.testing.assert_close(own["pos_embed"][:, 0], src["pos_embed"][:, 0])
    for k, v in own.items():
        if k != "pos_embed":
            torch.testing.assert_close(v, src[k])


def test_timm_checkpoint_with_head_as_safetensors(tmp_path):
    src = _randomized(tiny_vit(32).state_dict())
    src["head.weight"] = torch.randn(10, 16)
    src["head.bias"] = torch.randn(10)
    src["fc_norm.weight"] = torch.randn(16)
    path = tmp_path / "timm.safetensors"
    save_file(src, str(path))
    model = tiny_vit(32)
    report = load_pretrained(model, path, vit_filter_fn, strict=True)
    assert report.ok
    torch.testing.assert_close(model.blocks[1].attn.qkv.weight, src["blocks.1.attn.qkv.weight"])
    torch.testing.assert_close(model.pos_embed, src["pos_embed"])


def test_vit_filter_fn_rejects_non_square_grid():
    sd = tiny_vit(32).state_dict()
    sd["pos_embed"] = torch.zeros(1, 1 + 6, 16)
    with pytest.raises(CheckpointError, match="not a square grid"):
        vit_filter_fn(sd, tiny_vit(64))


def test_read_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_pretrained(tiny_vit(32), tmp_path / "absent.pth")
    bad = tmp_path / "weights.npz"
    bad.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="weights.npz.*unknown checkpoint type"):
        load_pretrained(tiny_vit(32), bad)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="corrupt.safetensors: cannot read"):
        load_pretrained(tiny_vit(32), corrupt)


class NotAWeight:
    pass


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {"cls_token": torch.zeros(1, 1, 16)}, "hook": NotAWeight()}, path)
    with pytest.raises(CheckpointError, match="evil.pth: cannot read checkpoint"):
        load_pretrained(tiny_vit(32), path, vit_filter_fn)


def test_unwrap_state_dict():
    t = torch.zeros(1)
    assert unwrap_state_dict({"model": {"module.a": t}}) == {"a": t}
    assert unwrap_state_dict({"a": t}) == {"a": t}
    with pytest.raises(CheckpointError, match="no tensors"):
        unwrap_state_dict({"epoch": 3})
    with pytest.raises(CheckpointError, match="'epoch' is a int"):
        unwrap_state_dict({"a": t, "epoch": 3})
    with pytest.raises(CheckpointError, match="expected a dict"):
        unwrap_state_dict([t])


def test_pretrained_and_checkpoint_loading_share_the_reader(tmp_path):
    from omniseg.engine.checkpoint import load_weights
    from omniseg.utils.weights_io import CheckpointError as SharedError

    assert CheckpointError is SharedError
    sd = torchvision_style_resnet18()
    path = tmp_path / "r18.pth"
    torch.save({"model": {"module." + k: v for k, v in sd.items()}}, path)
    got = load_weights(path)  # the training side reads a foreign file the same way
    assert got.keys() == sd.keys() and all(torch.equal(got[k], sd[k]) for k in sd)
    (tmp_path / "bad.pth").write_bytes(b"not a torch file")
    for load in (load_weights, lambda p: load_pretrained(build_resnet18(width=8), p)):
        with pytest.raises(CheckpointError, match=r"bad\.pth: cannot read checkpoint"):
            load(tmp_path / "bad.pth")


def test_convert_to_safetensors(tmp_path):
    sd = torchvision_style_resnet18()
    src, dst = tmp_path / "r18.pth", tmp_path / "out" / "r18.safetensors"
    torch.save({"module." + k: v for k, v in sd.items()}, src)
    n = convert_to_safetensors(src, dst, resnet_filter_fn)
    back = load_file(str(dst))
    assert n == len(back) == len(sd) - 2
    for k, v in back.items():
        assert torch.equal(v, sd[k])
    assert [p.name for p in dst.parent.iterdir()] == ["r18.safetensors"]  # no temp file left


def test_weights_for_another_network_are_an_error_not_a_warning(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"encoder.proj.weight": torch.ones(4, 4), "encoder.proj.bias": torch.ones(4)}, str(path))
    model = build_resnet18(norm="GN", width=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=rf"other\.safetensors: only 0 of the model's {len(before)} tensors "
                                              r"are in this checkpoint \(need 50%\).*encoder\.proj\."):
        load_pretrained(model, path, resnet_filter_fn)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing loaded
    wide = tmp_path / "wide.pth"
    torch.save(torchvision_style_resnet18(width=16), wide)
    with pytest.raises(CheckpointError, match=r"wide\.pth: only 0 of .*first shape mismatch: conv1\.weight "
                                              r"\(16, 3, 7, 7\) vs model \(8, 3, 7, 7\)"):
        load_pretrained(model, wide, resnet_filter_fn)
