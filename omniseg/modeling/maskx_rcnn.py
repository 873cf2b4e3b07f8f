"""Mask^X R-CNN (Hu et al., "Learning to Segment Every Thing"): Faster R-CNN + a mask branch whose
class-specific weights can be predicted from the box head's weights (maskx-rcnn Sec. 3).

:class:`MaskRCNN` wraps :class:`omniseg.modeling.faster_rcnn.FasterRCNN` (not duplicated) and a
:class:`omniseg.modeling.roi_mask_head.RoIMaskHead`:

* training: the detector's :meth:`FasterRCNN.train_step` gives the box losses on every instance
  with a box (sets A and B) plus its features and sampled RoIs; the mask branch trains on the
  foreground RoIs matched to instances with a mask (set A only, Sec. 3.2);
* inference: detected boxes with their detected classes go through the mask branch; each M x M
  probability map is pasted into the image (Sec. 3.4 "resized to the actual bounding box size").

Training modes (Sec. 3.2):

* ``"end_to_end"``: box and mask losses together; ``stop_grad`` of the transfer function decides
  whether the mask loss reaches the box head's weights w_det through T;
* ``"stage_wise"``: stage 1 trains the detector alone (box losses only); stage 2 freezes the
  detector (backbone, RPN, box head: no gradient, backbone in eval mode) and trains only the mask
  branch including T. Switch with :meth:`MaskRCNN.set_stage`.

The class is a Mask R-CNN (:class:`MaskRCNN`): with a class-agnostic or class-specific mask head it
is the paper's baselines and oracle, with the transfer head it is Mask^X R-CNN, and with the
open-vocabulary box predictor it is Mask R-CNN* (:mod:`omniseg.modeling.mask_rcnn_star`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from omniseg.data.batch import Batch
from omniseg.modeling.faster_rcnn import FasterRCNN, build_faster_rcnn_r18_fpn, build_faster_rcnn_r50_fpn
from omniseg.modeling.heads.mask_heads import FCNMaskHead, HourglassMaskHead, MLPMaskBranch
from omniseg.modeling.predictions import InstancePredictions
from omniseg.modeling.roi_box_head import BoxHeadConfig
from omniseg.modeling.roi_mask_head import ARCHITECTURES, MaskHeadConfig, RoIMaskHead, select_mask_rois
from omniseg.modeling.rpn import RPNConfig
from omniseg.modeling.weight_transfer import WeightTransfer, WeightTransferConfig
from omniseg.ops.masks import paste_masks_in_image

MODES = ("end_to_end", "stage_wise")


class MaskRCNN(nn.Module):
    """Two-stage detector + RoI mask branch.

    Args:
        detector: a fixed-class :class:`FasterRCNN` (class-specific box predictor for T inputs
            'box' / 'cls+box'), or an open-vocab one with a class-agnostic mask head (Mask R-CNN*).
        mask_head: :class:`RoIMaskHead`; its pooler strides match ``mask_in_features``.
        mode: "end_to_end" or "stage_wise".
        mask_in_features: FPN levels pooled by the mask branch.
    """

    def __init__(
        self,
        *,
        detector: FasterRCNN,
        mask_head: RoIMaskHead,
        mode: str = "end_to_end",
        mask_in_features: Sequence[str] = ("p2", "p3", "p4", "p5"),
    ):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if detector.open_vocab and mask_head.cfg.kind != "class-agnostic":
            raise ValueError("an open-vocab detector needs the class-agnostic mask head (the others have "
                             "per-class weights)")
        if not detector.open_vocab and mask_head.num_classes != detector.roi_heads.predictor.num_classes:
            raise ValueError(f"mask head has {mask_head.num_classes} classes, detector "
                             f"{detector.roi_heads.predictor.num_classes}")
        strides = getattr(detector.backbone, "strides", None)
        if strides is not None:
            want = tuple(strides[f] for f in mask_in_features)
            if want != tuple(mask_head.cfg.pooler_strides):
                raise ValueError(f"mask pooler strides {mask_head.cfg.pooler_strides} != backbone strides {want}")
        self.detector, self.mask_head, self.mode = detector, mask_head, mode
        self.mask_in_features = tuple(mask_in_features)
        self.stage = 1 if mode == "stage_wise" else 0
        # detector parameters trainable before any freezing (freeze_at keeps its frozen stem)
        self._detector_trainable = {n for n, p in detector.named_parameters() if p.requires_grad}

    @property
    def category_ids(self) -> list[int] | None:
        return self.detector.category_ids

    def set_stage(self, stage: int) -> None:
        """Stage-wise training: 1 = detector only; 2 = detector frozen, mask branch trained."""
        if self.mode != "stage_wise" or stage not in (1, 2):
            raise ValueError(f"set_stage({stage}) needs mode 'stage_wise' and stage 1 or 2 (mode {self.mode!r})")
        self.stage = stage
        for n, p in self.detector.named_parameters():
            p.requires_grad_(stage == 1 and n in self._detector_trainable)
        for p in self.mask_head.parameters():
            p.requires_grad_(stage == 2)
        self.train(self.training)

    def train(self, mode: bool = True) -> MaskRCNN:
        super().train(mode)
        if self.stage == 2:  # frozen detector: no norm statistics updates
            self.detector.backbone.eval()
        return self

    def class_weights(self) -> Tensor | None:
        """C x conv_dim w_seg = T(w_det) for every class (transfer), else None."""
        t = self.mask_head.transfer
        if t is None:
            return None
        if not t.uses_detector_weights:
            return self.mask_head.class_weights(None, None)
        cls_w, box_w = self.detector.roi_heads.predictor.per_class_weights()
        return self.mask_head.class_weights(cls_w, box_w)

    def forward(self, batch: Batch, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Training losses.

        Returns:
            end-to-end: the four detector losses + "loss_mask"; stage 1: the detector losses;
            stage 2: "loss_mask" (detector losses reported as "det_*", not optimized). Also
            "num_mask_rois" (count, not optimized).
        """
        if self.stage == 1:
            return self.detector(batch, generator=generator)
        if self.stage == 2:
            with torch.no_grad():
                step = self.detector.train_step(batch, generator=generator)
            losses = {f"det_{k}": v.detach() for k, v in step.losses.items()}
        else:
            step = self.detector.train_step(batch, generator=generator)
            losses = dict(step.losses)
        c = step.class_embeddings.shape[0] if step.class_embeddings is not None else self.mask_head.num_classes
        boxes, classes, masks = [], [], []
        for t, bt, s in zip(batch.targets, step.box_targets, step.sampled):
            roi, inst = select_mask_rois(s.labels, s.matched, bt.instance_index, t.has_mask, c)
            boxes.append(s.boxes[roi].detach())
            classes.append(s.labels[roi])
            masks.append(t.masks.to(s.boxes.device)[inst])
        feats = [step.features[f] for f in self.mask_in_features]
        losses.update(self.mask_head.losses(feats, boxes, classes, masks, self.class_weights()))
        return losses

    @torch.no_grad()
    def predict(
        self,
        images: Tensor,
        image_sizes: Sequence[tuple[int, int]] | None = None,
        output_sizes: Sequence[tuple[int, int]] | None = None,
        class_embeddings: Tensor | None = None,
    ) -> list[InstancePredictions]:
        """Detect and segment.

        Args:
            images: B x 3 x H x W uint8 (padded batch).
            image_sizes: B valid (height, width); default: the full H x W.
            output_sizes: B (height, width) to return boxes and masks at (e.g. ``Batch.orig_sizes``);
                default: ``image_sizes``.
            class_embeddings: C x D vocabulary of an open-vocab detector (labels index its rows).

        Returns:
            B :class:`InstancePredictions`.
        """
        if image_sizes is None:
            image_sizes = [tuple(images.shape[-2:])] * images.shape[0]
        if output_sizes is None:
            output_sizes = image_sizes
        det = self.detector
        feats = det.extract_features(images, image_sizes)
        dets = det.detect(feats, image_sizes, class_embeddings)
        probs = self.mask_head.predict([feats[f] for f in self.mask_in_features], [d.boxes for d in dets],
                                       [d.labels for d in dets], self.class_weights())
        out = []
        thr = self.mask_head.cfg.mask_threshold
        for d, p, (h, w), (oh, ow) in zip(dets, probs, image_sizes, output_sizes):
            boxes = d.boxes * d.boxes.new_tensor([ow / w, oh / h, ow / w, oh / h])
            masks = paste_masks_in_image(p, boxes, (oh, ow), threshold=thr)
            out.append(InstancePredictions(boxes=boxes, scores=d.scores, labels=d.labels, masks=masks))
        return out


    @torch.no_grad()
    def segment_boxes(
        self,
        images: Tensor,
        image_sizes: Sequence[tuple[int, int]],
        boxes: Sequence[Tensor],
        labels: Sequence[Tensor],
    ) -> list[Tensor]:
        """Masks for GIVEN boxes and class indices (box-to-mask use; isolates mask quality from detection).

        Args:
            images: B x 3 x H x W uint8 (padded).
            image_sizes: B valid (height, width).
            boxes: B tensors N_i x 4 XYXY pixels.
            labels: B tensors N_i long class indices.

        Returns:
            B bool tensors N_i x H x W.
        """
        feats = self.detector.extract_features(images, image_sizes)
        probs = self.mask_head.predict([feats[f] for f in self.mask_in_features], list(boxes), list(labels),
                                       self.class_weights())
        thr = self.mask_head.cfg.mask_threshold
        return [paste_masks_in_image(p, b.float(), hw, threshold=thr) for p, b, hw in zip(probs, boxes, image_sizes)]

