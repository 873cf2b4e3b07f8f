"""The paper-claim rows, seed-repeated (issue 12): Mask^X R-CNN and ALP / FCOS-MO, from the
pretrained trunk, >= 3 training seeds each, on 200 held-out images.

Rows (each x ``--seeds``):

* ``maskx``: per seed one detector (stage 1, every class's exact boxes, the yardstick schedule),
  then the mask branch with that detector frozen (maskx-rcnn Sec. 3.2): class-agnostic and
  transfer+MLP (cls+box) on voc A->B and B->A, and the class-specific oracle (every class's masks).
* ``alp``: Mask R-CNN* masks only, Mask R-CNN* + ALPs, FCOS-MO + ALPs, FCOS-MO box oracle
  (alp-fcos-mo Tables 3-4), on one curated training world shared by all seeds.

Every run is ``omniseg train ...`` in its own folder under ``--runs`` (killed runs resume). As each
run finishes it is scored with the drivers' own scoring (bench/maskx_experiments.py,
bench/alp_experiments.py) and recorded in ``bench/results/claims/<table>/<run>.json`` (``--commit``:
committed at once), so the table can be completed over several sessions on different machines:
recorded runs are never re-run. ``bench/report.py`` aggregates mean +- std per row and the verdict
per claim from whatever is recorded (:func:`aggregate`, :func:`verdicts`).

    python bench/claims.py maskx|alp [--seeds 0 1 2] [--mpnet] [--tpad] [--commit]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import alp_experiments as ax  # noqa: E402
import maskx_experiments as mx  # noqa: E402
from experiment_runner import finished_runs, machine, read_results, record_result, run_jobs  # noqa: E402
from yardstick import PRETRAINED  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "claims"
#: each finished Mask^X detector's weights (``detector.*``), committed with its result so that the
#: mask-branch rows can run on another machine without the detector's run folder
DETECTORS = "detectors"

#: (row id, split, variant) of the Mask^X stage-2 rows; the detector run trains transfer+MLP on voc A->B
MASKX_ROWS = [("voc_ab_transfer_mlp", "voc A->B", "transfer+MLP (cls+box)"),
              ("voc_ab_class_agnostic", "voc A->B", "class-agnostic"),
              ("voc_ba_transfer_mlp", "voc B->A", "transfer+MLP (cls+box)"),
              ("voc_ba_class_agnostic", "voc B->A", "class-agnostic")]
ALP_ROWS = ["mrcnn_masks_only", "mrcnn_alp", "fcos_mo_alp", "fcos_mo_oracle"]
#: with --mpnet: the FCOS-MO rows again with the all-mpnet-base-v2 text encoder (issue 12 item 4; `make mpnet`)
MPNET_ROWS = ["fcos_mo_alp", "fcos_mo_oracle"]
#: with --tpad: the rows that train on ALPs again, on ALPs curated with a temporal padding of TPAD seconds instead of
#: the paper's 0.5 (alp-fcos-mo Sec. 3.1 chose t_p for real narratives; on the synthetic narratives, whose mouse
#: travels to the next object right after a phrase, 0.5 s windows take in that travel: bench/alp_curation.py's t_p
#: sweep against the generator's ground truth, bench/alp_errors.py --alps). A protocol variant, labelled as such.
TPAD, TPAD_ROWS = 0.25, ["mrcnn_alp", "fcos_mo_alp"]
TPAD_SUFFIX = "_tp025"

#: claim -> (table, metric, better row, baseline row, the paper's statement)
CLAIMS = {
    "maskx_transfer_vs_agnostic_ab": ("maskx", "mask_AP_B", "voc_ab_transfer_mlp", "voc_ab_class_agnostic",
                                      "transfer+MLP beats class-agnostic masks on B (voc A->B; maskx-rcnn Table 2)"),
    "maskx_transfer_vs_agnostic_ba": ("maskx", "mask_AP_B", "voc_ba_transfer_mlp", "voc_ba_class_agnostic",
                                      "transfer+MLP beats class-agnostic masks on B (voc B->A; maskx-rcnn Table 2)"),
    "maskx_oracle_above_transfer": ("maskx", "mask_AP_B", "oracle", "voc_ab_transfer_mlp",
                                    "the fully supervised oracle bounds transfer+MLP from above on B"),
    # diagnostics: the mask head alone, on the true boxes of B (given_box_mask_AP_B), where detection and naming
    # errors (box AP_B ~22-26 at this trunk) cannot hide a mask-quality difference
    "maskx_transfer_vs_agnostic_ab_given_box": ("maskx", "given_box_mask_AP_B", "voc_ab_transfer_mlp",
                                                "voc_ab_class_agnostic", "diagnostic: the same on the true boxes of B, "
                                                "the mask head alone (voc A->B)"),
    "maskx_transfer_vs_agnostic_ba_given_box": ("maskx", "given_box_mask_AP_B", "voc_ba_transfer_mlp",
                                                "voc_ba_class_agnostic", "diagnostic: the same on the true boxes of B, "
                                                "the mask head alone (voc B->A)"),
    "alp_mrcnn_alp_vs_masks_only": ("alp", "mask_AP50_novel", "mrcnn_alp", "mrcnn_masks_only",
                                    "ALPs improve novel-class masks of Mask R-CNN* (alp-fcos-mo Table 3)"),
    "alp_fcos_mo_vs_mrcnn_alp": ("alp", "mask_AP50_novel", "fcos_mo_alp", "mrcnn_alp",
                                 "FCOS-MO uses ALPs better than Mask R-CNN* (alp-fcos-mo Table 3)"),
    "alp_fcos_mo_oracle_above": ("alp", "mask_AP50_novel", "fcos_mo_oracle", "fcos_mo_alp",
                                 "the box-supervised oracle bounds FCOS-MO with ALPs from above"),
    "alp_mrcnn_alp_vs_masks_only_tp025": ("alp", "mask_AP50_novel", "mrcnn_alp_tp025", "mrcnn_masks_only",
                                          "ALPs improve novel-class masks of Mask R-CNN*, ALPs curated at t_p 0.25 "
                                          "(protocol variant)"),
    "alp_fcos_mo_vs_mrcnn_alp_tp025": ("alp", "mask_AP50_novel", "fcos_mo_alp_tp025", "mrcnn_alp_tp025",
                                       "FCOS-MO uses ALPs better than Mask R-CNN*, ALPs curated at t_p 0.25 "
                                       "(protocol variant)"),
    "alp_mpnet_vs_minilm": ("alp", "mask_AP50_novel", "fcos_mo_alp_mpnet", "fcos_mo_alp",
                            "a stronger text encoder (mpnet) helps FCOS-MO with ALPs (issue 12 item 4)"),
}


def maskx_jobs(args: argparse.Namespace) -> list[dict]:
    runs = Path(args.runs)
    common = [f"data.val_num_images={args.val_images}", f"data.train_num_images={args.train_images}",
              f"model.pretrained={args.pretrained}", "train.progress=false", "train.eval_period=0",
              f"train.checkpoint_period={args.stage2_iters}"]
    out = []
    for s in args.seeds:
        seed = [f"train.seed={s}"]
        det = runs / f"maskx_detector_s{s}"
        kept = Path(args.results) / "maskx" / DETECTORS / f"{det.name}.safetensors"
        out.append({"name": f"maskx_detector_s{s}", "row": "voc_ab_transfer_mlp", "seed": s, "split": "voc A->B",
                    "variant": "transfer+MLP (cls+box)", "after": None,
                    "overrides": common + seed + mx.VARIANTS["transfer+MLP (cls+box)"] + [
                        "model.mode=stage_wise", f"model.stage1_iters={args.iters}",
                        f"train.max_iter={args.stage2_iters}"]})
        stage2 = ["model.mode=stage_wise", "model.stage1_iters=0", f"model.detector_init={kept}",
                  f"train.max_iter={args.stage2_iters}", f"train.warmup_iters={min(50, args.stage2_iters // 5)}"]
        for row, split, variant in MASKX_ROWS[1:]:
            out.append({"name": f"maskx_{row}_s{s}", "row": row, "seed": s, "split": split, "variant": variant,
                        "after": None if kept.is_file() else det.name,
                        "overrides": common + seed + mx.SPLITS[split] + mx.VARIANTS[variant] + stage2})
        out.append({"name": f"maskx_oracle_s{s}", "row": "oracle", "seed": s, "split": "voc A->B",
                    "variant": "oracle (class-specific, all masks)", "after": None if kept.is_file() else det.name,
                    "overrides": common + seed + ["data.oracle=true", "model.mask_head=class-specific",
                                                  "model.fused_mlp=false"] + stage2})
    return out


def alp_jobs(args: argparse.Namespace) -> list[dict]:
    """The ALP rows x seeds (bench/alp_experiments.py's jobs; they carry ``model.pretrained``)."""
    args.only, args.rows = None, ",".join(ALP_ROWS)
    base = {j["name"]: j for j in ax.jobs(args)}
    out = []
    rows = [(r, r, []) for r in ALP_ROWS] + [(r, f"{r}_mpnet", ["text.encoder=mpnet", "model.embed_dim=768"]) for r in MPNET_ROWS
                                             if args.mpnet]
    rows += [(r, r + TPAD_SUFFIX, [f"alp.path={tpad_alps(args)}"]) for r in TPAD_ROWS if args.tpad]
    for s in args.seeds:
        for row, row_id, extra in rows:
            j = base[row]
            # the schedule is set below; a row's extra override replaces the base job's one of the same key
            drop = ("train.max_iter=", "train.checkpoint_period=", *(e.split("=", 1)[0] + "=" for e in extra))
            overrides = [o for o in j["overrides"] if not o.startswith(drop)]
            out.append({**j, "name": f"alp_{row_id}_s{s}", "row": row_id, "seed": s, "after": None,
                        "overrides": overrides + extra + [f"train.seed={s}",
                                                  f"train.max_iter={args.iters}",
                                                  f"data.train_num_images={args.train_images}",
                                                  f"train.checkpoint_period={max(1, args.iters // 6)}"]})
    return out


def tpad_alps(args: argparse.Namespace) -> Path:
    """Where the --tpad rows' ALPs are curated: ``<runs>/alps_tp025/alps.jsonl``, from the same world's narratives."""
    return Path(args.runs) / f"alps{TPAD_SUFFIX}" / "alps.jsonl"


def prepare_tpad(args: argparse.Namespace) -> None:
    """Curate the world's narratives again with ``--t-pad TPAD`` (resumable, like bench/alp_experiments.py's prepare)."""
    out = tpad_alps(args)
    if not out.exists():
        runs = Path(args.runs)
        ax.sh([sys.executable, "-m", "omniseg.cli", "curate", "alps", str(runs / "world" / "narratives.jsonl"),
               "--images", str(runs / "world"), "--out", str(out.parent), "--t-pad", str(TPAD), "--workers", "2",
               "--no-progress"])


def keep_detector(stage1: Path, out: Path) -> Path:
    """Write the ``detector.*`` weights of a finished stage 1 to ``out`` (atomically)."""
    from omniseg.engine.checkpoint import resolve_checkpoint
    from omniseg.modeling.weights import convert_to_safetensors

    out.parent.mkdir(parents=True, exist_ok=True)
    convert_to_safetensors(resolve_checkpoint(stage1) / "model.safetensors", out,
                           lambda sd, _: {k: v for k, v in sd.items() if k.startswith("detector.")})
    return out


def score_one(job: dict, args: argparse.Namespace) -> dict:
    """The run's row of its driver's table (one run, scored alone), plus the claim fields."""
    if args.table == "maskx":
        rows = mx.score({job["name"]: job}, args)
        extra = {}
    else:
        rows, synonyms = ax.score({job["name"]: job}, args)
        extra = {"synonyms": synonyms}
    return {**rows[0], **extra, "table": args.table, "row_id": job["row"], "seed": job["seed"],
            "pretrained": args.pretrained, "iters": args.iters, "val_images": args.val_images,
            "train_images": args.train_images, "machine": machine()}


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    m = sum(values) / len(values)
    return m, (math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0)


def aggregate(results: dict[str, dict], metric: str) -> dict[str, dict]:
    """Row id -> {"mean", "std", "n", "seeds"} of ``metric`` over the recorded seeds."""
    by_row: dict[str, dict[int, float]] = {}
    for r in results.values():
        if r.get(metric) is not None and math.isfinite(r[metric]):
            by_row.setdefault(r["row_id"], {})[int(r["seed"])] = float(r[metric])
    out = {}
    for row, seeds in by_row.items():
        m, s = mean_std(list(seeds.values()))
        out[row] = {"mean": m, "std": s, "n": len(seeds), "seeds": sorted(seeds)}
    return out


def verdict(better: dict | None, baseline: dict | None, min_seeds: int = 3) -> str:
    """'reproduced' when the better row's mean exceeds the baseline's by more than 2 std (the larger
    of the two rows' std), 'not reproduced' when it is below by more than that, 'within noise'
    otherwise; 'incomplete' with fewer than ``min_seeds`` seeds on either row."""
    if not better or not baseline or min(better["n"], baseline["n"]) < min_seeds:
        return "incomplete"
    diff, noise = better["mean"] - baseline["mean"], 2 * max(better["std"], baseline["std"])
    return "reproduced" if diff > noise else "not reproduced" if diff < -noise else "within noise"


def verdict_so_far(better: dict | None, baseline: dict | None, floor: float) -> str | None:
    """Before both rows have 3 seeds: the same rule on the seeds there are, each row's std floored at ``floor``
    (the reference configuration's seed std) -- a hint, never a verdict; None while a row has no seed, or while
    there is no noise estimate at all (one seed per row and a zero floor: any difference would count)."""
    if not better or not baseline or max(better["std"], baseline["std"], floor) <= 0:
        return None
    return verdict({**better, "std": max(better["std"], floor)}, {**baseline, "std": max(baseline["std"], floor)},
                   min_seeds=1)


def verdicts(results_root: Path = RESULTS) -> list[dict]:
    """Every claim with both rows' mean +- std and its verdict, from the recorded results."""
    out = []
    for claim, (table, metric, better, baseline, text) in CLAIMS.items():
        agg = aggregate(read_results(results_root / table), metric) if (results_root / table).is_dir() else {}
        out.append({"claim": claim, "table": table, "metric": metric, "statement": text,
                    "better": better, "baseline": baseline, "better_stats": agg.get(better),
                    "baseline_stats": agg.get(baseline), "verdict": verdict(agg.get(better), agg.get(baseline))})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("table", choices=["maskx", "alp"])
    ap.add_argument("--runs", default=str(ROOT / "runs" / "claims"))
    ap.add_argument("--results", default=str(RESULTS),
                    help="where results are recorded (and committed: the repository holding it), e.g. main's "
                         "bench/results/claims when the driver runs from a snapshot clone")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--pretrained", default=str(PRETRAINED.relative_to(ROOT)))
    ap.add_argument("--iters", type=int, default=4500, help="detector (maskx stage 1) / ALP-row iterations")
    ap.add_argument("--stage2-iters", type=int, default=600, help="maskx mask-branch iterations")
    ap.add_argument("--train-images", type=int, default=2000)
    ap.add_argument("--val-images", type=int, default=200)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--synonym-vocabularies", type=int, default=3)
    ap.add_argument("--mpnet", action="store_true", help="alp: also the FCOS-MO rows with text.encoder=mpnet")
    ap.add_argument("--tpad", action="store_true", help=f"alp: also the ALP-trained rows on ALPs curated at t_p {TPAD}")
    ap.add_argument("--commit", action="store_true", help="git commit each run's result file as it lands")
    args = ap.parse_args()
    if not (ROOT / args.pretrained).is_file():
        raise SystemExit(f"{args.pretrained}: no pretrained trunk (omniseg pretrain configs/pretrain_r18_dense.yaml)")
    runs, folder = Path(args.runs), Path(args.results) / args.table
    if args.table == "alp":
        ax.prepare(args)
        if args.tpad:
            prepare_tpad(args)
    todo_all = maskx_jobs(args) if args.table == "maskx" else alp_jobs(args)
    recorded = read_results(folder)
    # a recorded run's dependants may still need its folder: keep it in the plan, it is found finished
    todo = [j for j in todo_all if j["name"] not in recorded or any(k.get("after") == j["name"] for k in todo_all
                                                                  if k["name"] not in recorded)]
    n_recorded = sum(j["name"] in recorded for j in todo_all)  # of these jobs (the folder may hold other seeds')
    print(f"{n_recorded} recorded, {len(todo_all) - n_recorded} to run", flush=True)

    def done(job: dict) -> None:
        if job["name"] in recorded:
            return
        extra = []
        if job["name"].startswith("maskx_detector_"):
            extra = [keep_detector(runs / job["name"] / "stage1", folder / DETECTORS / f"{job['name']}.safetensors")]
        record_result(folder / f"{job['name']}.json", score_one(job, args), args.commit, extra)

    for job in finished_runs(todo, runs).values():
        done(job)
    run_jobs(todo, runs, lambda j: (mx.command if args.table == "maskx" else ax.command)(j, runs), args.parallel,
             ROOT, done)


if __name__ == "__main__":
    main()
