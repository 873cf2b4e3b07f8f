import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from omniseg.data.dataset import RecordDataset, SynthImages, synth_dataset
from omniseg.data.errors import BadRecordError
from omniseg.data.records import ImageRecord, Instance, RecordSet, Segment
from omniseg.data.transforms import Compose, RandomHFlip
from omniseg.ops.rle import rle_encode

H, W = 12, 16


def _mask(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def _image(index: int) -> np.ndarray:
    rng = np.random.default_rng(index)
    return rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)


def _mixed_recordset() -> RecordSet:
    full = Instance("cat", 3, (2.0, 1.0, 6.0, 5.0), mask=rle_encode(_mask(1, 5, 2, 6)), source="coco")
    box_only = Instance("dog", 7, (8.0, 2.0, 15.0, 11.0), source="lvis")
    alp = Instance("a small red kite", None, (1.5, 6.0, 9.0, 11.5), box_quality="approximate", source="narrative")
    mask_only = Instance("grass", 9, None, mask=rle_encode(_mask(10, 12, 0, 16)))
    crowd = Instance("people", 1, (0.0, 0.0, 4.0, 4.0), is_crowd=True)
    recs = [
        ImageRecord(1, "a.png", W, H, instances=[full, box_only, alp, mask_only, crowd], captions=["a cat"]),
        ImageRecord("img-2", "b.png", W, H, captions=["only a caption", "another"]),
    ]
    return RecordSet(recs, name="mixed")


def test_flags_for_mixed_supervision():
    ds = RecordDataset(_mixed_recordset(), load_image=_image)
    s = ds[0]
    t = s.targets
    assert s.image.shape == (3, H, W) and s.image.dtype == torch.uint8
    assert torch.equal(s.image, torch.from_numpy(_image(0)).permute(2, 0, 1))
    assert t.texts == ["cat", "dog", "a small red kite", "grass", "people"]
    assert t.has_box.tolist() == [True, True, True, False, True]
    assert t.box_exact.tolist() == [True, True, False, False, True]
    assert t.has_mask.tolist() == [True, False, False, True, False]
    assert t.is_crowd.tolist() == [False, False, False, False, True]
    assert t.is_thing.tolist() == [True] * 5
    assert t.category_ids.tolist() == [3, 7, -1, 9, 1]
    assert t.boxes.tolist() == [[2, 1, 6, 5], [8, 2, 15, 11], [1.5, 6, 9, 11.5], [0, 0, 0, 0], [0, 0, 4, 4]]
    assert t.boxes.dtype == torch.float32 and not torch.isnan(t.boxes).any()
    assert t.masks.shape == (5, H, W) and t.masks.dtype == torch.uint8
    assert torch.equal(t.masks[0], torch.from_numpy(_mask(1, 5, 2, 6)))
    assert torch.equal(t.masks[3], torch.from_numpy(_mask(10, 12, 0, 16)))
    assert int(t.masks[[1, 2, 4]].sum()) == 0  # no fabricated masks
    assert s.captions == ["a cat"] and s.image_id == 1 and s.record is ds.rs.records[0]
    assert s.orig_size == (H, W) and s.num_dropped == 0 and s.source == "mixed"


def test_caption_only_image_has_empty_targets():
    s = RecordDataset(_mixed_recordset(), load_image=_image)[1]
    assert len(s.targets) == 0
    assert s.targets.boxes.shape == (0, 4) and s.targets.masks.shape == (0, H, W)
    assert s.targets.category_ids.dtype == torch.long and s.targets.texts == []
    assert s.captions == ["only a caption", "another"] and s.image_id == "img-2"


def test_include_stuff_adds_mask_only_non_things():
    rs = _mixed_recordset()
    rs.records[1].segments = [
        Segment("sky", 20, rle_encode(_mask(0, 3, 0, 16))),
        Segment("cat", 3, rle_encode(_mask(4, 6, 4, 6)), is_thing=True),
    ]
    plain = RecordDataset(rs, load_image=_image)[1]
    assert len(plain.targets) == 0
    t = RecordDataset(rs, load_image=_image, include_stuff=True)[1].targets
    assert t.texts == ["sky"] and t.is_thing.tolist() == [False]
    assert t.has_mask.tolist() == [True] and t.has_box.tolist() == [False]
    assert torch.equal(t.masks[0], torch.from_numpy(_mask(0, 3, 0, 16)))


def test_loads_image_files(tmp_path):
    arr = _image(5)
    Image.fromarray(arr).save(tmp_path / "a.png")
    rs = RecordSet([ImageRecord(1, "a.png", W, H)], image_root=str(tmp_path))
    s = RecordDataset(rs)[0]
    assert torch.equal(s.image, torch.from_numpy(arr).permute(2, 0, 1))


def test_image_size_mismatch_names_file_and_record(tmp_path):
    Image.fromarray(_image(0)).save(tmp_path / "a.png")
    rs = RecordSet([ImageRecord(42, "a.png", W + 1, H)], image_root=str(tmp_path))
    with pytest.raises(BadRecordError, match=r"a\.png.*image 42"):
        RecordDataset(rs)[0]


def test_size_mismatch_in_the_test_loader_names_both_sizes(tmp_path):
    """Evaluation reads images through the test loader: a wrong declared size is an error there too."""
    from omniseg.data.loader import build_test_loader

    Image.fromarray(_image(0)).save(tmp_path / "a.png")
    rs = RecordSet([ImageRecord(42, "a.png", W, H + 4)], image_root=str(tmp_path))
    with pytest.raises(BadRecordError, match=rf"a\.png: image 42: the image is {W}x{H} .* declare {W}x{H + 4}"):
        next(iter(build_test_loader(rs)))


