"""Backbone pretraining (``omniseg pretrain``): the pretraining recipes and the exported backbone.

A pretraining recipe is a :class:`~omniseg.recipes.contract.Recipe` whose model has
``backbone_state_dict()`` and ``backbone_kind`` ("resnet" / "vit"). After :func:`run_recipe`, the
final checkpoint's backbone is written to ``<output_dir>/backbone.safetensors`` next to
``manifest.json`` (what it was trained on, seeds, steps, final loss and evaluation, the command),
and every detector recipe loads it with ``model.pretrained=<output_dir>/backbone.safetensors``.
These recipes are not in :data:`omniseg.recipes.table.RECIPES`: a pretraining run predicts nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from omniseg.recipes import pretrain_dense, pretrain_mae, pretrain_mim
from omniseg.recipes.contract import Recipe, RunInfo, read_run_info

PRETRAIN_RECIPES: dict[str, Recipe] = {r.name: r for r in (pretrain_dense.RECIPE, pretrain_mae.RECIPE,
                                                             pretrain_mim.RECIPE)}
BACKBONE_FILE = "backbone.safetensors"
MANIFEST_FILE = "manifest.json"
#: which loader filter reads a backbone of each kind (omniseg.modeling.weights)
FILTERS = {"resnet": "resnet_filter_fn", "vit": "vit_filter_fn"}


def _training_log(metrics_file: Path) -> tuple[dict[str, float], float]:
    """The loss entries of the last training log line of ``metrics.jsonl`` ({} if none) and the time
    the training loop took (seconds per iteration x iterations of each log line; resumes included)."""
    from omniseg.engine.logging import read_metric_log

    last: dict[str, Any] = {}
    seconds, prev = 0.0, 0
    for row in read_metric_log(metrics_file):  # a line cut by a kill is skipped there
        if "loss" in row:
            last = row
            seconds += float(row.get("s_per_iter", 0.0)) * max(row["step"] - prev, 0)
            prev = row["step"]
    return {k: float(v) for k, v in last.items() if k.startswith("loss")}, seconds


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def _evaluation_classes_labelled(categories: list[dict[str, Any]]) -> int:
    """How many of the 80 evaluation class names are among the training source's categories."""
    from omniseg.data.synth.lexicon import class_names

    return len({c["name"] for c in categories if c.get("isthing", True)} & set(class_names()))


def export_backbone(recipe: Recipe, cfg: Any, command: str, wall_s: float) -> Path:
    """Write ``backbone.safetensors`` and ``manifest.json`` into ``cfg.train.output_dir`` from its
    latest checkpoint; returns the weights file.

    Raises:
        CheckpointError: the run folder holds no complete checkpoint.
    """
    from omniseg.engine.checkpoint import latest_checkpoint, load_weights_into
    from omniseg.engine.config import config_to_dict
    from omniseg.utils.atomic import atomic_write_bytes, atomic_write_json
    from omniseg.utils.weights_io import CheckpointError

    out = Path(cfg.train.output_dir)
    step_dir = latest_checkpoint(out / "checkpoints")
    if step_dir is None:
        raise CheckpointError(f"{out / 'checkpoints'}: no checkpoint to export a backbone from")
    config = config_to_dict(cfg)
    info: RunInfo = read_run_info(step_dir, config)
    model = recipe.build_model(cfg, info)
    load_weights_into(model, step_dir)
    from safetensors.torch import save

    weights = {k: v.contiguous() for k, v in model.backbone_state_dict().items()}
    blob = save(weights, metadata={"format": "pt"})  # one key: safetensors orders several differently per process
    atomic_write_bytes(out / BACKBONE_FILE, blob)
    reads_labels = bool(getattr(model, "reads_labels", True))
    losses, loop_s = _training_log(out / "metrics.jsonl")
    manifest = {
        "backbone": BACKBONE_FILE,
        "sha256": hashlib.sha256(blob).hexdigest(),
        "kind": model.backbone_kind,
        "filter": FILTERS.get(model.backbone_kind, ""),
        "tensors": len(weights),
        "parameters": int(sum(v.numel() for v in weights.values())),
        "recipe": recipe.name,
        "model": config.get("model", {}),
        "data": {**config.get("data", {}), "thing_classes": len(info.things()), "labels_read": reads_labels,
                 "evaluation_classes_labelled": _evaluation_classes_labelled(info.categories) if reads_labels else 0},
        "seed": cfg.train.seed,
        "steps": int(json.loads((step_dir / "state.json").read_text(encoding="utf-8")).get("step", 0)),
        "final_losses": losses,
        "train_loop_s": round(loop_s, 1),
        "eval": info.metrics or _read_metrics(out),
        "command": command,
        "wall_s": round(wall_s, 1),  # of this command (a --resume that only re-exports: seconds)
        "omniseg_commit": _git_commit(),
        "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "usage": f"model.pretrained={os.fspath(out / BACKBONE_FILE)}",
    }
    atomic_write_json(out / MANIFEST_FILE, manifest, indent=1)
    return out / BACKBONE_FILE


def _read_metrics(out: Path) -> dict[str, Any]:
    """The final evaluation in ``run.json`` ({} if the run has none yet)."""
    try:
        return dict(json.loads((out / "run.json").read_text(encoding="utf-8")).get("metrics") or {})
    except (OSError, ValueError, AttributeError):
        return {}

