"""BoxToMask: shapes, supervision flags, overfit, checkpoint round trip, recipe end to end."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from omniseg.data.batch import collate
from omniseg.data.dataset import synth_dataset
from omniseg.data.synth.world import SynthConfig
from omniseg.engine.checkpoint import load_checkpoint, save_checkpoint
from omniseg.modeling.box_to_mask import BoxToMaskConfig, build_box_to_mask

TINY = BoxToMaskConfig(width=8, fpn_channels=16, norm="GN", freeze_at=0, head_convs=2, head_dim=16)


@pytest.fixture(scope="module")
def batch():
    torch.manual_seed(0)
    ds = synth_dataset(SynthConfig(seed=3, num_images=2, image_size=128), progress=False)
    return collate([ds[0], ds[1]])


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_shapes(batch):
    model = build_box_to_mask(TINY)
    boxes = [t.boxes[t.has_box] for t in batch.targets]
    logits = model.mask_logits(batch.images, boxes)
    assert logits.shape == (sum(len(b) for b in boxes), 28, 28)
    masks = model.predict_masks(batch.images, batch.image_sizes, boxes)
    for m, b, (h, w) in zip(masks, boxes, batch.image_sizes):
        assert m.shape == (len(b), h, w) and m.dtype == torch.bool


def test_box_only_instances_feed_no_mask_loss(batch):
    torch.manual_seed(0)
    model = build_box_to_mask(TINY)
    full = model(batch)["loss_mask"]
    # hide the masks of all but the first instance of image 0: the loss must equal the loss
    # of a batch holding only that instance (mean over the ONE supervised instance)
    t0 = batch.targets[0]
    only_first = torch.zeros_like(t0.has_mask)
    only_first[0] = True
    hidden = dataclasses.replace(batch, targets=[dataclasses.replace(t0, has_mask=only_first)] + [
        dataclasses.replace(t, has_mask=torch.zeros_like(t.has_mask)) for t in batch.targets[1:]])
    single = dataclasses.replace(batch, targets=[t0.select(only_first)] + [
        t.select(torch.zeros_like(t.has_mask)) for t in batch.targets[1:]])
    assert torch.allclose(model(hidden)["loss_mask"], model(single)["loss_mask"], atol=1e-6)
    assert not torch.allclose(full, model(hidden)["loss_mask"])
    # no mask anywhere: zero loss with a graph, zero gradients
    none = dataclasses.replace(batch, targets=[dataclasses.replace(t, has_mask=torch.zeros_like(t.has_mask))
                                               for t in batch.targets])
    out = model(none)
    assert out["loss_mask"].item() == 0.0 and out["num_masks"].item() == 0
    out["loss_mask"].backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.parameters())


def test_overfits_one_batch_beyond_filled_boxes(batch):
    torch.manual_seed(0)
    model = build_box_to_mask(TINY)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(80):
        loss = model(batch)["loss_mask"]
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first
    model.eval()
    t = batch.targets[0]
    keep = t.has_box & t.has_mask
    pred = model.predict_masks(batch.images[:1], batch.image_sizes[:1], [t.boxes[keep]])[0].numpy()
    h, w = batch.image_sizes[0]
    gt = t.masks[keep][:, :h, :w].numpy().astype(bool)
    learned = np.mean([_mask_iou(p, g) for p, g in zip(pred, gt)])
    boxes = t.boxes[keep].round().int().tolist()
    filled = []
    for (x0, y0, x1, y1), g in zip(boxes, gt):
        f = np.zeros_like(g)
        f[y0:y1, x0:x1] = True
        filled.append(_mask_iou(f, g))
    assert learned > np.mean(filled) + 0.05, (learned, np.mean(filled))


def test_checkpoint_round_trip(batch, tmp_path):
    torch.manual_seed(0)
    model = build_box_to_mask(TINY)
    boxes = [t.boxes[t.has_box] for t in batch.targets]
    with torch.no_grad():
        before = model.mask_logits(batch.images, boxes)
    save_checkpoint(tmp_path, 1, model=model)
    torch.manual_seed(1)
    other = build_box_to_mask(TINY)
    load_checkpoint(tmp_path, model=other)
    with torch.no_grad():
        after = other.mask_logits(batch.images, boxes)
    assert torch.equal(before, after)


def test_recipe_trains_and_evaluates(tmp_path):
    from omniseg.engine.config import load_config
    from omniseg.recipes.box_to_mask import RECIPE, BoxToMaskExperiment
    from omniseg.recipes.contract import run_recipe

    cfg = load_config(BoxToMaskExperiment, None, [
        "model.width=8", "model.fpn_channels=16", "model.norm=GN", "model.freeze_at=0",
        "model.head_convs=1", "model.head_dim=8", "data.train_num_images=4", "data.val_num_images=2",
        "data.image_size=96", "data.batch_size=2", "train.max_iter=3", "train.progress=false",
        f"train.output_dir={tmp_path}", "train.checkpoint_period=3",
    ])
    out = run_recipe(RECIPE, cfg)
    assert out["step"] == 3
    ev = out["eval"]
    assert set(ev) >= {"mask_AP", "mask_AP50", "filled_box_AP"}
    assert all(0.0 <= v <= 1.0 for v in ev.values())
    assert (tmp_path / "config.yaml").exists() and (tmp_path / "checkpoints" / "latest").exists()
