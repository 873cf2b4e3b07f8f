"""The mask branch of Mask R-CNN / Mask^X R-CNN on RoIs (maskx-rcnn Sec. 3).

RoIAlign (14 x 14, FPN level assignment) -> a mask network -> M x M mask logits (M = 28) for the
RoI's class. Three ways to produce the class's mask scores (``kind``):

* ``"class-agnostic"``: one 1x1 predictor channel for every class (the baseline, Sec. 3.3);
* ``"class-specific"``: one learned 1x1 predictor channel per class (Mask R-CNN; the 'oracle'
  when every class has masks, Sec. 4.1);
* ``"transfer"``: the class's 1x1 predictor weights are w_seg^c = T(w_det^c) from
  :class:`omniseg.modeling.weight_transfer.WeightTransfer` (Sec. 3.1), plus one learned
  class-agnostic bias (T predicts weights only, see weight_transfer.py).

``fused_mlp`` adds the class-agnostic MLP branch's 1 x M x M scores to every class's scores
before the sigmoid (Sec. 3.4 "Fused FCN+MLP Mask Heads"); the MLP reads the conv trunk's output.
``architecture`` is the 4-conv FCN (Mask R-CNN) or the deep Hourglass-20 head (alp-fcos-mo
Sec. 3.2 / Deep-MARC), here with its 2x deconv so both give 2S x 2S masks.

Only the channel of the RoI's class is computed and trained (Mask R-CNN's L_mask is defined on the
k-th mask of a RoI of class k); with T that is ``<features, w_seg[k]>``, identical to selecting
channel k of a K x M x M output but without materializing it.

Training (:func:`select_mask_rois`): foreground sampled RoIs whose matched GT instance HAS A MASK
(supervision flag ``has_mask``); box-only instances (set B) give no mask loss, so T and the mask
network learn from set A only (Sec. 3.2). Targets are the matched instance's mask cropped and
resized to the RoI (RoIAlign), thresholded at 0.5; loss: per-pixel binary cross-entropy averaged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from omniseg.modeling.heads.mask_heads import (
    FCNMaskHead,
    HourglassMaskHead,
    MLPMaskBranch,
    select_class_logits,
)
from omniseg.modeling.weight_transfer import WeightTransfer
from omniseg.ops.losses import sigmoid_bce_loss
from omniseg.ops.masks import roi_mask_targets
from omniseg.ops.roi_align import multilevel_roi_align

MASK_HEAD_KINDS = ("class-agnostic", "class-specific", "transfer")
ARCHITECTURES = ("fcn", "hourglass")


@dataclass
class MaskHeadConfig:
    """Settings of :class:`RoIMaskHead` (defaults: Mask R-CNN FPN / Mask^X R-CNN Sec. 4.1).

    Attributes:
        kind: "class-agnostic", "class-specific" or "transfer".
        architecture: "fcn" (4 x conv3x3 + deconv) or "hourglass" (Hourglass-20 + deconv).
        pooler_resolution: RoIAlign size S (14; masks are 2S = 28).
        pooler_strides: strides of the pooled FPN levels (P2..P5).
        sampling_ratio: RoIAlign samples per bin (0 = adaptive).
        conv_dim: channels of the mask network (256; the length of w_seg).
        num_convs: 3x3 convs of the FCN (4).
        norm: norm of the mask network's convs ("none" as Mask R-CNN, "GN" from scratch).
        fused_mlp: add the class-agnostic MLP branch (Sec. 3.4).
        mlp_hidden_dim, mlp_num_fc: its hidden fc width / count (1024, 2).
        mlp_reduce_channels: 1x1 conv width before the MLP's first fc (0 = none).
        loss_weight: weight of the mask loss.
        mask_threshold: pasted probability >= this is foreground.
    """

    kind: str = "transfer"
    architecture: str = "fcn"
    pooler_resolution: int = 14
    pooler_strides: tuple[int, ...] = (4, 8, 16, 32)
    sampling_ratio: int = 0
    conv_dim: int = 256
    num_convs: int = 4
    norm: str = "none"
    fused_mlp: bool = True
    mlp_hidden_dim: int = 1024
    mlp_num_fc: int = 2
    mlp_reduce_channels: int = 0
    loss_weight: float = 1.0
    mask_threshold: float = 0.5


def select_mask_rois(fg_labels: Tensor, matched: Tensor, instance_index: Tensor | None, has_mask: Tensor,
                     num_classes: int) -> tuple[Tensor, Tensor]:
    """Sampled RoIs that train the mask branch: foreground with a known class, matched to a GT
    instance that has a mask.

    Args:
        fg_labels: K long RoI labels ([0, C) foreground, C background, -1 ignored).
        matched: K long index into the image's second-stage box targets.
        instance_index: G long box-target row -> instance index in the image's Targets.
        has_mask: N bool per instance.
        num_classes: C.

    Returns:
        (roi index R long, instance index R long).
    """
    fg = (fg_labels >= 0) & (fg_labels < num_classes)
    if instance_index is None or instance_index.numel() == 0 or not bool(fg.any()):
        empty = torch.zeros(0, dtype=torch.long, device=fg_labels.device)
        return empty, empty.clone()
    roi = torch.nonzero(fg).flatten()
    inst = instance_index.to(roi.device)[matched[roi]]
    keep = has_mask.to(roi.device)[inst]
    return roi[keep], inst[keep]


def mask_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mask R-CNN mask loss: per-pixel BCE on the RoI's class channel, averaged over pixels and RoIs.

    Args:
        logits: R x M x M.
        targets: R x M x M in {0, 1}.

    Returns:
        Scalar; 0 with a grad path when R == 0.
    """
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    return sigmoid_bce_loss(logits, targets.to(logits.dtype))


