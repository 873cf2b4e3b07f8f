"""Issue 13's numbers for MAL, the Mask Auto-Labeler (paper: ../shared/papers/mal-mask-auto-labeler.txt),
run over several sessions: every finished run is scored and recorded at once in
``bench/results/mal/<table>/<run>.json`` (``--commit``: committed at once); recorded runs are never re-run.

    python bench/mal_experiments.py TABLE [--seeds 0 1 2] [--commit] [--runs DIR] [--results DIR]
                                          [--parallel 2] [--iters N] [--hours H] [--dry-run]

Tables (``report_mal.py`` renders them):

* ``pretrain``: the MAE ViT-S/16 backbone MAL starts from (configs/pretrain_mae_vits_synth.yaml: 128 px images,
  patch 16 = MAL's 128 px crops, the same 8 x 8 grid; ``vit_filter_fn`` would resize pos_embed anyway), kept as
  fp16 safetensors + manifest in bench/results/pretrained/mae_vits16_synth/ (the loader casts to fp32).
* ``synth``: MAL (attention decoder, MAE init; configs/mal_vits_synth.yaml) per seed: pseudo-mask mIoU / mask AP
  on the held-out images' boxes vs their true masks, next to the filled box and the ellipse (the recipe's eval).
* ``retention`` (paper Sec. 4.3 / Table 2 protocol): per labeler of ``RETENTION_LABELERS`` and seed,
  ``omniseg autolabel`` the boxes of the Mask R-CNN's training world with that seed's labeler (the ``synth`` fp32
  run at the config's margin: jobs ``ret_autolabel_s<seed>``, ``ret_mrcnn_mal_s<seed>``; the 8000-step schedule
  run at θ_test 0.15: ``ret_autolabel_sched_8000_bf16_t0.15_s<seed>``, ...), then the yardstick oracle Mask R-CNN
  (configs/maskx_voc_like.yaml, every class's masks, from the committed ResNet trunk) on the MAL masks and on
  the true masks (``ret_mrcnn_true_s<seed>``, shared); retention = mask AP ratio on held-out images.
* ``ablations`` (every row over the seeds, seed by seed: each row is a paper claim): decoder FC / FCN (Table 3), ResNet-18 trunk / ViT from scratch (Table 4),
  θ in {0, 0.6, 1.0, 1.6} (Table 5), EMA teacher off, CRF loss off, whole image instead of crops (Sec. 3.1:
  ``model.input=image``, each 256 px image encoded once at its own resolution -- 2 x 16^2 tokens a step, as many
  as 8 crops of 8^2 -- and RoIAlign per expanded box); the reference row is ``synth``'s runs of the same seeds.
* ``schedule``: does the reference stop short? It sees each of its 400 training images' boxes ~9 times (2000
  steps x <= 8 crops; the paper: 10 epochs, Sec. 4.2) -- the epochs of the paper on a world ~500x smaller than
  COCO's boxes. The reference (as ``synth``) at 2x and 4x the iterations AND the training images (the same ~9
  epochs; the synthetic world has images to spare; jobs ``sched_<iters>_<amp>_s<seed>``) and at its own
  iterations on 4x the images (~2 epochs; ``sched_<iters>_<images>img_<amp>_s<seed>``: data or steps?), each
  under its own cosine schedule, evaluated every ``--iters`` steps on the same held-out boxes; the report sets
  them beside the synth runs of the same precision.
* ``margin``: the test-time box expansion θ_test (every side of the box grown by θ_test / 2 of its half-extent before
  the crop; the configs label at 0.6, the authors' code's test margin, with their 512 px crops): each synth run of
  the precision, and each schedule run that scales its images with its iterations, re-scored (no training) at every
  θ_test of ``MARGINS`` on the tables' held-out boxes and on a selection world (val seed ``MARGIN_SELECT_SEED``,
  never scored elsewhere) that picks the margin; the coco_mini runs too, on their scored photos only (no selection
  there: the report reads them at the synthetic world's pick); jobs ``margin_<run>``.
* ``coco_mini``: MAL on the boxes of the 80 coco-mini photos (masks only for scoring), scored on boxes whose
  shorter side is >= 16 px.
* ``speed``: autolabel boxes/s and peak memory with 2 torch threads at the CPU config (weights of a
  1-iteration run: speed does not depend on them).

``--amp bf16`` (synth; the default of ablations, schedule, margin and coco_mini, where ``--amp none`` trains in fp32): every MAL run
trains under bf16 autocast (``train.amp=bf16``; ~2x faster ViT-S steps on an AVX512-BF16 CPU, see the configs'
recipe_speed records) and is named ``<row>_bf16_s<seed>``; its record carries ``"amp": "bf16"`` and the report keeps
it apart: bf16 ablations are judged against the bf16 reference seeds, and the synth table compares bf16 with fp32
(bf16 within noise of fp32 over 3 seeds each is why the 33 ablation runs and coco_mini default to it).

A MAL checkpoint (ViT-S student + EMA teacher: ~195 MB; the student alone ~49 MB in fp16, per seed) is too
large to commit, so an autolabel job runs on the machine of its MAL run, right after it (listed first among the
ready jobs); its masks are committed (gzipped) so the Mask R-CNN on them can run anywhere. A recorded MAL run
whose folder is gone is trained again when a dependant still needs it (its record is kept). The 8000-step labeler,
its margin re-scoring and its autolabel job must therefore end within one session: with one thread beside another
job (~1.2 s/it) they do not fit in 3 hours; ``--parallel 1 --run-threads 2`` (both cores, 0.73 s/it) does: seed 2
took 98 min, its margin job 2.2 min and its autolabel job 5.5 min (27 boxes/s).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import re
import resource
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from experiment_runner import drive, driver_parser, machine  # noqa: E402
from yardstick import ORACLE, PRETRAINED  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "mal"
BACKBONE = ROOT / "bench" / "results" / "pretrained" / "mae_vits16_synth" / "backbone.safetensors"
COCO_MINI = ROOT.parent / "shared" / "data" / "coco-mini"
TABLES = ("pretrain", "synth", "retention", "ablations", "schedule", "margin", "coco_mini", "speed")
#: the schedule table's rows: (iterations as a multiple of --iters, training images as a multiple of the config's)
SCHEDULE = ((2, 2), (1, 4), (4, 4))
#: the retention table's labelers, each (MAL run, test-time margin θ_test): the synth table's fp32 run of the seed
#: (None) at the config's margin -- the paper's protocol as first run here -- and the 4x schedule run (bf16, ~9
#: epochs over 4x the images; the best labeler measured) at the margin the margin table picks
RETENTION_LABELERS = ((None, None), ((4, 4), 0.15))
#: seconds per iteration on one thread (2-core dev machine, busy): MAL ViT-S at the CPU config and MAE ViT-S
#: measured (configs' comments), the oracle Mask R-CNN measured (bench/results/step_speed_oracle.json); MAL
#: without a teacher forward and with the ResNet-18 w16 trunk are guesses; autolabel: seconds per box at the CPU
#: config (measured: 15 boxes/s on one thread, 20 images, load ~3). The whole-image ablation runs as many encoder
#: tokens a step as the crops (module docstring) and is estimated as "mal".
S_PER = {"mal": 2.0, "mal_no_teacher": 1.7, "mal_resnet": 0.8, "mae": 0.75, "mrcnn": 0.9, "autolabel_box": 0.07}
#: seconds-per-iteration factor of bf16 autocast (``--amp``): 0.87 vs 1.75 s per MAL step measured side by side on the
#: busy dev machine (AVX512-BF16), 20 iterations each
AMP_SPEEDUP = {"bf16": 0.5}
#: the tables trained under bf16 unless ``--amp none``: the synth table's precision check (3 seeds each) puts bf16
#: within noise of fp32 at half the time a run
AMP_DEFAULT = {"ablations": "bf16", "schedule": "bf16", "margin": "bf16", "coco_mini": "bf16"}
#: the margin table's test-time expansions θ_test and the synthetic world (val seed) that picks one
MARGINS = (0.0, 0.15, 0.3, 0.45, 0.6, 0.9, 1.2)
MARGIN_SELECT_SEED = 2000
BOXES_PER_IMAGE = 4.6  # the synthetic world's mean instances per image
#: start-up + final evaluation; margin: one re-scoring per θ_test and world (~40 s each, measured by hand)
OVERHEAD_S = {"mal": 60, "mae": 60, "mrcnn": 180, "autolabel": 30, "speed": 30, "margin": 2 * 40 * len(MARGINS)}
#: row -> (label, overrides) of the one-seed ablations; the reference (attention, MAE ViT, θ 1.2, EMA, CRF) is synth's
ABLATIONS = {
    "decoder_fc": ("decoder FC (Table 3)", ["model.decoder=fc"]),
    "decoder_fcn": ("decoder FCN (Table 3)", ["model.decoder=fcn"]),
    "encoder_resnet18": ("ResNet-18 w16, committed trunk (Table 4)",
                         ["model.encoder=resnet18", "model.width=16", "model.norm=GN", "model.pretrained={trunk}"]),
    "encoder_vit_scratch": ("ViT-S from scratch (Table 4)", ["model.pretrained="]),
    **{f"theta_{t}": (f"θ = {t} (Table 5)", [f"model.theta={t}"]) for t in ("0", "0.6", "1.0", "1.6")},
    "ema_off": ("EMA teacher off (Sec. 3.2)", ["model.ema_teacher=false"]),
    "crf_off": ("CRF loss off (Sec. 3.2)", ["model.use_crf=false"]),
    "whole_image": ("whole image + RoIAlign, no crops (Sec. 3.1)", ["model.input=image", "model.image_size=256"]),
}
LOG_RATE = re.compile(r"(\d+) box\(es\) labelled here in ([\d.]+) s \(([\d.]+) boxes/s\)")


def rel(p: Path | str) -> str:
    """``p`` relative to the repository when inside it (for records and printed commands); a file under another
    checkout's ``bench/results`` (a driver run from a snapshot clone records into the main one) from there."""
    s = str(p).replace(str(ROOT) + os.sep, "")
    cut = s.find(f"{os.sep}bench{os.sep}results{os.sep}")
    return s[cut + 1:] if os.path.isabs(s) and cut >= 0 else s


