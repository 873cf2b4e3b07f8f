"""Per-supervision-kind statistics of a RecordSet (``omniseg data stats``)."""

from __future__ import annotations

from collections import Counter

from omniseg.data.records import RecordSet


def dataset_stats(rs: RecordSet) -> dict[str, int | float]:
    """Count images and instances by supervision kind.

    Returns a flat dict: images, instances, instances_with_mask, instances_exact_box,
    instances_approximate_box, crowd, box_only (exact box, no mask), phrase_only (no
    category id), images_with_captions, captions, images_with_narratives, narratives,
    trace_points, stuff_segments, thing_segments, categories, categories_present,
    mean_instances_per_image.
    """
    inst = [i for r in rs for i in r.instances]
    c = Counter()
    for i in inst:
        c["instances_with_mask"] += i.mask is not None
        c["instances_exact_box"] += i.box is not None and i.box_quality == "exact"
        c["instances_approximate_box"] += i.box is not None and i.box_quality == "approximate"
        c["crowd"] += i.is_crowd
        c["box_only"] += i.mask is None and i.box is not None and i.box_quality == "exact"
        c["phrase_only"] += i.category_id is None
    n = len(rs)
    return {
        "images": n,
        "instances": len(inst),
        **{k: c[k] for k in ("instances_with_mask", "instances_exact_box", "instances_approximate_box",
                              "crowd", "box_only", "phrase_only")},
        "images_with_captions": sum(bool(r.captions) for r in rs),
        "captions": sum(len(r.captions) for r in rs),
        "images_with_narratives": sum(bool(r.narratives) for r in rs),
        "narratives": sum(len(r.narratives) for r in rs),
        "trace_points": sum(len(s) for r in rs for nv in r.narratives for s in nv.traces),
        "stuff_segments": sum(not s.is_thing for r in rs for s in r.segments),
        "thing_segments": sum(s.is_thing for r in rs for s in r.segments),
        "categories": len(rs.categories),
        "categories_present": len({i.category_id for i in inst if i.category_id is not None}),
        "mean_instances_per_image": round(len(inst) / n, 3) if n else 0.0,
    }


def format_stats(stats: dict[str, int | float], title: str = "") -> str:
    """Render stats as an aligned two-column text table."""
    width = max((len(k) for k in stats), default=0)
    lines = [title] if title else []
    lines += [f"  {k:<{width}}  {v}" for k, v in stats.items()]
    return "\n".join(lines)
