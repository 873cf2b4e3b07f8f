"""Recipe: SimMIM-style masked image modeling of a ResNet trunk on images only (issue 12).

``omniseg pretrain configs/pretrain_r18_mim_coco_mini.yaml`` trains :class:`MaskedImagePretrainer`
on the images of ``data.train`` (any source :func:`omniseg.recipes.data.open_source` reads: an
image folder such as ``../shared/data/coco-mini/train2017``, a dataset, the synthetic worlds); no
label is ever read. Images keep their stored size (``data.lsj`` / ``data.flip`` augment as in every
recipe). The evaluation is the masked L1 on the first ``data.val_num_images`` images of
``data.val``, one image at a time, with masks from a generator seeded by ``data.val_seed`` -- the
same masks at every evaluation, so the number is comparable along a run and between runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from omniseg.engine.config import TrainConfig, bounded
from omniseg.modeling.masked_image_pretrain import MaskedImagePretrainer
from omniseg.recipes.contract import Recipe, RunInfo, no_predictor
from omniseg.recipes.data import open_val, train_dataset
from omniseg.recipes.pretrain_dense import PretrainingDataConfig, TrunkConfig, build_trunk


@dataclass
class MimModelConfig(TrunkConfig):
    """Model section: the trunk to pretrain and SimMIM's masking (Sec. 3.2: 32 x 32 patches, ratio 0.6)."""

    patch: int = bounded(32, ge=1)
    mask_ratio: float = bounded(0.6, gt=0, lt=1)


@dataclass
class MimExperiment:
    """Top-level config (YAML sections: model, data, train)."""

    recipe: Literal["pretrain_mim"] = "pretrain_mim"
    model: MimModelConfig = field(default_factory=MimModelConfig)
    data: PretrainingDataConfig = field(default_factory=PretrainingDataConfig)  # images only: labels unread
    train: TrainConfig = field(default_factory=TrainConfig)


def build_model(cfg: MimModelConfig, info: RunInfo) -> MaskedImagePretrainer:
    return MaskedImagePretrainer(trunk=build_trunk(cfg), patch=cfg.patch, mask_ratio=cfg.mask_ratio)


def eval_fn(cfg: MimExperiment, info: RunInfo, progress: bool):
    """Mean per-image masked L1 (normalized pixel units) on the first ``data.val_num_images``
    images of ``data.val``, masks from a CPU generator seeded with ``data.val_seed``."""
    from omniseg.data.loader import build_test_loader
    from omniseg.data.records import RecordSet

    d = cfg.data
    rs, load_image = open_val(d, progress)
    rs = RecordSet(records=rs.records[: d.val_num_images], categories=rs.categories, image_root=rs.image_root,
                   name=rs.name)

    def evaluate(model: nn.Module) -> dict[str, float]:
        core = model.module if hasattr(model, "module") else model
        gen = torch.Generator().manual_seed(d.val_seed)
        was = core.training
        core.eval()
        losses = []
        try:
            with torch.no_grad():  # one image per batch: its masks do not depend on the batch's padding
                for batch in build_test_loader(rs, 1, load_image=load_image, size_divisibility=core.stride):
                    images = batch.images.to(core.pixel_mean.device)
                    losses.append(float(core.loss(images, batch.image_sizes, generator=gen)))
        finally:
            core.train(was)
        return {"mim_l1": sum(losses) / len(losses) if losses else float("nan")}

    return evaluate


RECIPE = Recipe(
    name="pretrain_mim",
    config=MimExperiment,
    build_model=lambda cfg, info: build_model(cfg.model, info),
    train_data=lambda cfg, progress: train_dataset(cfg.data, progress),
    eval_fn=eval_fn,
    predictor=no_predictor,
)