def _merge(base: list[str], extra: list[str]) -> list[str]:
    """``base`` overrides without the keys ``extra`` sets, then ``extra``."""
    keys = {o.split("=", 1)[0] for o in extra}
    return [o for o in base if o.split("=", 1)[0] not in keys] + extra


def _omni(*words: str) -> list[str]:
    return [sys.executable, "-m", "omniseg.cli", *words]


def _sh(script: str) -> list[str]:
    """A shell script as a job command; run_jobs' appended --resume / --overwrite becomes its ignored $1."""
    return ["sh", "-c", script, "sh"]


def _job(name: str, table: str | None, kind: str, cmd: list[str], est_s: float, after: str | None = None,
         **extra) -> dict:
    shown = extra.pop("shown", None) or cmd
    return {"name": name, "table": table, "kind": kind, "cmd": cmd, "after": after, "est_s": est_s,
            "command": rel(shlex.join(["python" if w == sys.executable else w for w in shown])), **extra}


def _train(args: argparse.Namespace, name: str, table: str | None, kind: str, config: Path, overrides: list[str],
           est_s: float, after: str | None, verb: str = "train", **extra) -> dict:
    cmd = _omni(verb, str(config), *overrides, f"train.output_dir={Path(args.runs) / name}")
    return _job(name, table, kind, cmd, est_s, after, config=rel(config), overrides=overrides, **extra)