def build_mask_head(
    num_classes: int,
    *,
    in_channels: int,
    det_dim: int,
    cfg: MaskHeadConfig,
    transfer_cfg: WeightTransferConfig | None = None,
    text_embeddings: Tensor | None = None,
) -> RoIMaskHead:
    """A :class:`RoIMaskHead` from its configs (``transfer_cfg`` only for kind "transfer")."""
    if cfg.architecture not in ARCHITECTURES:
        raise ValueError(f"mask architecture must be one of {ARCHITECTURES}, got {cfg.architecture!r}")
    k = num_classes if cfg.kind == "class-specific" else 1
    network: FCNMaskHead | HourglassMaskHead
    if cfg.architecture == "fcn":
        network = FCNMaskHead(in_channels, conv_dim=cfg.conv_dim, num_convs=cfg.num_convs, num_classes=k,
                              norm=cfg.norm)  # type: ignore[arg-type]
    else:
        network = HourglassMaskHead(in_channels, channels=cfg.conv_dim, num_layers=20, levels=2, num_classes=k,
                                    norm=cfg.norm, upsample=True)  # type: ignore[arg-type]
    mlp = None
    if cfg.fused_mlp:
        mlp = MLPMaskBranch(cfg.conv_dim, cfg.pooler_resolution, out_size=2 * cfg.pooler_resolution,
                            hidden_dim=cfg.mlp_hidden_dim, num_fc=cfg.mlp_num_fc,
                            reduce_channels=cfg.mlp_reduce_channels or None)
    transfer = None
    if cfg.kind == "transfer":
        transfer = WeightTransfer(transfer_cfg or WeightTransferConfig(), out_dim=cfg.conv_dim, det_dim=det_dim,
                                  num_classes=num_classes, text_embeddings=text_embeddings)
    return RoIMaskHead(network=network, cfg=cfg, num_classes=num_classes, mlp=mlp, transfer=transfer)


