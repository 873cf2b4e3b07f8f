"""Training throughput, peak memory and inference latency of any experiment config at its own (CPU) size.

    python bench/recipe_speed.py configs/vloss_synth.yaml --threads 1 2 --steps 10 \\
        --out bench/results/recipe_speed_vloss.json
    python bench/recipe_speed.py configs/maskx_smoke.yaml --threads 1 --steps 2 --warmup 1 --infer 1 --set data.batch_size=1

One child process per thread count (``torch.set_num_threads(N)``, ``OMP_NUM_THREADS=N``), so its peak
resident memory (``ru_maxrss``) is its own. The child builds data, model, loader, optimizer and
``Trainer`` through the recipe contract (:class:`step_speed.Side`, with the config's own data sizes),
runs ``--warmup`` untimed training steps, then ``--steps`` timed ones (``Trainer._next_batch`` +
``Trainer.run_step``: data, forward, backward, clipping, optimizer and schedule step), then one untimed
and ``--infer`` timed single-image predictions through the recipe's predictor (VLOSS: the panoptic
inference; box-prompted recipes segment the image's own boxes). The inference model is freshly
seeded: :func:`step_speed.infer_thresholds` lowers its score cut to 0 so that it does a trained model's full
work. Reported per thread count: median and p90 seconds per training step, images/s (``data.batch_size``
/ median), median data-loading and CPU seconds per step, median seconds per image, peak RSS (MiB)
after set-up, after training and after inference, set-up seconds (the data at the config's size: VLOSS's
1,200 synthetic records take ~1.5 min) and the model's parameter count. The data column includes
drawing each synthetic image on its first use (a real run's later epochs find it cached).

Timings on a shared machine are noisy: the JSON records the load average before and after each child,
and the OpenMP settings (``OMP_WAIT_POLICY``...). On a busy machine a thread count > 1 can be many
times slower than 1 thread (spinning OpenMP threads wait for a descheduled one; measured 13 s vs
0.16 s per step at load 4 on 2 cores, 0.48 s with ``OMP_WAIT_POLICY=PASSIVE``): measure on a quiet machine.
:func:`recipe_speed_section` renders every ``bench/results/recipe_speed_*.json`` for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))
from experiment_runner import BF16_WORDS, proc_field  # noqa: E402
from step_speed import infer_thresholds  # noqa: E402  (re-exported: the thresholds are step_speed's)

#: environment variables that change how torch's OpenMP threads wait (recorded with the results)
THREAD_ENV = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "OMP_PROC_BIND", "OMP_PLACES")


def peak_rss_mib() -> float:
    """This process's peak resident set size so far (Linux ``ru_maxrss`` is in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args: argparse.Namespace) -> None:
    """Build, train, predict; one JSON line on stdout (anything the package prints goes to stderr)."""
    out, sys.stdout = sys.stdout, sys.stderr
    import torch
    from step_speed import Side

    from omniseg.recipes.table import load_experiment

    threads = args.threads[0]  # the parent passes one
    recipe, cfg = load_experiment(args.config, args.set)
    infer_set = infer_thresholds(cfg) + args.infer_set
    with tempfile.TemporaryDirectory(prefix="recipe_speed_run_") as tmp:
        t0 = time.perf_counter()
        side = Side(args.config, args.set, tmp, threads=threads, train_images=args.train_images,
                    infer_set=infer_set)
        res: dict[str, Any] = {"setup_s": time.perf_counter() - t0, "rss_setup_mib": peak_rss_mib()}
        model = side.trainer.model
        if args.warmup:
            side.train_steps(args.warmup)
        res.update(side.train_steps(args.steps), rss_train_mib=peak_rss_mib())
        if args.infer:
            side.infer(1)  # lazy set-up (text embeddings of the vocabulary, first-call allocations)
        res.update(side.infer(args.infer), rss_infer_mib=peak_rss_mib())
    res.update(threads=threads, torch_threads=torch.get_num_threads(), torch=torch.__version__,
               recipe=recipe.name, batch_size=getattr(side.cfg.data, "batch_size", None), infer_set=infer_set,
               params=sum(p.numel() for p in model.parameters()),
               trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad))
    out.write(json.dumps(res) + "\n")
    out.flush()


