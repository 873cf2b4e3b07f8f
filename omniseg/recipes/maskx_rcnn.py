"""Recipe: train Mask^X R-CNN (or its baselines / oracle) on a base / novel split and score it.

The split decides what training sees (omniseg.data.splits): set A (base) keeps masks, set B
(novel) keeps boxes only (``novel_supervision: box``); ``reverse_split`` swaps A and B (the
paper's non-voc -> voc direction, maskx-rcnn Table 1), ``random_base`` > 0 draws a random split
with that many base classes (Sec. 4.2 "Comparison of random A/B splits"). The oracle is
``split: ""`` (every class has masks) with ``model.mask_head: class-specific``.

Evaluation predicts on the validation images (all classes) and reports mask AP and box AP,
overall and for the base / novel groups of the split.

Stage-wise mode (Sec. 3.2): ``model.stage1_iters`` detector iterations (checkpoints in
``<output_dir>/stage1``), then ``train.max_iter`` iterations of the mask branch with the detector
frozen (checkpoints in ``<output_dir>``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from omniseg.data.records import RecordSet
from omniseg.data.splits import Split
from omniseg.engine.config import ConfigError, TrainConfig, bounded
from omniseg.errors import ArgumentValueError
from omniseg.modeling.maskx_rcnn import MASKX_RCNN_BUILDERS, MaskRCNN
from omniseg.modeling.norm import NormKind
from omniseg.modeling.predictions import ImagePrediction, InstancePredictions
from omniseg.modeling.roi_box_head import BoxHeadConfig
from omniseg.modeling.rpn import RPNConfig
from omniseg.recipes.contract import Recipe, RunInfo, Stage
from omniseg.recipes.data import DataConfig, SplitName
from omniseg.recipes.scoring import detection_eval_fn
from omniseg.utils.weights_io import CheckpointError

if TYPE_CHECKING:
    from omniseg.recipes.mask_rcnn_star import MaskRCNNStarModelConfig


@dataclass
class ProposalBudget:
    """The two-stage proposal budget shared by Mask^X R-CNN and Mask R-CNN* model sections. detectron2
    uses 2000 / 1000 candidates per level for ~800 px images; our 256 px images have ~10x fewer anchors,
    and NMS dominates a CPU training step otherwise."""

    rpn_pre_nms_topk_train: int = bounded(1000, ge=1)
    rpn_pre_nms_topk_test: int = bounded(500, ge=1)
    rpn_post_nms_topk_train: int = bounded(500, ge=1)
    rpn_post_nms_topk_test: int = bounded(300, ge=1)
    roi_batch_size_per_image: int = bounded(128, ge=1)


@dataclass
class MaskXModelConfig(ProposalBudget):
    """Model section: every variant switch of Mask^X R-CNN (CPU-size defaults)."""

    builder: Literal["maskx_rcnn_r18_fpn", "maskx_rcnn_r50_fpn"] = "maskx_rcnn_r18_fpn"
    width: int = bounded(16, ge=1)  # ResNet base width (64 = the standard network)
    fpn_channels: int = bounded(64, ge=1)
    fc_dim: int = bounded(256, ge=1)  # box head fc width = length of w_cls (1024 in the paper)
    norm: NormKind = "GN"  # from scratch: GN; with ImageNet weights: FrozenBN
    freeze_at: int = bounded(0, ge=0, le=5)
    pretrained: str = ""  # optional local torchvision-style ResNet weights (.pth / .safetensors)
    mask_head: Literal["transfer", "class-agnostic", "class-specific"] = "transfer"
    mask_architecture: Literal["fcn", "hourglass"] = "fcn"
    fused_mlp: bool = True  # Sec. 3.4
    transfer_input: Literal["cls", "box", "cls+box", "text", "randn"] = "cls+box"
    transfer_mlp_layers: int = bounded(2, ge=1)  # 1 = affine
    transfer_activation: Literal["relu", "leaky_relu"] = "leaky_relu"
    transfer_hidden_dim: int = bounded(256, ge=1)
    transfer_input_norm: Literal["standardize", "none"] = "standardize"
    stop_grad: bool = True  # Sec. 3.2
    text_encoder: Literal["minilm", "mpnet", "clip", "hash"] = "minilm"  # for transfer_input "text"
    mode: Literal["end_to_end", "stage_wise"] = "end_to_end"
    stage1_iters: int = bounded(0, ge=0)  # stage_wise: detector iterations before train.max_iter mask iterations
    mask_conv_dim: int = bounded(64, ge=1)
    mask_norm: NormKind = "GN"
    mlp_hidden_dim: int = bounded(256, ge=1)
    anchor_sizes: tuple[float, ...] = bounded((16.0, 32.0, 64.0, 128.0, 256.0), gt=0)
    detections_per_image: int = bounded(50, ge=1)
    score_threshold: float = bounded(0.05, ge=0, le=1)  # detections with a class score <= this are dropped
    nms_threshold: float = bounded(0.5, ge=0, le=1)  # class-wise NMS IoU of the detections (detectron2)
    # stage-wise: start from the detector of another run's checkpoint (run folder, checkpoints/ or
    # step_N/) instead of training stage 1 here -- one detector shared by many mask-branch variants
    detector_init: str = ""


@dataclass
class MaskXDataConfig(DataConfig):
    """DataConfig plus the split direction / random split size (flat)."""

    split: SplitName = "voc-like"
    reverse_split: bool = False  # swap A and B of the named / random split
    random_base: int = bounded(0, ge=0)  # > 0: random split with this many base classes (seed: split_seed)
    oracle: bool = False  # train with every class's masks; the split only groups the evaluation


@dataclass
class MaskXExperiment:
    """Top-level config (YAML sections: model, data, train)."""

    recipe: Literal["maskx_rcnn"] = "maskx_rcnn"
    model: MaskXModelConfig = field(default_factory=MaskXModelConfig)
    data: MaskXDataConfig = field(default_factory=MaskXDataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def build_split(cfg: MaskXDataConfig, categories: list) -> Split | None:
    """The base / novel split of ``cfg`` (None: no split, every class keeps its masks)."""
    from omniseg.data.splits import random_split
    from omniseg.recipes.data import named_split

    if cfg.random_base > 0:
        split = random_split(categories, cfg.random_base, cfg.split_seed, cfg.novel_supervision,
                             name=f"random{cfg.random_base}")
    else:  # data.split_file, else data.split
        split = named_split(cfg, categories)
        if split is None:
            return None
    if cfg.reverse_split:
        sup = {i: "mask" for i in split.novel_ids}
        sup.update({i: cfg.novel_supervision for i in split.base_ids})
        split = Split(f"{split.name}-reversed", split.novel_ids, split.base_ids, split.ignored_ids, sup)
    return split


def train_dataset(cfg: MaskXDataConfig, progress: bool = True):
    """Training RecordDataset: the split's training view (everything for the oracle) plus augmentations."""
    from omniseg.data.splits import apply_split
    from omniseg.recipes.data import train_dataset as base_train_dataset

    def view(rs: RecordSet) -> RecordSet:
        split = build_split(cfg, rs.categories)
        return rs if split is None or cfg.oracle else apply_split(rs, split)

    return base_train_dataset(cfg, progress, view)


