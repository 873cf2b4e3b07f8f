"""Mask R-CNN* (alp-fcos-mo Sec. 4 "Baseline: Mask R-CNN*"): the open-vocabulary two-stage baseline.

A :class:`~omniseg.modeling.maskx_rcnn.MaskRCNN` with (1) class-agnostic box regression, (2) a
class-agnostic Hourglass-20 mask head and (3) the open-vocabulary classifier over phrase
embeddings (tau 0.01, zero background, test scores calibrated with RPN objectness:
:mod:`omniseg.modeling.box_predictor`). ALP boxes may train the RPN and box regression
(``approximate_boxes_as_gt``); phrases without boxes are image-level labels on the largest
proposal (``image_label_weight``, :meth:`omniseg.modeling.faster_rcnn.FasterRCNN.image_label_losses`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from omniseg.modeling.faster_rcnn import FasterRCNN, build_faster_rcnn_r18_fpn, build_faster_rcnn_r50_fpn
from omniseg.modeling.maskx_rcnn import MaskRCNN, assemble_mask_rcnn
from omniseg.modeling.roi_box_head import BoxHeadConfig
from omniseg.modeling.rpn import RPNConfig


def mask_rcnn_star_fpn(
    detector_builder: Callable[..., FasterRCNN],
    *,
    embed_dim: int = 512,
    mask_architecture: str = "hourglass",
    approximate_boxes_as_gt: bool = True,
    image_label_weight: float = 0.1,
    width: int = 64,
    fpn_channels: int = 256,
    fc_dim: int = 1024,
    mask_conv_dim: int = 256,
    mask_norm: str = "GN",
    norm: str = "FrozenBN",
    freeze_at: int = 2,
    anchor_sizes: Sequence[float] = (32, 64, 128, 256, 512),
    rpn: RPNConfig | None = None,
    box: BoxHeadConfig | None = None,
    mask_pooler_resolution: int | None = None,
) -> MaskRCNN:
    """Mask R-CNN* (alp-fcos-mo Sec. 4): (1) class-agnostic box regression, (2) Hourglass-20 mask
    head (class-agnostic), (3) open-vocabulary classifier over ``embed_dim``-d phrase embeddings
    (tau 0.01, zero background, scores calibrated with RPN objectness). "Mask R-CNN* with ALPs ...
    uses ALP boxes to train RPN and box regression head": ``approximate_boxes_as_gt`` (default on);
    phrases without boxes are image-level labels (``image_label_weight``, Detic's lambda = 0.1).
    Set the detector's phrase source with ``model.detector.set_text_embedder`` before training."""
    return assemble_mask_rcnn(detector_builder, 0, mask_head="class-agnostic", mask_architecture=mask_architecture,
                  fused_mlp=False, transfer_input="cls", transfer_mlp_layers=1, transfer_activation="relu",
                  transfer_hidden_dim=0, transfer_input_norm="none", stop_grad=True, text_embeddings=None,
                  mode="end_to_end", mask_conv_dim=mask_conv_dim, mask_norm=mask_norm, mlp_hidden_dim=0,
                  detector_kwargs=dict(width=width, fpn_channels=fpn_channels, fc_dim=fc_dim, norm=norm,
                                       freeze_at=freeze_at, embed_dim=embed_dim, anchor_sizes=anchor_sizes,
                                       approximate_boxes_as_gt=approximate_boxes_as_gt,
                                       image_label_weight=image_label_weight, rpn=rpn, box=box),
                  mask_pooler_resolution=mask_pooler_resolution, predictor="open-vocab")


def build_mask_rcnn_star_r18_fpn(**kwargs: Any) -> MaskRCNN:
    """ResNet-18 FPN Mask R-CNN*; keyword arguments as :func:`mask_rcnn_star_fpn`."""
    return mask_rcnn_star_fpn(build_faster_rcnn_r18_fpn, **kwargs)


def build_mask_rcnn_star_r50_fpn(**kwargs: Any) -> MaskRCNN:
    """ResNet-50 FPN Mask R-CNN* (the paper's backbone); keyword arguments as :func:`mask_rcnn_star_fpn`."""
    return mask_rcnn_star_fpn(build_faster_rcnn_r50_fpn, **kwargs)


MASK_RCNN_STAR_BUILDERS: dict[str, Callable[..., MaskRCNN]] = {
    "mask_rcnn_star_r18_fpn": build_mask_rcnn_star_r18_fpn,
    "mask_rcnn_star_r50_fpn": build_mask_rcnn_star_r50_fpn,
}
