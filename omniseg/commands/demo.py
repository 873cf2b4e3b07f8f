"""``omniseg demo``: the main job on the embedded default dataset (the synthetic world).

1. generate the synthetic world in every real format (resumable),
2. read it back through the real readers and print statistics per supervision kind,
3. evaluate ground truth against itself (must be AP 100) and against a perturbed copy,
4. train the toy model (class-agnostic masks from boxes, ``configs/box_to_mask_synth.yaml``)
   through the engine on other synthetic images, reload its checkpoint and score its masks on
   the generated set next to the filled-box baseline,
5. write HTML pages with overlays and per-class AP tables.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from omniseg.commands.common import non_empty_path, non_negative_int, positive_int
from omniseg.commands.evaluate import split_name
from omniseg.errors import UserError

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "box_to_mask_synth.yaml"


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=non_empty_path, default="demo_out", help="output folder")
    # >= 1: the evaluator self-check (GT vs itself = AP 100) needs ground truth; every synthetic
    # image has at least one object
    p.add_argument("--num-images", type=positive_int, default=64, help="synthetic images to generate (>= 1)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--workers", type=positive_int, default=2)
    p.add_argument("--split", type=split_name, default="voc-like",
                   help="split used for the base / novel breakdown ('' for none)")
    p.add_argument("--train-iters", type=non_negative_int, default=200, help="toy-model iterations (0 skips training)")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="toy-model experiment config")
    p.add_argument("--no-progress", action="store_true")


def _row(name: str, res: dict) -> str:
    keys = ("mask_AP", "mask_AP50", "mask_AP/base", "mask_AP/novel", "box_AP")
    return f"  {name:<28}" + "".join(f"{k}={100 * res[k]:5.1f}  " for k in keys if k in res)


def main(args: argparse.Namespace) -> int:
    from omniseg.commands.evaluate import evaluate_all, split_groups
    from omniseg.commands.viz import per_class_ap_table, write_visualization
    from omniseg.data.formats.coco import write_coco_results
    from omniseg.data.load import load_dataset
    from omniseg.data.stats import dataset_stats, format_stats
    from omniseg.data.synth.generate import SynthConfig, generate_dataset
    from omniseg.evaluation.perturb import as_predictions, perturb_predictions

    if args.train_iters > 0 and not Path(args.config).is_file():  # before minutes of work, not after
        what = "is a folder, not a config file" if Path(args.config).is_dir() else "toy-model config not found"
        raise UserError(f"{args.config}: {what} (pass --config FILE.yaml or --train-iters 0)")
    out = Path(args.out)
    progress = not args.no_progress
    t0 = time.perf_counter()
    print(f"[1/5] generating {args.num_images} synthetic images (seed {args.seed}) -> {out / 'synth'}")
    generate_dataset(SynthConfig(seed=args.seed, num_images=args.num_images), out / "synth",
                     workers=args.workers, progress=progress)
    gt = load_dataset(out / "synth")
    print(format_stats(dataset_stats(gt), "[2/5] statistics (read back through the COCO / captions / LN / panoptic readers):"))

    groups = split_groups(args.split, gt.categories, args.seed)
    if groups is None:
        print("[3/5] evaluation (no split: all classes together)")
    else:
        print(f"[3/5] evaluation (split {args.split}: {len(groups['base'])} base / {len(groups['novel'])} novel classes)")
    perfect = evaluate_all(gt, as_predictions(gt), ["segm", "bbox"], groups)
    print(_row("ground truth vs itself", perfect))
    if not math.isclose(perfect["mask_AP"], 1.0) or not math.isclose(perfect["box_AP"], 1.0):
        raise RuntimeError(f"evaluator self-check failed: GT vs GT gave {perfect['mask_AP']:.4f} mask AP")
    pred = perturb_predictions(gt)
    write_coco_results(out / "perturbed_predictions.json", pred)
    damaged = evaluate_all(gt, pred, ["segm", "bbox"], groups, per_class=True)
    print(_row("ground truth vs perturbed", damaged))

    pages = [write_visualization(
        gt, pred, out / "viz", limit=24, min_score=0.0, tables=[per_class_ap_table(damaged)],
        notes=["Left: ground truth of the synthetic world (stuff regions faint). Right: a perturbed copy "
               "(shifted / eroded masks, misses, wrong classes, false positives) used to check the evaluator."],
        progress=progress,
    )]
    if args.train_iters > 0:
        pages.append(_train_toy_model(args, gt, out, progress))
    print("[5/5] visualization: " + ", ".join(str(p) for p in pages))
    print(f"done in {time.perf_counter() - t0:.1f} s")
    return 0


def _train_toy_model(args: argparse.Namespace, gt, out: Path, progress: bool) -> Path:
    """Step 4: train BoxToMask, reload its checkpoint, score and draw its masks on ``gt``."""
    from omniseg.commands.viz import per_class_ap_table, write_visualization
    from omniseg.engine.checkpoint import load_checkpoint
    from omniseg.engine.config import load_config
    from omniseg.evaluation.instance import evaluate_instances, metric_keys
    from omniseg.modeling.box_to_mask import build_box_to_mask
    from omniseg.recipes.box_to_mask import RECIPE, BoxToMaskExperiment, predict_masks_for_gt_boxes
    from omniseg.recipes.contract import run_recipe

    run_dir = out / "train_box_to_mask"
    cfg = load_config(BoxToMaskExperiment, args.config, [
        f"train.max_iter={args.train_iters}", f"train.output_dir={run_dir}", f"train.progress={progress}",
        f"train.checkpoint_period={args.train_iters}", f"data.train_seed={args.seed + 1}",
        f"data.val={out / 'synth'}",
    ])
    print(f"[4/5] training the toy model (class-agnostic masks from boxes) for {args.train_iters} iterations "
          f"on synthetic images of seed {args.seed + 1} -> {run_dir}")
    t0 = time.perf_counter()
    ev = run_recipe(RECIPE, cfg, overwrite=True)["eval"]  # a re-run of the demo replaces its own run
    print(f"  trained in {time.perf_counter() - t0:.0f} s; masks on the generated set's GT boxes: "
          f"mask AP {100 * ev['mask_AP']:.1f} (AP50 {100 * ev['mask_AP50']:.1f}) vs. filled boxes "
          f"{100 * ev['filled_box_AP']:.1f} (AP50 {100 * ev['filled_box_AP50']:.1f})")
    # reload the checkpoint as a user would; its masks must score exactly what the trainer measured
    model = build_box_to_mask(cfg.model)
    load_checkpoint(run_dir / "checkpoints", model=model)
    model.eval()
    pred = predict_masks_for_gt_boxes(model, gt)
    res = evaluate_instances(gt, pred, iou_type="segm", per_class=True)
    if not math.isclose(res["AP"], ev["mask_AP"], abs_tol=1e-9):
        raise RuntimeError(f"checkpoint round trip changed the result: {res['AP']:.6f} vs {ev['mask_AP']:.6f}")
    table = per_class_ap_table(metric_keys(res, "segm"))
    return write_visualization(
        gt, pred, out / "viz_box_to_mask", limit=24, min_score=0.0, tables=[table],
        notes=[f"Left: ground truth. Right: masks predicted by the toy model from the ground-truth boxes after "
               f"{args.train_iters} iterations from scratch (mask AP {100 * res['AP']:.1f} vs. "
               f"{100 * ev['filled_box_AP']:.1f} for filled boxes)."],
        progress=progress,
    )
