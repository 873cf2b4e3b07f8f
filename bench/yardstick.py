"""The converging yardstick (issue 12): the box-supervised oracle Mask R-CNN on voc-like, from
scratch vs from the pretrained trunk, with its learning curve (AP vs iteration).

The oracle = ``configs/maskx_voc_like.yaml`` with every class's masks (``data.oracle=true``) and
class-specific masks: the upper bound every Mask^X / ALP row is read against. Each run evaluates on
``--val-images`` held-out images every ``--eval-period`` iterations; its curve, final AP and time
per iteration are recorded in ``bench/results/yardstick/<run>.json`` as the run finishes (with
``--commit``, committed at once), so a table begun on one machine can be finished on another.

The pretrained trunk is ``--pretrained`` (default: the committed
bench/results/pretrained/r18w16_gn_dense/backbone.safetensors, made by
``omniseg pretrain configs/pretrain_r18_dense.yaml``; its manifest says how).

    python bench/yardstick.py [--seeds 0] [--iters 4500] [--commit]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from experiment_runner import finished_runs, machine, read_results, record_result, run_jobs  # noqa: E402

CONFIG = ROOT / "configs" / "maskx_voc_like.yaml"
RESULTS = ROOT / "bench" / "results" / "yardstick"
PRETRAINED = ROOT / "bench" / "results" / "pretrained" / "r18w16_gn_dense" / "backbone.safetensors"
ORACLE = ["data.oracle=true", "model.mask_head=class-specific", "model.fused_mlp=false"]


def jobs(args: argparse.Namespace) -> list[dict]:
    common = ORACLE + [f"data.train_num_images={args.train_images}", f"data.val_num_images={args.val_images}",
                       f"train.max_iter={args.iters}", f"train.eval_period={args.eval_period}",
                       f"train.checkpoint_period={args.eval_period}", "train.progress=false"]
    out = []
    for seed in args.seeds:
        for init in args.inits:
            extra = [f"model.pretrained={args.pretrained}"] if init == "pretrained" else []
            out.append({"name": f"oracle_{init}_s{seed}", "init": init, "seed": seed,
                        "overrides": common + extra + [f"train.seed={seed}"]})
    return out


def curve(run_dir: Path) -> list[dict]:
    """The evaluations in the run's metrics.jsonl: step, box / mask AP, and the mean seconds per
    iteration logged up to that step."""
    from omniseg.engine.logging import read_metric_log

    points, times = [], []
    for row in read_metric_log(run_dir / "metrics.jsonl"):
        if "s_per_iter" in row:
            times.append(row["s_per_iter"])
        if "eval/box_AP" in row:
            points.append({"step": row["step"], "box_AP": row["eval/box_AP"], "mask_AP": row["eval/mask_AP"],
                           "box_AP50": row.get("eval/box_AP50"), "mask_AP50": row.get("eval/mask_AP50"),
                           "s_per_iter": sum(times) / max(len(times), 1)})
    return points


def analyse(run_dir: Path, val_images: int) -> dict:
    """What limits the final model, from its saved validation predictions: box AP by object size
    (COCO small < 32^2 px, medium, large), AP50 vs AP (localisation), and class-agnostic box AP
    (every class merged: localisation alone, no recognition)."""
    import copy
    import dataclasses

    from omniseg.data.formats.coco import read_coco_results
    from omniseg.data.records import Category, RecordSet
    from omniseg.evaluation.instance import evaluate_instances
    from omniseg.recipes.data import open_source

    gt, _ = open_source("synth", val_images, 1000, 256, progress=False)
    pred = read_coco_results(run_dir / "val_predictions.json", gt, progress=False)
    box = evaluate_instances(gt, pred, iou_type="bbox")
    mask = evaluate_instances(gt, pred, iou_type="segm")

    def merged(rs: RecordSet) -> RecordSet:
        records = []
        for r in rs.records:
            r = copy.copy(r)
            r.instances = [dataclasses.replace(i, category_id=1, text="thing") for i in r.instances]
            records.append(r)
        return RecordSet(records=records, categories=[Category(id=1, name="thing")], image_root=rs.image_root)

    agnostic = evaluate_instances(merged(gt), merged(pred), iou_type="bbox")
    keys = ("AP", "AP50", "AP75", "APs", "APm", "APl")

    def finite(res: dict) -> dict:  # NaN (no object of a size) -> null in JSON
        return {k: (float(res[k]) if math.isfinite(res[k]) else None) for k in keys}

    return {"box": finite(box), "mask": finite(mask), "class_agnostic_box": finite(agnostic),
            "confusions": confusions(gt, pred)}


def confusions(gt, pred, min_score: float = 0.3) -> dict:
    """Of the detections scoring >= ``min_score`` that overlap a true object (box IoU >= 0.5, the
    best-overlapping one), the fractions naming its class, only its colour, only its shape, neither
    (class names are "<colour> <shape>"), and the fraction of such detections at all."""
    import torch

    from omniseg.ops.boxes import box_iou

    names = {c.id: c.name.split(" ") for c in gt.categories if c.isthing}
    by_id = {r.image_id: r for r in gt}
    counts = {"class": 0, "colour_only": 0, "shape_only": 0, "neither": 0}
    kept = localized = 0
    for r in pred:
        dets = [i for i in r.instances if (i.score or 0.0) >= min_score and i.box is not None]
        truth = [i for i in by_id[r.image_id].instances if i.box is not None and not i.is_crowd]
        kept += len(dets)
        if not dets or not truth:
            continue
        iou = box_iou(torch.tensor([d.box for d in dets], dtype=torch.float32),
                      torch.tensor([t.box for t in truth], dtype=torch.float32))
        best, j = iou.max(dim=1)
        for d, v, k in zip(dets, best.tolist(), j.tolist()):
            if v < 0.5:
                continue
            localized += 1
            (dc, ds), (tc, ts) = names[d.category_id], names[truth[k].category_id]
            key = "class" if (dc, ds) == (tc, ts) else "colour_only" if dc == tc else "shape_only" if ds == ts \
                else "neither"
            counts[key] += 1
    return {"min_score": min_score, "detections": kept, "localized_fraction": localized / max(kept, 1),
            **{k: v / max(localized, 1) for k, v in counts.items()}}


def result(job: dict, runs: Path, args: argparse.Namespace, partial: bool = False) -> dict:
    """The record of a run: its curve and, when finished, wall time and :func:`analyse` (``partial``:
    an unfinished run's curve so far)."""
    run_dir = runs / job["name"]
    points = curve(run_dir)
    done = {"partial": True, "wall_s": None} if partial else {
        "wall_s": round(job["wall_s"], 1), "analysis": analyse(run_dir, args.val_images)}
    return {"run": job["name"], "init": job["init"], "seed": job["seed"], **done,
            "iters": args.iters, "train_images": args.train_images, "val_images": args.val_images,
            "final": points[-1] if points else None, "curve": points, "machine": machine(),
            "pretrained": args.pretrained if job["init"] == "pretrained" else "",
            "command": "omniseg train configs/maskx_voc_like.yaml " + " ".join(job["overrides"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default=str(ROOT / "runs" / "yardstick"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--inits", nargs="+", default=["scratch", "pretrained"], choices=["scratch", "pretrained"])
    ap.add_argument("--pretrained", default=str(PRETRAINED.relative_to(ROOT)))
    ap.add_argument("--iters", type=int, default=4500)
    ap.add_argument("--eval-period", type=int, default=750)
    ap.add_argument("--train-images", type=int, default=2000)
    ap.add_argument("--val-images", type=int, default=200)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--commit", action="store_true", help="git commit each run's result file as it lands")
    ap.add_argument("--record-partial", action="store_true",
                    help="train nothing: record the curves of runs in --runs that have not finished (marked "
                         "partial; a finished run's record replaces it), e.g. before a session ends")
    args = ap.parse_args()
    if args.record_partial:
        for job in jobs(args):
            run_dir = Path(args.runs) / job["name"]
            if (run_dir / "metrics.jsonl").is_file() and not (run_dir / "wall_s.txt").is_file():
                record_result(RESULTS / f"{job['name']}.json", result(job, Path(args.runs), args, partial=True),
                              args.commit)
        return
    if "pretrained" in args.inits and not (ROOT / args.pretrained).is_file():
        raise SystemExit(f"{args.pretrained}: no pretrained trunk; run omniseg pretrain configs/pretrain_r18_dense.yaml "
                         "and pass --pretrained <run>/backbone.safetensors")
    runs = Path(args.runs)
    recorded = {k: v for k, v in read_results(RESULTS).items() if not v.get("partial")}
    todo = [j for j in jobs(args) if j["name"] not in recorded]
    print(f"{len(recorded)} recorded, {len(todo)} to run", flush=True)

    def done(job: dict) -> None:
        record_result(RESULTS / f"{job['name']}.json", result(job, runs, args), args.commit)

    for job in finished_runs(todo, runs).values():  # trained before, not recorded (e.g. a cut session)
        done(job)
    run_jobs(todo, runs, lambda j: [sys.executable, "-m", "omniseg.cli", "train", str(CONFIG), *j["overrides"],
                                    f"train.output_dir={runs / j['name']}"], args.parallel, ROOT, done)


if __name__ == "__main__":
    main()
