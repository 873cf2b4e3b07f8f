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
    given seed and size), ``"synth-pretraining"`` (the pretraining world) or a path accepted by
    :func:`omniseg.data.load.load_dataset`; for an annotations file, ``train_images`` /
    ``val_images`` name the image folder (default: looked for next to the file, see
    :mod:`omniseg.data.load`). ``*_num_images`` and ``*_seed`` apply to the synthetic world only.

    Image size: synthetic images are generated at ``image_size``; photos on disk keep their stored
    size unless ``long_side`` > 0 (longer side resized to it). With ``lsj`` every image is rescaled
    by a factor drawn from ``scale_range`` and cropped to ``long_side`` (photos, when set) or
    ``image_size`` pixels.

    Split: ``split_file`` (a JSON ``{"base": [...], "novel": [...]}`` of category names or ids,
    :func:`omniseg.data.splits.split_from_file`) when given, else the named ``split``.
    """

    train: str = "synth"
    train_images: str = ""  # image folder of an annotations file in `train` ("" = looked for next to it)
    train_num_images: int = bounded(200, ge=1)
    train_seed: int = bounded(0, ge=0)
    val: str = "synth"
    val_images: str = ""  # image folder of an annotations file in `val`
    val_num_images: int = bounded(50, ge=1)
    val_seed: int = bounded(1000, ge=0)
    image_size: int = bounded(256, ge=16)  # synthetic images; LSJ output size
    long_side: int = bounded(0, ge=0)  # photos: longer side resized to this in training (0 = stored size)
    scale_range: tuple[float, float] = bounded((0.1, 2.0), gt=0)  # LSJ: min and max rescaling factor
    split: SplitName = ""  # named split: training sees only what apply_split leaves ("" = everything)
    split_file: str = ""  # JSON {"base": [...], "novel": [...]}: used instead of `split`
    split_seed: int = bounded(0, ge=0)
    novel_supervision: Literal["box", "alp", "caption", "none"] = "box"  # what novel classes keep
    batch_size: int = bounded(4, ge=1)
    num_workers: int = bounded(0, ge=0)
    flip: bool = True
    lsj: bool = False  # large-scale jitter (output size: long_side for photos when set, else image_size)

    def __post_init__(self) -> None:
        if self.scale_range[0] > self.scale_range[1]:
            raise ConfigError(f"data.scale_range: the minimum {self.scale_range[0]} exceeds the maximum "
                              f"{self.scale_range[1]}")


def open_source(
    spec: str, num_images: int, seed: int, image_size: int, progress: bool = True, image_root: str = "",
    root_key: str = "data.train_images / data.val_images",
) -> tuple[RecordSet, object | None]:
    """Records and (for the synthetic world) an in-memory image callable.

    Args:
        image_root: image folder of a dataset on disk ("" = looked for, see :mod:`omniseg.data.load`).
        root_key: the config key that sets ``image_root``, named when images are missing.

    Returns:
        (RecordSet, load_image) -- ``load_image`` is None for datasets on disk.

    Raises:
        MissingImagesError: an image file of a dataset on disk is missing (naming it, the
            folders tried and ``root_key``).
    """
    if spec in SYNTH_SPECS:
        from omniseg.data.dataset import SynthImages, synth_dataset
        from omniseg.data.synth.world import SynthConfig

        cfg = SynthConfig(seed=seed, num_images=num_images, image_size=image_size, vocabulary=SYNTH_SPECS[spec])
        ds = synth_dataset(cfg, progress=progress)
        ds.rs.name = f"{spec}-seed{seed}-n{num_images}"
        return ds.rs, SynthImages(cfg)
    from omniseg.data.load import MissingImagesError, load_dataset

    try:
        return load_dataset(spec, image_root=image_root or None, require_images=True), None
    except MissingImagesError as e:
        raise MissingImagesError(f"{e}; set {root_key}=FOLDER to the folder that holds them") from None


def open_train(cfg: DataConfig, progress: bool = True) -> tuple[RecordSet, object | None]:
    """:func:`open_source` of ``cfg.train`` (images from ``cfg.train_images``)."""
    return open_source(cfg.train, cfg.train_num_images, cfg.train_seed, cfg.image_size, progress,
                       cfg.train_images, "data.train_images")


def open_val(cfg: DataConfig, progress: bool = True) -> tuple[RecordSet, object | None]:
    """:func:`open_source` of ``cfg.val`` (images from ``cfg.val_images``)."""
    return open_source(cfg.val, cfg.val_num_images, cfg.val_seed, cfg.image_size, progress,
                       cfg.val_images, "data.val_images")


def training_view(rs: RecordSet, cfg: DataConfig) -> RecordSet:
    """``rs`` as the split lets training see it (unchanged without a split)."""
    split = named_split(cfg, rs.categories)
    if split is None:
        return rs
    from omniseg.data.splits import apply_split

    return apply_split(rs, split)


def named_split(cfg: DataConfig, categories: list):
    """The :class:`~omniseg.data.splits.Split` of ``cfg.split_file``, else the one named by ``cfg.split``,
    over ``categories`` (None: no split)."""
    from omniseg.data.splits import SPLITS, split_from_file

    if cfg.split_file:
        return split_from_file(cfg.split_file, categories, cfg.novel_supervision)
    if not cfg.split:
        return None
    if cfg.split not in SPLITS:
        raise ConfigError(f"unknown split {cfg.split!r}; choose from {sorted(SPLITS)}")
    return SPLITS[cfg.split](categories, seed=cfg.split_seed, novel_supervision=cfg.novel_supervision)


def train_transforms(cfg: DataConfig, photos: bool, quantize: bool = True):
    """The training augmentations: LSJ (``cfg.lsj``, scales ``cfg.scale_range``) or, for photos with
    ``cfg.long_side``, a resize of the longer side; then flip (``cfg.flip``) and ALP box quantization.

    Args:
        photos: the images come from files (synthetic images are generated at ``cfg.image_size``).
        quantize: end with :class:`~omniseg.data.transforms.QuantizeApproxBoxes`.
    """
    from omniseg.data.transforms import Compose, LargeScaleJitter, QuantizeApproxBoxes, RandomHFlip

    size = cfg.long_side if photos and cfg.long_side else cfg.image_size
    ts: list = [LargeScaleJitter(size, *cfg.scale_range)] if cfg.lsj else []
    if photos and cfg.long_side and not cfg.lsj:
        ts.append(resize_long_side(cfg.long_side))
    ts += [RandomHFlip()] if cfg.flip else []
    ts += [QuantizeApproxBoxes()] if quantize else []
    return Compose(ts)


def resize_long_side(long_side: int):
    """Deterministic resize to ``long_side`` pixels on the longer side (aspect kept)."""
    from omniseg.data.transforms import ResizeShortestEdge

    return ResizeShortestEdge((long_side,), max_size=long_side)  # the short side capped by the long one


def train_dataset(
    cfg: DataConfig, progress: bool = True, view: Callable[[RecordSet], RecordSet] | None = None
) -> RecordDataset:
    """The training RecordDataset with the configured augmentations.

    Args:
        view: turns the full records into what training may see (default: :func:`training_view`).
    """
    rs, load_image = open_train(cfg, progress)
    seen = view(rs) if view is not None else training_view(rs, cfg)
    return RecordDataset(seen, transforms=train_transforms(cfg, photos=load_image is None), load_image=load_image,
                         seed=cfg.train_seed)
