"""The real coco-mini files (80 COCO train2017 images): read, convert, write back pixel-exact."""

from __future__ import annotations

import json

import numpy as np
from pycocotools.coco import COCO

from omniseg.data.formats.captions import read_coco_captions, write_coco_captions
from omniseg.data.formats.coco import read_coco_instances, write_coco_instances
from omniseg.data.images import image_size
from omniseg.ops.rle import rle_decode


def test_instances_round_trip_pixel_exact(coco_mini, tmp_path):
    src = coco_mini / "annotations" / "instances_train2017.json"
    raw = json.loads(src.read_text())
    rs = read_coco_instances(src, image_root=str(coco_mini / "train2017"))
    assert len(rs) == len(raw["images"]) == 80
    assert sum(len(r.instances) for r in rs) == len(raw["annotations"]) == 739
    assert len(rs.categories) == 80
    n_crowd = sum(a["iscrowd"] for a in raw["annotations"])
    assert sum(i.is_crowd for r in rs for i in r.instances) == n_crowd > 0

    out = tmp_path / "instances.json"
    write_coco_instances(out, rs)
    written = json.loads(out.read_text())
    assert all(isinstance(a["segmentation"]["counts"], str) for a in written["annotations"])

    # reference: pycocotools decodes the original (polygons / uncompressed RLE) and our output
    orig, ours = COCO(str(src)), COCO(str(out))
    assert set(orig.anns) == set(ours.anns)
    ours_inst = {i.id: i for r in rs for i in r.instances}
    for aid, a in orig.anns.items():
        m_ref = orig.annToMask(a)
        np.testing.assert_array_equal(m_ref, ours.annToMask(ours.anns[aid]), err_msg=f"annotation {aid}")
        np.testing.assert_array_equal(m_ref, rle_decode(ours_inst[aid].mask), err_msg=f"annotation {aid}")
        b = ours.anns[aid]
        assert (b["image_id"], b["category_id"], b["iscrowd"]) == (
            a["image_id"],
            a["category_id"],
            a["iscrowd"],
        )
        np.testing.assert_allclose(b["bbox"], a["bbox"], atol=1e-6)

    back = read_coco_instances(out)
    for r0, r1 in zip(rs, back):
        assert (r0.image_id, r0.file_name, r0.width, r0.height) == (
            r1.image_id,
            r1.file_name,
            r1.width,
            r1.height,
        )
        assert [i.mask for i in r0.instances] == [i.mask for i in r1.instances]


def test_image_sizes_match_files(coco_mini):
    rs = read_coco_instances(
        coco_mini / "annotations" / "instances_train2017.json", image_root=str(coco_mini / "train2017")
    )
    for r in rs:
        assert image_size(rs.image_path(r)) == (r.width, r.height), r.file_name


def test_captions_round_trip(coco_mini, tmp_path):
    src = coco_mini / "annotations" / "captions_train2017.json"
    raw = json.loads(src.read_text())
    rs = read_coco_captions(src)
    assert len(rs) == 80 and sum(len(r.captions) for r in rs) == len(raw["annotations"])
    ref: dict = {}
    for a in raw["annotations"]:
        ref.setdefault(a["image_id"], []).append(a["caption"])
    assert {r.image_id: r.captions for r in rs} == ref
    write_coco_captions(tmp_path / "cap.json", rs)
    back = read_coco_captions(tmp_path / "cap.json")
    assert [(r.image_id, r.captions) for r in back] == [(r.image_id, r.captions) for r in rs]

    inst = read_coco_instances(coco_mini / "annotations" / "instances_train2017.json")
    read_coco_captions(src, into=inst)
    assert {r.image_id: r.captions for r in inst} == ref


def test_bare_json_finds_train2017(coco_mini):
    """The COCO layout needs no image root: annotations/instances_train2017.json -> train2017/."""
    from omniseg.data.load import load_dataset

    rs = load_dataset(coco_mini / "annotations" / "instances_train2017.json", require_images=True)
    assert rs.image_root == str(coco_mini / "train2017") and len(rs) == 80
