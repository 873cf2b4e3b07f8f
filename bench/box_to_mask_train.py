"""Toy model end to end: train BoxToMask on the synthetic world through the engine, evaluate.

Writes bench/results/box_to_mask_train.json: wall time of the whole run (data generation,
training, evaluation), seconds per iteration, and mask AP of the model's masks on ground-truth
boxes next to the filled-box baseline.

    python bench/box_to_mask_train.py [--config configs/box_to_mask_synth.yaml] [overrides ...]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from omniseg.engine.config import config_to_dict, load_config  # noqa: E402
from omniseg.engine.logging import read_metric_log  # noqa: E402
from omniseg.recipes.box_to_mask import RECIPE, BoxToMaskExperiment  # noqa: E402
from omniseg.recipes.contract import run_recipe  # noqa: E402
from omniseg.utils.atomic import atomic_write_json  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", default=str(ROOT / "configs" / "box_to_mask_synth.yaml"))
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "box_to_mask_train.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(BoxToMaskExperiment, args.config,
                          [f"train.output_dir={tmp}", "train.progress=false", *args.overrides])
        t0 = time.perf_counter()
        summary = run_recipe(RECIPE, cfg)
        wall = time.perf_counter() - t0
        log = [r for r in read_metric_log(Path(tmp) / "metrics.jsonl") if "s_per_iter" in r]
    result = {
        "benchmark": "box_to_mask_train",
        "command": "python bench/box_to_mask_train.py " + " ".join(args.overrides),
        "config": config_to_dict(cfg),
        "wall_s": wall,
        "s_per_iter": log[-1]["s_per_iter"] if log else None,
        "final_loss": log[-1]["loss"] if log else None,
        "eval": summary["eval"],
        "cpu_count": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
        "machine": platform.machine(),
        "python": platform.python_version(),
    }
    atomic_write_json(args.out, result, indent=2)
    ev = summary["eval"]
    print(f"| box_to_mask | {wall:.0f} s | {100 * ev['mask_AP']:.1f} | {100 * ev['mask_AP50']:.1f} "
          f"| {100 * ev['filled_box_AP']:.1f} | {100 * ev['filled_box_AP50']:.1f} |")


if __name__ == "__main__":
    main()
