"""Second stage of Faster / Mask R-CNN: RoI box head with three predictor variants.

* Matching (:func:`match_proposals`): a proposal whose best IoU with a GT box is >= 0.5 is
  foreground with that box's class, else background; proposals on a GT of unknown class (label -1)
  or inside a crowd region are ignored. 512 RoIs per image are sampled, at most 25% foreground.
* Features: multilevel RoIAlign 7x7 from P2..P5 (FPN Eq. 1 level assignment), then 2 fc layers
  of 1024 with ReLU.
* Predictors (class-specific / class-agnostic / open-vocab), their losses and the inference
  post-processing live in :mod:`omniseg.modeling.box_predictor`; background is always the LAST
  class (index C).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from omniseg.modeling.box_predictor import (
    PREDICTORS,
    BoxPredictor,
    Detections,
    box_head_losses,
    detections_from_outputs,
)
from omniseg.modeling.rpn import Proposals, sample_labels
from omniseg.ops.boxes import box_area, box_iou, encode_boxes
from omniseg.ops.roi_align import multilevel_roi_align

# the predictor, its losses and its post-processing live in box_predictor.py; re-exported here
__all__ = [
    "PREDICTORS", "BoxHeadConfig", "BoxPredictor", "BoxTargets", "Detections", "FCBoxHead", "RoIBoxHead",
    "SampledRoIs", "box_head_losses", "detections_from_outputs", "match_proposals", "sample_rois",
]


@dataclass
class BoxHeadConfig:
    """Settings of :class:`RoIBoxHead` (defaults: detectron2's FPN Faster R-CNN).

    Attributes:
        in_channels: FPN channels.
        pooler_resolution: RoIAlign output size (7).
        pooler_strides: strides of the pooled levels (P2..P5).
        sampling_ratio: RoIAlign samples per bin (0 = adaptive).
        fc_dim: width of the 2 fc layers (1024).
        num_classes: C for the linear predictors (the open-vocab one takes C from the embeddings).
        predictor: "class-specific", "class-agnostic" or "open-vocab".
        embed_dim, temperature, temperature_kind, background: open-vocab classifier settings
            (:class:`OpenVocabConfig`; tau 0.01 and a zero background as alp-fcos-mo Sec. 3.2).
        fg_iou: proposals with IoU >= this are foreground (0.5).
        ignore_ioa: background proposals with intersection / proposal area >= this with a crowd box
            are ignored.
        batch_size_per_image: RoIs sampled per image (512).
        positive_fraction: at most this fraction of them foreground (0.25).
        box_weights: (wx, wy, ww, wh) of the delta encoding (10, 10, 5, 5).
        box_loss: "smooth_l1" or "l1".
        smooth_l1_beta: smooth-L1 beta (1.0, Fast R-CNN; 0 = L1 as detectron2).
        background_weight: cross-entropy weight of the background class (1 = plain CE).
        score_threshold: detections with score <= this are dropped (0.05).
        nms_threshold: class-wise NMS IoU (0.5; the ALP paper tunes 0.2 on OID, Sec. 4).
        detections_per_image: top-k after NMS (100).
        calibrate_with_objectness: score = sqrt(class prob x RPN objectness) at test time.
    """

    in_channels: int = 256
    pooler_resolution: int = 7
    pooler_strides: tuple[int, ...] = (4, 8, 16, 32)
    sampling_ratio: int = 0
    fc_dim: int = 1024
    num_classes: int = 80
    predictor: str = "class-specific"
    embed_dim: int = 512
    temperature: float = 0.01
    temperature_kind: str = "fixed"
    background: str = "zero"
    fg_iou: float = 0.5
    ignore_ioa: float = 0.7
    batch_size_per_image: int = 512
    positive_fraction: float = 0.25
    box_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    box_loss: str = "smooth_l1"
    smooth_l1_beta: float = 1.0
    background_weight: float = 1.0
    score_threshold: float = 0.05
    nms_threshold: float = 0.5
    detections_per_image: int = 100
    calibrate_with_objectness: bool = False


@dataclass
class BoxTargets:
    """Second-stage training targets of one image.

    Attributes:
        boxes: G x 4 XYXY boxes to classify (exact and approximate, no crowd).
        labels: G long class index in [0, C), or -1 for a class outside the vocabulary.
        exact: G bool, the box is exact (trains box regression).
        ignore_boxes: I x 4 crowd regions.
        instance_index: G long index of each box's instance in the image's
            :class:`omniseg.data.batch.Targets` (to fetch its mask or text); None if unknown.
    """

    boxes: Tensor
    labels: Tensor
    exact: Tensor
    ignore_boxes: Tensor
    instance_index: Tensor | None = None

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


@dataclass
class SampledRoIs:
    """RoIs of one image sampled for the second-stage losses (also what a mask head trains on).

    Attributes:
        boxes: K x 4 proposal boxes, foreground first.
        labels: K long class in [0, C) (foreground) or C (background).
        matched: K long index into the image's :class:`BoxTargets` rows (meaningful for foreground).
        regress: K bool, foreground matched to an exact box.
        target_deltas: K x 4 regression targets (zero where not ``regress``).
        num_classes: C; labels equal to C are background.
    """

    boxes: Tensor
    labels: Tensor
    matched: Tensor
    regress: Tensor
    target_deltas: Tensor
    num_classes: int

    @property
    def is_fg(self) -> Tensor:
        """K bool, foreground RoIs."""
        return self.labels < self.num_classes


class FCBoxHead(nn.Module):
    """Flatten pooled features and apply ``num_fc`` fc + ReLU layers.

    Args:
        in_channels: C of the pooled features.
        resolution: pooled size (7).
        fc_dim: output width (1024).
        num_fc: number of fc layers (2).
    """

    def __init__(self, in_channels: int, resolution: int, fc_dim: int = 1024, num_fc: int = 2):
        super().__init__()
        dims = [in_channels * resolution * resolution] + [fc_dim] * num_fc
        self.fcs = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:]))
        for fc in self.fcs:
            nn.init.kaiming_uniform_(fc.weight, a=1)
            nn.init.zeros_(fc.bias)
        self.out_dim = fc_dim

    def forward(self, x: Tensor) -> Tensor:
        """R x C x S x S -> R x fc_dim."""
        x = x.flatten(1)
        for fc in self.fcs:
            x = F.relu(fc(x), inplace=True)  # the linear's output is not kept for its backward
        return x


def match_proposals(
    proposals: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    num_classes: int,
    fg_iou: float = 0.5,
    ignore_boxes: Tensor | None = None,
    ignore_ioa: float = 0.7,
) -> tuple[Tensor, Tensor]:
    """Assign each proposal a class (foreground), C (background) or -1 (ignored).

    Args:
        proposals: P x 4 XYXY.
        gt_boxes: G x 4 XYXY.
        gt_labels: G long in [0, C) or -1 (class unknown: proposals on it are ignored).
        num_classes: C.
        fg_iou: best IoU >= this -> foreground.
        ignore_boxes: I x 4 crowd regions: background proposals with intersection / proposal area
            >= ``ignore_ioa`` with one of them are ignored.
        ignore_ioa: see ``ignore_boxes``.

    Returns:
        labels: P long.
        matched: P long index of the best GT (0 where G == 0).
    """
    n = proposals.shape[0]
    labels = torch.full((n,), num_classes, dtype=torch.long, device=proposals.device)
    matched = torch.zeros(n, dtype=torch.long, device=proposals.device)
    if gt_boxes.shape[0] > 0 and n > 0:
        best, matched = box_iou(gt_boxes.to(proposals.dtype), proposals).max(dim=0)
        fg = best >= fg_iou
        labels[fg] = gt_labels.to(labels.device)[matched[fg]]
    if ignore_boxes is not None and ignore_boxes.shape[0] > 0 and n > 0:
        ib = ignore_boxes.to(proposals.dtype)
        lt = torch.maximum(proposals[:, None, :2], ib[None, :, :2])
        rb = torch.minimum(proposals[:, None, 2:], ib[None, :, 2:])
        inter = (rb - lt).clamp(min=0).prod(dim=2)
        ioa = (inter / box_area(proposals).clamp(min=1e-6)[:, None]).max(dim=1).values
        labels[(ioa >= ignore_ioa) & (labels == num_classes)] = -1
    return labels, matched


def sample_rois(
    labels: Tensor, num_classes: int, batch_size: int, positive_fraction: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Indices of the RoIs kept for the losses.

    Args:
        labels: P long from :func:`match_proposals` ([0, C) fg, C bg, -1 ignored).
        num_classes: C.
        batch_size: RoIs per image (512).
        positive_fraction: at most this fraction foreground (0.25).
        generator: CPU generator.

    Returns:
        K long indices, foreground first.
    """
    fg = (labels >= 0) & (labels < num_classes)
    ind = torch.where(fg, 1, torch.where(labels == num_classes, 0, -1))
    sampled = sample_labels(ind, batch_size, positive_fraction, generator)
    return torch.cat([torch.nonzero(sampled == 1).flatten(), torch.nonzero(sampled == 0).flatten()])


class RoIBoxHead(nn.Module):
    """RoIAlign + fc head + predictor, with training and inference logic.

    Args:
        box_head: :class:`FCBoxHead`.
        predictor: :class:`BoxPredictor`.
        cfg: :class:`BoxHeadConfig`.
    """

    def __init__(self, *, box_head: FCBoxHead, predictor: BoxPredictor, cfg: BoxHeadConfig):
        super().__init__()
        self.box_head = box_head
        self.predictor = predictor
        self.cfg = cfg

    def pool(self, features: Sequence[Tensor], boxes: Sequence[Tensor]) -> Tensor:
        """RoIAlign ``cfg.pooler_resolution`` features of per-image boxes from the pooled levels.

        Args:
            features: maps B x C x H_l x W_l, one per ``cfg.pooler_strides``.
            boxes: B tensors K_i x 4.

        Returns:
            (sum K_i) x C x S x S.
        """
        # boxes stay float32 under autocast: bf16 would round coordinates to a few pixels
        rois = [b.float() for b in boxes]
        return multilevel_roi_align(features, rois, self.cfg.pooler_resolution, self.cfg.pooler_strides,
                                    self.cfg.sampling_ratio)

    def label_and_sample(
        self,
        proposals: Sequence[Proposals],
        targets: Sequence[BoxTargets],
        num_classes: int,
        generator: torch.Generator | None = None,
    ) -> list[SampledRoIs]:
        """Match proposals to GT (:func:`match_proposals`) and sample RoIs (:func:`sample_rois`).

        Args:
            proposals: B :class:`Proposals` (GT boxes already appended, see rpn.append_gt_proposals).
            targets: B :class:`BoxTargets`.
            num_classes: C (the vocabulary size for the open-vocab predictor).
            generator: CPU generator for RoI sampling.

        Returns:
            B :class:`SampledRoIs`.
        """
        cfg = self.cfg
        out = []
        for p, t in zip(proposals, targets):
            lab, idx = match_proposals(p.boxes, t.boxes, t.labels, num_classes, cfg.fg_iou, t.ignore_boxes,
                                       cfg.ignore_ioa)
            keep = sample_rois(lab, num_classes, cfg.batch_size_per_image, cfg.positive_fraction, generator)
            pb, lab, idx = p.boxes[keep], lab[keep], idx[keep]
            fg = lab < num_classes
            reg = fg & t.exact.to(fg.device)[idx] if t.boxes.shape[0] else torch.zeros_like(fg)
            d = torch.zeros_like(pb)
            if bool(reg.any()):
                d[reg] = encode_boxes(pb[reg], t.boxes.to(pb)[idx[reg]], cfg.box_weights)
            out.append(SampledRoIs(boxes=pb, labels=lab, matched=idx, regress=reg, target_deltas=d,
                                   num_classes=num_classes))
        return out

    def losses(
        self, features: Sequence[Tensor], sampled: Sequence[SampledRoIs], class_embeddings: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Classification and regression losses of sampled RoIs (see :func:`box_head_losses`)."""
        cfg = self.cfg
        x = self.box_head(self.pool(features, [s.boxes for s in sampled]))
        logits, deltas = self.predictor(x, class_embeddings)
        return box_head_losses(logits, deltas, torch.cat([s.labels for s in sampled]),
                               torch.cat([s.target_deltas for s in sampled]),
                               torch.cat([s.regress for s in sampled]),
                               cfg.box_loss, cfg.smooth_l1_beta, cfg.background_weight)

    def forward(
        self,
        features: Sequence[Tensor],
        proposals: Sequence[Proposals],
        targets: Sequence[BoxTargets],
        class_embeddings: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """Training losses: :meth:`label_and_sample` then :meth:`losses`.

        Args:
            features: pooled-level maps (see :meth:`pool`).
            proposals: B :class:`Proposals` (GT boxes already appended).
            targets: B :class:`BoxTargets`.
            class_embeddings: C x D vocabulary embeddings (open-vocab predictor).
            generator: CPU generator for RoI sampling.

        Returns:
            {"loss_cls", "loss_box_reg"}.
        """
        c = class_embeddings.shape[0] if class_embeddings is not None else self.predictor.num_classes
        return self.losses(features, self.label_and_sample(proposals, targets, c, generator), class_embeddings)

    @torch.no_grad()
    def predict(
        self,
        features: Sequence[Tensor],
        proposals: Sequence[Proposals],
        image_sizes: Sequence[tuple[int, int]],
        class_embeddings: Tensor | None = None,
        return_features: bool = False,
    ) -> list[Detections]:
        """Detections per image.

        Args:
            features: pooled-level maps.
            proposals: B :class:`Proposals`.
            image_sizes: B (height, width).
            class_embeddings: C x D vocabulary (open-vocab predictor); any C, swappable.
            return_features: attach the fc features of each detection's RoI.

        Returns:
            B :class:`Detections`.
        """
        cfg = self.cfg
        x = self.box_head(self.pool(features, [p.boxes for p in proposals]))
        logits, deltas = self.predictor(x, class_embeddings)
        out, start = [], 0
        for p, size in zip(proposals, image_sizes):
            n = len(p)
            obj = torch.sigmoid(p.objectness_logits) if cfg.calibrate_with_objectness else None
            det = detections_from_outputs(logits[start:start + n], deltas[start:start + n], p.boxes, size, obj,
                                          cfg.score_threshold, cfg.nms_threshold, cfg.detections_per_image,
                                          cfg.box_weights)
            if return_features:
                det.box_features = x[start:start + n][det.roi_index]
            out.append(det)
            start += n
        return out
