"""``omniseg train CONFIG.yaml [section.key=value ...] [--resume]``.

Runs under ``torchrun`` too: every rank builds the same model, draws disjoint data, and only
rank 0 logs and writes checkpoints (see omniseg.engine).
"""

from __future__ import annotations

import argparse
import json

import yaml

#: recipe name -> (module, top-level config class name). Plain dict: what you see is what runs.
RECIPES: dict[str, tuple[str, str]] = {
    "box_to_mask": ("omniseg.recipes.box_to_mask", "BoxToMaskExperiment"),
    "fcos_mo": ("omniseg.recipes.fcos_mo", "FCOSMOExperiment"),
    "mask_rcnn_star": ("omniseg.recipes.mask_rcnn_star", "MaskRCNNStarExperiment"),
    "maskx_rcnn": ("omniseg.recipes.maskx_rcnn", "MaskXExperiment"),
}


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="experiment YAML (see configs/); its 'recipe' key picks the recipe")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.max_iter=200")
    p.add_argument("--resume", action="store_true", help="continue the run in train.output_dir from its latest checkpoint")


def main(args: argparse.Namespace) -> int:
    import importlib

    from omniseg.engine.config import load_config
    from omniseg.engine.distributed import destroy_distributed, init_distributed, is_main_process

    with open(args.config, encoding="utf-8") as f:
        recipe = (yaml.safe_load(f) or {}).get("recipe", "box_to_mask")
    if recipe not in RECIPES:
        raise SystemExit(f"{args.config}: unknown recipe {recipe!r}; choose from {sorted(RECIPES)}")
    module_name, cls_name = RECIPES[recipe]
    module = importlib.import_module(module_name)
    cfg = load_config(getattr(module, cls_name), args.config, args.overrides)
    init_distributed()
    main_rank = is_main_process()  # asked before the process group is torn down
    try:
        summary = module.run(cfg, resume=args.resume)
    finally:
        destroy_distributed()
    if main_rank:
        print(json.dumps({"step": summary["step"], "eval": summary["eval"]}, indent=1))
    return 0
