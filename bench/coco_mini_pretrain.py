"""What self-supervised pretraining on real photos does for real-photo box->mask (issue 12).

1. Split coco-mini's 80 photos once (``--split-seed``): ``--heldout`` images for scoring, the rest
   for training (written as dataset folders under ``<runs>/split``: ``instances.json`` + an
   ``images`` link to coco-mini's ``train2017``).
2. ``omniseg pretrain configs/pretrain_r18_mim_coco_mini.yaml``: SimMIM-style masked image modeling
   of the ResNet-18 trunk (width 16, GN) on images only -- by default on the training split's images
   (``--pretrain-images train``: the held-out photos stay unseen, even unlabeled); ``all`` uses the
   80 photos as the config does (transductive: the scored images' pixels are seen, never their labels).
   The trunk is kept in the results folder (``pretrain_mim.safetensors`` + ``pretrain_mim.json``, committed with
   ``--commit``), so seeds run later on another machine start from the same weights.
3. Box->mask (``configs/box_to_mask_synth.yaml``: ResNet-18-FPN width 16, GN, the same trunk) trained
   on the training split for every seed x init: ``scratch``, ``mim`` (the trunk of step 2) and
   ``dense`` (the synthetic pretraining world's supervised trunk,
   bench/results/pretrained/r18w16_gn_dense/backbone.safetensors, when present); the same schedule
   and seeds for all. Each run is scored by the recipe's own evaluation -- COCO mask AP of its masks
   for the given ground-truth boxes of the held-out photos, next to the filled-box baseline -- and
   recorded in ``bench/results/coco_mini_pretrain/<run>.json`` as it lands (``--commit``: committed).

    python bench/coco_mini_pretrain.py [--seeds 0 1 2] [--iters 200] [--pretrain-iters 1000] [--commit]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from experiment_runner import machine, read_results, record_result, run_jobs  # noqa: E402

COCO_MINI = (ROOT / ".." / "shared" / "data" / "coco-mini").resolve()
PRETRAIN_CONFIG = ROOT / "configs" / "pretrain_r18_mim_coco_mini.yaml"
CONFIG = ROOT / "configs" / "box_to_mask_synth.yaml"
RESULTS = ROOT / "bench" / "results" / "coco_mini_pretrain"
DENSE = ROOT / "bench" / "results" / "pretrained" / "r18w16_gn_dense" / "backbone.safetensors"
INITS = ("scratch", "mim", "dense")


def split_coco_mini(root: Path, out: Path, heldout: int, seed: int) -> dict[str, Path]:
    """Write the split as dataset folders ``out/{train,heldout,train_images}`` (``instances.json`` +
    ``images`` -> ``root/train2017``); ``train_images`` lists the training images without any
    annotation (what pretraining reads). Deterministic in ``seed``; returns the three folders."""
    import random

    coco = json.loads((root / "annotations" / "instances_train2017.json").read_text(encoding="utf-8"))
    ids = sorted(im["id"] for im in coco["images"])
    random.Random(seed).shuffle(ids)
    held = set(ids[:heldout])
    parts = {"train": lambda i: i not in held, "heldout": lambda i: i in held}
    folders = {}
    for name, keep in [*parts.items(), ("train_images", parts["train"])]:
        d = out / name
        d.mkdir(parents=True, exist_ok=True)
        part = {**coco, "images": [im for im in coco["images"] if keep(im["id"])]}
        if name == "train_images":
            part.update(annotations=[], categories=[])
        else:
            part["annotations"] = [a for a in coco["annotations"] if keep(a["image_id"])]
        (d / "instances.json").write_text(json.dumps(part), encoding="utf-8")
        link = d / "images"
        if not link.exists():
            link.symlink_to(root / "train2017", target_is_directory=True)
        folders[name] = d
    return folders


def pretrain(args: argparse.Namespace, split: dict[str, Path], runs: Path) -> Path:
    """The MIM-pretrained trunk the ``mim`` rows start from: the one kept in ``args.results`` (``pretrain_mim.safetensors``
    next to ``pretrain_mim.json``, committed with ``--commit``) when it was pretrained for this study's split, else the
    pretraining is run (or resumed, or a finished one in ``runs`` is adopted) and its trunk kept there -- so seeds
    recorded on different machines all start from the same weights."""
    from omniseg.recipes.pretraining import PRETRAIN_RECIPES
    from omniseg.utils.atomic import atomic_write_bytes

    kept = args.results / "pretrain_mim.safetensors"
    study = {"pretrain_images": args.pretrain_images, "split_seed": args.split_seed, "heldout": args.heldout,
             "pretrain_iters": args.pretrain_iters}
    recorded = read_results(args.results).get("pretrain_mim") if args.results.is_dir() else None
    if recorded and kept.is_file():
        if (was := {k: recorded.get(k) for k in study}) != study:
            raise SystemExit(f"{kept}: pretrained for {was}, not {study}: pass another --results")
        if hashlib.sha256(kept.read_bytes()).hexdigest() != recorded["manifest"]["sha256"]:
            raise SystemExit(f"{kept}: its sha256 is not the one pretrain_mim.json records")
        return kept.resolve()
    if "pretrain_mim" not in PRETRAIN_RECIPES:
        raise SystemExit("pretrain_mim is not in omniseg.recipes.pretraining.PRETRAIN_RECIPES (add pretrain_mim.RECIPE)")
    out = runs / "pretrain_mim"
    weights = out / "backbone.safetensors"
    images = split["train_images"] if args.pretrain_images == "train" else COCO_MINI / "train2017"
    overrides = [f"data.train={images}", f"data.val={split['heldout']}", f"data.val_num_images={args.heldout}",
                 f"train.max_iter={args.pretrain_iters}", f"train.eval_period={args.pretrain_iters}",
                 f"train.checkpoint_period={max(1, min(250, args.pretrain_iters))}",
                 f"train.output_dir={out}", "train.progress=false"]
    if not weights.is_file():
        resume = "--resume" if any(out.glob("checkpoints/step_*/state.json")) else "--overwrite"
        cmd = [sys.executable, "-m", "omniseg.cli", "pretrain", str(PRETRAIN_CONFIG), *overrides, resume]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.parallel), "MKL_NUM_THREADS": str(args.parallel)}
        print(f"[start] pretrain_mim ({args.parallel} threads)", flush=True)
        out.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        with open(out / "stdout.log", "a") as log:
            if subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT).returncode:
                raise SystemExit(f"pretraining failed; see {out / 'stdout.log'}")
        print(f"[done] pretrain_mim in {(time.perf_counter() - t0) / 60:.1f} min", flush=True)
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    if manifest["data"]["train"] != str(images) or manifest["steps"] != args.pretrain_iters:
        raise SystemExit(f"{weights} was pretrained on {manifest['data']['train']} for {manifest['steps']} steps, not "
                         f"on {images} for {args.pretrain_iters}: pass another --runs")
    atomic_write_bytes(kept, weights.read_bytes())
    record_result(args.results / "pretrain_mim.json", {"run": "pretrain_mim", **study, "manifest": manifest,
                                                       "machine": machine()}, args.commit, extra=[kept])
    return kept.resolve()


def jobs(args: argparse.Namespace, split: dict[str, Path], trunks: dict[str, Path]) -> list[dict]:
    common = [f"data.train={split['train']}", f"data.val={split['heldout']}", f"data.batch_size={args.batch_size}",
              f"train.max_iter={args.iters}", f"train.warmup_iters={max(1, args.iters // 10)}",
              f"train.checkpoint_period={max(1, args.iters // 3)}", f"train.log_period={max(1, args.iters // 15)}",
              "train.progress=false"]
    return [{"name": f"{init}_s{seed}", "init": init, "seed": seed,
             "overrides": common + [f"train.seed={seed}", f"data.train_seed={seed}"]
             + ([f"model.pretrained={trunks[init]}"] if init in trunks else [])}
            for seed in args.seeds for init in args.inits]


def result(job: dict, runs: Path, args: argparse.Namespace) -> dict:
    """A finished run's record: its final given-box mask AP on the held-out photos (``run.json``)."""
    run_dir = runs / job["name"]
    info = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    log = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    times = [r["s_per_iter"] for r in log if "s_per_iter" in r]
    return {"run": job["name"], "init": job["init"], "seed": job["seed"], "wall_s": round(job["wall_s"], 1),
            "iters": args.iters, "batch_size": args.batch_size, "heldout_images": args.heldout,
            "split_seed": args.split_seed, "pretrain_images": args.pretrain_images if job["init"] == "mim" else "",
            "eval": info.get("metrics", {}), "s_per_iter": times[-1] if times else None, "machine": machine(),
            "command": f"omniseg train {CONFIG.relative_to(ROOT)} " + " ".join(job["overrides"])}


