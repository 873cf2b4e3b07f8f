import math

import pytest
import torch
import torch.nn.functional as F

from omniseg.modeling.vloss import VLOSSConfig, VLOSSTarget, build_vloss, vloss_inference
from omniseg.modeling.vloss_decoder import DecoderLayer, attention_mask, sine_positions

K, E, N = 4, 12, 8


def tiny(**kw) -> VLOSSConfig:
    base = dict(width=8, hidden_dim=16, num_queries=N, dec_layers=2, num_heads=4, embed_dim=E, num_points=64)
    return VLOSSConfig(**{**base, **kw})


def class_emb() -> torch.Tensor:
    return F.normalize(torch.randn(K, E, generator=torch.Generator().manual_seed(0)), dim=-1)


def halves() -> torch.Tensor:
    """2 x 64 x 64 masks: top half, bottom half."""
    m = torch.zeros(2, 64, 64)
    m[0, :32] = 1
    m[1, 32:] = 1
    return m


def panoptic(caption: torch.Tensor | None = None) -> VLOSSTarget:
    return VLOSSTarget("panoptic", torch.tensor([0, 3]), halves(), torch.ones(2, dtype=torch.bool),
                       torch.tensor([[0.0, 0, 64, 32], [0, 32, 64, 64]]), caption)


def detection(masks: bool = True) -> VLOSSTarget:
    return VLOSSTarget("detection", torch.tensor([1, 2]), halves() if masks else None,
                       torch.tensor([True, False]) if masks else torch.zeros(2, dtype=torch.bool),
                       torch.tensor([[0.0, 0, 64, 32], [8, 40, 40, 60]]))


def image_text(seed: int) -> VLOSSTarget:
    g = torch.Generator().manual_seed(seed)
    return VLOSSTarget("image_text", torch.zeros(0, dtype=torch.long), None, torch.zeros(0, dtype=torch.bool),
                       torch.zeros(0, 4), torch.randn(E, generator=g), torch.randn(3, E, generator=g))


@pytest.mark.parametrize("encoder", ["fpn_style", "fpn"])
def test_forward_shapes_for_both_encoders(encoder):
    torch.manual_seed(0)
    model = build_vloss(tiny(encoder=encoder))
    has_transformer = any(n.startswith("encoder.transformer") for n, _ in model.named_parameters())
    assert has_transformer == (encoder == "fpn_style")
    images = torch.randn(2, 3, 64, 96)
    c = model.trunk(images)
    feats, mask_features = model.encoder([c["c2"], c["c3"], c["c4"], c["c5"]])
    assert [tuple(f.shape) for f in feats] == [(2, 16, 2, 3), (2, 16, 4, 6), (2, 16, 8, 12), (2, 16, 16, 24)]
    assert mask_features.shape == (2, 16, 16, 24)
    out = model(images, class_emb())
    assert out["logits"].shape == (2, N, K + 1)
    assert out["masks"].shape == (2, N, 16, 24)
    assert out["global"].shape == (2, E) and out["tokens"].shape == (2, N, E)
    assert len(out["aux"]) == 2  # the initial queries' prediction and the first layer's
    assert all(a["logits"].shape == (2, N, K + 1) and a["masks"].shape == (2, N, 16, 24) for a in out["aux"])


@pytest.mark.parametrize("strides, tokens", [("32,16,8", [6, 24, 96]), ("16,8,4", [24, 96, 384])])
def test_decoder_attends_to_the_configured_levels(strides, tokens):
    """A 64 x 96 input: stride 32 = 2 x 3 cells, 16 = 4 x 6, 8 = 8 x 12, 4 = 16 x 24; three layers, round robin."""
    torch.manual_seed(0)
    model = build_vloss(tiny(dec_layers=3, decoder_strides=strides))
    seen = []
    for layer in model.decoder.layers:
        layer.register_forward_hook(lambda mod, args, out: seen.append(args[2].shape[1]))  # memory: B x HW x D
    out = model(torch.randn(2, 3, 64, 96), class_emb())
    assert seen == tokens and out["masks"].shape == (2, N, 16, 24)


