"""MAE: patchify, random masking, the masked MSE loss against references; overfit; backbone export."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from omniseg.modeling.backbones.vit import VisionTransformer
from omniseg.modeling.mae import MAE, mae_loss, num_kept, patchify, random_masking, sincos_pos_embed
from omniseg.modeling.weights import load_pretrained, vit_filter_fn


def tiny_encoder(**kw) -> VisionTransformer:
    args = dict(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2)
    args.update(kw)
    return VisionTransformer(**args)


def tiny_mae(**kw) -> MAE:
    return MAE(encoder=tiny_encoder(), decoder_dim=16, decoder_depth=1, decoder_heads=2, **kw)


def test_patchify_against_loop():
    x = torch.randn(2, 3, 8, 12)
    p = 4
    out = patchify(x, p)
    assert out.shape == (2, 6, p * p * 3)
    for b in range(2):
        for i in range(2):
            for j in range(3):
                patch = x[b, :, i * p:(i + 1) * p, j * p:(j + 1) * p]  # C x p x p
                ref = [float(patch[c, y, xx]) for y in range(p) for xx in range(p) for c in range(3)]
                assert out[b, i * 3 + j].tolist() == ref
    with pytest.raises(ValueError, match="multiple"):
        patchify(x, 5)


@pytest.mark.parametrize("n,ratio", [(16, 0.75), (10, 0.75), (7, 0.5), (49, 0.9), (4, 0.0)])
def test_random_masking_keeps_round_n_and_restores(n, ratio):
    b, d = 3, 2
    x = torch.arange(b * n, dtype=torch.float32).reshape(b, n, 1).expand(b, n, d).contiguous()
    g = torch.Generator().manual_seed(0)
    kept, mask, ids_restore = random_masking(x, ratio, g)
    k = round(n * (1 - ratio))
    assert num_kept(n, ratio) == k
    assert kept.shape == (b, k, d) and mask.shape == (b, n) and ids_restore.shape == (b, n)
    assert (mask.sum(1) == n - k).all() and set(mask.unique().tolist()) <= {0.0, 1.0}
    for i in range(b):
        # the kept tokens are exactly those the mask marks 0
        kept_pos = sorted(int(v) - i * n for v in kept[i, :, 0])
        assert kept_pos == (mask[i] == 0).nonzero().flatten().tolist()
    # ids_restore inverts the shuffle: [kept, removed in shuffle order] gathered -> x
    ids_shuffle = ids_restore.argsort(dim=1)
    assert torch.equal(ids_shuffle.gather(1, ids_restore), torch.arange(n).expand(b, n))
    removed = x.gather(1, ids_shuffle[:, k:, None].expand(-1, -1, d))
    restored = torch.cat([kept, removed], 1).gather(1, ids_restore[..., None].expand(-1, -1, d))
    assert torch.equal(restored, x)


def test_random_masking_is_deterministic_with_a_generator():
    x = torch.randn(4, 16, 8)
    a = random_masking(x, 0.75, torch.Generator().manual_seed(5))
    b = random_masking(x, 0.75, torch.Generator().manual_seed(5))
    c = random_masking(x, 0.75, torch.Generator().manual_seed(6))
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[1], c[1])
    assert not all(torch.equal(a[1][0], a[1][i]) for i in range(1, 4))  # a permutation per image


def _loss_reference(pred, target, mask, norm_pix):
    num, den = 0.0, 0.0
    for b in range(pred.shape[0]):
        for n in range(pred.shape[1]):
            t = target[b, n].tolist()
            if norm_pix:
                m = sum(t) / len(t)
                var = sum((v - m) ** 2 for v in t) / (len(t) - 1)  # unbiased, as MAE's code
                t = [(v - m) / math.sqrt(var + 1e-6) for v in t]
            err = sum((float(pv) - tv) ** 2 for pv, tv in zip(pred[b, n], t)) / len(t)
            num, den = num + float(mask[b, n]) * err, den + float(mask[b, n])
    return num / den


@pytest.mark.parametrize("norm_pix", [False, True])
def test_mae_loss_against_reference(norm_pix):
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 5, 6, generator=g), torch.randn(2, 5, 6, generator=g) * 3 + 1
    mask = torch.tensor([[1, 0, 1, 0, 0], [0, 0, 1, 1, 1]], dtype=torch.float32)
    ref = _loss_reference(pred, target, mask, norm_pix)
    assert float(mae_loss(pred, target, mask, norm_pix)) == pytest.approx(ref, rel=1e-5)
    # kept patches do not count, whatever their error
    pred2 = pred.clone()
    pred2[mask == 0] += 100.0
    assert float(mae_loss(pred2, target, mask, norm_pix)) == pytest.approx(ref, rel=1e-5)


def test_mae_loss_hand_worked():
    # one masked patch [1, 2, 3]: mean 2, unbiased var 1 -> target [-1, 0, 1] / sqrt(1 + 1e-6)
    target = torch.tensor([[[1.0, 2.0, 3.0], [5.0, 5.0, 9.0]]])
    pred = torch.zeros(1, 2, 3)
    mask = torch.tensor([[1.0, 0.0]])
    assert float(mae_loss(pred, target, mask, True)) == pytest.approx(2 / 3 / (1 + 1e-6), rel=1e-6)
    assert float(mae_loss(pred, target, mask, False)) == pytest.approx(14 / 3, rel=1e-6)
    assert float(mae_loss(pred, target, torch.zeros(1, 2), False)) == 0.0  # nothing masked


def test_sincos_pos_embed_hand_worked():
    # dim 4: omega = [1]; token (y, x) -> [sin x, cos x, sin y, cos y]; cls entry 0
    e = sincos_pos_embed(4, 2)
    assert e.shape == (1, 5, 4) and e[0, 0].abs().sum() == 0
    for y in range(2):
        for x in range(2):
            ref = torch.tensor([math.sin(x), math.cos(x), math.sin(y), math.cos(y)])
            torch.testing.assert_close(e[0, 1 + y * 2 + x], ref)


def test_forward_shapes_names_and_frozen_pos_embeds():
    m = tiny_mae()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    latent, mask, ids_restore, grid = m.forward_encoder(x, g)
    assert latent.shape == (2, 1 + 4, 32) and mask.shape == (2, 16) and grid == (4, 4)
    assert m.forward_decoder(latent, ids_restore, grid).shape == (2, 16, 8 * 8 * 3)
    # another image size: the position embeddings are resized
    latent, _, ids_restore, grid = m.forward_encoder(torch.randn(1, 3, 48, 32), g)
    assert m.forward_decoder(latent, ids_restore, grid).shape == (1, 24, 192)
    decoder_keys = [k for k in m.state_dict() if not k.startswith("encoder.")]
    assert decoder_keys and all(k.startswith(("decoder", "mask_token")) for k in decoder_keys)
    assert not m.encoder.pos_embed.requires_grad and not m.decoder_pos_embed.requires_grad
    torch.testing.assert_close(m.encoder.pos_embed.detach(), sincos_pos_embed(32, 4))


def test_padding_patches_do_not_count():
    m = tiny_mae()
    valid = m._valid_patches([(32, 32), (20, 32), (32, 15)], (4, 4), "cpu").reshape(3, 4, 4)
    assert valid[0].all() and valid[1, :2].all() and not valid[1, 2:].any()
    assert valid[2, :, :1].all() and not valid[2, :, 1:].any()
    images = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    other = images.clone()
    other[..., 16:, :] = torch.randint(0, 256, (1, 3, 16, 32), dtype=torch.uint8)  # only in the padding
    # the padded part's pixels change neither the inputs (zeroed) nor the counted targets
    assert m.reconstruction_loss(images, [(16, 32)], g()) == m.reconstruction_loss(other, [(16, 32)], g())
    assert m.reconstruction_loss(images, None, g()) != m.reconstruction_loss(other, None, g())


def test_overfits_a_tiny_batch():
    torch.manual_seed(0)
    m = tiny_mae()
    low = torch.rand(2, 3, 4, 4) * 255  # smooth images: patches with structure to learn
    images = torch.nn.functional.interpolate(low, size=(32, 32), mode="bilinear").round().to(torch.uint8)
    batch = SimpleNamespace(images=images, image_sizes=[(32, 32)] * 2, targets=None)
    out = m(batch)
    assert set(out) == {"loss_mae"} and out["loss_mae"].dim() == 0 and torch.isfinite(out["loss_mae"])
    out["loss_mae"].backward()
    assert m.encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0 and m.mask_token.grad.abs().sum() > 0
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(20):  # the same masks every step: a pure fit of the removed patches
        loss = m.reconstruction_loss(images, batch.image_sizes, torch.Generator().manual_seed(0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # a constant prediction scores ~1 against normalized pixels; fitting goes well below it
    assert losses[0] > 1.0 and losses[-1] < 0.7, losses


def test_backbone_state_dict_loads_into_a_fresh_vit(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    m = tiny_mae()
    with torch.no_grad():  # make it differ from any fresh initialization
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    sd = m.backbone_state_dict()
    assert set(sd) == set(tiny_encoder().state_dict())
    path = tmp_path / "backbone.safetensors"
    save_file(sd, str(path))
    x = torch.randn(2, 3, 32, 32)
    m.eval()
    for source in (path, tmp_path / "whole.safetensors"):
        if source.name == "whole.safetensors":  # the whole MAE: the filter drops the decoder
            save_file({k.removeprefix("encoder."): v.contiguous() for k, v in m.state_dict().items()}, str(source))
        fresh = tiny_encoder().eval()
        report = load_pretrained(fresh, source, vit_filter_fn, strict=True)
        assert report.ok
        torch.testing.assert_close(fresh(x), m.encoder(x), rtol=0, atol=0)
