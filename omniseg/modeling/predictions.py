"""The typed result every detector / segmenter returns for one image, and its conversion to records."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

from omniseg.data.records import Instance
from omniseg.ops.rle import rle_encode


@dataclass
class InstancePredictions:
    """Instances predicted in one image.

    Attributes:
        boxes: N x 4 XYXY pixels of the output image size.
        scores: N scores in [0, 1], decreasing.
        labels: N long indices into the model's classes or the given vocabulary.
        masks: N x H x W bool, or None when masks were not predicted.
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    masks: Tensor | None = None

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def to_instances(
        self, names: Sequence[str], category_ids: Sequence[int | None] | None = None, source: str = ""
    ) -> list[Instance]:
        """Records-level instances (text from ``names[label]``, masks as RLE)."""
        masks = self.masks.cpu().numpy() if self.masks is not None else [None] * len(self)
        out = []
        for box, score, label, mask in zip(self.boxes.tolist(), self.scores.tolist(), self.labels.tolist(), masks):
            out.append(Instance(
                text=names[label], category_id=category_ids[label] if category_ids is not None else None,
                box=tuple(float(v) for v in box), mask=rle_encode(mask) if mask is not None else None,
                source=source, score=float(score),
            ))
        return out
