"""Localized Narratives JSONL: read (streaming), attach to records, write.

Public format (one JSON object per line, https://google.github.io/localized-narratives/):
``{"dataset_id", "image_id", "annotator_id", "caption",
"timed_caption": [{"utterance", "start_time", "end_time"}, ...],
"traces": [[{"x", "y", "t"}, ...], ...], "voice_recording"}``.
Trace ``x, y`` are normalized by the image size and may fall slightly outside [0, 1] in the
real data; they are kept as they are. Image ids are strings in the files (COCO ids as
decimal text), matched against records' int or str ids (:func:`id_key`).

:func:`parse_narrative_obj` (one decoded line -> ``(image_id, Narrative)``, raising
:class:`InvalidNarrative`) is public for the ALP curation (:mod:`omniseg.curate.alps`), which
validates lines exactly as this reader does.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Iterator
from typing import Any

from tqdm import tqdm

from omniseg.data.errors import BadRecords
from omniseg.data.formats.validation import Invalid, open_regular, parse_json, short_repr
from omniseg.data.records import Narrative, RecordSet, TracePoint, Utterance
from omniseg.utils.atomic import atomic_open

REQUIRED_KEYS = ("dataset_id", "image_id", "annotator_id", "caption", "timed_caption", "traces")
UNKNOWN_IMAGE = "narrative for an image not in the record set"


class InvalidNarrative(Invalid, ValueError):
    """A narrative line is invalid; the message is the reason (without file or line).

    One of the shared reader errors (:class:`omniseg.data.formats.validation.Invalid`), and a
    ``ValueError`` as before it was public.
    """


def _number(value: Any, what: str, *where: int) -> float:
    """``value`` as a finite float; the error names ``what.format(*where)`` (formatted only then)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidNarrative(f"{what.format(*where)} is not a number ({short_repr(value)})")
    try:
        v = float(value)
    except OverflowError:  # an integer beyond the float range
        v = math.inf
    if not math.isfinite(v):
        raise InvalidNarrative(f"{what.format(*where)} is not finite ({short_repr(value)})")
    return v


def _string(obj: dict, key: str, what: str, *where: int) -> str:
    """``obj[key]``, a string; the error names ``what.format(*where)`` (formatted only then)."""
    if not isinstance(obj[key], str):
        raise InvalidNarrative(f"{what.format(*where)} is not a string ({short_repr(obj[key])})")
    return obj[key]


