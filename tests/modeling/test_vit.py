import math

import pytest
import torch

from omniseg.modeling.backbones.vit import (
    Attention,
    Block,
    SimpleFeaturePyramid,
    VisionTransformer,
    resize_pos_embed,
    vit_base,
    vit_small,
)


def timm_vit_keys(depth: int) -> list[str]:
    """timm ``VisionTransformer`` (class token, no fc_norm) encoder names, head excluded."""
    keys = ["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"]
    for i in range(depth):
        p = f"blocks.{i}."
        keys += [p + "norm1.weight", p + "norm1.bias"]
        keys += [p + "attn.qkv.weight", p + "attn.qkv.bias", p + "attn.proj.weight", p + "attn.proj.bias"]
        keys += [p + "norm2.weight", p + "norm2.bias"]
        keys += [p + "mlp.fc1.weight", p + "mlp.fc1.bias", p + "mlp.fc2.weight", p + "mlp.fc2.bias"]
    return keys + ["norm.weight", "norm.bias"]


def tiny_vit(**kw) -> VisionTransformer:
    args = dict(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2)
    args.update(kw)
    return VisionTransformer(**args)


def test_state_dict_names_match_timm():
    assert sorted(tiny_vit().state_dict()) == sorted(timm_vit_keys(2))
    with torch.device("meta"):
        assert sorted(vit_small().state_dict()) == sorted(timm_vit_keys(12))


@pytest.mark.parametrize("builder,dim,expected", [(vit_small, 384, 21_665_664), (vit_base, 768, 85_798_656)])
def test_builder_sizes_match_timm(builder, dim, expected):
    # timm vit_small_patch16_224: 22,050,664 params, vit_base_patch16_224: 86,567,656, each
    # including a 1000-way head of dim * 1000 + 1000 parameters that we do not build.
    with torch.device("meta"):
        model = builder()
    assert sum(p.numel() for p in model.parameters()) == expected
    assert model.pos_embed.shape == (1, 197, dim) and model.out_channels == dim


def _reference_attention(attn: Attention, x):
    b, n, d = x.shape
    h = attn.num_heads
    qkv = x @ attn.qkv.weight.t() + attn.qkv.bias
    q, k, v = qkv[..., :d], qkv[..., d : 2 * d], qkv[..., 2 * d :]
    out = torch.zeros_like(q)
    hd = d // h
    for bi in range(b):
        for head in range(h):
            sl = slice(head * hd, (head + 1) * hd)
            scores = q[bi, :, sl] @ k[bi, :, sl].t() / math.sqrt(hd)
            out[bi, :, sl] = scores.softmax(-1) @ v[bi, :, sl]
    return out @ attn.proj.weight.t() + attn.proj.bias


def test_attention_and_block_against_reference():
    torch.manual_seed(0)
    attn = Attention(12, 3)
    x = torch.randn(2, 5, 12)
    torch.testing.assert_close(attn(x), _reference_attention(attn, x), atol=1e-5, rtol=1e-5)
    block = Block(12, 3).eval()
    y = x + _reference_attention(block.attn, block.norm1(x))
    y = y + block.mlp.fc2(torch.nn.functional.gelu(block.mlp.fc1(block.norm2(y))))
    torch.testing.assert_close(block(x), y, atol=1e-5, rtol=1e-5)


def test_forward_shapes_and_tokens():
    model = tiny_vit().eval()
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 16, 4, 4)
    # Reference: the same computation written out, patch (i, j) is token 1 + i * 4 + j.
    tokens = model.patch_embed.proj(x).flatten(2).transpose(1, 2)
    tokens = torch.cat([model.cls_token.expand(2, -1, -1), tokens], 1) + model.pos_embed
    for blk in model.blocks:
        tokens = blk(tokens)
    tokens = model.norm(tokens)
    torch.testing.assert_close(out[:, :, 2, 3], tokens[:, 1 + 2 * 4 + 3])


def test_other_input_size_uses_resized_pos_embed():
    model = tiny_vit().eval()
    x = torch.randn(1, 3, 48, 64)
    out = model(x)
    assert out.shape == (1, 16, 6, 8)
    tokens = model.patch_embed.proj(x).flatten(2).transpose(1, 2)
    pos = resize_pos_embed(model.pos_embed, (6, 8))
    tokens = model.norm(model.blocks(torch.cat([model.cls_token, tokens], 1) + pos))
    torch.testing.assert_close(out, tokens[:, 1:].transpose(1, 2).reshape(1, 16, 6, 8))
    with pytest.raises(ValueError, match="not square"):
        resize_pos_embed(pos, (2, 2))
    with pytest.raises(ValueError, match="multiple of the patch size"):
        model(torch.randn(1, 3, 30, 32))


