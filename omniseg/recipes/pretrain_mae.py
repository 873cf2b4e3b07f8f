"""Recipe: MAE pretraining of a plain ViT backbone (:class:`~omniseg.modeling.mae.MAE`).

MAL's image encoder is a ViT pretrained with MAE (mal-mask-auto-labeler Sec. 4.4, Tab. 4:
ViT-MAE-Base gives the best pseudo-masks). Here the images come from the data section (default:
the synthetic world); MAE reads the images only -- no label (class, box, mask, caption) is ever
read, so any source works, the evaluation world included. The run's evaluation is the
reconstruction loss on held-out images; a pretraining run predicts nothing: export its
backbone (``<run>/backbone.safetensors``) and load it with ``model.pretrained=`` in another recipe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from omniseg.engine.config import ConfigError, TrainConfig, bounded
from omniseg.modeling.backbones.vit import vit_base, vit_small
from omniseg.modeling.mae import MAE
from omniseg.recipes.contract import Recipe, RunInfo, no_predictor
from omniseg.recipes.data import DataConfig, open_val, train_dataset

VIT_BUILDERS = {"vit_small": vit_small, "vit_base": vit_base}


@dataclass
class MAEModelConfig:
    """The ViT to pretrain and MAE's decoder / masking; the image size is ``data.image_size``."""

    builder: Literal["vit_small", "vit_base"] = "vit_small"
    patch_size: int = bounded(16, ge=1)
    # MAE Tab. 1a/1b: a shallow, narrow decoder is enough (its ImageNet default is 8 x 512-d);
    # a small one here keeps the CPU cost on the encoder
    decoder_dim: int = bounded(128, ge=4)
    decoder_depth: int = bounded(2, ge=1)
    decoder_heads: int = bounded(4, ge=1)
    mask_ratio: float = bounded(0.75, ge=0, lt=1)  # MAE Tab. 1c / Fig. 5: 75% works best
    norm_pix_loss: bool = True  # MAE Tab. 1d: per-patch normalized pixels as the target


@dataclass
class MAETrainConfig(TrainConfig):
    """:class:`TrainConfig` with MAE's pretraining defaults (MAE App. A.1, Tab. 8: AdamW, betas
    (0.9, 0.95), weight decay 0.05, linear warm-up then cosine decay, base lr 1.5e-4 at batch 256).

    The lr: MAE's linear rule (lr = 1.5e-4 * batch / 256) gives 4.7e-6 at batch 8, far too slow
    for a run of a few thousand steps; 1.5e-4 (the rule's value at batch 256) is the default.
    """

    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr: float = bounded(1.5e-4, gt=0)
    betas: tuple[float, float] = bounded((0.9, 0.95), ge=0, lt=1)
    weight_decay: float = bounded(0.05, ge=0)
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    warmup_iters: int = bounded(50, ge=0)  # MAE: 40 of 800 epochs = 5% of the run


@dataclass
class MAEPretrainExperiment:
    """Top-level config (YAML sections: model, data, train). Only the images of ``data`` are used."""

    recipe: Literal["pretrain_mae"] = "pretrain_mae"
    model: MAEModelConfig = field(default_factory=MAEModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: MAETrainConfig = field(default_factory=MAETrainConfig)

    def __post_init__(self) -> None:
        p, size = self.model.patch_size, self.data.image_size
        if size % p:
            raise ConfigError(f"data.image_size ({size}) must be a multiple of model.patch_size ({p})")
        if self.model.decoder_dim % self.model.decoder_heads or self.model.decoder_dim % 4:
            raise ConfigError(f"model.decoder_dim ({self.model.decoder_dim}) must be a multiple of 4 and of "
                              f"model.decoder_heads ({self.model.decoder_heads})")


def build_model(cfg: MAEPretrainExperiment, info: RunInfo | None = None) -> MAE:
    """The MAE around ``cfg.model.builder`` built for ``data.image_size`` images (``info`` unused:
    the model has no classes)."""
    m = cfg.model
    encoder = VIT_BUILDERS[m.builder](img_size=cfg.data.image_size, patch_size=m.patch_size)
    return MAE(encoder=encoder, decoder_dim=m.decoder_dim, decoder_depth=m.decoder_depth,
               decoder_heads=m.decoder_heads, mask_ratio=m.mask_ratio, norm_pix_loss=m.norm_pix_loss)


def make_eval_fn(cfg: MAEPretrainExperiment, progress: bool = True):
    """eval_fn for the Trainer: ``{"mae_loss"}``, the reconstruction loss (the model's masking ratio,
    masks from a generator seeded with ``data.val_seed`` + rank, so every evaluation of a run sees
    the same masks) averaged over ``data.val_num_images`` held-out images of ``data.val``."""
    from omniseg.data.dataset import RecordDataset
    from omniseg.data.loader import build_test_loader
    from omniseg.engine.distributed import all_gather_object, get_rank, get_world_size

    d = cfg.data
    gt, load_image = open_val(d, progress)
    dataset = RecordDataset(gt, load_image=load_image)

    def eval_fn(model: nn.Module) -> dict[str, float]:
        core: MAE = model.module if hasattr(model, "module") else model
        device = next(core.parameters()).device
        generator = torch.Generator().manual_seed(d.val_seed + get_rank())
        loader = build_test_loader(dataset, d.batch_size, rank=get_rank(), world_size=get_world_size(),
                                   size_divisibility=cfg.model.patch_size)
        total, count = 0.0, 0
        was_training = core.training
        core.eval()
        try:
            with torch.no_grad():
                for batch in loader:
                    loss = core.reconstruction_loss(batch.images.to(device), batch.image_sizes, generator)
                    total, count = total + float(loss) * len(batch), count + len(batch)
        finally:
            core.train(was_training)
        parts = all_gather_object((total, count))
        return {"mae_loss": sum(t for t, _ in parts) / max(sum(c for _, c in parts), 1)}

    return eval_fn


RECIPE = Recipe(
    name="pretrain_mae",
    config=MAEPretrainExperiment,
    build_model=build_model,
    train_data=lambda cfg, progress: train_dataset(cfg.data, progress=progress),
    eval_fn=lambda cfg, info, progress: make_eval_fn(cfg, progress),
    predictor=no_predictor,
)
