from dataclasses import replace

import pytest
import torch

from omniseg.data.batch import collate
from omniseg.data.dataset import synth_dataset
from omniseg.data.synth.world import SynthConfig
from omniseg.modeling.faster_rcnn import build_faster_rcnn_r18_fpn
from omniseg.modeling.maskx_rcnn import (
    MASKX_RCNN_BUILDERS,
    MaskRCNN,
    build_mask_head,
    build_maskx_rcnn_r18_fpn,
    build_maskx_rcnn_r50_fpn,
)
from omniseg.modeling.roi_box_head import BoxHeadConfig
from omniseg.modeling.roi_mask_head import MaskHeadConfig
from omniseg.modeling.rpn import RPNConfig
from omniseg.modeling.weight_transfer import TRANSFER_INPUTS

TINY = dict(width=8, fpn_channels=16, fc_dim=32, norm="GN", freeze_at=0, mask_conv_dim=16, mask_norm="GN",
            mlp_hidden_dim=32, transfer_hidden_dim=32,
            rpn=RPNConfig(pre_nms_topk_train=200, post_nms_topk_train=100, pre_nms_topk_test=200,
                               post_nms_topk_test=50),
            box=BoxHeadConfig(batch_size_per_image=64))
DET_LOSSES = {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg"}


@pytest.fixture(scope="module")
def synth():
    ds = synth_dataset(SynthConfig(num_images=2, image_size=128, min_objects=2, max_objects=3), progress=False)
    batch = collate([ds[0], ds[1]])
    cats = sorted({int(c) for t in batch.targets for c in t.category_ids})
    return batch, cats


def _model(cats, seed=0, **kw):
    torch.manual_seed(seed)
    return build_maskx_rcnn_r18_fpn(len(cats), category_ids=cats, **{**TINY, **kw})


def _box_only(batch, keep_mask_of_first=True):
    """The same batch with only the first instance of each image keeping its mask."""
    targets = []
    for t in batch.targets:
        has = torch.zeros_like(t.has_mask)
        if keep_mask_of_first:
            has[0] = True
        targets.append(replace(t, has_mask=has))
    return replace(batch, targets=targets)


def _mask_loss(m, batch, seed=0):
    return m(batch, generator=torch.Generator().manual_seed(seed))


def test_losses_and_predictions_shapes(synth):
    batch, cats = synth
    m = _model(cats)
    losses = _mask_loss(m, batch)
    assert set(losses) == DET_LOSSES | {"loss_mask", "num_mask_rois"}
    assert float(losses["num_mask_rois"]) > 0 and all(torch.isfinite(v) for v in losses.values())
    m.eval()
    m.detector.roi_heads.cfg.score_threshold = 0.0
    preds = m.predict(batch.images, batch.image_sizes, output_sizes=[(256, 128), (128, 128)])
    for p, size in zip(preds, [(256, 128), (128, 128)]):
        n = len(p)
        assert n > 0 and p.masks.shape == (n, *size) and p.masks.dtype == torch.bool
        assert p.scores.shape == (n,) and p.labels.shape == (n,) and bool((p.labels < len(cats)).all())
    dets = m.detector.predict(batch.images, batch.image_sizes)
    torch.testing.assert_close(preds[1].boxes, dets[1].boxes)
    torch.testing.assert_close(preds[0].boxes, dets[0].boxes * torch.tensor([1.0, 2.0, 1.0, 2.0]))


@pytest.mark.parametrize("stop_grad", [True, False])
def test_weight_transfer_gradient_flow_into_box_head(synth, stop_grad):
    batch, cats = synth
    m = _model(cats, stop_grad=stop_grad)
    losses = _mask_loss(m, _box_only(batch))
    pred = m.detector.roi_heads.predictor
    losses["loss_mask"].backward()
    assert float(m.mask_head.transfer.fcs[0].weight.grad.abs().sum()) > 0  # T always learns
    if stop_grad:  # maskx-rcnn Sec. 3.2: the mask loss must not reach w_det
        assert pred.cls_score.weight.grad is None and pred.bbox_pred.weight.grad is None
        return
    g_cls = pred.cls_score.weight.grad
    g_box = pred.bbox_pred.weight.grad.view(len(cats), 4, -1)
    masked = {cats.index(int(t.category_ids[0])) for t in batch.targets}  # set A: classes with a mask
    for c in range(len(cats)):
        got = float(g_cls[c].abs().sum()) + float(g_box[c].abs().sum())
        assert (got > 0) == (c in masked), (c, got)  # only classes of A receive gradient through T
    assert float(g_cls[len(cats)].abs().sum()) == 0  # background row is not an input of T


def test_mask_loss_ignores_box_only_instances(synth):
    batch, cats = synth
    m = _model(cats)
    mixed = _box_only(batch)
    # scrambling the (unavailable) masks of box-only instances changes nothing
    scrambled = replace(mixed, targets=[
        replace(t, masks=torch.where(t.has_mask[:, None, None], t.masks, 1 - t.masks)) for t in mixed.targets])
    a, b = _mask_loss(m, mixed), _mask_loss(m, scrambled)
    torch.testing.assert_close(a["loss_mask"], b["loss_mask"])
    assert float(a["num_mask_rois"]) < float(_mask_loss(m, batch)["num_mask_rois"])
    # no instance has a mask: zero mask loss, zero gradient to the mask branch, box losses intact
    m.zero_grad()
    none = _mask_loss(m, _box_only(batch, keep_mask_of_first=False))
    assert float(none["loss_mask"].detach()) == 0.0 and float(none["num_mask_rois"]) == 0
    none["loss_mask"].backward()
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0 for p in m.mask_head.parameters())
    for k in DET_LOSSES:
        torch.testing.assert_close(none[k], a[k])


