"""Mask R-CNN* recipe: smoke run with stand-in ALPs, image-level mode, reload, any vocabulary."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from omniseg.engine.config import load_config
from omniseg.recipes.contract import run_recipe
from omniseg.recipes.mask_rcnn_star import RECIPE, MaskRCNNStarExperiment, build_model

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "mask_rcnn_star_smoke.yaml"


def _cfg(tmp_path, *extra: str) -> MaskRCNNStarExperiment:
    return load_config(MaskRCNNStarExperiment, SMOKE, [f"train.output_dir={tmp_path}", *extra])


@pytest.mark.parametrize("image_labels", [False, True])
def test_smoke_run_trains_evaluates_and_segments_any_vocabulary(tmp_path, image_labels):
    from omniseg.api import Segmenter

    cfg = _cfg(tmp_path, f"alp.as_image_labels={str(image_labels).lower()}")
    out = run_recipe(RECIPE, cfg)
    assert out["step"] == cfg.train.max_iter
    for k in ("mask_AP50", "mask_AP50/base", "mask_AP50/novel", "box_AP50/novel"):
        assert 0.0 <= out["eval"][k] <= 1.0
    logged = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    image_loss = [r["loss_image_labels"] for r in logged if "loss_image_labels" in r]
    assert image_loss and (max(image_loss) > 0) == image_labels  # stand-in ALPs: boxed, or labels only
    preds = json.loads((tmp_path / "val_predictions.json").read_text())
    assert isinstance(preds, list)
    seg = Segmenter.from_checkpoint(tmp_path)
    seg.model.detector.roi_heads.cfg.score_threshold = 0.0
    found = seg.predict(np.zeros((64, 80, 3), np.uint8), vocabulary=["red ring", "crimson disk", "teal kite"])
    assert found and {i.text for i in found} <= {"red ring", "crimson disk", "teal kite"}
    assert all(i.mask is not None and i.box is not None for i in found)


def test_builder_and_encoder_are_checked(tmp_path):
    with pytest.raises(ValueError, match=r"builder: 'mask_rcnn_star_r101' is not one of \['mask_rcnn_star_r18_fpn'"):
        _cfg(tmp_path, "model.builder=mask_rcnn_star_r101")  # a wrong kind fails at load time
    with pytest.raises(ValueError, match="384"):
        build_model(_cfg(tmp_path, "text.encoder=minilm"))
