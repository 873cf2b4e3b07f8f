"""Narratives JSONL lines read fast for ALP curation: :func:`parse_line` gives a narrative without its traces
and the trace points as one P x 3 array (x, y, t). Traces in ``json.dumps``' layout are read straight from the
bytes (:func:`_json_numbers`, exact for numbers of up to 15 characters); anything else goes through ``json`` and
the narratives reader, whose messages name a bad line's problem (:mod:`omniseg.data.formats.narratives`)."""

from __future__ import annotations

import json
import math
import re
from operator import ge
from typing import Any

import numpy as np

from omniseg.data.formats.narratives import InvalidNarrative, parse_narrative_obj
from omniseg.data.records import Narrative, Utterance


def trace_array(narrative: Narrative) -> np.ndarray:
    """All trace points of a narrative (every segment) as a P x 3 float64 array of (x, y, t)."""
    pts = [(p.x, p.y, p.t) for seg in narrative.traces for p in seg]
    return np.asarray(pts, dtype=np.float64).reshape(-1, 3)


_POINT_SKELETON = b'{"x": , "y": , "t": }'
_TRACES_KEY = re.compile(rb'"traces"\s*:\s*')
_SENTINEL = b"omniseg:traces"
_POW10 = np.array([float(10**i) for i in range(23)])  # the powers of ten that are exact doubles
_FAST_CHARS = 15  # numbers of at most this many characters are read by the exact fast path


def _canonical_points(skeleton: bytes) -> int:
    """Number of points when ``skeleton`` is ``[[P, P, ...], [P, ...], ...]`` with every ``P`` the
    point layout ``{"x": , "y": , "t": }`` (each segment non-empty), else 0."""
    if not (skeleton.startswith(b"[[") and skeleton.endswith(b"]]")):
        return 0
    unit, n = _POINT_SKELETON + b", ", 0
    for segment in skeleton[2:-2].split(b"], ["):  # the point layout holds no "], ["
        k = (len(segment) + 2) // len(unit)
        if not k or segment + b", " != unit * k:
            return 0
        n += k
    return n


def _json_numbers(text: bytes) -> np.ndarray | None:
    r"""The numbers of a traces array in the canonical layout of ``json.dumps``
    (``[[{"x": 0.1, "y": 0.2, "t": 0.3}, ...], ...]``) without exponents, or None for anything else
    (then the line takes the general path).

    Vectorized over the numbers. The text without the number characters ``0-9 . -`` must be that
    layout, and all number characters must sit in its slots (a slot runs from a ``": "`` to the
    next ``,`` or ``}``), each slot a JSON number ``-?(0|[1-9][0-9]*)(\.[0-9]+)?``. Values are json's
    (correctly rounded): a number of at most 15 characters is ``m / 10**k``, ``m`` its digits as an
    integer and ``k`` its digits after the dot, two exact doubles whose quotient IEEE division
    rounds correctly; longer numbers go through ``float`` as in json.
    """
    if b"e" in text or b"E" in text or b"+" in text:
        return None
    skeleton = text.translate(None, b"0123456789.-")
    n = _canonical_points(skeleton)
    if not n:
        return None
    b = np.frombuffer(text, dtype=np.uint8)
    colons = np.flatnonzero(b == ord(":"))  # 3n: the layout's, one per slot
    starts = colons + 2
    ends = np.empty_like(starts)  # x and y end 7 characters before the next slot (', "y": '), t at its '}'
    ends[0::3], ends[1::3], ends[2::3] = starts[1::3] - 7, starts[2::3] - 7, np.flatnonzero(b == ord("}"))
    if (b[colons + 1] != ord(" ")).any() or (b[ends[0::3]] != ord(",")).any() or (b[ends[1::3]] != ord(",")).any():
        return None  # a number character inside the layout's ': ', ', "y": ' or ', "t": '
    lengths = ends - starts
    if int(lengths.sum()) != len(text) - len(skeleton):
        return None  # number characters elsewhere in the layout
    neg = b[starts] == ord("-")
    if (lengths <= neg).any() or np.count_nonzero(b == ord("-")) != np.count_nonzero(neg):
        return None  # an empty slot, a lone '-', a '-' inside a number
    lead, after = b[starts + neg], b[starts + neg + 1]  # the first character after the sign, the next
    if (lead < ord("0")).any() or ((lead == ord("0")) & (after >= ord("0")) & (after <= ord("9"))).any():
        return None  # no digit first ('.5', '-.5', '--1'), a leading zero ('01')
    # the numbers right-aligned in the columns of a width x R matrix
    width = int(lengths.max())
    rows = np.arange(width, dtype=np.int32)[:, None]
    chars = np.concatenate((np.zeros(width, np.uint8), b))[rows + ends]
    inside = rows >= (width - lengths).astype(np.int32)
    is_dot = inside & (chars == ord("."))
    if np.count_nonzero(b == ord(".")) != np.count_nonzero(is_dot.any(axis=0)) or is_dot[-1].any():
        return None  # two dots in a number, a dot last ('1.'); a dot first is no digit first
    places = np.arange(width - 1, -1, -1)  # characters after each row
    frac = (is_dot * np.minimum(places, 255).astype(np.uint8)[:, None]).max(axis=0)  # digits after the dot
    top = len(_POW10) - 1  # (only numbers longer than _FAST_CHARS reach it; float reads them below)
    digits = (chars - ord("0")) * (inside & (chars >= ord("0")))
    n = _POW10[np.minimum(places, top)] @ digits  # the characters as a decimal integer, the dot a 0 digit
    # m: n without the dot's 0, (n + 9 * (n mod 10**frac)) / 10 -- all exact: n is an integer below
    # 10**15, so n / 10**frac rounds to less than an ulp from a value at least 1/n below the next
    # integer, and its floor is exact
    p = _POW10[np.minimum(frac, top)]
    m = np.where(frac > 0, (n + 9 * (n - np.floor(n / p) * p)) / 10, n)
    values = m / p
    values[neg] *= -1.0
    values[neg & (frac == 0) & (m == 0)] = 0.0  # json reads "-0" as the int 0 ("-0.0" stays -0.0)
    for i in np.flatnonzero(lengths > _FAST_CHARS).tolist():
        values[i] = float(text[starts[i] : ends[i]])
    return values


