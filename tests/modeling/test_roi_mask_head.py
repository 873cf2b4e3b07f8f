import math

import pytest
import torch
import torch.nn.functional as F

from omniseg.modeling.heads.mask_heads import FCNMaskHead, MLPMaskBranch
from omniseg.modeling.maskx_rcnn import build_mask_head
from omniseg.modeling.roi_mask_head import MaskHeadConfig, RoIMaskHead, mask_loss, select_mask_rois
from omniseg.modeling.weight_transfer import WeightTransferConfig

C, FEAT, DIM = 3, 4, 6


def _head(kind="transfer", fused=True, arch="fcn", seed=0):
    torch.manual_seed(seed)
    cfg = MaskHeadConfig(kind=kind, architecture=arch, pooler_resolution=4, pooler_strides=(4,), conv_dim=DIM,
                         num_convs=2, fused_mlp=fused, mlp_hidden_dim=10, mlp_num_fc=1)
    head = build_mask_head(C, in_channels=FEAT, det_dim=5, cfg=cfg,
                           transfer_cfg=WeightTransferConfig(hidden_dim=7))
    with torch.no_grad():  # non-trivial predictors so every term of the sum matters
        for name, p in head.named_parameters():
            if "predictor" in name or "transfer" in name:
                p.normal_(0, 0.3)
    return head


def test_select_mask_rois_hand_case():
    labels = torch.tensor([0, 2, 1, 3, 0, -1])  # C = 3: index 3 is background, -1 ignored
    matched = torch.tensor([1, 0, 2, 0, 2, 1])
    instance_index = torch.tensor([4, 0, 2])  # box-target rows -> instances
    has_mask = torch.tensor([True, False, False, False, True])
    roi, inst = select_mask_rois(labels, matched, instance_index, has_mask, 3)
    # RoI 0 -> row 1 -> inst 0 (mask); RoI 1 -> row 0 -> inst 4 (mask); RoI 2, 4 -> inst 2 (box only)
    assert roi.tolist() == [0, 1] and inst.tolist() == [0, 4]
    roi, inst = select_mask_rois(labels, matched, instance_index, torch.zeros(5, dtype=torch.bool), 3)
    assert roi.numel() == 0 and inst.numel() == 0
    roi, _ = select_mask_rois(labels, matched, torch.zeros(0, dtype=torch.long), has_mask, 3)
    assert roi.numel() == 0


def test_mask_loss_matches_bce_reference_and_empty():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 3, generator=g)
    targets = (torch.rand(2, 3, 3, generator=g) > 0.5).float()
    ref = 0.0
    for v, t in zip(logits.flatten().tolist(), targets.flatten().tolist()):
        p = 1 / (1 + math.exp(-v))
        ref -= t * math.log(p) + (1 - t) * math.log(1 - p)
    torch.testing.assert_close(mask_loss(logits, targets), torch.tensor(ref / 18))
    empty = torch.zeros(0, 3, 3, requires_grad=True)
    loss = mask_loss(empty, empty.detach())
    assert float(loss.detach()) == 0.0
    loss.backward()


def _full_logits_reference(head: RoIMaskHead, x, w_seg):
    """All K class channels materialized (paper Sec. 3.4: K x M x M scores), MLP tiled and added."""
    net = head.network
    y = x
    for block in net.convs:
        y = block(y)
    trunk = y
    feat = F.relu(net.deconv(trunk))
    if head.transfer is not None:
        out = F.conv2d(feat, w_seg[:, :, None, None], head.transfer_bias.expand(w_seg.shape[0]))
    else:
        out = net.predictor(feat)
    if head.mlp is not None:
        out = out + head.mlp(trunk).expand(-1, out.shape[1], -1, -1)
    return out


@pytest.mark.parametrize("kind", ["transfer", "class-specific", "class-agnostic"])
@pytest.mark.parametrize("fused", [False, True])
def test_mask_logits_select_the_class_channel(kind, fused):
    head = _head(kind, fused)
    x = torch.randn(5, FEAT, 4, 4)
    classes = torch.tensor([0, 2, 1, 2, 0])
    w_seg = head.class_weights(torch.randn(C, 5), torch.randn(C, 4, 5))
    assert (w_seg is None) == (kind != "transfer")
    logits = head.mask_logits(x, classes, w_seg)
    assert logits.shape == (5, 8, 8)
    full = _full_logits_reference(head, x, w_seg)
    for r, c in enumerate(classes.tolist()):
        torch.testing.assert_close(logits[r], full[r, c if full.shape[1] > 1 else 0], atol=1e-5, rtol=1e-5)
    if kind == "class-agnostic":  # the class does not matter
        torch.testing.assert_close(head.mask_logits(x, torch.zeros(5, dtype=torch.long)), logits)


