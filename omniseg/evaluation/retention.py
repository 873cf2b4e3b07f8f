"""Retention rate of box-supervised instance segmentation (MAL, Sec. 4.3 "Retention Rate").

MAL (Tables 1 and 2) defines ``Ret = box-supervised mask AP / supervised mask AP``: the mask
AP of a segmenter trained on pseudo masks generated from boxes, divided by the mask AP of
the same segmenter architecture trained on the human masks. It isolates mask quality from
box quality, because both models benefit equally from a better detector.

MAL prints it as a percentage (e.g. 94.5 %); these functions return the plain ratio
(0.945); multiply by 100 for the paper's column.
"""

from __future__ import annotations

import math
from collections.abc import Mapping


def retention_rate(box_sup_ap: float, full_sup_ap: float) -> float:
    """Ratio of box-supervised to fully supervised mask AP (MAL Table 1 "Ret").

    Args:
        box_sup_ap: mask AP of the model trained with box supervision only (pseudo masks).
        full_sup_ap: mask AP of the same model trained with full mask supervision; must be > 0.

    Returns:
        ``box_sup_ap / full_sup_ap``; NaN if either AP is NaN (undefined, e.g. no ground truth).
    """
    if math.isnan(box_sup_ap) or math.isnan(full_sup_ap):
        return float("nan")
    if box_sup_ap < 0:
        raise ValueError(f"box-supervised AP must be >= 0, got {box_sup_ap}")
    if full_sup_ap <= 0:
        raise ValueError(f"fully supervised AP must be > 0 for a retention rate, got {full_sup_ap}")
    return float(box_sup_ap) / float(full_sup_ap)


def retention_table(box_sup: Mapping[str, float], full_sup: Mapping[str, float]) -> dict[str, float]:
    """Retention rate for every metric key present in both result dicts (e.g. "AP", "novel/AP").

    Keys whose fully supervised value is not positive give NaN instead of raising, so a
    table over many metrics (APs with no small objects, ...) can still be rendered.
    """
    out: dict[str, float] = {}
    for key in box_sup:
        if key not in full_sup:
            continue
        b, f = float(box_sup[key]), float(full_sup[key])
        out[key] = (
            retention_rate(b, f) if (f > 0 or math.isnan(f)) and (b >= 0 or math.isnan(b)) else float("nan")
        )
    return out
