"""``Segmenter``: load a trained run and predict on plain images with any vocabulary.

The trainable model (``omniseg.modeling``) is kept apart from this stateful predictor, as in
SAM's ``modeling/sam.py`` vs ``predictor.py``. A run folder is self-describing: a checkpoint
holds the resolved config (``config.json``, whose ``recipe`` names the method), the weights
(``model.safetensors``, ``ema.safetensors`` when EMA was on) and the run description
(:class:`~omniseg.recipes.contract.RunInfo`: categories, text-encoder id) -- nothing else, in
particular not the training data, is needed to predict.

    from omniseg.api import Segmenter
    seg = Segmenter.from_checkpoint("runs/x")                     # run folder, checkpoints/ or step_N/
    for inst in seg.predict("photo.jpg", vocabulary=["red ring", "blue star"]):
        print(inst.text, inst.score, inst.box)                     # inst.mask is COCO RLE
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import torch

from omniseg.data.records import Instance
from omniseg.engine.checkpoint import resolve_checkpoint
from omniseg.recipes.contract import Recipe, RunInfo, pad_images

__all__ = ["Segmenter", "resolve_checkpoint"]


class Segmenter:
    """A trained model ready to predict.

    Args:
        model: the trained module (eval mode is set here).
        recipe: the method that built it.
        cfg: the run's resolved config.
        info: the run's description (categories, text encoder).
        device: where to run.
    """

    def __init__(self, model: torch.nn.Module, recipe: Recipe, cfg: Any, info: RunInfo,
                 device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.recipe, self.cfg, self.info = recipe, cfg, info
        self.predictor = recipe.predictor(self.model, cfg, info)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str = "cpu", use_ema: bool = False) -> Segmenter:
        """Build the model the checkpoint describes and load its (or its EMA's) weights."""
        from omniseg.engine.checkpoint import load_weights
        from omniseg.engine.config import config_from_dict
        from omniseg.recipes.contract import read_run_info
        from omniseg.recipes.table import get_recipe

        step = resolve_checkpoint(path)
        config_file = step / "config.json"
        if not config_file.exists():
            raise FileNotFoundError(f"{config_file}: checkpoint has no config; cannot rebuild the model")
        raw = json.loads(config_file.read_text(encoding="utf-8"))
        recipe = get_recipe(raw.get("recipe", ""), str(config_file))
        cfg = config_from_dict(recipe.config, raw, str(config_file))
        info = read_run_info(step, raw)
        model = recipe.build_model(cfg, info)
        weights_file = step / ("ema.safetensors" if use_ema else "model.safetensors")
        if not weights_file.exists():
            raise FileNotFoundError(f"{weights_file}: not in the checkpoint" + (" (trained without EMA?)" if use_ema else ""))
        missing, unexpected = model.load_state_dict(load_weights(weights_file), strict=False)
        if missing or unexpected:
            raise RuntimeError(f"{weights_file}: weights do not fit the model: missing {missing[:5]}, "
                               f"unexpected {unexpected[:5]}")
        return cls(model, recipe, cfg, info, device)

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
        batch, sizes = pad_images(tensor, self.recipe.pad_divisor)
        box_t = None if boxes is None else [torch.as_tensor(np.asarray(boxes, np.float32)).reshape(-1, 4)]
        with torch.no_grad():
            out = self.predictor(batch, sizes, sizes, vocabulary, box_t)[0]
        ids = {c.name: c.id for c in self.info.things()}  # training class names keep their ids
        found = out.to_instances([ids.get(t) for t in out.texts], source=self.recipe.name)
        return [i for i in found if i.score is None or i.score >= min_score]
