"""Approximately localized phrases (ALPs) from Localized Narratives (ALP paper, section 3.1).

For each narrative: tag the caption (:mod:`.pos`), extract ``ADJ* NOUN+`` phrases and drop stuff
(:mod:`.phrases`), align each phrase's characters to the ``timed_caption`` utterances, take the
union ``(T1, T2)`` of its utterances' intervals and the trace points with ``t`` in
``(T1 - t_p, T2 + t_p)`` (t_p = 0.5 s, paper section 3.1), and the box spanned by those points
(normalized coordinates scaled by the image size, clipped to the image).

Output (``OUT/alps.jsonl``), one ALP per line::

    {"image_id": 391895, "phrase": "red car", "box": [x0, y0, x1, y1], "box_quality": "approximate",
     "source": "alp", "num_points": 23, "t_start": 3.1, "t_end": 3.9, "line": 17}

``box`` is XYXY in pixels; ``image_id`` is the dataset's id (int for COCO); ``line`` is the
narrative's line in the input. :func:`read_alps_jsonl` / :func:`attach_alps` read it back as
``Instance(text=phrase, category_id=None, box_quality="approximate", source="alp")``.
``OUT/stats.json`` holds the counts of the paper's Table 1 (images, ALPs, unique phrases).
The multi-process, resumable driver is :func:`curate_alps`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from omniseg.curate.phrases import (
    DEFAULT_NON_OBJECT,
    DEFAULT_STUFF,
    align_utterances,
    extract_phrases,
    phrase_interval,
)
from omniseg.curate.pos import TaggedToken
from omniseg.data.errors import BadRecordError, BadRecords
from omniseg.data.records import Box, Instance, Narrative, RecordSet
from omniseg.utils.atomic import atomic_open, atomic_write_json, atomic_write_text

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
    tokens: list[TaggedToken],
    width: int,
    height: int,
    cfg: AlpConfig,
    points: np.ndarray | None = None,
) -> NarrativeAlps:
    """ALPs of one narrative whose caption was tagged into ``tokens``.

    Args:
        points: P x 3 (x, y, t) trace points, when already extracted (else from ``narrative.traces``).
    """
    out = NarrativeAlps()
    phrases, dropped = extract_phrases(narrative.caption, tokens, cfg.stuff, cfg.non_object)
    out.dropped.update({k: v for k, v in dropped.items() if v})
    if not phrases:
        return out
    char_utt = align_utterances(narrative.caption, narrative.timed_caption)
    if points is None:
        points = trace_array(narrative)
    for p in phrases:
        interval = phrase_interval(p.start, p.end, char_utt, narrative.timed_caption)
        if interval is None:
            out.dropped["not_aligned"] += 1
            continue
        win = window_points(points, interval[0], interval[1], cfg.t_pad)
        if len(win) < cfg.min_points:
            out.dropped["too_few_points"] += 1
            continue
        box = points_box(win, width, height)
        if box is None:
            out.dropped["degenerate_box"] += 1
            continue
        out.alps.append(Alp(p.text, box, len(win), interval[0], interval[1]))
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


def id_key(image_id: int | str) -> str:
    """Match ``391895``, ``"391895"`` and ``"000000391895"`` (as the narratives reader does)."""
    s = str(image_id).strip()
    return str(int(s)) if s.isdigit() else s


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


# ---------------------------------------------------------------------------------------------
# streaming, multi-process, resumable driver

MANIFEST_VERSION = 1
CHUNKS_DIR = "chunks"
UNKNOWN_IMAGE = "narrative for an image not in the dataset"


@dataclass(frozen=True)
class Chunk:
    """Lines ``first_line .. first_line + num_lines - 1`` of the input, bytes ``[start, end)``."""

    index: int
    start: int
    end: int
    first_line: int
    num_lines: int


def plan_chunks(path: str | os.PathLike, chunk_lines: int) -> list[Chunk]:
    """Split a JSONL file into chunks of ``chunk_lines`` lines by one streaming pass (no full load)."""
    if chunk_lines < 1:
        raise ValueError(f"chunk_lines must be >= 1, got {chunk_lines}")
    chunks: list[Chunk] = []
    start = pos = 0
    n = 0
    with open(path, "rb") as f:
        for raw in f:
            pos += len(raw)
            n += 1
            if n == chunk_lines:
                chunks.append(Chunk(len(chunks), start, pos, len(chunks) * chunk_lines + 1, n))
                start, n = pos, 0
    if n:
        chunks.append(Chunk(len(chunks), start, pos, len(chunks) * chunk_lines + 1, n))
    return chunks


def chunk_paths(out_dir: str | os.PathLike, index: int) -> tuple[Path, Path]:
    """(ALP JSONL, done marker) of chunk ``index``."""
    d = Path(out_dir) / CHUNKS_DIR
    return d / f"alps-{index:06d}.jsonl", d / f"alps-{index:06d}.done.json"


_WORKER: dict[str, Any] = {}


def _init_worker(sizes: dict[str, tuple[int | str, int, int]], cfg: AlpConfig) -> None:
    from omniseg.curate.pos import load_tagger

    _WORKER.update(sizes=sizes, cfg=cfg, nlp=load_tagger(cfg.model))


def parse_line(raw: bytes) -> tuple[str, Narrative, np.ndarray]:
    """One narratives JSONL line -> (image id, narrative without traces, P x 3 trace points).

    Validation is the narratives reader's (:func:`omniseg.data.formats.narratives`' parser, same
    messages); the traces, most of a line, take a vectorized path (building one ``TracePoint``
    per sample was the slowest step of curation), and the reader's parser runs on them only
    to name the problem when the fast check fails.

    Raises:
        json.JSONDecodeError / UnicodeDecodeError: malformed JSON.
        omniseg.data.formats.narratives._Invalid (a ValueError): the reader's message.
    """
    from omniseg.data.formats.narratives import _Invalid, _parse

    obj = json.loads(raw)
    traces = obj.get("traces") if isinstance(obj, dict) else None
    if not isinstance(traces, list):
        _parse(obj)  # raises with the reader's message
        raise _Invalid("traces must be a list")  # unreachable unless the reader changes
    image_id, narrative = _parse({**obj, "traces": []})
    try:
        rows = [(p["x"], p["y"], p["t"]) for seg in traces for p in seg]
        ok = {type(v) for r in rows for v in r} <= {int, float}
        points = np.asarray(rows, dtype=np.float64).reshape(-1, 3)
        ok = ok and bool(np.isfinite(points).all())
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        image_id, narrative = _parse(obj)  # raises with the reader's message
        return image_id, narrative, trace_array(narrative)
    return image_id, narrative, points


def _process_chunk(job: tuple[str, Chunk, str, str]) -> dict[str, Any]:
    """Curate one chunk in a worker; writes its ALPs and then its done marker (both atomically).

    Returns the done marker's content, or ``{"error": [file, record, reason]}`` for a bad record
    under the "error" policy (exceptions with custom constructors do not cross process borders).
    """
    from omniseg.curate.pos import tag_texts
    from omniseg.data.formats.narratives import _Invalid  # the reader's own validation errors

    path, chunk, out_dir, policy = job
    sizes, cfg, nlp = _WORKER["sizes"], _WORKER["cfg"], _WORKER["nlp"]
    bad = BadRecords(policy=policy)
    items: list[tuple[int, int | str, int, int, Narrative, np.ndarray]] = []
    image_keys: set[str] = set()
    with open(path, "rb") as f:
        f.seek(chunk.start)
        data = f.read(chunk.end - chunk.start)
    try:
        for lineno, raw in enumerate(data.split(b"\n")[: chunk.num_lines], start=chunk.first_line):
            if not raw.strip():
                continue
            try:
                image_id, narrative, points = parse_line(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                bad.report(path, f"line {lineno}", f"malformed JSON ({e})")
                continue
            except _Invalid as e:
                bad.report(path, f"line {lineno}", str(e))
                continue
            key = id_key(image_id)
            if key not in sizes:
                bad.skipped[UNKNOWN_IMAGE] += 1
                if len(bad.examples) < bad.max_examples:
                    bad.examples.append(f"{path}: line {lineno} (image {image_id}): {UNKNOWN_IMAGE}")
                continue
            image_keys.add(key)
            real_id, w, h = sizes[key]
            items.append((lineno, real_id, w, h, narrative, points))
    except BadRecordError as e:
        return {"error": [e.file, e.record, e.reason]}
    dropped: Counter = Counter()
    lines = []
    n_alps = 0
    for (lineno, real_id, w, h, narrative, points), tokens in zip(
        items, tag_texts(nlp, (it[4].caption for it in items), cfg.batch_size)
    ):
        res = narrative_alps(narrative, tokens, w, h, cfg, points)
        dropped.update(res.dropped)
        for alp in res.alps:
            lines.append(json.dumps(alp_json(real_id, alp, lineno)) + "\n")
        n_alps += len(res.alps)
    out_file, done_file = chunk_paths(out_dir, chunk.index)
    atomic_write_text(out_file, "".join(lines))
    done = {
        "chunk": chunk.index, "lines": chunk.num_lines, "narratives": len(items), "alps": n_alps,
        "dropped": dict(dropped), "skipped": dict(bad.skipped), "examples": bad.examples,
        "image_keys": sorted(image_keys),
    }
    atomic_write_json(done_file, done)
    return done


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


class ResumeMismatchError(ValueError):
    """The output folder holds a run with other settings or another input file."""


def _check_manifest(out_dir: Path, manifest: dict[str, Any]) -> None:
    path = out_dir / "manifest.json"
    manifest = json.loads(json.dumps(manifest))  # tuples -> lists, as read back
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        if old != manifest:
            flat_old, flat_new = _flatten(old), _flatten(manifest)
            diff = sorted(k for k in set(flat_old) | set(flat_new) if flat_old.get(k) != flat_new.get(k))
            raise ResumeMismatchError(
                f"{out_dir}: holds a curation run with other settings ({', '.join(diff)} differ); "
                "use a new --out folder or delete this one"
            )
    else:
        atomic_write_json(path, manifest, indent=2)


def curate_alps(
    input_path: str | os.PathLike,
    sizes: dict[str, tuple[int | str, int, int]],
    out_dir: str | os.PathLike,
    cfg: AlpConfig | None = None,
    workers: int = 1,
    chunk_lines: int = 1000,
    on_bad: BadRecords | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Curate ALPs from a Localized Narratives JSONL file into ``out_dir``; resumable.

    The input is split into chunks of ``chunk_lines`` lines; each chunk is processed by one of
    ``workers`` processes (one spaCy pipeline per worker) and leaves ``chunks/alps-K.jsonl`` plus
    a done marker. Re-running with the same settings skips chunks that have their marker; then
    the chunk files are merged into ``alps.jsonl`` and the counts written to ``stats.json``.

    Args:
        sizes: image id key (:func:`id_key`) -> (dataset image id, width, height); see
            :func:`omniseg.commands.curate.image_sizes`.
        on_bad: policy for bad narrative lines; skips (and narratives of unknown images) are
            added to its counts.

    Returns:
        the statistics written to ``stats.json``.
    """
    import multiprocessing as mp
    import sys
    import time

    from tqdm import tqdm

    cfg = cfg or AlpConfig()
    bad = on_bad if on_bad is not None else BadRecords()
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if not os.path.isfile(input_path):
        raise FileNotFoundError(f"{input_path}: no such narratives file")
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stat = os.stat(input_path)
    manifest = {
        "version": MANIFEST_VERSION, "input": os.path.abspath(input_path), "input_bytes": stat.st_size,
        "input_mtime_ns": stat.st_mtime_ns, "chunk_lines": chunk_lines, "config": dataclasses.asdict(cfg),
    }  # not the bad-record policy: finished chunks are the same under both (a re-run may switch to skip)
    _check_manifest(out, manifest)
    chunks = plan_chunks(input_path, chunk_lines)
    todo = [c for c in chunks if not chunk_paths(out, c.index)[1].exists()]
    jobs = [(str(input_path), c, str(out), bad.policy) for c in todo]
    bar = tqdm(total=sum(c.num_lines for c in todo), unit="line", desc="ALP curation",
               disable=not progress or not sys.stderr.isatty())
    try:
        if not jobs:
            pass
        elif workers == 1 or len(jobs) == 1:
            _init_worker(sizes, cfg)
            results: Iterator[dict[str, Any]] = map(_process_chunk, jobs)
            _drain(results, bar)
        else:
            ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
            with ctx.Pool(min(workers, len(jobs)), initializer=_init_worker, initargs=(sizes, cfg)) as pool:
                _drain(pool.imap_unordered(_process_chunk, jobs), bar)
    finally:
        bar.close()
        _WORKER.clear()
    stats = _merge(out, chunks, bad)
    stats.update(resumed_chunks=len(chunks) - len(todo), chunks=len(chunks), workers=workers,
                 seconds=round(time.perf_counter() - t0, 3), config=dataclasses.asdict(cfg))
    atomic_write_json(out / "stats.json", stats, indent=2)
    return stats