def rpn_config(cfg: ProposalBudget) -> RPNConfig:
    """The RPN settings of a two-stage model section (its ``rpn_*_nms_topk_*`` proposal budget)."""
    return RPNConfig(pre_nms_topk_train=cfg.rpn_pre_nms_topk_train, pre_nms_topk_test=cfg.rpn_pre_nms_topk_test,
                     post_nms_topk_train=cfg.rpn_post_nms_topk_train, post_nms_topk_test=cfg.rpn_post_nms_topk_test)


def box_config(cfg: MaskXModelConfig | MaskRCNNStarModelConfig) -> BoxHeadConfig:
    """The box-head sampling and test settings of a two-stage model section."""
    return BoxHeadConfig(batch_size_per_image=cfg.roi_batch_size_per_image,
                         detections_per_image=cfg.detections_per_image, score_threshold=cfg.score_threshold,
                         nms_threshold=cfg.nms_threshold)


def build_model(cfg: MaskXModelConfig, categories: list) -> MaskRCNN:
    """The model for the thing ``categories`` (class index order = sorted ids)."""
    if cfg.builder not in MASKX_RCNN_BUILDERS:
        raise ConfigError(f"unknown builder {cfg.builder!r}; choose from {sorted(MASKX_RCNN_BUILDERS)}")
    things = sorted((c for c in categories if c.isthing), key=lambda c: c.id)
    text = None
    if cfg.mask_head == "transfer" and cfg.transfer_input == "text":
        from omniseg.text.encoders import build_text_encoder

        text = build_text_encoder(cfg.text_encoder).encode([c.name for c in things])  # frozen, the GloVe control
    model = MASKX_RCNN_BUILDERS[cfg.builder](
        len(things), category_ids=[c.id for c in things], mask_head=cfg.mask_head,
        mask_architecture=cfg.mask_architecture, fused_mlp=cfg.fused_mlp, transfer_input=cfg.transfer_input,
        transfer_mlp_layers=cfg.transfer_mlp_layers, transfer_activation=cfg.transfer_activation,
        transfer_hidden_dim=cfg.transfer_hidden_dim, transfer_input_norm=cfg.transfer_input_norm,
        stop_grad=cfg.stop_grad, text_embeddings=text, mode=cfg.mode, width=cfg.width,
        fpn_channels=cfg.fpn_channels, fc_dim=cfg.fc_dim, mask_conv_dim=cfg.mask_conv_dim, mask_norm=cfg.mask_norm,
        mlp_hidden_dim=cfg.mlp_hidden_dim, norm=cfg.norm, freeze_at=cfg.freeze_at, anchor_sizes=cfg.anchor_sizes,
        rpn=rpn_config(cfg), box=box_config(cfg),
    )
    if cfg.pretrained:
        from omniseg.modeling.weights import load_resnet_trunk

        load_resnet_trunk(model.detector.backbone, cfg.pretrained)
    return model


