"""The Mask^X R-CNN experiment table (issue 4) on the synthetic world, CPU-sized.

Protocol (maskx-rcnn paper Sec. 4, stage-wise training Sec. 3.2, scaled down to 2 CPU cores):

1. ``detector``: stage 1 -- the detector (RPN + box head) trained on every class's exact boxes.
   Boxes exist for A and B alike, so one detector serves every split; its run also trains the
   paper's full method (transfer+MLP, 'cls+box', stop-grad) on voc-like A->B as stage 2.
2. Stage 2 for every (split, variant): the mask branch (incl. the transfer function T) trained
   with that detector frozen (``model.detector_init``), on A's masks only.
3. The fully supervised oracle: stage 2 with every class's masks (one run, scored under each
   split's grouping).
4. End-to-end training with stop-grad on and off (voc-like A->B).

Every run is ``omniseg train configs/maskx_voc_like.yaml ...`` in its own folder under
``--runs``; finished runs are skipped when the script is re-run (resumable). All runs are scored
from their saved validation predictions with the same evaluator, grouped by each split's A / B.
Two runs go at a time, one torch thread each (2 cores).

    python bench/maskx_experiments.py [--runs runs/maskx_exp] [--stage1-iters 2500] [--stage2-iters 400]
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

PRETRAINED_DEFAULT = "bench/results/pretrained/r18w16_gn_dense/backbone.safetensors"

from experiment_runner import train_or_score  # noqa: E402

CONFIG = ROOT / "configs" / "maskx_voc_like.yaml"

#: split name -> data overrides (A = base with masks, B = novel with boxes only)
SPLITS = {
    "voc A->B": [],
    "voc B->A": ["data.reverse_split=true"],
    "random 20": ["data.random_base=20", "data.split_seed=1"],
    "random 40": ["data.random_base=40", "data.split_seed=2"],
    "random 60": ["data.random_base=60", "data.split_seed=3"],
}

#: variant name -> model overrides
VARIANTS = {
    "class-agnostic": ["model.mask_head=class-agnostic", "model.fused_mlp=false"],
    "class-agnostic+MLP": ["model.mask_head=class-agnostic", "model.fused_mlp=true"],
    "transfer (cls+box)": ["model.mask_head=transfer", "model.fused_mlp=false", "model.transfer_input=cls+box"],
    "transfer+MLP (cls+box)": ["model.mask_head=transfer", "model.fused_mlp=true", "model.transfer_input=cls+box"],
    "transfer+MLP (randn)": ["model.mask_head=transfer", "model.fused_mlp=true", "model.transfer_input=randn"],
    "transfer+MLP (text)": ["model.mask_head=transfer", "model.fused_mlp=true", "model.transfer_input=text"],
    "transfer+MLP (cls)": ["model.mask_head=transfer", "model.fused_mlp=true", "model.transfer_input=cls"],
    "transfer+MLP (box)": ["model.mask_head=transfer", "model.fused_mlp=true", "model.transfer_input=box"],
}

#: which variants run on which split (all on voc A->B; the main four on the others)
MAIN = ["class-agnostic", "class-agnostic+MLP", "transfer (cls+box)", "transfer+MLP (cls+box)"]
PLAN = {"voc A->B": list(VARIANTS), "voc B->A": MAIN, "random 20": MAIN[::3], "random 40": MAIN[::3],
        "random 60": MAIN[::3]}


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_").lower()


def jobs(args: argparse.Namespace) -> list[dict]:
    """Every run: name, overrides, and the run it needs first."""
    common = [f"data.val_num_images={args.val_images}", f"data.train_num_images={args.train_images}",
              "train.progress=false", "train.eval_period=0",
              f"train.checkpoint_period={args.stage2_iters}"]
    common += [f"model.pretrained={args.pretrained}"] if args.pretrained else []  # "" = from scratch
    det = Path(args.runs) / "detector"
    out = [{
        "name": "detector", "split": "voc A->B", "variant": "transfer+MLP (cls+box)", "after": None,
        "overrides": common + VARIANTS["transfer+MLP (cls+box)"] + [
            "model.mode=stage_wise", f"model.stage1_iters={args.stage1_iters}", f"train.max_iter={args.stage2_iters}"],
    }]
    stage2 = ["model.mode=stage_wise", "model.stage1_iters=0", f"model.detector_init={det / 'stage1'}",
              f"train.max_iter={args.stage2_iters}", f"train.warmup_iters={min(50, args.stage2_iters // 5)}"]
    for split, variants in PLAN.items():
        for v in variants:
            if split == "voc A->B" and v == "transfer+MLP (cls+box)":
                continue  # trained by the detector run
            out.append({"name": slug(f"{split} {v}"), "split": split, "variant": v, "after": "detector",
                        "overrides": common + SPLITS[split] + VARIANTS[v] + stage2})
    out.append({"name": "oracle", "split": "all", "variant": "oracle (class-specific, all masks)", "after": "detector",
                "overrides": common + ["data.oracle=true", "model.mask_head=class-specific", "model.fused_mlp=false"]
                + stage2})
    for sg in ("true", "false"):
        out.append({"name": f"end_to_end_stop_grad_{sg}", "split": "voc A->B",
                    "variant": f"transfer+MLP (cls+box), end-to-end, stop-grad {'on' if sg == 'true' else 'off'}",
                    "after": None, "overrides": common + VARIANTS["transfer+MLP (cls+box)"] + [
                        "model.mode=end_to_end", f"model.stop_grad={sg}",
                        f"train.max_iter={args.e2e_iters}", f"train.checkpoint_period={max(1, args.e2e_iters // 4)}"]})
    return out


def command(job: dict, runs: Path) -> list[str]:
    return [sys.executable, "-m", "omniseg.cli", "train", str(CONFIG), *job["overrides"],
            f"train.output_dir={runs / job['name']}"]


def given_box_predictions(run_dir: Path, gt, load_image):
    """The run's masks for the ground-truth boxes and classes of ``gt`` (score 1): mask quality alone,
    without detection errors -- what the weight transfer is meant to improve on B."""
    import torch

    from omniseg.api import Segmenter
    from omniseg.data.loader import build_test_loader
    from omniseg.data.records import Instance, RecordSet
    from omniseg.ops.rle import rle_encode

    model = Segmenter.from_checkpoint(run_dir).model
    index = {c: i for i, c in enumerate(model.category_ids)}
    by_id = {r.image_id: r for r in gt}
    pred = RecordSet(records=[], categories=gt.categories)
    for batch in build_test_loader(gt, 4, load_image=load_image):
        recs = [by_id[i] for i in batch.image_ids]
        given = [[i for i in r.instances if i.box is not None and not i.is_crowd and i.category_id in index]
                 for r in recs]
        boxes = [torch.tensor([i.box for i in g], dtype=torch.float32).reshape(-1, 4) for g in given]
        labels = [torch.tensor([index[i.category_id] for i in g], dtype=torch.long) for g in given]
        masks = model.segment_boxes(batch.images, batch.image_sizes, boxes, labels)
        for r, g, m in zip(recs, given, masks):
            rec = copy.copy(r)
            rec.instances = [Instance(text=i.text, category_id=i.category_id, box=i.box, score=1.0,
                                      mask=rle_encode(mk.numpy())) for i, mk in zip(g, m)]
            pred.records.append(rec)
    return pred


def score(done: dict[str, dict], args: argparse.Namespace) -> list[dict]:
    """Mask / box AP on A and B of each run's split (the oracle under every split)."""
    from omniseg.data.formats.coco import read_coco_results
    from omniseg.engine.config import load_config
    from omniseg.evaluation.instance import evaluate_instances
    from omniseg.recipes.data import open_source
    from omniseg.recipes.maskx_rcnn import MaskXExperiment, build_split

    base_cfg = load_config(MaskXExperiment, CONFIG, [f"data.val_num_images={args.val_images}"])
    d = base_cfg.data
    gt, load_image = open_source(d.val, d.val_num_images, d.val_seed, d.image_size, progress=False)
    groupings = {s: build_split(load_config(MaskXExperiment, CONFIG, o).data, gt.categories) for s, o in SPLITS.items()}
    rows = []
    for name, job in done.items():
        pred = read_coco_results(Path(args.runs) / name / "val_predictions.json", gt, progress=False)
        given = given_box_predictions(Path(args.runs) / name, gt, load_image)
        for split in (list(SPLITS) if job["split"] == "all" else [job["split"]]):
            sp = groupings[split]
            groups = {"A": sp.base_ids, "B": sp.novel_ids}
            m = evaluate_instances(gt, pred, iou_type="segm", groups=groups)
            b = evaluate_instances(gt, pred, iou_type="bbox", groups=groups)
            g = evaluate_instances(gt, given, iou_type="segm", groups=groups)
            rows.append({"run": name, "split": split, "variant": job["variant"], "wall_s": job["wall_s"],
                         "command": "omniseg train configs/maskx_voc_like.yaml " + " ".join(job["overrides"]),
                         "mask_AP_A": m["A/AP"], "mask_AP_B": m["B/AP"], "mask_AP50_B": m["B/AP50"],
                         "box_AP_A": b["A/AP"], "box_AP_B": b["B/AP"], "mask_AP": m["AP"], "box_AP": b["AP"],
                         "given_box_mask_AP_A": g["A/AP"], "given_box_mask_AP_B": g["B/AP"]})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default=str(ROOT / "runs" / "maskx_exp"))
    ap.add_argument("--stage1-iters", type=int, default=2500)
    ap.add_argument("--stage2-iters", type=int, default=400)
    ap.add_argument("--e2e-iters", type=int, default=2000, help="iterations of the end-to-end stop-grad runs")
    ap.add_argument("--val-images", type=int, default=100)
    ap.add_argument("--train-images", type=int, default=1000)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--pretrained", default=PRETRAINED_DEFAULT,
                    help="ResNet trunk file for model.pretrained (default: the committed dense-pretrained trunk; "
                         "'' trains from scratch)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "maskx_experiments.json"))
    ap.add_argument("--score-only", action="store_true",
                    help="do not train: score the runs that have finished (e.g. to report a partial table)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    done = train_or_score(jobs(args), Path(args.runs), command, args.parallel, ROOT, args.score_only)
    rows = score(done, args)
    from omniseg.utils.atomic import atomic_write_json

    atomic_write_json(args.out, {
        "benchmark": "maskx_experiments", "stage1_iters": args.stage1_iters, "stage2_iters": args.stage2_iters,
        "e2e_iters": args.e2e_iters, "train_images": args.train_images,
        "val_images": args.val_images, "parallel": args.parallel, "total_wall_s": time.perf_counter() - t0,
        "pretrained": args.pretrained,
        "runs_planned": len(jobs(args)), "runs_scored": len(done),
        "command": "python bench/maskx_experiments.py " + " ".join(sys.argv[1:]),
        # the same arguments without --score-only train every missing run, then score
        "train_command": "python bench/maskx_experiments.py " + " ".join(a for a in sys.argv[1:] if a != "--score-only"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, 1 torch thread per run", "rows": rows,
    }, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
