"""Typed containers for training data: one image's :class:`Sample`, and a collated :class:`Batch`.

The per-instance supervision flags are the point of these containers (see DESIGN "Data flow"):
a batch may mix a fully masked instance, a box-only instance, an approximately localized
phrase (ALP) and an image with captions only. Nothing is converted into a stronger label;
models choose the loss each instance feeds from the flags:

* ``has_mask``: a mask exists -> mask losses.
* ``has_box & box_exact``: an exact box exists -> box regression.
* ``has_box & ~box_exact``: an approximate (trace-derived) box -> localization prior only.
* ``texts`` / ``category_ids``: classification through text embeddings.
* ``captions`` with no instances: image-level grounding / contrastive losses.

Images are kept ``uint8`` (3 x H x W, RGB, 0-255) from disk to the device: four times
smaller to pin and copy than float32; models normalize on the device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from omniseg.data.records import ImageRecord


@dataclass
class Targets:
    """Per-instance tensors of one image (N instances, image of size H x W).

    Attributes:
        boxes: N x 4 float32 XYXY pixels; all-zero rows where ``has_box`` is False. NaN-free.
        masks: N x H x W uint8 {0, 1}; all-zero where ``has_mask`` is False. In a
            :class:`Batch` the masks are zero-padded to the batch's padded size.
        has_box: N bool, a box (exact or approximate) exists.
        box_exact: N bool, the box is exact (False for approximate boxes and where no box).
        has_mask: N bool, a mask exists.
        is_crowd: N bool, COCO crowd region.
        is_thing: N bool, False only for stuff segments added by ``include_stuff``.
        category_ids: N int64, dataset category id or -1 where there is none (free phrases).
        texts: N class names or free-form phrases.
    """

    boxes: Tensor
    masks: Tensor
    has_box: Tensor
    box_exact: Tensor
    has_mask: Tensor
    is_crowd: Tensor
    is_thing: Tensor
    category_ids: Tensor
    texts: list[str]

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    @classmethod
    def empty(cls, height: int, width: int) -> Targets:
        """Targets with no instances for an H x W image (e.g. a caption-only image)."""
        nb = torch.zeros(0, dtype=torch.bool)
        return cls(
            boxes=torch.zeros(0, 4),
            masks=torch.zeros(0, height, width, dtype=torch.uint8),
            has_box=nb,
            box_exact=nb.clone(),
            has_mask=nb.clone(),
            is_crowd=nb.clone(),
            is_thing=nb.clone(),
            category_ids=torch.zeros(0, dtype=torch.long),
            texts=[],
        )

    def select(self, keep: Tensor) -> Targets:
        """Keep the instances where the N-bool ``keep`` is True (order preserved)."""
        idx = torch.nonzero(keep, as_tuple=False).flatten()
        return Targets(
            boxes=self.boxes[idx],
            masks=self.masks[idx],
            has_box=self.has_box[idx],
            box_exact=self.box_exact[idx],
            has_mask=self.has_mask[idx],
            is_crowd=self.is_crowd[idx],
            is_thing=self.is_thing[idx],
            category_ids=self.category_ids[idx],
            texts=[self.texts[i] for i in idx.tolist()],
        )

    def _map(self, fn: Any) -> Targets:
        return Targets(
            **{k: fn(getattr(self, k)) for k in _TENSOR_FIELDS},
            texts=list(self.texts),
        )

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Targets:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Targets:
        return self._map(lambda t: t.pin_memory())


_TENSOR_FIELDS = ("boxes", "masks", "has_box", "box_exact", "has_mask", "is_crowd", "is_thing", "category_ids")


@dataclass
class Sample:
    """One image ready for training, as produced by the dataset and the transforms.

    Attributes:
        image: 3 x H x W uint8 RGB.
        targets: per-instance tensors and flags at the image's current size.
        captions: captions of the whole image (image-level supervision).
        image_id: the record's image id.
        record: the source :class:`ImageRecord` (untransformed; for evaluation and debugging).
        orig_size: (height, width) of the image before any transform.
        num_dropped: instances dropped by transforms (cropped out completely).
        source: name of the data source (the RecordSet's name), for per-source losses.
    """

    image: Tensor
    targets: Targets
    captions: list[str] = field(default_factory=list)
    image_id: int | str = 0
    record: ImageRecord | None = None
    orig_size: tuple[int, int] = (0, 0)
    num_dropped: int = 0
    source: str = ""

    @property
    def size(self) -> tuple[int, int]:
        """Current (height, width)."""
        return int(self.image.shape[-2]), int(self.image.shape[-1])

    def replace(self, **changes: Any) -> Sample:
        return replace(self, **changes)


@dataclass
class Batch:
    """A collated batch of B samples.

    Attributes:
        images: B x 3 x Hp x Wp uint8; each image sits at the top-left, zero padded to Hp x Wp
            (both divisible by ``size_divisibility``, 32 by default).
        image_sizes: B valid (height, width) of each image inside the padding.
        targets: B per-image :class:`Targets`; masks padded to Hp x Wp.
        captions: B lists of captions.
        image_ids: B image ids.
        orig_sizes: B (height, width) before transforms (to map predictions back).
        num_dropped: B counts of instances dropped by transforms.
        sources: B source names.
        records: B source records (not moved by :meth:`to`).
    """

    images: Tensor
    image_sizes: list[tuple[int, int]]
    targets: list[Targets]
    captions: list[list[str]]
    image_ids: list[int | str]
    orig_sizes: list[tuple[int, int]]
    num_dropped: list[int]
    sources: list[str]
    records: list[ImageRecord | None]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """A copy with every tensor on ``device`` (use ``non_blocking=True`` after pin_memory)."""
        return replace(
            self,
            images=self.images.to(device, non_blocking=non_blocking),
            targets=[t.to(device, non_blocking=non_blocking) for t in self.targets],
        )

    def pin_memory(self) -> Batch:
        """Called by ``DataLoader(pin_memory=True)`` on custom batch types."""
        return replace(self, images=self.images.pin_memory(), targets=[t.pin_memory() for t in self.targets])


def padded_size(sizes: Sequence[tuple[int, int]], size_divisibility: int = 32) -> tuple[int, int]:
    """Smallest (H, W) holding every size, rounded up to a multiple of ``size_divisibility``."""
    if not sizes:
        raise ValueError("padded_size needs at least one size")
    d = max(1, int(size_divisibility))
    h = max(s[0] for s in sizes)
    w = max(s[1] for s in sizes)
    return int(math.ceil(h / d) * d), int(math.ceil(w / d) * d)


def collate(
    samples: Sequence[Sample], size_divisibility: int = 32, pad_size: tuple[int, int] | None = None
) -> Batch:
    """Pad and stack samples into a :class:`Batch`.

    Args:
        samples: B samples (B >= 1); images 3 x H_i x W_i uint8.
        size_divisibility: padded H and W are multiples of this (32: the stride of P5).
        pad_size: optional fixed (H, W) to pad to (e.g. the LSJ crop size); it is still
            rounded up to ``size_divisibility`` and must hold every image.

    Returns:
        The batch; images B x 3 x Hp x Wp, masks of image i padded to N_i x Hp x Wp.
    """
    if len(samples) == 0:
        raise ValueError("collate got an empty list of samples")
    sizes = [s.size for s in samples]
    hp, wp = padded_size(sizes + ([tuple(pad_size)] if pad_size is not None else []), size_divisibility)
    images = torch.zeros(len(samples), 3, hp, wp, dtype=torch.uint8)
    targets = []
    for i, s in enumerate(samples):
        if s.image.dtype != torch.uint8 or s.image.ndim != 3 or s.image.shape[0] != 3:
            raise ValueError(
                f"collate: image {s.image_id!r} must be a 3 x H x W uint8 tensor, "
                f"got {tuple(s.image.shape)} {s.image.dtype}"
            )
        h, w = sizes[i]
        images[i, :, :h, :w] = s.image
        t = s.targets
        masks = torch.zeros(len(t), hp, wp, dtype=torch.uint8)
        masks[:, :h, :w] = t.masks
        targets.append(replace(t, masks=masks))
    return Batch(
        images=images,
        image_sizes=sizes,
        targets=targets,
        captions=[list(s.captions) for s in samples],
        image_ids=[s.image_id for s in samples],
        orig_sizes=[s.orig_size for s in samples],
        num_dropped=[s.num_dropped for s in samples],
        sources=[s.source for s in samples],
        records=[s.record for s in samples],
    )
