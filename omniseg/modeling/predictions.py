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

    def select(self, keep: Tensor) -> InstancePredictions:
        """The instances where ``keep`` (N bool, or indices) selects, in order."""
        return InstancePredictions(self.boxes[keep], self.scores[keep], self.labels[keep],
                                   None if self.masks is None else self.masks[keep])

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


@dataclass
class ImagePrediction:
    """What a predictor returns for one image (:class:`omniseg.recipes.contract.Predictor`).

    Attributes:
        instances: the detected / segmented instances; their labels index ``texts``.
        texts: the names the labels refer to (the vocabulary asked for, or the model's classes).
        pixel_embeddings: D x H x W per-pixel embeddings (models that ground words to pixels).
        region_embeddings: N x D, one embedding per instance (region-word grounding).
        panoptic: H x W long map of segment indices into ``segments`` (-1: void).
        segments: one dict per panoptic segment (``text``, ``isthing``, ``score``).
    """

    instances: InstancePredictions
    texts: list[str]
    pixel_embeddings: Tensor | None = None
    region_embeddings: Tensor | None = None
    panoptic: Tensor | None = None
    segments: list[dict] | None = None

    def restrict(self, vocabulary: Sequence[str]) -> ImagePrediction:
        """Only the instances whose text is in ``vocabulary`` (region embeddings follow)."""
        import torch

        allowed = set(vocabulary)
        keep = torch.tensor([self.texts[k] in allowed for k in self.instances.labels.tolist()], dtype=torch.bool)
        emb = None if self.region_embeddings is None else self.region_embeddings[keep]
        return ImagePrediction(self.instances.select(keep), self.texts, self.pixel_embeddings, emb, self.panoptic,
                               self.segments)

    def to_instances(self, category_ids: Sequence[int | None] | None = None, source: str = "") -> list[Instance]:
        """Records-level instances; ``category_ids[label]`` when given."""
        return self.instances.to_instances(self.texts, category_ids, source)
