"""The ALP experiment table (issue 5; alp-fcos-mo Tables 3-5) on the synthetic world, CPU-sized.

Setting (alp-fcos-mo Sec. 4, "COCO VOC-masks" analogue): the synthetic ``voc-like`` split; base
classes keep their masks, novel classes are seen ONLY through approximately localized phrases
(ALPs) curated from the world's Localized-Narratives records by ``omniseg curate alps`` -- the
real pipeline (spaCy tags, phrase extraction, time windows, mouse-trace boxes), not stand-ins.

1. ``prepare``: write the training world to disk (``omniseg data synth``) and curate its ALPs
   (``omniseg curate alps``); both resumable.
2. Rows (every run ``omniseg train <config> ...`` in its own folder under ``--runs``; finished runs
   are skipped when re-run; two at a time, one torch thread each):

   * Mask R-CNN* (open-vocabulary, class-agnostic boxes, Hourglass-20 masks): masks only; ALPs as
     image-level labels (no boxes, Detic-style loss on the largest proposal); ALPs (boxes train the
     RPN and box regression); box-supervised oracle (novel classes with exact boxes).
   * FCOS-MO: ALPs; box-supervised oracle; ablations 4-conv mask head, no box quantization, no
     centerness (Table 5).

3. Scoring: mask AP50 on base / novel from each run's saved validation predictions (vocabulary =
   the class names), and for FCOS-MO with ALPs once more with a vocabulary where every novel class
   name is replaced by one of its synonyms from the lexicon (open-vocabulary matching).

    python bench/alp_experiments.py [--runs runs/alp_exp] [--iters 2000] [--only fcos_mo|mask_rcnn_star]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

PRETRAINED_DEFAULT = "bench/results/pretrained/r18w16_gn_dense/backbone.safetensors"

from experiment_runner import finished_runs, train_or_score  # noqa: E402

CONFIGS = {"fcos_mo": ROOT / "configs" / "fcos_mo_voc_like.yaml",
           "mask_rcnn_star": ROOT / "configs" / "mask_rcnn_star_voc_like.yaml"}

#: (name, model, row label, overrides); "{alps}" is replaced by the curated alps.jsonl
ROWS = [
    ("mrcnn_masks_only", "mask_rcnn_star", "Mask R-CNN* (masks only, open-vocabulary)",
     ["data.novel_supervision=alp", "alp.path="]),
    ("mrcnn_alp_image_labels", "mask_rcnn_star", "Mask R-CNN* (ALPs as image-level labels, no boxes)",
     ["data.novel_supervision=alp", "alp.path={alps}", "alp.as_image_labels=true"]),
    ("mrcnn_alp", "mask_rcnn_star", "Mask R-CNN* (ALPs)",
     ["data.novel_supervision=alp", "alp.path={alps}"]),
    ("fcos_mo_alp", "fcos_mo", "FCOS-MO (ALPs)",
     ["data.novel_supervision=alp", "alp.path={alps}"]),
    ("mrcnn_oracle", "mask_rcnn_star", "Mask R-CNN* box-supervised oracle (novel exact boxes)",
     ["data.novel_supervision=box", "alp.path="]),
    ("fcos_mo_oracle", "fcos_mo", "FCOS-MO box-supervised oracle (novel exact boxes)",
     ["data.novel_supervision=box", "alp.path="]),
    ("fcos_mo_alp_fcn4", "fcos_mo", "FCOS-MO (ALPs), 4-conv mask head instead of Hourglass-20",
     ["data.novel_supervision=alp", "alp.path={alps}", "model.mask_head=fcn4"]),
    ("fcos_mo_alp_no_quant", "fcos_mo", "FCOS-MO (ALPs), no box quantization",
     ["data.novel_supervision=alp", "alp.path={alps}", "alp.quantize=false"]),
    ("fcos_mo_alp_no_ctr", "fcos_mo", "FCOS-MO (ALPs), no centerness",
     ["data.novel_supervision=alp", "alp.path={alps}", "model.use_centerness=false"]),
    # diagnostic, not a row of the paper: STAND-IN ALPs (the class name as phrase, the true box shifted
    # and rescaled) separate the curated phrases' wording from box noise
    ("fcos_mo_standin_alp", "fcos_mo", "FCOS-MO (stand-in ALPs: class name + perturbed true box; diagnostic)",
     ["data.novel_supervision=alp", "alp.path=", "alp.simulate=true"]),
    # diagnostic: FCOS-MO without any novel-class supervision (its own masks-only baseline)
    ("fcos_mo_masks_only", "fcos_mo", "FCOS-MO (masks only, open-vocabulary; diagnostic)",
     ["data.novel_supervision=alp", "alp.path="]),
    # diagnostic: the main row again with another training seed -- the run-to-run spread that the
    # ablation differences must exceed
    ("fcos_mo_alp_seed1", "fcos_mo", "FCOS-MO (ALPs), training seed 1 (diagnostic: run-to-run spread)",
     ["data.novel_supervision=alp", "alp.path={alps}", "train.seed=1"]),
]


def sh(cmd: list[str]) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def prepare(args: argparse.Namespace) -> Path:
    """The training world on disk and its curated ALPs (both resumable); returns alps.jsonl."""
    runs = Path(args.runs)
    world, alps = runs / "world", runs / "alps"
    omni = [sys.executable, "-m", "omniseg.cli"]
    sh([*omni, "data", "synth", "--out", str(world), "--num-images", str(args.train_images), "--seed", "0",
        "--image-size", "256", "--workers", "2", "--no-progress"])
    if not (alps / "alps.jsonl").exists():
        sh([*omni, "curate", "alps", str(world / "narratives.jsonl"), "--images", str(world), "--out", str(alps),
            "--workers", "2", "--no-progress"])
    return alps / "alps.jsonl"


def jobs(args: argparse.Namespace) -> list[dict]:
    alps = str(Path(args.runs) / "alps" / "alps.jsonl")
    common = [f"data.train={Path(args.runs) / 'world'}", f"data.val_num_images={args.val_images}",
              "alp.simulate=false", "train.progress=false", "train.eval_period=0",
              f"train.max_iter={args.iters}", f"train.checkpoint_period={max(1, args.iters // 4)}"]
    common += [f"model.pretrained={args.pretrained}"] if args.pretrained else []  # "" = from scratch
    out = []
    for name, model, label, over in ROWS:
        if (args.only and model != args.only) or (args.rows and name not in args.rows.split(",")):
            continue
        out.append({"name": name, "model": model, "label": label,
                    "overrides": common + [o.replace("{alps}", alps) for o in over]})
    return out


def command(job: dict, runs: Path) -> list[str]:
    return [sys.executable, "-m", "omniseg.cli", "train", str(CONFIGS[job["model"]]), *job["overrides"],
            f"train.output_dir={runs / job['name']}"]


def synonym_vocabulary(categories: list, novel_ids: set[int], k: int = 0) -> dict[int, str]:
    """Class id -> the phrase used for it: a novel class gets a lexicon synonym whose colour word AND
    shape word both differ from its name ('red circle' -> 'crimson disk'), drawn with seed ``k``;
    base classes keep their names."""
    from omniseg.data.synth.lexicon import split_name, synonyms_of

    out = {}
    for c in categories:
        if not c.isthing:
            continue
        out[c.id] = c.name
        if c.id in novel_ids:
            color, shape = split_name(c.name)
            other = [s for s in synonyms_of(c.name) if not s.startswith(color + " ") and not s.endswith(" " + shape)]
            if other:
                out[c.id] = random.Random(f"{k}-{c.id}").choice(other)
    return out


def alp_quality(world: Path, alps_jsonl: Path) -> dict:
    """How the curated ALPs of a training world relate to its true objects: each ALP's best-IoU
    true instance (on novel / base classes), its IoU, whether the ALP box's centre lies inside that
    instance's box (FCOS-MO matches an ALP by its centre, alp-fcos-mo Sec. 3.2), whether the phrase
    is that object's class name, and the fraction of novel instances some ALP covers with IoU >= 0.5."""
    import torch

    from omniseg.curate.alps import read_alps_jsonl
    from omniseg.data.load import load_dataset
    from omniseg.data.splits import SPLITS
    from omniseg.ops.boxes import box_iou

    rs = load_dataset(str(world))
    novel = set(SPLITS["voc-like"](rs.categories, seed=0).novel_ids)
    names = {c.id: c.name for c in rs.categories}
    by_id: dict = {}
    for image_id, inst in read_alps_jsonl(alps_jsonl):
        by_id.setdefault(image_id, []).append(inst)
    ious, on_novel, named, covered, n_novel, centre_inside = [], 0, 0, 0, 0, 0
    phrase_class: dict[str, list[int]] = {}
    for rec in rs.records:
        gts = [i for i in rec.instances if i.box is not None and not i.is_crowd]
        alps = by_id.get(rec.image_id, [])
        n_novel += sum(i.category_id in novel for i in gts)
        if not gts or not alps:
            continue
        iou = box_iou(torch.tensor([a.box for a in alps]), torch.tensor([g.box for g in gts]))
        best, j = iou.max(dim=1)
        for a, v, k in zip(alps, best.tolist(), j.tolist()):
            ious.append(v)
            if v >= 0.5:
                phrase_class.setdefault(a.text, []).append(gts[k].category_id)
            on_novel += gts[k].category_id in novel
            named += a.text == names[gts[k].category_id]
            (x0, y0, x1, y1), (g0, h0, g1, h1) = a.box, gts[k].box
            centre_inside += g0 <= (x0 + x1) / 2 <= g1 and h0 <= (y0 + y1) / 2 <= h1
        covered += sum(bool((iou[:, k] >= 0.5).any()) for k, g in enumerate(gts) if g.category_id in novel)
    # through the frozen text encoder: is the class name nearest to an ALP's phrase the class of the
    # object the ALP lies on (IoU >= 0.5)? FCOS-MO can only transfer a phrase to a class this way
    from omniseg.text.encoders import build_text_encoder

    enc = build_text_encoder("minilm")
    things = [c for c in rs.categories if c.isthing]
    class_emb = torch.nn.functional.normalize(enc.encode([c.name for c in things]), dim=1)
    phrase_emb = {t: e for t, e in zip(phrase_class, torch.nn.functional.normalize(enc.encode(list(phrase_class)),
                                                                                       dim=1))}
    nearest_right = [things[int((phrase_emb[t] @ class_emb.T).argmax())].id == cid
                     for t, cids in phrase_class.items() for cid in cids]
    n = max(len(ious), 1)
    return {"alps": len(ious), "localized_alps": len(nearest_right),
            "nearest_class_name_right_fraction": sum(nearest_right) / max(len(nearest_right), 1), "mean_best_iou": sum(ious) / n,
            "centre_inside_best_match_fraction": centre_inside / n, "best_match_novel_fraction": on_novel / n,
            "phrase_is_class_name_fraction": named / n, "novel_instances": n_novel,
            "novel_covered_iou50_fraction": covered / max(n_novel, 1)}


