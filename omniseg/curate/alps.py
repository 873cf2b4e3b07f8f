"""Approximately localized phrases (ALPs) from Localized Narratives (ALP paper, section 3.1).

For each narrative: tag the caption (:mod:`.pos`), extract ``ADJ* NOUN+`` phrases and drop stuff
(:mod:`.phrases`), align each phrase's characters to the ``timed_caption`` utterances, take the
union ``(T1, T2)`` of its utterances' intervals and the trace points with ``t`` in
``(T1 - t_p, T2 + t_p)`` (t_p = 0.5 s, paper section 3.1), and the box spanned by those points
(normalized coordinates scaled by the image size, clipped to the image).
:func:`narratives_alps` does the alignment and the windows for all phrases of many narratives (a
chunk) at once (word and point ranges by binary search, then reductions over the ranges);
:func:`window_points` / :func:`points_box` are the per-phrase form it is tested against.

Output (``OUT/alps.jsonl``), one ALP per line::

    {"image_id": 391895, "phrase": "red car", "box": [x0, y0, x1, y1], "box_quality": "approximate",
     "source": "alp", "num_points": 23, "t_start": 3.1, "t_end": 3.9, "line": 17}

``box`` is XYXY in pixels; ``image_id`` is the dataset's id (int for COCO); ``line`` is the
narrative's line in the input. :func:`read_alps_jsonl` / :func:`attach_alps` read it back as
``Instance(text=phrase, category_id=None, box_quality="approximate", source="alp")``.
``OUT/stats.json`` holds the counts of the paper's Table 1 (images, ALPs, unique phrases).
This module is the per-narrative logic; the multi-process, resumable driver that writes those
files is :func:`omniseg.curate.alps_run.curate_alps`.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from omniseg.curate.narrative_lines import trace_array
from omniseg.curate.phrases import DEFAULT_NON_OBJECT, DEFAULT_STUFF, extract_phrases, phrase_intervals_batch
from omniseg.curate.pos import TaggedToken, TokenRow
from omniseg.data.errors import BadRecords
from omniseg.data.formats.narratives import id_key
from omniseg.data.records import Box, Instance, Narrative, RecordSet

#: reasons a candidate phrase gives no ALP (keys of the drop counter)
DROP_REASONS = ("stuff", "non_object", "not_aligned", "too_few_points", "degenerate_box")


@dataclass
class AlpConfig:
    """Flat configuration of ALP curation.

    Attributes:
        t_pad: temporal padding t_p in seconds around a phrase's utterances (paper: 0.5).
        min_points: phrases with fewer trace points in their window are dropped. Default 4
            (the paper gives none): two points already span a box, but with traces sampled every
            ~0.02-0.05 s a padded window (>= 1 s) normally holds dozens of points; a handful means
            the mouse was mostly off the image and the box is a few samples of a mouse path. On the
            synthetic world no window has fewer than 4 points, so this choice is not measured.
        stuff: head nouns of stuff phrases to drop.
        non_object: head nouns naming picture parts / directions to drop.
        model: spaCy model package (None: en_core_web_sm, else the hash-pinned re-upload).
        batch_size: captions per ``nlp.pipe`` batch.
    """

    t_pad: float = 0.5
    min_points: int = 4
    stuff: tuple[str, ...] = DEFAULT_STUFF
    non_object: tuple[str, ...] = DEFAULT_NON_OBJECT
    model: str | None = None
    batch_size: int = 64

    def __post_init__(self) -> None:
        if not (math.isfinite(self.t_pad) and self.t_pad >= 0):
            raise ValueError(f"t_pad must be a finite number >= 0, got {self.t_pad}")
        if self.min_points < 1:
            raise ValueError(f"min_points must be >= 1, got {self.min_points}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        self.stuff = tuple(self.stuff)
        self.non_object = tuple(self.non_object)


@dataclass
class Alp:
    """One curated ALP (before it becomes an :class:`Instance`)."""

    phrase: str
    box: Box
    num_points: int
    t_start: float
    t_end: float

    def instance(self) -> Instance:
        return Instance(text=self.phrase, category_id=None, box=self.box, box_quality="approximate", source="alp")


@dataclass
class NarrativeAlps:
    """ALPs of one narrative and counts of dropped candidate phrases (by :data:`DROP_REASONS`)."""

    alps: list[Alp] = field(default_factory=list)
    dropped: Counter = field(default_factory=Counter)


def window_points(points: np.ndarray, t1: float, t2: float, t_pad: float) -> np.ndarray:
    """Points with ``t`` strictly inside ``(t1 - t_pad, t2 + t_pad)``.

    Args:
        points: P x 3 (x, y, t).

    Returns:
        K x 3, in input order.
    """
    t = points[:, 2]
    return points[(t > t1 - t_pad) & (t < t2 + t_pad)]


def points_box(points: np.ndarray, width: int, height: int) -> Box | None:
    """Box spanned by normalized points, in pixels, clipped to the image; None if it has no area.

    Args:
        points: K x 2+ normalized (x, y, ...), K >= 1.
    """
    x0 = min(max(float(points[:, 0].min()) * width, 0.0), float(width))
    x1 = min(max(float(points[:, 0].max()) * width, 0.0), float(width))
    y0 = min(max(float(points[:, 1].min()) * height, 0.0), float(height))
    y1 = min(max(float(points[:, 1].max()) * height, 0.0), float(height))
    if x1 <= x0 or y1 <= y0:
        return None
    return (x0, y0, x1, y1)


def window_extremes(
    points: Sequence[np.ndarray], lo: np.ndarray, hi: np.ndarray, windows: Sequence[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For F open time windows ``(lo, hi)``, the first ``windows[0]`` of them on ``points[0]``, the
    next ``windows[1]`` on ``points[1]``, ...: the number of points in each (as
    :func:`window_points` counts them) and the min and the max of their (x, y).

    The points of each array are sorted by ``t`` (unless they are already, as traces normally
    are); a window is then a range of them, found by binary search, and its extremes a reduction
    over the range (all arrays' ranges in one reduction).

    Args:
        points: P_i x 3 (x, y, t) arrays.

    Returns:
        F counts (int64), F x 2 minima and F x 2 maxima of (x, y) (arbitrary for empty windows).
    """
    sizes = np.array([len(p) for p in points], dtype=np.int64)
    offsets = np.cumsum(sizes) - sizes
    every = np.concatenate([*points, np.zeros((1, 3))])  # a row past the end: reduceat's last bound
    t = every[:-1, 2]
    down = np.flatnonzero(~(t[1:] >= t[:-1])) + 1  # t falls (or is NaN) at these rows
    for i in np.unique(np.searchsorted(offsets, down, side="right") - 1).tolist():
        if ((down > offsets[i]) & (down < offsets[i] + sizes[i])).any():  # not just where block i starts
            block = every[offsets[i] : offsets[i] + sizes[i]]
            block[:] = block[np.argsort(block[:, 2], kind="stable")]  # NaN times sort last
    first, last, k = np.empty(len(lo), dtype=np.int64), np.empty(len(lo), dtype=np.int64), 0
    for off, size, n in zip(offsets.tolist(), sizes.tolist(), windows):
        block_t = t[off : off + size]
        first[k : k + n] = np.searchsorted(block_t, lo[k : k + n], side="right") + off
        last[k : k + n] = np.searchsorted(block_t, hi[k : k + n], side="left") + off
        k += n
    last = np.maximum(last, first)
    counts = last - first
    counts[np.isnan(lo) | np.isnan(hi)] = 0
    xy = every[:, :2]
    bounds = np.stack((first, last), axis=1).ravel()
    return counts, np.minimum.reduceat(xy, bounds)[::2], np.maximum.reduceat(xy, bounds)[::2]


