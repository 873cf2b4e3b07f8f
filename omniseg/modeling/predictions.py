"""The typed result every detector / segmenter returns for one image, and its conversion to records."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

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
        semantic: K x H x W float per-pixel scores, channel k for ``texts[k]``, at the output size
            (models with per-pixel output: OpenSeg's segmentation logits y = <w, z> . s, LSeg's
            pixel-text similarities). Higher is more likely; a pixel's class is the argmax over K
            (OpenSeg Sec. 3.4, Eq. 6; :func:`semantic_labels`). The scale is the model's (logits
            or probabilities); -inf: the class is ruled out at that pixel.
    """

    instances: InstancePredictions
    texts: list[str]
    pixel_embeddings: Tensor | None = None
    region_embeddings: Tensor | None = None
    panoptic: Tensor | None = None
    segments: list[dict] | None = None
    semantic: Tensor | None = None

    def restrict(self, vocabulary: Sequence[str]) -> ImagePrediction:
        """Only the instances whose text is in ``vocabulary`` (region embeddings follow); ``texts``
        keep their order, and the ``semantic`` channels of the other texts become -inf (never the
        argmax)."""
        import torch

        allowed = set(vocabulary)
        keep = torch.tensor([self.texts[k] in allowed for k in self.instances.labels.tolist()], dtype=torch.bool)
        emb = None if self.region_embeddings is None else self.region_embeddings[keep]
        semantic = self.semantic
        if semantic is not None:
            ruled_out = torch.tensor([t not in allowed for t in self.texts], dtype=torch.bool, device=semantic.device)
            semantic = semantic.masked_fill(ruled_out[:, None, None], float("-inf"))
        return replace(self, instances=self.instances.select(keep), region_embeddings=emb, semantic=semantic)

    def to_instances(self, category_ids: Sequence[int | None] | None = None, source: str = "") -> list[Instance]:
        """Records-level instances; ``category_ids[label]`` when given."""
        return self.instances.to_instances(self.texts, category_ids, source)


def semantic_labels(scores: Tensor, min_score: float | None = None) -> tuple[Tensor, Tensor]:
    """Per-pixel class and its score from K x H x W scores (OpenSeg Sec. 3.4, Eq. 6: the argmax).

    Args:
        scores: K x H x W per-class scores (:attr:`ImagePrediction.semantic`).
        min_score: pixels whose best score is below this get no class; None: every pixel gets
            one unless all its scores are -inf / NaN. On the model's scale.

    Returns:
        (H x W long labels in 0..K-1, -1 where no class (the best score is below ``min_score``,
        -inf, or K is 0); H x W float best scores (NaN scores count as -inf; NaN where K is 0)).
    """
    import torch

    if scores.ndim != 3:
        raise ValueError(f"semantic scores must be K x H x W, got shape {tuple(scores.shape)}")
    if scores.shape[0] == 0:
        h, w = scores.shape[1:]
        return (torch.full((h, w), -1, dtype=torch.long, device=scores.device),
                torch.full((h, w), float("nan"), device=scores.device))
    scores = scores.float()
    best, labels = scores.masked_fill(scores.isnan(), float("-inf")).max(dim=0)
    none = best == float("-inf")  # every class ruled out (or NaN)
    if min_score is not None:
        none |= best < min_score
    return labels.masked_fill(none, -1), best
