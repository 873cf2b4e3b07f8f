"""Class-agnostic mask prediction from given boxes: the smallest real model of the framework.

Backbone + FPN -> multi-level RoIAlign of each *given* box -> FCN mask head -> one M x M
mask per box, pasted into the image. It is the mask branch of Mask R-CNN (He et al.;
maskx-rcnn paper Sec. 3.1) run on ground-truth boxes instead of proposals, which makes it:

* the end-to-end check of the engine (data -> batch -> model -> losses -> checkpoint ->
  predictor -> evaluator) required by the core issue, and
* a baseline box-to-mask auto-labeler (the task MAL solves with a stronger model).

Supervision flags decide the loss: only instances that have a box AND a mask (and are not
crowd regions) feed the mask loss; a box-only instance contributes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from omniseg.data.batch import Batch
from omniseg.engine.config import bounded
from omniseg.modeling.backbones.fpn import BACKBONE_BUILDERS
from omniseg.modeling.heads.mask_heads import FCNMaskHead
from omniseg.modeling.norm import NormKind
from omniseg.modeling.preprocess import PIXEL_MEAN, PIXEL_STD, normalize_images
from omniseg.ops.losses import sigmoid_bce_loss
from omniseg.ops.masks import paste_masks_in_image, roi_mask_targets
from omniseg.ops.roi_align import multilevel_roi_align


@dataclass
class BoxToMaskConfig:
    """Model section of a box-to-mask experiment config (flat, typed)."""

    backbone: Literal["resnet18_fpn", "resnet50_fpn"] = "resnet18_fpn"
    width: int = bounded(64, ge=1)  # ResNet base width (64 = the standard network)
    fpn_channels: int = bounded(256, ge=1)
    norm: NormKind = "FrozenBN"  # trunk norm; use "GN" or "BN" when training from scratch
    freeze_at: int = bounded(2, ge=0, le=5)
    pretrained: str = ""  # optional local .pth / .safetensors with torchvision ResNet weights
    roi_size: int = bounded(14, ge=1)  # RoIAlign output (Mask R-CNN: 14 -> 28 x 28 masks)
    head_convs: int = bounded(4, ge=0)
    head_dim: int = bounded(256, ge=1)
    head_norm: NormKind = "none"


class BoxToMask(nn.Module):
    """Predict a class-agnostic mask for each given box.

    Args:
        backbone: module mapping B x 3 x H x W to a dict of FPN maps ``p2``.. (finest first).
        mask_head: R x C x S x S RoI features -> R x 1 x 2S x 2S mask logits.
        roi_size: S.
        in_features: FPN maps pooled from, finest first, with their strides.
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        mask_head: nn.Module,
        roi_size: int = 14,
        in_features: Sequence[str] = ("p2", "p3", "p4", "p5"),
        strides: Sequence[int] = (4, 8, 16, 32),
    ):
        super().__init__()
        self.backbone, self.mask_head = backbone, mask_head
        self.roi_size, self.in_features, self.strides = roi_size, tuple(in_features), tuple(strides)
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), persistent=False)

    def mask_logits(self, images: Tensor, boxes: Sequence[Tensor]) -> Tensor:
        """B x 3 x H x W uint8 images and B lists of Ni x 4 boxes -> (sum Ni) x 2S x 2S logits."""
        feats = self.backbone(normalize_images(images, self.pixel_mean, self.pixel_std))
        maps = [feats[k] for k in self.in_features]
        rois = multilevel_roi_align(maps, [b.float() for b in boxes], self.roi_size, self.strides)
        return self.mask_head(rois)[:, 0]

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        """Mask loss over instances with a box and a mask (crowd regions excluded).

        Returns:
            {"loss_mask": scalar, "num_masks": scalar (logged, not optimized)}.
        """
        boxes, targets = [], []
        for t in batch.targets:
            keep = t.has_box & t.has_mask & ~t.is_crowd
            boxes.append(t.boxes[keep])
            targets.append((t.masks[keep], t.boxes[keep]))
        num = sum(int(b.shape[0]) for b in boxes)
        logits = self.mask_logits(batch.images, boxes)
        if num == 0:  # no mask supervision in this batch: a zero loss that still has a graph
            return {"loss_mask": logits.sum() * 0.0, "num_masks": torch.zeros(())}
        size = logits.shape[-1]
        gt = torch.cat([roi_mask_targets(m, b, size) for m, b in targets if m.shape[0]])
        # targets are soft at the borders; Mask R-CNN thresholds them at 0.5
        loss = sigmoid_bce_loss(logits, (gt >= 0.5).to(logits.dtype))
        return {"loss_mask": loss, "num_masks": torch.tensor(float(num))}

    @torch.no_grad()
    def predict_masks(
        self, images: Tensor, image_sizes: Sequence[tuple[int, int]], boxes: Sequence[Tensor]
    ) -> list[Tensor]:
        """Binary masks for given boxes.

        Args:
            images: B x 3 x Hp x Wp uint8 (padded).
            image_sizes: B valid (H, W).
            boxes: B tensors Ni x 4 (XYXY pixels).

        Returns:
            B bool tensors Ni x H x W.
        """
        logits = self.mask_logits(images, boxes)
        out, start = [], 0
        for b, (h, w) in zip(boxes, image_sizes):
            n = int(b.shape[0])
            probs = logits[start : start + n].sigmoid()
            out.append(paste_masks_in_image(probs, b.float(), (h, w), threshold=0.5))
            start += n
        return out


def build_box_to_mask(cfg: BoxToMaskConfig) -> BoxToMask:
    """Build the model from its config section (optionally loading local ResNet weights)."""
    if cfg.backbone not in BACKBONE_BUILDERS:
        raise ValueError(f"unknown backbone {cfg.backbone!r}; choose from {sorted(BACKBONE_BUILDERS)}")
    backbone = BACKBONE_BUILDERS[cfg.backbone](
        out_channels=cfg.fpn_channels, norm=cfg.norm, freeze_at=cfg.freeze_at, width=cfg.width
    )
    if cfg.pretrained:
        from omniseg.modeling.weights import load_resnet_trunk

        load_resnet_trunk(backbone, cfg.pretrained)
    head = FCNMaskHead(
        cfg.fpn_channels, conv_dim=cfg.head_dim, num_convs=cfg.head_convs, num_classes=1, norm=cfg.head_norm
    )
    return BoxToMask(backbone=backbone, mask_head=head, roi_size=cfg.roi_size)


#: named builders for the CLI
MODEL_BUILDERS = {"box_to_mask": build_box_to_mask}
