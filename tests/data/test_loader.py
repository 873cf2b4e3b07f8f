import json

import numpy as np
import pytest
import torch

from omniseg.data.batch import Batch, Sample, Targets, collate, padded_size
from omniseg.data.dataset import RecordDataset
from omniseg.data.loader import Source, build_test_loader, build_train_loader
from omniseg.data.records import ImageRecord, Instance, RecordSet
from omniseg.data.transforms import build_train_transforms
from omniseg.ops.rle import rle_encode


def _sample(h: int, w: int, n: int, image_id: int) -> Sample:
    gen = torch.Generator().manual_seed(image_id)
    t = Targets(
        boxes=torch.rand(n, 4, generator=gen) * 5,
        masks=torch.randint(0, 2, (n, h, w), generator=gen, dtype=torch.uint8),
        has_box=torch.ones(n, dtype=torch.bool), box_exact=torch.ones(n, dtype=torch.bool),
        has_mask=torch.ones(n, dtype=torch.bool), is_crowd=torch.zeros(n, dtype=torch.bool),
        is_thing=torch.ones(n, dtype=torch.bool), category_ids=torch.arange(n), texts=["t"] * n,
    )
    img = torch.randint(1, 256, (3, h, w), generator=gen, dtype=torch.uint8)
    return Sample(image=img, targets=t, captions=[f"c{image_id}"], image_id=image_id, orig_size=(h, w))


def test_padded_size():
    assert padded_size([(30, 50), (40, 20)]) == (64, 64)
    assert padded_size([(32, 33)]) == (32, 64)
    assert padded_size([(5, 7)], 1) == (5, 7)


def test_collate_pads_top_left_with_zeros():
    a, b = _sample(30, 50, 2, 1), _sample(40, 20, 0, 2)
    batch = collate([a, b])
    assert isinstance(batch, Batch) and len(batch) == 2
    assert batch.images.shape == (2, 3, 64, 64) and batch.images.dtype == torch.uint8
    assert batch.image_sizes == [(30, 50), (40, 20)]
    for i, s in enumerate((a, b)):
        h, w = s.size
        assert torch.equal(batch.images[i, :, :h, :w], s.image)
        assert int(batch.images[i].sum()) == int(s.image.sum())  # padding is zero
    assert batch.targets[0].masks.shape == (2, 64, 64)
    assert torch.equal(batch.targets[0].masks[:, :30, :50], a.targets.masks)
    assert int(batch.targets[0].masks.sum()) == int(a.targets.masks.sum())
    assert batch.targets[1].masks.shape == (0, 64, 64)
    assert batch.captions == [["c1"], ["c2"]] and batch.image_ids == [1, 2]
    assert torch.equal(batch.targets[0].boxes, a.targets.boxes)
    fixed = collate([a], pad_size=(96, 70))
    assert fixed.images.shape == (1, 3, 96, 96)


def test_collate_errors_and_to():
    with pytest.raises(ValueError, match="empty"):
        collate([])
    bad = _sample(8, 8, 1, 3)
    bad = bad.replace(image=bad.image.float())
    with pytest.raises(ValueError, match="uint8"):
        collate([bad])
    batch = collate([_sample(8, 8, 1, 4)]).to("cpu")
    assert batch.images.device.type == "cpu" and batch.targets[0].masks.device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinning needs an accelerator")
def test_pin_memory_and_to_cuda():
    batch = collate([_sample(8, 8, 1, 4)]).pin_memory()
    assert batch.images.is_pinned() and batch.targets[0].masks.is_pinned()
    on = batch.to("cuda", non_blocking=True)
    assert on.targets[0].boxes.is_cuda and torch.equal(on.images.cpu(), batch.images)


H, W = 24, 40


def _image(index: int) -> np.ndarray:
    return np.full((H, W, 3), index % 256, np.uint8)


def _recordset(name: str, n: int, kind: str) -> RecordSet:
    m = np.zeros((H, W), np.uint8)
    m[4:12, 5:20] = 1
    recs = []
    for i in range(n):
        if kind == "mask":
            inst = [Instance("cat", 1, (5.0, 4.0, 20.0, 12.0), mask=rle_encode(m))]
        elif kind == "alp":
            inst = [Instance("a fluffy dog", None, (3.0, 2.0, 30.0, 20.0), box_quality="approximate")]
        else:
            inst = []
        recs.append(ImageRecord(f"{name}{i}", "", W, H, instances=inst, captions=[f"{name} caption {i}"]))
    return RecordSet(recs, name=name)


def _sources():
    return [Source(_recordset("mask", 6, "mask"), load_image=_image),
            Source(_recordset("alp", 8, "alp"), load_image=_image),
            Source(_recordset("cap", 5, "caption"), load_image=_image)]


