"""Columnar reading of COCO annotations: the fast path of :func:`~omniseg.data.formats.coco.read_coco_instances`.

A 1M-box instances file read one Python call per field per annotation took ~3x as long as
parsing it; here plain box annotations become numpy columns as the file streams past
(:class:`AnnotationColumns`, ~80 bytes per box instead of a parsed dict of ~700), and are checked
against the images and categories with array operations (:func:`check_rows`).

The rule that keeps every message identical: a row is taken by the fast path only when it
certainly passes every check of the per-record reader; anything else (masks, string ids, a
missing key, a wrong type, an out-of-image box, ...) goes to that reader, which says what is
wrong exactly as before. Duplicate ids are resolved over all rows at the end
(:func:`duplicate_rows`) with the per-record reader's rule: an id is taken by its first row
that is otherwise valid; later rows with that id are duplicates.

The taken rows end in a :class:`BoxTable`, from which each record's instances are made when it is
first read (:class:`~omniseg.data.records.DeferredInstances`).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from operator import itemgetter
from typing import Any

import numpy as np

from omniseg.data.formats.validation import MAX_ID
from omniseg.data.records import Instance

#: ints beyond this convert to float with rounding; such rows (never valid boxes) take the slow path
_EXACT_INT = 2**53


class _Missing:
    """The value of an absent key (``None`` is a JSON value)."""

    def __repr__(self) -> str:
        return "<missing>"


MISSING = _Missing()
_NUMBER_TYPES = {int, float}


@dataclass
class Chunk:
    """Columns of the fast-path rows of one list of annotations (``base`` = index of its first row).

    ``pos``: row positions within the list (None: every row). ``xywh``: float64 N x 4.
    ``area``: NaN where absent / null. ``score``: None when no row has one, else NaN where absent.
    ``approx``: None when no row has ``box_quality: "approximate"``. Filled by :func:`check_rows`:
    ``rec`` (record index), ``xyxy`` (clipped box), ``ok`` (passes the image / category checks);
    it then drops ``image_ids`` and ``xywh`` (None), which nothing reads after it.
    """

    base: int
    n: int
    pos: np.ndarray | None
    ids: np.ndarray
    image_ids: np.ndarray | None
    cat_ids: np.ndarray
    xywh: np.ndarray | None
    crowd: np.ndarray
    area: np.ndarray
    score: np.ndarray | None
    approx: np.ndarray | None
    rec: np.ndarray | None = None
    xyxy: np.ndarray | None = None
    ok: np.ndarray | None = None

    @property
    def index(self) -> np.ndarray:
        """Global row index of each fast-path row."""
        return self.base + (np.arange(len(self.ids)) if self.pos is None else self.pos)


def _int_column(values: list) -> tuple[np.ndarray, np.ndarray]:
    """Integers within int64 (not bools, not floats) -> (int64 array, ok mask)."""
    n = len(values)
    if set(map(type, values)) <= {int}:
        try:
            arr = np.array(values, np.int64)
            return arr, arr != np.iinfo(np.int64).min  # |-2**63| > MAX_ID
        except OverflowError:
            pass
    ok = np.fromiter((type(v) is int and -MAX_ID <= v <= MAX_ID for v in values), bool, n)
    return np.array([v if o else 0 for v, o in zip(values, ok)], np.int64).reshape(n), ok


def _float_column(values: list, nonneg: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Optional finite (``nonneg``: and >= 0) numbers -> (float64 with NaN for absent / null,
    present mask, ok mask)."""
    n = len(values)
    types = set(map(type, values))
    if types <= _NUMBER_TYPES:  # all present
        try:
            arr = np.array(values, np.float64).reshape(n)
            with np.errstate(invalid="ignore"):
                ok = np.isfinite(arr) & ((np.abs(arr) <= _EXACT_INT) if int in types else True)
                ok &= ~(arr < 0) if nonneg else True
            return arr, np.ones(n, bool), ok
        except OverflowError:
            pass
    present = np.fromiter((v is not MISSING and v is not None for v in values), bool, n)
    ok = np.fromiter(
        (v is MISSING or v is None or type(v) is float or (type(v) is int and -_EXACT_INT <= v <= _EXACT_INT)
         for v in values), bool, n)
    arr = np.array([v if p and o else np.nan for v, p, o in zip(values, present, ok)], np.float64).reshape(n)
    with np.errstate(invalid="ignore"):
        ok &= ~present | (np.isfinite(arr) & ((arr >= 0) if nonneg else True))
    return arr, present, ok