def run_name(args: argparse.Namespace, base: str, seed: int) -> str:
    """``<base>_s<seed>``, or ``<base>_<amp>_s<seed>`` under ``--amp`` (module docstring)."""
    return f"{base}_s{seed}" if args.amp == "none" else f"{base}_{args.amp}_s{seed}"


def mal_job(args: argparse.Namespace, name: str, table: str | None, row: str, seed: int, extra: list[str] = (),
            iters: int | None = None) -> dict:
    """One MAL training run (from the MAE backbone unless ``extra`` says otherwise; under bf16 autocast with
    ``--amp bf16``)."""
    iters = iters or args.iters
    base = [f"train.seed={seed}", f"train.max_iter={iters}", "train.progress=false",
            f"train.checkpoint_period={iters // 4 if iters >= 100 else 0}", f"model.pretrained={args.backbone}"]
    base += [f"train.amp={args.amp}"] if args.amp != "none" else []
    overrides = _merge(base, [o.replace("{trunk}", str(args.trunk)) for o in extra])
    scratch = f"model.pretrained={args.backbone}" not in overrides or not args.backbone
    after = None if scratch or Path(args.backbone).is_file() else Path(args.backbone).parent.name
    s = S_PER["mal_resnet" if "model.encoder=resnet18" in overrides else "mal_no_teacher"
              if {"model.ema_teacher=false", "model.use_crf=false"} & set(overrides) else "mal"]
    s *= AMP_SPEEDUP.get(args.amp, 1.0)
    return _train(args, name, table, "mal", Path(args.config), overrides, iters * s + OVERHEAD_S["mal"], after,
                  row=row, seed=seed, iters=iters, amp=args.amp)


def sched_name(iters: int, images: int, same_epochs: bool) -> str:
    """``sched_<iters>`` (images scaled with the iterations) or ``sched_<iters>_<images>img``."""
    return f"sched_{iters}" if same_epochs else f"sched_{iters}_{images}img"


def _config_value(config: Path, section: str, key: str):
    import yaml

    return yaml.safe_load(config.read_text(encoding="utf-8"))[section][key]


def world(args: argparse.Namespace) -> Path:
    return Path(args.runs) / f"world_{args.train_images}"


def masks_gz(args: argparse.Namespace, seed: int, tag: str = "") -> Path:
    """The committed masks of a retention autolabel job (``tag``: its labeler's, ``labeler_tag``)."""
    return Path(args.results) / "retention" / "masks" / f"ret_autolabel{tag}_s{seed}.json.gz"


