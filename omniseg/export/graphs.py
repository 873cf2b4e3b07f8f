"""The traceable forward passes that become ONNX graphs (design: :mod:`omniseg.export`).

Each wrapper holds a trained model and calls its own sub-modules (backbone, heads) so that the
weights and the arithmetic are the model's; only the steps that do not trace are replaced:

* RoIAlign: omniseg's sparse implementation plans its work from the box values, so it cannot be
  traced. :class:`RoIAlignOp` exports as ONNX ``RoiAlign`` (opset >= 16, ``half_pixel`` =
  ``aligned=True``, ``sampling_ratio=0`` = adaptive, ``avg``), the same definition
  (torchvision's); in eager mode it runs omniseg's op.
* FPN level assignment is data dependent: every box is pooled from every level and the level
  :func:`~omniseg.ops.roi_align.assign_fpn_levels` picks is kept (L x the pooling work, exact).
* Padding to the model's size divisor happens in the graph (a plain image of any size goes in).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from omniseg.modeling.contrastive_classifier import phrase_logits
from omniseg.ops.roi_align import assign_fpn_levels, roi_align

#: the lowest opset with RoiAlign's coordinate_transformation_mode (half_pixel)
MIN_OPSET = 16


class RoIAlignOp(torch.autograd.Function):
    """RoIAlign of K boxes of image 0 (aligned, adaptive sampling, average) on one map.

    Eager: omniseg's :func:`~omniseg.ops.roi_align.roi_align`; traced: a placeholder of the right
    shape whose node :meth:`symbolic` turns into ONNX ``RoiAlign``.
    """

    @staticmethod
    def forward(ctx, feature: Tensor, boxes: Tensor, size: int, scale: float) -> Tensor:  # type: ignore[override]
        if torch.jit.is_tracing():  # the values are never used: the node becomes RoiAlign
            return feature.new_zeros(boxes.shape[0], feature.shape[1], size, size)
        return roi_align(feature, [boxes], size, scale, 0, True, impl="torch")

    @staticmethod
    def symbolic(g, feature, boxes, size: int, scale: float):  # noqa: ANN001 (torch.onnx graph values)
        zero = g.op("Constant", value_t=torch.tensor([0], dtype=torch.long))
        num = g.op("Gather", g.op("Shape", boxes), zero, axis_i=0)
        batch_index = g.op("ConstantOfShape", num, value_t=torch.tensor([0], dtype=torch.long))
        return g.op("RoiAlign", feature, boxes, batch_index, coordinate_transformation_mode_s="half_pixel",
                    mode_s="avg", output_height_i=size, output_width_i=size, sampling_ratio_i=0,
                    spatial_scale_f=scale)


def multilevel_roi_align(maps: Sequence[Tensor], boxes: Tensor, size: int, strides: Sequence[int]) -> Tensor:
    """K x C x size x size: each box pooled from its FPN level (as
    :func:`omniseg.ops.roi_align.multilevel_roi_align`, in traceable form)."""
    first = round(math.log2(strides[0]))
    level = assign_fpn_levels(boxes, first, first + len(maps) - 1) - first
    out = None
    for i, (m, s) in enumerate(zip(maps, strides)):
        pooled = RoIAlignOp.apply(m, boxes, size, 1.0 / s)
        pooled = torch.where((level == i)[:, None, None, None], pooled, torch.zeros_like(pooled))
        out = pooled if out is None else out + pooled
    assert out is not None
    return out


def normalized(image: Tensor, mean: Tensor, std: Tensor, divisor: int = 1) -> Tensor:
    """1 x 3 x H x W uint8 -> float ``(x - mean) / std``, zero-padded at the bottom / right to a
    multiple of ``divisor`` (the padding is 0 after normalization, as in the model's batches)."""
    x = (image.float() - mean) / std
    if divisor > 1:
        h, w = x.shape[-2:]
        x = F.pad(x, (0, (divisor - w % divisor) % divisor, 0, (divisor - h % divisor) % divisor))
    return x


class BoxToMaskGraph(nn.Module):
    """image 1 x 3 x H x W uint8, boxes K x 4 float XYXY -> mask_probs K x M x M (sigmoid)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: Tensor, boxes: Tensor) -> Tensor:
        m = self.model
        feats = m.backbone(normalized(image, m.pixel_mean, m.pixel_std))
        rois = multilevel_roi_align([feats[k] for k in m.in_features], boxes, m.roi_size, m.strides)
        return m.mask_head(rois)[:, 0].sigmoid()


class FCOSMODenseGraph(nn.Module):
    """FCOS-MO up to its dense outputs (no thresholding / NMS).

    image 1 x 3 x H x W uint8, text_embeddings C x D ->
    class_probs P x C, ltrb P x 4, centerness P (logits), level_sizes L x 2 (int64), and the
    FPN maps the mask head reads (named after them, e.g. ``p3``), 1 x F x h x w.
    """

    def __init__(self, model: nn.Module, divisor: int):
        super().__init__()
        self.model, self.divisor = model, divisor

    def forward(self, image: Tensor, text_embeddings: Tensor) -> tuple[Tensor, ...]:
        from omniseg.modeling.fcos_mo import LEVELS

        m = self.model
        feats = m.backbone(normalized(image, m.pixel_mean, m.pixel_std, self.divisor))
        maps = [feats[f] for f in LEVELS]
        emb, ltrb, ctr = m.head(maps, m.strides)
        emb_all = torch.cat([e.flatten(2) for e in emb], 2)[0].transpose(0, 1)
        probs = phrase_logits(emb_all, text_embeddings, m.cfg.tau).softmax(dim=1)[:, :-1]
        ltrb_all = torch.cat([d.flatten(2) for d in ltrb], 2)[0].transpose(0, 1)
        ctr_all = torch.cat([c.flatten(1) for c in ctr], 1)[0]
        sizes = torch.stack([torch._shape_as_tensor(x)[-2:] for x in maps])
        return (probs, ltrb_all, ctr_all, sizes, *(feats[f] for f in m.cfg.mask_in_features))


class FCOSMOMaskGraph(nn.Module):
    """The mask head on given boxes: FPN maps (``mask_in_features``) + boxes K x 4 -> mask_probs K x M x M."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *inputs: Tensor) -> Tensor:
        m = self.model
        *maps, boxes = inputs
        rois = multilevel_roi_align(maps, boxes, m.cfg.mask_roi_size, m.mask_strides)
        return m.mask_head(rois)[:, 0].sigmoid()


class TwoStageRPNGraph(nn.Module):
    """A two-stage detector (:class:`~omniseg.modeling.maskx_rcnn.MaskRCNN`) up to its RPN outputs.

    image 1 x 3 x H x W uint8 -> objectness P (logits), anchor_deltas P x 4 over the anchors of every RPN
    level (finest first, each in :class:`~omniseg.modeling.anchors.AnchorGenerator` order), level_sizes
    L x 2 (int64, the RPN maps' h, w) and the FPN maps ``maps`` that the box / mask graphs pool.
    """

    def __init__(self, model: nn.Module, divisor: int, maps: Sequence[str]):
        super().__init__()
        self.model, self.divisor, self.maps = model, divisor, tuple(maps)

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        det = self.model.detector
        feats = det.backbone(normalized(image, det.pixel_mean, det.pixel_std, self.divisor))
        levels = [feats[f] for f in det.rpn_in_features]
        logits, deltas = det.rpn.head(levels)
        sizes = torch.stack([torch._shape_as_tensor(x)[-2:] for x in levels])
        return (torch.cat(logits, 1)[0], torch.cat(deltas, 1)[0], sizes, *(feats[f] for f in self.maps))


class TwoStageBoxGraph(nn.Module):
    """The RoI box head on given proposals: FPN maps (``box_in_features``) + proposals K x 4
    [+ class_embeddings C x D, open-vocab] -> class_logits K x (C + 1) (background last), box_deltas
    K x 4C (class-specific) or K x 4."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *inputs: Tensor) -> tuple[Tensor, Tensor]:
        heads = self.model.detector.roi_heads
        n = len(heads.cfg.pooler_strides)
        maps, boxes, emb = inputs[:n], inputs[n], (inputs[n + 1] if len(inputs) > n + 1 else None)
        rois = multilevel_roi_align(maps, boxes, heads.cfg.pooler_resolution, heads.cfg.pooler_strides)
        return heads.predictor(heads.box_head(rois), emb)


class TwoStageMaskGraph(nn.Module):
    """The RoI mask branch on given detections: FPN maps (``mask_in_features``) + boxes K x 4
    [+ classes K int64, heads with per-class weights] -> mask_probs K x M x M.

    Mask^X R-CNN's transferred weights w_seg = T(w_det) depend on the weights only (its vocabulary is
    closed), so they are computed once here and folded into the graph as a C x D constant.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        with torch.no_grad():
            weights = model.class_weights()
        self.register_buffer("class_weights", None if weights is None else weights.detach().clone())

    def forward(self, *inputs: Tensor) -> Tensor:
        head = self.model.mask_head
        n = len(head.cfg.pooler_strides)
        maps, boxes = inputs[:n], inputs[n]
        classes = inputs[n + 1] if len(inputs) > n + 1 else boxes.new_zeros(boxes.shape[0], dtype=torch.long)
        rois = multilevel_roi_align(maps, boxes, head.cfg.pooler_resolution, head.cfg.pooler_strides)
        return head.mask_logits(rois, classes, self.class_weights).float().sigmoid()


class MALGraph(nn.Module):
    """MAL's task network (student) on prepared crops: crops K x 3 x Hc x Wc (normalized,
    :func:`~omniseg.modeling.mal.normalize_crops`) [+ size_classes K int64] -> mask_probs K x Hc x Wc.

    The per-size feature resizing (Appendix A.2) picks a decoder input grid per crop, which the model
    does by indexing; here every crop is decoded at every size class's grid and the one of its class
    kept (3 x the decoder work, exact).
    """

    def __init__(self, student: nn.Module):
        super().__init__()
        self.student = student

    def forward(self, crops: Tensor, size_classes: Tensor | None = None) -> Tensor:
        net = self.student
        feats = net.encoder(crops)
        if size_classes is None:
            return net.decode(feats).sigmoid()
        out = None
        for k in range(len(net.size_strides)):
            logits = net.decode(feats, k)
            out = logits if out is None else torch.where((size_classes == k)[:, None, None], logits, out)
        assert out is not None
        return out.sigmoid()
