"""omniseg/data/pseudo_masks.py: which box gets which pseudo mask (file name, class, best box IoU >= 0.9),
from an instances JSON and from a results list, against hand-worked expectations."""

from __future__ import annotations

import numpy as np
import pytest

from omniseg.data.formats.coco import write_coco_instances, write_coco_results
from omniseg.data.pseudo_masks import attach_pseudo_masks
from omniseg.data.records import Category, ImageRecord, Instance, RecordSet
from omniseg.ops.rle import rle_decode, rle_encode

CATS = [Category(1, "cat"), Category(2, "dog")]


def _mask(box: tuple[int, int, int, int], size: int = 32) -> dict:
    m = np.zeros((size, size), np.uint8)
    m[box[1]:box[3], box[0]:box[2]] = 1
    return rle_encode(m)


def _inst(cid: int, box, mask: bool = False, score: float | None = None) -> Instance:
    return Instance(CATS[cid - 1].name, cid, tuple(map(float, box)), mask=_mask(box) if mask else None, score=score)


def _boxes() -> RecordSet:
    """Two images of box-only annotations (the first under a folder: matched by its base name)."""
    return RecordSet([ImageRecord(1, "train/a.png", 32, 32, instances=[
                          _inst(1, (0, 0, 10, 10)),     # partner: same class, same box
                          _inst(2, (0, 0, 10, 10)),     # the labelled box here is class 1 only -> no mask
                          _inst(1, (20, 20, 30, 30))]),  # two class-1 candidates: IoU 1.0 and 0.81 -> the first
                      ImageRecord(2, "b.png", 32, 32, instances=[
                          _inst(2, (5, 5, 15, 15))])],   # partner box IoU 0.81 < 0.9 -> no mask
                     categories=list(CATS))


def _labels(scored: bool) -> RecordSet:
    s = 0.9 if scored else None
    return RecordSet([ImageRecord(7, "a.png", 32, 32, instances=[
                          _inst(1, (0, 0, 10, 10), True, s), _inst(1, (21, 21, 30, 30), True, s),
                          _inst(1, (20, 20, 30, 30), True, s)]),
                      ImageRecord(8, "b.png", 32, 32, instances=[_inst(2, (6, 6, 15, 15), True, s)])],
                     categories=list(CATS))


@pytest.mark.parametrize("kind", ["instances", "results"])
def test_boxes_get_the_mask_of_their_partner_only(tmp_path, kind):
    path = tmp_path / "labels.json"
    if kind == "instances":
        write_coco_instances(path, _labels(False))
        rs = _boxes()
    else:  # a results list names the gt images by id: ids as in the boxes' file
        labels = _labels(True)
        for rec, gt_id in zip(labels.records, (1, 2)):
            rec.image_id = gt_id
        write_coco_results(path, labels)
        rs = _boxes()
    assert attach_pseudo_masks(rs, path) == 2
    got = [[None if i.mask is None else rle_decode(i.mask).sum() for i in r.instances] for r in rs]
    assert got == [[100, None, 100], [None]]
    third = rle_decode(rs.records[0].instances[2].mask)
    assert third[20:30, 20:30].all()  # the (20, 20, 30, 30) label, not the (21, 21, 30, 30) one (81 px)
    assert attach_pseudo_masks(_boxes(), path, min_iou=0.8) == 3  # the 0.81 partner counts at a lower bar