def plan(args: argparse.Namespace) -> list[dict]:
    """Every job of ``args.table`` (dependencies before dependants; a dependency only where no committed
    artefact stands in for it): the MAE pretraining first when a job waits for it."""
    pre = _train(args, Path(args.backbone).parent.name, "pretrain", "mae", Path(args.pretrain_config),
                 [f"train.max_iter={args.pretrain_iters}", "train.progress=false"],
                 args.pretrain_iters * S_PER["mae"] + OVERHEAD_S["mae"], None, verb="pretrain",
                 row="mae_vits16", seed=0, iters=args.pretrain_iters)
    if args.table == "pretrain":
        return [pre]
    jobs = _table_jobs(args)
    return ([pre] if any(j["after"] == pre["name"] for j in jobs) else []) + jobs


def _table_jobs(args: argparse.Namespace) -> list[dict]:
    runs, t = Path(args.runs), args.table
    if t == "synth":
        return [mal_job(args, run_name(args, "synth", s), "synth", "mal_attention_mae", s) for s in args.seeds]
    if t == "ablations":  # seed by seed: every row of one seed before the next seed
        return [job for s in args.seeds for job in (
            [mal_job(args, run_name(args, "synth", s), "synth", "mal_attention_mae", s)]
            + [mal_job(args, run_name(args, f"abl_{row}", s), "ablations", row, s, over)
               for row, (_, over) in ABLATIONS.items()])]
    if t == "schedule":
        return schedule_jobs(args, args.seeds)
    if t == "margin":  # each re-scoring right after the run it reads
        return [j for s in args.seeds for r in [mal_job(args, run_name(args, "synth", s), "synth", "mal_attention_mae",
                                                        s)] + [r for r in schedule_jobs(args, [s]) if r["same_epochs"]]
                + coco_jobs(args, [s]) for j in (r, margin_job(args, r))]
    if t == "coco_mini":
        return coco_jobs(args, args.seeds)
    if t == "speed":
        labeler = mal_job(args, "speed_labeler", None, "speed_labeler", 0,
                          ["data.train_num_images=4", "data.val_num_images=2", "model.pretrained="], iters=1)
        sw, out = runs / "speed_world", runs / "speed"
        inner = _omni("autolabel", str(sw / "boxes.json"), "--images", str(sw / "images"), "--checkpoint",
                      str(runs / "speed_labeler"), "--out", str(out / "out" / "masks.json"))
        script = (f"rm -rf {shlex.quote(str(out / 'out'))} && mkdir -p {shlex.quote(str(out / 'out'))} && "
                  f"OMP_NUM_THREADS={args.threads} MKL_NUM_THREADS={args.threads} exec "
                  + shlex.join([sys.executable, str(Path(__file__).resolve()), "_peak", str(out / "peak.json"),
                                *inner]))
        est = args.speed_images * BOXES_PER_IMAGE * S_PER["autolabel_box"] / args.threads + OVERHEAD_S["speed"]
        return [labeler, _job("speed", "speed", "speed", _sh(script), est, "speed_labeler", shown=inner,
                              row="autolabel_speed", seed=0, images=args.speed_images)]
    # retention: per labeler and seed MAL -> autolabel (same machine) -> Mask R-CNN on its masks; Mask R-CNN on true masks
    w = world(args)
    mrcnn = ORACLE + [f"data.val_num_images={args.val_images}", f"model.pretrained={args.trunk}",
                      f"train.max_iter={args.mrcnn_iters}", "train.eval_period=0", "train.progress=false",
                      f"train.checkpoint_period={max(1, args.mrcnn_iters // 6)}"]
    est_mrcnn = args.mrcnn_iters * S_PER["mrcnn"] + OVERHEAD_S["mrcnn"]
    est = args.train_images * BOXES_PER_IMAGE * S_PER["autolabel_box"] + OVERHEAD_S["autolabel"]
    chains, rest = [], []
    for grid, theta in RETENTION_LABELERS:
        for s in args.seeds:
            mal = labeler_job(args, grid, s)
            base = mal["name"][:-len(f"_s{s}")]
            tag = labeler_tag(base, theta)
            gz, lab = masks_gz(args, s, tag), {"labeler": base, "label_theta": theta, "tag": tag}
            label = _omni("autolabel", str(w / "boxes.json"), "--images", str(w / "images"), "--checkpoint",
                          str(runs / mal["name"]), "--out", str(runs / f"ret_autolabel{tag}_s{s}" / "masks.json"),
                          *(["--test-theta", str(theta)] if theta is not None else []))
            chains += [mal, _job(f"ret_autolabel{tag}_s{s}", "retention", "autolabel", _sh(shlex.join(label)), est,
                                 mal["name"], shown=label, row="autolabel", seed=s, **lab)]
            rest.append(_train(args, f"ret_mrcnn_mal{tag}_s{s}", "retention", "mrcnn", Path(args.mrcnn_config),
                               mrcnn + [f"train.seed={s}", f"data.train={runs / 'masks' / f'masks{tag}_s{s}.json'}",
                                        f"data.train_images={w / 'images'}"],
                               est_mrcnn, None if gz.is_file() else f"ret_autolabel{tag}_s{s}", row="mrcnn_mal_masks",
                               seed=s, iters=args.mrcnn_iters, **lab))
    rest += [_train(args, f"ret_mrcnn_true_s{s}", "retention", "mrcnn", Path(args.mrcnn_config),
                    mrcnn + [f"train.seed={s}", f"data.train={w / 'instances.json'}", f"data.train_images={w / 'images'}"],
                    est_mrcnn, None, row="mrcnn_true_masks", seed=s, iters=args.mrcnn_iters) for s in args.seeds]
    return chains + rest


