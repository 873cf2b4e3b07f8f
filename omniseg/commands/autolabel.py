"""``omniseg autolabel BOXES --images DIR --checkpoint RUN --out masks.json``: masks for a file of boxes.

Any box-prompted model (a recipe whose ``boxes`` is not "none": the MAL labeler, Mask^X R-CNN's mask branch, the toy
``box_to_mask``) segments every box of a COCO / LVIS instances file, or of an Open Images boxes CSV
(with ``--classes``; written out as COCO JSON). The output is the input -- every field, image,
category and annotation in the same order -- with, on each labelled annotation, ``segmentation``
(COCO RLE, counts as text), ``mask_score`` (the model's score for the box; 1.0 for models that do
not score masks) and ``provenance`` (labeler recipe, checkpoint folder, SHA-256 of its weights and
of its config), plus ``info.autolabel`` (input and checkpoint hashes, settings, counts). An
annotation that already has a mask is left as it is. No box is dropped: one without a mask says
why in ``autolabel_skipped`` (``box side under N px`` / ``box outside the image`` after clipping,
``image missing or unreadable`` and ``bad record`` under ``--on-bad-record skip``) and is counted
in the summary.

Resumable (a re-run after a crash or ``kill -9`` skips the finished chunks of ``--chunk-images``
images) and sharded over ``torchrun`` ranks (rank r labels chunks r, r + W, ...; rank 0 merges):
see :mod:`omniseg.autolabel_run`. Train on the result with a config line, e.g.
``omniseg train configs/maskx_smoke.yaml data.train=masks.json data.train_images=DIR``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os

from omniseg.commands.common import (
    add_bad_record_arg,
    bad_records,
    check_out_file,
    check_output_not_input,
    non_empty_path,
    non_negative_float,
    positive_float,
    positive_int,
)
from omniseg.errors import UsageError, UserError

#: recipes whose predictor segments given boxes -> whether it reads the boxes' class names
#: (Mask^X R-CNN's mask head is class-specific; the others segment any box the same way)


def register(p: argparse.ArgumentParser) -> None:
    from omniseg.commands.segment import device_name

    p.add_argument("boxes", metavar="BOXES",
                   help="COCO / LVIS instances JSON with boxes (segmentation absent or empty), or an Open Images "
                   "boxes CSV (with --classes)")
    p.add_argument("--images", required=True, help="folder the images' file names are relative to")
    p.add_argument("--checkpoint", required=True, help="run of a box-prompted model (run folder or step_N)")
    p.add_argument("--out", required=True, type=non_empty_path, help="output COCO JSON (written atomically)")
    p.add_argument("--classes", default=None, metavar="CSV",
                   help="Open Images class descriptions (LabelName,DisplayName) for a CSV input")
    p.add_argument("--batch-size", type=positive_int, default=8, help="images per forward pass")
    p.add_argument("--chunk-images", type=positive_int, default=64,
                   help="images per resumable chunk (<out>.parts/part-K.jsonl); keep it when resuming")
    p.add_argument("--min-box-side", type=positive_float, default=1.0, metavar="PX",
                   help="boxes thinner than this (after clipping to the image) get no mask and are counted")
    p.add_argument("--device", type=device_name, default="cpu",
                   help="cpu, cuda, cuda:N (under torchrun, cuda means cuda:LOCAL_RANK)")
    p.add_argument("--ema", action="store_true", help="use the EMA weights of the checkpoint")
    p.add_argument("--test-theta", type=non_negative_float, default=None, metavar="θ",
                   help="MAL: grow each box by θ/2 of its half-extent on every side before cropping it (default: "
                   "the checkpoint's model.test_theta; BENCHMARKS.md 'Test-time margin' measures the choice)")
    p.add_argument("--wait-timeout", type=positive_float, default=3600.0, metavar="S",
                   help="sharded runs: how long rank 0 waits for the other ranks' chunks")
    add_bad_record_arg(p)


def ranks() -> tuple[int, int]:
    """(rank, world size) from torchrun's ``RANK`` / ``WORLD_SIZE`` ((0, 1) when unset)."""
    raw_rank, raw_world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
    if raw_world in (None, "", "1") and raw_rank in (None, "", "0"):
        return 0, 1
    try:
        rank, world = int(raw_rank or ""), int(raw_world or "")
    except ValueError:
        raise UserError(f"RANK={raw_rank!r} WORLD_SIZE={raw_world!r}: expected whole numbers (set both, or "
                        "launch with torchrun)") from None
    if not 0 <= rank < world:
        raise UserError(f"RANK={rank} WORLD_SIZE={world}: the rank must be in 0..{world - 1}")
    return rank, world


