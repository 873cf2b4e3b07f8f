"""Per-supervision-kind statistics of a RecordSet (``omniseg data stats``)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from omniseg.data.records import Instance, RecordSet

_INSTANCE_KEYS = ("instances_with_mask", "instances_exact_box", "instances_approximate_box", "crowd",
                  "box_only", "phrase_only")


@dataclass
class InstanceTally:
    """The instance counts of :func:`dataset_stats` (kept apart so a reader can count its rows
    without making instance objects, e.g. ``coco_instances_stats``)."""

    instances: int = 0
    instances_with_mask: int = 0
    instances_exact_box: int = 0
    instances_approximate_box: int = 0
    crowd: int = 0
    box_only: int = 0
    phrase_only: int = 0
    category_ids: set[int] = field(default_factory=set)


def tally_instances(instances: Iterable[Instance]) -> InstanceTally:
    """Count instances by supervision kind (see :func:`dataset_stats`)."""
    t = InstanceTally()
    for i in instances:
        exact = i.box is not None and i.box_quality == "exact"
        t.instances += 1
        t.instances_with_mask += i.mask is not None
        t.instances_exact_box += exact
        t.instances_approximate_box += i.box is not None and i.box_quality == "approximate"
        t.crowd += i.is_crowd
        t.box_only += i.mask is None and exact
        t.phrase_only += i.category_id is None
        if i.category_id is not None:
            t.category_ids.add(i.category_id)
    return t


def dataset_stats(rs: RecordSet, tally: InstanceTally | None = None) -> dict[str, int | float]:
    """Count images and instances by supervision kind.

    Returns a flat dict: images, instances, instances_with_mask, instances_exact_box,
    instances_approximate_box, crowd, box_only (exact box, no mask), phrase_only (no
    category id), images_with_captions, captions, images_with_narratives, narratives,
    trace_points, stuff_segments, thing_segments, categories, categories_present,
    mean_instances_per_image. ``tally``: the instance counts, when the caller has them
    (the records' own instances are then not counted).
    """
    t = tally if tally is not None else tally_instances(i for r in rs for i in r.instances)
    n = len(rs)
    return {
        "images": n,
        "instances": t.instances,
        **{k: int(getattr(t, k)) for k in _INSTANCE_KEYS},
        "images_with_captions": sum(bool(r.captions) for r in rs),
        "captions": sum(len(r.captions) for r in rs),
        "images_with_narratives": sum(bool(r.narratives) for r in rs),
        "narratives": sum(len(r.narratives) for r in rs),
        "trace_points": sum(len(s) for r in rs for nv in r.narratives for s in nv.traces),
        "stuff_segments": sum(not s.is_thing for r in rs for s in r.segments),
        "thing_segments": sum(s.is_thing for r in rs for s in r.segments),
        "categories": len(rs.categories),
        "categories_present": len(t.category_ids),
        "mean_instances_per_image": round(t.instances / n, 3) if n else 0.0,
    }


def format_stats(stats: dict[str, int | float], title: str = "") -> str:
    """Render stats as an aligned two-column text table."""
    width = max((len(k) for k in stats), default=0)
    lines = [title] if title else []
    lines += [f"  {k:<{width}}  {v}" for k, v in stats.items()]
    return "\n".join(lines)