@pytest.mark.parametrize("kind", TRANSFER_INPUTS)
def test_each_transfer_input_trains_a_step(synth, kind):
    batch, cats = synth
    text = torch.randn(len(cats), 12) if kind == "text" else None
    m = _model(cats, transfer_input=kind, text_embeddings=text, transfer_mlp_layers=1 if kind == "box" else 3,
               transfer_activation="relu")
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.01)
    losses = _mask_loss(m, batch)
    sum(v for k, v in losses.items() if k.startswith("loss")).backward()
    before = m.mask_head.transfer.fcs[-1].weight.detach().clone()
    opt.step()
    assert not torch.equal(before, m.mask_head.transfer.fcs[-1].weight)


def test_overfit_tiny_batch(synth):
    batch, cats = synth
    m = _model(cats, fused_mlp=True)
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=2e-3)
    g = torch.Generator().manual_seed(0)
    mask_losses = []
    for _ in range(90):
        losses = m(batch, generator=g)
        loss = sum(v for k, v in losses.items() if k.startswith("loss"))
        opt.zero_grad()
        loss.backward()
        opt.step()
        mask_losses.append(float(losses["loss_mask"].detach()))
    assert min(mask_losses[-5:]) < 0.5 * mask_losses[0]
    m.eval()
    preds = m.predict(batch.images, batch.image_sizes)
    for p, t in zip(preds, batch.targets):
        h, w = p.masks.shape[-2:]
        for k, c in enumerate(t.category_ids.tolist()):  # every GT instance: a same-class mask with IoU >= 0.6
            gt = t.masks[k, :h, :w].bool()
            same = p.masks[p.labels == cats.index(c)][:10]
            inter = (same & gt).flatten(1).sum(1).float()
            union = (same | gt).flatten(1).sum(1).float()
            assert same.shape[0] > 0 and float((inter / union).max()) >= 0.6


