"""Narratives JSONL lines read fast for ALP curation: :func:`parse_lines` / :func:`parse_line` give a narrative
without its traces and the trace points as one P x 3 array (x, y, t). Traces in ``json.dumps``' layout are read
straight from the bytes (:func:`_json_numbers`, exact for numbers of up to 15 characters), those of
several lines at a time (:data:`GROUP_BYTES`; the array work has a fixed cost per call); anything else goes through
``json`` and the narratives reader, whose messages name a bad line's problem
(:mod:`omniseg.data.formats.narratives`)."""

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
_NUMBER_CHARS = b"0123456789.-"
#: traces text whose numbers :func:`parse_lines` reads in one array pass: lines are added to a group
#: until it holds this many bytes (the array work has a fixed cost per call; far more is past the CPU caches)
GROUP_BYTES = 1 << 18


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
    skeleton = text.translate(None, _NUMBER_CHARS)  # (no 'e', 'E', '+': they are not in the layout)
    n = _canonical_points(skeleton)
    return _slot_numbers(text, len(text) - len(skeleton)) if n else None


def _slot_numbers(text: bytes, n_chars: int) -> np.ndarray | None:
    """:func:`_json_numbers` of a ``text`` whose characters other than ``0-9 . -`` are already known
    to be the layout (:func:`_canonical_points`); ``n_chars``: the number of the others.

    Every check below is either about one slot or a count over the text that is at least the
    count over the slots in every part of it, so on texts joined as in :func:`_group_numbers`
    the result is that of each part (None when any part gives None).
    """
    b = np.frombuffer(text, dtype=np.uint8)
    colons = np.flatnonzero(b == ord(":"))  # 3n: the layout's, one per slot
    starts = colons + 2
    ends = np.empty_like(starts)  # x and y end 7 characters before the next slot (', "y": '), t at its '}'
    ends[0::3], ends[1::3], ends[2::3] = starts[1::3] - 7, starts[2::3] - 7, np.flatnonzero(b == ord("}"))
    if (b[colons + 1] != ord(" ")).any() or (b[ends[0::3]] != ord(",")).any() or (b[ends[1::3]] != ord(",")).any():
        return None  # a number character inside the layout's ': ', ', "y": ' or ', "t": '
    lengths = ends - starts
    if int(lengths.sum()) != n_chars:
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


FastParts = tuple[dict, bytes, int, int]


