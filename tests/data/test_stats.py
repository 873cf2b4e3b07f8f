"""dataset_stats / format_stats on a hand-made RecordSet with every supervision kind."""

from __future__ import annotations

import numpy as np

from omniseg.data.records import (
    Category,
    ImageRecord,
    Instance,
    Narrative,
    RecordSet,
    Segment,
    TracePoint,
    Utterance,
)
from omniseg.data.stats import dataset_stats, format_stats
from omniseg.ops.rle import rle_encode


def _mask(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> dict:
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 1
    return rle_encode(m)


def _records() -> RecordSet:
    cats = [Category(1, "cat"), Category(2, "dog"), Category(3, "bird"), Category(4, "sky", isthing=False)]
    masked = Instance("cat", 1, box=(1, 1, 4, 4), mask=_mask(8, 10, 1, 4, 1, 4))
    box_only = Instance("dog", 2, box=(5, 1, 9, 6))
    alp = Instance("a small brown dog", None, box=(0, 0, 6, 6), box_quality="approximate", source="narrative")
    crowd = Instance("cat", 1, box=(0, 0, 5, 4), mask=_mask(5, 6, 0, 4, 0, 5), is_crowd=True)
    mask_only = Instance("dog", 2, box=None, mask=_mask(5, 6, 4, 5, 0, 2))
    trace_a = [TracePoint(0.1, 0.2, 0.0), TracePoint(0.2, 0.2, 0.1), TracePoint(0.3, 0.25, 0.2)]
    trace_b = [TracePoint(0.5, 0.5, 1.0), TracePoint(0.6, 0.5, 1.1)]
    narrative = Narrative(
        "a cat and a dog", [Utterance("a", 0.0, 0.1), Utterance("cat", 0.1, 0.3)], traces=[trace_a, trace_b]
    )
    r1 = ImageRecord(
        1,
        "a.jpg",
        10,
        8,
        instances=[masked, box_only, alp],
        captions=["a cat and a dog", "two pets"],
        narratives=[narrative],
        segments=[
            Segment("sky", 4, _mask(8, 10, 0, 1, 0, 10), is_thing=False),
            Segment("cat", 1, _mask(8, 10, 1, 4, 1, 4), is_thing=True),
        ],
    )
    r2 = ImageRecord(2, "b.jpg", 6, 5, instances=[crowd, mask_only], captions=["a crowd of cats"])
    r3 = ImageRecord(3, "c.jpg", 4, 4)  # unlabeled image
    return RecordSet([r1, r2, r3], cats, name="hand")


def test_exact_counts() -> None:
    s = dataset_stats(_records())
    assert s == {
        "images": 3,
        "instances": 5,
        "instances_with_mask": 3,  # masked, crowd, mask_only
        "instances_exact_box": 3,  # masked, box_only, crowd
        "instances_approximate_box": 1,  # the ALP
        "crowd": 1,
        "box_only": 1,  # exact box and no mask
        "phrase_only": 1,  # category_id None
        "images_with_captions": 2,
        "captions": 3,
        "images_with_narratives": 1,
        "narratives": 1,
        "trace_points": 5,  # 3 + 2 over two trace segments
        "stuff_segments": 1,
        "thing_segments": 1,
        "categories": 4,
        "categories_present": 2,  # ids 1 and 2 (the ALP has none)
        "mean_instances_per_image": round(5 / 3, 3),
    }
    assert all(type(v) is int for k, v in s.items() if k != "mean_instances_per_image")


def test_matches_slow_reference() -> None:
    rs = _records()
    inst = [i for r in rs.records for i in r.instances]
    ref_with_mask = 0
    ref_box_only = 0
    for i in inst:
        if i.mask is not None:
            ref_with_mask += 1
        if i.mask is None and i.box is not None and i.box_quality == "exact":
            ref_box_only += 1
    ref_points = 0
    for r in rs.records:
        for nv in r.narratives:
            for seg in nv.traces:
                for _ in seg:
                    ref_points += 1
    s = dataset_stats(rs)
    assert (s["instances_with_mask"], s["box_only"], s["trace_points"]) == (ref_with_mask, ref_box_only, ref_points)


def test_empty_recordset() -> None:
    s = dataset_stats(RecordSet())
    assert s["images"] == 0 and s["instances"] == 0 and s["mean_instances_per_image"] == 0.0
    assert all(v == 0 for v in s.values())


def test_format_stats_table() -> None:
    text = format_stats({"images": 3, "mean_instances_per_image": 1.667}, "title:")
    assert text == "title:\n  images                    3\n  mean_instances_per_image  1.667"
    assert format_stats({"a": 1}) == "  a  1"
    assert format_stats({}, "empty") == "empty"
