"""``omniseg segment --task semantic``: per image a label PNG, its JSON sidecar and a drawing.

Pixel value k + 1 of a label PNG is vocabulary entry k, 0 is no class (8-bit palette PNG in the
drawing's colours up to 255 classes, 16-bit grey beyond). ``--out DIR``: ``DIR/<stem>.png`` (drawing
with a legend), ``DIR/labels/<stem>.png`` + ``.json`` and ``DIR/predictions.json`` (the list);
``--out preds.json``: the label PNGs in ``preds.labels/``, drawings only with ``--overlays``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from omniseg.commands.common import removed_on_error, report_skips, unique_name
from omniseg.commands.segment import LISTED, Job, image_batches, progress_printer
from omniseg.data.errors import BadRecords


def labels_folder(out: str, coco: bool) -> str:
    """Where ``--task semantic`` writes label PNGs: ``DIR/labels``, or ``preds.json`` -> ``preds.labels``."""
    return str(Path(out).with_suffix(".labels")) if coco else os.path.join(out, "labels")



def segment_semantic(args: argparse.Namespace, paths: list[str], coco: bool, seg: Any, bad: BadRecords) -> int:
    """``--task semantic``: per image a label PNG, its JSON sidecar and a drawing (module docstring)."""
    from omniseg.utils.atomic import atomic_open, atomic_write_json
    from omniseg.viz.draw import draw_semantic, label_image, semantic_palette

    out, labels_dir = Path(args.out), Path(labels_folder(args.out, coco))
    drawings = (Path(args.overlays) if args.overlays else None) if coco else out
    index = out if coco else out / "predictions.json"
    encoding = "pixel value k + 1 is classes[k] (value k + 1); 0 is no class"
    names: list[str] = list(args.vocabulary or [])
    entries: list[dict[str, Any]] = []
    taken: set[str] = set()
    listed, advance = len(paths) <= LISTED, progress_printer(len(paths))

    def rel(p: Path | None) -> str | None:  # paths in the list: relative to its folder
        return None if p is None else os.path.relpath(p, index.parent)

    def classes(areas: list[int] | None = None) -> list[dict[str, Any]]:
        colors = semantic_palette(len(names))
        return [{"value": k + 1, "name": n, "color": list(colors[k]), **({"pixels": areas[k]} if areas else {})}
                for k, n in enumerate(names)]

    def flush(jobs: list[Job]) -> None:
        nonlocal names
        results = seg.predict_semantic_batch([j.image for j in jobs], args.vocabulary, args.min_score) if jobs else []
        for job, res in zip(jobs, results):
            names, colors = res.names, semantic_palette(len(res.names))
            name = unique_name(Path(job.path).stem, ".png", taken, job.index)
            areas, total = res.areas(), res.labels.size
            with atomic_open(labels_dir / name, "wb") as f:
                label_image(res.labels, colors).save(f, format="PNG")
            written.append(labels_dir / name)
            meta = labels_dir / Path(name).with_suffix(".json")
            atomic_write_json(meta, {"image": job.path, "labels": name, "width": job.image.shape[1],
                                     "height": job.image.shape[0], "encoding": encoding,
                                     "min_score": args.min_score, "classes": classes(areas)}, indent=1)
            written.append(meta)
            drawing = None
            if drawings is not None:
                drawing = drawings / name
                with atomic_open(drawing, "wb") as f:
                    draw_semantic(job.image, res.labels, names, colors=colors).save(f, format="PNG")
                written.append(drawing)
            entries.append({"file": job.path, "labels": rel(labels_dir / name), "sidecar": rel(meta),
                            "overlay": rel(drawing)})
            if listed:
                top = sorted((a, k) for k, a in enumerate(areas) if a)[::-1][:5]
                shown = ", ".join(f"{names[k]} {100 * a / total:.0f}%" for a, k in top) or "no class"
                print(f"{job.path}: {sum(map(bool, areas))} class(es): {shown}")
            advance()

    with removed_on_error(*[p for p in (labels_dir, drawings, out.parent if coco else out) if p is not None]) \
            as written:
        for jobs in image_batches(paths, bad, args.batch_size, advance):
            flush(jobs)
        atomic_write_json(index, {"task": "semantic", "encoding": encoding, "min_score": args.min_score,
                                  "classes": classes(), "images": entries}, indent=1)
    print(f"{len(entries)} label map(s) written to {labels_dir}, listed in {index}"
          + (f"; drawings in {drawings}" if drawings else ""))
    report_skips(bad)
    return 0
