"""Masks from a pseudo labeler (e.g. ``omniseg autolabel`` with a MAL run) given to box-only annotations.

A box gets the mask of the labelled instance in the same image (matched by file name, without folders), of
the same class, whose box overlaps it most -- when that IoU is >= ``min_iou`` (the labeler keeps the boxes it
was given, so 0.9 only guards against rounding in the file). Boxes without such a partner keep no mask.
"""

from __future__ import annotations

import dataclasses
import os

import torch

from omniseg.data.records import RecordSet


def _base_name(file_name: str) -> str:
    return file_name.replace("\\", "/").rsplit("/", 1)[-1]


def read_pseudo_labels(path: str | os.PathLike, rs: RecordSet) -> RecordSet:
    """``path`` as records: a COCO instances JSON (what ``omniseg autolabel`` writes) or a COCO results list
    (read against ``rs``'s images and categories)."""
    from omniseg.data.formats.coco import read_coco_instances, read_coco_results

    with open(path, encoding="utf-8") as f:
        head = f.read(64).lstrip()
    if head.startswith("["):
        return read_coco_results(path, rs, progress=False)
    return read_coco_instances(path, progress=False)


def attach_pseudo_masks(rs: RecordSet, path: str | os.PathLike, min_iou: float = 0.9) -> int:
    """Give each box of ``rs`` the mask of its pseudo-labelled partner in ``path`` (module docstring), in
    place. Returns the number of boxes that got one."""
    from omniseg.ops.boxes import box_iou

    by_name = {_base_name(r.file_name): r for r in read_pseudo_labels(path, rs)}
    found = 0
    for rec in rs:
        src = by_name.get(_base_name(rec.file_name))
        cands = [i for i in (src.instances if src else []) if i.mask is not None and i.box is not None]
        for k, inst in enumerate(rec.instances):
            same = [c for c in cands if c.category_id == inst.category_id]
            if inst.box is None or not same:
                continue
            iou = box_iou(torch.tensor([inst.box], dtype=torch.float64),
                          torch.tensor([c.box for c in same], dtype=torch.float64))[0]
            if float(iou.max()) >= min_iou:
                rec.instances[k] = dataclasses.replace(inst, mask=same[int(iou.argmax())].mask)
                found += 1
    return found