def finished(job: dict, runs: Path) -> bool:
    """Trained and evaluated (final metrics in run.json) with its wall time written."""
    d = runs / job["name"]
    try:
        return (d / "wall_s.txt").is_file() and bool(json.loads((d / "run.json").read_text()).get("metrics"))
    except (OSError, ValueError):
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default=str(ROOT / "runs" / "coco_mini_pretrain"))
    ap.add_argument("--results", default=str(RESULTS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--inits", nargs="+", default=list(INITS), choices=INITS)
    ap.add_argument("--iters", type=int, default=200, help="box->mask iterations per run (~9 min on one core)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--pretrain-iters", type=int, default=1000)
    ap.add_argument("--pretrain-images", choices=["train", "all"], default="train")
    ap.add_argument("--dense", default=str(DENSE.relative_to(ROOT)), help="the dense synthetic trunk (skipped if absent)")
    ap.add_argument("--heldout", type=int, default=20)
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--commit", action="store_true", help="git commit each run's result file as it lands")
    args = ap.parse_args()
    args.results = Path(args.results)
    runs = Path(args.runs).resolve()
    split = split_coco_mini(COCO_MINI, runs / "split", args.heldout, args.split_seed)
    trunks: dict[str, Path] = {}
    if "dense" in args.inits:
        if (ROOT / args.dense).is_file():
            trunks["dense"] = (ROOT / args.dense).resolve()
        else:
            print(f"{args.dense}: absent, the dense rows are skipped", flush=True)
            args.inits = [i for i in args.inits if i != "dense"]
    if "mim" in args.inits:
        trunks["mim"] = pretrain(args, split, runs)
    recorded = read_results(args.results)
    todo = [j for j in jobs(args, split, trunks) if j["name"] not in recorded]

    def done(job: dict) -> None:
        record_result(args.results / f"{job['name']}.json", result(job, runs, args), args.commit)

    for job in [j for j in todo if finished(j, runs)]:  # trained before, not recorded (e.g. a cut session)
        done({**job, "wall_s": float((runs / job["name"] / "wall_s.txt").read_text())})
    todo = [j for j in todo if not finished(j, runs)]
    print(f"{len(recorded)} recorded before, {len(todo)} to run", flush=True)
    run_jobs(todo, runs, lambda j: [sys.executable, "-m", "omniseg.cli", "train", str(CONFIG), *j["overrides"],
                                    f"train.output_dir={runs / j['name']}"], args.parallel, ROOT, done)
    from report_claims import coco_mini_pretrain_section

    print("\n".join(coco_mini_pretrain_section(args.results.parent, args.results)))


if __name__ == "__main__":
    main()
