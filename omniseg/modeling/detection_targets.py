"""Which instance feeds which loss of a two-stage detector: class labels of instances and the
split of a batch's targets by their supervision flags (rules in :mod:`omniseg.modeling.faster_rcnn`'s
docstring: exact boxes train the RPN and box regression, approximate boxes give class labels and
are RPN ignore regions, crowd boxes are ignore regions, box-less thing phrases are image-level
labels for the open-vocabulary predictor).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from omniseg.data.batch import Targets
from omniseg.modeling.roi_box_head import BoxTargets


def instance_labels(
    targets: Targets, category_ids: Sequence[int] | None = None, vocabulary: Sequence[str] | None = None,
    num_classes: int | None = None,
) -> Tensor:
    """Contiguous class index per instance (-1 where unknown).

    Args:
        targets: one image's :class:`Targets`.
        category_ids: dataset ids in index order (fixed-class predictors).
        vocabulary: texts in index order (open-vocab predictor); takes precedence.
        num_classes: with neither mapping, ids in [0, num_classes) are used as indices.

    Returns:
        N long.
    """
    if vocabulary is not None:
        lookup = {t: i for i, t in enumerate(vocabulary)}
        vals = [lookup.get(t, -1) for t in targets.texts]
    elif category_ids is not None:
        lookup = {int(c): i for i, c in enumerate(category_ids)}
        vals = [lookup.get(int(c), -1) for c in targets.category_ids.tolist()]
    else:
        n = num_classes if num_classes is not None else 0
        vals = [int(c) if 0 <= int(c) < n else -1 for c in targets.category_ids.tolist()]
    return torch.tensor(vals, dtype=torch.long, device=targets.boxes.device)


def split_targets(
    targets: Targets, labels: Tensor, approximate_boxes_as_gt: bool = False
) -> tuple[Tensor, Tensor, BoxTargets]:
    """Per-image GT for the two stages from the supervision flags (see the module docstring).

    Args:
        targets: one image's :class:`Targets`.
        labels: N long class indices (-1 unknown), from :func:`instance_labels`.
        approximate_boxes_as_gt: treat approximate boxes as exact.

    Returns:
        rpn_gt (G x 4 exact boxes), rpn_ignore (I x 4 crowd + approximate boxes), and the
        second-stage :class:`BoxTargets`.
    """
    b = targets.boxes.float()
    ok = targets.has_box & (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1]) & targets.is_thing
    crowd = ok & targets.is_crowd
    exact = ok & ~targets.is_crowd & targets.box_exact
    approx = ok & ~targets.is_crowd & ~targets.box_exact
    if approximate_boxes_as_gt:
        exact, approx = exact | approx, torch.zeros_like(approx)
    second = exact | approx
    box_targets = BoxTargets(boxes=b[second], labels=labels[second], exact=exact[second], ignore_boxes=b[crowd],
                             instance_index=torch.nonzero(second).flatten())
    return b[exact], b[crowd | approx], box_targets


def image_label_indices(targets: Targets, labels: Tensor) -> Tensor:
    """Class indices of one image's image-level labels: thing, non-crowd instances with a known
    class and neither a box nor a mask (e.g. an ALP's phrase without its box).

    Args:
        targets: one image's :class:`Targets`.
        labels: N long class indices (-1 unknown).

    Returns:
        K long, unique.
    """
    keep = ~targets.has_box & ~targets.has_mask & targets.is_thing & ~targets.is_crowd & (labels >= 0)
    return labels[keep].unique()