def p90(xs: list[float]) -> float:
    """Nearest-rank 90th percentile."""
    s = sorted(xs)
    return s[max(math.ceil(0.9 * len(s)) - 1, 0)] if s else float("nan")


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def summarize(raw: dict[str, Any]) -> dict[str, Any]:
    """One thread count's row: medians / p90 of the child's per-step and per-image lists, raw lists kept."""
    s = med(raw["step_s"])
    return {"threads": raw["threads"], "s_per_iter": s, "s_per_iter_p90": p90(raw["step_s"]),
            "images_per_s": raw["batch_size"] / s if raw["batch_size"] and s > 0 else None,
            "data_s_per_iter": med(raw["data_s"]), "cpu_s_per_iter": med(raw["step_cpu_s"]),
            "s_per_image": med(raw["infer_s"]), "detections": raw["detections"], "setup_s": raw["setup_s"],
            "rss_setup_mib": raw["rss_setup_mib"], "rss_train_mib": raw["rss_train_mib"],
            "rss_infer_mib": raw["rss_infer_mib"], "params": raw["params"], "trainable_params": raw["trainable_params"],
            "torch_threads": raw["torch_threads"], "n_steps": len(raw["step_s"]), "n_images": len(raw["infer_s"]),
            "step_s": raw["step_s"], "infer_s": raw["infer_s"]}


def run_child(config: Path, threads: int, args: argparse.Namespace) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONHASHSEED": "0"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(config), "--threads", str(threads),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--infer", str(args.infer),
           *[f"--set={s}" for s in args.set], *[f"--infer-set={s}" for s in args.infer_set],
           *([] if args.train_images is None else ["--train-images", str(args.train_images)])]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode or not lines:
        raise SystemExit(f"{config}: the child for --threads {threads} failed (exit {proc.returncode}); "
                         "its error is above")
    return json.loads(lines[-1])


def machine() -> dict[str, Any]:
    """Facts about this machine: platform, CPUs (count, affinity, model), memory, Python."""
    from omniseg.engine.precision import cpu_bf16_native, cpu_capability

    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "cpu_model": proc_field("/proc/cpuinfo", "model name"), "mem_gib": proc_field("/proc/meminfo", "MemTotal"),
            # one model name ("AMD EPYC") covers CPUs with and without AVX512-BF16: bf16 timings differ ~20x
            "cpu_isa": cpu_capability() or None, "bf16_native": cpu_bf16_native()}
    if info["mem_gib"]:  # "24684096 kB"
        info["mem_gib"] = round(int(info["mem_gib"].split()[0]) / 2**20, 1)
    # OpenMP's waiting policy decides how a thread count > 1 behaves on a busy machine (spinning threads)
    info["thread_env"] = {k: os.environ[k] for k in THREAD_ENV if k in os.environ}
    return info


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"{'threads':>7} {'s/iter':>8} {'p90':>8} {'img/s':>7} {'data s':>7} {'CPU s':>7} {'s/image':>8} "
          f"{'RSS train':>10} {'RSS infer':>10} {'set-up s':>8}")
    for r in rows:
        ips = f"{r['images_per_s']:7.2f}" if r["images_per_s"] else f"{'-':>7}"
        print(f"{r['threads']:7d} {r['s_per_iter']:8.3f} {r['s_per_iter_p90']:8.3f} {ips} {r['data_s_per_iter']:7.3f} "
              f"{r['cpu_s_per_iter']:7.3f} {r['s_per_image']:8.3f} {r['rss_train_mib']:7.0f} MiB "
              f"{r['rss_infer_mib']:6.0f} MiB {r['setup_s']:8.1f}")


def _shown_command(command: str) -> str:
    """A recorded command line without its ``--out FILE``."""
    words, out = command.split(), []
    for i, w in enumerate(words):
        if not (w == "--out" or w.startswith("--out=") or (i and words[i - 1] == "--out")):
            out.append(w)
    return " ".join(out)


def _variant(overrides: list[str]) -> str:
    """``, <builder>`` when the overrides choose a model builder (one config, several networks); ``, amp <kind>``
    when they set the training precision."""
    return "".join(f", {o.split('=', 1)[1]}" if o.startswith("model.builder=") else f", amp {o.split('=', 1)[1]}"
                   for o in overrides if o.startswith(("model.builder=", "train.amp=")))


def _isa(m: dict) -> str:
    """", AVX2, no native bf16" for a machine record that says (older records do not)."""
    if "cpu_isa" not in m:
        return ""
    return f", {m['cpu_isa'] or '?'}, {BF16_WORDS[m['bf16_native']]}"


