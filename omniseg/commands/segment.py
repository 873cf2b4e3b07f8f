"""``omniseg segment IMAGE ... --checkpoint CKPT [--vocabulary "a, b"] [--boxes ...]``.

Prints the instances found in each image, draws them to ``OUT/<name>.png`` and writes every
prediction (file, drawing, text, score, box, RLE mask) to ``OUT/predictions.json``. Two inputs
with the same file name get distinct drawings (``x.png``, ``x_<index>.png``): nothing written in
one run is overwritten by the same run, and a run that stops on an error leaves no drawings
behind. Prompt boxes partly outside an image are clipped to it; a box that does not overlap an
image at all is an error naming the box, the image and its size (under ``--on-bad-record skip``:
that image is counted as skipped and the others are written).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from omniseg.commands.common import (
    add_bad_record_arg,
    bad_records,
    load_image_or_skip,
    non_empty_path,
    removed_on_error,
    report_skips,
    unique_name,
    unit_float,
)


def parse_vocabulary(text: str) -> list[str]:
    """argparse type of ``--vocabulary``: comma-separated, non-empty names."""
    words = [w.strip() for w in text.split(",") if w.strip()]
    if not words:
        raise argparse.ArgumentTypeError(f"no class name or phrase in {text!r} (expected e.g. \"red ring, blue star\")")
    return words


def parse_boxes(text: str) -> list[list[float]]:
    """argparse type of ``--boxes``: ``"x0,y0,x1,y1; x0,y0,x1,y1"``, finite, x1 > x0 and y1 > y0
    (an empty part, e.g. after a trailing ``;``, is ignored)."""
    boxes = []
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        try:
            nums = [float(v) for v in part.split(",")]
        except ValueError:
            nums = []
        if len(nums) != 4 or not all(map(math.isfinite, nums)) or not (nums[2] > nums[0] and nums[3] > nums[1]):
            raise argparse.ArgumentTypeError(f"{part!r} is not x0,y0,x1,y1 (4 finite numbers, x1 > x0 and y1 > y0)")
        boxes.append(nums)
    if not boxes:
        raise argparse.ArgumentTypeError(f"no box in {text!r} (expected e.g. \"10,10,50,60; 0,0,20,20\")")
    return boxes


def device_name(text: str) -> str:
    """argparse type of ``--device``: a name torch knows (whether it exists here is checked later)."""
    import torch

    try:
        torch.device(text)
    except (RuntimeError, TypeError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device name (e.g. cpu, cuda, cuda:1)") from None
    return text


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--checkpoint", required=True, help="run folder, its checkpoints/ folder, or a step_N folder")
    p.add_argument("--vocabulary", type=parse_vocabulary, default=None,
                   help='comma-separated class names / phrases, e.g. "red ring, crimson disk"')
    p.add_argument("--boxes", type=parse_boxes, default=None,
                   help='boxes for box-to-mask models: "x0,y0,x1,y1; x0,y0,x1,y1", clipped to each image '
                   '(write --boxes=-5,0,20,20 when the first number is negative)')
    p.add_argument("--min-score", type=unit_float, default=0.3, help="hide predictions below this score (0..1)")
    p.add_argument("--out", type=non_empty_path, default="segment_out", help="folder for drawings and predictions.json")
    p.add_argument("--ema", action="store_true", help="use the EMA weights of the checkpoint")
    p.add_argument("--device", type=device_name, default="cpu", help="cpu, cuda, cuda:N, ...")
    add_bad_record_arg(p)


def main(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from omniseg.api import BoxError, Segmenter, clip_boxes, resolve_device
    from omniseg.utils.atomic import atomic_open, atomic_write_json
    from omniseg.viz.draw import draw_instances

    device = resolve_device(args.device, key="--device")  # before minutes of model loading
    seg = Segmenter.from_checkpoint(args.checkpoint, device=str(device), use_ema=args.ema)
    bad = bad_records(args)
    out = Path(args.out)
    results, taken = [], set()
    with removed_on_error(out) as written:  # no drawings without their predictions.json
        for index, path in enumerate(args.images):
            image = load_image_or_skip(path, bad)
            if image is None:
                continue
            height, width = image.shape[:2]
            try:
                boxes = None if args.boxes is None else clip_boxes(args.boxes, width, height, str(path))
            except BoxError as e:  # e.g. a box beyond a small image: under skip, that image only
                if bad.policy == "error":
                    raise
                bad.skip(str(path), "--boxes", str(e).removeprefix(f"{path}: "))
                continue
            found = seg.predict(image, vocabulary=args.vocabulary, boxes=boxes, min_score=args.min_score)
            print(f"{path}: {len(found)} instance(s)")
            for i in found:
                box = ", ".join(f"{v:.0f}" for v in i.box) if i.box is not None else "-"
                print(f"  {i.text:<24} score {i.score if i.score is not None else float('nan'):.2f}  box [{box}]")
            drawing = unique_name(Path(path).stem, ".png", taken, index)
            with atomic_open(out / drawing, "wb") as f:
                draw_instances(image, found).save(f, format="PNG")
            written.append(out / drawing)
            results.append({"file": str(path), "drawing": drawing, "instances": [asdict(i) for i in found]})
        atomic_write_json(out / "predictions.json", results)
    print(f"{len(results)} drawing(s) and predictions.json written to {out}")
    report_skips(bad)
    return 0
