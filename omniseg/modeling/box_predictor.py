"""Box predictor of the RoI box head and its pure output functions (split out of roi_box_head.py).

* :class:`BoxPredictor`, background is always the LAST class (index C):

  - ``"class-specific"``: ``cls_score`` Linear(1024, C + 1) and ``bbox_pred`` Linear(1024, 4C);
    row c of ``cls_score.weight`` and rows 4c..4c+3 of ``bbox_pred.weight`` belong to class c
    (see :meth:`BoxPredictor.per_class_weights`, used by Mask^X R-CNN's weight transfer);
  - ``"class-agnostic"``: the same ``cls_score``, one box ``bbox_pred`` Linear(1024, 4);
  - ``"open-vocab"``: Mask R-CNN* of the ALP paper (alp-fcos-mo, Sec. 4 "Baseline: Mask R-CNN*":
    class-agnostic box regression and a CLIP-style open-vocabulary classifier as in Sec. 3.2):
    cosine similarity of projected RoI features with text embeddings given at call time, a
    background embedding, temperature tau.

* Losses (:func:`box_head_losses`): cross-entropy over the sampled RoIs, smooth-L1 on the deltas
  of foreground RoIs whose GT box is exact (approximate boxes give class labels only).
* Inference (:func:`detections_from_outputs` -> :class:`Detections`): softmax, optional calibration
  ``sqrt(class score * RPN objectness)`` (alp-fcos-mo Sec. 4: "We calibrate classifier scores at
  test-time by taking geometric mean with RPN objectness score, following ViLD and Detic"),
  per-class box decoding, score threshold, class-wise NMS, top 100.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from omniseg.modeling.heads.open_vocab import OpenVocabClassifier, OpenVocabConfig
from omniseg.modeling.rpn import box_regression_loss
from omniseg.ops.boxes import clip_boxes, decode_boxes
from omniseg.ops.nms import batched_nms

if TYPE_CHECKING:  # for the annotation only: roi_box_head imports this module
    from omniseg.modeling.roi_box_head import BoxHeadConfig

PREDICTORS = ("class-specific", "class-agnostic", "open-vocab")


@dataclass
class Detections:
    """Detections of one image.

    Attributes:
        boxes: N x 4 XYXY pixels.
        scores: N in [0, 1].
        labels: N long class index (into the vocabulary for the open-vocab predictor).
        roi_index: N long index of the source proposal.
        box_features: N x fc_dim fc features of the source RoIs, when requested.
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    roi_index: Tensor
    box_features: Tensor | None = None

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