def _cubic_weights(t: float, a: float = -0.75) -> list[float]:
    def k(s):
        s = abs(s)
        if s <= 1:
            return (a + 2) * s**3 - (a + 3) * s**2 + 1
        if s < 2:
            return a * s**3 - 5 * a * s**2 + 8 * a * s - 4 * a
        return 0.0

    return [k(t + 1), k(t), k(1 - t), k(2 - t)]


def _reference_bicubic_1d(values: list[float], out_len: int) -> list[float]:
    n = len(values)
    scale = n / out_len
    out = []
    for i in range(out_len):
        src = (i + 0.5) * scale - 0.5  # align_corners=False
        i0 = math.floor(src)
        w = _cubic_weights(src - i0)
        out.append(sum(wj * values[min(max(i0 - 1 + j, 0), n - 1)] for j, wj in enumerate(w)))
    return out


def test_resize_pos_embed_against_separable_reference():
    g = torch.Generator().manual_seed(0)
    pos = torch.randn(1, 1 + 9, 2, generator=g)
    out = resize_pos_embed(pos, (5, 4))
    assert out.shape == (1, 1 + 20, 2)
    torch.testing.assert_close(out[:, 0], pos[:, 0])  # cls entry kept
    grid = pos[0, 1:].reshape(3, 3, 2)
    for c in range(2):
        rows = [_reference_bicubic_1d(grid[r, :, c].tolist(), 4) for r in range(3)]  # along width
        cols = [_reference_bicubic_1d([rows[r][j] for r in range(3)], 5) for j in range(4)]  # along height
        ref = torch.tensor([[cols[j][i] for j in range(4)] for i in range(5)])
        torch.testing.assert_close(out[0, 1:, c].reshape(5, 4), ref, atol=1e-5, rtol=1e-5)


def test_resize_pos_embed_hand_worked():
    const = torch.full((1, 1 + 16, 3), 2.5)
    torch.testing.assert_close(resize_pos_embed(const, (7, 3)), torch.full((1, 22, 3), 2.5))
    pos = torch.randn(1, 5, 4)
    assert resize_pos_embed(pos, (2, 2)) is pos
    # 2 -> 4 along one axis, values [0, 1]: src positions -0.25, 0.25, 0.75, 1.25 with border
    # index clamping, weights from the a=-0.75 cubic kernel k: out[0] = k(1.25) = -0.10546875,
    # out[1] = k(0.75) + k(1.75) = 0.26171875 - 0.03515625, out[2] = k(0.25) + k(1.25), out[3] = 1 - out[0].
    ramp = torch.tensor([0.0, 1.0, 0.0, 1.0]).view(1, 4, 1)
    out = resize_pos_embed(torch.cat([torch.zeros(1, 1, 1), ramp], 1), (2, 4))
    expected = torch.tensor([-0.10546875, 0.2265625, 0.7734375, 1.10546875])
    torch.testing.assert_close(out[0, 1:5, 0], expected)
    torch.testing.assert_close(out[0, 5:9, 0], expected)


def test_gradients_and_drop_path_train_eval():
    torch.manual_seed(0)
    model = tiny_vit(drop_path_rate=0.5)
    x = torch.randn(4, 3, 32, 32)
    model(x).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    model.train()
    assert not torch.allclose(model(x), model(x))
    model.eval()
    torch.testing.assert_close(model(x), model(x))


def test_simple_feature_pyramid():
    model = tiny_vit(patch_size=16, img_size=64).eval()
    sfp = SimpleFeaturePyramid(16, 8, stride=16)
    out = sfp(model(torch.randn(2, 3, 64, 64)))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "p2": (2, 8, 16, 16),
        "p3": (2, 8, 8, 8),
        "p4": (2, 8, 4, 4),
        "p5": (2, 8, 2, 2),
    }
    assert sfp.strides == {"p2": 4, "p3": 8, "p4": 16, "p5": 32}
    with pytest.raises(ValueError, match="scale"):
        SimpleFeaturePyramid(16, 8, scales=(3.0,))


def test_bad_sizes():
    with pytest.raises(ValueError, match="multiple"):
        VisionTransformer(img_size=30, patch_size=8)
    with pytest.raises(ValueError, match="divisible"):
        Attention(10, 3)
