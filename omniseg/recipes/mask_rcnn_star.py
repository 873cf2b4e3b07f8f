"""Recipe: Mask R-CNN* (alp-fcos-mo Sec. 4 "Baseline: Mask R-CNN*") on mixed supervision.

The open-vocabulary two-stage baseline the ALP paper compares FCOS-MO with
(:func:`omniseg.modeling.maskx_rcnn.mask_rcnn_star_fpn`): class-agnostic box regression, a
class-agnostic Hourglass-20 mask head, and the phrase-embedding classifier (tau 0.01, zero
background, test scores calibrated with RPN objectness). Training data and ALP options are those
of FCOS-MO (:mod:`omniseg.recipes.alp_data`); the table's rows are

* masks only: ``data.novel_supervision=alp`` without ALPs (the open-vocabulary baseline);
* ALPs as image-level labels: ``alp.as_image_labels=true`` (largest-proposal loss, lambda 0.1);
* with ALPs: ALP boxes train the RPN and box regression (``model.approximate_boxes_as_gt``);
* box-supervised oracle: ``data.novel_supervision=box``.

Evaluation: vocabulary = the thing class names; mask / box AP overall and on base / novel.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from omniseg.engine.config import ConfigError, TrainConfig, bounded
from omniseg.modeling.mask_rcnn_star import MASK_RCNN_STAR_BUILDERS
from omniseg.modeling.maskx_rcnn import MaskRCNN
from omniseg.modeling.norm import NormKind
from omniseg.recipes.alp_data import ALPConfig, alp_recipe
from omniseg.recipes.contract import RunInfo
from omniseg.recipes.data import DataConfig
from omniseg.recipes.maskx_rcnn import ProposalBudget, box_config, rpn_config
from omniseg.recipes.open_vocab import (
    TextConfig,
    build_phrase_embedder,
    open_vocabulary_predictor,
)


@dataclass
class MaskRCNNStarModelConfig(ProposalBudget):
    """Model section (CPU-size defaults; the paper: ResNet-50-FPN, 1024-d box head, CLIP text)."""

    builder: Literal["mask_rcnn_star_r18_fpn", "mask_rcnn_star_r50_fpn"] = "mask_rcnn_star_r18_fpn"
    width: int = bounded(16, ge=1)
    fpn_channels: int = bounded(64, ge=1)
    fc_dim: int = bounded(256, ge=1)
    norm: NormKind = "GN"
    freeze_at: int = bounded(0, ge=0, le=5)
    pretrained: str = ""  # optional local torchvision-style ResNet weights
    embed_dim: int = bounded(384, ge=1)  # = the text encoder's dimension (MiniLM 384)
    mask_architecture: Literal["hourglass", "fcn"] = "hourglass"  # the paper's Hourglass-20 | 4-conv
    mask_conv_dim: int = bounded(64, ge=1)
    mask_roi_size: int = bounded(14, ge=1)
    approximate_boxes_as_gt: bool = True  # "uses ALP boxes to train RPN and box regression head"
    image_label_weight: float = bounded(0.1, ge=0)  # Detic's lambda for image-level labels
    anchor_sizes: tuple[float, ...] = bounded((16.0, 32.0, 64.0, 128.0, 256.0), gt=0)
    detections_per_image: int = bounded(100, ge=1)
    score_threshold: float = bounded(0.05, ge=0, le=1)
    nms_threshold: float = bounded(0.2, ge=0, le=1)  # alp-fcos-mo Sec. 4: NMS 0.2, score 0.05 "work best for all trained models"


@dataclass
class MaskRCNNStarExperiment:
    """Top-level config (YAML sections: model, text, alp, data, train)."""

    recipe: Literal["mask_rcnn_star"] = "mask_rcnn_star"
    model: MaskRCNNStarModelConfig = field(default_factory=MaskRCNNStarModelConfig)
    text: TextConfig = field(default_factory=TextConfig)
    alp: ALPConfig = field(default_factory=ALPConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def build_model(cfg: MaskRCNNStarExperiment, info: RunInfo | None = None) -> MaskRCNN:
    """The configured Mask R-CNN* with its phrase embedder attached."""
    m = cfg.model
    if m.builder not in MASK_RCNN_STAR_BUILDERS:
        raise ConfigError(f"unknown builder {m.builder!r}; choose from {sorted(MASK_RCNN_STAR_BUILDERS)}")
    model = MASK_RCNN_STAR_BUILDERS[m.builder](
        embed_dim=m.embed_dim, mask_architecture=m.mask_architecture, width=m.width, fpn_channels=m.fpn_channels,
        fc_dim=m.fc_dim, norm=m.norm, freeze_at=m.freeze_at, mask_conv_dim=m.mask_conv_dim,
        approximate_boxes_as_gt=m.approximate_boxes_as_gt, image_label_weight=m.image_label_weight,
        anchor_sizes=m.anchor_sizes,
        rpn=rpn_config(m), box=box_config(m), mask_pooler_resolution=m.mask_roi_size,
    )
    if m.pretrained:
        from omniseg.modeling.weights import load_resnet_trunk

        load_resnet_trunk(model.detector.backbone, m.pretrained)
    model.detector.set_text_embedder(build_phrase_embedder(cfg.text, m.embed_dim))
    return model


def predictor(model: MaskRCNN, cfg: MaskRCNNStarExperiment, info: RunInfo):
    """Any vocabulary of phrases (default: the training classes' names)."""
    return open_vocabulary_predictor(
        model, lambda images, vocab, sizes, out_sizes: model.predict(images, sizes, out_sizes, class_embeddings=vocab),
        model.detector.text_embedder, [c.name for c in info.things()], "Mask R-CNN*")


RECIPE = alp_recipe("mask_rcnn_star", MaskRCNNStarExperiment, build_model, predictor)
