"""Dense supervised pretraining of a ResNet trunk: the synthetic yardstick's "ImageNet" (issue 12).

The trunk learns, on the pretraining world (classes disjoint from the evaluation classes), to
label every pixel with its thing class (0 = no thing) and to mark instance boundaries, through a
light semantic-FPN head (1x1 laterals of C2..C5 summed at stride 4, one 3x3 conv). Only the trunk
is kept (:meth:`DensePretrainer.backbone_state_dict`, torchvision names): detectors load it with
``model.pretrained=`` like an ImageNet ResNet, and their FPN and heads start from scratch.

Why dense and supervised, not image-level classification: at CPU scale the trunk must learn where
things are (edges, extents of small objects), not only what they are; per-pixel labels teach both
in few steps (docs/design.md "Pretraining").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from omniseg.data.batch import Batch, Targets
from omniseg.modeling.backbones.resnet import ResNet
from omniseg.modeling.norm import NormKind, build_norm
from omniseg.modeling.preprocess import PIXEL_MEAN, PIXEL_STD, normalize_images

IGNORE = -1


def label_maps(targets: list[Targets], class_of_id: dict[int, int], height: int, width: int) -> Tensor:
    """Per-pixel class index of a batch's instances.

    Args:
        targets: B per-image targets; visible masks (the synthetic world's do not overlap; where
            they do, the later instance wins, as in painting order).
        class_of_id: category id -> class index 1..K (0 = no thing).
        height, width: padded batch size.

    Returns:
        B x H x W int64 in 0..K.
    """
    out = torch.zeros(len(targets), height, width, dtype=torch.long)
    for b, t in enumerate(targets):
        for k in range(len(t)):
            if bool(t.has_mask[k]) and bool(t.is_thing[k]):
                cls = class_of_id.get(int(t.category_ids[k]), 0)
                m = t.masks[k, :height, :width].bool()
                out[b][m] = cls
    return out


def boundary_map(labels: Tensor, instance: Tensor) -> Tensor:
    """Pixels whose 4-neighbourhood crosses an instance or class border.

    Args:
        labels: B x H x W class indices (0 = background).
        instance: B x H x W instance indices (0 = background).

    Returns:
        B x H x W bool, True on both sides of every border between two different instances or
        between an instance and the background.
    """
    key = instance * (int(labels.max()) + 1) + labels
    edge = torch.zeros_like(key, dtype=torch.bool)
    dy = key[:, 1:, :] != key[:, :-1, :]
    dx = key[:, :, 1:] != key[:, :, :-1]
    edge[:, 1:, :] |= dy
    edge[:, :-1, :] |= dy
    edge[:, :, 1:] |= dx
    edge[:, :, :-1] |= dx
    return edge


def instance_maps(targets: list[Targets], height: int, width: int) -> Tensor:
    """B x H x W int64 instance index (1..N per image, 0 = none) of the masked thing instances."""
    out = torch.zeros(len(targets), height, width, dtype=torch.long)
    for b, t in enumerate(targets):
        for k in range(len(t)):
            if bool(t.has_mask[k]) and bool(t.is_thing[k]):
                out[b][t.masks[k, :height, :width].bool()] = k + 1
    return out


def dense_targets(batch: Batch, class_of_id: dict[int, int], stride: int) -> tuple[Tensor, Tensor]:
    """Class and boundary targets at ``stride``: the class at each output cell's centre pixel
    (padding ignored), and whether any pixel of the cell lies on a boundary.

    Returns:
        (B x H/s x W/s int64 class in -1..K, B x H/s x W/s float boundary in {0, 1}).
    """
    h, w = batch.images.shape[-2:]
    labels = label_maps(batch.targets, class_of_id, h, w)
    edges = boundary_map(labels, instance_maps(batch.targets, h, w)).float()
    for b, (ih, iw) in enumerate(batch.image_sizes):
        labels[b, ih:, :] = IGNORE
        labels[b, :, iw:] = IGNORE
    centre = stride // 2
    cls = labels[:, centre::stride, centre::stride]
    edge = F.max_pool2d(edges[:, None], stride, stride)[:, 0]
    return cls, edge


def mask_pool(feature: Tensor, masks: Tensor) -> Tensor:
    """Mean of a feature map over each (soft, downsampled) instance mask.

    Args:
        feature: C x h x w features of one image at stride s = H / h.
        masks: N x H x W {0, 1} instance masks at image resolution (H, W multiples of s).

    Returns:
        N x C: per instance, the feature averaged with weights = the fraction of each cell's pixels
        inside the mask (an object smaller than a cell still gets that cell's feature).
    """
    s = masks.shape[-1] // feature.shape[-1]
    weights = F.avg_pool2d(masks[:, None].float(), s, s)[:, 0] if s > 1 else masks.float()
    total = weights.flatten(1).sum(1, keepdim=True).clamp(min=1e-6)
    return torch.einsum("nhw,chw->nc", weights, feature) / total


class DensePretrainer(nn.Module):
    """ResNet trunk + semantic-FPN-lite head for per-pixel class and boundary prediction.

    Args:
        trunk: the ResNet to pretrain (returns c2..c5).
        category_ids: thing category ids in class order (class index = position + 1).
        head_dim: channels of the head.
        norm: the head's normalization.
        instance_weight: weight of an instance-level loss: each thing's class from its C3-C5 features
            averaged over its mask (:func:`mask_pool`), which makes the trunk's deep stages tell shapes
            apart (the per-pixel loss alone mostly teaches colour: a pixel inside a circle looks like one
            inside a square). 0 = off (the first pretrained trunk).
    """

    backbone_kind = "resnet"
    reads_labels = True  # the pretraining world's classes (disjoint from the evaluation classes)

    def __init__(self, *, trunk: ResNet, category_ids: list[int], head_dim: int = 64, norm: NormKind = "GN",
                 instance_weight: float = 0.0):
        super().__init__()
        self.trunk = trunk
        self.class_of_id = {int(c): i + 1 for i, c in enumerate(category_ids)}
        self.laterals = nn.ModuleDict({name: nn.Conv2d(ch, head_dim, 1) for name, ch in trunk.out_channels.items()})
        self.fuse = nn.Sequential(nn.Conv2d(head_dim, head_dim, 3, padding=1, bias=False), build_norm(norm, head_dim),
                                  nn.ReLU(inplace=True))
        self.classifier = nn.Conv2d(head_dim, len(category_ids) + 1, 1)
        self.boundary = nn.Conv2d(head_dim, 1, 1)
        self.instance_weight = instance_weight
        self.pooled = [n for n in ("c3", "c4", "c5") if n in trunk.out_channels]
        if instance_weight > 0:
            self.instance_classifier = nn.Linear(sum(trunk.out_channels[n] for n in self.pooled), len(category_ids))
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), persistent=False)
        self.stride = min(trunk.strides.values())

    def logits(self, images: Tensor, image_sizes: list[tuple[int, int]] | None = None) -> tuple[Tensor, Tensor]:
        """B x 3 x H x W uint8 -> (B x (K+1) x H/s x W/s class logits, B x 1 x H/s x W/s boundary logits)."""
        return self._run(images, image_sizes)[1:]

    def _run(self, images: Tensor, image_sizes: list[tuple[int, int]] | None) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        """The trunk's features and the head's class and boundary logits."""
        feats = self.trunk(normalize_images(images, self.pixel_mean, self.pixel_std, image_sizes))
        h, w = images.shape[-2] // self.stride, images.shape[-1] // self.stride
        x = sum(F.interpolate(self.laterals[n](f), size=(h, w), mode="bilinear", align_corners=False)
                if f.shape[-2:] != (h, w) else self.laterals[n](f) for n, f in feats.items())
        x = self.fuse(x)
        return feats, self.classifier(x), self.boundary(x)

    def instance_loss(self, feats: dict[str, Tensor], batch: Batch) -> Tensor:
        """Cross-entropy of each masked thing's class from its mask-pooled C3-C5 features."""
        logits, labels = self.instance_logits(feats, batch)
        if logits is None:
            return feats[self.pooled[0]].sum() * 0.0
        return F.cross_entropy(logits, labels)

    def instance_logits(self, feats: dict[str, Tensor], batch: Batch) -> tuple[Tensor | None, Tensor]:
        """(N x K class logits of the batch's N masked things, N class indices 0..K-1); None, empty if none."""
        pooled, labels = [], []
        for b, t in enumerate(batch.targets):
            keep = [k for k in range(len(t)) if bool(t.has_mask[k]) and bool(t.is_thing[k])
                    and int(t.category_ids[k]) in self.class_of_id]
            if not keep:
                continue
            masks = t.masks[keep].to(feats[self.pooled[0]].device)
            pooled.append(torch.cat([mask_pool(feats[n][b], masks) for n in self.pooled], dim=1))
            labels += [self.class_of_id[int(t.category_ids[k])] - 1 for k in keep]
        device = feats[self.pooled[0]].device
        if not pooled:
            return None, torch.zeros(0, dtype=torch.long, device=device)
        return self.instance_classifier(torch.cat(pooled)), torch.tensor(labels, device=device)

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        """Training losses: per-pixel cross-entropy over K+1 classes, boundary BCE and (``instance_weight``
        > 0) the instance-level class loss."""
        feats, cls_logits, edge_logits = self._run(batch.images, batch.image_sizes)
        cls, edge = dense_targets(batch, self.class_of_id, self.stride)
        cls, edge = cls.to(cls_logits.device), edge.to(edge_logits.device)
        valid = (cls >= 0).float()
        loss_edge = (F.binary_cross_entropy_with_logits(edge_logits[:, 0], edge, reduction="none") * valid).sum() \
            / valid.sum().clamp(min=1)
        losses = {"loss_cls": F.cross_entropy(cls_logits, cls, ignore_index=IGNORE), "loss_boundary": loss_edge}
        if self.instance_weight > 0:
            losses["loss_instance"] = self.instance_weight * self.instance_loss(feats, batch)
        return losses

    def backbone_state_dict(self) -> dict[str, Tensor]:
        """The trunk's weights in torchvision ResNet names (what ``resnet_filter_fn`` loads)."""
        return {k: v.detach().clone() for k, v in self.trunk.state_dict().items()}