def score(done: dict[str, dict], args: argparse.Namespace) -> tuple[list[dict], dict | None]:
    """Mask / box AP50 (and AP) on base / novel for every finished run; synonym-vocabulary scores."""
    from omniseg.data.formats.coco import read_coco_results
    from omniseg.data.splits import SPLITS
    from omniseg.evaluation.instance import evaluate_instances
    from omniseg.recipes.data import open_source

    gt, load_image = open_source("synth", args.val_images, 1000, 256, progress=False)
    split = SPLITS["voc-like"](gt.categories, seed=0)
    groups = {"base": split.base_ids, "novel": split.novel_ids}
    rows = []
    for name, job in done.items():
        pred = read_coco_results(Path(args.runs) / name / "val_predictions.json", gt, progress=False)
        m = evaluate_instances(gt, pred, iou_type="segm", groups=groups)
        b = evaluate_instances(gt, pred, iou_type="bbox", groups=groups)
        rows.append({"run": name, "model": job["model"], "row": job["label"], "wall_s": job["wall_s"],
                     "command": f"omniseg train {CONFIGS[job['model']].relative_to(ROOT)} " + " ".join(job["overrides"]),
                     "mask_AP50_base": m["base/AP50"], "mask_AP50_novel": m["novel/AP50"],
                     "mask_AP_base": m["base/AP"], "mask_AP_novel": m["novel/AP"],
                     "box_AP50_base": b["base/AP50"], "box_AP50_novel": b["novel/AP50"]})
    synonyms = []
    names = {c.id: c.name for c in gt.categories}
    for run, job in done.items():  # a seed-repeated run (bench/claims.py) names its row in job["row"]
        if job.get("row", run).removesuffix("_mpnet") not in ("fcos_mo_alp", "fcos_mo_standin_alp", "fcos_mo_oracle"):
            continue
        from omniseg.api import Segmenter
        from omniseg.recipes.scoring import predict_records

        seg = Segmenter.from_checkpoint(Path(args.runs) / run)
        for k in range(args.synonym_vocabularies):
            phrases = synonym_vocabulary(gt.categories, set(split.novel_ids), k)
            pred = predict_records(seg.model, seg.predictor, gt, load_image, progress=False, phrases=phrases,
                                   source=seg.recipe.name)
            m = evaluate_instances(gt, pred, iou_type="segm", groups=groups)
            synonyms.append({
                "run": run, "k": k, "mask_AP50_base": m["base/AP50"], "mask_AP50_novel": m["novel/AP50"],
                "novel_renamed": sum(phrases[i] != names[i] for i in split.novel_ids),
                "examples": {names[i]: phrases[i] for i in sorted(split.novel_ids)[:4]}})
    return rows, synonyms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default=str(ROOT / "runs" / "alp_exp"))
    ap.add_argument("--iters", type=int, default=2000, help="training iterations of every row")
    ap.add_argument("--train-images", type=int, default=600)
    ap.add_argument("--val-images", type=int, default=80)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--pretrained", default=PRETRAINED_DEFAULT,
                    help="ResNet trunk file for model.pretrained (default: the committed dense-pretrained trunk; "
                         "'' trains from scratch)")
    ap.add_argument("--synonym-vocabularies", type=int, default=3,
                    help="synonym vocabularies to score the FCOS-MO (ALPs) run with")
    ap.add_argument("--only", choices=sorted(CONFIGS), help="train only this model's rows")
    ap.add_argument("--rows", default="", help="train only these rows (comma-separated run names)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "alp_experiments.json"))
    ap.add_argument("--score-only", action="store_true", help="do not train: score the finished runs")
    args = ap.parse_args()
    t0 = time.perf_counter()
    if not args.score_only:
        prepare(args)
    done = train_or_score(jobs(args), Path(args.runs), command, args.parallel, ROOT, args.score_only)
    planned = len(jobs(args))
    args.only, args.rows = None, ""  # score every finished row
    done = {**finished_runs(jobs(args), Path(args.runs)), **done}
    rows, synonyms = score(done, args)
    import json

    from omniseg.utils.atomic import atomic_write_json

    stats = Path(args.runs) / "alps" / "stats.json"
    atomic_write_json(args.out, {
        "benchmark": "alp_experiments", "iters": args.iters, "train_images": args.train_images,
        "val_images": args.val_images, "parallel": args.parallel, "total_wall_s": time.perf_counter() - t0,
        "pretrained": args.pretrained,
        "alp_stats": json.loads(stats.read_text()) if stats.exists() else None,
        "alp_quality": alp_quality(Path(args.runs) / "world", Path(args.runs) / "alps" / "alps.jsonl") if stats.exists() else None,
        "runs_planned": planned, "runs_scored": len(rows),
        "command": "python bench/alp_experiments.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, 1 torch thread per run",
        "rows": rows, "synonyms": synonyms,
    }, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
