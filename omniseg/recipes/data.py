"""Data section shared by training recipes: where the records come from and how they are fed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from omniseg.data.dataset import RecordDataset
from omniseg.data.records import RecordSet
from omniseg.engine.config import ConfigError, bounded

#: keys of omniseg.data.splits.SPLITS ("" = no split)
SplitName = Literal["", "voc-like", "zsd-like", "compositional"]


#: data specs that name the synthetic world -> its vocabulary ("synth-pretraining": the pretraining world,
#: whose classes are disjoint from the evaluation classes; ``omniseg pretrain``)
SYNTH_SPECS = {"synth": "evaluation", "synth-pretraining": "pretraining"}


@dataclass
class DataConfig:
    """Flat data section of an experiment config.

    ``train`` / ``val`` are ``"synth"`` (the synthetic world generated on the fly with the
    given seed and size), ``"synth-pretraining"`` (the pretraining world) or a path accepted by :func:`omniseg.data.load.load_dataset`.
    """

    train: str = "synth"
    train_num_images: int = bounded(200, ge=1)
    train_seed: int = bounded(0, ge=0)
    val: str = "synth"
    val_num_images: int = bounded(50, ge=1)
    val_seed: int = bounded(1000, ge=0)
    image_size: int = bounded(256, ge=16)  # synthetic images
    split: SplitName = ""  # named split: training sees only what apply_split leaves ("" = everything)
    split_seed: int = bounded(0, ge=0)
    novel_supervision: Literal["box", "alp", "caption", "none"] = "box"  # what novel classes keep
    batch_size: int = bounded(4, ge=1)
    num_workers: int = bounded(0, ge=0)
    flip: bool = True
    lsj: bool = False  # large-scale jitter (output size = image_size)


def open_source(
    spec: str, num_images: int, seed: int, image_size: int, progress: bool = True
) -> tuple[RecordSet, object | None]:
    """Records and (for the synthetic world) an in-memory image callable.

    Returns:
        (RecordSet, load_image) -- ``load_image`` is None for datasets on disk.
    """
    if spec in SYNTH_SPECS:
        from omniseg.data.dataset import SynthImages, synth_dataset
        from omniseg.data.synth.world import SynthConfig

        cfg = SynthConfig(seed=seed, num_images=num_images, image_size=image_size, vocabulary=SYNTH_SPECS[spec])
        ds = synth_dataset(cfg, progress=progress)
        ds.rs.name = f"{spec}-seed{seed}-n{num_images}"
        return ds.rs, SynthImages(cfg)
    from omniseg.data.load import load_dataset

    return load_dataset(spec), None


def training_view(rs: RecordSet, cfg: DataConfig) -> RecordSet:
    """``rs`` as the split lets training see it (unchanged without a split)."""
    split = named_split(cfg, rs.categories)
    if split is None:
        return rs
    from omniseg.data.splits import apply_split

    return apply_split(rs, split)


def named_split(cfg: DataConfig, categories: list):
    """The :class:`~omniseg.data.splits.Split` named by ``cfg.split`` over ``categories`` (None: no split)."""
    if not cfg.split:
        return None
    from omniseg.data.splits import SPLITS

    if cfg.split not in SPLITS:
        raise ConfigError(f"unknown split {cfg.split!r}; choose from {sorted(SPLITS)}")
    return SPLITS[cfg.split](categories, seed=cfg.split_seed, novel_supervision=cfg.novel_supervision)


def train_dataset(
    cfg: DataConfig, progress: bool = True, view: Callable[[RecordSet], RecordSet] | None = None
) -> RecordDataset:
    """The training RecordDataset with the configured augmentations.

    Args:
        view: turns the full records into what training may see (default: :func:`training_view`).
    """
    from omniseg.data.transforms import Compose, LargeScaleJitter, QuantizeApproxBoxes, RandomHFlip

    rs, load_image = open_source(cfg.train, cfg.train_num_images, cfg.train_seed, cfg.image_size, progress)
    ts: list = [LargeScaleJitter(cfg.image_size)] if cfg.lsj else []
    ts += [RandomHFlip()] if cfg.flip else []
    ts.append(QuantizeApproxBoxes())
    seen = view(rs) if view is not None else training_view(rs, cfg)
    return RecordDataset(seen, transforms=Compose(ts), load_image=load_image, seed=cfg.train_seed)
