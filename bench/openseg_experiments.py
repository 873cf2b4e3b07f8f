"""Issue 14's numbers for OpenSeg (paper: ../shared/papers/openseg-image-level-labels.txt) and its LSeg+ baseline,
run over several sessions: every finished run is scored and recorded at once in
``bench/results/openseg/<table>/<run>.json`` (``--commit``: committed at once); recorded runs are never re-run.

    python bench/openseg_experiments.py TABLE [--seeds 0 1 2] [--commit] [--runs DIR] [--results DIR]
                                              [--parallel 2] [--iters N] [--hours H] [--dry-run]

Tables (``report_openseg.py`` renders them):

* ``synth``: per seed OpenSeg (configs/openseg_synth.yaml), LSeg+ (configs/lseg_synth.yaml) and the ALIGN-style
  image-level baseline (configs/align_synth.yaml, job ``align_s<seed>``), scored by the recipe's evaluation on 50
  held-out images: proposal recall@0.5/0.7/0.9 (OpenSeg; Table 1 protocol), mIoU and grounding mIoU with the
  vocabularies names / synonyms / all (Sec. 4.3). Then, per seed, the OpenSeg checkpoint is re-scored (job
  ``openseg_rescore_s<seed>``, no training): "no proposals at inference" (``model.inference=pixels``, Sec. 4.4:
  F_z . w per pixel) and the GT-mask upper bound (the ground-truth segments as the proposals, their region
  features z = mask-weighted mean of the model's F_z, exactly as for its own proposals, Sec. 3.2).
* ``ablations`` (every row over the seeds, seed by seed: each is a paper claim): caption words all / noun+adj+verb (``model.words``; Table 3); the noun+adj reference
  is the ``synth`` OpenSeg row (same seeds). With narratives pseudo-labels (Sec. 3.3, 4.3): a teacher trained with
  L_S only (``model.grounding_weight=0``, job ``abl_narratives_teacher_s<seed>``), then the student (job
  ``abl_narratives_s<seed>``, after the teacher) on the same masked images plus ``--caption-only`` caption-only
  images (their narratives as captions) masked by the teacher's pseudo masks, trained twice as many iterations
  (Sec. 4.1: 30k steps on COCO, 60k on COCO + Loc. Narr., sources drawn with equal probability); the "without
  narratives" reference is the ``synth`` OpenSeg row too. Backbone start (Sec. 4.1: "we initialize the backbone
  of the model from the ALIGN checkpoint"): OpenSeg started from the same seed's ALIGN-style run (job
  ``abl_init_align_s<seed>``, ``model.init_from``: its trunk + FPN, dense tower and tau; after the synth table's
  ``align_s<seed>``) against the reference, which starts from the dense-pretrained trunk only.
* ``schedule``: does OpenSeg's grounding only need more steps? L_G still falls steadily at the reference's 2000th
  step (chance 2 log 8 = 4.16 -> ~3.5), and the paper trains 30k steps x a larger batch from the ALIGN checkpoint,
  180k from scratch (Sec. 4.1; Sec. 4.4, Table 3). OpenSeg on 2x / 4x the training images for 2x / 4x the
  iterations (the same epochs), each under its own cosine schedule, evaluated every ``--iters`` steps on the same
  held-out images (the record's ``curve``); the 2000-iteration row is the synth table's OpenSeg runs.
* ``lr``: the learning rate (the paper tunes only it and the steps per initialisation: 0.32 from scratch, 0.08 from
  NoisyStudent, 0.005 from ALIGN; Sec. 4.4, Table 3). L_G of the 2000-iteration reference falls fastest as its
  cosine schedule anneals (chance 4.16 -> 3.5; at lr ~1e-3 barely), so the configs' AdamW lr 1e-3 may be too high for
  the grounding head: OpenSeg at each lr of ``LRS``, otherwise the reference (``lr_<lr>_<amp>_s<seed>``).
* ``regions`` (a diagnostic of ours, not a paper claim): does grounding fail in the proposals? OpenSeg whose L_G
  grounds the caption words to the image's true masks (the L_S targets; ``model.grounding_regions=gt``, z = their
  mask-weighted mean of F_z) instead of its N proposals, otherwise the reference; scored as usual (inference still
  through the proposals). ``bench/openseg_ceiling.py`` gives what L_G could teach with perfect regions.
* ``coco_mini``: OpenSeg on the captions + class-agnostic masks of 60 of the 80 coco-mini photos (sorted image
  ids, first 60), grounding mIoU on the other 20 (things only: coco-mini has no panoptic stuff); semantic overlays
  of 5 held-out photos (first seed) are written next to the results, downscaled to <= 320 px.

Precision (``--amp``): every run trains under bf16 autocast by default (``train.amp=bf16``; 0.65x the fp32 step time
of configs/openseg_synth.yaml on this AVX512-BF16 CPU, its recipe_speed records in BENCHMARKS.md) and is named
``<row>_bf16_s<seed>``; the losses keep their similarities and Dice in fp32 (tests/modeling: bf16 losses within 3%
of fp32). ``--amp none`` trains in fp32 (``<row>_s<seed>``): ``synth --amp none --only openseg_s0`` is the precision
check the report sets beside the bf16 OpenSeg row. Each record carries its ``"amp"``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from experiment_runner import drive, driver_parser, machine  # noqa: E402
from mal_experiments import (  # noqa: E402
    _job,
    _merge,
    _metrics,
    _omni,
    eval_curve,
    rel,
    run_name,
    schedule_rows,
    train_tail,
)

RESULTS = ROOT / "bench" / "results" / "openseg"
COCO_MINI = ROOT.parent / "shared" / "data" / "coco-mini"
TABLES = ("synth", "ablations", "schedule", "lr", "regions", "coco_mini")
VOCABULARIES = ("names", "synonyms", "all")
#: ESTIMATED seconds per iteration on one thread: openseg_synth measured 2.3-3.4 s on a busy 2-core machine (the
#: midpoint); LSeg+ and ALIGN taken as the same (similar trunk and tower, no decoder); coco-mini (long side 384,
#: batch 4) a guess
S_PER = {"openseg": 2.85, "lseg": 2.85, "align": 2.85, "coco": 3.5}
#: seconds-per-iteration factor of bf16 autocast: 1.054 vs 1.620 s per openseg_synth step (one thread, side by side
#: at load 4; BENCHMARKS.md "Speed and memory: configs/openseg_synth.yaml")
AMP_SPEEDUP = {"bf16": 0.65}
#: the precision every table trains at unless ``--amp`` says otherwise (module docstring)
AMP = "bf16"
#: start-up + final evaluation (50 images x 3 vocabularies + recall), re-scoring (2 passes), coco overlays, the
#: teacher's pseudo masks of the --caption-only images (a guess: ~0.4 s an image)
OVERHEAD_S = {"train": 90, "rescore": 150, "coco": 120, "pseudo_per_image": 0.4}
#: row -> (label, overrides) of the ablations; the reference (noun_adj) is synth's OpenSeg row
ABLATIONS = {
    "words_all": ("caption words: all (Table 3)", ["model.words=all"]),
    "words_noun_adj_verb": ("caption words: nouns + adjectives + verbs (Table 3)", ["model.words=noun_adj_verb"]),
}
#: row -> (label, overrides) of the narratives ablation: the L_S-only teacher, then the student it pseudo-labels
#: ({teacher}: the teacher's run folder, {n}: --caption-only)
NARRATIVES = {
    "narratives_teacher": ("teacher: L_S only, no captions (Sec. 3.3)", ["model.grounding_weight=0"]),
    "narratives": ("with narratives pseudo-labels (Sec. 4.3)",
                   ["data.teacher={teacher}", "data.caption_only_num_images={n}"]),
}
#: row -> label of the backbone-start ablation (its override names the ALIGN run: ablation_jobs)
INIT = {"init_align": "backbone from the ALIGN-style run (Sec. 4.1)"}
#: the student's iterations / the synth runs' (Sec. 4.1: 30k steps on COCO, 60k with Loc. Narr. added)
NARRATIVES_ITERS = 2
#: the schedule table's rows: (iterations, training images), each a multiple of --iters and the config's images
SCHEDULE = ((2, 2), (4, 4))
#: the lr table's learning rates (the configs: 1e-3, the synth table's OpenSeg runs); 3e-5 added after 1e-4 grounded
#: best of 1e-3 / 3e-4 / 1e-4 (seeds 0-1: does the trend go on?)
LRS = (3e-4, 1e-4, 3e-5)
#: the regions table's rows (a diagnostic of ours, not a paper claim): row -> (label, overrides)
REGIONS = {"regions_gt": ("L_G on the true masks instead of the proposals", ["model.grounding_regions=gt"])}
OVERLAYS = 5
OVERLAY_SIDE = 320


def train_job(args: argparse.Namespace, base: str, table: str, row: str, seed: int, recipe: str,
              extra: list[str] = (), iters: int | None = None, after: str | None = None, extra_s: float = 0.0
              ) -> dict:
    """One training run of ``recipe`` (openseg / lseg / align / coco = openseg on coco-mini), named
    ``run_name(args, base, seed)`` (under ``--amp``); ``extra_s``: more estimated seconds (e.g. the teacher's
    pseudo masks)."""
    name = run_name(args, base, seed)
    iters = iters or (args.coco_iters if recipe == "coco" else args.iters)
    config = Path({"lseg": args.lseg_config, "align": args.align_config}.get(recipe, args.config))
    base = [f"train.seed={seed}", f"train.max_iter={iters}", "train.progress=false",
            f"train.checkpoint_period={iters // 4 if iters >= 100 else 0}",
            f"eval.vocabularies=[{','.join(VOCABULARIES if recipe != 'coco' else ('names',))}]"]
    base += [f"train.amp={args.amp}"] if args.amp != "none" else []
    overrides = _merge(base, list(extra))
    cmd = _omni("train", str(config), *overrides, f"train.output_dir={Path(args.runs) / name}")
    est = iters * S_PER[recipe] * AMP_SPEEDUP.get(args.amp, 1.0) + OVERHEAD_S["train"] + (OVERHEAD_S["coco"] if recipe == "coco" else 0) + extra_s
    return _job(name, table, recipe, cmd, est, after, config=rel(config), overrides=overrides, row=row, seed=seed,
                iters=iters, amp=args.amp)


def rescore_job(args: argparse.Namespace, seed: int) -> dict:
    """Re-scoring of the synth OpenSeg run's checkpoint: inference from pixels, and GT masks as proposals."""
    run, name = Path(args.runs) / run_name(args, "openseg", seed), run_name(args, "openseg_rescore", seed)
    cmd = [sys.executable, str(Path(__file__).resolve()), "_rescore", str(run),
           str(Path(args.runs) / name / "rescore.json")]
    return _job(name, "synth", "rescore", cmd, OVERHEAD_S["rescore"], run.name, row="openseg_rescored", seed=seed,
                amp=args.amp)