def parse_narrative_obj(obj: Any) -> tuple[str, Narrative]:
    """One decoded Localized Narratives line -> ``(image_id as str, Narrative)``.

    Raises:
        InvalidNarrative: not an object, a key missing, a wrong type (``caption``, ``dataset_id``,
            ``voice_recording`` and utterances are strings; ``image_id`` a non-empty string or an
            int), a non-finite number, or an utterance ending before it starts.
    """
    if not isinstance(obj, dict):
        raise InvalidNarrative("line is not a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in obj]
    if missing:
        raise InvalidNarrative(f"missing key(s) {', '.join(missing)}")
    if not isinstance(obj["caption"], str):
        raise InvalidNarrative("caption is not a string")
    image_id = obj["image_id"]
    if not isinstance(image_id, (str, int)) or isinstance(image_id, bool) or image_id == "":
        raise InvalidNarrative(f"image_id is not a string ({short_repr(image_id)})")
    dataset_id = _string(obj, "dataset_id", "dataset_id")
    voice = _string(obj, "voice_recording", "voice_recording") if "voice_recording" in obj else ""
    if not isinstance(obj["timed_caption"], list) or not isinstance(obj["traces"], list):
        raise InvalidNarrative("timed_caption and traces must be lists")
    timed = []
    for i, u in enumerate(obj["timed_caption"]):
        if not isinstance(u, dict) or not {"utterance", "start_time", "end_time"} <= set(u):
            raise InvalidNarrative(f"timed_caption[{i}] needs utterance, start_time, end_time")
        start = _number(u["start_time"], "timed_caption[{}].start_time", i)
        end = _number(u["end_time"], "timed_caption[{}].end_time", i)
        if end < start:
            raise InvalidNarrative(f"timed_caption[{i}]: end_time {end} < start_time {start}")
        timed.append(Utterance(_string(u, "utterance", "timed_caption[{}].utterance", i), start, end))
    traces = []
    for i, seg in enumerate(obj["traces"]):
        if not isinstance(seg, list):
            raise InvalidNarrative(f"traces[{i}] is not a list")
        pts = []
        for j, p in enumerate(seg):
            if not isinstance(p, dict) or not {"x", "y", "t"} <= set(p):
                raise InvalidNarrative(f"traces[{i}][{j}] needs x, y, t")
            pts.append(
                TracePoint(
                    _number(p["x"], "traces[{}][{}].x", i, j),
                    _number(p["y"], "traces[{}][{}].y", i, j),
                    _number(p["t"], "traces[{}][{}].t", i, j),
                )
            )
        traces.append(pts)
    annotator = obj["annotator_id"]
    if annotator is not None and (isinstance(annotator, bool) or not isinstance(annotator, (int, str))):
        raise InvalidNarrative(f"annotator_id is not an int or string ({short_repr(annotator)})")
    narrative = Narrative(
        caption=obj["caption"],
        timed_caption=timed,
        traces=traces,
        annotator_id=annotator,
        dataset_id=dataset_id,
        voice_recording=voice,
    )
    return str(image_id), narrative


def iter_narratives(
    path: str | os.PathLike, on_bad: BadRecords | None = None, progress: bool = True
) -> Iterator[tuple[str, Narrative]]:
    """Stream ``(image_id, Narrative)`` pairs from a Localized Narratives JSONL file.

    The file is read one line at a time (never held in memory). Blank lines are ignored.
    A bad line (malformed JSON, missing keys, non-finite trace values, an utterance ending
    before it starts) is reported through ``on_bad`` naming the file and line number.
    """
    bad = on_bad if on_bad is not None else BadRecords()
    with (
        open_regular(path, "rb") as f,
        tqdm(
            total=os.fstat(f.fileno()).st_size,
            unit="B",
            unit_scale=True,
            desc="narratives",
            disable=not progress or not sys.stderr.isatty(),
        ) as bar,
    ):
        for lineno, raw in enumerate(f, start=1):
            bar.update(len(raw))
            line = raw.strip()
            if not line:
                continue
            try:
                obj = parse_json(line)
            except Invalid as e:
                bad.report(str(path), f"line {lineno}", str(e))
                continue
            try:
                yield parse_narrative_obj(obj)
            except InvalidNarrative as e:
                bad.report(str(path), f"line {lineno}", str(e))


def id_key(image_id: int | str) -> str:
    """Match ``391895``, ``"391895"`` and ``"000000391895"``; other strings stay as they are."""
    s = str(image_id).strip()
    return str(int(s)) if s.isdigit() else s


def attach_narratives(
    rs: RecordSet, path: str | os.PathLike, on_bad: BadRecords | None = None, progress: bool = True
) -> int:
    """Append the narratives of ``path`` to the records of ``rs`` with the same image id.

    Narratives of images not in ``rs`` (a file usually covers a whole dataset, ``rs`` may be a
    subset) are skipped and always counted in ``on_bad.skipped`` under
    :data:`UNKNOWN_IMAGE`, whatever its policy; invalid lines follow the policy.

    Returns:
        the number of narratives attached.
    """
    bad = on_bad if on_bad is not None else BadRecords()
    by_id = {id_key(r.image_id): r for r in rs.records}
    attached = 0
    for lineno, (image_id, narrative) in enumerate(iter_narratives(path, on_bad=bad, progress=progress), 1):
        rec = by_id.get(id_key(image_id))
        if rec is None:
            bad.skip(str(path), f"narrative {lineno} (image {image_id})", UNKNOWN_IMAGE)
            continue
        rec.narratives.append(narrative)
        attached += 1
    return attached


def narrative_to_json(image_id: int | str, n: Narrative) -> dict[str, Any]:
    """One narrative as the public JSON object (image id as a string)."""
    return {
        "dataset_id": n.dataset_id,
        "image_id": str(image_id),
        "annotator_id": n.annotator_id,
        "caption": n.caption,
        "timed_caption": [
            {"utterance": u.utterance, "start_time": u.start_time, "end_time": u.end_time}
            for u in n.timed_caption
        ],
        "traces": [[{"x": p.x, "y": p.y, "t": p.t} for p in seg] for seg in n.traces],
        "voice_recording": n.voice_recording,
    }


def write_narratives_jsonl(path: str | os.PathLike, rs: RecordSet) -> int:
    """Write every narrative of ``rs`` as one JSONL line (atomically). Returns the line count."""
    n = 0
    with atomic_open(path, "w", encoding="utf-8") as f:
        for rec in rs.records:
            for narrative in rec.narratives:
                f.write(json.dumps(narrative_to_json(rec.image_id, narrative), allow_nan=False) + "\n")
                n += 1
    return n