def _drain(results: Iterator[dict[str, Any]], bar: Any) -> None:
    for res in results:
        if "error" in res:
            raise BadRecordError(*res["error"])
        bar.update(res["lines"])


def _merge(out: Path, chunks: list[Chunk], bad: BadRecords) -> dict[str, Any]:
    """Concatenate chunk outputs into ``alps.jsonl`` (streaming) and count Table-1 statistics."""
    phrases: Counter = Counter()
    alp_images: set[str] = set()
    narrative_images: set[str] = set()
    dropped: Counter = Counter()
    narratives = n_alps = 0
    with atomic_open(out / "alps.jsonl", "w", encoding="utf-8") as dst:
        for c in chunks:
            out_file, done_file = chunk_paths(out, c.index)
            done = json.loads(done_file.read_text(encoding="utf-8"))
            narratives += done["narratives"]
            dropped.update(done["dropped"])
            narrative_images.update(done["image_keys"])
            for reason, n in done["skipped"].items():
                bad.skipped[reason] += n
            bad.examples += done["examples"][: max(0, bad.max_examples - len(bad.examples))]
            with open(out_file, encoding="utf-8") as src:
                for line in src:
                    obj = json.loads(line)
                    phrases[obj["phrase"]] += 1
                    alp_images.add(id_key(obj["image_id"]))
                    n_alps += 1
                    dst.write(line)
    return {
        "narratives": narratives,
        "images_with_narratives": len(narrative_images),
        "images": len(alp_images),
        "alps": n_alps,
        "unique_phrases": len(phrases),
        "mean_alps_per_image": round(n_alps / len(alp_images), 3) if alp_images else 0.0,
        "mean_alps_per_narrative": round(n_alps / narratives, 3) if narratives else 0.0,
        "dropped_phrases": {k: dropped.get(k, 0) for k in DROP_REASONS},
        "skipped_records": dict(bad.skipped),
        "top_phrases": phrases.most_common(20),
    }
