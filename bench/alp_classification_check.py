"""Where a trained FCOS-MO run goes wrong: localization or naming (issue 5 investigation).

For the 10 highest-scoring detections per validation image: how many lie on some object (IoU >= 0.5),
and of those how many carry the object's class, its colour word, its shape word.

    python bench/alp_classification_check.py RUN_DIR [RUN_DIR ...] [--images 30]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def check(run: str, gt, load_image) -> dict:
    import torch

    from omniseg.api import Segmenter
    from omniseg.ops.boxes import box_iou
    from omniseg.recipes.scoring import predict_records

    names = {c.id: c.name.split(" ", 1) for c in gt.categories if c.isthing}
    seg = Segmenter.from_checkpoint(run)
    pred = predict_records(seg.model, seg.predictor, gt, load_image, progress=False, source=seg.recipe.name)
    by_id = {r.image_id: r for r in gt}
    out = {"run": run, "top_detections": 0, "on_object": 0, "class_right": 0, "colour_right": 0, "shape_right": 0}
    for r in pred.records:
        objs = [i for i in by_id[r.image_id].instances if i.box is not None]
        top = sorted(r.instances, key=lambda i: -i.score)[:10]
        if not top or not objs:
            continue
        best, j = box_iou(torch.tensor([p.box for p in top]), torch.tensor([o.box for o in objs])).max(1)
        for p, iou, k in zip(top, best.tolist(), j.tolist()):
            out["top_detections"] += 1
            if iou < 0.5:
                continue
            (pc, ps), (tc, ts) = names[p.category_id], names[objs[k].category_id]
            out["on_object"] += 1
            out["class_right"] += p.category_id == objs[k].category_id
            out["colour_right"] += pc == tc
            out["shape_right"] += ps == ts
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--images", type=int, default=30, help="validation images (synthetic, seed 1000)")
    args = ap.parse_args()
    from omniseg.recipes.data import open_source

    gt, load_image = open_source("synth", args.images, 1000, 256, progress=False)
    for run in args.runs:
        print(check(run, gt, load_image))


if __name__ == "__main__":
    main()