def test_stage_wise_freezes_detector_in_stage_two(synth):
    batch, cats = synth
    m = _model(cats, mode="stage_wise", norm="BN")
    assert m.stage == 1
    assert set(_mask_loss(m, batch)) == DET_LOSSES
    m.set_stage(2)
    assert not any(p.requires_grad for p in m.detector.parameters())
    assert all(p.requires_grad for p in m.mask_head.parameters())
    m.train()
    assert not m.detector.backbone.training and m.mask_head.training
    det_before = {k: v.clone() for k, v in m.detector.state_dict().items()}
    mask_before = {k: v.clone() for k, v in m.mask_head.state_dict().items()}
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
    losses = _mask_loss(m, batch)
    assert {k for k in losses if k.startswith("loss")} == {"loss_mask"}
    assert {f"det_{k}" for k in DET_LOSSES} <= set(losses)
    losses["loss_mask"].backward()
    opt.step()
    for k, v in m.detector.state_dict().items():  # weights and BN statistics untouched
        torch.testing.assert_close(v, det_before[k], msg=k)
    assert any(not torch.equal(v, mask_before[k]) for k, v in m.mask_head.state_dict().items())
    m.set_stage(1)
    assert all(p.requires_grad for p in m.detector.parameters())
    assert not any(p.requires_grad for p in m.mask_head.parameters())
    with pytest.raises(ValueError, match="stage_wise"):
        _model(cats).set_stage(2)


def test_frozen_stem_stays_frozen_across_stages(synth):
    _, cats = synth
    m = _model(cats, mode="stage_wise", freeze_at=1, norm="FrozenBN")
    frozen = {n for n, p in m.detector.named_parameters() if not p.requires_grad}
    assert frozen
    m.set_stage(2)
    m.set_stage(1)
    assert {n for n, p in m.detector.named_parameters() if not p.requires_grad} == frozen


@pytest.mark.parametrize("kind", ["randn", "cls+box"])
def test_checkpoint_round_trip(tmp_path, synth, kind):
    from omniseg.engine.checkpoint import load_checkpoint, save_checkpoint

    batch, cats = synth
    a = _model(cats, seed=0, transfer_input=kind)
    b = _model(cats, seed=1, transfer_input=kind)
    if kind == "randn":
        b.mask_head.transfer.fixed_embeddings.normal_()
    for m in (a, b):
        m.eval()
        m.detector.roi_heads.cfg.score_threshold = 0.0
    save_checkpoint(tmp_path, 1, model=a)
    load_checkpoint(tmp_path, model=b)
    pa, pb = a.predict(batch.images, batch.image_sizes), b.predict(batch.images, batch.image_sizes)
    assert sum(len(p) for p in pa) > 0
    for x, y in zip(pa, pb):
        torch.testing.assert_close(x.boxes, y.boxes)
        assert torch.equal(x.masks, y.masks)
    torch.testing.assert_close(a.class_weights(), b.class_weights())


def test_baselines_and_oracle_heads(synth):
    batch, cats = synth
    for head, fused in (("class-agnostic", False), ("class-agnostic", True), ("class-specific", False)):
        m = _model(cats, mask_head=head, fused_mlp=fused)
        assert m.mask_head.transfer is None and (m.mask_head.mlp is not None) == fused
        assert m.class_weights() is None
        losses = _mask_loss(m, batch)
        assert torch.isfinite(losses["loss_mask"])
    hg = _model(cats, mask_architecture="hourglass")
    assert torch.isfinite(_mask_loss(hg, batch)["loss_mask"])


