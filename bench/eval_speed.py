"""Benchmark: COCO evaluation time, pycocotools vs faster-coco-eval, on a synthetic set.

Default size (the issue's): 5,000 images x 10 ground-truth instances x 20 detections, masks
and boxes, 80 categories. Detections are jittered copies of the ground truth (some with the
wrong class) plus random boxes, so AP is neither 0 nor 1. Both engines get the same COCO
dicts (built once from RecordSets with :func:`omniseg.evaluation.instance.build_coco_inputs`);
the timed part is loading + evaluate + accumulate (:func:`run_coco_eval`). The COCO summary
numbers of both engines are compared (max absolute difference is reported).

    .venv/bin/python bench/eval_speed.py                 # full size, 1 run per engine
    .venv/bin/python bench/eval_speed.py --images 200 --runs 3

Writes bench/results/eval_speed.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import copy
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omniseg.data.records import Category, ImageRecord, Instance, RecordSet  # noqa: E402
from omniseg.evaluation.instance import build_coco_inputs, run_coco_eval, summarize_precision  # noqa: E402
from omniseg.evaluation.report import markdown_table, to_jsonable  # noqa: E402
from omniseg.ops.rle import rle_encode  # noqa: E402
from omniseg.utils.atomic import atomic_write_json  # noqa: E402


def ellipse_mask(size: int, box: tuple[float, float, float, float]) -> np.ndarray:
    """Filled ellipse inscribed in an XYXY box (so mask IoU differs from box IoU)."""
    x0, y0, x1, y1 = box
    c0, r0 = max(int(x0), 0), max(int(y0), 0)
    c1, r1 = min(int(np.ceil(x1)), size), min(int(np.ceil(y1)), size)
    yy, xx = np.mgrid[r0:r1, c0:c1] + 0.5
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, max((x1 - x0) / 2, 0.5), max((y1 - y0) / 2, 0.5)
    out = np.zeros((size, size), np.uint8)
    out[r0:r1, c0:c1] = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0
    return out


def random_box(rng: np.random.Generator, size: int) -> tuple[float, float, float, float]:
    w, h = rng.uniform(6, size * 0.6, 2)
    x, y = rng.uniform(0, size - w), rng.uniform(0, size - h)
    return (float(x), float(y), float(x + w), float(y + h))


def make_sets(
    n_images: int, n_gt: int, n_det: int, size: int, n_cats: int, seed: int, progress: bool
) -> tuple[RecordSet, RecordSet]:
    rng = np.random.default_rng(seed)
    cats = [Category(i + 1, f"class{i + 1}") for i in range(n_cats)]
    gts, preds = [], []
    for i in tqdm(range(n_images), desc="synthesizing", disable=not progress):
        g, p = [], []
        for _ in range(n_gt):
            b = random_box(rng, size)
            g.append(
                Instance("x", int(rng.integers(1, n_cats + 1)), b, mask=rle_encode(ellipse_mask(size, b)))
            )
        for k in range(n_det):
            if k < n_gt and rng.random() < 0.8:
                src = g[k]
                jitter = rng.normal(0, 0.08, 4) * np.array(
                    [src.box[2] - src.box[0], src.box[3] - src.box[1]] * 2
                )
                b = tuple(float(v) for v in np.clip(np.array(src.box) + jitter, 0, size))
                cat = src.category_id if rng.random() < 0.85 else int(rng.integers(1, n_cats + 1))
            else:
                b, cat = random_box(rng, size), int(rng.integers(1, n_cats + 1))
            if b[2] - b[0] < 1 or b[3] - b[1] < 1:
                b = random_box(rng, size)
            p.append(Instance("x", cat, b, mask=rle_encode(ellipse_mask(size, b)), score=float(rng.random())))
        gts.append(ImageRecord(i, f"{i}.jpg", size, size, g))
        preds.append(ImageRecord(i, f"{i}.jpg", size, size, p))
    return RecordSet(gts, cats, name="synthetic-gt"), RecordSet(preds, cats, name="synthetic-pred")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--gt", type=int, default=10, help="ground-truth instances per image")
    ap.add_argument("--dets", type=int, default=20, help="detections per image")
    ap.add_argument("--size", type=int, default=128, help="image side in pixels")
    ap.add_argument("--cats", type=int, default=80)
    ap.add_argument("--runs", type=int, default=1, help="timed runs per engine and IoU type (median)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "eval_speed.json"))
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    progress = sys.stderr.isatty() and not args.no_progress

    t0 = time.perf_counter()
    gt, pred = make_sets(args.images, args.gt, args.dets, args.size, args.cats, args.seed, progress)
    synth_s = time.perf_counter() - t0

    rows, results = [], {}
    for iou_type in ("segm", "bbox"):
        t0 = time.perf_counter()
        gt_dict, dets, _ = build_coco_inputs(gt, pred, iou_type)
        convert_s = time.perf_counter() - t0
        per_engine = {}
        for engine in ("pycocotools", "faster"):
            times, summary = [], None
            for _ in range(args.runs):
                g, d = copy.deepcopy(gt_dict), copy.deepcopy(dets)  # loadRes mutates its input
                t0 = time.perf_counter()
                precision, recall, _, _ = run_coco_eval(g, d, iou_type, 100, engine)
                times.append(time.perf_counter() - t0)
                summary = summarize_precision(precision, recall)
            per_engine[engine] = {"seconds": statistics.median(times), "runs": times, "summary": summary}
        a, b = per_engine["pycocotools"]["summary"], per_engine["faster"]["summary"]
        diff = max(
            (abs(a[k] - b[k]) for k in a if not (math.isnan(a[k]) and math.isnan(b[k]))),
            default=0.0,
        )
        speedup = per_engine["pycocotools"]["seconds"] / per_engine["faster"]["seconds"]
        results[iou_type] = {
            "convert_seconds": convert_s,
            "engines": per_engine,
            "max_abs_summary_diff": diff,
            "speedup": speedup,
        }
        rows.append(
            [
                iou_type,
                f"{per_engine['pycocotools']['seconds']:.2f}",
                f"{per_engine['faster']['seconds']:.2f}",
                f"{speedup:.1f}x",
                f"{100 * a['AP']:.2f}",
                f"{100 * b['AP']:.2f}",
                f"{diff:.1e}",
                f"{convert_s:.2f}",
            ]
        )

    report = {
        "config": vars(args),
        "synthesize_seconds": synth_s,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "results": results,
    }
    atomic_write_json(args.out, to_jsonable(report), indent=2)
    print(
        f"COCO evaluation, {args.images} images x {args.gt} GT x {args.dets} detections "
        f"({args.size}x{args.size}, {args.cats} classes), median of {args.runs} run(s)\n"
    )
    print(
        markdown_table(
            [
                "iou_type",
                "pycocotools s",
                "faster-coco-eval s",
                "speedup",
                "AP pycocotools",
                "AP faster",
                "max |diff|",
                "to-COCO s",
            ],
            rows,
        )
    )
    print(f"written to {args.out}")
    return report


if __name__ == "__main__":
    main()