def labeler_job(args: argparse.Namespace, grid: tuple[int, int] | None, seed: int) -> dict:
    """The MAL run that labels the retention table's world: the synth table's fp32 run of ``seed`` (``grid`` None)
    or the bf16 schedule-table run of ``grid`` (one (k, m) of ``SCHEDULE``)."""
    if grid is None:
        return mal_job(args, f"synth_s{seed}", "synth", "mal_attention_mae", seed)
    return schedule_jobs(argparse.Namespace(**{**vars(args), "amp": "bf16"}), [seed], (grid,))[0]


def labeler_tag(base: str, theta: float | None) -> str:
    """The retention runs' name infix of a labeler (``base``: its MAL run's name less ``_s<seed>``): '' for the synth
    run at the config's margin (the table's first runs), else ``_<base>_t<θ_test>``."""
    return "" if base == "synth" and theta is None else f"_{base}_t{theta if theta is not None else 'cfg'}"


def schedule_rows(args: argparse.Namespace, grid: tuple[tuple[int, int], ...]) -> list[dict]:
    """The rows of a schedule table (this driver's and bench/openseg_experiments.py's): per (k, m) of ``grid``, k x
    ``--iters`` iterations on m x the config's training images, evaluated every ``--iters`` steps -- the run name's
    base, the row id, the overrides, ``iters``, ``train_images`` and ``same_epochs`` (k == m)."""
    images = _config_value(Path(args.config), "data", "train_num_images")
    return [{"base": sched_name(k * args.iters, m * images, k == m), "row": f"iters_{k * args.iters}_images_{m * images}",
             "overrides": [f"data.train_num_images={m * images}", f"train.eval_period={args.iters}"],
             "iters": k * args.iters, "train_images": m * images, "same_epochs": k == m} for k, m in grid]


def schedule_jobs(args: argparse.Namespace, seeds: list[int], grid: tuple[tuple[int, int], ...] = SCHEDULE) -> list[dict]:
    """The schedule table's runs (module docstring), seed by seed (``grid``: some of its rows)."""
    return [{**mal_job(args, run_name(args, r["base"], s), "schedule", r["row"], s, r["overrides"], iters=r["iters"]),
             "train_images": r["train_images"], "same_epochs": r["same_epochs"]}
            for s in seeds for r in schedule_rows(args, grid)]


def coco_jobs(args: argparse.Namespace, seeds: list[int]) -> list[dict]:
    """The coco_mini table's runs: MAL on the 80 photos' boxes, scored on coco_mini_val16.json (module docstring)."""
    data = [f"data.train={args.coco_mini / 'annotations' / 'instances_train2017.json'}",
            f"data.train_images={args.coco_mini / 'train2017'}", f"data.val={Path(args.runs) / 'coco_mini_val16.json'}",
            f"data.val_images={args.coco_mini / 'train2017'}"]
    return [mal_job(args, run_name(args, "coco_mini", s), "coco_mini", "mal_coco_mini", s, data) for s in seeds]


def margin_job(args: argparse.Namespace, run: dict) -> dict:
    """The margin table's re-scoring of ``run`` (a synth or schedule job), after it."""
    name = f"margin_{run['name']}"
    cmd = [sys.executable, str(Path(__file__).resolve()), "_margin", str(Path(args.runs) / run["name"]),
           str(Path(args.runs) / name / "margin.json")]
    images = run.get("train_images") or (80 if run["table"] == "coco_mini" else _config_value(
        Path(args.config), "data", "train_num_images"))
    return _job(name, "margin", "margin", cmd, OVERHEAD_S["margin"], run["name"], row=run["row"], seed=run["seed"],
                iters=run["iters"], train_images=images, source=run["name"], amp=args.amp)