def test_hourglass_architecture_runs_for_each_kind():
    for kind in ("transfer", "class-specific", "class-agnostic"):
        torch.manual_seed(0)
        cfg = MaskHeadConfig(kind=kind, architecture="hourglass", pooler_resolution=8, pooler_strides=(4,),
                             conv_dim=8, norm="GN", fused_mlp=True, mlp_hidden_dim=8, mlp_num_fc=1)
        head = build_mask_head(C, in_channels=FEAT, det_dim=5, cfg=cfg, transfer_cfg=WeightTransferConfig(hidden_dim=4))
        w = head.class_weights(torch.randn(C, 5), torch.randn(C, 4, 5))
        out = head.mask_logits(torch.randn(2, FEAT, 8, 8), torch.tensor([1, 2]), w)
        assert out.shape == (2, 16, 16) and torch.isfinite(out).all()
        out.sum().backward()


def test_losses_use_roi_cropped_targets():
    head = _head("class-agnostic", fused=False)
    feats = [torch.randn(1, FEAT, 16, 16)]
    mask = torch.zeros(1, 64, 64)
    mask[0, 8:40, 16:48] = 1  # the instance fills the right half of the RoI below
    box = torch.tensor([[0.0, 8, 48, 40]])
    out = head.losses(feats, [box], [torch.tensor([1])], [mask])
    assert float(out["num_mask_rois"]) == 1
    logits = head.mask_logits(head.pool(feats, [box]), torch.tensor([1]))
    target = torch.zeros(1, 8, 8)
    target[0, :, 3:] = 1  # columns whose centers lie in x >= 16: (j + 0.5) * 6 >= 16 for j >= 3
    ref = F.binary_cross_entropy_with_logits(logits, target)
    torch.testing.assert_close(out["loss_mask"], ref)


def test_losses_without_mask_rois_are_zero_with_grad_path():
    head = _head("transfer", fused=True)
    feats = [torch.randn(2, FEAT, 16, 16, requires_grad=True)]
    cls_w = torch.randn(C, 5, requires_grad=True)
    w = head.class_weights(cls_w, torch.randn(C, 4, 5))
    empty = torch.zeros(0, 4)
    out = head.losses(feats, [empty, empty], [torch.zeros(0, dtype=torch.long)] * 2, [torch.zeros(0, 64, 64)] * 2,
                      w)
    assert float(out["loss_mask"].detach()) == 0.0 and float(out["num_mask_rois"]) == 0
    out["loss_mask"].backward()
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0 for p in head.parameters())
    assert cls_w.grad is None  # stop-grad by default


def test_predict_probabilities_and_empty():
    head = _head("transfer", fused=True)
    feats = [torch.randn(2, FEAT, 16, 16)]
    w = head.class_weights(torch.randn(C, 5), torch.randn(C, 4, 5))
    boxes = [torch.tensor([[0.0, 0, 20, 30], [5, 5, 60, 60]]), torch.zeros(0, 4)]
    probs = head.predict(feats, boxes, [torch.tensor([0, 2]), torch.zeros(0, dtype=torch.long)], w)
    assert probs[0].shape == (2, 8, 8) and probs[1].shape == (0, 8, 8)
    assert bool(((probs[0] > 0) & (probs[0] < 1)).all())
    logits = head.mask_logits(head.pool(feats, boxes[:1]), torch.tensor([0, 2]), w)
    torch.testing.assert_close(probs[0], logits.sigmoid())
    none = head.predict(feats, [torch.zeros(0, 4)] * 2, [torch.zeros(0, dtype=torch.long)] * 2, w)
    assert [p.shape for p in none] == [(0, 8, 8), (0, 8, 8)]


def test_validation():
    cfg = MaskHeadConfig(kind="transfer", fused_mlp=False)
    with pytest.raises(ValueError, match="WeightTransfer"):
        RoIMaskHead(network=FCNMaskHead(4, conv_dim=6), cfg=cfg, num_classes=C)
    with pytest.raises(ValueError, match="MLP"):
        RoIMaskHead(network=FCNMaskHead(4, conv_dim=6), cfg=MaskHeadConfig(kind="class-agnostic"), num_classes=C,
                    mlp=None)
    with pytest.raises(ValueError, match="output channels"):
        RoIMaskHead(network=FCNMaskHead(4, conv_dim=6, num_classes=1),
                    cfg=MaskHeadConfig(kind="class-specific", fused_mlp=False), num_classes=C)
    with pytest.raises(ValueError, match="kind"):
        RoIMaskHead(network=FCNMaskHead(4, conv_dim=6), cfg=MaskHeadConfig(kind="shared", fused_mlp=False),
                    num_classes=C)
    with pytest.raises(ValueError, match="architecture"):
        build_mask_head(C, in_channels=4, det_dim=5, cfg=MaskHeadConfig(architecture="unet"))
    head = _head("transfer")
    with pytest.raises(ValueError, match="class_weights"):
        head.mask_logits(torch.randn(1, FEAT, 4, 4), torch.tensor([0]))
    assert isinstance(head.mlp, MLPMaskBranch)
