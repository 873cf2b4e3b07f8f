"""Faster R-CNN with FPN (Ren et al.; Lin et al.): backbone + FPN, RPN, RoI box head.

The two-stage detector under Mask R-CNN / Mask^X R-CNN / Mask R-CNN* (a mask branch is added on
top of :class:`FasterRCNN`: use :meth:`FasterRCNN.extract_features` and the ``box_features`` /
boxes of :meth:`FasterRCNN.predict`).

Supervision flags of the batch (DESIGN "Data flow") decide what each instance trains:

* exact, non-crowd box: RPN target, second-stage class label and box regression;
* approximate box (e.g. an ALP): second-stage class label only; for the RPN its region is
  ignored (neither positive nor negative). ``approximate_boxes_as_gt=True`` instead treats it as
  an exact box everywhere ("Mask R-CNN* with ALPs ... uses ALP boxes to train RPN and box
  regression head", alp-fcos-mo Sec. 4);
* crowd box: ignore region for the RPN and the second stage;
* no box (phrase / mask-only / stuff): nothing -- except, with the open-vocab predictor, a thing
  phrase with neither box nor mask is an IMAGE-LEVEL label: it trains the second-stage classifier
  on the image's largest-area RPN proposal (ALPs "as image-level labels", alp-fcos-mo Sec. 4,
  following Detic; :func:`image_label_indices`, loss weight ``image_label_weight`` = 0.1).

Class labels: for the fixed-class predictors, ``category_ids`` maps dataset ids to contiguous
indices (None: the id is the index); for the open-vocab predictor, an instance's text is looked up
in the vocabulary (texts + C x D embeddings) given to ``forward`` or set with
:meth:`FasterRCNN.set_vocabulary`. Instances whose class is unknown still train the RPN and box
regression; their second-stage RoIs are ignored for classification.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from omniseg.data.batch import Batch
from omniseg.modeling.anchors import AnchorConfig, AnchorGenerator
from omniseg.modeling.backbones.fpn import build_resnet18_fpn, build_resnet50_fpn
from omniseg.modeling.detection_targets import image_label_indices, instance_labels, split_targets
from omniseg.modeling.preprocess import PIXEL_MEAN, PIXEL_STD, normalize_images
from omniseg.modeling.roi_box_head import (
    BoxHeadConfig,
    BoxPredictor,
    BoxTargets,
    Detections,
    FCBoxHead,
    RoIBoxHead,
    SampledRoIs,
)
from omniseg.modeling.rpn import RPN, Proposals, RPNConfig, RPNHead, append_gt_proposals
from omniseg.ops.boxes import box_area
from omniseg.ops.losses import image_label_loss


@dataclass
class TrainStep:
    """Outputs of :meth:`FasterRCNN.train_step`.

    Attributes:
        losses: the four detector losses.
        features: backbone / FPN maps by level name.
        box_targets: B second-stage :class:`BoxTargets` (``instance_index`` maps rows to instances).
        sampled: B :class:`SampledRoIs` the box head trained on.
        class_embeddings: C x D vocabulary used (open-vocab), else None.
        vocabulary: its C texts, else None.
    """

    losses: dict[str, Tensor]
    features: dict[str, Tensor]
    box_targets: list[BoxTargets]
    sampled: list[SampledRoIs]
    class_embeddings: Tensor | None
    vocabulary: list[str] | None


class FasterRCNN(nn.Module):
    """Two-stage detector.

    Args:
        backbone: module ``B x 3 x H x W -> dict of maps`` with a ``strides`` dict (an FPN).
        rpn: :class:`RPN`; its anchor levels match ``rpn_in_features``.
        roi_heads: :class:`RoIBoxHead`; its pooler strides match ``box_in_features``.
        rpn_in_features: backbone levels fed to the RPN (P2..P6).
        box_in_features: levels pooled by the box head (P2..P5).
        category_ids: dataset category ids in class-index order (fixed-class predictors).
        approximate_boxes_as_gt: see the module docstring.
        image_label_weight: weight of the image-level label loss (open-vocab; alp-fcos-mo Sec. 4
            "We scale this loss component by lambda = 0.1, following Detic").
        pixel_mean, pixel_std: RGB 0-255 normalization (ImageNet).
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        rpn: RPN,
        roi_heads: RoIBoxHead,
        rpn_in_features: Sequence[str] = ("p2", "p3", "p4", "p5", "p6"),
        box_in_features: Sequence[str] = ("p2", "p3", "p4", "p5"),
        category_ids: Sequence[int] | None = None,
        approximate_boxes_as_gt: bool = False,
        image_label_weight: float = 0.1,
        pixel_mean: Sequence[float] = PIXEL_MEAN,
        pixel_std: Sequence[float] = PIXEL_STD,
    ):
        super().__init__()
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.rpn_in_features = tuple(rpn_in_features)
        self.box_in_features = tuple(box_in_features)
        strides = getattr(backbone, "strides", None)
        if strides is not None:
            want = tuple(strides[f] for f in self.rpn_in_features)
            if want != rpn.anchor_generator.strides:
                raise ValueError(f"anchor strides {rpn.anchor_generator.strides} != backbone strides {want}")
            want = tuple(strides[f] for f in self.box_in_features)
            if want != tuple(roi_heads.cfg.pooler_strides):
                raise ValueError(f"pooler strides {roi_heads.cfg.pooler_strides} != backbone strides {want}")
        if category_ids is not None and len(category_ids) != roi_heads.predictor.num_classes:
            raise ValueError(f"{len(category_ids)} category ids for {roi_heads.predictor.num_classes} classes")
        self.category_ids = list(category_ids) if category_ids is not None else None
        self.approximate_boxes_as_gt = approximate_boxes_as_gt
        self.image_label_weight = image_label_weight
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(1, 3, 1, 1), persistent=False)
        self.vocabulary: list[str] | None = None
        self.register_buffer("vocab_embeddings", None, persistent=False)
        self.text_embedder: Callable[[list[str]], Tensor] | None = None

    @property
    def open_vocab(self) -> bool:
        return self.roi_heads.predictor.kind == "open-vocab"

    def set_vocabulary(self, texts: Sequence[str], embeddings: Tensor) -> None:
        """Default vocabulary of the open-vocab predictor (used when none is passed).

        Args:
            texts: C class names / phrases (training labels are looked up here).
            embeddings: C x D frozen text embeddings.
        """
        if embeddings.dim() != 2 or embeddings.shape[0] != len(texts):
            raise ValueError(f"need {len(texts)} x D embeddings, got {tuple(embeddings.shape)}")
        self.vocabulary = list(texts)
        self.vocab_embeddings = embeddings.detach().to(self.pixel_mean.device)

    def preprocess(self, images: Tensor, image_sizes: Sequence[tuple[int, int]]) -> Tensor:
        """uint8 B x 3 x H x W -> normalized float; the padding stays exactly 0."""
        return normalize_images(images, self.pixel_mean, self.pixel_std, image_sizes)

    def extract_features(self, images: Tensor, image_sizes: Sequence[tuple[int, int]]) -> dict[str, Tensor]:
        """Backbone + FPN maps of uint8 images."""
        return self.backbone(self.preprocess(images, image_sizes))

    def set_text_embedder(self, embed: Callable[[list[str]], Tensor] | None) -> None:
        """Open-vocab training on free-form phrases: ``embed(texts) -> len(texts) x D`` (e.g. a cached
        frozen text encoder). When set and no vocabulary is passed to ``forward``, each batch's
        vocabulary is the default vocabulary (if any) plus every new text of the batch; the other
        phrases of the batch act as negatives, as in FCOS-MO's contrastive classifier (alp-fcos-mo
        Sec. 3.2)."""
        self.text_embedder = embed

    def _train_vocab(
        self, batch: Batch, class_embeddings: Tensor | None, vocabulary: Sequence[str] | None
    ) -> tuple[Tensor | None, Sequence[str] | None]:
        if not self.open_vocab:
            return None, None
        if class_embeddings is not None:
            if vocabulary is None:
                raise ValueError("open-vocab training needs the vocabulary texts to label instances")
            return class_embeddings, vocabulary
        embed = self.text_embedder
        if embed is not None:
            texts = list(self.vocabulary or [])
            seen = set(texts)
            for t in batch.targets:
                for text in t.texts:
                    if text not in seen:
                        seen.add(text)
                        texts.append(text)
            return embed(texts).to(self.pixel_mean.device), texts
        if self.vocab_embeddings is None or self.vocabulary is None:
            raise ValueError("open-vocab detector: pass class_embeddings, call set_vocabulary or set_text_embedder")
        return self.vocab_embeddings, self.vocabulary

    def prepare_targets(
        self, batch: Batch, vocabulary: Sequence[str] | None = None
    ) -> tuple[list[Tensor], list[Tensor], list[BoxTargets], list[Tensor]]:
        """Per-image RPN GT boxes, RPN ignore boxes, second-stage targets (:func:`split_targets`) and
        image-level label indices (:func:`image_label_indices`; open-vocab only, else empty)."""
        dev = batch.images.device
        rpn_gt, rpn_ignore, box_targets, image_labels = [], [], [], []
        for t in batch.targets:
            t = t.to(dev)
            labels = instance_labels(t, self.category_ids, vocabulary, self.roi_heads.predictor.num_classes)
            g, ign, bt = split_targets(t, labels, self.approximate_boxes_as_gt)
            rpn_gt.append(g)
            rpn_ignore.append(ign)
            box_targets.append(bt)
            image_labels.append(image_label_indices(t, labels) if self.open_vocab else labels[:0])
        return rpn_gt, rpn_ignore, box_targets, image_labels

    def image_label_losses(self, features: Sequence[Tensor], proposals: Sequence[Proposals],
                           image_labels: Sequence[Tensor], class_embeddings: Tensor) -> Tensor:
        """Weighted image-level label loss on each labelled image's largest-area proposal."""
        labelled = [bool(lab.numel()) and len(p) > 0 for p, lab in zip(proposals, image_labels)]
        if not any(labelled):
            return class_embeddings.new_zeros(())
        per_image = [p.boxes[box_area(p.boxes).argmax()][None] if keep else p.boxes[:0]
                     for p, keep in zip(proposals, labelled)]
        logits, _ = self.roi_heads.predictor(self.roi_heads.box_head(self.roi_heads.pool(features, per_image)),
                                             class_embeddings)
        return self.image_label_weight * image_label_loss(logits, [lab for lab, k in zip(image_labels, labelled) if k])

    def train_step(
        self,
        batch: Batch,
        class_embeddings: Tensor | None = None,
        vocabulary: Sequence[str] | None = None,
        generator: torch.Generator | None = None,
    ) -> TrainStep:
        """Everything a training step computes (a mask branch reuses features and sampled RoIs).

        Args: as :meth:`forward`.

        Returns:
            :class:`TrainStep`.
        """
        emb, vocab = self._train_vocab(batch, class_embeddings, vocabulary)
        feats = self.extract_features(batch.images, batch.image_sizes)
        rpn_gt, rpn_ignore, box_targets, image_labels = self.prepare_targets(batch, vocab)
        proposals, losses = self.rpn([feats[f] for f in self.rpn_in_features], batch.image_sizes,
                                     rpn_gt, rpn_ignore, generator)
        if emb is not None and self.image_label_weight > 0:
            losses["loss_image_labels"] = self.image_label_losses(
                [feats[f] for f in self.box_in_features], proposals, image_labels, emb)
        proposals = append_gt_proposals(proposals, [bt.boxes for bt in box_targets])
        c = emb.shape[0] if emb is not None else self.roi_heads.predictor.num_classes
        sampled = self.roi_heads.label_and_sample(proposals, box_targets, c, generator)
        losses.update(self.roi_heads.losses([feats[f] for f in self.box_in_features], sampled, emb))
        return TrainStep(losses=losses, features=feats, box_targets=box_targets, sampled=sampled,
                         class_embeddings=emb, vocabulary=list(vocab) if vocab is not None else None)

    def forward(
        self,
        batch: Batch,
        class_embeddings: Tensor | None = None,
        vocabulary: Sequence[str] | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """Training losses of a batch.

        Args:
            batch: collated :class:`Batch` (uint8 images, targets with supervision flags).
            class_embeddings: C x D vocabulary embeddings (open-vocab; default: set_vocabulary's or
                the text embedder's).
            vocabulary: C texts aligned with ``class_embeddings`` (instances are labelled by text).
            generator: CPU generator for anchor / RoI sampling.

        Returns:
            {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg"} scalars.
        """
        return self.train_step(batch, class_embeddings, vocabulary, generator).losses

    @torch.no_grad()
    def predict(
        self,
        images: Tensor,
        image_sizes: Sequence[tuple[int, int]] | None = None,
        class_embeddings: Tensor | None = None,
        return_features: bool = False,
        output_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> list[Detections]:
        """Detect objects.

        Args:
            images: B x 3 x H x W uint8 (padded batch).
            image_sizes: B valid (height, width); default: the full H x W.
            class_embeddings: C x D vocabulary (open-vocab; default: set_vocabulary's). Any
                vocabulary works: labels index its rows.
            return_features: attach each detection's RoI fc features (``box_features``).
            output_sizes: B (height, width) to rescale boxes to (e.g. ``Batch.orig_sizes``).

        Returns:
            B :class:`Detections` (boxes N x 4, scores N in [0, 1], labels N).
        """
        if image_sizes is None:
            image_sizes = [tuple(images.shape[-2:])] * images.shape[0]
        feats = self.extract_features(images, image_sizes)
        dets = self.detect(feats, image_sizes, class_embeddings, return_features)
        if output_sizes is not None:
            for d, (h, w), (oh, ow) in zip(dets, image_sizes, output_sizes):
                d.boxes = d.boxes * d.boxes.new_tensor([ow / w, oh / h, ow / w, oh / h])
        return dets

    @torch.no_grad()
    def detect(
        self,
        features: dict[str, Tensor],
        image_sizes: Sequence[tuple[int, int]],
        class_embeddings: Tensor | None = None,
        return_features: bool = False,
    ) -> list[Detections]:
        """Both stages at test settings on precomputed maps (:meth:`extract_features`), so a mask
        branch can pool the same maps for the detected boxes. Boxes are in input-image pixels."""
        emb = None
        if self.open_vocab:
            emb = class_embeddings if class_embeddings is not None else self.vocab_embeddings
            if emb is None:
                raise ValueError("open-vocab detector: pass class_embeddings or call set_vocabulary first")
        training = self.rpn.training
        self.rpn.eval()
        try:
            proposals, _ = self.rpn([features[f] for f in self.rpn_in_features], image_sizes)
        finally:
            self.rpn.train(training)
        return self.roi_heads.predict([features[f] for f in self.box_in_features], proposals, image_sizes, emb,
                                      return_features)


def faster_rcnn_fpn(
    backbone_builder: Callable[..., nn.Module],

    num_classes: int = 80,
    *,
    predictor: str = "class-specific",
    embed_dim: int = 512,
    width: int = 64,
    fpn_channels: int = 256,
    fc_dim: int = 1024,
    norm: str = "FrozenBN",
    freeze_at: int = 2,
    category_ids: Sequence[int] | None = None,
    approximate_boxes_as_gt: bool = False,
    image_label_weight: float = 0.1,
    anchor_sizes: Sequence[float] = (32, 64, 128, 256, 512),
    rpn: RPNConfig | None = None,
    box: BoxHeadConfig | None = None,
) -> FasterRCNN:
    """ResNet FPN Faster R-CNN (``backbone_builder``: e.g. build_resnet18_fpn) (P2..P6 RPN, P2..P5 RoIAlign, 2fc box head).

    ``predictor`` is "class-specific", "class-agnostic" or "open-vocab" (Mask R-CNN* of
    alp-fcos-mo Sec. 4: objectness calibration on by default); ``num_classes`` is ignored by the
    open-vocab predictor. ``rpn`` / ``box`` give the proposal and box-head settings (sampling,
    budgets, test thresholds; None: the defaults); the box head's shape fields (channels, fc
    width, classes, predictor, embedding size, objectness calibration) are set here from the other
    arguments. ``width`` / ``fpn_channels`` / ``fc_dim`` shrink the model for tests.
    """
    backbone = backbone_builder(out_channels=fpn_channels, norm=norm, freeze_at=freeze_at, width=width,
                                top_block="maxpool")
    anchors = AnchorGenerator(AnchorConfig(sizes=tuple((float(s),) for s in anchor_sizes)))
    rpn = RPN(head=RPNHead(fpn_channels, anchors.num_anchors_per_location), anchor_generator=anchors,
              cfg=rpn or RPNConfig())
    box_cfg = replace(box or BoxHeadConfig(), in_channels=fpn_channels, fc_dim=fc_dim, num_classes=num_classes,
                      predictor=predictor, embed_dim=embed_dim, calibrate_with_objectness=predictor == "open-vocab")
    heads = RoIBoxHead(box_head=FCBoxHead(fpn_channels, box_cfg.pooler_resolution, fc_dim),
                       predictor=BoxPredictor(box_cfg), cfg=box_cfg)
    return FasterRCNN(backbone=backbone, rpn=rpn, roi_heads=heads, category_ids=category_ids,
                      approximate_boxes_as_gt=approximate_boxes_as_gt, image_label_weight=image_label_weight)




def build_faster_rcnn_r18_fpn(num_classes: int = 80, **kwargs: Any) -> FasterRCNN:
    """ResNet-18 FPN Faster R-CNN; keyword arguments as :func:`faster_rcnn_fpn`."""
    return faster_rcnn_fpn(build_resnet18_fpn, num_classes, **kwargs)


def build_faster_rcnn_r50_fpn(num_classes: int = 80, **kwargs: Any) -> FasterRCNN:
    """ResNet-50 FPN Faster R-CNN; keyword arguments as :func:`faster_rcnn_fpn`."""
    return faster_rcnn_fpn(build_resnet50_fpn, num_classes, **kwargs)