def _parse_line_fast(raw: bytes) -> tuple[dict, np.ndarray] | None:
    """(decoded line without its traces, P x 3 points) for a line whose traces are in json.dumps'
    canonical layout; None when that cannot be shown (then the line takes the general path).

    The traces array is cut out and replaced by a sentinel string, the rest decoded by json.
    That equals decoding the whole line when "traces" occurs once, unescaped, as the top-level
    key whose value is the cut-out array (no ``\\u`` escapes could spell another such key). The
    array is found from its key to the last ``]]`` of the line (if that is further than its own
    end, the cut-out text is no traces layout); the checks for the key, escapes and the sentinel
    read only the text around it, as the layout holds none of them.
    """
    m = _TRACES_KEY.search(raw)
    if m is None or m.start() == 0 or raw[m.start() - 1] == ord("\\"):
        return None
    s, e = m.end(), raw.rfind(b"]]") + 2
    if e <= s or not raw.startswith(b"[[{", s):
        return None
    head, tail = raw[:s], raw[e:]
    if head.count(b'"traces"') != 1 or b'"traces"' in tail or b"\\u" in head or b"\\u" in tail:
        return None
    if _SENTINEL in head or _SENTINEL in tail:
        return None
    values = _json_numbers(raw[s:e])
    if values is None or not np.isfinite(values).all():
        return None
    obj = json.loads(head + b'"' + _SENTINEL + b'"' + tail)
    if not isinstance(obj, dict) or obj.get("traces") != _SENTINEL.decode():
        return None
    return obj, values.reshape(-1, 3)


def _utterances(items: Any) -> list[Utterance] | None:
    """A decoded ``timed_caption`` as utterances when the reader would accept it (a list of objects
    with a string ``utterance`` and finite float times, none ending before it starts), else None."""
    if type(items) is not list:
        return None
    try:
        texts = [u["utterance"] for u in items]
        starts = [u["start_time"] for u in items]
        ends = [u["end_time"] for u in items]
    except (KeyError, TypeError):
        return None
    if {type(t) for t in texts} - {str} or ({type(v) for v in starts} | {type(v) for v in ends}) - {float}:
        return None  # (int times: the reader converts them)
    if not all(map(math.isfinite, starts)) or not all(map(math.isfinite, ends)) or not all(map(ge, ends, starts)):
        return None
    return list(map(Utterance, texts, starts, ends))


def _narrative_without_traces(obj: Any) -> tuple[str, Narrative]:
    """The reader's :func:`~omniseg.data.formats.narratives.parse_narrative_obj` on a decoded line
    with its traces emptied (same result, same errors), its per-utterance loop skipped when
    :func:`_utterances` shows that the timed caption is valid."""
    utterances = _utterances(obj.get("timed_caption")) if isinstance(obj, dict) else None
    if utterances is None:
        return parse_narrative_obj({**obj, "traces": []} if isinstance(obj, dict) else obj)
    image_id, narrative = parse_narrative_obj({**obj, "timed_caption": [], "traces": []})
    narrative.timed_caption = utterances
    return image_id, narrative


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
        image_id, narrative = _narrative_without_traces(obj)
        return image_id, narrative, points
    obj = json.loads(raw)
    traces = obj.get("traces") if isinstance(obj, dict) else None
    if not isinstance(traces, list):
        parse_narrative_obj(obj)  # raises with the reader's message
        raise InvalidNarrative("traces must be a list")  # unreachable unless the reader changes
    image_id, narrative = _narrative_without_traces(obj)
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