def narratives_alps(
    items: Sequence[tuple[Narrative, Sequence[TaggedToken | TokenRow], int, int, np.ndarray | None]], cfg: AlpConfig
) -> list[NarrativeAlps]:
    """:func:`narrative_alps` of many narratives (a chunk), their array work done once for all.

    Args:
        items: (narrative, its caption's tokens, image width, image height, P x 3 trace points or
            None: from ``narrative.traces``).
    """
    outs, todo = [], []
    for narrative, tokens, width, height, points in items:
        out = NarrativeAlps()
        phrases, dropped = extract_phrases(narrative.caption, tokens, cfg.stuff, cfg.non_object)
        out.dropped.update({k: v for k, v in dropped.items() if v})
        outs.append(out)
        if phrases:
            todo.append((out, phrases, narrative, width, height, trace_array(narrative) if points is None else points))
    if not todo:
        return outs
    t1, t2, aligned = phrase_intervals_batch(
        [it[2].caption for it in todo], [it[2].timed_caption for it in todo],
        [[(p.start, p.end) for p in it[1]] for it in todo],
    )
    counts, lows, highs = window_extremes([it[5] for it in todo], t1 - cfg.t_pad, t2 + cfg.t_pad,
                                          [len(it[1]) for it in todo])
    ext = np.concatenate((lows, highs), axis=1)  # F x (x_min, y_min, x_max, y_max)
    exact = (np.isfinite(ext) & (ext != 0)).all(axis=1).tolist()
    ext_l, counts_l, t1l, t2l, ok = ext.tolist(), counts.tolist(), t1.tolist(), t2.tolist(), aligned.tolist()
    i = -1
    for out, phrases, _, width, height, points in todo:
        fw, fh = float(width), float(height)
        for p in phrases:
            i += 1
            if not ok[i]:
                out.dropped["not_aligned"] += 1
                continue
            if counts_l[i] < cfg.min_points:
                out.dropped["too_few_points"] += 1
                continue
            if exact[i]:
                x_min, y_min, x_max, y_max = ext_l[i]
                x0, x1 = min(max(x_min * width, 0.0), fw), min(max(x_max * width, 0.0), fw)
                y0, y1 = min(max(y_min * height, 0.0), fh), min(max(y_max * height, 0.0), fh)
                box = None if x1 <= x0 or y1 <= y0 else (x0, y0, x1, y1)
            else:
                box = points_box(window_points(points, t1l[i], t2l[i], cfg.t_pad), width, height)
            if box is None:
                out.dropped["degenerate_box"] += 1
                continue
            out.alps.append(Alp(p.text, box, counts_l[i], t1l[i], t2l[i]))
    return outs