def coco_overrides(args: argparse.Namespace) -> list[str]:
    runs, images = Path(args.runs), Path(args.coco_mini) / "train2017"
    return [f"data.train={runs / 'coco_mini_split' / 'train'}", f"data.train_images={images}",
            f"data.val={runs / 'coco_mini_split' / 'val'}", f"data.val_images={images}", "data.train_num_images=60",
            "data.val_num_images=20", "data.long_side=384", "data.batch_size=4"]


def ablation_jobs(args: argparse.Namespace, s: int) -> list[dict]:
    """One seed's ablation runs, after the synth OpenSeg run of that seed (their reference)."""
    teacher = run_name(args, "abl_narratives_teacher", s)
    fill = {"teacher": Path(args.runs) / teacher, "n": args.caption_only}
    narr = {row: [o.format(**fill) for o in over] for row, (_, over) in NARRATIVES.items()}
    align = train_job(args, "align", "synth", "align", s, "align")
    return [train_job(args, "openseg", "synth", "openseg", s, "openseg")] + [
        train_job(args, f"abl_{row}", "ablations", row, s, "openseg", over)
        for row, (_, over) in ABLATIONS.items()] + [
        train_job(args, "abl_narratives_teacher", "ablations", "narratives_teacher", s, "openseg",
                  narr["narratives_teacher"]),
        train_job(args, "abl_narratives", "ablations", "narratives", s, "openseg", narr["narratives"],
                  NARRATIVES_ITERS * args.iters, after=teacher,
                  extra_s=args.caption_only * OVERHEAD_S["pseudo_per_image"]),
        align, train_job(args, "abl_init_align", "ablations", "init_align", s, "openseg",
                         [f"model.init_from={Path(args.runs) / align['name']}"], after=align["name"])]