class RoIMaskHead(nn.Module):
    """RoI mask branch (see the module docstring).

    Args:
        network: :class:`FCNMaskHead` or :class:`HourglassMaskHead` (``upsample=True``). For
            "transfer" its ``predictor`` is replaced by an identity: it outputs mask features.
        cfg: :class:`MaskHeadConfig`.
        num_classes: C.
        mlp: class-agnostic :class:`MLPMaskBranch` on the trunk output (``cfg.fused_mlp``).
        transfer: :class:`WeightTransfer` (``cfg.kind == "transfer"``).
    """

    def __init__(
        self,
        *,
        network: FCNMaskHead | HourglassMaskHead,
        cfg: MaskHeadConfig,
        num_classes: int,
        mlp: MLPMaskBranch | None = None,
        transfer: WeightTransfer | None = None,
    ):
        super().__init__()
        if cfg.kind not in MASK_HEAD_KINDS:
            raise ValueError(f"mask head kind must be one of {MASK_HEAD_KINDS}, got {cfg.kind!r}")
        if (transfer is not None) != (cfg.kind == "transfer"):
            raise ValueError("a WeightTransfer is needed exactly when kind == 'transfer'")
        if (mlp is not None) != cfg.fused_mlp:
            raise ValueError("an MLP branch is needed exactly when fused_mlp is True")
        want = {"class-agnostic": 1, "class-specific": num_classes}.get(cfg.kind)
        if want is not None and network.num_classes != want:
            raise ValueError(f"{cfg.kind} mask head needs a network with {want} output channels, "
                             f"got {network.num_classes}")
        self.network, self.mlp, self.transfer, self.cfg = network, mlp, transfer, cfg
        self.num_classes = num_classes
        if transfer is not None:
            network.predictor = nn.Identity()  # type: ignore[assignment]
            self.transfer_bias = nn.Parameter(torch.zeros(1))

    def pool(self, features: Sequence[Tensor], boxes: Sequence[Tensor]) -> Tensor:
        """(sum K_i) x C x S x S RoIAlign features of per-image boxes."""
        return multilevel_roi_align(features, [b.float() for b in boxes], self.cfg.pooler_resolution,
                                    self.cfg.pooler_strides, self.cfg.sampling_ratio)

    def _trunk_and_output(self, x: Tensor) -> tuple[Tensor, Tensor]:
        net = self.network
        if isinstance(net, FCNMaskHead):
            trunk = net.trunk(x)
            return trunk, net.head(trunk)
        trunk = net.hourglass(net.stem(x))
        y = net.deconv(trunk) if net.deconv is not None else trunk
        return trunk, net.predictor(y)

    def class_weights(self, cls_weights: Tensor | None, box_weights: Tensor | None) -> Tensor | None:
        """C x conv_dim predicted mask weights w_seg (None unless kind == "transfer").

        Args:
            cls_weights: C x fc_dim box-head classification weights (BoxPredictor.per_class_weights).
            box_weights: C x 4 x fc_dim box regression weights, or None.
        """
        if self.transfer is None:
            return None
        return self.transfer(cls_weights, box_weights)

    def mask_logits(self, x: Tensor, classes: Tensor, class_weights: Tensor | None = None) -> Tensor:
        """Mask logits of each RoI for its class.

        Args:
            x: R x C_feat x S x S pooled RoI features.
            classes: R long class indices in [0, C).
            class_weights: C x conv_dim w_seg (required for "transfer").

        Returns:
            R x M x M logits.
        """
        trunk, out = self._trunk_and_output(x)
        if self.transfer is not None:
            if class_weights is None:
                raise ValueError("the transfer mask head needs class_weights (C x conv_dim) from class_weights()")
            w = class_weights.to(out.dtype)[classes.long()]  # R x D: w_seg of each RoI's class
            logits = torch.einsum("rdhw,rd->rhw", out, w) + self.transfer_bias.to(out.dtype)
        else:
            logits = select_class_logits(out, classes)
        if self.mlp is not None:  # Sec. 3.4: class-agnostic MLP scores added to the class's scores
            logits = logits + self.mlp(trunk)[:, 0]
        return logits

    def losses(
        self,
        features: Sequence[Tensor],
        roi_boxes: Sequence[Tensor],
        roi_classes: Sequence[Tensor],
        gt_masks: Sequence[Tensor],
        class_weights: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Mask loss of the selected training RoIs (see :func:`select_mask_rois`).

        Args:
            features: pooled FPN maps (B x C x H_l x W_l).
            roi_boxes: B tensors R_i x 4 (proposal boxes).
            roi_classes: B tensors R_i long (their classes).
            gt_masks: B tensors R_i x H x W, the matched instances' full-image masks.
            class_weights: C x conv_dim (transfer).

        Returns:
            {"loss_mask": scalar, "num_mask_rois": float count (not optimized)}.
        """
        r = sum(int(b.shape[0]) for b in roi_boxes)
        x = self.pool(features, roi_boxes)
        logits = self.mask_logits(x, torch.cat(list(roi_classes)) if r else x.new_zeros(0, dtype=torch.long),
                                  class_weights)
        m = logits.shape[-1]
        if r:
            targets = torch.cat([roi_mask_targets(g, b, m) for g, b in zip(gt_masks, roi_boxes) if b.shape[0]])
            loss = mask_loss(logits, (targets >= 0.5).to(logits.dtype))
        else:
            loss = logits.sum() * 0.0
        if class_weights is not None:  # keeps T in the graph (zero grad) when no RoI has a mask
            loss = loss + class_weights.sum() * 0.0
        return {"loss_mask": loss * self.cfg.loss_weight, "num_mask_rois": torch.tensor(float(r))}

    @torch.no_grad()
    def predict(
        self,
        features: Sequence[Tensor],
        boxes: Sequence[Tensor],
        classes: Sequence[Tensor],
        class_weights: Tensor | None = None,
    ) -> list[Tensor]:
        """Mask probabilities of detected boxes for their detected classes.

        Args:
            features: pooled FPN maps.
            boxes: B tensors N_i x 4 (input-image pixels).
            classes: B tensors N_i long.
            class_weights: C x conv_dim (transfer).

        Returns:
            B tensors N_i x M x M in [0, 1].
        """
        n = [int(b.shape[0]) for b in boxes]
        if sum(n) == 0:
            m = 2 * self.cfg.pooler_resolution
            return [boxes[0].new_zeros(0, m, m) for _ in boxes] if boxes else []
        logits = self.mask_logits(self.pool(features, boxes), torch.cat(list(classes)), class_weights)
        return list(logits.float().sigmoid().split(n))