def load_detector(model: MaskRCNN, path: str) -> None:
    """Load the ``detector.*`` weights of a checkpoint, or of a ``.safetensors`` file of them (what
    bench/claims.py keeps of a finished detector run); mask-branch weights are left as they are."""
    from omniseg.engine.checkpoint import load_weights, resolve_checkpoint

    step = Path(path) if str(path).endswith(".safetensors") else resolve_checkpoint(path) / "model.safetensors"
    weights = {k[len("detector."):]: v for k, v in load_weights(step).items() if k.startswith("detector.")}
    missing, unexpected = model.detector.load_state_dict(weights, strict=False)
    if missing or unexpected or not weights:
        raise CheckpointError(f"{step}: detector weights do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")


def stages(cfg: MaskXExperiment, model: MaskRCNN) -> list[Stage]:
    """End-to-end: one stage. Stage-wise (Sec. 3.2): ``model.stage1_iters`` detector iterations
    (checkpoints in ``<output_dir>/stage1``), then ``train.max_iter`` iterations of the mask branch
    (incl. T) with the detector fixed; with ``model.detector_init`` and no stage-1 iterations,
    stage 1 is the run that folder holds."""
    m, t = cfg.model, cfg.train
    if m.detector_init:
        load_detector(model, m.detector_init)
    if m.mode != "stage_wise":
        return [Stage(t)]
    if m.detector_init and m.stage1_iters <= 0:
        return [Stage(t, prepare=lambda mod: mod.set_stage(2))]
    if m.stage1_iters <= 0:
        raise ConfigError("stage_wise training needs model.stage1_iters > 0 detector iterations "
                         "(or model.detector_init)")
    t1 = dataclasses.replace(t, max_iter=m.stage1_iters, output_dir=f"{t.output_dir}/stage1", eval_period=0)
    return [Stage(t1, prepare=lambda mod: mod.set_stage(1), evaluate=False),
            Stage(t, prepare=lambda mod: mod.set_stage(2))]


