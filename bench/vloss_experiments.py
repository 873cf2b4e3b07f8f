"""Issue 15's numbers for VLOSS (paper: ../shared/papers/vloss-omni-supervised-segmentation.txt, Sec. 4.5), run
over several sessions: every finished run is scored from its run.json metrics and recorded at once in
``bench/results/vloss/<table>/<run>.json`` (``--commit``: committed at once); recorded runs are never re-run.

    python bench/vloss_experiments.py TABLE [--seeds 0 1 2] [--commit] [--runs DIR] [--results DIR]
                                            [--parallel 2] [--iters N] [--hours H] [--dry-run]

Every run is ``omniseg train configs/vloss_synth.yaml <row overrides>`` (the config = the full model: STT,
positive-only L_cls, CLIP-style L_con on the image-text source, FPN-style encoder), scored by the recipe's own
evaluation on 50 held-out images: PQ / PQ_th / PQ_st, thing mask AP, and PQ_th / mask AP on the open-world
(detection-only) classes. Detection boxes are supervised by the box-projection loss (no ``data.pseudo_masks``;
the paper uses pseudo masks, Sec. 3.2). Tables (``report_vloss.py`` renders them):

* ``table3`` (Table 3, incremental): panoptic source only -> + detection data (naive mix, L_cls on every query)
  -> + positive-only L_cls -> + STT -> + L_con (image-text source, CLIP) = the full model. The rows before L_con
  have no image-text source and ``model.contrastive=none``; STT needs the detection source, so the rows before
  it use ``data.schedule=mix``.
* ``table4`` (Table 4): mix vs pretrain-finetune vs STT, all else as the full model; the STT row is table3's
  full-model run (recorded there, never trained twice). The paper's "w/ Mixing" PQ (10.225) equals its Table 3
  "+ pos L_cls" row, i.e. perhaps without L_con; here only the schedule differs.
* ``table5`` (Table 5): FPN vs FPN-style encoder. As the paper ("All experiments are trained on COCO panoptic
  and COCO captioning datasets", Sec. 4.5), trained on the panoptic + image-text sources only (naive mix).
* ``table6`` (Table 6): FILIP- vs CLIP-style L_con, same data as table5; the CLIP row is table5's FPN-style run of that seed (the paper's Tables 5 and 6 share it, 12.680 PQ).
* ``pseudo`` (ONE seed, no paper claim): the full model with the detection boxes supervised by MAL pseudo masks
  (the paper's choice, Sec. 3.2) vs by the box-projection loss (table3's full-model run). The detection source is
  written to disk (``omniseg data synth``, the config's seed and size: the same images and boxes as in memory),
  labelled by ``omniseg autolabel`` with the MAL run ``<--mal-runs>/synth_s<seed>`` (bench/mal_experiments.py
  synth; it must exist on this machine), and those masks are given as ``data.pseudo_masks``; the record adds the
  pseudo masks' mIoU with the true masks.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import mal_experiments as mx  # noqa: E402
from experiment_runner import drive, driver_parser, machine  # noqa: E402
from mal_experiments import (  # noqa: E402
    BOXES_PER_IMAGE,
    _job,
    _merge,
    _omni,
    _sh,
    _train,
    rel,
    train_boxes_miou,
    write_world,
)

RESULTS = ROOT / "bench" / "results" / "vloss"
TABLES = ("table3", "table4", "table5", "table6", "pseudo")
#: ESTIMATED seconds per iteration on one thread: configs/vloss_synth.yaml (full model) measured with nice -n 10 on
#: the 2-core dev machine at load average ~9-10 (other sessions' training runs): 2.48 s/iter over a 30-iteration
#: run (first pass drawing the images included), 1.8-2.0 s/iter over steps 100-300 of a 300-iteration run (2.58
#: cumulative). Every row is taken as the same (rows without detection / image-text batches may be a bit faster).
S_PER = {"vloss": 2.0}
#: start-up before step 0 (drawing the 1250 synthetic images, loading MiniLM: measured ~280 s on the busy machine)
#: + the final evaluation on 50 images (~20 s)
OVERHEAD_S = 300
NO_TEXT = ["data.image_text=", "model.contrastive=none"]  # no image-text source, no L_con
CAPTIONS_ONLY = ["data.detection=", "data.schedule=mix"]  # Tables 5-6: panoptic + image-text (Sec. 4.5)
#: row id -> (label, overrides of configs/vloss_synth.yaml)
ROWS = {
    "baseline": ("Mask2Former-style + text classifier (panoptic only)", ["data.detection=", *NO_TEXT,
                                                                         "data.schedule=mix"]),
    "detection": ("+ detection data (mix, L_cls on every query)", [*NO_TEXT, "data.schedule=mix",
                                                                    "model.positive_only_cls=false"]),
    "pos_cls": ("+ positive-only L_cls", [*NO_TEXT, "data.schedule=mix"]),
    "stt": ("+ STT", list(NO_TEXT)),
    "full": ("+ L_con (image-text, CLIP) = VLOSS", []),
    "mix": ("mix (all else as the full model)", ["data.schedule=mix"]),
    "pretrain_finetune": ("pretrain-finetune", ["data.schedule=pretrain_finetune"]),
    "fpn": ("FPN encoder", [*CAPTIONS_ONLY, "model.encoder=fpn"]),
    "fpn_style": ("FPN-style encoder (CLIP L_con)", list(CAPTIONS_ONLY)),
    "filip": ("FILIP-style L_con (FPN-style encoder)", [*CAPTIONS_ONLY, "model.contrastive=filip"]),
    "full_mal": ("full model, MAL pseudo masks on the detection boxes", ["data.pseudo_masks={pseudo}"]),
}
#: table -> its rows in the paper's order; a row is recorded in the first table listing it
TABLE_ROWS = {"table3": ["baseline", "detection", "pos_cls", "stt", "full"],
              "table4": ["mix", "pretrain_finetune", "full"], "table5": ["fpn", "fpn_style"],
              "table6": ["filip", "fpn_style"], "pseudo": ["full_mal", "full"]}
HOME = {row: t for t in reversed(TABLES) for row in TABLE_ROWS[t]}
SINGLE_SEED = ("pseudo",)  # a comparison without a claim: one seed
DETECTION_WORLD = "detection_world"  # the detection source on disk (pseudo table), under --runs


def detection_source(config: Path) -> tuple[int, int, int]:
    """(images, seed, image size) of the full model's synthetic detection source (``config``'s data section)."""
    from omniseg.recipes.table import load_experiment

    d = load_experiment(config)[1].data
    if d.detection != "synth":
        raise SystemExit(f"{rel(config)}: the pseudo table writes the synthetic detection source; "
                         f"data.detection is {d.detection!r}")
    return d.detection_num_images, d.detection_seed, d.image_size


def labels(args: argparse.Namespace, seed: int) -> Path:
    """Where ``mal_labels_s<seed>`` writes the MAL pseudo masks of the detection source."""
    return Path(args.runs) / f"mal_labels_s{seed}" / "masks.json"


def label_job(args: argparse.Namespace, seed: int) -> dict:
    """``omniseg autolabel`` of the detection source's boxes with the MAL run of ``seed`` (a helper job)."""
    world, mal = Path(args.runs) / DETECTION_WORLD, Path(args.mal_runs) / f"synth_s{seed}"
    cmd = _omni("autolabel", str(world / "boxes.json"), "--images", str(world / "images"), "--checkpoint", str(mal),
                "--out", str(labels(args, seed)))
    est = detection_source(Path(args.config))[0] * BOXES_PER_IMAGE * mx.S_PER["autolabel_box"]
    return _job(f"mal_labels_s{seed}", None, "autolabel", _sh(shlex.join(cmd)), est + mx.OVERHEAD_S["autolabel"],
                shown=cmd, row="mal_labels", seed=seed)


