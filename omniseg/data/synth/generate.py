"""Generate the synthetic dataset on disk in the real formats.

Layout of ``out_dir``::

    images/0000000.png ...     RGB images
    instances.json             COCO instances (exact boxes + RLE masks)
    captions.json              COCO captions
    narratives.jsonl           Localized Narratives (one JSON object per line)
    panoptic.json, panoptic/   COCO panoptic (things + stuff, PNG id maps)
    synth_config.json          the resolved SynthConfig

Re-running is resumable: an image whose PNG already on disk has the same content hash as
the freshly generated one is not rewritten; the generator's own PNGs (``images/<7+ digits>.png``)
of an earlier, larger run are removed once the new annotations are written, so ``images/``
matches them. Generation is parallel over ``workers``
processes; every image depends only on ``(seed, index)``, so the output does not depend on
the number of workers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from omniseg.data.records import ImageRecord, RecordSet
from omniseg.data.synth import lexicon
from omniseg.data.synth.world import GENERATOR_VERSION, SynthConfig, generate_image
from omniseg.utils.atomic import atomic_write_bytes, atomic_write_json
from omniseg.utils.workers import worker_pool

IMAGES_DIR = "images"
PANOPTIC_DIR = "panoptic"


@dataclass
class GenerateStats:
    """Counts from one :func:`generate_dataset` run."""

    written: int = 0
    unchanged: int = 0
    removed: int = 0


#: the generator's image file names (``f"{index:07d}.png"``, see ``generate_image``)
_OWN_IMAGE = re.compile(r"\d{7,}\.png")


def png_bytes(image: np.ndarray) -> bytes:
    """Encode an H x W x 3 uint8 image as PNG (deterministic bytes for the same pixels)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _sha256_file(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


def _make_one(args: tuple[SynthConfig, int, str]) -> tuple[ImageRecord, bool]:
    cfg, index, image_dir = args
    image, record = generate_image(cfg, index)
    data = png_bytes(image)
    path = Path(image_dir) / record.file_name
    if _sha256_file(path) == hashlib.sha256(data).hexdigest():
        return record, False
    atomic_write_bytes(path, data)
    return record, True


def remove_stale_images(image_dir: str | os.PathLike, keep: set[str]) -> int:
    """Delete the generator's own PNGs in ``image_dir`` not named in ``keep`` (left by an earlier
    run with more images); other files are never touched. Returns how many were removed."""
    removed = 0
    for e in os.scandir(image_dir):
        if e.name not in keep and _OWN_IMAGE.fullmatch(e.name) and e.is_file(follow_symlinks=False):
            os.unlink(e.path)
            removed += 1
    return removed


def synth_recordset(records: list[ImageRecord], image_root: str = "", name: str = "synth",
                    vocabulary: str = "evaluation") -> RecordSet:
    """Wrap synthetic records with the categories (things then stuff) of the world's ``vocabulary``."""
    cats = lexicon.categories() if vocabulary == "evaluation" else lexicon.pretraining_categories()
    return RecordSet(records=records, categories=cats, image_root=image_root, name=name)


def generate_records(
    cfg: SynthConfig, image_dir: str | os.PathLike, workers: int = 1, progress: bool = True
) -> tuple[list[ImageRecord], GenerateStats]:
    """Generate ``cfg.num_images`` images into ``image_dir`` (skipping unchanged files).

    Returns:
        the records in index order and the written / unchanged counts.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    Path(image_dir).mkdir(parents=True, exist_ok=True)
    jobs = [(cfg, i, str(image_dir)) for i in range(cfg.num_images)]
    bar = dict(total=len(jobs), desc="synth images", disable=not progress or not sys.stderr.isatty(), leave=False)
    stats = GenerateStats()
    records: list[ImageRecord] = []
    if workers == 1:
        results = map(_make_one, jobs)
        for record, wrote in tqdm(results, **bar):
            records.append(record)
            stats.written += wrote
            stats.unchanged += not wrote
    else:
        # every job reseeds from (seed, index), so nothing is shared with the parent (see pool_context)
        chunk = max(1, min(16, len(jobs) // (4 * workers) or 1))
        with worker_pool(workers) as pool:
            for record, wrote in tqdm(pool.imap(_make_one, jobs, chunksize=chunk), **bar):
                records.append(record)
                stats.written += wrote
                stats.unchanged += not wrote
    return records, stats


def generate_dataset(
    cfg: SynthConfig, out_dir: str | os.PathLike, workers: int = 1, progress: bool = True,
    stats: GenerateStats | None = None,
) -> RecordSet:
    """Generate the dataset and write it in every real format (see the module docstring).

    Args:
        cfg: world configuration (``cfg.num_images`` images, seeded by ``cfg.seed``).
        out_dir: output folder (created).
        workers: processes generating images.
        progress: show tqdm bars (only when stderr is a terminal).
        stats: if given, filled with this run's counts (written / unchanged / stale images removed).

    Returns:
        the RecordSet (``image_root`` = ``out_dir/images``), categories from the lexicon.
    """
    from omniseg.data.formats.captions import write_coco_captions
    from omniseg.data.formats.coco import write_coco_instances
    from omniseg.data.formats.narratives import write_narratives_jsonl
    from omniseg.data.formats.panoptic import write_coco_panoptic

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records, counts = generate_records(cfg, out / IMAGES_DIR, workers=workers, progress=progress)
    rs = synth_recordset(records, image_root=str(out / IMAGES_DIR), name=f"synth-seed{cfg.seed}",
                         vocabulary=cfg.vocabulary)
    write_coco_instances(out / "instances.json", rs)
    write_coco_captions(out / "captions.json", rs)
    write_narratives_jsonl(out / "narratives.jsonl", rs)
    write_coco_panoptic(out / "panoptic.json", out / PANOPTIC_DIR, rs, progress=progress)
    counts.removed = remove_stale_images(out / IMAGES_DIR, {r.file_name for r in records})
    atomic_write_json(
        out / "synth_config.json",
        {"generator_version": GENERATOR_VERSION, "config": dataclasses.asdict(cfg),
         "images_written": counts.written, "images_unchanged": counts.unchanged, "images_removed": counts.removed},
        indent=2,
    )
    if stats is not None:
        stats.written, stats.unchanged, stats.removed = counts.written, counts.unchanged, counts.removed
    return rs
