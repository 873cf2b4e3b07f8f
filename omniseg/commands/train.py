"""``omniseg train CONFIG.yaml [section.key=value ...] [--resume]``.

Runs under ``torchrun`` too: every rank builds the same model, draws disjoint data, and only
rank 0 logs and writes checkpoints (see omniseg.engine).
"""

from __future__ import annotations

import argparse
import json

import yaml


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="experiment YAML (see configs/); its 'recipe' key picks the recipe")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.max_iter=200")
    p.add_argument("--resume", action="store_true", help="continue the run in train.output_dir from its latest checkpoint")


def main(args: argparse.Namespace) -> int:
    from omniseg.engine.config import load_config
    from omniseg.engine.distributed import destroy_distributed, init_distributed, is_main_process
    from omniseg.recipes.contract import run_recipe
    from omniseg.recipes.table import get_recipe

    with open(args.config, encoding="utf-8") as f:
        raw = yaml.safe_load(f) or {}
    name = raw.get("recipe", "box_to_mask") if isinstance(raw, dict) else "box_to_mask"
    try:
        recipe = get_recipe(name, args.config)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    cfg = load_config(recipe.config, args.config, args.overrides)
    init_distributed()
    main_rank = is_main_process()  # asked before the process group is torn down
    try:
        summary = run_recipe(recipe, cfg, resume=args.resume)
    finally:
        destroy_distributed()
    if main_rank:
        print(json.dumps({"step": summary["step"], "eval": summary["eval"]}, indent=1))
    return 0