def margin_scores(run: Path, out: Path) -> dict:
    """mIoU / mask AP of a MAL checkpoint at every test-time margin θ_test of ``MARGINS``: on the run's own held-out
    boxes (``heldout_*``, the tables' scores) and, for a run on the synthetic world, on the selection world
    (``select_*``, val seed ``MARGIN_SELECT_SEED``; ``chosen_theta``: the best there). A run scored on photos gets no
    selection (its photos are its only scored boxes: the report reads it at the margin the synthetic world picks).
    Written atomically to ``out``."""
    import dataclasses

    from omniseg.api import Segmenter
    from omniseg.recipes.mal import make_eval_fn
    from omniseg.utils.atomic import atomic_write_json

    seg = Segmenter.from_checkpoint(run)
    model, cfg = seg.model, seg.cfg
    model.eval()
    evals = {"heldout": make_eval_fn(cfg, progress=False)}
    if cfg.data.val == "synth":
        select = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, val_seed=MARGIN_SELECT_SEED))
        evals["select"] = make_eval_fn(select, progress=False)
    trained, rows = model.cfg.test_theta, []
    for theta in MARGINS:
        model.cfg.test_theta = theta
        row = {"theta": theta}
        for world, ev in evals.items():
            r = ev(model)
            row.update({f"{world}_mIoU": r["mask_mIoU"], f"{world}_AP": r["mask_AP"]})
        rows.append(row)
        print(f"{run.name}: θ_test {theta}: " + ", ".join(f"{w} mIoU {row[f'{w}_mIoU']:.4f}" for w in evals),
              flush=True)
    result = {"margins": rows, "config_test_theta": trained}
    if "select" in evals:
        result.update(select_val_seed=MARGIN_SELECT_SEED,
                      chosen_theta=max(rows, key=lambda r: r["select_mIoU"])["theta"])
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, result, indent=1)
    return result


def _metrics(run: Path) -> dict:
    return json.loads((run / "run.json").read_text(encoding="utf-8")).get("metrics") or {}


def train_boxes_miou(truth: Path, labelled: Path) -> dict:
    """Mean IoU of the autolabelled masks with the true masks, annotation by annotation (same order)."""
    from omniseg.ops.rle import normalize_rle, rle_iou

    gt = json.loads(truth.read_text(encoding="utf-8"))["annotations"]
    out = json.loads(labelled.read_text(encoding="utf-8"))["annotations"]
    ious = [float(rle_iou([normalize_rle(b["segmentation"])], [normalize_rle(a["segmentation"])])[0, 0])
            for a, b in zip(gt, out) if a["id"] == b["id"] and isinstance(a.get("segmentation"), dict)
            and isinstance(b.get("segmentation"), dict)]
    return {"train_boxes_mIoU": sum(ious) / len(ious) if ious else None, "train_boxes_scored": len(ious),
            "boxes": len(gt), "skipped": sum("autolabel_skipped" in b for b in out)}


def _rate(log: Path) -> dict:
    hits = LOG_RATE.findall(log.read_text(encoding="utf-8", errors="replace")) if log.is_file() else []
    if not hits:
        return {}
    return {"boxes_labelled": int(hits[-1][0]), "label_s": float(hits[-1][1]), "boxes_per_s": float(hits[-1][2])}


def score(job: dict, args: argparse.Namespace) -> tuple[dict, list[Path]]:
    """The record of a finished job and the artefacts committed with it."""
    runs, run = Path(args.runs), Path(args.runs) / job["name"]
    out = {"table": job["table"], "run": job["name"], "row_id": job["row"], "seed": job["seed"],
           "amp": job.get("amp", "none"), "kind": job["kind"], "wall_s": round(job["wall_s"], 1), "machine": machine(args.run_threads),
           "command": job["command"], "driver": f"python bench/mal_experiments.py {args.table}", "iters": job.get("iters")}
    if job["table"] == "ablations":
        out.update(label=ABLATIONS[job["row"]][0])
    if "labeler" in job:  # a retention run's labeler: its MAL run base and test-time margin (None: the config's)
        out.update(labeler=job["labeler"], label_theta=job["label_theta"])
    extra: list[Path] = []
    if job["kind"] in ("mal", "mrcnn"):
        out.update(_metrics(run))
        if job["table"] == "schedule":
            out.update(curve=eval_curve(run / "metrics.jsonl"), train_images=job["train_images"])
    elif job["kind"] == "margin":
        out.update(json.loads((run / "margin.json").read_text(encoding="utf-8")), source=job["source"],
                   train_images=job["train_images"])
    elif job["kind"] == "mae":
        out.update(keep_backbone(run, Path(args.backbone)))
        extra = [Path(args.backbone), Path(args.backbone).parent / "manifest.json"]
    elif job["kind"] == "autolabel":
        masks, gz = run / "masks.json", masks_gz(args, job["seed"], job["tag"])
        gz.parent.mkdir(parents=True, exist_ok=True)
        with open(masks, "rb") as f, gzip.open(gz, "wb", compresslevel=9) as g:
            shutil.copyfileobj(f, g)
        (runs / "masks").mkdir(exist_ok=True)
        shutil.copyfile(masks, runs / "masks" / f"masks{job['tag']}_s{job['seed']}.json")
        out.update(train_boxes_miou(world(args) / "instances.json", masks), **_rate(run / "stdout.log"),
                   masks=rel(gz), world_images=args.train_images)
        extra = [gz]
    elif job["kind"] == "speed":
        peak = json.loads((run / "peak.json").read_text(encoding="utf-8"))
        out.update(_rate(run / "stdout.log"), **peak, images=job["images"], machine=(
            f"{platform.machine()}, {os.cpu_count()} cores, {args.threads} torch threads"), config=rel(args.config))
    return out, extra