def test_train_loader_yields_batches_with_flags():
    # scales <= 1: the resized image fits the 32 px output, nothing is cropped away
    tf = build_train_transforms(32, min_scale=0.5, max_scale=1.0)
    loader = build_train_loader(_sources(), "alternate", batch_size=2, transforms=tf, num_workers=0, seed=1)
    it = iter(loader)
    batches = [next(it) for _ in range(6)]
    assert [b.sources for b in batches] == [["mask"] * 2, ["alp"] * 2, ["cap"] * 2] * 2
    for b in batches:
        assert b.images.shape[0] == 2 and b.images.shape[2] % 32 == 0 and b.images.shape[3] % 32 == 0
        for (h, w), t in zip(b.image_sizes, b.targets):
            assert h <= 32 and w <= 32
            assert t.masks.shape[1:] == b.images.shape[2:]
    m, a, c = batches[0].targets[0], batches[1].targets[0], batches[2].targets[0]
    assert m.has_mask.tolist() == [True] and m.box_exact.tolist() == [True] and m.category_ids.tolist() == [1]
    assert a.has_mask.tolist() == [False] and a.has_box.tolist() == [True] and a.box_exact.tolist() == [False]
    assert a.category_ids.tolist() == [-1] and a.texts == ["a fluffy dog"]
    assert all(n == 0 for b in batches for n in b.num_dropped)
    assert len(c) == 0 and batches[2].captions[0][0].startswith("cap caption")


@pytest.mark.parametrize("num_workers", [0, 1])
def test_train_loader_resume_equality(num_workers):
    def make():
        return build_train_loader(_sources(), "mix", batch_size=3, transforms=build_train_transforms(32),
                                  num_workers=num_workers, seed=5)

    a = make()
    it = iter(a)
    for _ in range(3):
        next(it)
    state = json.loads(json.dumps(a.state_dict()))
    assert state["batch"] == 3  # despite the DataLoader prefetching ahead
    expected = [next(it) for _ in range(4)]
    b = make()
    b.load_state_dict(state)
    got = [b_ for _, b_ in zip(range(4), b)]
    for x, y in zip(expected, got):
        assert x.image_ids == y.image_ids and torch.equal(x.images, y.images)
        assert all(torch.equal(p.boxes, q.boxes) for p, q in zip(x.targets, y.targets))


def test_train_loader_reiteration_loses_nothing():
    loader = build_train_loader(_sources(), "alternate", batch_size=1, seed=0)
    first = [b.image_ids[0] for _, b in zip(range(3), loader)]
    second = [b.image_ids[0] for _, b in zip(range(3), loader)]
    ref = build_train_loader(_sources(), "alternate", batch_size=1, seed=0)
    assert first + second == [b.image_ids[0] for _, b in zip(range(6), ref)]


def test_switchable_loader_and_ready_datasets():
    det = Source(_recordset("det", 4, "mask"), phase="warmup", load_image=_image)
    pan = Source(RecordDataset(_recordset("pan", 4, "mask"), load_image=_image), phase="cooldown")
    cap = Source(_recordset("cap", 4, "caption"), phase="both", load_image=_image)
    loader = build_train_loader([det, pan, cap], "switchable", batch_size=2,
                                warmup_batches=2, cooldown_batches=2)
    got = [b.sources[0] for _, b in zip(range(8), loader)]
    assert got == ["det", "cap", "pan", "cap"] * 2


def test_test_loader_order_and_ranks():
    rs = _recordset("val", 5, "mask")
    ids = [i for b in build_test_loader(rs, batch_size=2, load_image=_image) for i in b.image_ids]
    assert ids == [f"val{i}" for i in range(5)]
    r0 = [i for b in build_test_loader(rs, 2, load_image=_image, rank=0, world_size=2) for i in b.image_ids]
    r1 = [i for b in build_test_loader(rs, 2, load_image=_image, rank=1, world_size=2) for i in b.image_ids]
    assert r0 == ["val0", "val2", "val4"] and r1 == ["val1", "val3"]
    b = next(iter(build_test_loader(rs, 2, load_image=_image)))
    assert b.images.shape == (2, 3, 32, 64) and b.image_sizes == [(H, W), (H, W)]
    assert b.orig_sizes == [(H, W), (H, W)] and b.targets[0].has_mask.tolist() == [True]


def test_a_loader_worker_gives_the_same_batches_as_the_main_process():
    """configs/maskx_voc_like.yaml draws images in one worker process (issue 11): the sampler and the
    augmentation seeds stay in the main process, so the batches are those of num_workers=0."""
    def batches(num_workers):
        loader = build_train_loader(_sources(), "mix", batch_size=3, transforms=build_train_transforms(32),
                                    num_workers=num_workers, seed=7)
        return [b for _, b in zip(range(5), loader)]

    for x, y in zip(batches(0), batches(1), strict=True):
        assert x.image_ids == y.image_ids and x.sources == y.sources and torch.equal(x.images, y.images)
        assert all(torch.equal(p.boxes, q.boxes) and torch.equal(p.masks, q.masks) for p, q in zip(x.targets, y.targets))