def plan(args: argparse.Namespace) -> list[dict]:
    """Every job of ``args.table`` (a re-scoring job after the OpenSeg run it reads)."""
    if args.table == "synth":
        return [j for s in args.seeds for j in (train_job(args, "openseg", "synth", "openseg", s, "openseg"),
                                                 train_job(args, "lseg", "synth", "lseg", s, "lseg"),
                                                 rescore_job(args, s),
                                                 train_job(args, "align", "synth", "align", s, "align"))]
    if args.table == "ablations":  # seed by seed: every row of one seed before the next seed
        return [j for s in args.seeds for j in ablation_jobs(args, s)]
    if args.table == "schedule":
        return [{**train_job(args, r["base"], "schedule", r["row"], s, "openseg", r["overrides"], iters=r["iters"]),
                 "train_images": r["train_images"]} for s in args.seeds for r in schedule_rows(args, SCHEDULE)]
    if args.table == "lr":
        return [train_job(args, f"lr_{lr:g}", "lr", f"lr_{lr:g}", s, "openseg", [f"train.lr={lr:g}"])
                for s in args.seeds for lr in LRS]
    if args.table == "regions":
        return [train_job(args, row, "regions", row, s, "openseg", over)
                for s in args.seeds for row, (_, over) in REGIONS.items()]
    return [train_job(args, "coco_mini", "coco_mini", "openseg_coco_mini", s, "coco", coco_overrides(args))
            for s in args.seeds]


