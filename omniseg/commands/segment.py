"""``omniseg segment IMAGE ... --checkpoint CKPT [--vocabulary "a, b"] [--boxes ...]``.

Prints the instances found in each image, draws them to ``OUT/<name>.png`` and writes every
prediction (text, score, box, RLE mask) to ``OUT/predictions.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--checkpoint", required=True, help="run folder, its checkpoints/ folder, or a step_N folder")
    p.add_argument("--vocabulary", default=None, help='comma-separated class names / phrases, e.g. "red ring, crimson disk"')
    p.add_argument("--boxes", default=None, help='boxes for box-to-mask models: "x0,y0,x1,y1; x0,y0,x1,y1"')
    p.add_argument("--min-score", type=float, default=0.3)
    p.add_argument("--out", default="segment_out", help="folder for drawings and predictions.json")
    p.add_argument("--ema", action="store_true", help="use the EMA weights of the checkpoint")
    p.add_argument("--device", default="cpu")


def parse_vocabulary(text: str | None) -> list[str] | None:
    if text is None:
        return None
    words = [w.strip() for w in text.split(",") if w.strip()]
    if not words:
        raise SystemExit("--vocabulary is empty")
    return words


def parse_boxes(text: str | None) -> list[list[float]] | None:
    if text is None:
        return None
    boxes = []
    for part in text.split(";"):
        nums = [float(v) for v in part.replace(" ", "").split(",") if v]
        if len(nums) != 4 or not (nums[2] > nums[0] and nums[3] > nums[1]):
            raise SystemExit(f"--boxes: {part.strip()!r} is not x0,y0,x1,y1 with x1 > x0 and y1 > y0")
        boxes.append(nums)
    return boxes


def main(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from omniseg.api import Segmenter
    from omniseg.data.images import load_image
    from omniseg.utils.atomic import atomic_open, atomic_write_json
    from omniseg.viz.draw import draw_instances

    seg = Segmenter.from_checkpoint(args.checkpoint, device=args.device, use_ema=args.ema)
    vocabulary, boxes = parse_vocabulary(args.vocabulary), parse_boxes(args.boxes)
    out = Path(args.out)
    results = []
    for path in args.images:
        image = load_image(path)
        found = seg.predict(image, vocabulary=vocabulary, boxes=boxes, min_score=args.min_score)
        print(f"{path}: {len(found)} instance(s)")
        for i in found:
            box = ", ".join(f"{v:.0f}" for v in i.box) if i.box is not None else "-"
            print(f"  {i.text:<24} score {i.score if i.score is not None else float('nan'):.2f}  box [{box}]")
        drawing = out / f"{Path(path).stem}.png"
        with atomic_open(drawing, "wb") as f:
            draw_instances(image, found).save(f, format="PNG")
        results.append({"file": str(path), "instances": [asdict(i) for i in found]})
    atomic_write_json(out / "predictions.json", results)
    print(f"drawings and predictions.json written to {out}")
    return 0