def narrative_alps(
    narrative: Narrative,
    tokens: Sequence[TaggedToken | TokenRow],
    width: int,
    height: int,
    cfg: AlpConfig,
    points: np.ndarray | None = None,
) -> NarrativeAlps:
    """ALPs of one narrative whose caption was tagged into ``tokens``.

    All phrases at once: their ``(T1, T2)`` (:func:`~omniseg.curate.phrases.phrase_intervals_batch`),
    then the count and the min / max of x and y of the points in their windows
    (:func:`window_extremes`). The box of a kept phrase is :func:`points_box`'s arithmetic on those
    extremes; where an extreme is 0 or not finite (the sign of a zero, or a NaN, could depend on
    which equal point a reduction returns) it is :func:`points_box` itself on the phrase's window.
    :func:`narratives_alps` does the same for many narratives at once.

    Args:
        points: P x 3 (x, y, t) trace points, when already extracted (else from ``narrative.traces``).
    """
    return narratives_alps([(narrative, tokens, width, height, points)], cfg)[0]


def alp_json(image_id: int | str, alp: Alp, line: int) -> dict[str, Any]:
    """One output line (see the module docstring)."""
    return {
        "image_id": image_id,
        "phrase": alp.phrase,
        "box": [round(v, 2) for v in alp.box],
        "box_quality": "approximate",
        "source": "alp",
        "num_points": alp.num_points,
        "t_start": round(alp.t_start, 3),
        "t_end": round(alp.t_end, 3),
        "line": line,
    }


