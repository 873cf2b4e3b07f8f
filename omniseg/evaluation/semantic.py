"""Semantic segmentation metrics: mIoU and Grounding mIoU (OpenSeg, Sec. 4.3 "Evaluation metrics").

Both metrics use the standard PASCAL VOC IoU formula (OpenSeg ref. [13]): per class,
``IoU = TP / (TP + FP + FN)`` with the counts accumulated over *all pixels of the whole
dataset* (not averaged per image), then averaged over classes. They differ only in the text
queries: mIoU queries the full, fixed vocabulary for every image, Grounding mIoU queries only
the classes present in that image's ground truth. Because the evaluator cannot re-run a
model, :func:`grounding_miou` takes per-pixel class *scores* (K x H x W) and restricts the
argmax to the classes present in the ground truth of each image, which is exactly what a
model queried with that smaller vocabulary predicts (OpenSeg Sec. 3.4: the pixel label is
the argmax of the segmentation logits over the queried words).

Conventions (documented choices):
    * ``ignore_index`` pixels in the ground truth are not counted at all.
    * a prediction equal to ``ignore_index`` at a labeled pixel (e.g. a pixel no mask
      covers) is a miss: a false negative for the ground-truth class, a false positive for
      no class.
    * classes with an empty union (absent from ground truth and never predicted) are
      undefined (NaN) and left out of the mean; a class predicted but absent from the
      ground truth has IoU 0 and counts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from omniseg.data.records import Segment
from omniseg.ops.rle import rle_decode


def _disable(progress: bool | None) -> bool | None:
    return None if progress is None else not progress


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _paired(gt: Iterable[Any], pred: Iterable[Any], what: str, desc: str, progress: bool | None) -> Iterable:
    """(ground truth, prediction) pairs of equal-length sequences, with a progress bar."""
    gt_list, pred_list = list(gt), list(pred)
    if len(gt_list) != len(pred_list):
        raise ValueError(f"{len(gt_list)} ground-truth maps but {len(pred_list)} {what}")
    return tqdm(zip(gt_list, pred_list), total=len(gt_list), desc=desc, disable=_disable(progress), leave=False)


class ConfusionMatrix:
    """Accumulates a ``num_classes x (num_classes + 1)`` pixel confusion matrix.

    Rows are ground-truth classes, columns predicted classes; the extra last column counts
    labeled pixels predicted as ``ignore_index`` ("no prediction").

    Args:
        num_classes: number of classes; labels are ``0 .. num_classes - 1``.
        ignore_index: ground-truth label that is not evaluated.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255):
        if num_classes <= 0:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        if 0 <= ignore_index < num_classes:
            raise ValueError(
                f"ignore_index {ignore_index} collides with a class id (num_classes={num_classes})"
            )
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes + 1), dtype=np.int64)

    def update(self, gt: Any, pred: Any, name: str = "") -> None:
        """Add one image.

        Args:
            gt: H x W integer ground-truth labels (numpy array or torch tensor).
            pred: H x W integer predicted labels.
            name: image name used in error messages.
        """
        gt, pred = _to_numpy(gt), _to_numpy(pred)
        where = f" (image {name})" if name else ""
        if gt.shape != pred.shape:
            raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in shape{where}")
        gt = gt.astype(np.int64).ravel()
        pred = pred.astype(np.int64).ravel()
        valid = gt != self.ignore_index
        gt, pred = gt[valid], pred[valid]
        if gt.size and (gt.min() < 0 or gt.max() >= self.num_classes):
            raise ValueError(
                f"ground-truth label outside [0, {self.num_classes}) and not ignore_index{where}"
            )
        missed = pred == self.ignore_index
        if np.any(((pred < 0) | (pred >= self.num_classes)) & ~missed):
            raise ValueError(f"predicted label outside [0, {self.num_classes}) and not ignore_index{where}")
        pred = np.where(missed, self.num_classes, pred)
        n1 = self.num_classes + 1
        self.matrix += np.bincount(gt * n1 + pred, minlength=self.num_classes * n1).reshape(
            self.num_classes, n1
        )

    def iou(self) -> np.ndarray:
        """Per-class IoU (num_classes,), NaN where the class is neither in GT nor predicted."""
        tp = np.diag(self.matrix[:, : self.num_classes]).astype(np.float64)
        gt_total = self.matrix.sum(axis=1)
        pred_total = self.matrix[:, : self.num_classes].sum(axis=0)
        union = gt_total + pred_total - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, tp / np.maximum(union, 1), np.nan)

    def summary(self) -> dict[str, Any]:
        """mIoU, pixel accuracy, mean class accuracy and per-class IoU (NaN-free means)."""
        iou = self.iou()
        tp = np.diag(self.matrix[:, : self.num_classes]).astype(np.float64)
        gt_total = self.matrix.sum(axis=1)
        total = gt_total.sum()
        acc = np.where(gt_total > 0, tp / np.maximum(gt_total, 1), np.nan)
        defined = ~np.isnan(iou)
        return {
            "mIoU": float(iou[defined].mean()) if defined.any() else float("nan"),
            "pAcc": float(tp.sum() / total) if total else float("nan"),
            "mAcc": float(np.nanmean(acc)) if (gt_total > 0).any() else float("nan"),
            "per_class_iou": [float(v) for v in iou],
        }


