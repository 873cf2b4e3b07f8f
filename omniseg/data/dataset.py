"""``RecordDataset``: a torch Dataset turning :class:`ImageRecord` s into training samples.

Each sample carries the image (3 x H x W uint8 RGB) and per-instance tensors with explicit
supervision flags (see :mod:`omniseg.data.batch`). Images come from files (through
``omniseg.data.images.load_image``) or from an in-memory callable ``index -> H x W x 3 uint8``
array, so the synthetic world can feed training on the fly.

Keys: ``dataset[i]`` uses the augmentation seed ``(seed, i)`` (the same augmentation for a
given index every time); ``dataset[(i, aug_seed)]`` uses ``aug_seed`` (the multi-source
sampler passes a fresh one each time an index is drawn).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from omniseg.data.batch import Sample, Targets
from omniseg.data.errors import BadRecordError, BadRecords
from omniseg.data.images import load_record_image
from omniseg.data.records import ImageRecord, RecordSet
from omniseg.ops.rle import rle_decode

if TYPE_CHECKING:
    from omniseg.data.synth.world import SynthConfig

ImageArray = np.ndarray  # H x W x 3 uint8 RGB
InMemoryImages = Callable[[int], ImageArray]
SampleKey = int | tuple[int, int]


class Transform(Protocol):
    """A sample transform: deterministic given the generator (see :mod:`omniseg.data.transforms`)."""

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample: ...


class SynthImages:
    """Picklable ``index -> H x W x 3 uint8`` callable regenerating synthetic image ``index``.

    The synthetic world is deterministic per (config seed, index), so images need not be stored; up
    to ``cache_bytes`` of generated images are kept per process (a training run draws each image
    every epoch; regenerating costs ~40 ms an image, a copy from the cache ~20 us). The cache is
    not pickled: each loader worker fills its own.
    """

    def __init__(self, cfg: SynthConfig, cache_bytes: int = 1 << 30):
        self.cfg, self.cache_bytes = cfg, int(cache_bytes)
        self._cache: dict[int, ImageArray] = {}
        self._bytes = 0

    def __getstate__(self) -> dict:
        return {"cfg": self.cfg, "cache_bytes": self.cache_bytes}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def __call__(self, index: int) -> ImageArray:
        from omniseg.data.synth.world import generate_image

        hit = self._cache.get(index)
        if hit is not None:
            return hit.copy()
        image = generate_image(self.cfg, index)[0]
        if self._bytes + image.nbytes <= self.cache_bytes:
            self._cache[index] = image.copy()
            self._bytes += image.nbytes
        return image


def synth_dataset(
    cfg: SynthConfig,
    transforms: Transform | None = None,
    seed: int = 0,
    include_stuff: bool = False,
    name: str = "synth",
    progress: bool = True,
) -> RecordDataset:
    """The synthetic world fed on the fly: records built once, images regenerated per access."""
    from omniseg.data.synth.generate import synth_recordset
    from omniseg.data.synth.world import generate_image

    bar = tqdm(range(cfg.num_images), desc="synth records", leave=False,
               disable=not progress or not sys.stderr.isatty())
    records = [generate_image(cfg, i)[1] for i in bar]
    return RecordDataset(synth_recordset(records, name=name, vocabulary=cfg.vocabulary), transforms=transforms,
                         load_image=SynthImages(cfg), seed=seed, include_stuff=include_stuff)


class RecordDataset(Dataset):
    """Samples from a :class:`RecordSet`.

    Args:
        rs: the records (and ``image_root`` for file images).
        transforms: applied to each sample with a seeded ``np.random.Generator``; None = none.
        load_image: None to read ``rs.image_path(record)`` from disk, or a callable
            ``index -> H x W x 3 uint8 array`` for in-memory images (e.g. the synthetic world).
        seed: base seed for integer keys.
        include_stuff: also add the record's stuff segments (``is_thing`` False) as mask-only
            instances (panoptic data; VLOSS cooldown).
        on_bad_record: policy for invalid instances ("error" raises naming the image file and
            instance; "skip" drops the instance and counts it in ``self.bad``). An image file
            whose size disagrees with its record, or that lies outside the image root, always
            raises (:func:`omniseg.data.images.load_record_image`).
    """

    def __init__(
        self,
        rs: RecordSet,
        transforms: Transform | None = None,
        load_image: InMemoryImages | None = None,
        seed: int = 0,
        include_stuff: bool = False,
        on_bad_record: str = "error",
    ):
        self.rs = rs
        self.transforms = transforms
        self.load_image = load_image
        self.seed = int(seed)
        self.include_stuff = include_stuff
        self.bad = BadRecords(on_bad_record)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.rs)

    @property
    def name(self) -> str:
        return self.rs.name

    def _image(self, index: int, rec: ImageRecord) -> np.ndarray:
        if self.load_image is None:
            return load_record_image(self.rs, rec)
        where = f"<in-memory {self.rs.name}>[{index}]"
        arr = np.asarray(self.load_image(index))
        if arr.ndim == 2:
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
            raise BadRecordError(where, f"image {rec.image_id!r}",
                                 f"expected an H x W x 3 uint8 image, got {arr.shape} {arr.dtype}")
        if (arr.shape[0], arr.shape[1]) != (rec.height, rec.width):
            raise BadRecordError(where, f"image {rec.image_id!r}", f"image is {arr.shape[1]}x{arr.shape[0]} "
                                 f"(w x h) but the record says {rec.width}x{rec.height}")
        return arr

    def targets_for(self, rec: ImageRecord, where: str = "") -> Targets:
        """Per-instance tensors for ``rec`` at its stored size (no transforms)."""
        h, w = rec.height, rec.width
        rows: list[tuple] = []
        for k, inst in enumerate(rec.instances):
            what = f"image {rec.image_id!r} instance {k} ({inst.text!r})"
            box = (0.0, 0.0, 0.0, 0.0)
            if inst.box is not None:
                box = tuple(float(v) for v in inst.box)
                if len(box) != 4 or not all(math.isfinite(v) for v in box):
                    self.bad.report(where, what, f"box {inst.box} is not 4 finite numbers")
                    continue
                if box[2] < box[0] or box[3] < box[1]:
                    self.bad.report(where, what, f"box {inst.box} has x1 < x0 or y1 < y0")
                    continue
            if inst.box_quality not in ("exact", "approximate"):
                self.bad.report(where, what, f"box_quality {inst.box_quality!r} is not exact/approximate")
                continue
            mask = None
            if inst.mask is not None:
                size = [int(v) for v in inst.mask.get("size", [])]
                if size != [h, w]:
                    self.bad.report(where, what, f"mask size {size} differs from image size [{h}, {w}]")
                    continue
                mask = rle_decode(inst.mask)
            rows.append((inst.text, inst.category_id, box, inst.box is not None,
                         inst.box is not None and inst.box_quality == "exact", mask, inst.is_crowd, True))
        if self.include_stuff:
            for k, seg in enumerate(rec.segments):
                if seg.is_thing:
                    continue
                size = [int(v) for v in seg.mask.get("size", [])]
                if size != [h, w]:
                    self.bad.report(where, f"image {rec.image_id!r} segment {k} ({seg.text!r})",
                                    f"mask size {size} differs from image size [{h}, {w}]")
                    continue
                rows.append((seg.text, seg.category_id, (0.0, 0.0, 0.0, 0.0), False, False,
                             rle_decode(seg.mask), seg.is_crowd, False))
        if not rows:
            return Targets.empty(h, w)
        masks = torch.zeros(len(rows), h, w, dtype=torch.uint8)
        for i, r in enumerate(rows):
            if r[5] is not None:
                masks[i] = torch.from_numpy(r[5])
        return Targets(
            boxes=torch.tensor([r[2] for r in rows], dtype=torch.float32).reshape(-1, 4),
            masks=masks,
            has_box=torch.tensor([r[3] for r in rows], dtype=torch.bool),
            box_exact=torch.tensor([r[4] for r in rows], dtype=torch.bool),
            has_mask=torch.tensor([r[5] is not None for r in rows], dtype=torch.bool),
            is_crowd=torch.tensor([bool(r[6]) for r in rows], dtype=torch.bool),
            is_thing=torch.tensor([r[7] for r in rows], dtype=torch.bool),
            category_ids=torch.tensor([-1 if r[1] is None else int(r[1]) for r in rows], dtype=torch.long),
            texts=[str(r[0]) for r in rows],
        )

    def raw_sample(self, index: int) -> Sample:
        """The untransformed sample of record ``index``."""
        rec = self.rs.records[index]
        where = self.rs.image_path(rec) if self.load_image is None else f"<in-memory {self.rs.name}>"
        arr = self._image(index, rec)
        image = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
        return Sample(
            image=image,
            targets=self.targets_for(rec, where),
            captions=list(rec.captions),
            image_id=rec.image_id,
            record=rec,
            orig_size=(rec.height, rec.width),
            source=self.rs.name,
        )

    def __getitem__(self, key: SampleKey) -> Sample:
        if isinstance(key, tuple):
            index, aug_seed = int(key[0]), int(key[1])
            rng = np.random.default_rng(aug_seed)
        else:
            index = int(key)
            rng = np.random.default_rng([self.seed, index])
        if not 0 <= index < len(self):
            raise IndexError(f"{self.rs.name or 'RecordDataset'}: index {index} out of range [0, {len(self)})")
        sample = self.raw_sample(index)
        if self.transforms is not None:
            sample = self.transforms(sample, rng)
        return sample


class PartsDataset(RecordDataset):
    """Several named training sources (:attr:`parts`: name -> :class:`RecordDataset`) as one dataset:
    records concatenated, a key routed to its part (with the part's own transforms and images). A
    single-source loader over it draws the parts in proportion to their sizes; recipes with a schedule
    build their loader from :attr:`parts` instead (VLOSS, OpenSeg with caption-only images)."""

    def __init__(self, parts: dict[str, RecordDataset], categories: list | None = None, name: str = "parts"):
        first = next(iter(parts.values()))
        super().__init__(RecordSet(records=[r for d in parts.values() for r in d.rs], name=name,
                                   categories=first.rs.categories if categories is None else categories))
        self.parts = parts
        self._starts = np.cumsum([0] + [len(d) for d in parts.values()])

    def __getitem__(self, key):
        index, aug = (key[0], key[1]) if isinstance(key, tuple) else (key, None)
        if not 0 <= index < len(self):
            raise IndexError(f"{self.rs.name} training data: index {index} out of range [0, {len(self)})")
        p = int(np.searchsorted(self._starts, index, side="right")) - 1
        part, local = list(self.parts.values())[p], int(index - self._starts[p])
        return part[local if aug is None else (local, aug)]
