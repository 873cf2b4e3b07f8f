from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from omniseg.data.formats.captions import read_coco_captions
from omniseg.data.formats.coco import read_coco_instances
from omniseg.data.formats.narratives import attach_narratives
from omniseg.data.formats.panoptic import read_coco_panoptic
from omniseg.data.synth import lexicon
from omniseg.data.synth.generate import generate_dataset, generate_records, png_bytes
from omniseg.data.synth.world import SynthConfig, generate_image
from omniseg.ops.rle import rle_decode

CFG = SynthConfig(seed=11, num_images=4, image_size=64, min_scale=6, max_scale=40, max_objects=4)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    rs = generate_dataset(CFG, out, workers=1, progress=False)
    return out, rs


def test_files_and_images(dataset):
    out, rs = dataset
    for name in ("instances.json", "captions.json", "narratives.jsonl", "panoptic.json", "synth_config.json"):
        assert (out / name).is_file()
    assert len(rs) == 4 and rs.image_root == str(out / "images")
    assert [c.name for c in rs.categories] == [c.name for c in lexicon.categories()]
    for i, rec in enumerate(rs.records):
        img, want = generate_image(CFG, i)
        assert rec == want
        on_disk = np.asarray(Image.open(rs.image_path(rec)).convert("RGB"))
        np.testing.assert_array_equal(on_disk, img)
        assert (out / "panoptic" / rec.file_name).is_file()
    cfg = json.loads((out / "synth_config.json").read_text())
    assert cfg["config"]["seed"] == 11 and cfg["images_written"] == 4


def test_read_back_with_the_project_readers(dataset):
    out, rs = dataset
    back = read_coco_instances(out / "instances.json", image_root=str(out / "images"), progress=False)
    read_coco_captions(out / "captions.json", into=back, progress=False)
    assert attach_narratives(back, out / "narratives.jsonl", progress=False) == len(rs)
    assert [c.name for c in back.categories] == [c.name for c in rs.categories]
    for a, b in zip(rs.records, back.records):
        assert a.image_id == b.image_id and a.file_name == b.file_name
        assert [i.category_id for i in a.instances] == [i.category_id for i in b.instances]
        np.testing.assert_allclose([i.box for i in a.instances], [i.box for i in b.instances], atol=1e-6)
        for ia, ib in zip(a.instances, b.instances):
            np.testing.assert_array_equal(rle_decode(ia.mask), rle_decode(ib.mask))
        assert a.captions == b.captions
        assert a.narratives == b.narratives
    pan = read_coco_panoptic(out / "panoptic.json", out / "panoptic", progress=False)
    for a, b in zip(rs.records, pan.records):
        assert len(a.segments) == len(b.segments)
        got = {s.id: (s.category_id, rle_decode(s.mask).tobytes()) for s in b.segments}
        want = {s.id: (s.category_id, rle_decode(s.mask).tobytes()) for s in a.segments}
        assert got == want


def test_rerun_is_resumable(dataset, tmp_path):
    out, rs = dataset
    # a fresh copy so the module fixture stays intact
    cfg = SynthConfig(**{**CFG.__dict__, "num_images": 3})
    records, stats = generate_records(cfg, tmp_path, progress=False)
    assert (stats.written, stats.unchanged) == (3, 0)
    first = tmp_path / records[0].file_name
    mtime = os.stat(first).st_mtime_ns
    records2, stats2 = generate_records(cfg, tmp_path, progress=False)
    assert (stats2.written, stats2.unchanged) == (0, 3) and records2 == records
    assert os.stat(first).st_mtime_ns == mtime
    # a damaged file is regenerated
    (tmp_path / records[1].file_name).write_bytes(b"not a png")
    _, stats3 = generate_records(cfg, tmp_path, progress=False)
    assert (stats3.written, stats3.unchanged) == (1, 2)
    assert (tmp_path / records[1].file_name).read_bytes() == png_bytes(generate_image(cfg, 1)[0])


def test_workers_give_the_same_dataset(tmp_path):
    cfg = SynthConfig(**{**CFG.__dict__, "num_images": 3})
    one, _ = generate_records(cfg, tmp_path / "a", workers=1, progress=False)
    two, _ = generate_records(cfg, tmp_path / "b", workers=2, progress=False)
    assert one == two
    for r in one:
        assert (tmp_path / "a" / r.file_name).read_bytes() == (tmp_path / "b" / r.file_name).read_bytes()
    with pytest.raises(ValueError, match="workers"):
        generate_records(cfg, tmp_path / "c", workers=0, progress=False)
