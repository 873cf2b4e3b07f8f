"""``omniseg pretrain CONFIG.yaml [section.key=value ...] [--resume | --overwrite]``.

Trains a pretraining recipe (``pretrain_dense``: a ResNet trunk, dense supervised on the pretraining
world; ``pretrain_mae``: a ViT as a masked autoencoder; ``pretrain_mim``: a ResNet trunk by masked image
modelling -- the last two on images only) and exports its backbone to
``<train.output_dir>/backbone.safetensors`` with ``manifest.json``; detector recipes load it with
``model.pretrained=<that file>``. ``--resume`` on a finished run only re-exports.
"""

from __future__ import annotations

import argparse
import json
import shlex
import time

from omniseg.commands.train import register  # the same arguments as `omniseg train`

__all__ = ["register", "main"]


def main(args: argparse.Namespace) -> int:
    from omniseg.recipes.contract import run_recipe
    from omniseg.recipes.pretraining import MANIFEST_FILE, PRETRAIN_RECIPES, export_backbone
    from omniseg.recipes.table import load_experiment

    recipe, cfg = load_experiment(args.config, args.overrides, PRETRAIN_RECIPES)
    start = time.monotonic()
    run_recipe(recipe, cfg, resume=args.resume, overwrite=args.overwrite)
    command = shlex.join(["omniseg", "pretrain", args.config, *args.overrides])
    path = export_backbone(recipe, cfg, command, time.monotonic() - start)
    manifest = json.loads((path.parent / MANIFEST_FILE).read_text(encoding="utf-8"))
    print(json.dumps({k: manifest[k] for k in ("usage", "kind", "steps", "final_losses", "eval")}, indent=1))
    return 0
