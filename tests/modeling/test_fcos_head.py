"""FCOS-MO dense head: shapes, shared towers, per-level scales, centerness placement."""

from __future__ import annotations

import pytest
import torch

from omniseg.modeling.fcos_head import MAX_LOG_DISTANCE, FCOSMOHead


def _maps(c=16, sizes=((8, 8), (4, 4), (2, 2))):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(2, c, h, w, generator=g) for h, w in sizes]


def test_shapes_and_positive_distances():
    head = FCOSMOHead(16, embed_dim=12, num_levels=3, num_convs=2, gn_groups=4)
    emb, ltrb, ctr = head(_maps(), [8, 16, 32])
    for e, d, c, (h, w) in zip(emb, ltrb, ctr, ((8, 8), (4, 4), (2, 2))):
        assert e.shape == (2, 12, h, w) and d.shape == (2, 4, h, w) and c.shape == (2, 1, h, w)
        assert (d > 0).all()
    with pytest.raises(ValueError):
        head(_maps()[:2], [8, 16])


def test_towers_are_shared_and_distances_follow_stride_and_scale():
    head = FCOSMOHead(16, embed_dim=12, num_levels=2, num_convs=1, gn_groups=4)
    x = _maps(sizes=((4, 4),))[0]
    emb, ltrb, ctr = head([x, x], [8, 32])
    assert torch.allclose(emb[0], emb[1]) and torch.allclose(ctr[0], ctr[1])
    # same input on both levels: distances scale with the stride, exp(s * raw) * stride
    assert torch.allclose(ltrb[1], ltrb[0] * 4)
    raw = head.box_pred(head.reg_tower(x))
    with torch.no_grad():
        head.scales[1] = 2.0
    _, ltrb, _ = head([x, x], [8, 32])
    assert torch.allclose(ltrb[1], torch.exp((2 * raw).clamp(max=MAX_LOG_DISTANCE)) * 32, rtol=1e-5)


def test_centerness_branch_reads_the_chosen_tower():
    x = _maps(sizes=((4, 4),))[0]
    for on_reg in (True, False):
        torch.manual_seed(0)
        head = FCOSMOHead(16, embed_dim=8, num_levels=1, num_convs=2, gn_groups=4, centerness_on_reg=on_reg)
        tower = head.reg_tower if on_reg else head.cls_tower
        _, _, ctr = head([x], [8])
        assert torch.allclose(ctr[0], head.ctr_pred(tower(x)))
        # gradients of the centerness reach that tower only
        head.zero_grad()
        ctr[0].sum().backward()
        other = head.cls_tower if on_reg else head.reg_tower
        assert tower[0].weight.grad.abs().sum() > 0
        assert other[0].weight.grad is None or other[0].weight.grad.abs().sum() == 0


def test_projection_is_a_1x1_conv_of_the_cls_tower():
    head = FCOSMOHead(16, embed_dim=12, num_levels=1, num_convs=2, gn_groups=4)
    x = _maps(sizes=((3, 5),))[0]
    emb, _, _ = head([x], [8])
    t = head.cls_tower(x)
    ref = torch.einsum("dc,bchw->bdhw", head.cls_proj.weight[:, :, 0, 0], t) + head.cls_proj.bias[None, :, None, None]
    assert torch.allclose(emb[0], ref, atol=1e-6)
