"""SimMIM-style masked image modeling: patch masks, the masked L1 against references, the mask
token, one-step overfit, the trunk's export into a detector's FPN."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from omniseg.modeling.backbones.fpn import build_resnet18_fpn
from omniseg.modeling.backbones.resnet import build_resnet18
from omniseg.modeling.masked_image_pretrain import (
    MaskedImagePretrainer,
    masked_l1,
    num_masked,
    random_patch_mask,
    valid_pixels,
)
from omniseg.modeling.preprocess import normalize_images
from omniseg.modeling.weights import load_resnet_trunk


def _tiny(width: int = 4, **kw) -> MaskedImagePretrainer:
    torch.manual_seed(0)
    return MaskedImagePretrainer(trunk=build_resnet18(norm="GN", freeze_at=0, width=width), **kw)


def _patch_grid(mask: torch.Tensor, patch: int) -> torch.Tensor:
    """B x H x W -> B x gh x gw: each patch's value, asserting the patch is all one value (a slow loop)."""
    b, h, w = mask.shape
    gh, gw = -(-h // patch), -(-w // patch)
    out = torch.zeros(b, gh, gw, dtype=torch.bool)
    for i in range(b):
        for y in range(gh):
            for x in range(gw):
                cell = mask[i, y * patch:(y + 1) * patch, x * patch:(x + 1) * patch]
                assert bool(cell.all()) or not bool(cell.any()), (i, y, x)
                out[i, y, x] = cell[0, 0]
    return out


@pytest.mark.parametrize("h,w,patch,ratio,expected", [
    (64, 96, 32, 0.6, 4),   # 6 patches, 3.6 -> 4
    (70, 64, 32, 0.6, 4),   # ceil: 3 x 2 = 6 patches (a partial bottom row counts)
    (128, 128, 32, 0.6, 10),  # 16 patches, 9.6 -> 10
    (32, 32, 8, 0.25, 4),
    (64, 64, 32, 0.01, 0),
])
def test_random_patch_mask_masks_exactly_round_ratio_patches(h, w, patch, ratio, expected):
    assert num_masked(-(-h // patch) * -(-w // patch), ratio) == expected
    mask = random_patch_mask(5, h, w, patch, ratio, torch.Generator().manual_seed(1))
    assert mask.shape == (5, h, w) and mask.dtype == torch.bool
    grid = _patch_grid(mask, patch)
    assert grid.flatten(1).sum(1).tolist() == [expected] * 5


def test_random_patch_mask_is_deterministic_and_uniform():
    def draw(seed: int) -> torch.Tensor:
        return random_patch_mask(4, 96, 128, 32, 0.6, torch.Generator().manual_seed(seed))

    assert torch.equal(draw(3), draw(3)) and not torch.equal(draw(3), draw(4))
    assert not torch.equal(draw(3)[0], draw(3)[1])  # every image gets its own mask
    freq = _patch_grid(random_patch_mask(4000, 64, 96, 32, 0.5, torch.Generator().manual_seed(0)), 32).float().mean(0)
    assert torch.allclose(freq, torch.full_like(freq, 0.5), atol=0.04), freq


def test_masked_l1_against_loop_and_hand_values():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 3, 5, 4, generator=g), torch.randn(2, 3, 5, 4, generator=g)
    mask = torch.rand(2, 5, 4, generator=g) > 0.5
    total, count = 0.0, 0
    for b in range(2):
        for y in range(5):
            for x in range(4):
                if mask[b, y, x]:
                    for c in range(3):
                        total += abs(float(pred[b, c, y, x]) - float(target[b, c, y, x]))
                        count += 1
    assert masked_l1(pred, target, mask).item() == pytest.approx(total / count, rel=1e-6)
    # hand-worked: 2 masked pixels x 3 channels, errors 1 and 3 everywhere -> mean 2
    p, t = torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 2)
    t[0, :, 0, 0], t[0, :, 1, 1], t[0, :, 0, 1] = 1.0, -3.0, 100.0
    m = torch.tensor([[[True, False], [False, True]]])
    assert masked_l1(p, t, m).item() == pytest.approx(2.0)
    # nothing masked: 0, finite, with a graph
    p.requires_grad_(True)
    empty = masked_l1(p, t, torch.zeros(1, 2, 2, dtype=torch.bool))
    empty.backward()
    assert empty.item() == 0.0 and torch.equal(p.grad, torch.zeros_like(p))


def test_loss_counts_masked_pixels_only():
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(2, 3, 8, 8, generator=g, requires_grad=True)
    target = torch.randn(2, 3, 8, 8, generator=g)
    mask = random_patch_mask(2, 8, 8, 4, 0.5, torch.Generator().manual_seed(2))
    loss = masked_l1(pred, target, mask)
    other = torch.where(mask[:, None], target, torch.randn(2, 3, 8, 8, generator=g) * 10)  # unmasked changed
    assert not torch.equal(other, target) and masked_l1(pred, other, mask).item() == loss.item()
    loss.backward()
    assert pred.grad[~mask[:, None].expand_as(pred)].abs().sum() == 0
    assert pred.grad[mask[:, None].expand_as(pred)].abs().min() > 0


def test_masked_input_pixels_are_replaced_by_the_mask_token():
    model = _tiny()
    with torch.no_grad():
        model.mask_token.copy_(torch.tensor([0.3, -0.2, 0.1]).view(1, 3, 1, 1))
    x = torch.randn(2, 3, 64, 64)
    mask = random_patch_mask(2, 64, 64, 32, 0.5, torch.Generator().manual_seed(0))
    out = model.reconstruct(x, mask)
    assert out.shape == (2, 3, 64, 64)
    changed = torch.where(mask[:, None], torch.randn_like(x) * 5, x)  # new content only under the mask
    assert torch.equal(model.reconstruct(changed, mask), out)
    assert not torch.equal(model.reconstruct(x, torch.zeros_like(mask)), out)


def test_forward_reads_images_only_and_skips_padding():
    model = _tiny()
    images = torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8)
    images[1, :, 32:, :] = 0  # the second image is 32 x 96, zero-padded
    batch = SimpleNamespace(images=images, image_sizes=[(64, 96), (32, 96)], targets=None)
    torch.manual_seed(5)
    out = model(batch)
    assert set(out) == {"loss_mim"} and out["loss_mim"].dim() == 0 and torch.isfinite(out["loss_mim"])
    # the loss is the masked L1 over the drawn patches inside each image; padding is neither masked nor scored
    x = normalize_images(images, model.pixel_mean, model.pixel_std, batch.image_sizes)
    drawn = random_patch_mask(2, 64, 96, 32, 0.6, torch.Generator().manual_seed(9))
    assert drawn[1, 32:].any()  # this draw does mask padding patches
    inside = drawn & valid_pixels(batch.image_sizes, 64, 96)
    with torch.no_grad():
        got = model.loss(images, batch.image_sizes, torch.Generator().manual_seed(9))
        assert got.item() == pytest.approx(masked_l1(model.reconstruct(x, inside), x, inside).item(), rel=1e-6)
        assert got.item() != pytest.approx(masked_l1(model.reconstruct(x, drawn), x, drawn).item(), rel=1e-3)
    assert valid_pixels([(1, 2)], 2, 3).tolist() == [[[True, True, False], [False, False, False]]]
    with pytest.raises(ValueError, match="multiple of the trunk stride"):
        model.loss(images[:, :, :40], None)


