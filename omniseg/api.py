"""``Segmenter``: load a trained checkpoint and predict on plain images with any vocabulary.

The trainable model (``omniseg.modeling``) is kept apart from this stateful predictor, as in
SAM's ``modeling/sam.py`` vs ``predictor.py``. A checkpoint folder written by the engine holds
the run's resolved config (``config.json``, whose ``recipe`` names the recipe) and the weights
(``model.safetensors``, ``ema.safetensors`` when EMA was on); the recipe module provides
``model_from_config(cfg)`` and ``predict_image(model, cfg, image, vocabulary, boxes)`` (image:
3 x H x W uint8, padded by the recipe as its model needs).

    from omniseg.api import Segmenter
    seg = Segmenter.from_checkpoint("runs/x/checkpoints")        # folder, step_N/ or run root
    for inst in seg.predict("photo.jpg", vocabulary=["red ring", "blue star"]):
        print(inst.text, inst.score, inst.box)                     # inst.mask is COCO RLE
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from omniseg.data.records import Instance


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A ``step_N`` folder from a run folder, a checkpoints folder (its ``latest``) or the step itself."""
    from omniseg.engine.checkpoint import latest_checkpoint

    p = Path(path)
    if (p / "state.json").exists():
        return p
    for root in (p, p / "checkpoints"):
        if root.is_dir():
            found = latest_checkpoint(root)
            if found is not None:
                return found
    raise FileNotFoundError(f"{p}: no checkpoint here (expected step_N/state.json, a 'latest' pointer, or checkpoints/)")


def load_recipe(name: str) -> tuple[ModuleType, type]:
    """(recipe module, its top-level config class) for a recipe name."""
    from omniseg.commands.train import RECIPES

    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known: {sorted(RECIPES)}")
    module_name, cls_name = RECIPES[name]
    module = importlib.import_module(module_name)
    return module, getattr(module, cls_name)


class Segmenter:
    """A trained model ready to predict.

    Args:
        model: the trained module (eval mode is set here).
        recipe: the recipe module that built it (provides ``predict_image``).
        cfg: the run's resolved config.
        device: where to run.
    """

    def __init__(self, model: torch.nn.Module, recipe: ModuleType, cfg: Any, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.recipe, self.cfg = recipe, cfg

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str = "cpu", use_ema: bool = False) -> Segmenter:
        """Build the model the checkpoint's config describes and load its (or its EMA's) weights."""
        from omniseg.engine.checkpoint import load_weights
        from omniseg.engine.config import config_from_dict

        step = resolve_checkpoint(path)
        config_file = step / "config.json"
        if not config_file.exists():
            raise FileNotFoundError(f"{config_file}: checkpoint has no config; cannot rebuild the model")
        raw = json.loads(config_file.read_text(encoding="utf-8"))
        recipe, cfg_cls = load_recipe(raw.get("recipe", ""))
        cfg = config_from_dict(cfg_cls, raw, str(config_file))
        model = recipe.model_from_config(cfg)
        weights_file = step / ("ema.safetensors" if use_ema else "model.safetensors")
        if not weights_file.exists():
            raise FileNotFoundError(f"{weights_file}: not in the checkpoint" + (" (trained without EMA?)" if use_ema else ""))
        missing, unexpected = model.load_state_dict(load_weights(weights_file), strict=False)
        if missing or unexpected:
            raise RuntimeError(f"{weights_file}: weights do not fit the model: missing {missing[:5]}, "
                               f"unexpected {unexpected[:5]}")
        return cls(model, recipe, cfg, device)

    def predict(
        self,
        image: np.ndarray | str | os.PathLike,
        vocabulary: list[str] | None = None,
        boxes: np.ndarray | list | None = None,
        min_score: float = 0.0,
    ) -> list[Instance]:
        """Instances (text, score, box, RLE mask) in one image.

        Args:
            image: H x W x 3 uint8 RGB array, or a path to an image file.
            vocabulary: class names / phrases to recognise (open-vocabulary models); None = the
                model's training vocabulary.
            boxes: K x 4 XYXY boxes for models that segment given boxes (box-to-mask).
            min_score: drop predictions below this score.
        """
        if not isinstance(image, np.ndarray):
            from omniseg.data.images import load_image

            image = load_image(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an H x W x 3 uint8 RGB image, got {image.shape} {image.dtype}")
        tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1).to(self.device)  # copy: input may be read-only
        box_t = None if boxes is None else torch.as_tensor(np.asarray(boxes, np.float32)).reshape(-1, 4)
        with torch.no_grad():
            out = self.recipe.predict_image(self.model, self.cfg, tensor, vocabulary, box_t)
        return [i for i in out if i.score is None or i.score >= min_score]