class BoxPredictor(nn.Module):
    """Classification and box-regression layers (see the module docstring for the variants).

    Args:
        cfg: :class:`BoxHeadConfig` (predictor, fc_dim, num_classes, open-vocab settings).
    """

    def __init__(self, cfg: BoxHeadConfig):
        super().__init__()
        if cfg.predictor not in PREDICTORS:
            raise ValueError(f"predictor must be one of {PREDICTORS}, got {cfg.predictor!r}")
        self.kind = cfg.predictor
        self.open_vocab: OpenVocabClassifier | None = None
        self.cls_score: nn.Linear | None = None
        if self.kind == "open-vocab":
            if cfg.background == "none":
                raise ValueError("the open-vocab box predictor needs a background embedding ('zero' or 'learned')")
            self.open_vocab = OpenVocabClassifier(OpenVocabConfig(
                in_channels=cfg.fc_dim, embed_dim=cfg.embed_dim, temperature=cfg.temperature,
                temperature_kind=cfg.temperature_kind, background=cfg.background))  # type: ignore[arg-type]
        else:
            if cfg.num_classes < 1:
                raise ValueError(f"num_classes must be >= 1, got {cfg.num_classes}")
            self.cls_score = nn.Linear(cfg.fc_dim, cfg.num_classes + 1)
            nn.init.normal_(self.cls_score.weight, std=0.01)
            nn.init.zeros_(self.cls_score.bias)
        self.num_classes = cfg.num_classes
        self.class_specific = self.kind == "class-specific"
        self.bbox_pred = nn.Linear(cfg.fc_dim, 4 * cfg.num_classes if self.class_specific else 4)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: Tensor, class_embeddings: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Args:
            x: R x fc_dim RoI features.
            class_embeddings: C x D text embeddings (open-vocab only; required there).

        Returns:
            class logits R x (C + 1) (background last) and deltas R x 4C (class-specific) or R x 4.
        """
        if self.open_vocab is not None:
            if class_embeddings is None:
                raise ValueError("the open-vocab predictor needs class_embeddings (C x D)")
            logits = self.open_vocab(x, class_embeddings)
        else:
            if class_embeddings is not None:
                raise ValueError(f"class_embeddings given to a {self.kind!r} predictor (fixed classes)")
            assert self.cls_score is not None
            logits = self.cls_score(x)
        return logits, self.bbox_pred(x)

    def per_class_weights(self) -> tuple[Tensor, Tensor | None]:
        """Per-class weights of the linear predictors (for weight transfer, Mask^X R-CNN).

        Returns:
            cls: C x fc_dim rows of ``cls_score.weight`` (background row excluded);
            box: C x 4 x fc_dim rows of ``bbox_pred.weight`` (class-specific), else None.
        """
        if self.cls_score is None:
            raise ValueError("per_class_weights: the open-vocab predictor has no per-class weight rows")
        c = self.num_classes
        box = self.bbox_pred.weight.view(c, 4, -1) if self.class_specific else None
        return self.cls_score.weight[:c], box


def box_head_losses(
    class_logits: Tensor,
    pred_deltas: Tensor,
    labels: Tensor,
    target_deltas: Tensor,
    regress: Tensor,
    box_loss: str = "smooth_l1",
    smooth_l1_beta: float = 1.0,
    background_weight: float = 1.0,
) -> dict[str, Tensor]:
    """Fast R-CNN losses over the sampled RoIs of a batch.

    Args:
        class_logits: R x (C + 1), background last.
        pred_deltas: R x 4C (class-specific) or R x 4 (class-agnostic).
        labels: R long in [0, C] (C = background).
        target_deltas: R x 4 (used where ``regress``).
        regress: R bool: foreground RoI matched to an exact box.
        box_loss, smooth_l1_beta: see :func:`omniseg.modeling.rpn.box_regression_loss`.
        background_weight: CE weight of the background class (weighted mean over RoIs).

    Returns:
        {"loss_cls": CE mean, "loss_box_reg": regression sum / R}; 0 with a grad path when R == 0.
    """
    r, c1 = class_logits.shape
    if r == 0:
        zero = class_logits.sum() * 0 + pred_deltas.sum() * 0
        return {"loss_cls": zero, "loss_box_reg": zero.clone()}
    weight = None
    if background_weight != 1.0:
        weight = class_logits.new_ones(c1)
        weight[-1] = background_weight
    loss_cls = F.cross_entropy(class_logits, labels, weight=weight)
    regress = regress & (labels < c1 - 1)
    idx = torch.nonzero(regress).flatten()
    if pred_deltas.shape[1] == 4:
        pred = pred_deltas[idx]
    else:
        pred = pred_deltas.view(r, -1, 4)[idx, labels[idx]]
    loss_box = box_regression_loss(pred, target_deltas[idx].to(pred.dtype), box_loss, smooth_l1_beta) / r
    return {"loss_cls": loss_cls, "loss_box_reg": loss_box}


def detections_from_outputs(
    class_logits: Tensor,
    pred_deltas: Tensor,
    proposals: Tensor,
    image_size: tuple[int, int],
    objectness: Tensor | None = None,
    score_threshold: float = 0.05,
    nms_threshold: float = 0.5,
    topk: int = 100,
    box_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0),
) -> Detections:
    """Post-process one image's box-head outputs.

    Args:
        class_logits: R x (C + 1), background last.
        pred_deltas: R x 4C or R x 4.
        proposals: R x 4 XYXY.
        image_size: (height, width) for clipping.
        objectness: R RPN objectness probabilities; when given, scores become
            sqrt(class prob x objectness) (alp-fcos-mo Sec. 4, ViLD / Detic calibration).
        score_threshold: keep (RoI, class) pairs with score > this.
        nms_threshold: class-wise NMS IoU.
        topk: detections kept.
        box_weights: delta encoding weights.

    Returns:
        :class:`Detections` (box_features unset), by decreasing score.
    """
    r, c1 = class_logits.shape
    c = c1 - 1
    scores = F.softmax(class_logits.float(), dim=1)[:, :c]
    if objectness is not None:
        scores = torch.sqrt(scores * objectness.float().clamp(0, 1)[:, None])
    boxes = decode_boxes(pred_deltas.float(), proposals.float(), box_weights).view(r, pred_deltas.shape[1] // 4, 4)
    boxes = clip_boxes(boxes, image_size).expand(r, c, 4)
    keep = (scores > score_threshold) & torch.isfinite(boxes).all(dim=2) & torch.isfinite(scores)
    keep &= (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
    roi, cls = torch.nonzero(keep, as_tuple=True)
    b, s = boxes[roi, cls], scores[roi, cls]
    order = batched_nms(b, s, cls, nms_threshold)[:topk]
    return Detections(boxes=b[order], scores=s[order], labels=cls[order], roi_index=roi[order])