def test_one_step_overfit_on_a_tiny_batch():
    model = _tiny(width=8)
    low = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * 255  # smooth: structure to fill in
    images = torch.nn.functional.interpolate(low, size=(64, 64), mode="bilinear").round().to(torch.uint8)
    out = model(SimpleNamespace(images=images, image_sizes=[(64, 64)] * 2, targets=None))
    out["loss_mim"].backward()
    assert model.trunk.conv1.weight.grad.abs().sum() > 0 and model.mask_token.grad.abs().sum() > 0
    model.zero_grad()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):  # the same masks every step: a pure fit of the masked patches
        loss = model.loss(images, None, torch.Generator().manual_seed(0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_backbone_state_dict_loads_bit_identically(tmp_path):
    model = _tiny(width=4)
    with torch.no_grad():  # trained-looking weights: nothing may be left at an initial value
        for p in model.trunk.parameters():
            p.add_(torch.randn_like(p))
    sd = model.backbone_state_dict()
    assert model.backbone_kind == "resnet" and model.reads_labels is False
    assert set(sd) == set(model.trunk.state_dict()) and "conv1.weight" in sd and "layer4.1.bn2.weight" in sd
    assert not any(k.startswith(("trunk.", "decoder.", "mask_token")) for k in sd)
    sd["conv1.weight"].zero_()  # a copy: the model is untouched
    assert model.trunk.conv1.weight.abs().sum() > 0
    sd = model.backbone_state_dict()
    path = tmp_path / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    fpn = build_resnet18_fpn(width=4, norm="GN", freeze_at=0, out_channels=8)  # box->mask's backbone
    report = load_resnet_trunk(fpn, path)
    assert report.ok and not report.missing and len(report.loaded) == len(sd)
    assert all(torch.equal(v, sd[k]) for k, v in fpn.bottom_up.state_dict().items())
    bare = build_resnet18(norm="GN", freeze_at=0, width=4)
    assert load_resnet_trunk(bare, path).ok and all(torch.equal(v, sd[k]) for k, v in bare.state_dict().items())


def test_constructor_checks():
    with pytest.raises(ValueError, match="mask_ratio"):
        _tiny(mask_ratio=1.0)
    with pytest.raises(ValueError, match="c5"):
        MaskedImagePretrainer(trunk=build_resnet18(norm="GN", width=4, out_features=("c2", "c3")))
