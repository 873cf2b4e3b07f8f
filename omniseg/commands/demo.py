"""``omniseg demo``: the main job on the embedded default dataset (the synthetic world).

1. generate the evaluation world in every real format (resumable) and read it back through the
   real readers (statistics per supervision kind);
2. check the evaluator: ground truth against itself (must be AP 100) and against a perturbed copy;
3. cheap labels: a training world of other images, its spoken-style narratives with mouse traces
   curated into approximately localized phrases (``omniseg curate alps``);
4. mixed supervision: FCOS-MO trained with masks for the base classes and only those phrases for
   the novel ones (``configs/fcos_mo_voc_like.yaml``, from the committed pretrained trunk when the
   source tree has it), scored base / novel on the evaluation world;
5. open vocabulary: ``omniseg segment`` with a vocabulary of the novel classes' names on a few
   images (COCO results + overlays);
6. masks from boxes: the toy box-to-mask model (``configs/box_to_mask_synth.yaml``) against the
   filled box;
7. HTML reports (overlays, AP tables with base / novel and #GT, PR and training curves).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from omniseg.commands.common import non_empty_path, non_negative_int, positive_int
from omniseg.commands.evaluate import split_name
from omniseg.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = ROOT / "configs" / "box_to_mask_synth.yaml"
MIXED_CONFIG = ROOT / "configs" / "fcos_mo_voc_like.yaml"
#: the ResNet-18 (width 16, GN) trunk pretrained on the pretraining world (bench/results/pretrained/;
#: no evaluation class labelled), when running from the source tree
PRETRAINED = ROOT / "bench" / "results" / "pretrained" / "r18w16_gn_dense" / "backbone.safetensors"
STEPS = 7


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=non_empty_path, default="demo_out", help="output folder")
    # >= 1: the evaluator self-check (GT vs itself = AP 100) needs ground truth; every synthetic
    # image has at least one object
    p.add_argument("--num-images", type=positive_int, default=64, help="synthetic evaluation images (>= 1)")
    p.add_argument("--train-images", type=positive_int, default=400,
                   help="synthetic training images (narratives curated into ALPs)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--workers", type=positive_int, default=2)
    p.add_argument("--split", type=split_name, default="voc-like",
                   help="base / novel split: base classes train with masks, novel ones with ALPs ('' for none: "
                   "no mixed-supervision step)")
    p.add_argument("--train-iters", type=non_negative_int, default=300,
                   help="FCOS-MO mixed-supervision iterations (0 skips steps 3-5)")
    p.add_argument("--toy-iters", type=non_negative_int, default=200, help="box-to-mask iterations (0 skips it)")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="box-to-mask experiment config")
    p.add_argument("--no-progress", action="store_true")


def _row(name: str, res: dict) -> str:
    keys = ("mask_AP", "mask_AP50", "mask_AP/base", "mask_AP/novel", "box_AP", "box_AP50/novel")
    return f"  {name:<28}" + "".join(f"{k}={100 * res[k]:5.1f}  " for k in keys if k in res)


def _step(k: int, text: str) -> None:
    print(f"[{k}/{STEPS}] {text}", flush=True)


def main(args: argparse.Namespace) -> int:
    from omniseg.commands.evaluate import evaluate_all, split_groups
    from omniseg.commands.viz import per_class_ap_table, summary_table, write_visualization
    from omniseg.data.formats.coco import write_coco_results
    from omniseg.data.load import load_dataset
    from omniseg.data.stats import dataset_stats, format_stats
    from omniseg.data.synth.generate import SynthConfig, generate_dataset
    from omniseg.evaluation.perturb import as_predictions, perturb_predictions

    if args.toy_iters > 0 and not Path(args.config).is_file():  # before minutes of work, not after
        what = "is a folder, not a config file" if Path(args.config).is_dir() else "toy-model config not found"
        raise UserError(f"{args.config}: {what} (pass --config FILE.yaml or --toy-iters 0)")
    out = Path(args.out)
    progress = not args.no_progress
    t0 = time.perf_counter()
    _step(1, f"generating {args.num_images} synthetic evaluation images (seed {args.seed}) -> {out / 'synth'}")
    generate_dataset(SynthConfig(seed=args.seed, num_images=args.num_images), out / "synth",
                     workers=args.workers, progress=progress)
    gt = load_dataset(out / "synth")
    print(format_stats(dataset_stats(gt), "  statistics (read back through the COCO / captions / LN / panoptic readers):"))

    groups = split_groups(args.split, gt.categories, args.seed)
    if groups is None:
        _step(2, "evaluator check (no split: all classes together)")
    else:
        _step(2, f"evaluator check (split {args.split}: {len(groups['base'])} base / {len(groups['novel'])} novel "
                 "classes)")
    perfect = evaluate_all(gt, as_predictions(gt), ["segm", "bbox"], groups)
    print(_row("ground truth vs itself", perfect))
    if not math.isclose(perfect["mask_AP"], 1.0) or not math.isclose(perfect["box_AP"], 1.0):
        raise RuntimeError(f"evaluator self-check failed: GT vs GT gave {perfect['mask_AP']:.4f} mask AP")
    pred = perturb_predictions(gt)
    write_coco_results(out / "perturbed_predictions.json", pred)
    damaged = evaluate_all(gt, pred, ["segm", "bbox"], groups, per_class=True)
    print(_row("ground truth vs perturbed", damaged))
    pages = {"evaluator check": write_visualization(
        gt, pred, out / "viz", limit=24, min_score=0.0, groups=groups,
        tables=[summary_table(damaged), per_class_ap_table(damaged, "segm", gt, groups)],
        notes=["Left: ground truth of the synthetic world (outlines). Right: a perturbed copy "
               "(shifted / eroded masks, misses, wrong classes, false positives) used to check the evaluator."],
        progress=progress,
    )}
    if args.train_iters > 0 and groups is not None:
        alps = _curate(args, out, progress)
        run = _train_mixed(args, out, alps, gt, groups, progress, pages)
        _segment(args, out, run, gt, groups)
    else:
        print(f"  (steps 3-5 skipped: {'--train-iters 0' if args.train_iters == 0 else 'no split'})")
    if args.toy_iters > 0:
        pages["masks from boxes"] = _train_toy_model(args, gt, out, progress)
    _step(7, "reports: " + "; ".join(f"{k}: {v}" for k, v in pages.items()))
    print(f"done in {time.perf_counter() - t0:.1f} s")
    return 0


def _curate(args: argparse.Namespace, out: Path, progress: bool) -> Path:
    """Step 3: the training world (other images) and its narratives curated into ALPs."""
    from omniseg.commands.curate import image_sizes
    from omniseg.curate.alps_run import curate_alps
    from omniseg.data.synth.generate import SynthConfig, generate_dataset

    world = out / "train_world"
    _step(3, f"cheap labels: {args.train_images} training images (seed {args.seed + 1}) with narratives + mouse "
             f"traces -> {world}; curated into approximately localized phrases -> {out / 'alps'}")
    generate_dataset(SynthConfig(seed=args.seed + 1, num_images=args.train_images), world,
                     workers=args.workers, progress=progress)
    stats = curate_alps(world / "narratives.jsonl", image_sizes(world), out / "alps", workers=args.workers,
                        progress=progress)
    print(f"  {stats.get('alps', stats.get('num_alps', '?'))} ALPs from {stats.get('narratives', '?')} narratives")
    return out / "alps" / "alps.jsonl"


def _train_mixed(args: argparse.Namespace, out: Path, alps: Path, gt, groups, progress: bool, pages: dict) -> Path:
    """Step 4: FCOS-MO with masks for base classes and ALPs for novel ones; scored base / novel."""
    from omniseg.commands.viz import per_class_ap_table, summary_table, write_visualization
    from omniseg.data.formats.coco import read_coco_results
    from omniseg.engine.config import load_config
    from omniseg.recipes.contract import run_recipe
    from omniseg.recipes.table import RECIPES

    run = out / "train_fcos_mo"
    recipe = RECIPES["fcos_mo"]
    trunk = [f"model.pretrained={PRETRAINED}"] if PRETRAINED.is_file() else []
    cfg = load_config(recipe.config, MIXED_CONFIG, [
        f"data.train={out / 'train_world'}", f"data.train_num_images={args.train_images}",
        f"data.val={out / 'synth'}", f"data.val_num_images={args.num_images}", f"data.split={args.split}",
        "data.novel_supervision=alp", f"alp.path={alps}", "alp.simulate=false", f"text.cache_dir={out / 'text_cache'}",
        f"train.max_iter={args.train_iters}", f"train.output_dir={run}", f"train.progress={progress}",
        f"train.checkpoint_period={args.train_iters}", f"train.warmup_iters={min(100, args.train_iters // 5)}",
        f"train.log_period={max(1, args.train_iters // 30)}", "train.eval_period=0", *trunk,
    ])
    _step(4, f"mixed supervision: FCOS-MO, masks for {len(groups['base'])} base classes, only ALPs for "
             f"{len(groups['novel'])} novel ones, {args.train_iters} iterations "
             f"({'from the pretrained trunk ' + str(PRETRAINED.relative_to(ROOT)) if trunk else 'from scratch'}) "
             f"-> {run}")
    t0 = time.perf_counter()
    ev = run_recipe(recipe, cfg, overwrite=True)["eval"]  # a re-run of the demo replaces its own run
    print(f"  trained in {time.perf_counter() - t0:.0f} s")
    print(_row("FCOS-MO (masks + ALPs)", ev))
    pred = read_coco_results(run / "val_predictions.json", gt)
    from omniseg.commands.evaluate import evaluate_all

    res = evaluate_all(gt, pred, ["segm", "bbox"], groups, per_class=True)
    pages["mixed supervision"] = write_visualization(
        gt, pred, out / "viz_fcos_mo", limit=24, min_score=0.3, groups=groups, run_dir=run,
        tables=[summary_table(res), per_class_ap_table(res, "segm", gt, groups)],
        notes=[f"Left: ground truth. Right: FCOS-MO after {args.train_iters} iterations, trained with masks for "
               f"the base classes and only curated phrases + approximate boxes for the novel ones "
               "(predictions with score >= 0.3)."],
        progress=progress,
    )
    return run


def _segment(args: argparse.Namespace, out: Path, run: Path, gt, groups) -> None:
    """Step 5: ``omniseg segment`` with the novel classes' names as the vocabulary."""
    from omniseg.cli import main as cli_main

    novel, records = set(groups["novel"]), gt.records[:4]
    present = {i.category_id for r in records for i in r.instances} & novel  # names worth asking for here
    names = [c.name for c in gt.categories if c.id in present][:6] or [c.name for c in gt.categories
                                                                        if c.id in novel][:6]
    images = [str(out / "synth" / "images" / r.file_name) for r in records]
    _step(5, f"open vocabulary: omniseg segment on {len(images)} images with the vocabulary \"{', '.join(names)}\" "
             f"-> {out / 'segment'}")
    code = cli_main(["segment", *images, "--checkpoint", str(run), "--vocabulary", ", ".join(names),
                     "--min-score", "0.2", "--out", str(out / "segment" / "preds.json"),
                     "--overlays", str(out / "segment" / "overlays"), "--gt", str(out / "synth" / "instances.json")])
    if code != 0:
        raise UserError(f"{out / 'segment'}: omniseg segment failed (exit {code})")