def checkpoint_facts(checkpoint: str, ema: bool) -> tuple[str, dict[str, str]]:
    """(recipe name, provenance) of a checkpoint, checked to be box-prompted before any model is built."""
    from omniseg.autolabel_run import sha256_file
    from omniseg.data.formats.validation import load_json_file
    from omniseg.engine.checkpoint import resolve_checkpoint
    from omniseg.recipes.table import RECIPES

    step = resolve_checkpoint(checkpoint)
    config_file = step / "config.json"
    config = load_json_file(config_file) if config_file.exists() else {}
    recipe = config.get("recipe") if isinstance(config, dict) else None
    if recipe not in RECIPES or RECIPES[recipe].boxes == "none":
        known = ", ".join(sorted(r.name for r in RECIPES.values() if r.boxes != "none"))
        raise UserError(f"{checkpoint}: a {recipe or 'model without a recipe in its config.json'} checkpoint does "
                        f"not segment given boxes; autolabel needs a box-prompted model ({known})")
    weights = step / ("ema.safetensors" if ema else "model.safetensors")
    if not weights.exists():
        raise FileNotFoundError(f"{weights}: not in the checkpoint" + (" (trained without EMA?)" if ema else ""))
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    return recipe, {"labeler": recipe, "checkpoint": os.path.abspath(step), "checkpoint_sha256": sha256_file(weights),
                    "config": "sha256:" + hashlib.sha256(canonical).hexdigest()}


def main(args: argparse.Namespace) -> int:
    from omniseg.api import Segmenter, resolve_device
    from omniseg.autolabel_run import autolabel, parts_dir, read_boxes

    check_out_file(args.out)
    if args.out == "-":
        raise UsageError("--out: give a file name (the output is merged from resumable parts, not streamed)")
    check_output_not_input([args.out, str(parts_dir(args.out))], [args.boxes, args.classes])
    if not os.path.isdir(args.images):
        raise UserError(f"{args.images}: --images is not a folder")
    rank, world = ranks()
    device = args.device
    if device == "cuda" and os.environ.get("LOCAL_RANK"):
        device = f"cuda:{os.environ['LOCAL_RANK']}"  # torchrun: one GPU per process
    device = resolve_device(device, key="--device")
    recipe, provenance = checkpoint_facts(args.checkpoint, args.ema)
    if args.test_theta is not None and recipe != "mal":
        raise UsageError(f"--test-theta: only MAL crops its boxes with a margin; {args.checkpoint} is a {recipe} "
                         "checkpoint")
    bad = bad_records(args)
    box_file = read_boxes(args.boxes, args.images, bad, args.classes)
    seg = Segmenter.from_checkpoint(provenance["checkpoint"], device=str(device), use_ema=args.ema)
    settings = {"min_box_side": args.min_box_side, "ema": args.ema}
    if recipe == "mal":  # the crop margin changes every mask: part of the settings a resume must match
        if args.test_theta is not None:
            seg.model.cfg.test_theta = args.test_theta
        settings["test_theta"] = seg.model.cfg.test_theta
    # a model that also finds its own objects (Mask^X) reads each box's class name
    names = {c.name for c in seg.info.things()} if seg.recipe.boxes == "optional" else None
    s = autolabel(box_file, seg, args.out, args.images, settings=settings, provenance=provenance, bad=bad,
                  batch_size=args.batch_size,
                  chunk_images=args.chunk_images, rank=rank, world=world, model_names=names,
                  wait_timeout=args.wait_timeout)
    rate = f"{s.boxes_here} box(es) labelled here in {s.seconds:.1f} s ({s.boxes_here / max(s.seconds, 1e-9):.1f} boxes/s)"
    earlier = f"; {s.resumed} of {s.chunks} chunk(s) done earlier" if s.resumed else ""
    if not s.merged:
        print(f"autolabel rank {rank}/{world}: {rate}{earlier}; rank 0 writes {args.out}")
        return 0
    skipped = sum(s.skipped.values())
    why = ", ".join(f"{n} x {r}" for r, n in s.skipped.most_common())
    print(f"autolabel: {s.images} image(s) with boxes, {s.boxes} annotation(s): {s.labelled} labelled, "
          f"{skipped} without a mask" + (f" ({why})" if why else "") + f", {s.has_mask} came with a mask")
    for e in [*bad.examples, *s.examples][:5]:
        print(f"  e.g. {e}")
    print(f"{rate}{earlier}")
    print(f"written to {args.out}")
    return 0

