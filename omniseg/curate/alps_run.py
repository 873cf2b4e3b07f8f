"""Streaming, multi-process, resumable driver of ALP curation (``omniseg curate alps``).

:func:`curate_alps` splits a Localized Narratives JSONL file into chunks of lines (one streaming
pass, :func:`plan_chunks`), curates each chunk in one of ``workers`` processes with the
per-narrative logic of :mod:`omniseg.curate.alps` (one spaCy pipeline per worker, tagging
through :class:`omniseg.curate.pos.PosTagger`), and leaves
``OUT/chunks/alps-K.jsonl`` plus a done marker per chunk (:func:`chunk_paths`, both written
atomically). A re-run with the same settings (``OUT/manifest.json``) skips chunks that have their
marker; then the chunk files are merged into ``OUT/alps.jsonl`` (format in
:mod:`omniseg.curate.alps`) and the counts of the ALP paper's Table 1 written to ``OUT/stats.json``.
A run killed at any point (even SIGKILL) resumes to the very bytes of an uninterrupted run; the
killed run's temporary files are swept by the re-run (:mod:`omniseg.utils.atomic`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from omniseg.curate.alps import DROP_REASONS, AlpConfig, alp_line, narratives_alps
from omniseg.curate.narrative_lines import parse_lines
from omniseg.curate.pos import available_model
from omniseg.data.errors import BadRecordError, BadRecords
from omniseg.data.formats.narratives import InvalidNarrative, id_key
from omniseg.data.records import Narrative
from omniseg.errors import UserError
from omniseg.utils.atomic import atomic_open, atomic_write_json, atomic_write_text
from omniseg.utils.workers import quiet_pool_worker, worker_pool

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
    from omniseg.curate.pos import PosTagger, load_tagger

    _WORKER.update(sizes=sizes, cfg=cfg, tagger=PosTagger(load_tagger(cfg.model)))


def _init_pool_worker(sizes: dict[str, tuple[int | str, int, int]], cfg: AlpConfig) -> None:
    """:func:`_init_worker` in a pool process.

    Ctrl-C is left to the parent, which then ends the pool with SIGTERM (``Pool.terminate``);
    that ends a worker quietly: the chunk file being written is removed, no traceback is printed.
    """
    quiet_pool_worker()
    _init_worker(sizes, cfg)


def _process_chunk(job: tuple[str, Chunk, str, str]) -> dict[str, Any]:
    """Curate one chunk in a worker; writes its ALPs and then its done marker (both atomically).

    Returns the done marker's content, or ``{"error": [file, record, reason]}`` for a bad record
    under the "error" policy (exceptions with custom constructors do not cross process borders).
    """
    path, chunk, out_dir, policy = job
    sizes, cfg, tagger = _WORKER["sizes"], _WORKER["cfg"], _WORKER["tagger"]
    bad = BadRecords(policy=policy)
    items: list[tuple[int, int | str, int, int, Narrative, np.ndarray]] = []
    image_keys: set[str] = set()
    with open(path, "rb") as f:
        f.seek(chunk.start)
        data = f.read(chunk.end - chunk.start)
    numbered = [(n, raw) for n, raw in enumerate(data.split(b"\n")[: chunk.num_lines], start=chunk.first_line)
                if raw.strip()]
    try:
        for (lineno, _), parsed in zip(numbered, parse_lines([raw for _, raw in numbered])):
            if isinstance(parsed, (json.JSONDecodeError, UnicodeDecodeError)):
                bad.report(path, f"line {lineno}", f"malformed JSON ({parsed})")
                continue
            if isinstance(parsed, InvalidNarrative):  # the reader's own validation errors
                bad.report(path, f"line {lineno}", str(parsed))
                continue
            if isinstance(parsed, Exception):
                raise parsed
            image_id, narrative, points = parsed
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
    tokens = tagger.pipe((it[4].caption for it in items), cfg.batch_size)
    results = narratives_alps([(it[4], toks, it[2], it[3], it[5]) for it, toks in zip(items, tokens)], cfg)
    for (lineno, real_id, *_), res in zip(items, results):
        dropped.update(res.dropped)
        for alp in res.alps:
            lines.append(alp_line(real_id, alp, lineno))
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


class ResumeMismatchError(UserError, ValueError):
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
        sizes: image id key (:func:`omniseg.data.formats.narratives.id_key`) -> (dataset image id,
            width, height); see
            :func:`omniseg.commands.curate.image_sizes`.
        on_bad: policy for bad narrative lines; skips (and narratives of unknown images) are
            added to its counts.

    Returns:
        the statistics written to ``stats.json``.
    """
    import sys
    import time

    from tqdm import tqdm

    cfg = cfg or AlpConfig()
    bad = on_bad if on_bad is not None else BadRecords()
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if not os.path.exists(input_path):
        raise FileNotFoundError(f"{input_path}: no such narratives file")
    if not os.path.isfile(input_path):
        raise UserError(f"{input_path}: not a regular file (expected a narratives JSONL file)")
    t0 = time.perf_counter()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
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
        if jobs and (workers == 1 or len(jobs) == 1):
            _init_worker(sizes, cfg)
            results: Iterator[dict[str, Any]] = map(_process_chunk, jobs)
            _drain(results, bar)
        elif jobs:
            # a missing model fails once, here, not in every worker (a pool would restart them forever);
            # each worker is a fresh interpreter that loads its own pipeline (see pool_context)
            available_model(cfg.model)
            with worker_pool(min(workers, len(jobs)), _init_pool_worker, (sizes, cfg)) as pool:
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