def split_coco_mini(root: Path, out: Path, train: int = 60) -> tuple[list[int], list[int]]:
    """Dataset folders ``out/train`` and ``out/val`` (instances.json + captions.json) holding the first ``train``
    image ids (sorted) and the rest; returns both id lists."""
    inst = json.loads((root / "annotations" / "instances_train2017.json").read_text(encoding="utf-8"))
    caps = json.loads((root / "annotations" / "captions_train2017.json").read_text(encoding="utf-8"))
    ids = sorted(im["id"] for im in inst["images"])
    parts = {"train": set(ids[:train]), "val": set(ids[train:])}
    for part, keep in parts.items():
        (out / part).mkdir(parents=True, exist_ok=True)
        for src, name in ((inst, "instances.json"), (caps, "captions.json")):
            data = {**src, "images": [im for im in src["images"] if im["id"] in keep],
                    "annotations": [a for a in src["annotations"] if a["image_id"] in keep]}
            (out / part / name).write_text(json.dumps(data), encoding="utf-8")
    return sorted(parts["train"]), sorted(parts["val"])


def rescore(run: Path, out: Path) -> dict:
    """Metrics of an OpenSeg checkpoint on its validation set (eval.vocabularies): ``pixels:<key>`` with
    inference from pixels (no proposals) and ``gt_masks:<key>`` with the ground-truth segments as proposals."""
    import numpy as np
    import torch

    from omniseg.api import Segmenter
    from omniseg.data.loader import build_test_loader
    from omniseg.evaluation.semantic import ConfusionMatrix, grounding_argmax, segments_to_label_map
    from omniseg.modeling.openseg import ensemble_max, split_queries
    from omniseg.modeling.openseg_heads import resize_valid
    from omniseg.recipes.data import open_val
    from omniseg.recipes.openseg import IGNORE, class_queries, gt_segments, semantic_metrics

    seg = Segmenter.from_checkpoint(run)
    model, cfg = seg.model, seg.cfg
    gt, load_image = open_val(cfg.data, progress=False)
    cats = sorted(gt.categories, key=lambda c: c.id)
    vocabs = {("" if k == "names" else k): class_queries(cats, k) for k in cfg.eval.vocabularies}
    model.cfg.inference = "pixels"
    result = {f"pixels:{k}": v for k, v in semantic_metrics(model, gt, load_image, vocabs, recall=False).items()}
    model.cfg.inference = "proposals"
    index, by_id = {c.id: k for k, c in enumerate(cats)}, {r.image_id: r for r in gt}
    queries = {k: (model.embed(split_queries(v)[0]), split_queries(v)[1]) for k, v in vocabs.items()}
    cms = {k: (ConfusionMatrix(len(cats), IGNORE), ConfusionMatrix(len(cats), IGNORE)) for k in vocabs}
    with torch.no_grad():
        for batch in build_test_loader(gt, cfg.data.batch_size, load_image=load_image):
            enc = model.encode(batch.images, batch.image_sizes)
            for i, image_id in enumerate(batch.image_ids):
                rec, size, out_size = by_id[image_id], batch.image_sizes[i], batch.orig_sizes[i]
                segs = gt_segments(rec)
                label = segments_to_label_map(segs, rec.height, rec.width, index, IGNORE)
                present = [int(c) for c in np.unique(label) if c != IGNORE]
                if not segs:
                    continue
                # GT masks as the proposals (logits), region features as OpenSeg.encode computes them (Sec. 3.2)
                p, z = gt_regions(enc, i, segs, size, batch.images.shape[-2:])
                one = {"masks": p.logit()[None], "pixels": enc["pixels"][i: i + 1], "regions": z[None]}
                for key, (q, groups) in queries.items():
                    sem = ensemble_max(model.query_scores(one, 0, q, "proposals"), groups, len(cats))
                    sem = resize_valid(sem, size, model.pyramid.stride, out_size).numpy()
                    cms[key][0].update(label, sem.argmax(0), str(image_id))
                    if present:
                        cms[key][1].update(label, grounding_argmax(sem, present), str(image_id))
    for key, (cm, gcm) in cms.items():
        suffix = f"/{key}" if key else ""
        result.update({f"gt_masks:mIoU{suffix}": cm.summary()["mIoU"],
                       f"gt_masks:grounding_mIoU{suffix}": gcm.summary()["mIoU"]})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1), encoding="utf-8")
    return result