def semantic_miou(
    gt_maps: Iterable[Any],
    pred_maps: Iterable[Any],
    num_classes: int,
    ignore_index: int = 255,
    progress: bool | None = None,
) -> dict[str, Any]:
    """mIoU over a dataset of integer label maps (fixed vocabulary for every image).

    Args:
        gt_maps: per image an H x W integer label map.
        pred_maps: per image an H x W integer predicted label map (same order and shapes).
        num_classes: number of classes.
        ignore_index: unlabeled ground-truth value.
        progress: tqdm bar over images; None = only when stderr is a TTY.

    Returns:
        ``{"mIoU", "pAcc", "mAcc", "per_class_iou"}`` (IoUs as fractions in [0, 1]).
    """
    cm = ConfusionMatrix(num_classes, ignore_index)
    for i, (g, p) in enumerate(_paired(gt_maps, pred_maps, "predictions", "mIoU", progress)):
        cm.update(g, p, name=str(i))
    return cm.summary()


def grounding_argmax(scores: Any, present: Sequence[int]) -> np.ndarray:
    """Per-pixel argmax restricted to the queried classes.

    Args:
        scores: K x H x W per-class scores (logits or probabilities).
        present: class ids (indices into K) that are queried for this image.

    Returns:
        H x W int64 label map whose values are all in ``present``.
    """
    scores = _to_numpy(scores)
    present = np.asarray(sorted(set(int(c) for c in present)), dtype=np.int64)
    if present.size == 0:
        raise ValueError("grounding_argmax needs at least one queried class")
    return present[np.argmax(scores[present], axis=0)]


def grounding_miou(
    gt_maps: Iterable[Any],
    pred_scores: Iterable[Any],
    num_classes: int,
    ignore_index: int = 255,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Grounding mIoU (OpenSeg Sec. 4.3): queries are only the classes in each image's GT.

    Args:
        gt_maps: per image an H x W integer label map.
        pred_scores: per image K x H x W class scores, ``K == num_classes`` (class k scored
            in channel k). Torch tensors or numpy arrays.
        num_classes: number of classes.
        ignore_index: unlabeled ground-truth value.
        progress: tqdm bar over images; None = only when stderr is a TTY.

    Returns:
        Same keys as :func:`semantic_miou`. Images without any labeled pixel are skipped
        (they have no query); ``"num_images_skipped"`` counts them.
    """
    cm = ConfusionMatrix(num_classes, ignore_index)
    skipped = 0
    for i, (g, s) in enumerate(_paired(gt_maps, pred_scores, "score maps", "grounding mIoU", progress)):
        g, s = _to_numpy(g), _to_numpy(s)
        if s.ndim != 3 or s.shape[0] != num_classes or s.shape[1:] != g.shape:
            raise ValueError(
                f"image {i}: scores must be {num_classes} x {g.shape[0]} x {g.shape[1]}, got {tuple(s.shape)}"
            )
        present = [int(c) for c in np.unique(g) if c != ignore_index]
        if not present:
            skipped += 1
            continue
        if min(present) < 0 or max(present) >= num_classes:
            raise ValueError(f"image {i}: ground-truth label outside [0, {num_classes}) and not ignore_index")
        cm.update(g, grounding_argmax(s, present), name=str(i))
    out = cm.summary()
    out["num_images_skipped"] = skipped
    return out


def segments_to_label_map(
    segments: Sequence[Segment],
    height: int,
    width: int,
    category_to_label: Mapping[int, int],
    ignore_index: int = 255,
) -> np.ndarray:
    """Rasterize a record's segments (RLE masks) into an H x W semantic label map.

    Pixels covered by no segment or by a category missing from ``category_to_label`` get
    ``ignore_index``; crowd segments keep their class (as in COCO's panoptic-to-semantic
    conversion). Later segments overwrite earlier ones.

    Args:
        segments: the record's panoptic / semantic segments.
        height, width: image size.
        category_to_label: dataset category id -> contiguous label 0..K-1.
        ignore_index: value for unlabeled pixels.

    Returns:
        H x W int64 label map.
    """
    out = np.full((height, width), ignore_index, dtype=np.int64)
    for seg in segments:
        m = rle_decode(seg.mask).astype(bool)
        if m.shape != (height, width):
            raise ValueError(f"segment {seg.id} ({seg.text!r}) mask is {m.shape}, image is {(height, width)}")
        if seg.category_id is None or seg.category_id not in category_to_label:
            out[m] = ignore_index
        else:
            out[m] = category_to_label[seg.category_id]
    return out