def _fast_parts(raw: bytes) -> FastParts | None:
    """(decoded line without its traces, the traces' text, its points, its number characters) for a
    line whose traces text is in json.dumps' layout (:func:`_canonical_points`; the numbers
    themselves are checked by :func:`_slot_numbers`); None when that cannot be shown (then the line
    takes the general path).

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
    text = raw[s:e]
    skeleton = text.translate(None, _NUMBER_CHARS)
    n = _canonical_points(skeleton)
    if not n:
        return None
    obj = json.loads(head + b'"' + _SENTINEL + b'"' + tail)
    if not isinstance(obj, dict) or obj.get("traces") != _SENTINEL.decode():
        return None
    return obj, text, n, len(text) - len(skeleton)


def _parse_line_fast(raw: bytes) -> tuple[dict, np.ndarray] | None:
    """(decoded line without its traces, P x 3 points) for a line whose traces are in json.dumps'
    canonical layout (:func:`_fast_parts`, :func:`_slot_numbers`); None when that cannot be shown."""
    parts = _fast_parts(raw)
    if parts is None:
        return None
    values = _slot_numbers(parts[1], parts[3])
    if values is None or not np.isfinite(values).all():
        return None
    return parts[0], values.reshape(-1, 3)


def _group_numbers(parts: list[FastParts]) -> list[np.ndarray | Exception | None]:
    """The P x 3 points of each :func:`_fast_parts` result (None: not shown valid and finite; an
    exception: what reading that part alone raised, other than a ValueError).

    The traces texts are joined into one traces array (their segments one after another, still in
    json.dumps' layout) and read by one :func:`_slot_numbers` call, which gives each part's values
    when every part is valid (see there); else, or when a value is not finite, part by part.
    """
    joined = b"[" + b", ".join([p[1][1:-1] for p in parts]) + b"]"
    try:
        values = _slot_numbers(joined, sum(p[3] for p in parts))
    except Exception:  # noqa: BLE001 - read part by part, which raises it again for its part
        values = None
    if values is not None and np.isfinite(values).all():
        return list(np.split(values.reshape(-1, 3), np.cumsum([p[2] for p in parts[:-1]])))
    out: list[np.ndarray | Exception | None] = []
    for p in parts:
        try:
            v = _slot_numbers(p[1], p[3])
        except ValueError:
            v = None
        except Exception as e:  # noqa: BLE001 - raised for its line (parse_lines)
            out.append(e)
            continue
        out.append(v.reshape(-1, 3) if v is not None and np.isfinite(v).all() else None)
    return out


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


ParsedLine = tuple[str, Narrative, np.ndarray]


def parse_lines(raws: list[bytes]) -> list[ParsedLine | Exception]:
    """:func:`parse_line` of each line: its result, or the exception it raises (returned, in order).

    Lines whose traces are in json.dumps' layout have their numbers read several lines at a time
    (:func:`_group_numbers`, about :data:`GROUP_BYTES` of text each); the others take :func:`_parse_general`.
    """
    parts: list[FastParts | None] = []
    for raw in raws:
        try:
            parts.append(_fast_parts(raw))
        except (ValueError, UnicodeDecodeError):  # the general path names the problem
            parts.append(None)
    points: list[np.ndarray | Exception | None] = [None] * len(raws)
    group: list[int] = []
    size = 0
    for i, p in enumerate(parts + [None]):
        if p is not None:
            group.append(i)
            size += len(p[1])
        if group and (size >= GROUP_BYTES or i == len(parts)):
            for k, v in zip(group, _group_numbers([parts[k] for k in group])):
                points[k] = v
            group, size = [], 0
    out: list[ParsedLine | Exception] = []
    for raw, p, v in zip(raws, parts, points):
        if isinstance(v, Exception):
            out.append(v)
            continue
        try:
            if p is not None and v is not None:
                image_id, narrative = _narrative_without_traces(p[0])
                out.append((image_id, narrative, v))
            else:
                out.append(_parse_general(raw))
        except Exception as e:  # noqa: BLE001 - handed to the caller, who raises what it does not handle
            out.append(e)
    return out


def parse_line(raw: bytes) -> ParsedLine:
    """One narratives JSONL line -> (image id, narrative without traces, P x 3 trace points).

    Validation is the narratives reader's (:func:`~omniseg.data.formats.narratives.parse_narrative_obj`,
    same messages); the traces, most of a line, take a vectorized path (building one ``TracePoint``
    per sample was the slowest step of curation), and the reader's parser runs on them only
    to name the problem when the fast check fails. Traces in json.dumps' layout are not even
    decoded by json (:func:`_parse_line_fast`; the numbers are read straight from the bytes).
    :func:`parse_lines` does the same for many lines, faster.

    Raises:
        json.JSONDecodeError / UnicodeDecodeError: malformed JSON.
        InvalidNarrative (a ValueError): the reader's message.
    """
    out = parse_lines([raw])[0]
    if isinstance(out, Exception):
        raise out
    return out


def _parse_general(raw: bytes) -> ParsedLine:
    """:func:`parse_line` through ``json.loads`` of the whole line (any layout)."""
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
    except (KeyError, TypeError, ValueError, OverflowError):  # (an int beyond the float range: OverflowError)
        ok = False
    if not ok:
        image_id, narrative = parse_narrative_obj(obj)  # raises with the reader's message
        return image_id, narrative, trace_array(narrative)
    return image_id, narrative, points