def gt_regions(enc: dict, i: int, segs: list, size: tuple[int, int], padded: tuple[int, int]):
    """The ground-truth segments of image ``i`` of an encoded batch as OpenSeg regions: S x h x w mask fractions
    on the F_z grid (clamped to (0, 1)) and S x E region features z = mask-weighted mean of F_z (Sec. 3.2)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from omniseg.modeling.openseg import region_means
    from omniseg.ops.rle import rle_decode

    m = torch.as_tensor(np.stack([rle_decode(s.mask) for s in segs]), dtype=torch.float32)
    m = F.interpolate(m[None], size=tuple(size), mode="nearest")[0]  # stored -> input size
    full = m.new_zeros(len(segs), *padded)
    full[:, : size[0], : size[1]] = m
    p = F.interpolate(full[None], size=enc["pixels"].shape[-2:], mode="area")[0].clamp(1e-6, 1 - 1e-6)
    return p, region_means(p, enc["pixels"][i])


def write_overlays(run: Path, images: list[Path], vocabulary: list[str], out: Path, tmp: Path) -> list[Path]:
    """``omniseg segment --task semantic`` drawings of ``images`` by ``run``, downscaled to <= OVERLAY_SIDE px."""
    from PIL import Image

    subprocess.run(_omni("segment", *map(str, images), "--checkpoint", str(run), "--task", "semantic",
                         "--vocabulary", ",".join(vocabulary), "--out", str(tmp)), check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for img in images:
        im = Image.open(tmp / f"{img.stem}.png")
        im.thumbnail((OVERLAY_SIDE, OVERLAY_SIDE))
        im.convert("RGB").quantize(64).save(out / f"{img.stem}.png", optimize=True)  # small enough to commit
        written.append(out / f"{img.stem}.png")
    return written


def score(job: dict, args: argparse.Namespace) -> tuple[dict, list[Path]]:
    """The record of a finished job and the artefacts committed with it."""
    run = Path(args.runs) / job["name"]
    out = {"table": job["table"], "run": job["name"], "row_id": job["row"], "seed": job["seed"], "kind": job["kind"],
           "wall_s": round(job["wall_s"], 1), "machine": machine(args.run_threads), "command": job["command"],
           "driver": f"python bench/openseg_experiments.py {args.table}", "iters": job.get("iters"),
           "amp": job.get("amp", "none")}
    if job["table"] == "ablations":
        out.update(label={**{k: v[0] for k, v in {**ABLATIONS, **NARRATIVES}.items()}, **INIT}[job["row"]])
    extra: list[Path] = []
    if job["kind"] == "rescore":
        out.update(json.loads((run / "rescore.json").read_text(encoding="utf-8")))
    else:
        out.update(_metrics(run))
        out.update({f"train:{k}": v for k, v in train_tail(run / "metrics.jsonl").items()},
                   batch_size=yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))["data"]["batch_size"])
    if job["table"] == "schedule":
        out.update(curve=eval_curve(run / "metrics.jsonl", {}), train_images=job["train_images"])
    if job["kind"] == "coco" and job["seed"] == args.seeds[0]:
        val = json.loads((Path(args.runs) / "coco_mini_split" / "val" / "instances.json").read_text(encoding="utf-8"))
        shown = val["images"][:OVERLAYS]
        names = sorted({c["name"] for c in val["categories"] if any(
            a["category_id"] == c["id"] and a["image_id"] in {im["id"] for im in shown} for a in val["annotations"])})
        dst = Path(args.results) / "coco_mini" / f"{job['name']}_overlays"
        extra = write_overlays(run / "checkpoints", [Path(args.coco_mini) / "train2017" / im["file_name"]
                                                     for im in shown], names, dst, run / "overlays")
        out.update(overlays=[rel(p) for p in extra], overlay_vocabulary=names)
    return out, extra


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = driver_parser(__doc__, TABLES, ROOT / "runs" / "openseg", RESULTS)
    ap.add_argument("--iters", type=int, default=2000, help="synthetic-world iterations (the configs: 2000)")
    ap.add_argument("--coco-iters", type=int, default=1000, help="coco-mini iterations")
    ap.add_argument("--config", default=str(ROOT / "configs" / "openseg_synth.yaml"), help="OpenSeg config")
    ap.add_argument("--lseg-config", default=str(ROOT / "configs" / "lseg_synth.yaml"), help="LSeg+ config")
    ap.add_argument("--align-config", default=str(ROOT / "configs" / "align_synth.yaml"), help="ALIGN-style config")
    ap.add_argument("--caption-only", type=int, default=1000,
                    help="narratives ablation: caption-only images the teacher pseudo-labels")
    ap.add_argument("--coco-mini", type=Path, default=COCO_MINI)
    ap.add_argument("--amp", choices=("none", "bf16"), default=AMP,
                    help="train under bf16 autocast (the default) or in fp32 (module docstring)")
    return ap.parse_args(argv)


def prepare(todo: list[dict], args: argparse.Namespace) -> None:
    if args.table == "coco_mini":
        split_coco_mini(Path(args.coco_mini), Path(args.runs) / "coco_mini_split")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    drive(args, plan(args), score, prepare)


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "_rescore":  # internal: ... _rescore RUN OUT [run_jobs' --overwrite]
        rescore(Path(sys.argv[2]), Path(sys.argv[3]))
        sys.exit(0)
    main()
