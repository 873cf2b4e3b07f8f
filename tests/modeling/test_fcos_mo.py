"""FCOS-MO: supervision flags (ALPs: no box / centerness / mask loss), overfit, checkpoint round
trip, prediction with swapped vocabularies, builders."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from omniseg.data.batch import Batch, Targets, collate
from omniseg.data.dataset import synth_dataset
from omniseg.data.synth.world import SynthConfig
from omniseg.engine.checkpoint import load_checkpoint, save_checkpoint
from omniseg.modeling.contrastive_classifier import PhraseEmbedder
from omniseg.modeling.fcos_mo import (
    FCOSMOConfig,
    build_fcos_mo,
    scale_ranges,
)
from omniseg.ops.boxes import box_iou
from omniseg.text.encoders import HashEncoder

D = 32
TINY = FCOSMOConfig(backbone="resnet18_fpn_p3p7", width=8, fpn_channels=32, norm="GN", freeze_at=0,
                    embed_dim=D, head_convs=2, gn_groups=8, mask_channels=16)
LOSSES = ("loss_cls", "loss_box", "loss_ctr", "loss_mask")


def _model(cfg: FCOSMOConfig = TINY, seed: int = 0):
    torch.manual_seed(seed)
    m = build_fcos_mo(cfg)
    m.set_text_embedder(PhraseEmbedder(HashEncoder(D).encode, D))
    return m


@pytest.fixture(scope="module")
def batch() -> Batch:
    ds = synth_dataset(SynthConfig(seed=3, num_images=2, image_size=128), progress=False)
    return collate([ds[0], ds[1]])


def _targets(boxes, texts, exact, has_mask, h=128, w=128) -> Targets:
    n = len(boxes)
    masks = torch.zeros(n, h, w, dtype=torch.uint8)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        if has_mask[i]:
            masks[i, int(y1) + 2:int(y2) - 2, int(x1) + 2:int(x2) - 2] = 1
    return Targets(
        boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), masks=masks,
        has_box=torch.ones(n, dtype=torch.bool), box_exact=torch.tensor(exact, dtype=torch.bool),
        has_mask=torch.tensor(has_mask, dtype=torch.bool), is_crowd=torch.zeros(n, dtype=torch.bool),
        is_thing=torch.ones(n, dtype=torch.bool),
        category_ids=torch.tensor([3 if e else -1 for e in exact], dtype=torch.long), texts=list(texts))


def _hand_batch(targets: list[Targets]) -> Batch:
    g = torch.Generator().manual_seed(5)
    images = torch.randint(0, 256, (len(targets), 3, 128, 128), generator=g, dtype=torch.uint8)
    b = len(targets)
    return Batch(images=images, image_sizes=[(128, 128)] * b, targets=targets, captions=[[]] * b,
                 image_ids=list(range(b)), orig_sizes=[(128, 128)] * b, num_dropped=[0] * b,
                 sources=[""] * b, records=[None] * b)


def test_losses_and_counts(batch):
    out = _model()(batch)
    assert set(LOSSES) <= set(out)
    assert all(torch.isfinite(out[k]) and out[k] > 0 for k in LOSSES)
    n_masks = sum(int((t.has_mask & t.has_box).sum()) for t in batch.targets)
    assert out["num_masks"].item() == n_masks and out["num_pos"].item() == out["num_pos_exact"].item() > 0


def test_alp_instances_feed_classification_only():
    exact = ([20.0, 20.0, 60.0, 60.0], "blue square")
    alp = ([72.0, 70.0, 120.0, 122.0], "a shiny thing")  # no location shared with the exact box
    only_exact = _hand_batch([_targets([exact[0]], [exact[1]], [True], [True])])
    mixed = _hand_batch([_targets([exact[0], alp[0]], [exact[1], alp[1]], [True, False], [True, False])])
    # the ALP's box turned exact: now it must feed the box loss (the check can fail)
    as_exact = _hand_batch([_targets([exact[0], alp[0]], [exact[1], alp[1]], [True, True], [True, False])])
    m = _model()
    a, b, c = m(only_exact), m(mixed), m(as_exact)
    assert b["num_pos"] > a["num_pos"] and b["num_pos_exact"] == a["num_pos_exact"]
    for k in ("loss_box", "loss_ctr", "loss_mask"):
        assert torch.allclose(a[k], b[k]), k
    assert not torch.allclose(a["loss_cls"], b["loss_cls"])
    assert not torch.allclose(b["loss_box"], c["loss_box"])
    # a batch of ALPs only: zero box, centerness and mask losses, and zero gradient to those branches
    alps = _hand_batch([_targets([alp[0], exact[0]], [alp[1], "red ring"], [False, False], [False, False])])
    m.zero_grad()
    out = m(alps)
    assert out["num_pos"] > 0 and out["num_pos_exact"] == 0 and out["num_masks"] == 0
    assert out["loss_box"].item() == 0 and out["loss_ctr"].item() == 0 and out["loss_mask"].item() == 0
    sum(out[k] for k in LOSSES).backward()
    for p in [*m.head.box_pred.parameters(), *m.head.ctr_pred.parameters(), *m.mask_head.parameters()]:
        assert p.grad is None or p.grad.abs().sum() == 0
    assert m.head.cls_proj.weight.grad.abs().sum() > 0
    # with alp_centerness the ALP trains the centerness branch but still no box regression
    out = _model(dataclasses.replace(TINY, alp_centerness=True))(alps)
    assert out["loss_ctr"].item() > 0 and out["loss_box"].item() == 0


def test_centerness_switch(batch):
    out = _model(dataclasses.replace(TINY, use_centerness=False))(batch)
    assert out["loss_ctr"].item() == 0 and out["loss_box"].item() > 0


def test_crowd_and_empty_images():
    t = _targets([[20.0, 20.0, 60.0, 60.0]], ["crowd of rings"], [True], [True])
    crowd = _hand_batch([dataclasses.replace(t, is_crowd=torch.tensor([True]))])
    out = _model()(crowd)
    assert out["num_pos"] == 0 and out["num_masks"] == 0 and out["loss_box"].item() == 0
    # no phrase in the batch: background is the only candidate, the softmax is certain, loss 0
    out = _model()(_hand_batch([Targets.empty(128, 128)]))
    assert out["loss_cls"].item() == 0 and out["num_pos"] == 0
    # an empty image next to a labelled one: its locations are background against the batch's phrases
    one = _hand_batch([t])
    both = dataclasses.replace(_hand_batch([t, Targets.empty(128, 128)]), images=one.images.repeat(2, 1, 1, 1))
    m = _model()
    assert m(both)["loss_cls"] > m(one)["loss_cls"] > 0


def test_overfit_tiny_batch(batch):
    m = _model()
    opt = torch.optim.Adam(m.parameters(), lr=2e-3)
    first = None
    for _ in range(60):
        out = m(batch)
        loss = sum(out[k] for k in LOSSES)
        first = first if first is not None else {k: out[k].item() for k in LOSSES}
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert out["loss_cls"].item() < 0.05 * first["loss_cls"]
    assert out["loss_box"].item() < 0.4 * first["loss_box"]
    assert out["loss_mask"].item() < 0.7 * first["loss_mask"]
    m.eval()
    vocab = sorted({x for t in batch.targets for x in t.texts})
    preds = m.predict(batch.images, vocab, batch.image_sizes)
    found = total = 0
    for p, t in zip(preds, batch.targets):
        assert len(p) <= TINY.max_detections and (p.scores[:-1] >= p.scores[1:]).all()
        for box, text in zip(t.boxes, t.texts):
            if min(box[2] - box[0], box[3] - box[1]) < 16:  # objects of ~1 stride-8 cell: too few locations
                continue
            total += 1
            same = p.labels == vocab.index(text)
            found += bool(same.any() and box_iou(box[None], p.boxes[same]).max() > 0.7)
    assert total >= 5 and found == total, (found, total)


def test_checkpoint_round_trip(batch, tmp_path):
    m = _model(seed=0)
    m.eval()
    vocab = ["red ring", "blue square"]
    before = m.predict(batch.images, vocab, batch.image_sizes)
    save_checkpoint(tmp_path, 1, model=m)
    other = _model(seed=1)
    other.eval()
    load_checkpoint(tmp_path, model=other)
    after = other.predict(batch.images, vocab, batch.image_sizes)
    for x, y in zip(before, after):
        assert torch.equal(x.boxes, y.boxes) and torch.equal(x.scores, y.scores) and torch.equal(x.masks, y.masks)
    assert sum(len(x) for x in before) > 0


def test_predict_with_swapped_arbitrary_vocabulary(batch):
    m = _model()
    m.eval()
    vocab = ["red ring", "crimson disk", "a small teapot", "zebra-striped kite"]
    preds = m.predict(batch.images, vocab, batch.image_sizes, output_sizes=[(64, 96), (128, 128)])
    assert preds[0].masks.shape[1:] == (64, 96) and preds[1].masks.shape[1:] == (128, 128)
    assert all(((p.labels >= 0) & (p.labels < len(vocab))).all() for p in preds)
    assert preds[0].boxes[:, 2].max() <= 96 and preds[0].boxes[:, 3].max() <= 64
    # reversing the vocabulary permutes the labels and changes nothing else
    rev = m.predict(batch.images, vocab[::-1], batch.image_sizes, output_sizes=[(64, 96), (128, 128)])
    for p, r in zip(preds, rev):
        order = torch.argsort(p.scores * 1000 + p.labels.float())
        order_r = torch.argsort(r.scores * 1000 + (len(vocab) - 1 - r.labels).float())
        assert torch.allclose(p.scores[order], r.scores[order_r])
        assert torch.equal(p.labels[order], len(vocab) - 1 - r.labels[order_r])
    # embeddings directly, and an empty vocabulary
    emb = HashEncoder(D).encode(vocab)
    direct = m.predict(batch.images, emb, batch.image_sizes)
    assert [len(p) for p in direct] == [len(p) for p in m.predict(batch.images, vocab, batch.image_sizes)]
    none = m.predict(batch.images, [], batch.image_sizes)
    assert all(len(p) == 0 and p.masks.shape == (0, 128, 128) for p in none)


def test_builders_and_config_checks():
    fcn = build_fcos_mo(dataclasses.replace(TINY, mask_head="fcn4"))
    assert type(fcn.mask_head).__name__ == "FCNMaskHead"
    assert type(build_fcos_mo(TINY).mask_head).__name__ == "HourglassMaskHead"
    assert scale_ranges((64, 128))[-1] == (128.0, float("inf"))
    with pytest.raises(ValueError):
        build_fcos_mo(dataclasses.replace(TINY, mask_head="mlp"))
    with pytest.raises(ValueError):
        build_fcos_mo(dataclasses.replace(TINY, backbone="resnet18_fpn"))
    with pytest.raises(ValueError):
        build_fcos_mo(dataclasses.replace(TINY, scale_bounds=(64.0,)))
    m = build_fcos_mo(TINY)
    with pytest.raises(ValueError):
        m.predict(torch.zeros(1, 3, 64, 64, dtype=torch.uint8), ["a"])  # no text embedder


def test_scores_are_the_geometric_mean_with_centerness(batch):
    from omniseg.ops.boxes import clip_boxes, distances_to_boxes

    loose = dict(nms_threshold=1.0, max_detections=10_000, pre_nms_topk=10_000, score_threshold=0.2)
    on = _model(dataclasses.replace(TINY, **loose))
    off = _model(dataclasses.replace(TINY, use_centerness=False, **loose))
    off.load_state_dict(on.state_dict())
    on.eval()
    off.eval()
    vocab = ["blue hexagon", "orange circle", "red ring"]
    p_on = on.predict(batch.images[:1], vocab, batch.image_sizes[:1], with_masks=False)[0]
    p_off = off.predict(batch.images[:1], vocab, batch.image_sizes[:1], with_masks=False)[0]
    assert len(p_on) == len(p_off) > 0  # the threshold acts on the class probability in both
    with torch.no_grad():
        emb, ltrb, ctr, pts, _, _, _ = on.dense(on.features(batch.images[:1], batch.image_sizes[:1]))
    all_boxes = clip_boxes(distances_to_boxes(pts, ltrb[0]), batch.image_sizes[0])
    key_off = {(tuple(b.tolist()), int(k)): float(s) for b, k, s in zip(p_off.boxes, p_off.labels, p_off.scores)}
    for b, k, s in zip(p_on.boxes, p_on.labels, p_on.scores):
        loc = int(torch.nonzero((all_boxes == b).all(dim=1))[0])
        p = key_off[(tuple(b.tolist()), int(k))]
        assert float(s) == pytest.approx((p * float(ctr[0, loc].sigmoid())) ** 0.5, rel=1e-5)


def test_explicit_phrase_embeddings_equal_the_embedder(batch):
    from omniseg.modeling.contrastive_classifier import batch_phrases

    m = _model()
    phrases, _ = batch_phrases([t.texts for t in batch.targets])
    a = m(batch)
    b = m(batch, phrase_embeddings=HashEncoder(D).encode(phrases))
    assert torch.allclose(a["loss_cls"], b["loss_cls"])
    # every phrase of the batch is a candidate: a phrase-only instance (no box, so no location)
    # still acts as a negative and changes the loss
    one = _targets([[20.0, 20.0, 60.0, 60.0]], ["blue square"], [True], [True])
    two = _targets([[20.0, 20.0, 60.0, 60.0], [0.0, 0.0, 0.0, 0.0]], ["blue square", "red ring"],
                   [True, False], [True, False])
    two = dataclasses.replace(two, has_box=torch.tensor([True, False]))
    lone, extra = m(_hand_batch([one])), m(_hand_batch([two]))
    assert lone["num_pos"] == extra["num_pos"] and not torch.allclose(lone["loss_cls"], extra["loss_cls"])
    with pytest.raises(ValueError):
        m(batch, phrase_embeddings=torch.zeros(len(phrases) + 1, D))
