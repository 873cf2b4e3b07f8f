"""Region proposal network on FPN levels (Ren et al., Faster R-CNN; Lin et al., FPN Sec. 4.1).

* Head: a shared 3x3 conv + ReLU, then 1x1 convs for A objectness logits and 4A box deltas per
  location; the same weights on every level.
* Training (:func:`label_anchors`, :func:`sample_labels`, :func:`rpn_losses`): an anchor is
  positive when its IoU with a GT box is >= 0.7, or when it is (one of) the best anchors of a GT
  box (so every GT gets at least one positive); negative when its best IoU is < 0.3; ignored in
  between. Anchors lying inside an *ignore* box (crowd regions, and approximate boxes unless those
  are used as GT) are neither positive nor negative. 256 anchors per image are sampled, at most
  half positive. Losses: BCE on sampled anchors and smooth-L1 (beta 1/9) or L1 on positive deltas,
  both normalized by (256 x images), as detectron2 does.
* Inference (:func:`select_proposals`): top-k anchors per level by objectness, decode, clip,
  remove small boxes, NMS 0.7 within each level, keep the top-k per image.

Which GT boxes the RPN trains on is the caller's choice (see ``faster_rcnn.py``): only EXACT,
non-crowd boxes by default (the batch's supervision flags, DESIGN "Data flow").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from omniseg.modeling.anchors import AnchorGenerator
from omniseg.ops.boxes import box_area, box_iou, clip_boxes, decode_boxes, encode_boxes
from omniseg.ops.nms import batched_nms

RPN_BOX_WEIGHTS = (1.0, 1.0, 1.0, 1.0)


@dataclass
class RPNConfig:
    """Settings of :class:`RPN` (defaults: detectron2's FPN Mask R-CNN).

    Attributes:
        positive_iou: anchors with IoU >= this with a GT are positive (0.7).
        negative_iou: anchors whose best IoU is < this are negative (0.3).
        allow_low_quality_matches: each GT's best anchor(s) are positive too.
        ignore_ioa: anchors with intersection-over-anchor-area >= this with an ignore box (crowd)
            are neither positive nor negative (unless already positive for an exact GT).
        batch_size_per_image: anchors sampled per image for the losses (256).
        positive_fraction: at most this fraction of the sample is positive (0.5).
        box_loss: "smooth_l1" or "l1".
        smooth_l1_beta: beta of the smooth-L1 loss (1/9); 0 makes it L1.
        loss_weight: multiplies both RPN losses.
        pre_nms_topk_train, pre_nms_topk_test: candidates kept per level before NMS.
        post_nms_topk_train, post_nms_topk_test: proposals kept per image after NMS.
        nms_threshold: IoU threshold of proposal NMS (0.7).
        min_box_size: proposals with width or height <= this are removed (pixels).
    """

    positive_iou: float = 0.7
    negative_iou: float = 0.3
    allow_low_quality_matches: bool = True
    ignore_ioa: float = 0.7
    batch_size_per_image: int = 256
    positive_fraction: float = 0.5
    box_loss: str = "smooth_l1"
    smooth_l1_beta: float = 1.0 / 9.0
    loss_weight: float = 1.0
    pre_nms_topk_train: int = 2000
    pre_nms_topk_test: int = 1000
    post_nms_topk_train: int = 1000
    post_nms_topk_test: int = 1000
    nms_threshold: float = 0.7
    min_box_size: float = 0.0


@dataclass
class Proposals:
    """Proposals of one image.

    Attributes:
        boxes: K x 4 XYXY image pixels (detached).
        objectness_logits: K RPN logits (detached); ``sigmoid`` gives the objectness score.
    """

    boxes: Tensor
    objectness_logits: Tensor

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


class RPNHead(nn.Module):
    """Shared 3x3 conv + ReLU, then objectness (A) and box-delta (4A) 1x1 convs.

    Args:
        in_channels: FPN channels.
        num_anchors: anchors per location A.
    """

    def __init__(self, in_channels: int, num_anchors: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, 3, 1, 1)
        self.objectness_logits = nn.Conv2d(in_channels, num_anchors, 1)
        self.anchor_deltas = nn.Conv2d(in_channels, 4 * num_anchors, 1)
        for layer in (self.conv, self.objectness_logits, self.anchor_deltas):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, features: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Args:
            features: L maps B x C x H_l x W_l.

        Returns:
            L objectness maps B x (H_l W_l A) and L delta maps B x (H_l W_l A) x 4, flattened in
            the (y, x, a) anchor order of :class:`AnchorGenerator`.
        """
        logits, deltas = [], []
        for x in features:
            t = F.relu(self.conv(x), inplace=True)  # the conv's output is not kept for its backward
            o = self.objectness_logits(t)  # B x A x H x W
            d = self.anchor_deltas(t)  # B x 4A x H x W
            b, a, h, w = o.shape
            logits.append(o.permute(0, 2, 3, 1).reshape(b, -1))
            deltas.append(d.view(b, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, 4))
        return logits, deltas


def label_anchors(
    anchors: Tensor,
    gt_boxes: Tensor,
    ignore_boxes: Tensor | None = None,
    positive_iou: float = 0.7,
    negative_iou: float = 0.3,
    allow_low_quality_matches: bool = True,
    ignore_ioa: float = 0.7,
) -> tuple[Tensor, Tensor]:
    """Label anchors positive (1), negative (0) or ignored (-1) against one image's GT boxes.

    Args:
        anchors: A x 4 XYXY.
        gt_boxes: G x 4 XYXY boxes to detect (G may be 0: every anchor is negative).
        ignore_boxes: I x 4 regions (crowd) whose inside is neither positive nor negative.
        positive_iou, negative_iou: IoU thresholds (>= positive -> 1, < negative -> 0).
        allow_low_quality_matches: anchors with the highest IoU (> 0) for some GT are positive.
        ignore_ioa: anchors with intersection / anchor area >= this with an ignore box become -1,
            unless they are positive.

    Returns:
        labels: A long in {1, 0, -1}.
        matched: A long index of the best-IoU GT box (0 where G == 0; meaningful where label 1).
    """
    n = anchors.shape[0]
    labels = torch.full((n,), -1, dtype=torch.long, device=anchors.device)
    matched = torch.zeros(n, dtype=torch.long, device=anchors.device)
    if gt_boxes.shape[0] == 0 or n == 0:
        labels.fill_(0)
    else:
        iou = box_iou(gt_boxes.to(anchors.dtype), anchors)  # G x A
        best, matched = iou.max(dim=0)
        labels[best < negative_iou] = 0
        labels[best >= positive_iou] = 1
        if allow_low_quality_matches:
            best_per_gt = iou.max(dim=1, keepdim=True).values
            low = ((iou == best_per_gt) & (best_per_gt > 0)).any(dim=0)
            labels[low] = 1
    if ignore_boxes is not None and ignore_boxes.shape[0] > 0 and n > 0:
        ib = ignore_boxes.to(anchors.dtype)
        lt = torch.maximum(anchors[:, None, :2], ib[None, :, :2])
        rb = torch.minimum(anchors[:, None, 2:], ib[None, :, 2:])
        inter = (rb - lt).clamp(min=0).prod(dim=2)
        ioa = (inter / box_area(anchors).clamp(min=1e-6)[:, None]).max(dim=1).values
        labels[(ioa >= ignore_ioa) & (labels != 1)] = -1
    return labels, matched


def sample_labels(
    labels: Tensor, batch_size: int, positive_fraction: float, generator: torch.Generator | None = None
) -> Tensor:
    """Randomly keep at most ``batch_size`` labelled items, at most a fraction of them positive.

    Args:
        labels: N long; 1 positive (foreground), 0 negative (background), -1 ignored.
        batch_size: items kept per image.
        positive_fraction: positives kept = min(#pos, int(batch_size * fraction)); negatives fill
            the rest.
        generator: CPU generator for reproducible sampling.

    Returns:
        N long: the input label where sampled, -1 elsewhere.
    """
    pos = torch.nonzero(labels == 1).flatten()
    neg = torch.nonzero(labels == 0).flatten()
    num_pos = min(pos.numel(), int(batch_size * positive_fraction))
    num_neg = min(neg.numel(), batch_size - num_pos)
    perm_pos = torch.randperm(pos.numel(), generator=generator)[:num_pos].to(labels.device)
    perm_neg = torch.randperm(neg.numel(), generator=generator)[:num_neg].to(labels.device)
    out = torch.full_like(labels, -1)
    keep = torch.cat([pos[perm_pos], neg[perm_neg]])
    out[keep] = labels[keep]
    return out


def box_regression_loss(pred: Tensor, target: Tensor, kind: str = "smooth_l1", beta: float = 1.0 / 9.0) -> Tensor:
    """Summed smooth-L1 (or L1) loss.

    Args:
        pred: N x 4 predicted deltas.
        target: N x 4 target deltas.
        kind: "smooth_l1" (|x| < beta: 0.5 x^2 / beta, else |x| - 0.5 beta) or "l1".
        beta: smooth-L1 transition point; <= 0 gives L1.

    Returns:
        Scalar sum over all elements (0 for N = 0, with a grad path).
    """
    if kind not in ("smooth_l1", "l1"):
        raise ValueError(f"box loss must be 'smooth_l1' or 'l1', got {kind!r}")
    if kind == "l1" or beta <= 0:
        return F.l1_loss(pred, target, reduction="sum")
    return F.smooth_l1_loss(pred, target, reduction="sum", beta=beta)


def rpn_losses(
    objectness_logits: Tensor,
    pred_deltas: Tensor,
    labels: Tensor,
    target_deltas: Tensor,
    normalizer: float,
    box_loss: str = "smooth_l1",
    smooth_l1_beta: float = 1.0 / 9.0,
) -> dict[str, Tensor]:
    """RPN objectness and box losses.

    Args:
        objectness_logits: B x A logits (all levels concatenated).
        pred_deltas: B x A x 4.
        labels: B x A sampled labels (1 positive, 0 negative, -1 not sampled).
        target_deltas: B x A x 4 (used where label is 1).
        normalizer: divisor of both sums (detectron2: batch_size_per_image x B).
        box_loss, smooth_l1_beta: see :func:`box_regression_loss`.

    Returns:
        {"loss_rpn_cls": BCE sum / normalizer, "loss_rpn_loc": regression sum / normalizer};
        exactly 0 (with a grad path) when nothing is sampled / positive.
    """
    valid = labels >= 0
    pos = labels == 1
    cls = F.binary_cross_entropy_with_logits(
        objectness_logits[valid], labels[valid].to(objectness_logits.dtype), reduction="sum"
    )
    loc = box_regression_loss(pred_deltas[pos], target_deltas[pos].to(pred_deltas.dtype), box_loss, smooth_l1_beta)
    norm = max(float(normalizer), 1.0)
    return {"loss_rpn_cls": cls / norm, "loss_rpn_loc": loc / norm}


def select_proposals(
    anchors: Sequence[Tensor],
    objectness_logits: Sequence[Tensor],
    pred_deltas: Sequence[Tensor],
    image_sizes: Sequence[tuple[int, int]],
    pre_nms_topk: int,
    post_nms_topk: int,
    nms_threshold: float = 0.7,
    min_box_size: float = 0.0,
) -> list[Proposals]:
    """Turn RPN outputs into proposals per image.

    Args:
        anchors: L tensors A_l x 4.
        objectness_logits: L tensors B x A_l.
        pred_deltas: L tensors B x A_l x 4.
        image_sizes: B (height, width) valid sizes used for clipping.
        pre_nms_topk: candidates kept per level (by logit) before NMS.
        post_nms_topk: proposals kept per image after NMS.
        nms_threshold: IoU threshold; NMS runs within each level (boxes of different levels do
            not suppress each other), as detectron2's FPN RPN.
        min_box_size: boxes with width or height <= this are dropped.

    Returns:
        B :class:`Proposals`, sorted by decreasing logit, detached.
    """
    candidates = []
    for i, (h, w) in enumerate(image_sizes):
        boxes, scores, levels = [], [], []
        for lvl, (anc, logit, delta) in enumerate(zip(anchors, objectness_logits, pred_deltas)):
            s = logit[i].detach()
            k = min(pre_nms_topk, s.numel())
            top_s, top_i = s.topk(k, sorted=True)
            boxes.append(decode_boxes(delta[i].detach()[top_i], anc[top_i], RPN_BOX_WEIGHTS))
            scores.append(top_s)
            levels.append(torch.full((k,), i * len(anchors) + lvl, dtype=torch.long, device=s.device))
        b = clip_boxes(torch.cat(boxes), (h, w))
        s = torch.cat(scores)
        wh = b[:, 2:] - b[:, :2]
        keep = (wh > min_box_size).all(dim=1) & torch.isfinite(b).all(dim=1) & torch.isfinite(s)
        candidates.append((b[keep], s[keep], torch.cat(levels)[keep]))
    if not candidates:
        return []
    # One NMS call for all images and levels (group = image x level): the same kept boxes as one
    # call per image, in the same order within each image, without a per-image pass.
    groups = torch.cat([g for _, _, g in candidates])
    keep = batched_nms(torch.cat([b.float() for b, _, _ in candidates]),
                       torch.cat([s.float() for _, s, _ in candidates]), groups, nms_threshold)
    image_of_kept = groups[keep] // max(len(anchors), 1)
    out, offset = [], 0
    for i, (b, s, _) in enumerate(candidates):
        k = (keep[image_of_kept == i] - offset)[:post_nms_topk]
        out.append(Proposals(boxes=b[k], objectness_logits=s[k]))
        offset += b.shape[0]
    return out


def append_gt_proposals(proposals: Sequence[Proposals], gt_boxes: Sequence[Tensor]) -> list[Proposals]:
    """Add GT boxes to the proposals (training): the second stage always sees perfect RoIs.

    GT proposals get objectness logit +10 (score ~1); it is only used at test time.

    Args:
        proposals: B :class:`Proposals`.
        gt_boxes: B tensors G_i x 4.

    Returns:
        B :class:`Proposals` with the GT boxes appended after the RPN's.
    """
    out = []
    for p, g in zip(proposals, gt_boxes):
        g = g.to(p.boxes)
        out.append(Proposals(
            boxes=torch.cat([p.boxes, g]),
            objectness_logits=torch.cat([p.objectness_logits, p.objectness_logits.new_full((g.shape[0],), 10.0)]),
        ))
    return out


class RPN(nn.Module):
    """Region proposal network.

    Args:
        head: :class:`RPNHead`.
        anchor_generator: :class:`AnchorGenerator` (one level per feature map).
        cfg: :class:`RPNConfig`.
    """

    def __init__(self, *, head: RPNHead, anchor_generator: AnchorGenerator, cfg: RPNConfig | None = None):
        super().__init__()
        self.head = head
        self.anchor_generator = anchor_generator
        self.cfg = cfg or RPNConfig()
        if self.cfg.box_loss not in ("smooth_l1", "l1"):
            raise ValueError(f"box_loss must be 'smooth_l1' or 'l1', got {self.cfg.box_loss!r}")

    def forward(
        self,
        features: Sequence[Tensor],
        image_sizes: Sequence[tuple[int, int]],
        gt_boxes: Sequence[Tensor] | None = None,
        ignore_boxes: Sequence[Tensor] | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[list[Proposals], dict[str, Tensor]]:
        """Propose boxes, and compute the losses when ``gt_boxes`` is given.

        Args:
            features: L maps B x C x H_l x W_l (finest first, matching the anchor levels).
            image_sizes: B valid (height, width).
            gt_boxes: B tensors G_i x 4 of boxes to learn (exact boxes); None at inference.
            ignore_boxes: B tensors I_i x 4 of ignore regions (crowd), or None.
            generator: CPU generator for anchor sampling.

        Returns:
            (B proposals, losses dict; empty without ``gt_boxes``). Training-mode proposal counts
            use the ``*_train`` top-k values.
        """
        cfg = self.cfg
        anchors = self.anchor_generator([tuple(f.shape[-2:]) for f in features])
        logits, deltas = self.head(features)
        train = self.training
        proposals = select_proposals(
            anchors, logits, deltas, image_sizes,
            cfg.pre_nms_topk_train if train else cfg.pre_nms_topk_test,
            cfg.post_nms_topk_train if train else cfg.post_nms_topk_test,
            cfg.nms_threshold, cfg.min_box_size,
        )
        if gt_boxes is None:
            return proposals, {}
        all_anchors = torch.cat(anchors)
        labels, targets = [], []
        for i in range(len(image_sizes)):
            ign = ignore_boxes[i] if ignore_boxes is not None else None
            lab, idx = label_anchors(all_anchors, gt_boxes[i], ign, cfg.positive_iou, cfg.negative_iou,
                                     cfg.allow_low_quality_matches, cfg.ignore_ioa)
            lab = sample_labels(lab, cfg.batch_size_per_image, cfg.positive_fraction, generator)
            tgt = torch.zeros_like(all_anchors)
            pos = lab == 1
            if bool(pos.any()):
                tgt[pos] = encode_boxes(all_anchors[pos], gt_boxes[i].to(all_anchors)[idx[pos]], RPN_BOX_WEIGHTS)
            labels.append(lab)
            targets.append(tgt)
        losses = rpn_losses(
            torch.cat(logits, dim=1), torch.cat(deltas, dim=1), torch.stack(labels), torch.stack(targets),
            cfg.batch_size_per_image * len(image_sizes), cfg.box_loss, cfg.smooth_l1_beta,
        )
        return proposals, {k: v * cfg.loss_weight for k, v in losses.items()}