def _box_column(boxes: list) -> tuple[np.ndarray, np.ndarray]:
    """``[x, y, w, h]`` lists of finite numbers with w, h > 0 -> (float64 N x 4, ok mask)."""
    n = len(boxes)
    xywh = None
    if set(map(type, boxes)) <= {list} and set(map(len, boxes)) <= {4}:
        flat = list(chain.from_iterable(boxes))
        if set(map(type, flat)) <= _NUMBER_TYPES:
            try:
                xywh = np.array(flat, np.float64).reshape(n, 4)  # float64 holds every JSON float
                ok = np.ones(n, bool)
            except OverflowError:  # an int beyond the float range: row by row below
                pass
    if xywh is None:
        ok = np.fromiter((type(b) is list and len(b) == 4 and all(type(v) in _NUMBER_TYPES for v in b)
                          for b in boxes), bool, n)
        rows = []
        for b, o in zip(boxes, ok):
            try:
                rows.append([float(v) for v in b] if o else [np.nan] * 4)
            except OverflowError:
                rows.append([np.nan] * 4)
        xywh = np.array(rows, np.float64).reshape(n, 4)
    with np.errstate(invalid="ignore"):
        ok &= np.isfinite(xywh).all(1) & (np.abs(xywh) <= _EXACT_INT).all(1) & (xywh[:, 2] > 0) & (xywh[:, 3] > 0)
    return xywh, ok


class AnnotationColumns:
    """Consumer of annotation lists (:func:`~omniseg.data.formats.validation.scan_json_object`).

    Rows that certainly pass the per-record checks not needing images / categories become
    :class:`Chunk` columns; every other row is kept as parsed in ``raw`` (index -> value) for
    the per-record reader. ``first_dict`` is the first annotation that is an object (for sniffing).
    """

    def __init__(self) -> None:
        self.n = 0
        self.chunks: list[Chunk] = []
        self.raw: dict[int, Any] = {}
        self.first_dict: dict | None = None

    def add(self, rows: list) -> None:
        n, base = len(rows), self.n
        self.n += n
        if not n:
            return
        ok = np.ones(n, bool)
        dicts = rows
        if not set(map(type, rows)) <= {dict}:
            ok = np.fromiter((type(a) is dict for a in rows), bool, n)
            dicts = [a if type(a) is dict else {} for a in rows]
        if self.first_dict is None:
            self.first_dict = next((a for a in rows if type(a) is dict), None)

        present = set().union(*dicts)  # keys found in any row

        def col(key: str) -> list:
            if key not in present:
                return [MISSING] * n
            try:
                return list(map(itemgetter(key), dicts))  # C loop when every row has the key
            except KeyError:
                return [a.get(key, MISSING) for a in dicts]

        ids, o = _int_column(col("id"))
        ok &= o
        image_ids, o = _int_column(col("image_id"))
        ok &= o
        cat_ids, o = _int_column(col("category_id"))
        ok &= o
        xywh, o = _box_column(col("bbox"))
        ok &= o
        seg = col("segmentation")
        if seg.count(MISSING) != n:  # an empty polygon list means "no mask"
            ok &= np.fromiter((v is MISSING or (type(v) is list and not v) for v in seg), bool, n)
        crowd_col = col("iscrowd")
        crowd_types = set(map(type, crowd_col))
        if crowd_types == {_Missing}:  # no row has the key (LVIS)
            crowd = np.zeros(n, bool)
        elif crowd_types <= {int, bool} and set(crowd_col) <= {0, 1}:  # the usual case: one C call
            crowd = np.array(crowd_col, bool).reshape(n)
        elif crowd_types <= {int, bool, _Missing} and set(crowd_col) <= {0, 1, MISSING}:
            crowd = np.fromiter((v is not MISSING and v == 1 for v in crowd_col), bool, n)
        else:
            ok &= np.fromiter((v is MISSING or (type(v) in (int, bool) and v in (0, 1)) for v in crowd_col), bool, n)
            crowd = np.fromiter((type(v) in (int, bool) and v == 1 for v in crowd_col), bool, n)
        area, _, o = _float_column(col("area"), nonneg=True)
        ok &= o
        score_col = col("score")
        score = None
        if score_col.count(MISSING) != n:
            score, _, o = _float_column(score_col)
            ok &= o
        quality = col("box_quality")
        approx = None
        if quality.count(MISSING) != n:
            ok &= np.fromiter((v is MISSING or v in ("exact", "approximate") for v in quality), bool, n)
            approx = np.fromiter((v == "approximate" for v in quality), bool, n)
        if ok.all():
            pos = None
        else:
            pos = np.flatnonzero(ok)
            for j in np.flatnonzero(~ok).tolist():
                self.raw[base + j] = rows[j]
            ids, image_ids, cat_ids, xywh, crowd, area = (a[pos] for a in (ids, image_ids, cat_ids, xywh, crowd, area))
            score = None if score is None else score[pos]
            approx = None if approx is None else approx[pos]
        if len(ids):
            self.chunks.append(Chunk(base, n, pos, ids, image_ids, cat_ids, xywh, crowd, area, score, approx))


