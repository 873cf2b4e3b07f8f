"""The data section shared by recipes: image roots, photo resize / LSJ, split files (omniseg.recipes.data)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from omniseg.data.dataset import RecordDataset
from omniseg.data.load import MissingImagesError
from omniseg.data.transforms import Compose, LargeScaleJitter, QuantizeApproxBoxes, RandomHFlip
from omniseg.engine.config import ConfigError, load_config
from omniseg.recipes.data import DataConfig, named_split, open_source, open_val, train_dataset, training_view
from omniseg.recipes.maskx_rcnn import MaskXExperiment

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """annotations/instances.json over two photos in pics/: 60 x 40 (w x h) and 30 x 50, one class each
    ("apple" with a mask and a box, "pear" box only)."""
    (tmp_path / "pics").mkdir()
    rng = np.random.default_rng(0)
    for name, (w, h) in {"a.png": (60, 40), "b.png": (30, 50)}.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / "pics" / name)
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "width": 60, "height": 40},
                   {"id": 2, "file_name": "b.png", "width": 30, "height": 50}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 10], "area": 200, "iscrowd": 0,
             "segmentation": [[10, 10, 30, 10, 30, 20, 10, 20]]},
            {"id": 2, "image_id": 2, "category_id": 2, "bbox": [0, 0, 10, 20], "area": 200, "iscrowd": 0,
             "segmentation": []},
        ],
        "categories": [{"id": 1, "name": "apple"}, {"id": 2, "name": "pear"}],
    }
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances.json").write_text(json.dumps(coco))
    return tmp_path


def cfg_for(photos: Path, **kw) -> DataConfig:
    return DataConfig(train=str(photos / "annotations" / "instances.json"), train_images=str(photos / "pics"),
                      flip=False, **kw)


def test_train_images_is_the_image_root(photos):
    ds = train_dataset(cfg_for(photos), progress=False)
    assert ds.rs.image_root == str(photos / "pics")
    assert tuple(ds[0].image.shape) == (3, 40, 60)  # stored size without long_side


def test_missing_images_name_the_key(photos):
    cfg = cfg_for(photos)
    cfg.train_images = ""  # not next to annotations/instances.json
    ann = photos / "annotations"
    with pytest.raises(MissingImagesError) as e:
        train_dataset(cfg, progress=False)
    assert str(e.value) == (f"{ann / 'instances.json'}: image 'a.png' (image id 1) (and 1 more of 2) is not in "
                            f"{ann}, {ann / 'images'}; set data.train_images=FOLDER to the folder that holds them")
    cfg.val, cfg.val_images = cfg.train, str(photos / "nowhere")
    with pytest.raises(MissingImagesError, match=r"is not in .*nowhere; set data\.val_images=FOLDER"):
        open_val(cfg, progress=False)
    cfg.val_images = str(photos / "pics")
    assert open_val(cfg, progress=False)[0].image_root == str(photos / "pics")


def test_long_side_resizes_photos(photos):
    ds = train_dataset(cfg_for(photos, long_side=30), progress=False)
    a, b = ds[0], ds[1]
    assert tuple(a.image.shape) == (3, 20, 30) and tuple(b.image.shape) == (3, 30, 18)  # 50x30 -> 30x18
    assert a.targets.boxes[0].tolist() == [5.0, 5.0, 15.0, 10.0]  # [10, 10, 30, 20] halved
    assert tuple(a.targets.masks.shape) == (1, 20, 30) and int(a.targets.masks.sum()) == 50  # 20 x 10 halved
    assert a.orig_size == (40, 60)


def test_lsj_scale_range_and_output_size_for_photos(photos):
    # scale_range [1, 1]: every photo rescaled to exactly long_side on its longer side (nothing to crop)
    ds = train_dataset(cfg_for(photos, long_side=24, lsj=True, scale_range=(1.0, 1.0)), progress=False)
    assert [tuple(ds[i].image.shape[1:]) for i in range(2)] == [(16, 24), (24, 14)]
    # without long_side LSJ crops to image_size (as before); a factor of 2 then crops the 120 x 80 result
    ds = train_dataset(cfg_for(photos, image_size=32, lsj=True, scale_range=(2.0, 2.0)), progress=False)
    assert tuple(ds[0].image.shape[1:]) == (32, 32)


def test_scale_range_must_be_ordered():
    with pytest.raises(ConfigError, match=r"data\.scale_range: the minimum 2\.0 exceeds the maximum 0\.5"):
        load_config(MaskXExperiment, CONFIGS / "maskx_smoke.yaml", ["data.scale_range=2,0.5"])
    cfg = load_config(MaskXExperiment, CONFIGS / "maskx_smoke.yaml", ["data.scale_range=[0.5,1.5]", "data.long_side=64"])
    assert cfg.data.scale_range == (0.5, 1.5) and cfg.data.long_side == 64


@pytest.mark.parametrize("lsj", [False, True])
def test_synthetic_images_unchanged(lsj):
    """The synthetic world's samples are bit-identical to the transforms used before long_side /
    scale_range existed (LSJ at image_size with scales 0.1..2.0, flip, box quantization); long_side
    does not apply to generated images."""
    cfg = DataConfig(train_num_images=3, image_size=64, lsj=lsj, long_side=40)
    ds = train_dataset(cfg, progress=False)
    old = Compose(([LargeScaleJitter(64)] if lsj else []) + [RandomHFlip(), QuantizeApproxBoxes()])
    ref = RecordDataset(ds.rs, transforms=old, load_image=ds.load_image, seed=cfg.train_seed)
    for i in range(3):
        got, want = ds[(i, 7 + i)], ref[(i, 7 + i)]
        assert torch.equal(got.image, want.image)
        assert torch.equal(got.targets.boxes, want.targets.boxes)
        assert torch.equal(got.targets.masks, want.targets.masks)
    if not lsj:
        assert tuple(ds[0].image.shape[1:]) == (64, 64)


def test_split_file_wins_over_split(photos):
    cfg = cfg_for(photos, split="voc-like")
    rs, _ = open_source(cfg.train, 1, 0, 256, False, cfg.train_images)
    with pytest.raises(ValueError, match="split 'voc-like' is defined for the COCO class names"):
        named_split(cfg, rs.categories)  # no silent random split on these names
    (photos / "split.json").write_text(json.dumps({"base": ["pear"]}))
    cfg.split_file = str(photos / "split.json")
    split = named_split(cfg, rs.categories)
    assert (split.base_ids, split.novel_ids) == ((2,), (1,))
    seen = training_view(rs, cfg)
    assert [(i.text, i.mask is None, i.box is not None) for r in seen for i in r.instances] == [
        ("apple", True, True), ("pear", True, True)]  # apple: novel, box only; pear had no mask