def test_sine_positions_by_hand():
    pe = sine_positions(2, 3, 4)
    assert pe.shape == (6, 4)
    # row-major cell (r, c): y = (r + 1) / 2 * 2 pi, x = (c + 1) / 3 * 2 pi; dims (sin, cos) with dim_t = 1, 1
    for r in range(2):
        for c in range(3):
            y, x = (r + 1) / 2 * 2 * math.pi, (c + 1) / 3 * 2 * math.pi
            assert pe[r * 3 + c].tolist() == pytest.approx([math.sin(y), math.cos(y), math.sin(x), math.cos(x)],
                                                           abs=1e-5)


def test_attention_mask_by_hand():
    logits = torch.full((1, 3, 2, 2), -5.0)
    logits[0, 1, 0, 0] = 5.0  # query 1: only the top-left pixel; query 0 and 2: empty masks
    logits[0, 2] = 5.0  # query 2: everything
    m = attention_mask(logits, (2, 2), heads=2)
    assert m.shape == (2, 4, 4)  # (B * heads) x (N + global) x pixels
    assert torch.equal(m[0], m[1])
    assert not m[0, 0].any()  # empty previous mask -> attends everywhere
    assert m[0, 1].tolist() == [False, True, True, True]
    assert not m[0, 2].any() and not m[0, 3].any()  # full mask; the global token is never masked


def test_masked_cross_attention_empty_mask_attends_everywhere():
    torch.manual_seed(0)
    layer = DecoderLayer(8, 2, 16).eval()
    q, qpos = torch.randn(1, 3, 8), torch.randn(3, 8)
    mem, mpos = torch.randn(1, 4, 8), torch.randn(4, 8)
    prev = torch.full((1, 2, 2, 2), -5.0)
    prev[0, 1, 0, 0] = 5.0  # query 1 sees one pixel; query 0's mask is empty
    masked = layer.cross(q + qpos, mem + mpos, mem, attn_mask=attention_mask(prev, (2, 2), 2))[1]
    free = layer.cross(q + qpos, mem + mpos, mem)[1]
    assert torch.allclose(masked[0, 0], free[0, 0])  # empty mask: the unmasked attention
    assert torch.allclose(masked[0, 1], torch.tensor([1.0, 0, 0, 0]))  # all weight on its pixel
    assert torch.allclose(masked[0, 2], free[0, 2])  # the global token
    out = layer(q, qpos, mem, mpos, attention_mask(prev, (2, 2), 2))
    assert out.shape == (1, 3, 8) and torch.isfinite(out).all()


def perfect_outputs(model) -> tuple[torch.Tensor, torch.Tensor]:
    """logits / masks for 2 images where query 2 = target 0 and query 5 = target 1 exactly (confident)."""
    logits = torch.zeros(2, N, K + 1)
    logits[:, :, K] = 4.0  # the others: no-object
    masks = torch.full((2, N, 16, 16), -20.0)
    for b, labels in enumerate(([0, 3], [1, 2])):
        for q, lab, rows in ((2, labels[0], slice(0, 8)), (5, labels[1], slice(8, 16))):
            logits[b, q] = 0.0
            logits[b, q, lab] = 12.0
            masks[b, q, rows] = 20.0
    return logits, masks


def test_matcher_integration_perfect_prediction_gets_near_zero_loss():
    torch.manual_seed(0)
    model = build_vloss(tiny(num_points=256))
    logits, masks = perfect_outputs(model)
    targets = [panoptic(), detection()]
    targets[1].mask_valid = torch.tensor([True, True])
    terms = model.segmentation_losses(logits, masks, targets)
    # what remains is the importance-sampled points on the mask edges (soft targets, zero padding), as Mask2Former
    assert terms["loss_cls"].item() / 2 < 0.01 and terms["loss_proj"].item() == 0.0
    assert terms["loss_bce"].item() / 5 < 0.25 and terms["loss_dice"].item() / 5 < 0.05
    empty = model.segmentation_losses(logits, torch.full_like(masks, -20.0), targets)  # every mask empty
    assert empty["loss_bce"].item() / 5 > 3.0 and empty["loss_dice"].item() / 5 > 0.9
    swapped = masks.clone()
    swapped[:, [2, 5]] = masks[:, [5, 2]]  # the two queries' masks exchanged: the matcher follows the masks
    bad = model.segmentation_losses(logits, swapped, targets)
    assert bad["loss_cls"].item() / 2 > 5.0 and bad["loss_dice"].item() / 5 < 0.05


