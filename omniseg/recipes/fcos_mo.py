"""Recipe: train FCOS-MO (:mod:`omniseg.modeling.fcos_mo`) on mixed supervision and score its masks.

Training data: the split's training view plus ALPs (:mod:`omniseg.recipes.alp_data`: curated
``alp.path``, stand-in ``alp.simulate``, ``alp.quantize`` for box quantization). Evaluation:
predictions on the validation images with the vocabulary = the thing class names, mask AP / AP50
overall and for the split's base / novel groups (:func:`omniseg.recipes.scoring.detection_eval_fn`).
Prediction: any vocabulary of phrases, (|C|+1)-way softmax over their text embeddings (ALP paper
Sec. 3.2).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from omniseg.engine.config import TrainConfig
from omniseg.modeling.fcos_mo import FCOSMO, FCOSMOConfig, build_fcos_mo
from omniseg.recipes.alp_data import ALPConfig, alp_recipe
from omniseg.recipes.contract import RunInfo
from omniseg.recipes.data import DataConfig
from omniseg.recipes.open_vocab import (
    TextConfig,
    build_phrase_embedder,
    open_vocabulary_predictor,
)


@dataclass
class FCOSMOExperiment:
    """Top-level config (YAML sections: model, text, alp, data, train). The backbone is
    ``model.backbone`` (the only place that names it)."""

    recipe: Literal["fcos_mo"] = "fcos_mo"
    model: FCOSMOConfig = field(default_factory=FCOSMOConfig)
    text: TextConfig = field(default_factory=TextConfig)
    alp: ALPConfig = field(default_factory=ALPConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def build_model(cfg: FCOSMOExperiment, info: RunInfo | None = None) -> FCOSMO:
    """The configured model with its phrase embedder attached (any categories: open vocabulary)."""
    model = build_fcos_mo(cfg.model)
    model.set_text_embedder(build_phrase_embedder(cfg.text, cfg.model.embed_dim))
    return model


def predictor(model: FCOSMO, cfg: FCOSMOExperiment, info: RunInfo):
    """Any vocabulary of phrases (default: the training classes' names)."""
    return open_vocabulary_predictor(
        model, lambda images, vocab, sizes, out_sizes: model.predict(images, vocab, sizes, out_sizes),
        model.text_embedder, [c.name for c in info.things()], "FCOS-MO")


RECIPE = alp_recipe("fcos_mo", FCOSMOExperiment, build_model, predictor)
