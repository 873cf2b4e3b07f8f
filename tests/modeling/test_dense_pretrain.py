"""Dense pretraining (issue 12): targets against per-pixel loops and a hand-worked case, a tiny
overfit, and the exported trunk loading into a detector's FPN bit for bit."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from omniseg.data.batch import Batch, Targets
from omniseg.modeling.backbones.fpn import build_resnet18_fpn
from omniseg.modeling.backbones.resnet import build_resnet18
from omniseg.modeling.dense_pretrain import (
    IGNORE,
    DensePretrainer,
    boundary_map,
    dense_targets,
    instance_maps,
    label_maps,
    mask_pool,
)
from omniseg.modeling.weights import load_resnet_trunk
from omniseg.utils.weights_io import CheckpointError


def make_targets(masks: list[np.ndarray], cids: list[int], is_thing: list[bool] | None = None,
                 has_mask: list[bool] | None = None) -> Targets:
    n = len(masks)
    is_thing = [True] * n if is_thing is None else is_thing
    has_mask = [True] * n if has_mask is None else has_mask
    return Targets(
        boxes=torch.zeros(n, 4), masks=torch.from_numpy(np.stack(masks).astype(np.uint8)),
        has_box=torch.ones(n, dtype=torch.bool), box_exact=torch.ones(n, dtype=torch.bool),
        has_mask=torch.tensor(has_mask), is_crowd=torch.zeros(n, dtype=torch.bool), is_thing=torch.tensor(is_thing),
        category_ids=torch.tensor(cids, dtype=torch.long), texts=[str(c) for c in cids])


def make_batch(images: torch.Tensor, image_sizes: list[tuple[int, int]], targets: list[Targets]) -> Batch:
    b = len(targets)
    return Batch(images=images, image_sizes=image_sizes, targets=targets, captions=[[] for _ in range(b)],
                 image_ids=list(range(b)), orig_sizes=list(image_sizes), num_dropped=[0] * b, sources=[""] * b,
                 records=[None] * b)


# -- slow references: one pixel at a time ------------------------------------------------------


def ref_maps(t: Targets, class_of_id: dict[int, int], h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """(class, instance) of each pixel: the last masked thing covering it (painting order)."""
    cls, inst = np.zeros((h, w), np.int64), np.zeros((h, w), np.int64)
    for i in range(h):
        for j in range(w):
            for k in range(len(t)):
                if t.has_mask[k] and t.is_thing[k] and t.masks[k, i, j]:
                    cls[i, j] = class_of_id.get(int(t.category_ids[k]), 0)
                    inst[i, j] = k + 1
    return cls, inst


def ref_boundary(cls: np.ndarray, inst: np.ndarray) -> np.ndarray:
    """True where a 4-neighbour inside the image has another (instance, class)."""
    h, w = cls.shape
    out = np.zeros((h, w), bool)
    for i in range(h):
        for j in range(w):
            for di, dj in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                a, b = i + di, j + dj
                if 0 <= a < h and 0 <= b < w and (cls[a, b], inst[a, b]) != (cls[i, j], inst[i, j]):
                    out[i, j] = True
    return out


def ref_dense(batch: Batch, class_of_id: dict[int, int], s: int) -> tuple[np.ndarray, np.ndarray]:
    h, w = batch.images.shape[-2:]
    cls_out = np.zeros((len(batch), h // s, w // s), np.int64)
    edge_out = np.zeros((len(batch), h // s, w // s), np.float32)
    for b, t in enumerate(batch.targets):
        cls, inst = ref_maps(t, class_of_id, h, w)
        edge = ref_boundary(cls, inst)
        ih, iw = batch.image_sizes[b]
        for i in range(h // s):
            for j in range(w // s):
                y, x = i * s + s // 2, j * s + s // 2  # the cell's centre pixel
                cls_out[b, i, j] = cls[y, x] if y < ih and x < iw else IGNORE
                edge_out[b, i, j] = float(edge[i * s:(i + 1) * s, j * s:(j + 1) * s].any())
    return cls_out, edge_out


def random_batch(seed: int) -> tuple[Batch, dict[int, int]]:
    """Two padded 16 x 16 images with overlapping rectangles / blobs, an unknown category, a stuff
    segment and a mask-less instance (neither of the last two may label anything)."""
    rng = np.random.default_rng(seed)
    h = w = 16
    sizes = [(16, 16), (12, 10)]
    targets = []
    for ih, iw in sizes:
        masks = []
        for _ in range(6):
            m = np.zeros((h, w), bool)
            y0, x0 = rng.integers(0, ih - 2), rng.integers(0, iw - 2)
            m[y0:y0 + rng.integers(2, 8), x0:x0 + rng.integers(2, 8)] = True
            m &= rng.random((h, w)) < 0.9  # ragged edges, holes
            m[ih:, :] = False  # collate zero-pads masks
            m[:, iw:] = False
            masks.append(m)
        targets.append(make_targets(masks, [3, 5, 7, 99, 5, 3], is_thing=[True, True, True, True, False, True],
                                    has_mask=[True, True, True, True, True, False]))
    images = torch.from_numpy(rng.integers(0, 256, (2, 3, h, w), dtype=np.uint8))
    return make_batch(images, sizes, targets), {3: 1, 5: 2, 7: 3}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_maps_match_per_pixel_reference(seed):
    batch, class_of_id = random_batch(seed)
    labels = label_maps(batch.targets, class_of_id, 16, 16)
    inst = instance_maps(batch.targets, 16, 16)
    assert labels.dtype == inst.dtype == torch.long and labels.shape == inst.shape == (2, 16, 16)
    edge = boundary_map(labels, inst)
    for b, t in enumerate(batch.targets):
        want_cls, want_inst = ref_maps(t, class_of_id, 16, 16)
        np.testing.assert_array_equal(labels[b].numpy(), want_cls)
        np.testing.assert_array_equal(inst[b].numpy(), want_inst)
        np.testing.assert_array_equal(edge[b].numpy(), ref_boundary(want_cls, want_inst))
    assert labels.max() >= 1 and edge.any()
    for s in (2, 4):
        cls, e = dense_targets(batch, class_of_id, s)
        want_cls, want_edge = ref_dense(batch, class_of_id, s)
        np.testing.assert_array_equal(cls.numpy(), want_cls)
        np.testing.assert_array_equal(e.numpy(), want_edge)


def test_hand_worked_touching_instances_of_one_class():
    # two instances of the same class side by side (rows 1..3, columns 0..2 and 3..4): the class map
    # alone has no border between them, the boundary target must
    a, b = np.zeros((6, 6), bool), np.zeros((6, 6), bool)
    a[1:4, 0:3] = True
    b[1:4, 3:5] = True
    t = make_targets([a, b], [4, 4])
    labels = label_maps([t], {4: 1}, 6, 6)
    inst = instance_maps([t], 6, 6)
    expected_labels = np.zeros((6, 6), np.int64)
    expected_labels[1:4, 0:5] = 1
    np.testing.assert_array_equal(labels[0].numpy(), expected_labels)
    np.testing.assert_array_equal(inst[0].numpy(), a * 1 + b * 2)
    expected_edge = np.array([
        [1, 1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1, 1],
        [0, 0, 1, 1, 1, 1],  # (2, 2) | (2, 3): the border between the two instances
        [1, 1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1, 0],
        [0, 0, 0, 0, 0, 0],
    ], bool)
    np.testing.assert_array_equal(boundary_map(labels, inst)[0].numpy(), expected_edge)
    # one instance id for both: no border inside the class region any more
    assert not boundary_map(labels, (labels > 0).long())[0, 2, 2]
    # padded batch: the image is 5 x 4 inside the 6 x 6 padding; stride 2, centre pixel offset 1:
    # cells sample pixels (1|3|5, 1|3|5); column 5 and row 5 lie in the padding -> IGNORE
    batch = make_batch(torch.zeros(1, 3, 6, 6, dtype=torch.uint8), [(5, 4)], [t])
    cls, edge = dense_targets(batch, {4: 1}, 2)
    np.testing.assert_array_equal(cls[0].numpy(), [[1, 1, IGNORE], [1, 1, IGNORE], [IGNORE, IGNORE, IGNORE]])
    assert cls.dtype == torch.long and edge.dtype == torch.float32
    np.testing.assert_array_equal(edge[0].numpy(), [[1, 1, 1], [1, 1, 1], [1, 1, 1]])
    cls3, edge3 = dense_targets(make_batch(torch.zeros(1, 3, 6, 6, dtype=torch.uint8), [(6, 6)], [t]), {4: 1}, 3)
    np.testing.assert_array_equal(cls3[0].numpy(), [[1, 1], [0, 0]])  # pixels (1, 1), (1, 4), (4, 1), (4, 4)
    np.testing.assert_array_equal(edge3[0].numpy(), [[1, 1], [1, 1]])


def test_padding_is_ignored_in_the_class_target():
    m = np.zeros((32, 32), bool)
    m[:, :] = True  # a thing over the whole padded canvas: only the real image may be labelled
    t = make_targets([m], [1])
    batch = make_batch(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), [(32, 32), (20, 12)], [t, t])
    cls, _ = dense_targets(batch, {1: 1}, 4)
    assert (cls[0] == 1).all()
    # cells 0..4 (centre pixels 2..18 < 20) x 0..2 (centres 2, 6, 10 < 12) are inside image 1
    expected = torch.full((8, 8), IGNORE)
    expected[:5, :3] = 1
    assert torch.equal(cls[1], expected)


def _tiny_model(width: int = 4, category_ids=(1, 2), instance_weight: float = 0.0) -> DensePretrainer:
    torch.manual_seed(0)
    trunk = build_resnet18(norm="GN", freeze_at=0, width=width)
    return DensePretrainer(trunk=trunk, category_ids=list(category_ids), head_dim=8, norm="GN",
                           instance_weight=instance_weight)


def _toy_batch() -> Batch:
    """Two 64 x 64 images: a red square (class 1) and a blue disc (class 2) on grey; the second
    image is 48 x 56 inside the padding."""
    images = torch.full((2, 3, 64, 64), 120, dtype=torch.uint8)
    yy, xx = np.mgrid[:64, :64]
    targets = []
    for b, (cy, cx) in enumerate([(20, 24), (30, 36)]):
        sq = np.zeros((64, 64), bool)
        sq[cy - 10:cy + 10, cx - 14:cx + 6] = True
        disc = (yy - 44 + 8 * b) ** 2 + (xx - 46 + 20 * b) ** 2 <= 64
        disc &= ~sq
        images[b, :, torch.from_numpy(sq)] = torch.tensor([210, 40, 40], dtype=torch.uint8)[:, None]
        images[b, :, torch.from_numpy(disc)] = torch.tensor([45, 80, 210], dtype=torch.uint8)[:, None]
        targets.append(make_targets([sq, disc], [1, 2]))
    images[1, :, 48:, :] = 0
    images[1, :, :, 56:] = 0
    for t in targets[1:]:
        t.masks[:, 48:, :] = 0
        t.masks[:, :, 56:] = 0
    return make_batch(images, [(64, 64), (48, 56)], targets)


def test_shapes_and_padding_content_does_not_matter():
    model = _tiny_model()
    batch = _toy_batch()
    cls_logits, edge_logits = model.logits(batch.images, batch.image_sizes)
    assert cls_logits.shape == (2, 3, 16, 16) and edge_logits.shape == (2, 1, 16, 16) and model.stride == 4
    losses = model(batch)
    assert set(losses) == {"loss_cls", "loss_boundary"} and all(torch.isfinite(v) for v in losses.values())
    noisy = _toy_batch()
    noisy.images[1, :, 48:, :] = 255  # garbage in the padding: normalize_images zeroes it
    noisy.images[1, :, :, 56:] = 7
    again = model(noisy)
    for k in losses:
        assert torch.equal(losses[k], again[k]), k


def test_one_step_overfit_on_two_images():
    model = _tiny_model()
    batch = _toy_batch()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = None
    for _ in range(15):
        losses = model(batch)
        total = sum(losses.values())
        first = first or {k: v.item() for k, v in losses.items()}
        opt.zero_grad()
        total.backward()
        opt.step()
    last = {k: v.item() for k, v in model(batch).items()}
    assert last["loss_cls"] < 0.5 * first["loss_cls"], (first, last)
    assert last["loss_boundary"] < 0.8 * first["loss_boundary"], (first, last)


def test_backbone_round_trip_into_a_detector_fpn(tmp_path, caplog):
    model = _tiny_model(width=4)
    with torch.no_grad():  # trained-looking weights: nothing may be left at an initial value
        for p in model.trunk.parameters():
            p.add_(torch.randn_like(p))
    sd = model.backbone_state_dict()
    assert set(sd) == set(model.trunk.state_dict()) and "conv1.weight" in sd and "layer4.1.conv2.weight" in sd
    assert model.backbone_kind == "resnet" and not any(k.startswith(("trunk.", "fc.")) for k in sd)
    sd["conv1.weight"].zero_()  # a copy: the model is untouched
    assert model.trunk.conv1.weight.abs().sum() > 0
    sd = model.backbone_state_dict()
    path = tmp_path / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    (tmp_path / "manifest.json").write_text(json.dumps(
        {"recipe": "pretrain_dense", "data": {"train": "synth-pretraining"}, "steps": 2}))

    torch.manual_seed(1)
    fpn = build_resnet18_fpn(width=4, norm="GN", freeze_at=0, out_channels=8)
    fpn_only = {k: v.clone() for k, v in fpn.state_dict().items() if not k.startswith("bottom_up.")}
    with caplog.at_level(logging.INFO, logger="omniseg.modeling.weights"):
        report = load_resnet_trunk(fpn, path)
    assert report.ok and not report.missing and len(report.loaded) == len(fpn.bottom_up.state_dict()) == len(sd)
    for k, v in fpn.bottom_up.state_dict().items():
        assert torch.equal(v, sd[k]), k
    for k, v in fpn.state_dict().items():  # the FPN's own layers keep their initialization
        if not k.startswith("bottom_up."):
            assert torch.equal(v, fpn_only[k]), k
    assert "(pretrain_dense on synth-pretraining, 2 steps)" in caplog.text

    bare = build_resnet18(norm="GN", freeze_at=0, width=4)  # a bare trunk loads the same file
    (tmp_path / "manifest.json").write_text("[1, 2]")  # an odd manifest only loses the log summary
    assert load_resnet_trunk(bare, path).ok
    assert all(torch.equal(v, sd[k]) for k, v in bare.state_dict().items())

    wider = build_resnet18_fpn(width=8, norm="GN", freeze_at=0, out_channels=8)
    with pytest.raises(CheckpointError, match="only 0 of the model's"):
        load_resnet_trunk(wider, path)


def test_mask_pool_matches_a_per_cell_loop():
    g = torch.Generator().manual_seed(3)
    feature = torch.randn(5, 4, 6, generator=g)  # stride 4 over a 16 x 24 image
    masks = torch.rand(3, 16, 24, generator=g) > 0.7
    masks[2] = False
    masks[2, 5, 9] = True  # one pixel: its cell's feature
    got = mask_pool(feature, masks)
    for n in range(3):
        w = torch.zeros(4, 6)
        for i in range(4):
            for j in range(6):
                w[i, j] = masks[n, 4 * i:4 * i + 4, 4 * j:4 * j + 4].float().mean()
        want = (feature * w).sum((1, 2)) / w.sum()
        torch.testing.assert_close(got[n], want)
    torch.testing.assert_close(got[2], feature[:, 1, 2])
    torch.testing.assert_close(mask_pool(feature[:, :1, :1].expand(5, 16, 24).contiguous(), masks)[0],
                               feature[:, 0, 0])  # stride 1: plain masked mean of a constant map


def test_instance_loss_trains_the_deep_stages():
    model = _tiny_model(instance_weight=1.0)
    batch = _toy_batch()
    losses = model(batch)
    assert set(losses) == {"loss_cls", "loss_boundary", "loss_instance"}
    # two classes, fresh classifier: about log(2)
    assert 0.3 < losses["loss_instance"].item() < 1.5
    model.zero_grad()
    losses["loss_instance"].backward()
    assert model.trunk.layer4[0].conv1.weight.grad.abs().sum() > 0
    assert model.classifier.weight.grad is None  # the per-pixel head is not part of this loss
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = losses["loss_instance"].item()
    for _ in range(10):
        loss = model(batch)["loss_instance"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert model(batch)["loss_instance"].item() < 0.5 * first
    assert "loss_instance" not in _tiny_model()(batch)  # off by default (the first trunk's recipe)


def test_instance_logits_cover_every_masked_thing_in_order():
    model = _tiny_model(instance_weight=1.0)
    batch = _toy_batch()
    feats, _, _ = model._run(batch.images, batch.image_sizes)
    logits, labels = model.instance_logits(feats, batch)
    assert logits.shape == (4, 2) and labels.tolist() == [0, 1, 0, 1]  # square (id 1), disc (id 2) per image
    assert torch.isclose(model.instance_loss(feats, batch), torch.nn.functional.cross_entropy(logits, labels))
    for t in batch.targets:
        t.has_mask[:] = False
    none, empty = model.instance_logits(feats, batch)
    assert none is None and empty.numel() == 0 and model.instance_loss(feats, batch).item() == 0.0