def test_positive_only_cls_ignores_unmatched_queries_panoptic_does_not():
    torch.manual_seed(0)
    model = build_vloss(tiny())
    logits, masks = perfect_outputs(model)
    logits[:, [0, 1, 3], K] = 0.5  # unmatched queries not yet sure of no-object
    changed = logits.clone()
    changed[:, [0, 1, 3], K] += 3.0  # more no-object: the matching stays the same
    det = [detection(), detection()]
    for t in det:
        t.mask_valid = torch.tensor([True, True])
    pan = [panoptic(), panoptic()]
    for t in pan:
        t.labels = torch.tensor([1, 2])  # the labels perfect_outputs' second image predicts
    a = model.segmentation_losses(logits[1:].expand(2, -1, -1), masks[1:].expand(2, -1, -1, -1), det)
    b = model.segmentation_losses(changed[1:].expand(2, -1, -1), masks[1:].expand(2, -1, -1, -1), det)
    assert a["loss_cls"].item() == pytest.approx(b["loss_cls"].item(), rel=1e-6)
    c = model.segmentation_losses(logits[1:].expand(2, -1, -1), masks[1:].expand(2, -1, -1, -1), pan)
    d = model.segmentation_losses(changed[1:].expand(2, -1, -1), masks[1:].expand(2, -1, -1, -1), pan)
    assert d["loss_cls"].item() < c["loss_cls"].item() - 0.01
    full = build_vloss(tiny(positive_only_cls=False))
    e = full.segmentation_losses(logits[1:].expand(2, -1, -1), masks[1:].expand(2, -1, -1, -1), det)
    assert e["loss_cls"].item() == pytest.approx(c["loss_cls"].item(), rel=1e-6)  # detection = panoptic then


def test_image_text_targets_only_produce_loss_con():
    torch.manual_seed(0)
    model = build_vloss(tiny())
    out = model(torch.randn(2, 3, 64, 64), class_emb())
    terms = model.loss(out, [image_text(1), image_text(2)])
    assert terms["loss_con"].item() > 0
    assert all(v.item() == 0.0 for k, v in terms.items() if k != "loss_con")
    no_caption = model.loss(out, [panoptic(), detection()])
    assert no_caption["loss_con"].item() == 0.0 and no_caption["loss_cls"].item() > 0
    assert no_caption["loss_proj"].item() > 0  # the box-only target of the detection image
    filip = build_vloss(tiny(contrastive="filip"))
    assert filip.loss(filip(torch.randn(2, 3, 64, 64), class_emb()), [image_text(1), image_text(2)])[
        "loss_con"].item() > 0