def train_job(args: argparse.Namespace, row: str, seed: int) -> dict:
    """The training run ``<row>_s<seed>``, recorded in the row's home table."""
    iters = args.iters
    base = [f"train.seed={seed}", f"train.max_iter={iters}", "train.progress=false",
            f"train.checkpoint_period={iters // 4 if iters >= 100 else 0}"]
    overrides = _merge(base, [o.replace("{pseudo}", str(labels(args, seed))) for o in ROWS[row][1]])
    return _train(args, f"{row}_s{seed}", HOME[row], "vloss", Path(args.config), overrides,
                  iters * S_PER["vloss"] + OVERHEAD_S, f"mal_labels_s{seed}" if row == "full_mal" else None,
                  row=row, seed=seed, iters=iters)


def plan(args: argparse.Namespace) -> list[dict]:
    """Every job of ``args.table`` (seed-major; single-seed tables: the first seed); a pseudo-mask run after
    the autolabelling of its detection source."""
    seeds = args.seeds[:1] if args.table in SINGLE_SEED else args.seeds
    return [j for s in seeds for row in TABLE_ROWS[args.table]
            for j in ([label_job(args, s)] if row == "full_mal" else []) + [train_job(args, row, s)]]


def prepare(todo: list[dict], args: argparse.Namespace) -> None:
    """The detection source on disk with its boxes, when an autolabelling job runs (deterministic)."""
    if any(j["kind"] == "autolabel" for j in todo):
        write_world(Path(args.runs) / DETECTION_WORLD, *detection_source(Path(args.config)))


def score(job: dict, args: argparse.Namespace) -> tuple[dict, list[Path]]:
    """The record of a finished run: its run.json metrics plus where and how it ran."""
    run = Path(args.runs) / job["name"]
    out = {"table": job["table"], "run": job["name"], "row_id": job["row"], "seed": job["seed"],
           "label": ROWS[job["row"]][0], "kind": job["kind"], "iters": job["iters"], "wall_s": round(job["wall_s"], 1),
           "machine": machine(args.run_threads), "command": job["command"], "config": rel(job["config"]),
           "overrides": job["overrides"], "driver": f"python bench/vloss_experiments.py {args.table}"}
    if job["table"] in SINGLE_SEED:
        out["single_seed"] = True
    out.update(json.loads((run / "run.json").read_text(encoding="utf-8")).get("metrics") or {})
    if job["row"] == "full_mal":
        world = Path(args.runs) / DETECTION_WORLD
        out["pseudo_masks"] = {"labeler": rel(Path(args.mal_runs) / f"synth_s{job['seed']}"),
                               **train_boxes_miou(world / "instances.json", labels(args, job["seed"]))}
    return out, []


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = driver_parser(__doc__, TABLES, ROOT / "runs" / "vloss", RESULTS)
    ap.add_argument("--iters", type=int, default=2000, help="training iterations (the config: 2000)")
    ap.add_argument("--config", default=str(ROOT / "configs" / "vloss_synth.yaml"), help="the full model's config")
    ap.add_argument("--mal-runs", default=str(ROOT / "runs" / "mal"),
                    help="pseudo: the folder of bench/mal_experiments.py's runs (its synth_s<seed> labels)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    drive(args, plan(args), score, prepare)


if __name__ == "__main__":
    main()