def assemble_mask_rcnn(
    detector_builder: Callable[..., FasterRCNN],
    num_classes: int,
    *,
    mask_head: str,
    mask_architecture: str,
    fused_mlp: bool,
    transfer_input: str,
    transfer_mlp_layers: int,
    transfer_activation: str,
    transfer_hidden_dim: int,
    transfer_input_norm: str,
    stop_grad: bool,
    text_embeddings: Tensor | None,
    mode: str,
    mask_conv_dim: int,
    mask_norm: str,
    mlp_hidden_dim: int,
    detector_kwargs: dict[str, Any],
    mask_pooler_resolution: int | None,
    predictor: str = "class-specific",
) -> MaskRCNN:
    detector = detector_builder(num_classes, predictor=predictor, **detector_kwargs)
    fpn_channels = detector.roi_heads.cfg.in_channels
    cfg = MaskHeadConfig(kind=mask_head, architecture=mask_architecture, conv_dim=mask_conv_dim, norm=mask_norm,
                         fused_mlp=fused_mlp, mlp_hidden_dim=mlp_hidden_dim)
    if mask_pooler_resolution is not None:
        cfg = replace(cfg, pooler_resolution=mask_pooler_resolution)
    tcfg = WeightTransferConfig(input=transfer_input, num_layers=transfer_mlp_layers, hidden_dim=transfer_hidden_dim,
                                activation=transfer_activation, stop_grad=stop_grad, input_norm=transfer_input_norm)
    head = build_mask_head(num_classes, in_channels=fpn_channels, det_dim=detector.roi_heads.cfg.fc_dim, cfg=cfg,
                           transfer_cfg=tcfg, text_embeddings=text_embeddings)
    return MaskRCNN(detector=detector, mask_head=head, mode=mode)