def test_builders_and_validation(synth):
    _, cats = synth
    assert set(MASKX_RCNN_BUILDERS) == {"maskx_rcnn_r18_fpn", "maskx_rcnn_r50_fpn"}
    r50 = build_maskx_rcnn_r50_fpn(3, **TINY)
    assert r50.mask_head.transfer.in_dim == 5 * 32 and r50.mask_head.cfg.conv_dim == 16
    det = build_faster_rcnn_r18_fpn(3, width=8, fpn_channels=16, fc_dim=32, norm="GN", freeze_at=0)
    head = build_mask_head(4, in_channels=16, det_dim=32, cfg=MaskHeadConfig(conv_dim=8, mlp_hidden_dim=8))
    with pytest.raises(ValueError, match="classes"):
        MaskRCNN(detector=det, mask_head=head)
    head = build_mask_head(3, in_channels=16, det_dim=32, cfg=MaskHeadConfig(conv_dim=8, mlp_hidden_dim=8))
    with pytest.raises(ValueError, match="mode"):
        MaskRCNN(detector=det, mask_head=head, mode="joint")
    with pytest.raises(ValueError, match="strides"):
        MaskRCNN(detector=det, mask_head=head, mask_in_features=("p3", "p4", "p5", "p6"))
    ov = build_faster_rcnn_r18_fpn(predictor="open-vocab", embed_dim=8, width=8, fpn_channels=16, fc_dim=32,
                                   norm="GN", freeze_at=0)
    with pytest.raises(ValueError, match="class-agnostic"):
        MaskRCNN(detector=ov, mask_head=head)
    with pytest.raises(ValueError, match="text embeddings"):
        _model(cats, transfer_input="text")


def test_segment_boxes_matches_predict_on_its_own_detections(synth):
    """Given the detector's own boxes and classes, segment_boxes returns predict's masks."""
    batch, cats = synth
    m = _model(cats, box=BoxHeadConfig(batch_size_per_image=64, score_threshold=0.0))
    m.eval()
    out = m.predict(batch.images, batch.image_sizes)
    assert sum(len(o) for o in out) > 0
    masks = m.segment_boxes(batch.images, batch.image_sizes, [o.boxes for o in out], [o.labels for o in out])
    for o, mk in zip(out, masks):
        assert torch.equal(mk, o.masks)


def test_mask_rcnn_star_open_vocab_any_vocabulary(synth):
    """Mask R-CNN* (alp-fcos-mo Sec. 4): open-vocab classifier over phrase embeddings, class-agnostic
    box regression and Hourglass mask head; predictions follow whatever vocabulary is given."""
    from omniseg.modeling.mask_rcnn_star import MASK_RCNN_STAR_BUILDERS, build_mask_rcnn_star_r18_fpn

    batch, _ = synth

    def embed(texts):
        return torch.stack([torch.randn(12, generator=torch.Generator().manual_seed(sum(map(ord, t))))
                            for t in texts])

    assert set(MASK_RCNN_STAR_BUILDERS) == {"mask_rcnn_star_r18_fpn", "mask_rcnn_star_r50_fpn"}
    torch.manual_seed(0)
    tiny = {k: v for k, v in TINY.items() if k not in ("mlp_hidden_dim", "transfer_hidden_dim")}
    m = build_mask_rcnn_star_r18_fpn(embed_dim=12, **tiny)
    assert m.detector.open_vocab and m.mask_head.cfg.kind == "class-agnostic"
    assert m.mask_head.cfg.architecture == "hourglass" and m.detector.roi_heads.predictor.kind == "open-vocab"
    m.detector.set_text_embedder(embed)
    losses = _mask_loss(m, batch)
    assert set(losses) == DET_LOSSES | {"loss_image_labels", "loss_mask", "num_mask_rois"}
    assert float(losses["num_mask_rois"]) > 0 and all(torch.isfinite(v) for v in losses.values())
    m.eval()
    m.detector.roi_heads.cfg.score_threshold = 0.0
    for vocab in (["red ring", "blue star"], ["a", "b", "c", "d", "e"]):
        preds = m.predict(batch.images, batch.image_sizes, class_embeddings=embed(vocab))
        labels = torch.cat([p.labels for p in preds])
        assert labels.numel() > 0 and bool((labels < len(vocab)).all())
        assert all(p.masks.shape[1:] == batch.images.shape[-2:] for p in preds)
