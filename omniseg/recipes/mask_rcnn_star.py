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

import dataclasses
from dataclasses import dataclass, field

import torch

from omniseg.data.records import RecordSet
from omniseg.engine.config import TrainConfig
from omniseg.modeling.maskx_rcnn import MASK_RCNN_STAR_BUILDERS, MaskXRCNN
from omniseg.recipes.alp_data import ALPConfig, TextConfig, alp_train_dataset, build_phrase_embedder
from omniseg.recipes.data import DataConfig, categories_of, pad_image
from omniseg.recipes.maskx_rcnn import box_overrides, rpn_overrides


@dataclass
class MaskRCNNStarModelConfig:
    """Model section (CPU-size defaults; the paper: ResNet-50-FPN, 1024-d box head, CLIP text)."""

    builder: str = "mask_rcnn_star_r18_fpn"  # key of MASK_RCNN_STAR_BUILDERS
    width: int = 16
    fpn_channels: int = 64
    fc_dim: int = 256
    norm: str = "GN"
    freeze_at: int = 0
    pretrained: str = ""  # optional local torchvision-style ResNet weights
    embed_dim: int = 384  # = the text encoder's dimension (MiniLM 384)
    mask_architecture: str = "hourglass"  # "hourglass" (the paper's Hourglass-20) | "fcn" (4-conv)
    mask_conv_dim: int = 64
    mask_roi_size: int = 14
    approximate_boxes_as_gt: bool = True  # "uses ALP boxes to train RPN and box regression head"
    image_label_weight: float = 0.1  # Detic's lambda for image-level labels
    anchor_sizes: tuple[float, ...] = (16.0, 32.0, 64.0, 128.0, 256.0)
    rpn_pre_nms_topk_train: int = 1000
    rpn_pre_nms_topk_test: int = 500
    rpn_post_nms_topk_train: int = 500
    rpn_post_nms_topk_test: int = 300
    roi_batch_size_per_image: int = 128
    detections_per_image: int = 100
    score_threshold: float = 0.05
    nms_threshold: float = 0.2  # alp-fcos-mo Sec. 4: NMS 0.2, score 0.05 "work best for all trained models"


@dataclass
class MaskRCNNStarExperiment:
    """Top-level config (YAML sections: model, text, alp, data, train)."""

    recipe: str = "mask_rcnn_star"
    model: MaskRCNNStarModelConfig = field(default_factory=MaskRCNNStarModelConfig)
    text: TextConfig = field(default_factory=TextConfig)
    alp: ALPConfig = field(default_factory=ALPConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def build_model(cfg: MaskRCNNStarExperiment) -> MaskXRCNN:
    """The configured Mask R-CNN* with its phrase embedder attached."""
    m = cfg.model
    if m.builder not in MASK_RCNN_STAR_BUILDERS:
        raise ValueError(f"unknown builder {m.builder!r}; choose from {sorted(MASK_RCNN_STAR_BUILDERS)}")
    model = MASK_RCNN_STAR_BUILDERS[m.builder](
        embed_dim=m.embed_dim, mask_architecture=m.mask_architecture, width=m.width, fpn_channels=m.fpn_channels,
        fc_dim=m.fc_dim, norm=m.norm, freeze_at=m.freeze_at, mask_conv_dim=m.mask_conv_dim,
        approximate_boxes_as_gt=m.approximate_boxes_as_gt, image_label_weight=m.image_label_weight,
        anchor_sizes=m.anchor_sizes,
        rpn_overrides=rpn_overrides(m), box_overrides=box_overrides(m),
        mask_overrides=dict(pooler_resolution=m.mask_roi_size),
    )
    if m.pretrained:
        from omniseg.modeling.weights import load_pretrained, resnet_filter_fn

        load_pretrained(model.detector.backbone, m.pretrained, resnet_filter_fn)
    model.detector.set_text_embedder(build_phrase_embedder(cfg.text, m.embed_dim))
    return model


def _predict(model: MaskXRCNN):
    return lambda images, vocab, sizes, out_sizes: model.predict(images, sizes, out_sizes, class_embeddings=vocab)


def predict_records(
    model: MaskXRCNN, gt: RecordSet, load_image=None, batch_size: int = 4, rank: int = 0, world: int = 1,
    progress: bool = True, phrases: dict[int, str] | None = None,
) -> RecordSet:
    """Predictions on this rank's share of ``gt``; vocabulary = ``phrases`` (class id -> phrase,
    default: its thing class names)."""
    from omniseg.recipes.scoring import vocabulary_predictions

    return vocabulary_predictions(model, _predict(model), model.detector.text_embedder, gt, load_image, batch_size,
                                  rank, world, progress, phrases, source="mask_rcnn_star")


def run(cfg: MaskRCNNStarExperiment, resume: bool = False) -> dict:
    """Train (optionally resuming) and evaluate; returns the Trainer's summary."""
    from omniseg.data.loader import build_train_loader
    from omniseg.engine.distributed import get_rank, get_world_size
    from omniseg.engine.optim import build_optimizer, build_scheduler
    from omniseg.engine.trainer import Trainer, seed_everything
    from omniseg.recipes.scoring import vocabulary_eval_fn

    t = cfg.train
    seed_everything(t.seed + get_rank(), t.deterministic)
    model = build_model(cfg)
    data = build_train_loader(
        [alp_train_dataset(cfg.data, cfg.alp, progress=t.progress)], "mix", cfg.data.batch_size,
        num_workers=cfg.data.num_workers, rank=get_rank(), world_size=get_world_size(), seed=t.seed,
    )
    optimizer = build_optimizer(model, t)
    trainer = Trainer(model, optimizer, build_scheduler(optimizer, t), data, t,
                      eval_fn=vocabulary_eval_fn(predict_records, cfg.data, t.output_dir, t.progress),
                      run_config=dataclasses.replace(cfg))
    if resume:
        trainer.resume()
    return trainer.train()


def model_from_config(cfg: MaskRCNNStarExperiment) -> MaskXRCNN:
    """The model a checkpoint of this recipe holds (used by :class:`omniseg.api.Segmenter`)."""
    return build_model(cfg)


def predict_image(model: MaskXRCNN, cfg: MaskRCNNStarExperiment, image: torch.Tensor, vocabulary=None, boxes=None):
    """Detect and segment one 3 x H x W uint8 image with ANY vocabulary of phrases (default: the
    training classes' names)."""
    if boxes is not None:
        raise ValueError("Mask R-CNN* finds its own boxes; boxes= is for box-to-mask models")
    if not vocabulary:
        vocabulary = [c.name for c in categories_of(cfg.data) if c.isthing]
    vocabulary = list(vocabulary)
    batch, sizes = pad_image(image)
    emb = model.detector.text_embedder(vocabulary)
    return model.predict(batch, sizes, sizes, class_embeddings=emb)[0].to_instances(vocabulary,
                                                                                     source="mask_rcnn_star")
