"""``omniseg segment --task panoptic``: per image a COCO panoptic PNG, one COCO panoptic JSON and drawings.

For models with panoptic output (``vloss``): every pixel belongs to one segment (a thing instance or a stuff
region) or to none. Each PNG pixel holds its segment id ``R + 256 G + 256^2 B`` (0, black: no segment;
:func:`omniseg.data.formats.panoptic.id_to_rgb`). The JSON is COCO panoptic: ``images`` (id = input order
1..N, ``file_name`` = the input's file name, ``path`` = the input as given, width, height),
``annotations`` (``image_id``, ``file_name`` = the PNG, ``segments_info``: ``id``, ``category_id``,
``isthing``, ``area``, ``bbox`` XYWH, ``score``, ``iscrowd`` 0) and ``categories`` (``id``, ``name``,
``isthing``): ``--vocabulary`` order 1..K, else the checkpoint's ids. A name is a stuff class where the
checkpoint has a stuff category of that name, a thing class otherwise. The repo's reader
(:func:`omniseg.data.formats.panoptic.read_coco_panoptic`) and the COCO panoptic tools read it back.

``--out DIR``: drawings in DIR, PNGs in ``DIR/panoptic/``, the JSON in ``DIR/panoptic.json``; ``--out
preds.json``: PNGs in ``preds/`` (COCO's ``panoptic_val2017.json`` + ``panoptic_val2017/`` layout), drawings
only with ``--overlays DIR``. ``--min-score``: segments scoring below it are left out (their pixels: no segment).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import numpy as np

from omniseg.commands.common import removed_on_error, report_skips, unique_name
from omniseg.commands.segment import LISTED, Job, category_table, image_batches, progress_printer
from omniseg.data.errors import BadRecords

ENCODING = "segment id = R + 256 G + 256^2 B of each PNG pixel; 0 is no segment"


def png_folder(out: str, coco: bool) -> str:
    """Where ``--task panoptic`` writes PNGs: ``DIR/panoptic``, or ``preds.json`` -> ``preds``."""
    return str(Path(out).with_suffix("")) if coco else os.path.join(out, "panoptic")


def segments_info(index: np.ndarray, segments: list[dict], category: dict[str, int],
                  min_score: float | None) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """(H x W segment ids 0 / 1..S, COCO ``segments_info``) from an index map into ``segments`` (-1: none);
    segments below ``min_score`` or without pixels are left out, the kept ones numbered 1, 2, ... in order."""
    ids = np.zeros(index.shape, np.int64)
    infos: list[dict[str, Any]] = []
    for j, s in enumerate(segments):
        m = index == j
        if not m.any() or (min_score is not None and s["score"] < min_score):
            continue
        ys, xs = np.nonzero(m)
        x0, y0 = int(xs.min()), int(ys.min())
        ids[m] = sid = len(infos) + 1
        infos.append({"id": sid, "category_id": category[s["text"]], "isthing": int(s["isthing"]),
                      "area": int(m.sum()), "bbox": [x0, y0, int(xs.max()) + 1 - x0, int(ys.max()) + 1 - y0],
                      "score": round(float(s["score"]), 4), "iscrowd": 0})
    return ids, infos


def segment_panoptic(args: argparse.Namespace, paths: list[str], coco: bool, seg: Any, bad: BadRecords) -> int:
    """``--task panoptic`` (module docstring)."""
    from PIL import Image

    from omniseg.data.formats.panoptic import id_to_rgb
    from omniseg.utils.atomic import atomic_open, atomic_write_json
    from omniseg.viz.draw import draw_semantic, semantic_palette

    out, pngs = Path(args.out), Path(png_folder(args.out, coco))
    drawings = (Path(args.overlays) if args.overlays else None) if coco else out
    index_file = out if coco else out / "panoptic.json"
    cats = seg.info.category_objects()
    stuff = {c.name for c in cats if not c.isthing}
    table = category_table({}, args.vocabulary, cats)
    images, annotations = [], []
    taken: set[str] = set()
    listed, advance = len(paths) <= LISTED, progress_printer(len(paths))

    def flush(jobs: list[Job]) -> None:
        results = seg.predict_panoptic_batch([j.image for j in jobs], args.vocabulary) if jobs else []
        for job, res in zip(jobs, results):
            for t in res.names:  # the model's own names when no vocabulary was given
                table.setdefault(t, max(table.values(), default=0) + 1)
            ids, infos = segments_info(res.index, res.segments, table, args.min_score)
            name = unique_name(Path(job.path).stem, ".png", taken, job.index)
            with atomic_open(pngs / name, "wb") as f:
                Image.fromarray(id_to_rgb(ids)).save(f, format="PNG")
            written.append(pngs / name)
            height, width = job.image.shape[:2]
            images.append({"id": job.image_id, "file_name": os.path.basename(job.path), "path": job.path,
                           "width": width, "height": height})
            annotations.append({"image_id": job.image_id, "file_name": name, "segments_info": infos})
            names = {cid: t for t, cid in table.items()}
            if drawings is not None:
                labels = [names[i["category_id"]] + (f" {i['score']:.2f}" if i["isthing"] else "") for i in infos]
                with atomic_open(drawings / name, "wb") as f:
                    draw_semantic(job.image, ids - 1, labels, colors=semantic_palette(len(infos))).save(f, format="PNG")
                written.append(drawings / name)
            if listed:
                shown = ", ".join(f"{names[i['category_id']]} {100 * i['area'] / ids.size:.0f}%"
                                  for i in sorted(infos, key=lambda i: -i["area"])[:5]) or "no segment"
                print(f"{job.path}: {len(infos)} segment(s): {shown}")
            advance()

    with removed_on_error(*[p for p in (pngs, drawings, out.parent if coco else out) if p is not None]) as written:
        for jobs in image_batches(paths, bad, args.batch_size, advance):
            flush(jobs)
        categories = [{"id": cid, "name": t, "isthing": int(t not in stuff)}
                      for t, cid in sorted(table.items(), key=lambda x: x[1])]
        atomic_write_json(index_file, {"info": {"description": "omniseg segment --task panoptic",
                                                "encoding": ENCODING, "min_score": args.min_score},
                                       "images": images, "annotations": annotations, "categories": categories},
                          indent=1)
    print(f"{len(images)} panoptic PNG(s) written to {pngs}, listed in {index_file}"
          + (f"; drawings in {drawings}" if drawings else ""))
    report_skips(bad)
    return 0