def alp_line(image_id: int | str, alp: Alp, line: int) -> str:
    """``json.dumps(alp_json(image_id, alp, line)) + "\\n"``, formatted directly (one per ALP in curation)."""
    nums = [round(v, 2) for v in alp.box] + [round(alp.t_start, 3), round(alp.t_end, 3)]
    if not (type(image_id) in (int, str) and type(alp.num_points) is int and type(line) is int
            and all(type(v) is float and math.isfinite(v) for v in nums)):
        return json.dumps(alp_json(image_id, alp, line)) + "\n"
    x0, y0, x1, y1, t0, t1 = map(float.__repr__, nums)  # json's float format
    return (f'{{"image_id": {json.dumps(image_id)}, "phrase": {json.dumps(alp.phrase)}, "box": [{x0}, {y0}, {x1}, {y1}], '
            f'"box_quality": "approximate", "source": "alp", "num_points": {alp.num_points}, "t_start": {t0}, '
            f'"t_end": {t1}, "line": {line}}}\n')


def _alp_from_json(obj: Any) -> tuple[int | str, Instance]:
    if not isinstance(obj, dict):
        raise ValueError("line is not a JSON object")
    for k in ("image_id", "phrase", "box"):
        if k not in obj:
            raise ValueError(f"missing key {k!r}")
    if not isinstance(obj["phrase"], str) or not obj["phrase"].strip():
        raise ValueError("phrase is not a non-empty string")
    box = obj["box"]
    if (
        not isinstance(box, list)
        or len(box) != 4
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box)
    ):
        raise ValueError(f"box is not 4 finite numbers ({box!r})")
    if box[2] <= box[0] or box[3] <= box[1]:
        raise ValueError(f"box {box} has no area (need x1 > x0 and y1 > y0)")
    if obj.get("box_quality", "approximate") != "approximate":
        raise ValueError(f"box_quality must be 'approximate', got {obj['box_quality']!r}")
    image_id = obj["image_id"]
    if isinstance(image_id, bool) or not isinstance(image_id, (int, str)):
        raise ValueError(f"image_id is not an int or string ({image_id!r})")
    inst = Instance(
        text=obj["phrase"], category_id=None, box=tuple(float(v) for v in box), box_quality="approximate",
        source=str(obj.get("source", "alp")),
    )
    return image_id, inst


def read_alps_jsonl(path: str | os.PathLike, on_bad: BadRecords | None = None) -> Iterator[tuple[int | str, Instance]]:
    """Stream ``(image_id, Instance)`` from an ALP JSONL file; bad lines go to ``on_bad`` naming the line."""
    bad = on_bad if on_bad is not None else BadRecords()
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                yield _alp_from_json(json.loads(raw))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                bad.report(str(path), f"line {lineno}", f"malformed JSON ({e})")
            except ValueError as e:
                bad.report(str(path), f"line {lineno}", str(e))


def attach_alps(rs: RecordSet, path: str | os.PathLike, on_bad: BadRecords | None = None) -> int:
    """Append the ALPs of ``path`` to the records of ``rs`` with the same image id.

    ALPs of images not in ``rs`` are counted in ``on_bad.skipped`` (whatever its policy).

    Returns:
        the number of ALP instances attached.
    """
    bad = on_bad if on_bad is not None else BadRecords()
    by_id = {id_key(r.image_id): r for r in rs.records}
    n = 0
    for image_id, inst in read_alps_jsonl(path, bad):
        rec = by_id.get(id_key(image_id))
        if rec is None:
            bad.skipped["ALP for an image not in the record set"] += 1
            continue
        rec.instances.append(inst)
        n += 1
    return n
