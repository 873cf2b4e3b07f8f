"""Recipe: dense supervised pretraining of a ResNet trunk on the pretraining world (issue 12).

``omniseg pretrain configs/pretrain_r18_dense.yaml`` trains :class:`DensePretrainer` on
``data.train: synth-pretraining`` -- the synthetic world drawn with classes disjoint from the 80
evaluation classes (:func:`omniseg.data.synth.lexicon.pretraining_pairs`) -- and exports the trunk
for ``model.pretrained=`` of every detector recipe. Its evaluation is per-pixel accuracy and thing
mIoU on held-out pretraining-world images (``data.val``), so the manifest can say how far the
pretraining got.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from omniseg.engine.config import TrainConfig, bounded
from omniseg.modeling.backbones.resnet import build_resnet18, build_resnet50
from omniseg.modeling.dense_pretrain import DensePretrainer, dense_targets
from omniseg.modeling.norm import NormKind
from omniseg.recipes.contract import Recipe, RunInfo, no_predictor
from omniseg.recipes.data import DataConfig, open_val, train_dataset

TRUNKS = {"resnet18": build_resnet18, "resnet50": build_resnet50}


@dataclass
class TrunkConfig:
    """The ResNet trunk a pretraining recipe trains (width / norm must match the detectors that load it)."""

    trunk: Literal["resnet18", "resnet50"] = "resnet18"
    width: int = bounded(16, ge=1)
    norm: NormKind = "GN"


def build_trunk(cfg: TrunkConfig) -> nn.Module:
    """The trunk of ``cfg``, every stage trainable, returning c2..c5."""
    return TRUNKS[cfg.trunk](norm=cfg.norm, freeze_at=0, width=cfg.width)


@dataclass
class DensePretrainModelConfig(TrunkConfig):
    """Model section: the trunk plus the dense head."""

    head_dim: int = bounded(64, ge=1)
    instance_weight: float = bounded(0.0, ge=0)  # mask-pooled instance classification (DensePretrainer)


@dataclass
class PretrainingDataConfig(DataConfig):
    """DataConfig defaulting to the pretraining world for training and evaluation."""

    train: str = "synth-pretraining"
    val: str = "synth-pretraining"


@dataclass
class DensePretrainExperiment:
    """Top-level config (YAML sections: model, data, train)."""

    recipe: Literal["pretrain_dense"] = "pretrain_dense"
    model: DensePretrainModelConfig = field(default_factory=DensePretrainModelConfig)
    data: PretrainingDataConfig = field(default_factory=PretrainingDataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def build_model(cfg: DensePretrainModelConfig, info: RunInfo) -> DensePretrainer:
    return DensePretrainer(trunk=build_trunk(cfg), category_ids=[c.id for c in info.things()], head_dim=cfg.head_dim,
                           norm=cfg.norm, instance_weight=cfg.instance_weight)


def eval_fn(cfg: DensePretrainExperiment, info: RunInfo, progress: bool):
    """On ``data.val_num_images`` held-out images, at the model's output stride: pixel accuracy (cells
    with a thing or not), mean IoU over the thing classes present, and on thing cells the accuracy of
    the best thing class and of its shape and colour words (class names are ``"<colour> <shape>"``):
    what the trunk has learned to tell apart."""
    from omniseg.data.loader import build_test_loader

    gt, load_image = open_val(cfg.data, progress)

    def evaluate(model: nn.Module) -> dict[str, float]:
        core = model.module if hasattr(model, "module") else model
        k = len(core.class_of_id) + 1
        conf = torch.zeros(k, k, dtype=torch.long)
        thing_conf = torch.zeros(k, k, dtype=torch.long)  # target vs best thing class, on thing cells
        inst_conf = torch.zeros(k, k, dtype=torch.long)  # the instance classifier's, per thing (instance_weight > 0)
        was = core.training
        core.eval()
        try:
            with torch.no_grad():
                for batch in build_test_loader(gt, cfg.data.batch_size, load_image=load_image):
                    feats, logits, _ = core._run(batch.images.to(core.pixel_mean.device), batch.image_sizes)
                    if core.instance_weight > 0:
                        inst_logits, inst_labels = core.instance_logits(feats, batch)
                        if inst_logits is not None:
                            inst_conf += torch.bincount((inst_labels + 1) * k + inst_logits.argmax(1) + 1,
                                                        minlength=k * k).view(k, k).cpu()
                    target, _ = dense_targets(batch, core.class_of_id, core.stride)
                    pred = logits.argmax(1).cpu()
                    ok = target >= 0
                    conf += torch.bincount(target[ok] * k + pred[ok], minlength=k * k).view(k, k)
                    thing = target > 0
                    best = logits[:, 1:].argmax(1).cpu() + 1
                    thing_conf += torch.bincount(target[thing] * k + best[thing], minlength=k * k).view(k, k)
        finally:
            core.train(was)
        inter = conf.diag().double()
        union = conf.sum(0).double() + conf.sum(1).double() - inter
        present = conf.sum(1)[1:] > 0
        iou = (inter[1:] / union[1:].clamp(min=1))[present]
        names = ["", *(c.name for c in info.things())]
        total = thing_conf.sum().clamp(min=1)

        def same(word: int, confusion: torch.Tensor = thing_conf) -> float:
            """Fraction of the confusion's entries whose prediction shares the target's ``word`` (0 colour,
            -1 shape)."""
            ids = {w: i for i, w in enumerate(dict.fromkeys(n.split(" ")[word] for n in names))}
            key = torch.tensor([ids[n.split(" ")[word]] for n in names])
            return float((confusion * (key[:, None] == key[None, :])).sum() / confusion.sum().clamp(min=1))

        instance = {} if core.instance_weight <= 0 else {
            "instance_class_acc": float(inst_conf.diag().sum() / inst_conf.sum().clamp(min=1)),
            "instance_shape_acc": same(-1, inst_conf), "instance_colour_acc": same(0, inst_conf)}
        return instance | {"pixel_acc": float(inter.sum() / conf.sum().clamp(min=1)),
                           "thing_mIoU": float(iou.mean()) if len(iou) else float("nan"),
                           "thing_class_acc": float(thing_conf.diag().sum() / total),
                           "thing_shape_acc": same(-1), "thing_colour_acc": same(0)}

    return evaluate


RECIPE = Recipe(
    name="pretrain_dense",
    config=DensePretrainExperiment,
    build_model=lambda cfg, info: build_model(cfg.model, info),
    train_data=lambda cfg, progress: train_dataset(cfg.data, progress),
    eval_fn=eval_fn,
    predictor=no_predictor,
)
