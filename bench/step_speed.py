"""Training-step and single-image inference time of a recipe config: this tree vs an older commit.

Both sides build the model, data and optimizer through the recipe contract, as
:func:`omniseg.recipes.contract.run_recipe` does (``get_recipe`` -> ``load_config`` ->
``recipe.train_data`` / ``recipe.build_model`` -> ``build_train_loader`` -> ``build_optimizer`` /
``build_scheduler`` -> ``Trainer``), and time ``Trainer._next_batch`` + ``Trainer.run_step`` (data,
forward, backward, clipping, optimizer and schedule step). Inference: the recipe's predictor on one
padded validation-size image at a time, on a freshly seeded model with ``model.score_threshold=0``
(an untrained model scores every class below the default 0.05 and would return no detections: the
threshold keeps ``detections_per_image`` boxes, so the mask head and mask pasting run as for a
trained model). Box-prompted recipes (box_to_mask, MAL) segment each image's own boxes.

Each side is one long-lived child process (``PYTHONPATH=<its tree>``, 1 torch thread) that builds
everything once; the parent then asks the two sides in turn (A/B/A/B...) for ``--steps`` timed steps
per round, after ``--warmup`` untimed ones, and reports medians per side and new/old ratios. Time
spent inside NMS (any ``omniseg.ops.nms`` function called from outside that module) is measured
too, so the step can also be compared without NMS. Timings on a shared machine are noisy: only the
ratios, taken side by side in one run, mean much.

    .venv/bin/python bench/step_speed.py                       # WORKTREE vs 0d8adc8, 5 rounds
    .venv/bin/python bench/step_speed.py --old 0d8adc8 --new WORKTREE --rounds 7 --steps 3 --out r.json
    .venv/bin/python bench/step_speed.py --profile [--side new|old|both] [--top 25]

``--old`` / ``--new``: a git revision (``git archive`` into a cache folder under the temp dir) or
``WORKTREE`` (this checkout). ``--profile``: per side, cProfile (self time per Python function) and
the torch profiler (self CPU time per op) over ``--steps`` training steps, top entries with their
share of the total. ``--set KEY=VALUE`` passes config overrides to both sides.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trees import prepare_tree, side_env  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONFIG = "configs/maskx_voc_like.yaml"
DEFAULT_OLD = "0d8adc8"  # the commit before issue 11's speed work
SIDES = ("old", "new")
#: synthetic training images generated at set-up (the config's 1,000 take minutes; the records of
#: image i do not depend on the count, and no timed step sees more than a few dozen images)
TRAIN_IMAGES = 64


# ------------------------------------------------------------------------------ child side


class NmsClock:
    """Wraps every ``omniseg.ops.nms`` function imported into another omniseg module and adds up the
    seconds spent in them (outermost call only)."""

    def __init__(self) -> None:
        self.seconds, self.cpu_seconds, self.depth = 0.0, 0.0, 0

    def install(self) -> None:
        """Patch the modules imported so far (call once the model and its heads are built)."""
        for name, mod in list(sys.modules.items()):
            if not name.startswith("omniseg.") or name == "omniseg.ops.nms" or mod is None:
                continue
            for attr, fn in list(vars(mod).items()):
                if hasattr(fn, "__code__") and getattr(fn, "__module__", "") == "omniseg.ops.nms":
                    setattr(mod, attr, self.wrap(fn))

    def wrap(self, fn):
        def timed(*args, **kwargs):
            if self.depth:
                return fn(*args, **kwargs)
            self.depth += 1
            c0, t0 = time.process_time(), time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0
                self.cpu_seconds += time.process_time() - c0
                self.depth -= 1
        return timed


def infer_thresholds(cfg: Any) -> list[str]:
    """Overrides that make an untrained model's predictor do a trained one's work (every score of a freshly
    seeded model is low): detectors keep ``detections_per_image`` boxes (``model.score_threshold=0``), VLOSS
    keeps every query (``eval.object_threshold=0``: the most segments the panoptic merge can get). Other recipes
    (box-prompted, OpenSeg / LSeg / ALIGN) have no score cut."""
    out = ["model.score_threshold=0.0"] if hasattr(getattr(cfg, "model", None), "score_threshold") else []
    return out + (["eval.object_threshold=0.0"] if hasattr(getattr(cfg, "eval", None), "object_threshold") else [])


class Side:
    """Everything one side needs, built once through the recipe contract."""

    def __init__(self, config: str, overrides: list[str], out_dir: str, threads: int = 1,
                 train_images: int | None = TRAIN_IMAGES, infer_set: Sequence[str] | None = None):
        """``threads``: torch threads; ``train_images``: ``data.train_num_images`` (None: the config's);
        ``infer_set``: overrides of the inference model only (None: :func:`infer_thresholds`)."""
        import torch
        import yaml

        from omniseg.data.loader import build_train_loader
        from omniseg.engine.config import load_config
        from omniseg.engine.optim import build_optimizer, build_scheduler
        from omniseg.engine.trainer import Trainer, seed_everything
        from omniseg.recipes.contract import RunInfo, categories_info
        from omniseg.recipes.table import get_recipe

        torch.set_num_threads(threads)
        self.nms = NmsClock()
        recipe = get_recipe(yaml.safe_load(Path(config).read_text())["recipe"])
        base = [f"train.output_dir={out_dir}", "train.progress=false", "train.log_period=1000000",
                "train.checkpoint_period=0", "train.eval_period=0"]
        base += [] if train_images is None else [f"data.train_num_images={train_images}"]
        cfg = load_config(recipe.config, config, base + overrides)
        self.cfg, self.recipe = cfg, recipe
        seed_everything(cfg.train.seed, cfg.train.deterministic)
        dataset = recipe.train_data(cfg, False)
        info = RunInfo(recipe.name, categories_info(dataset.rs.categories), recipe.text_encoder(cfg))
        model = recipe.build_model(cfg, info)
        if hasattr(recipe, "train_loader"):  # the recipe's own loader (an older tree has none)
            data = recipe.train_loader(cfg, dataset, 0, 1, cfg.train.seed)
        else:
            data = build_train_loader([dataset], "mix", cfg.data.batch_size, num_workers=cfg.data.num_workers,
                                      rank=0, world_size=1, seed=cfg.train.seed)
        stage = recipe.stages(cfg, model)[0]
        if stage.prepare is not None:
            stage.prepare(model)
        optimizer = build_optimizer(model, stage.train)
        self.trainer = Trainer(model, optimizer, build_scheduler(optimizer, stage.train), data, stage.train,
                               run_config=cfg)
        self.trainer.model.train()
        # inference: a freshly seeded model that keeps detections_per_image boxes (module docstring)
        infer_set = infer_thresholds(cfg) if infer_set is None else list(infer_set)
        icfg = load_config(recipe.config, config, base + overrides + infer_set)
        torch.manual_seed(0)
        self.infer_model = recipe.build_model(icfg, info).eval()
        self.predict = recipe.predictor(self.infer_model, icfg, info)
        samples = [dataset[i] for i in range(4)]
        self.images = [s.image for s in samples]
        # box-prompted recipes (box_to_mask, MAL) segment the image's own boxes
        prompted = getattr(recipe, "boxes", "none") == "required"  # (an older tree's Recipe has no `boxes`)
        self.boxes = [s.targets.boxes[s.targets.has_box] for s in samples] if prompted else None
        self.nms.install()

    def train_steps(self, n: int) -> dict:
        """n timed steps: per-step seconds (data + run_step), data seconds, NMS seconds."""
        steps, cpu, data, nms, nms_cpu = [], [], [], [], []
        for _ in range(n):
            n0, m0 = self.nms.seconds, self.nms.cpu_seconds
            c0, t0 = time.process_time(), time.perf_counter()
            batch = self.trainer._next_batch()
            t1 = time.perf_counter()
            self.trainer.run_step(batch)
            t2, c2 = time.perf_counter(), time.process_time()
            steps.append(t2 - t0)
            cpu.append(c2 - c0)
            data.append(t1 - t0)
            nms.append(self.nms.seconds - n0)
            nms_cpu.append(self.nms.cpu_seconds - m0)
        return {"step_s": steps, "step_cpu_s": cpu, "data_s": data, "nms_s": nms, "nms_cpu_s": nms_cpu}

    def infer(self, n: int) -> dict:
        """n single-image predictions (cycling over 4 training images), seconds each."""
        import torch

        from omniseg.recipes.contract import pad_images

        times, cpu, nms, dets = [], [], [], []
        for i in range(n):
            image = self.images[i % len(self.images)]
            n0 = self.nms.seconds
            c0, t0 = time.process_time(), time.perf_counter()
            with torch.no_grad():
                batch, sizes = pad_images(image, self.recipe.pad_divisor)
                prompt = {} if self.boxes is None else {"boxes": [self.boxes[i % len(self.boxes)]]}
                pred = self.predict(batch, sizes, sizes, **prompt)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            nms.append(self.nms.seconds - n0)
            dets.append(len(pred[0].instances) if hasattr(pred[0], "instances") else -1)
        return {"infer_s": times, "infer_cpu_s": cpu, "infer_nms_s": nms, "detections": dets}

    def profile(self, n: int, top: int) -> dict:
        """cProfile and torch-profiler tables over n training steps (``run_step``; the n batches are
        fetched first and timed on their own, so the data pipeline does not crowd the tables)."""
        import cProfile
        import pstats

        import torch

        def batches() -> tuple[list, float]:
            t0 = time.process_time()
            out = [self.trainer._next_batch() for _ in range(n)]
            return out, (time.process_time() - t0) / n

        todo, data_s = batches()
        prof = cProfile.Profile()
        c0, n0 = time.process_time(), self.nms.cpu_seconds
        prof.enable()
        for b in todo:
            self.trainer.run_step(b)
        prof.disable()
        step_cpu, nms_cpu = (time.process_time() - c0) / n, (self.nms.cpu_seconds - n0) / n
        st = pstats.Stats(prof)
        total = sum(v[2] for v in st.stats.values())
        rows = sorted(st.stats.items(), key=lambda kv: -kv[1][2])[:top]
        py = [{"function": f"{Path(k[0]).name}:{k[1]}({k[2]})", "self_s": v[2] / n, "share": v[2] / total,
               "cum_s": v[3] / n, "calls": v[1] / n} for k, v in rows]
        todo, _ = batches()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as tp:
            for b in todo:
                self.trainer.run_step(b)
        ev = [e for e in tp.key_averages() if e.self_cpu_time_total > 0]
        tot = sum(e.self_cpu_time_total for e in ev)
        ops = [{"op": e.key, "self_s": e.self_cpu_time_total / 1e6 / n, "share": e.self_cpu_time_total / tot,
                "calls": e.count / n} for e in sorted(ev, key=lambda e: -e.self_cpu_time_total)[:top]]
        return {"data_cpu_s": data_s, "cprofile_step_cpu_s": step_cpu, "cprofile_nms_cpu_s": nms_cpu,
                "cprofile": py, "torch_total_s": tot / 1e6 / n, "torch_ops": ops}


def child(args) -> None:
    """Serve commands from the parent: one JSON line in, one JSON line out."""
    out = sys.stdout
    sys.stdout = sys.stderr  # anything the package prints must not corrupt the protocol
    with tempfile.TemporaryDirectory(prefix="step_speed_run_") as tmp:
        import omniseg

        t0 = time.perf_counter()
        side = Side(args.config, args.set, tmp)
        out.write(json.dumps({"ready": True, "omniseg": omniseg.__file__, "setup_s": time.perf_counter() - t0}) + "\n")
        out.flush()
        for line in sys.stdin:
            cmd = json.loads(line)
            if cmd["op"] == "train":
                res = side.train_steps(cmd["n"])
            elif cmd["op"] == "infer":
                res = side.infer(cmd["n"])
            elif cmd["op"] == "profile":
                res = side.profile(cmd["n"], cmd["top"])
            else:
                break
            out.write(json.dumps(res) + "\n")
            out.flush()


# ------------------------------------------------------------------------------ parent side


class Child:
    def __init__(self, name: str, tree: dict, args):
        env = side_env(tree["tree"])
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--config", str(Path(tree["tree"]) / args.config),
               *[f"--set={s}" for s in args.set + (args.set_new if name == "new" else [])]]
        self.name = name
        self.proc = subprocess.Popen(cmd, cwd=tree["tree"], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        hello = self.read()
        if not Path(hello["omniseg"]).resolve().is_relative_to(Path(tree["tree"]).resolve()):
            raise SystemExit(f"[{name}] imports omniseg from {hello['omniseg']}, not from {tree['tree']}")
        print(f"[{name}] {tree['spec']} = {tree['commit'][:10]}{' (dirty)' if tree['dirty'] else ''}: "
              f"set up in {hello['setup_s']:.1f} s", flush=True)

    def read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"[{self.name}] child exited ({self.proc.wait()})")
        return json.loads(line)

    def ask(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


RATIO_KEYS = ("step_s", "step_cpu_s", "step_excl_nms_s", "step_cpu_excl_nms_s", "infer_s", "infer_cpu_s",
              "infer_excl_nms_s")
SHOWN_KEYS = (*RATIO_KEYS[:4], "nms_s", "data_s", *RATIO_KEYS[4:], "infer_nms_s")


def side_summary(d: dict[str, list]) -> dict:
    """Medians of one side's per-step / per-image lists; "excl_nms" = per-step difference, then median."""
    out = {k: med(v) for k, v in d.items()}
    out["step_excl_nms_s"] = med([a - b for a, b in zip(d["step_s"], d["nms_s"])])
    out["step_cpu_excl_nms_s"] = med([a - b for a, b in zip(d["step_cpu_s"], d["nms_cpu_s"])])
    out["infer_excl_nms_s"] = med([a - b for a, b in zip(d["infer_s"], d["infer_nms_s"])])
    out["n_steps"], out["n_images"] = len(d["step_s"]), len(d["infer_s"])
    return out


def print_profile(name: str, prof: dict) -> None:
    print(f"\n[{name}] data (next batch, not in the tables): {prof['data_cpu_s']:.3f} s CPU/step")
    print(f"[{name}] cProfile: run_step {prof['cprofile_step_cpu_s']:.3f} s CPU/step under the profiler, of which "
          f"NMS {prof['cprofile_nms_cpu_s']:.3f} s; top self time per step (share of all self time)")
    for r in prof["cprofile"]:
        print(f"  {100 * r['share']:5.1f}%  {r['self_s'] * 1e3:8.1f} ms  cum {r['cum_s'] * 1e3:8.1f} ms  "
              f"{r['calls']:8.0f} calls  {r['function']}")
    print(f"[{name}] torch profiler: run_step {prof['torch_total_s']:.3f} s self CPU/step; top self CPU time per op")
    for r in prof["torch_ops"]:
        print(f"  {100 * r['share']:5.1f}%  {r['self_s'] * 1e3:8.1f} ms  {r['calls']:8.0f} calls  {r['op']}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--old", default=DEFAULT_OLD, help="git revision or WORKTREE (default: %(default)s)")
    p.add_argument("--new", default="WORKTREE", help="git revision or WORKTREE (default: %(default)s)")
    p.add_argument("--config", default=CONFIG, help="experiment YAML inside each side's tree, so each side runs "
                   "its own version of the config (default: %(default)s)")
    p.add_argument("--set", action="append", default=[], help="config override KEY=VALUE (both sides; repeatable)")
    p.add_argument("--set-new", action="append", default=[], help="config override for the new side only "
                   "(e.g. data.num_workers=1 to measure a config change)")
    p.add_argument("--rounds", type=int, default=5, help="A/B rounds (default: %(default)s)")
    p.add_argument("--steps", type=int, default=3, help="timed training steps per side per round (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per side first (default: %(default)s)")
    p.add_argument("--infer", type=int, default=4, help="timed single images per side per round (default: %(default)s)")
    p.add_argument("--profile", action="store_true", help="profile instead of timing (cProfile + torch profiler)")
    p.add_argument("--side", choices=("old", "new", "both"), default="new", help="--profile: which side(s)")
    p.add_argument("--top", type=int, default=20, help="--profile: entries per table")
    p.add_argument("--out", type=Path, help="also write the JSON summary here")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return 0
    specs = dict(zip(SIDES, (args.old, args.new)))
    names = [s for s in SIDES if args.side in (s, "both")] if args.profile else list(SIDES)
    trees = {s: prepare_tree(specs[s], Path(tempfile.gettempdir()) / "omniseg_step_speed", reuse=True) for s in names}
    children: dict[str, Child] = {}
    try:
        for s in names:
            children[s] = Child(s, trees[s], args)
        for s in names:
            children[s].ask(op="train", n=args.warmup)
            children[s].ask(op="infer", n=1)
        if args.profile:
            profiles = {s: children[s].ask(op="profile", n=args.steps, top=args.top) for s in names}
            for s in names:
                print_profile(f"{s} {specs[s]}", profiles[s])
            summary = {"profile": profiles}
        else:
            res: dict[str, dict[str, list]] = {s: {} for s in names}
            for r in range(args.rounds):
                order = names if r % 2 == 0 else names[::-1]  # A/B, then B/A: neither side always goes first
                for s in order:
                    for k, v in {**children[s].ask(op="train", n=args.steps),
                                 **children[s].ask(op="infer", n=args.infer)}.items():
                        res[s].setdefault(k, []).extend(v)
                print(f"round {r + 1}/{args.rounds}: " + ", ".join(
                    f"{s} step {med(res[s]['step_s']):.3f} s" for s in names), flush=True)
            summary = {"sides": {s: side_summary(res[s]) for s in names}}
            summary["ratio_new_over_old"] = {k: summary["sides"]["new"][k] / summary["sides"]["old"][k]
                                             for k in RATIO_KEYS}
            print(f"\nmedians, seconds{'':4}{'old':>10}{'new':>10}{'new/old':>10}")
            for k in SHOWN_KEYS:
                o, n = summary["sides"]["old"][k], summary["sides"]["new"][k]
                print(f"{k:20}{o:10.4f}{n:10.4f}{(n / o if o else float('nan')):10.3f}")
    finally:
        for c in children.values():
            c.close()
    summary = {"machine": platform.platform(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
               "load_avg": os.getloadavg(), "config": args.config, "overrides": args.set, "overrides_new": args.set_new, "rounds": args.rounds,
               "steps_per_round": args.steps, "warmup": args.warmup,
               **{s: {k: v for k, v in trees[s].items() if k != "tree"} for s in names}, **summary}
    text = json.dumps(summary, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