def maskx_rcnn_fpn(
    detector_builder: Callable[..., FasterRCNN],
    num_classes: int = 80,
    *,
    mask_head: str = "transfer",
    mask_architecture: str = "fcn",
    fused_mlp: bool = True,
    transfer_input: str = "cls+box",
    transfer_mlp_layers: int = 2,
    transfer_activation: str = "leaky_relu",
    transfer_hidden_dim: int = 1024,
    transfer_input_norm: str = "standardize",
    stop_grad: bool = True,
    text_embeddings: Tensor | None = None,
    mode: str = "end_to_end",
    width: int = 64,
    fpn_channels: int = 256,
    fc_dim: int = 1024,
    mask_conv_dim: int = 256,
    mask_norm: str = "none",
    mlp_hidden_dim: int = 1024,
    norm: str = "FrozenBN",
    freeze_at: int = 2,
    category_ids: Sequence[int] | None = None,
    anchor_sizes: Sequence[float] = (32, 64, 128, 256, 512),
    rpn: RPNConfig | None = None,
    box: BoxHeadConfig | None = None,
    mask_pooler_resolution: int | None = None,
) -> MaskRCNN:
    """FPN Mask^X R-CNN on ``detector_builder`` (e.g. build_faster_rcnn_r18_fpn); defaults: the paper's 'transfer+MLP', T = 'cls+box, 2-layer,
    LeakyReLU', stop-grad, end-to-end (maskx-rcnn Table 2). ``mask_head="class-agnostic"`` with
    ``fused_mlp`` False / True gives the baselines; "class-specific" trained on all masks the oracle.
    ``text_embeddings`` (C x D) are needed for ``transfer_input="text"``; ``width`` /
    ``fpn_channels`` / ``fc_dim`` / ``mask_conv_dim`` / ``mlp_hidden_dim`` shrink the model."""
    return assemble_mask_rcnn(detector_builder, num_classes, mask_head=mask_head, mask_architecture=mask_architecture,
                  fused_mlp=fused_mlp, transfer_input=transfer_input, transfer_mlp_layers=transfer_mlp_layers,
                  transfer_activation=transfer_activation, transfer_hidden_dim=transfer_hidden_dim,
                  transfer_input_norm=transfer_input_norm, stop_grad=stop_grad, text_embeddings=text_embeddings,
                  mode=mode, mask_conv_dim=mask_conv_dim, mask_norm=mask_norm, mlp_hidden_dim=mlp_hidden_dim,
                  detector_kwargs=dict(width=width, fpn_channels=fpn_channels, fc_dim=fc_dim, norm=norm,
                                       freeze_at=freeze_at, category_ids=category_ids, anchor_sizes=anchor_sizes,
                                       rpn=rpn, box=box),
                  mask_pooler_resolution=mask_pooler_resolution)


def build_maskx_rcnn_r18_fpn(num_classes: int = 80, **kwargs: Any) -> MaskRCNN:
    """ResNet-18 FPN Mask^X R-CNN; keyword arguments as :func:`maskx_rcnn_fpn`."""
    return maskx_rcnn_fpn(build_faster_rcnn_r18_fpn, num_classes, **kwargs)


def build_maskx_rcnn_r50_fpn(num_classes: int = 80, **kwargs: Any) -> MaskRCNN:
    """ResNet-50 FPN Mask^X R-CNN (the paper's backbone); keyword arguments as :func:`maskx_rcnn_fpn`."""
    return maskx_rcnn_fpn(build_faster_rcnn_r50_fpn, num_classes, **kwargs)


MASKX_RCNN_BUILDERS: dict[str, Callable[..., MaskRCNN]] = {
    "maskx_rcnn_r18_fpn": build_maskx_rcnn_r18_fpn,
    "maskx_rcnn_r50_fpn": build_maskx_rcnn_r50_fpn,
}
