"""Recipe: train FCOS-MO (:mod:`omniseg.modeling.fcos_mo`) on mixed supervision and score its masks.

Training data: the split's training view plus ALPs (:mod:`omniseg.recipes.alp_data`: curated
``alp.path``, stand-in ``alp.simulate``, ``alp.quantize`` for box quantization). Evaluation:
predictions on the validation images with the vocabulary = the thing class names, mask AP / AP50 overall and for the split's base / novel groups
(:func:`omniseg.evaluation.instance.evaluate_instances`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from omniseg.data.records import RecordSet
from omniseg.engine.config import TrainConfig
from omniseg.modeling.fcos_mo import FCOS_MO_BUILDERS, FCOSMO, FCOSMOConfig
from omniseg.recipes.alp_data import (  # noqa: F401 (re-exported: the recipe's config sections)
    ALPConfig,
    TextConfig,
    alp_train_dataset,
    build_phrase_embedder,
    simulated_alps,
)
from omniseg.recipes.data import DataConfig, categories_of, pad_image


@dataclass
class FCOSMOExperiment:
    """Top-level config (YAML sections: model, text, alp, data, train)."""

    recipe: str = "fcos_mo"
    arch: str = "fcos_mo_r18"  # key of FCOS_MO_BUILDERS
    model: FCOSMOConfig = field(default_factory=FCOSMOConfig)
    text: TextConfig = field(default_factory=TextConfig)
    alp: ALPConfig = field(default_factory=ALPConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def fcos_mo_train_dataset(cfg: FCOSMOExperiment, progress: bool = True):
    """Training RecordDataset: the split's training view + ALPs, with flip / LSJ / box quantization."""
    return alp_train_dataset(cfg.data, cfg.alp, progress)


def predict_records(
    model: FCOSMO, gt: RecordSet, load_image=None, batch_size: int = 4, rank: int = 0, world: int = 1,
    progress: bool = True, phrases: dict[int, str] | None = None,
) -> RecordSet:
    """Predictions on this rank's share of ``gt``; vocabulary = ``phrases`` (class id -> phrase,
    default: its thing class names)."""
    from omniseg.recipes.scoring import vocabulary_predictions

    return vocabulary_predictions(model, model.predict, model.text_embedder, gt, load_image, batch_size, rank, world,
                                  progress, phrases, source="fcos_mo")


def make_eval_fn(cfg: FCOSMOExperiment, progress: bool = True) -> Callable[[torch.nn.Module], dict[str, float]]:
    """eval_fn for the Trainer: mask (and box) AP overall and base / novel, gathered over ranks."""
    from omniseg.recipes.scoring import vocabulary_eval_fn

    return vocabulary_eval_fn(predict_records, cfg.data, cfg.train.output_dir, progress)


def build_model(cfg: FCOSMOExperiment) -> FCOSMO:
    """The configured architecture with its phrase embedder attached."""
    if cfg.arch not in FCOS_MO_BUILDERS:
        raise ValueError(f"unknown arch {cfg.arch!r}; choose from {sorted(FCOS_MO_BUILDERS)}")
    model = FCOS_MO_BUILDERS[cfg.arch](cfg.model)
    model.set_text_embedder(build_phrase_embedder(cfg.text, cfg.model.embed_dim))
    return model


def run(cfg: FCOSMOExperiment, resume: bool = False) -> dict:
    """Train (optionally resuming) and evaluate; returns the Trainer's summary."""
    from omniseg.data.loader import build_train_loader
    from omniseg.engine.distributed import get_rank, get_world_size
    from omniseg.engine.optim import build_optimizer, build_scheduler
    from omniseg.engine.trainer import Trainer, seed_everything

    t = cfg.train
    seed_everything(t.seed + get_rank(), t.deterministic)
    model = build_model(cfg)
    data = build_train_loader(
        [fcos_mo_train_dataset(cfg, progress=t.progress)], "mix", cfg.data.batch_size,
        num_workers=cfg.data.num_workers, rank=get_rank(), world_size=get_world_size(), seed=t.seed,
    )
    optimizer = build_optimizer(model, t)
    trainer = Trainer(model, optimizer, build_scheduler(optimizer, t), data, t,
                      eval_fn=make_eval_fn(cfg, t.progress), run_config=dataclasses.replace(cfg))
    if resume:
        trainer.resume()
    return trainer.train()


def model_from_config(cfg: FCOSMOExperiment) -> FCOSMO:
    """The model a checkpoint of this recipe holds (used by :class:`omniseg.api.Segmenter`)."""
    return build_model(cfg)


def predict_image(model: FCOSMO, cfg: FCOSMOExperiment, image: torch.Tensor, vocabulary=None, boxes=None):
    """Detect and segment one 3 x H x W uint8 image with ANY vocabulary of phrases (default: the
    training classes' names): (|C|+1)-way softmax over their text embeddings (ALP paper Sec. 3.2)."""
    if boxes is not None:
        raise ValueError("FCOS-MO finds its own boxes; boxes= is for box-to-mask models")
    if not vocabulary:
        vocabulary = [c.name for c in categories_of(cfg.data) if c.isthing]
    batch, sizes = pad_image(image)
    return model.predict(batch, list(vocabulary), sizes, sizes)[0].to_instances(list(vocabulary), source="fcos_mo")
