"""``omniseg train CONFIG.yaml [section.key=value ...] [--resume | --overwrite]``.

Runs under ``torchrun`` too: every rank builds the same model, draws disjoint data, and only
rank 0 logs and writes checkpoints (see omniseg.engine).
"""

from __future__ import annotations

import argparse
import json


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="experiment YAML (see configs/); its 'recipe' key picks the recipe")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.max_iter=200")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true",
                      help="continue the run in train.output_dir from its latest checkpoint")
    mode.add_argument("--overwrite", action="store_true",
                      help="delete the previous run's files in train.output_dir and start again")


def main(args: argparse.Namespace) -> int:
    from omniseg.engine.distributed import destroy_distributed, init_distributed, is_main_process
    from omniseg.recipes.contract import run_recipe
    from omniseg.recipes.table import load_experiment

    recipe, cfg = load_experiment(args.config, args.overrides)
    init_distributed()
    main_rank = is_main_process()  # asked before the process group is torn down
    try:
        summary = run_recipe(recipe, cfg, resume=args.resume, overwrite=args.overwrite)
    finally:
        destroy_distributed()
    if main_rank:
        print(json.dumps({"step": summary["step"], "eval": summary["eval"]}, indent=1))
    return 0
