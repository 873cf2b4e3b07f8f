"""Approximately localized phrases (ALPs) from Localized Narratives (ALP paper, section 3.1).

For each narrative: tag the caption (:mod:`.pos`), extract ``ADJ* NOUN+`` phrases and drop stuff
(:mod:`.phrases`), align each phrase's characters to the ``timed_caption`` utterances, take the
union ``(T1, T2)`` of its utterances' intervals and the trace points with ``t`` in
``(T1 - t_p, T2 + t_p)`` (t_p = 0.5 s, paper section 3.1), and the box spanned by those points
(normalized coordinates scaled by the image size, clipped to the image).
:func:`narrative_alps` does the alignment and the windows for all phrases of a narrative at once
(phrases x words and phrases x points masks); :func:`window_points` / :func:`points_box` are the
per-phrase form it is tested against.

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
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from omniseg.curate.phrases import DEFAULT_NON_OBJECT, DEFAULT_STUFF, extract_phrases, phrase_intervals
from omniseg.curate.pos import TaggedToken, TokenRow
from omniseg.data.errors import BadRecords
from omniseg.data.formats.narratives import InvalidNarrative, id_key, parse_narrative_obj
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


def trace_array(narrative: Narrative) -> np.ndarray:
    """All trace points of a narrative (every segment) as a P x 3 float64 array of (x, y, t)."""
    pts = [(p.x, p.y, p.t) for seg in narrative.traces for p in seg]
    return np.asarray(pts, dtype=np.float64).reshape(-1, 3)


_NUMBER_CHARS = np.zeros(256, dtype=bool)
_NUMBER_CHARS[list(b"0123456789.eE+-")] = True
_CLASS = np.zeros(256, dtype=np.int8)  # 0 structure, 1 digit, 2 '.', 3 e/E, 4 '+', 5 '-'
_CLASS[list(b"0123456789")] = 1
_CLASS[ord(".")], _CLASS[ord("e")], _CLASS[ord("E")], _CLASS[ord("+")], _CLASS[ord("-")] = 2, 3, 3, 4, 5
#: (previous, next) character classes allowed inside a JSON number
_PAIRS = np.zeros((6, 6), dtype=bool)
for _p, _n in ((1, 1), (1, 2), (1, 3), (2, 1), (3, 1), (3, 4), (3, 5), (4, 1), (5, 1)):
    _PAIRS[_p, _n] = True
_POINT_SKELETON = b'{"x": , "y": , "t": }'
_TRACES_SKELETON = re.compile(rb"\[\[P(?:, P)*(?:\], \[P(?:, P)*)*\]\]")
_TRACES_KEY = re.compile(rb'"traces"\s*:\s*')
_SENTINEL = "omniseg:traces"


def _json_numbers(text: bytes) -> np.ndarray | None:
    """The numbers of a traces array in the canonical layout of ``json.dumps``
    (``[[{"x": 0.1, "y": 0.2, "t": 0.3}, ...], ...]``), or None for anything else.

    Vectorized over the bytes: the text without its number characters must be that layout with
    one number slot per coordinate, and every run of number characters a JSON number (checked by
    character-class pairs, start / end classes, at most one '.' before at most one exponent, no
    leading zero). Numbers are read as json does (correctly rounded to float64).
    """
    b = np.frombuffer(text, dtype=np.uint8)
    is_num = _NUMBER_CHARS[b]
    skeleton = b[~is_num].tobytes()
    n_points = skeleton.count(_POINT_SKELETON)
    if not n_points or not _TRACES_SKELETON.fullmatch(skeleton.replace(_POINT_SKELETON, b"P")):
        return None
    edges = np.flatnonzero(np.diff(np.concatenate(([False], is_num, [False])).view(np.int8)))
    starts, ends = edges[0::2], edges[1::2]
    if len(starts) != 3 * n_points:  # a slot without a number
        return None
    cls = _CLASS[b]
    inner = is_num[1:] & is_num[:-1]  # pairs of neighbours inside one run
    if not _PAIRS[cls[:-1][inner], cls[1:][inner]].all():
        return None
    first, last = cls[starts], cls[ends - 1]
    if not ((first == 1) | (first == 5)).all() or not (last == 1).all():
        return None
    lead = starts + (first == 5)  # first digit of the integer part
    lead_next = np.minimum(lead + 1, len(b) - 1)
    if ((b[lead] == ord("0")) & (lead + 1 < ends) & (cls[lead_next] == 1)).any():
        return None
    run = np.cumsum(np.concatenate(([0], np.diff(is_num.view(np.int8)) == 1)))  # run id per char (+1)
    dots = np.bincount(run[cls == 2], minlength=len(starts) + 1)
    exps = np.bincount(run[cls == 3], minlength=len(starts) + 1)
    if (dots > 1).any() or (exps > 1).any():
        return None
    if (dots.any() and exps.any()):  # '.' must come before 'e'
        dot_at = np.full(len(starts) + 1, -1)
        exp_at = np.full(len(starts) + 1, len(b))
        dot_at[run[cls == 2]] = np.flatnonzero(cls == 2)
        exp_at[run[cls == 3]] = np.flatnonzero(cls == 3)
        if (dot_at > exp_at).any():
            return None
    values = np.fromstring(np.where(is_num, b, ord(" ")).astype(np.uint8).tobytes(), dtype=np.float64, sep=" ")
    if len(values) != 3 * n_points:
        return None
    # json reads "-0" as the int 0, which becomes +0.0 (a float "-0.0" or "-0e0" stays -0.0)
    values[(first == 5) & (dots[1:] == 0) & (exps[1:] == 0) & (values == 0)] = 0.0
    return values


def _parse_line_fast(raw: bytes) -> tuple[dict, np.ndarray] | None:
    """(decoded line without its traces, P x 3 points) for a line whose traces are in json.dumps'
    canonical layout; None when that cannot be shown (then the line takes the general path).

    The traces array is cut out and replaced by a sentinel string, the rest decoded by json.
    That equals decoding the whole line when "traces" occurs once, unescaped, as the top-level
    key whose value is the cut-out array (no ``\\u`` escapes could spell another such key).
    """
    if raw.count(b'"traces"') != 1 or b"\\u" in raw or _SENTINEL.encode() in raw:
        return None
    m = _TRACES_KEY.search(raw)
    if m is None or m.start() == 0 or raw[m.start() - 1] == ord("\\"):
        return None
    s = m.end()
    e = raw.find(b"]]", s) + 2
    if e < 2 or not raw.startswith(b"[[{", s):
        return None
    values = _json_numbers(raw[s:e])
    if values is None or not np.isfinite(values).all():
        return None
    obj = json.loads(raw[:s] + b'"' + _SENTINEL.encode() + b'"' + raw[e:])
    if not isinstance(obj, dict) or obj.get("traces") != _SENTINEL:
        return None
    return obj, values.reshape(-1, 3)


def parse_line(raw: bytes) -> tuple[str, Narrative, np.ndarray]:
    """One narratives JSONL line -> (image id, narrative without traces, P x 3 trace points).

    Validation is the narratives reader's (:func:`~omniseg.data.formats.narratives.parse_narrative_obj`,
    same messages); the traces, most of a line, take a vectorized path (building one ``TracePoint``
    per sample was the slowest step of curation), and the reader's parser runs on them only
    to name the problem when the fast check fails. Traces in json.dumps' layout are not even
    decoded by json (:func:`_parse_line_fast`; the numbers are read straight from the bytes).

    Raises:
        json.JSONDecodeError / UnicodeDecodeError: malformed JSON.
        InvalidNarrative (a ValueError): the reader's message.
    """
    try:
        fast = _parse_line_fast(raw)
    except (ValueError, UnicodeDecodeError):  # the general path names the problem
        fast = None
    if fast is not None:
        obj, points = fast
        image_id, narrative = parse_narrative_obj({**obj, "traces": []})
        return image_id, narrative, points
    obj = json.loads(raw)
    traces = obj.get("traces") if isinstance(obj, dict) else None
    if not isinstance(traces, list):
        parse_narrative_obj(obj)  # raises with the reader's message
        raise InvalidNarrative("traces must be a list")  # unreachable unless the reader changes
    image_id, narrative = parse_narrative_obj({**obj, "traces": []})
    try:
        rows = [(p["x"], p["y"], p["t"]) for seg in traces for p in seg]
        ok = {type(v) for r in rows for v in r} <= {int, float}
        points = np.asarray(rows, dtype=np.float64).reshape(-1, 3)
        ok = ok and bool(np.isfinite(points).all())
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        image_id, narrative = parse_narrative_obj(obj)  # raises with the reader's message
        return image_id, narrative, trace_array(narrative)
    return image_id, narrative, points


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


def narrative_alps(
    narrative: Narrative,
    tokens: Sequence[TaggedToken | TokenRow],
    width: int,
    height: int,
    cfg: AlpConfig,
    points: np.ndarray | None = None,
) -> NarrativeAlps:
    """ALPs of one narrative whose caption was tagged into ``tokens``.

    All phrases at once: their ``(T1, T2)`` (:func:`~omniseg.curate.phrases.phrase_intervals`),
    an F x P mask of the points in their windows, and masked min / max of x and y. The box of a
    kept phrase is then :func:`points_box`'s arithmetic on those extremes; where an extreme is
    0 or not finite (the sign of a zero, or a NaN, could depend on which equal point a reduction
    returns) it is :func:`points_box` itself on the phrase's window.

    Args:
        points: P x 3 (x, y, t) trace points, when already extracted (else from ``narrative.traces``).
    """
    out = NarrativeAlps()
    phrases, dropped = extract_phrases(narrative.caption, tokens, cfg.stuff, cfg.non_object)
    out.dropped.update({k: v for k, v in dropped.items() if v})
    if not phrases:
        return out
    if points is None:
        points = trace_array(narrative)
    t1, t2, aligned = phrase_intervals(narrative.caption, narrative.timed_caption, [(p.start, p.end) for p in phrases])
    t = points[:, 2]
    win = (t[None, :] > (t1 - cfg.t_pad)[:, None]) & (t[None, :] < (t2 + cfg.t_pad)[:, None])  # F x P
    counts = win.sum(axis=1).tolist()
    shape = win.shape
    ext = [
        np.min(np.broadcast_to(points[:, 0], shape), axis=1, where=win, initial=np.inf),
        np.max(np.broadcast_to(points[:, 0], shape), axis=1, where=win, initial=-np.inf),
        np.min(np.broadcast_to(points[:, 1], shape), axis=1, where=win, initial=np.inf),
        np.max(np.broadcast_to(points[:, 1], shape), axis=1, where=win, initial=-np.inf),
    ]
    exact = (np.isfinite(np.stack(ext)) & (np.stack(ext) != 0)).all(axis=0).tolist()
    x_min, x_max, y_min, y_max = (e.tolist() for e in ext)
    t1l, t2l, ok = t1.tolist(), t2.tolist(), aligned.tolist()
    fw, fh = float(width), float(height)
    for i, p in enumerate(phrases):
        if not ok[i]:
            out.dropped["not_aligned"] += 1
            continue
        if counts[i] < cfg.min_points:
            out.dropped["too_few_points"] += 1
            continue
        if exact[i]:
            x0, x1 = min(max(x_min[i] * width, 0.0), fw), min(max(x_max[i] * width, 0.0), fw)
            y0, y1 = min(max(y_min[i] * height, 0.0), fh), min(max(y_max[i] * height, 0.0), fh)
            box = None if x1 <= x0 or y1 <= y0 else (x0, y0, x1, y1)
        else:
            box = points_box(points[win[i]], width, height)
        if box is None:
            out.dropped["degenerate_box"] += 1
            continue
        out.alps.append(Alp(p.text, box, counts[i], t1l[i], t2l[i]))
    return out


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