def eval_curve(metrics: Path, keys: dict[str, str] | None = None) -> list[dict]:
    """The periodic evaluations of a run's metrics.jsonl by step: ``{"step", name: eval/<metric>}`` for each
    ``keys`` item name -> metric (default MAL's held-out mIoU and mask AP; ``{}``: every eval/ metric under its own
    name). A step evaluated twice, e.g. the last one again by a ``--resume`` of the finished run, counts once: its
    latest record."""
    from omniseg.engine.logging import read_metric_log

    keys = {"mIoU": "mask_mIoU", "AP": "mask_AP"} if keys is None else keys
    out = {}
    for rec in read_metric_log(metrics):
        found = {k[len("eval/"):]: v for k, v in rec.items() if k.startswith("eval/")}
        if found and all(m in found for m in keys.values()):
            out[rec["step"]] = {"step": rec["step"], **({n: found[m] for n, m in keys.items()} if keys else found)}
    return [out[k] for k in sorted(out)]


def train_tail(metrics: Path, steps: int = 100) -> dict[str, float]:
    """A run's training losses at its end: the mean of each logged ``loss*`` value over the records of its last
    ``steps`` steps (step > last step - ``steps``); {} when metrics.jsonl logs no loss. Periodic evaluation records
    (``eval/...`` only) are skipped."""
    from omniseg.engine.logging import read_metric_log

    recs = [r for r in read_metric_log(metrics) if "step" in r and any(k.startswith("loss") for k in r)]
    if not recs:
        return {}
    last = max(r["step"] for r in recs)
    tail: dict[str, list[float]] = {}
    for r in recs:
        if r["step"] > last - steps:
            for k, v in r.items():
                if k.startswith("loss") and isinstance(v, (int, float)):
                    tail.setdefault(k, []).append(float(v))
    return {k: sum(v) / len(v) for k, v in tail.items()}


def keep_backbone(run: Path, dst: Path) -> dict:
    """The MAE run's backbone as fp16 safetensors at ``dst`` (load_pretrained casts it to the model's
    fp32) with its manifest (sha256 of the fp16 file; the fp32 file's kept as ``fp32_sha256``)."""
    import hashlib

    from safetensors.torch import load_file, save

    from omniseg.utils.atomic import atomic_write_bytes, atomic_write_json

    sd = load_file(run / "backbone.safetensors")
    data = save({k: v.half() if v.is_floating_point() else v for k, v in sd.items()})
    dst.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(dst, data)
    manifest = json.loads((run / "manifest.json").read_text(encoding="utf-8"))
    manifest.update(fp32_sha256=manifest.get("sha256"), sha256=hashlib.sha256(data).hexdigest(), dtype="float16",
                    usage=f"model.pretrained={rel(dst)}")
    atomic_write_json(dst.parent / "manifest.json", manifest, indent=1)
    return {k: manifest.get(k) for k in ("steps", "final_losses", "eval", "train_loop_s", "sha256", "dtype")}


def prepare(todo: list[dict], args: argparse.Namespace) -> None:
    """Files the jobs read: the training world on disk and its boxes, the coco-mini scoring file, the
    committed MAL masks unpacked (each generated or unpacked once; deterministic)."""
    runs, kinds = Path(args.runs), {j["kind"] for j in todo}
    runs.mkdir(parents=True, exist_ok=True)
    if kinds & {"autolabel", "mrcnn"}:
        write_world(world(args), args.train_images)
    if "speed" in kinds:
        write_world(runs / "speed_world", args.speed_images)
    if any("coco_mini_" in j["name"] for j in todo):  # the coco_mini runs and their re-scoring
        write_coco_val(args.coco_mini / "annotations" / "instances_train2017.json", runs / "coco_mini_val16.json")
    for j in todo:
        if j["row"] == "mrcnn_mal_masks" and j["after"] is None:
            target = runs / "masks" / f"masks{j['tag']}_s{j['seed']}.json"
            if not target.is_file():
                target.parent.mkdir(exist_ok=True)
                with gzip.open(masks_gz(args, j["seed"], j["tag"]), "rb") as g, open(target, "wb") as f:
                    shutil.copyfileobj(g, f)