def test_one_step_reaches_every_parameter():
    torch.manual_seed(0)
    model = build_vloss(tiny(dec_layers=3))  # 3 layers: each of f'_0, f'_1, f'_2 is attended once
    out = model(torch.randn(4, 3, 64, 64), class_emb())
    terms = model.loss(out, [panoptic(image_text(5).caption_emb), detection(), detection(masks=False),
                             image_text(1)])
    assert set(terms) == {f"loss_{k}{s}" for k in ("cls", "bce", "dice", "proj") for s in ("", "_aux0", "_aux1", "_aux2")
                          } | {"loss_con"}
    sum(terms.values()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    groups = ["trunk", "encoder", "decoder", "classifier", "global_proj", "log_con_scale"]
    for group in groups:
        norm = sum(float(p.grad.abs().sum()) for n, p in model.named_parameters() if n.startswith(group))
        assert norm > 0, group


def test_inference_confident_query_wins_and_low_scores_drop():
    logits = torch.zeros(1, 3, K + 1)
    logits[0, 0, 0] = 10.0  # class 0, p ~ 1
    logits[0, 1, 1] = 3.0  # class 1, p = e^3 / (e^3 + 4) ~ 0.83
    # query 2: all logits equal -> p = 0.2, dropped
    masks = torch.full((1, 3, 4, 4), -30.0)
    masks[0, 0, :, :2] = 30.0  # left half
    masks[0, 1, :, 1:] = 30.0  # the right three quarters (overlapping query 0 on column 1)
    masks[0, 2] = 30.0
    out = {"logits": logits, "masks": masks}
    (res,) = vloss_inference(out, [(16, 16)], [(16, 16)], is_thing=[True, False, True, True],
                             overlap_threshold=0.5)
    expected = torch.zeros(16, 16, dtype=torch.long)
    expected[:, :8] = 1
    expected[:, 8:] = 2
    assert torch.equal(res.segment_map, expected)
    p1 = math.exp(3) / (math.exp(3) + 4)
    assert [(s.id, s.label, s.isthing) for s in res.segments] == [(1, 0, True), (2, 1, False)]
    assert res.segments[1].score == pytest.approx(p1, rel=1e-5)
    # default overlap 0.8: query 1 keeps only 8 of its 12 columns -> dropped
    (strict,) = vloss_inference(out, [(16, 16)], [(16, 16)], is_thing=[True, False, True, True])
    assert [s.label for s in strict.segments] == [0] and int(strict.segment_map[:, 8:].max()) == 0
    # instances: things only (class 1 is stuff), best first, query 0 as class 0 on top
    inst = res.instances
    assert 1 not in inst.labels.tolist() and inst.scores[0].item() == pytest.approx(
        math.exp(10) / (math.exp(10) + 4), rel=1e-4)
    assert inst.masks[0, :, :8].all() and not inst.masks[0, :, 8:].any()
    assert inst.boxes[0].tolist() == [0.0, 0.0, 8.0, 16.0]
    assert (inst.scores[:-1] >= inst.scores[1:]).all()
    # crop + resize: a 16 x 12 image in the padded 16 x 16 input, predicted at 32 x 24
    (small,) = vloss_inference(out, [(16, 12)], [(32, 24)], is_thing=[True, False, True, True],
                               overlap_threshold=0.5)
    assert small.segment_map.shape == (32, 24) and int(small.segment_map[:, :16].min()) == 1


def test_inference_merges_stuff_of_one_class():
    logits = torch.zeros(1, 2, 2)
    logits[0, :, 0] = 8.0  # both queries: stuff class 0
    masks = torch.full((1, 2, 4, 4), -30.0)
    masks[0, 0, :2] = 30.0
    masks[0, 1, 2:] = 30.0
    (res,) = vloss_inference({"logits": logits, "masks": masks}, [(16, 16)], [(16, 16)], is_thing=[False])
    assert len(res.segments) == 1 and bool((res.segment_map == 1).all())
    assert len(res.instances) == 0  # no thing class


def test_empty_panoptic_target_sends_every_query_to_no_object():
    model = build_vloss(tiny())
    logits = torch.randn(1, N, K + 1, generator=torch.Generator().manual_seed(4))
    masks = torch.randn(1, N, 16, 16)
    empty = VLOSSTarget("panoptic", torch.zeros(0, dtype=torch.long), torch.zeros(0, 64, 64),
                        torch.zeros(0, dtype=torch.bool), torch.zeros(0, 4))
    terms = model.segmentation_losses(logits, masks, [empty])
    ref = sum(math.log(sum(math.exp(v) for v in row)) - row[K] for row in logits[0].tolist()) / N
    assert terms["loss_cls"].item() == pytest.approx(2.0 * ref, rel=1e-5)
    assert terms["loss_bce"].item() == terms["loss_dice"].item() == terms["loss_proj"].item() == 0.0
    empty.kind = "detection"  # positive-only: nothing is matched, so no classification loss at all
    assert model.segmentation_losses(logits, masks, [empty])["loss_cls"].item() == 0.0