def predictor(model: MaskRCNN, cfg: MaskXExperiment, info: RunInfo):
    """Detect and segment; ``vocabulary`` keeps only those classes (Mask^X R-CNN has a closed
    vocabulary: its training classes).

    With prompt ``boxes`` (at the input size) the mask branch segments those boxes instead
    (:meth:`MaskRCNN.segment_boxes`), one instance per box in order: box k of each image has the
    class ``vocabulary[k]`` and score 1; a box past the vocabulary's end or named "object" gets the
    class the box head scores highest, with that probability as its score.
    """
    names = [c.name for c in info.things()]

    def check(vocabulary, allowed: set[str]) -> None:
        unknown = sorted(set(vocabulary or []) - allowed)
        if unknown:
            raise ArgumentValueError(f"not among this model's {len(names)} classes: {unknown} (closed vocabulary; "
                                     f"e.g. {names[:3]})")

    def prompted(images, image_sizes, vocabulary, boxes) -> list[ImagePrediction]:
        import torch

        check(vocabulary, {*names, "object"})
        boxes = [b.to(images.device).float().reshape(-1, 4) for b in boxes]
        given = [names.index(v) if v in names else -1 for v in (vocabulary or [])]
        labels = [torch.tensor((given + [-1] * len(b))[:len(b)], dtype=torch.long, device=images.device)
                  for b in boxes]
        scores = [torch.ones(len(b), device=images.device) for b in boxes]
        if any(bool((lab < 0).any()) for lab in labels):  # classify the unnamed boxes with the box head
            det, heads = model.detector, model.detector.roi_heads
            feats = det.extract_features(images, image_sizes)
            logits, _ = heads.predictor(heads.box_head(heads.pool([feats[f] for f in det.box_in_features], boxes)))
            prob, cls = logits.softmax(-1)[:, :-1].max(-1)  # the background column (last) excluded
            counts = [len(b) for b in boxes]
            for lab, score, p, c in zip(labels, scores, prob.split(counts), cls.split(counts)):
                unnamed = lab < 0
                lab[unnamed], score[unnamed] = c[unnamed], p[unnamed]
        masks = model.segment_boxes(images, image_sizes, boxes, labels)
        return [ImagePrediction(InstancePredictions(b, s, lab, m), names)
                for b, s, lab, m in zip(boxes, scores, labels, masks)]

    def predict(images, image_sizes, output_sizes, vocabulary=None, boxes=None) -> list[ImagePrediction]:
        device = next(model.parameters()).device
        if boxes is not None:
            if list(image_sizes) != list(output_sizes):
                raise ValueError("prompt boxes are segmented at the input size: output_sizes must equal image_sizes")
            return prompted(images.to(device), image_sizes, vocabulary, boxes)
        check(vocabulary, set(names))
        out = [ImagePrediction(p, names) for p in model.predict(images.to(device), image_sizes, output_sizes)]
        return [p.restrict(vocabulary) for p in out] if vocabulary else out

    return predict


RECIPE = Recipe(
    name="maskx_rcnn",
    config=MaskXExperiment,
    build_model=lambda cfg, info: build_model(cfg.model, info.category_objects()),
    train_data=lambda cfg, progress: train_dataset(cfg.data, progress),
    eval_fn=lambda cfg, info, progress: detection_eval_fn(
        lambda m: predictor(m, cfg, info), cfg.data, cfg.train.output_dir, progress, split_of=build_split,
        source="maskx_rcnn"),
    predictor=predictor,
    stages=stages,    boxes="optional",
)