def recipe_speed_section(results: Path) -> list[str]:
    """BENCHMARKS.md lines for every ``recipe_speed_*.json`` in ``results`` (none: no lines)."""
    out: list[str] = []
    for path in sorted(results.glob("recipe_speed_*.json")):
        d = json.loads(path.read_text())
        m, rows = d["machine"], d["rows"]
        first = rows[0]
        size = "the config's size" if d["train_images"] is None else f"{d['train_images']} training images"
        infer = ", ".join(f"`{s}`" for s in first.get("infer_set", []))
        infer = f" on a freshly seeded model with {infer}" if infer else " on a freshly seeded model"
        over = f" Overrides: {', '.join(f'`{s}`' for s in d['overrides'])}." if d["overrides"] else ""
        out += [f"## Speed and memory: {d['config']} ({d['recipe']}{_variant(d['overrides'])})", "",
                f"`{_shown_command(d['command'])}` — {m['cpu_count']} cores ({m.get('cpu_model') or '?'}{_isa(m)}), "
                f"{m.get('mem_gib') or '?'} GiB, {m['platform']}, torch {d['torch']}"
                f"{''.join(f', {k}={v}' for k, v in m.get('thread_env', {}).items())}; load average "
                f"{d['load_avg_before'][0]:.1f} before, {d['load_avg_after'][0]:.1f} after. One process per thread "
                f"count (peak RSS = its own `ru_maxrss`), built through the recipe contract at {size}; "
                f"{d['warmup']} warm-up steps, then medians of {d['steps']} timed training steps (data + forward + "
                f"backward + optimizer) and of {d['infer']} single-image predictions through the recipe's predictor"
                f"{infer}. Model: {first['params'] / 1e6:.2f} M parameters ({first['trainable_params'] / 1e6:.2f} M "
                f"trainable); batch {d['batch_size']}.{over}", "",
                "| threads | s / iter | p90 | images / s | data s / iter | CPU s / iter | s / image "
                "| peak RSS train (MiB) | peak RSS infer (MiB) | set-up s | load avg |",
                "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            ips = f"{r['images_per_s']:.2f}" if r["images_per_s"] else "–"
            out.append(f"| {r['threads']} | {r['s_per_iter']:.3f} | {r['s_per_iter_p90']:.3f} | {ips} "
                       f"| {r['data_s_per_iter']:.3f} | {r['cpu_s_per_iter']:.3f} | {r['s_per_image']:.3f} "
                       f"| {r['rss_train_mib']:.0f} | {r['rss_infer_mib']:.0f} | {r['setup_s']:.0f} "
                       f"| {r['load_avg_before'][0]:.1f} |")
        out.append("")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("config", type=Path, help="experiment YAML")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts, one child each "
                   "(default: %(default)s)")
    p.add_argument("--steps", type=int, default=10, help="timed training steps (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=2, help="untimed training steps first (default: %(default)s)")
    p.add_argument("--infer", type=int, default=5, help="timed single images (default: %(default)s)")
    p.add_argument("--set", action="append", default=[], help="config override KEY=VALUE (repeatable)")
    p.add_argument("--infer-set", action="append", default=[], help="override for the inference model only, after "
                   "the automatic score cuts (e.g. eval.object_threshold=0.5 to keep the config's)")
    p.add_argument("--train-images", type=int, help="data.train_num_images (default: the config's)")
    p.add_argument("--out", type=Path, help="write the JSON here")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.infer < 0 or min(args.threads) < 1:
        p.error("--steps and --threads must be >= 1, --warmup and --infer >= 0")
    if args.child:
        child(args)
        return 0
    if not args.config.is_file():
        p.error(f"{args.config}: no such file")
    config = args.config.resolve()
    load_before, rows = os.getloadavg(), []
    for n in args.threads:
        load = os.getloadavg()
        raw = run_child(config, n, args)
        rows.append({**summarize(raw), "load_avg_before": load, "infer_set": raw["infer_set"]})
        print(f"--threads {n}: {rows[-1]['s_per_iter']:.3f} s/iter, peak RSS {rows[-1]['rss_infer_mib']:.0f} MiB",
              flush=True)
    shown = str(config.relative_to(ROOT)) if config.is_relative_to(ROOT) else str(config)
    summary = {"config": shown, "recipe": raw["recipe"], "overrides": args.set, "infer_overrides": args.infer_set,
               "train_images": args.train_images, "steps": args.steps, "warmup": args.warmup, "infer": args.infer,
               "batch_size": raw["batch_size"], "torch": raw["torch"], "machine": machine(),
               "load_avg_before": load_before, "load_avg_after": os.getloadavg(), "rows": rows,
               "command": shlex.join(["python", "bench/recipe_speed.py", *(sys.argv[1:] if argv is None else argv)])}
    print(f"\n{shown} ({summary['recipe']}): {rows[0]['params']:,} parameters, batch {summary['batch_size']}, "
          f"load average {load_before[0]:.1f} -> {summary['load_avg_after'][0]:.1f}")
    print_table(rows)
    if args.out:
        from omniseg.utils.atomic import atomic_write_json

        atomic_write_json(args.out, summary, indent=1)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
