"""Perturbed copies of ground truth: a known-imperfect 'prediction' for checking a metric end to end.

Used by ``omniseg demo`` (ground truth vs. itself must give AP 100; vs. a perturbed copy,
clearly less) and by tests of the evaluator.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from omniseg.data.records import Instance, RecordSet
from omniseg.ops.rle import rle_decode, rle_encode, rle_to_box


@dataclass
class PerturbConfig:
    """How to damage ground truth. Fractions are per instance / per image."""

    seed: int = 0
    drop: float = 0.15  # fraction of instances missed
    shift_px: int = 3  # masks shifted by up to this many pixels in x and y
    morph: float = 0.5  # fraction of masks eroded or dilated by one pixel
    wrong_class: float = 0.1  # fraction of kept instances given another category
    false_positives: float = 1.0  # mean number of spurious detections per image


def as_predictions(gt: RecordSet, score: float = 1.0) -> RecordSet:
    """Ground truth turned into predictions (every non-crowd instance with a fixed score)."""
    pred = copy.deepcopy(gt)
    for r in pred:
        r.instances = [i for i in r.instances if not i.is_crowd]
        for i in r.instances:
            i.score, i.source = score, "gt-copy"
    return pred


def _shift(m: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``m`` moved by (dy, dx) pixels; pixels leaving the image are lost, nothing wraps around."""
    h, w = m.shape
    out = np.zeros_like(m)
    if abs(dy) >= h or abs(dx) >= w:
        return out
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = m[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def perturb_predictions(gt: RecordSet, cfg: PerturbConfig | None = None) -> RecordSet:
    """A deterministic, damaged copy of ``gt`` with random scores, for evaluation checks.

    Crowd regions and instances without a mask are not predicted. Every kept mask is shifted
    (and maybe eroded / dilated, maybe relabelled); each image also gets a Poisson number of
    spurious box-shaped detections. Stuff segments are dropped. Same ``cfg`` -> same output.

    Args:
        gt: ground truth.
        cfg: how much damage; default :class:`PerturbConfig`.
    """
    cfg = cfg if cfg is not None else PerturbConfig()
    rng = np.random.default_rng(cfg.seed)
    cats = [c for c in gt.categories if c.isthing] or gt.categories
    pred = copy.deepcopy(gt)
    for r in pred:
        out: list[Instance] = []
        for inst in r.instances:
            if inst.is_crowd or inst.mask is None or rng.random() < cfg.drop:
                continue
            m = rle_decode(inst.mask)
            dx, dy = rng.integers(-cfg.shift_px, cfg.shift_px + 1, size=2)
            m = _shift(m, int(dy), int(dx))
            if rng.random() < cfg.morph:
                op = ndimage.binary_dilation if rng.random() < 0.5 else ndimage.binary_erosion
                m = op(m).astype(np.uint8)
            if m.sum() == 0:
                continue
            rle = rle_encode(m)
            cat = inst.category_id, inst.text
            if rng.random() < cfg.wrong_class and cats:
                c = cats[int(rng.integers(len(cats)))]
                cat = c.id, c.name
            out.append(Instance(text=cat[1], category_id=cat[0], box=rle_to_box(rle), mask=rle,
                                source="perturbed", score=float(rng.uniform(0.3, 1.0))))
        for _ in range(int(rng.poisson(cfg.false_positives)) if cats else 0):
            w = min(int(rng.integers(8, max(9, r.width // 3))), r.width)
            h = min(int(rng.integers(8, max(9, r.height // 3))), r.height)
            x0, y0 = int(rng.integers(0, r.width - w + 1)), int(rng.integers(0, r.height - h + 1))
            m = np.zeros((r.height, r.width), np.uint8)
            m[y0:y0 + h, x0:x0 + w] = 1
            c = cats[int(rng.integers(len(cats)))]
            rle = rle_encode(m)
            out.append(Instance(text=c.name, category_id=c.id, box=rle_to_box(rle), mask=rle,
                                source="perturbed", score=float(rng.uniform(0.05, 0.6))))
        r.instances = out
        r.segments = []
    return pred