def check_rows(
    chunk: Chunk, keys: np.ndarray, recs: np.ndarray, width: np.ndarray, height: np.ndarray,
    cat_ids: np.ndarray, tol: float,
) -> None:
    """The image / category / box-in-image checks of the per-record reader, on a chunk.

    ``keys`` (sorted int64) / ``recs``: the valid images with integer ids and their record
    index; ``width`` / ``height`` per record; ``cat_ids`` sorted. Sets ``chunk.rec``,
    ``chunk.xyxy`` (XYXY clipped to the image as ``_parse_bbox`` clips) and ``chunk.ok``.
    """
    ids = chunk.image_ids
    assert ids is not None and chunk.xywh is not None, "check_rows runs once per chunk"
    if len(keys):
        at = np.minimum(np.searchsorted(keys, ids), len(keys) - 1)
        found = keys[at] == ids
        rec = np.where(found, recs[at], 0)
    else:
        found, rec = np.zeros(len(ids), bool), np.zeros(len(ids), np.int64)
    ok = found & np.isin(chunk.cat_ids, cat_ids)
    if not len(width):  # no images: every row is unknown; any size keeps the arithmetic valid
        width, height = np.ones(1, np.int64), np.ones(1, np.int64)
    w_img, h_img = width[rec].astype(np.float64), height[rec].astype(np.float64)
    x, y, w, h = chunk.xywh.T
    x1, y1 = x + w, y + h
    ok &= ~((x < -tol) | (y < -tol) | (x1 > w_img + tol) | (y1 > h_img + tol))
    # max(v, 0.0) / min(v, W) as Python computes them: the first argument unless the second wins
    x0c, y0c = np.where(0.0 > x, 0.0, x), np.where(0.0 > y, 0.0, y)
    x1c, y1c = np.where(w_img < x1, w_img, x1), np.where(h_img < y1, h_img, y1)
    ok &= (x1c > x0c) & (y1c > y0c)
    chunk.rec, chunk.xyxy, chunk.ok = rec, np.stack([x0c, y0c, x1c, y1c], 1), ok
    chunk.image_ids = chunk.xywh = None  # ~40 bytes a row: 600 MB at 15M boxes


class BoxTable:
    """Taken fast-path rows of a whole file as columns grouped by record: the
    :class:`~omniseg.data.records.InstanceStore` of the records' deferred instances.

    Rows of record ``k`` are ``offsets[k]:offsets[k + 1]``, in file order. Per box: ``xyxy``
    (clipped, float64 x 4), ``ids`` (int64), ``cat_ids`` (int32 when they fit), ``crowd``,
    ``area`` (NaN: none in the file), ``score`` / ``approx`` (None when no row has one) -- ~53
    bytes against ~380 for the :class:`~omniseg.data.records.Instance` objects :meth:`make` builds.
    """

    __slots__ = ("names", "source", "offsets", "xyxy", "ids", "cat_ids", "crowd", "area", "score", "approx")

    def __init__(self, names: dict[int, str], source: str, offsets: np.ndarray, columns: dict[str, Any]) -> None:
        self.names, self.source, self.offsets = names, source, offsets
        for k in ("xyxy", "ids", "cat_ids", "crowd", "area", "score", "approx"):
            setattr(self, k, columns[k])

    def __reduce__(self) -> tuple:
        return (BoxTable, (self.names, self.source, self.offsets, {k: getattr(self, k) for k in self.__slots__[3:]}))

    def count(self, key: int) -> int:
        return int(self.offsets[key + 1] - self.offsets[key])

    def make(self, key: int) -> list[Instance]:
        """Record ``key``'s instances, field for field what the per-record reader makes."""
        s, e = int(self.offsets[key]), int(self.offsets[key + 1])
        m = e - s
        cid = self.cat_ids[s:e].tolist()
        area = [None if a != a else a for a in self.area[s:e].tolist()]  # NaN: none in the file
        score = [None] * m if self.score is None else [None if v != v else v for v in self.score[s:e].tolist()]
        quality = ["exact"] * m if self.approx is None else [
            "approximate" if q else "exact" for q in self.approx[s:e].tolist()]
        return list(map(Instance, map(self.names.__getitem__, cid), cid, map(tuple, self.xyxy[s:e].tolist()),
                        quality, [None] * m, [self.source] * m, self.crowd[s:e].tolist(), score,
                        self.ids[s:e].tolist(), area))



def duplicate_rows(aid: np.ndarray, aid_ok: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Which rows are duplicates under the per-record reader's rule (bool per row).

    Rows are read in order; a row whose id parsed (``aid_ok``) is a duplicate when an earlier
    row with the same id was taken, and a row is taken when it is ``valid`` (passes every
    other check) and not a duplicate. So an id is taken by its first valid row, and every later
    row with that id (valid or not) is a duplicate.
    """
    dup = np.zeros(len(aid), bool)
    sel = np.flatnonzero(aid_ok)
    a = aid[sel]
    if len(a) < 2 or (a[1:] > a[:-1]).all():  # strictly increasing: no two alike
        return dup
    order = np.argsort(a, kind="stable")  # equal ids stay in file order
    s = a[order]
    start = np.r_[True, s[1:] != s[:-1]]
    if start.all():
        return dup
    v = valid[sel][order].astype(np.int64)
    before = np.cumsum(v) - v  # valid rows before this one (all groups)
    group = np.cumsum(start) - 1
    before -= before[np.flatnonzero(start)][group]  # ... within its id group
    dup[sel[order]] = before >= 1
    return dup