def _train_toy_model(args: argparse.Namespace, gt, out: Path, progress: bool) -> Path:
    """Step 6: train BoxToMask, reload its checkpoint, score and draw its masks on ``gt``."""
    from omniseg.commands.viz import per_class_ap_table, write_visualization
    from omniseg.engine.checkpoint import load_checkpoint
    from omniseg.engine.config import load_config
    from omniseg.evaluation.instance import evaluate_instances, metric_keys
    from omniseg.modeling.box_to_mask import build_box_to_mask
    from omniseg.recipes.box_to_mask import RECIPE, BoxToMaskExperiment, predict_masks_for_gt_boxes
    from omniseg.recipes.contract import run_recipe

    run_dir = out / "train_box_to_mask"
    cfg = load_config(BoxToMaskExperiment, args.config, [
        f"train.max_iter={args.toy_iters}", f"train.output_dir={run_dir}", f"train.progress={progress}",
        f"train.checkpoint_period={args.toy_iters}", f"train.log_period={max(1, args.toy_iters // 20)}",
        f"data.train_seed={args.seed + 1}",
        f"data.val={out / 'synth'}",
    ])
    _step(6, f"masks from boxes: the toy model (class-agnostic masks from boxes), {args.toy_iters} iterations "
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
    table = per_class_ap_table(metric_keys(res, "segm"), "segm", gt)
    return write_visualization(
        gt, pred, out / "viz_box_to_mask", limit=24, min_score=0.0, tables=[table],
        notes=[f"Left: ground truth. Right: masks predicted by the toy model from the ground-truth boxes after "
               f"{args.toy_iters} iterations from scratch (mask AP {100 * res['AP']:.1f} vs. "
               f"{100 * ev['filled_box_AP']:.1f} for filled boxes)."],
        progress=progress, run_dir=run_dir,
    )