def test_image_outside_the_root_is_never_opened(tmp_path):
    (tmp_path / "images").mkdir()
    Image.fromarray(_image(0)).save(tmp_path / "secret.png")
    rs = RecordSet([ImageRecord(1, "../secret.png", W, H)], image_root=str(tmp_path / "images"))
    with pytest.raises(BadRecordError, match=r"image 1: file_name '\.\./secret\.png' resolves outside"):
        RecordDataset(rs)[0]


def test_bad_instances_raise_or_are_counted():
    bad_box = Instance("x", 1, (float("nan"), 0.0, 3.0, 3.0))
    flipped = Instance("y", 1, (5.0, 0.0, 3.0, 3.0))
    wrong_mask = Instance("z", 1, None, mask=rle_encode(np.ones((H + 1, W), np.uint8)))
    good = Instance("ok", 2, (0.0, 0.0, 1.0, 1.0))
    rs = RecordSet([ImageRecord(9, "f.png", W, H, instances=[bad_box, good, flipped, wrong_mask])], name="r")
    with pytest.raises(BadRecordError, match=r"image 9 instance 0 \('x'\)"):
        RecordDataset(rs, load_image=_image)[0]
    ds = RecordDataset(rs, load_image=_image, on_bad_record="skip")
    t = ds[0].targets
    assert t.texts == ["ok"]
    assert ds.bad.total == 3


def test_keys_and_determinism():
    rs = _mixed_recordset()
    ds = RecordDataset(rs, transforms=Compose([RandomHFlip(0.5)]), load_image=_image, seed=3)
    flips = set()
    for aug_seed in range(12):
        a, b = ds[(0, aug_seed)], ds[(0, aug_seed)]
        assert torch.equal(a.image, b.image) and torch.equal(a.targets.boxes, b.targets.boxes)
        flips.add(bool(torch.equal(a.image, ds.raw_sample(0).image)))
    assert flips == {True, False}  # both outcomes occur over seeds
    assert torch.equal(ds[0].image, ds[0].image)
    with pytest.raises(IndexError):
        ds[2]


def test_synthetic_world_on_the_fly():
    from omniseg.data.synth.world import SynthConfig, generate_image

    cfg = SynthConfig(seed=3, num_images=3, image_size=32, max_objects=3, min_scale=6.0, max_scale=20.0)
    ds = synth_dataset(cfg, include_stuff=True, progress=False)
    assert len(ds) == 3 and ds.name == "synth"
    for i in range(3):
        arr, rec = generate_image(cfg, i)
        s = ds[i]
        assert torch.equal(s.image, torch.from_numpy(arr).permute(2, 0, 1))
        things = [k for k, th in enumerate(s.targets.is_thing.tolist()) if th]
        assert [s.targets.texts[k] for k in things] == [inst.text for inst in rec.instances]
        assert bool(s.targets.has_mask.all())  # synthetic things and stuff all carry masks
        assert int((~s.targets.is_thing).sum()) == sum(not seg.is_thing for seg in rec.segments)
    assert pickle.loads(pickle.dumps(SynthImages(cfg)))(1).shape == (32, 32, 3)  # usable in workers


def test_unreadable_image_file_names_the_file(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not an image")
    rs = RecordSet([ImageRecord(1, "bad.png", W, H)], image_root=str(tmp_path))
    with pytest.raises(OSError, match=r"bad\.png"):
        RecordDataset(rs)[0]


def test_synth_images_cache_returns_the_generated_images_and_respects_its_cap():
    from omniseg.data.synth.world import SynthConfig, generate_image

    cfg = SynthConfig(seed=4, num_images=4, image_size=32, max_objects=3, min_scale=6.0, max_scale=20.0)
    images = SynthImages(cfg, cache_bytes=2 * 32 * 32 * 3)  # room for two images
    first = [images(i) for i in range(4)]
    assert sorted(images._cache) == [0, 1] and images._bytes == 2 * 32 * 32 * 3
    for i in range(4):
        again = images(i)
        assert np.array_equal(again, generate_image(cfg, i)[0]) and np.array_equal(again, first[i])
    again[:] = 0  # a caller writing into its image does not reach the cache
    assert np.array_equal(images(1), generate_image(cfg, 1)[0])
    copy = pickle.loads(pickle.dumps(images))
    assert copy._cache == {} and copy.cache_bytes == images.cache_bytes and copy.cfg == cfg
    assert SynthImages(cfg, cache_bytes=0)(2) is not None and SynthImages(cfg, cache_bytes=0)._cache == {}


def test_parts_dataset_routes_every_key_to_its_part():
    from omniseg.data.dataset import PartsDataset
    from omniseg.data.synth.world import SynthConfig

    a = synth_dataset(SynthConfig(seed=1, num_images=2, image_size=32), name="a", progress=False)
    b = synth_dataset(SynthConfig(seed=2, num_images=3, image_size=32), name="b", progress=False)
    ds = PartsDataset({"a": a, "b": b}, name="both")
    assert len(ds) == 5 and [r.image_id for r in ds.rs] == [r.image_id for r in a.rs] + [r.image_id for r in b.rs]
    expected = [(a, 0), (a, 1), (b, 0), (b, 1), (b, 2)]  # the obvious reference: parts laid end to end
    for k, (part, local) in enumerate(expected):
        got, want = ds[k], part[local]
        assert got.source == want.source and torch.equal(got.image, want.image)
    with pytest.raises(IndexError, match=r"both training data: index 5 out of range \[0, 5\)"):
        ds[5]