def write_world(folder: Path, images: int, seed: int = 0, size: int = 256) -> None:
    """The synthetic world (``seed``, ``size`` px) on disk, and ``boxes.json``: its instances without masks."""
    subprocess.run(_omni("data", "synth", "--out", str(folder), "--num-images", str(images), "--seed", str(seed),
                         "--image-size", str(size), "--workers", "2", "--no-progress"), check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)
    data = json.loads((folder / "instances.json").read_text(encoding="utf-8"))
    for a in data["annotations"]:
        a.pop("segmentation", None)
    (folder / "boxes.json").write_text(json.dumps(data), encoding="utf-8")


def write_coco_val(src: Path, dst: Path, min_side: float = 16.0) -> None:
    """``src`` with only the non-crowd boxes whose shorter side is >= ``min_side`` px (what is scored)."""
    data = json.loads(src.read_text(encoding="utf-8"))
    data["annotations"] = [a for a in data["annotations"] if not a.get("iscrowd") and min(a["bbox"][2:]) >= min_side]
    dst.write_text(json.dumps(data), encoding="utf-8")


def peak(out: Path, cmd: list[str]) -> int:
    """Run ``cmd``; write its wall time, peak resident memory and the load average to ``out``."""
    load0, t0 = os.getloadavg()[0], time.perf_counter()
    rc = subprocess.call(cmd)
    out.write_text(json.dumps({"rc": rc, "command_s": round(time.perf_counter() - t0, 2), "load_before": load0,
                               "load_after": os.getloadavg()[0],
                               "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
    return rc


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = driver_parser(__doc__, TABLES, ROOT / "runs" / "mal", RESULTS)
    ap.add_argument("--iters", type=int, default=2000, help="MAL iterations (configs/mal_vits_synth.yaml: 2000)")
    ap.add_argument("--config", default=str(ROOT / "configs" / "mal_vits_synth.yaml"), help="MAL config")
    ap.add_argument("--backbone", default=str(BACKBONE), help="MAE backbone MAL starts from ('' = from scratch)")
    ap.add_argument("--pretrain-config", default=str(ROOT / "configs" / "pretrain_mae_vits_synth.yaml"))
    ap.add_argument("--pretrain-iters", type=int, default=3000)
    ap.add_argument("--trunk", default=str(PRETRAINED), help="ResNet-18 w16 trunk (Mask R-CNN; the ResNet ablation)")
    ap.add_argument("--mrcnn-config", default=str(ROOT / "configs" / "maskx_voc_like.yaml"))
    ap.add_argument("--mrcnn-iters", type=int, default=4500, help="the yardstick schedule")
    ap.add_argument("--train-images", type=int, default=2000, help="the Mask R-CNN's training world (autolabelled)")
    ap.add_argument("--val-images", type=int, default=200)
    ap.add_argument("--coco-mini", type=Path, default=COCO_MINI)
    ap.add_argument("--speed-images", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2, help="speed: torch threads")
    ap.add_argument("--amp", choices=("none", "bf16"), default=None,
                    help="synth / ablations / schedule / margin / coco_mini: MAL runs under bf16 autocast or in fp32 "
                    "(default: bf16 for ablations, schedule, margin and coco_mini, fp32 otherwise; module docstring)")
    args = ap.parse_args(argv)
    args.amp = args.amp or AMP_DEFAULT.get(args.table, "none")
    if args.amp != "none" and args.table not in ("synth", "ablations", "schedule", "margin", "coco_mini"):
        raise SystemExit(f"--amp {args.amp}: only the synth, ablations, schedule, margin and coco_mini tables (the retention "
                         "labels, the MAE backbone and the speed table are fp32)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    drive(args, plan(args), score, prepare, parallel=1 if args.table == "speed" else args.parallel)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "_peak":  # internal: python bench/mal_experiments.py _peak OUT CMD...
        sys.exit(peak(Path(sys.argv[2]), sys.argv[3:]))
    if len(sys.argv) >= 4 and sys.argv[1] == "_margin":  # internal: ... _margin RUN OUT [run_jobs' --overwrite]
        margin_scores(Path(sys.argv[2]), Path(sys.argv[3]))
        sys.exit(0)
    main()
