"""Open Images CSV reader/writer: fixtures written by hand in the public format."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from omniseg.data.errors import BadRecordError, BadRecords
from omniseg.data.formats.openimages import (
    BOX_COLUMNS,
    label_names_from_classes,
    read_openimages,
    read_openimages_classes,
    write_openimages_boxes,
    write_openimages_classes,
)
from omniseg.data.formats.validation import NotRegularFileError
from omniseg.ops.rle import rle_decode

HEADER = ",".join(BOX_COLUMNS)
CLASSES = "/m/011k07,Tortoise\n/m/01bjv,Bus\n/m/0k4j,Car\n"
BOXES = [
    "000a1249af2bc5f0,xclick,/m/01bjv,1,0.1,0.5,0.25,1.0,0,1,0,0,0",
    "000a1249af2bc5f0,xclick,/m/0k4j,1,0.0,1.0,0.0,0.5,1,0,1,0,0",
    "0b6f22bf3b586889,activemil,/m/011k07,1,0.25,0.75,0.5,0.75,0,0,0,0,0",
]
LABELS = [
    "000a1249af2bc5f0,verification,/m/01bjv,1",
    "000a1249af2bc5f0,verification,/m/011k07,0",
    "000a1249af2bc5f0,machine,/m/0k4j,0.7",
    "1111111111111111,verification,/m/0k4j,1",
]


def _write(tmp: Path, boxes=BOXES, classes=CLASSES, images=True) -> dict[str, Path]:
    root = tmp / "images"
    root.mkdir(parents=True, exist_ok=True)
    if images:
        Image.new("RGB", (10, 8)).save(root / "000a1249af2bc5f0.jpg")
        exif = Image.Exif()
        exif[0x0112] = 6  # stored 8 x 4, displayed rotated: 4 wide x 8 high
        Image.new("RGB", (8, 4)).save(root / "0b6f22bf3b586889.jpg", exif=exif)
        Image.new("RGB", (2, 2)).save(root / "1111111111111111.jpg")
    paths = {
        "boxes": tmp / "boxes.csv",
        "classes": tmp / "classes.csv",
        "labels": tmp / "labels.csv",
        "root": root,
    }
    paths["boxes"].write_text("\n".join([HEADER, *boxes]) + "\n")
    paths["classes"].write_text(classes)
    paths["labels"].write_text("\n".join(["ImageID,Source,LabelName,Confidence", *LABELS]) + "\n")
    return paths


def test_classes_with_and_without_header(tmp_path):
    (tmp_path / "a.csv").write_text(CLASSES)
    (tmp_path / "b.csv").write_text("LabelName,DisplayName\n" + CLASSES)
    expected = [("/m/011k07", "Tortoise"), ("/m/01bjv", "Bus"), ("/m/0k4j", "Car")]
    assert (
        read_openimages_classes(tmp_path / "a.csv") == read_openimages_classes(tmp_path / "b.csv") == expected
    )
    (tmp_path / "c.csv").write_text(CLASSES + "/m/01bjv,Bus again\n")
    with pytest.raises(ValueError, match="line 4: LabelName /m/01bjv already on line 2"):
        read_openimages_classes(tmp_path / "c.csv")


def test_read_boxes_and_labels(tmp_path):
    p = _write(tmp_path)
    rs = read_openimages(p["boxes"], p["classes"], str(p["root"]), labels_csv=p["labels"], progress=False)
    assert [(c.id, c.name) for c in rs.categories] == [(1, "Tortoise"), (2, "Bus"), (3, "Car")]
    a, b, c = rs.records
    assert (a.image_id, a.file_name, a.width, a.height) == ("000a1249af2bc5f0", "000a1249af2bc5f0.jpg", 10, 8)
    assert (b.width, b.height) == (4, 8)  # EXIF orientation 6 swaps width and height
    # hand-worked: x * 10, y * 8
    assert [(i.text, i.category_id, i.box, i.is_crowd) for i in a.instances] == [
        ("Bus", 2, (1.0, 2.0, 5.0, 8.0), False),
        ("Car", 3, (0.0, 0.0, 10.0, 4.0), True),
    ]
    assert b.instances[0].box == (1.0, 4.0, 3.0, 6.0) and b.instances[0].source == "openimages"
    assert all(i.mask is None and i.box_quality == "exact" for r in rs for i in r.instances)
    assert a.labels == ["Bus"] and a.neg_category_ids == [1]  # the 0.7 machine label is ignored
    assert c.image_id == "1111111111111111" and c.labels == ["Car"] and c.instances == []


def _slow_nearest_upscale2(m: np.ndarray) -> np.ndarray:
    out = np.zeros((m.shape[0] * 2, m.shape[1] * 2), m.dtype)
    for y in range(out.shape[0]):
        for x in range(out.shape[1]):
            out[y, x] = m[y // 2, x // 2]
    return out


def test_masks_resized_and_matched(tmp_path):
    p = _write(tmp_path)
    mask_dir = tmp_path / "masks"
    mask_dir.mkdir()
    small = np.zeros((4, 5), np.uint8)  # half of the 10 x 8 image
    small[1:4, 0:3] = 255
    Image.fromarray(small).convert("1").save(mask_dir / "000a1249af2bc5f0_m01bjv_aaaa.png")
    other = np.zeros((4, 2), np.uint8)
    other[0, 0] = 1
    Image.fromarray(other).save(mask_dir / "0b6f22bf3b586889_m0k4j_bbbb.png")
    masks = tmp_path / "masks.csv"
    masks.write_text(
        "MaskPath,ImageID,LabelName,BoxID,BoxXMin,BoxXMax,BoxYMin,BoxYMax,PredictedIoU,Clicks\n"
        "000a1249af2bc5f0_m01bjv_aaaa.png,000a1249af2bc5f0,/m/01bjv,aaaa,0.1,0.5,0.25,1.0,0.8,0.1 0.2 1\n"
        "0b6f22bf3b586889_m0k4j_bbbb.png,0b6f22bf3b586889,/m/0k4j,bbbb,0.0,0.25,0.0,0.125,0.7,\n"
    )
    rs = read_openimages(
        p["boxes"], p["classes"], str(p["root"]), masks_csv=masks, mask_dir=mask_dir, progress=False
    )
    a, b = rs.records
    assert len(a.instances) == 2  # attached to the matching Bus box, not a new instance
    bus = a.instances[0]
    assert np.array_equal(rle_decode(bus.mask), _slow_nearest_upscale2((small > 0).astype(np.uint8)))
    assert a.instances[1].mask is None
    assert len(b.instances) == 2 and b.instances[1].text == "Car"  # no Car box there: a new instance
    assert b.instances[1].box == (0.0, 0.0, 1.0, 1.0)
    assert np.array_equal(rle_decode(b.instances[1].mask), _slow_nearest_upscale2(other))
    with pytest.raises(ValueError, match="needs mask_dir"):
        read_openimages(p["boxes"], p["classes"], str(p["root"]), masks_csv=masks, progress=False)
    (mask_dir / "0b6f22bf3b586889_m0k4j_bbbb.png").unlink()
    with pytest.raises(BadRecordError, match=r"masks.csv: line 3: mask PNG missing"):
        read_openimages(
            p["boxes"], p["classes"], str(p["root"]), masks_csv=masks, mask_dir=mask_dir, progress=False
        )


def test_round_trip_with_sizes(tmp_path):
    p = _write(tmp_path, images=False)
    sizes = {"000a1249af2bc5f0": (640, 480), "0b6f22bf3b586889": (333, 500)}
    rs = read_openimages(p["boxes"], p["classes"], "", sizes=sizes, progress=False)
    out = tmp_path / "out"
    assert write_openimages_boxes(out / "boxes.csv", rs, label_names_from_classes(p["classes"])) == 3
    write_openimages_classes(out / "classes.csv", rs, label_names_from_classes(p["classes"]))
    assert (out / "classes.csv").read_text() == CLASSES
    back = read_openimages(out / "boxes.csv", out / "classes.csv", "", sizes=sizes, progress=False)
    assert back.categories == rs.categories
    for ra, rb in zip(rs, back):
        assert ra.image_id == rb.image_id and len(ra.instances) == len(rb.instances)
        for ia, ib in zip(ra.instances, rb.instances):
            assert (ia.text, ia.category_id, ia.is_crowd) == (ib.text, ib.category_id, ib.is_crowd)
            assert ib.box == pytest.approx(ia.box, abs=1e-9)
    # default stand-in label names round-trip too (datasets without MIDs)
    write_openimages_classes(out / "c2.csv", rs)
    write_openimages_boxes(out / "b2.csv", rs)
    again = read_openimages(out / "b2.csv", out / "c2.csv", "", sizes=sizes, progress=False)
    flat = [c for r in rs for i in r.instances for c in i.box]
    assert [c for r in again for i in r.instances for c in i.box] == pytest.approx(flat, abs=1e-9)
    assert len(flat) == 12
    assert not list(out.glob(".*.tmp"))


BAD = {
    "fields": ("000a1249af2bc5f0,xclick,/m/01bjv,1,0.1,0.5", "expected 13 fields, got 6"),
    "label": ("000a1249af2bc5f0,xclick,/m/zzz,1,0.1,0.5,0.25,1.0,0,0,0,0,0", "unknown LabelName '/m/zzz'"),
    "order": ("000a1249af2bc5f0,xclick,/m/01bjv,1,0.6,0.5,0.25,1.0,0,0,0,0,0", "XMin 0.6 > XMax 0.5"),
    "nan": ("000a1249af2bc5f0,xclick,/m/01bjv,1,nan,0.5,0.25,1.0,0,0,0,0,0", "XMin is not finite"),
    "text": ("000a1249af2bc5f0,xclick,/m/01bjv,1,0.1,x,0.25,1.0,0,0,0,0,0", "XMax is not a number"),
    "range": ("000a1249af2bc5f0,xclick,/m/01bjv,1,0.1,0.5,0.25,1.5,0,0,0,0,0", "outside [0, 1]"),
    "noid": (",xclick,/m/01bjv,1,0.1,0.5,0.25,1.0,0,0,0,0,0", "empty ImageID"),
    "noimage": ("ffffffffffffffff,xclick,/m/01bjv,1,0.1,0.5,0.25,1.0,0,0,0,0,0", "no size for the image"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_rows(tmp_path, case):
    line, reason = BAD[case]
    p = _write(tmp_path, boxes=[BOXES[0], line, BOXES[2]])
    with pytest.raises(BadRecordError) as e:
        read_openimages(p["boxes"], p["classes"], str(p["root"]), progress=False)
    assert str(p["boxes"]) in str(e.value) and "line 3" in str(e.value) and reason in str(e.value)
    bad = BadRecords("skip")
    rs = read_openimages(p["boxes"], p["classes"], str(p["root"]), on_bad=bad, progress=False)
    assert bad.total == 1 and sum(len(r.instances) for r in rs) == 2


def test_empty_and_bad_header(tmp_path):
    p = _write(tmp_path, boxes=[])
    rs = read_openimages(p["boxes"], p["classes"], str(p["root"]), progress=False)
    assert len(rs) == 0 and len(rs.categories) == 3
    p["boxes"].write_text("ImageID,LabelName\n")
    with pytest.raises(ValueError, match="header lacks column"):
        read_openimages(p["boxes"], p["classes"], str(p["root"]), progress=False)


def test_image_ids_and_mask_paths_stay_inside_their_folders(tmp_path):
    escape = "../../../../etc/passwd,xclick,/m/01bjv,1,0.1,0.5,0.25,1.0,0,0,0,0,0"
    p = _write(tmp_path, boxes=[BOXES[0], escape])
    with pytest.raises(BadRecordError, match=r"boxes\.csv: line 3 \(image \.\./\.\./\.\./\.\./etc/passwd\): "
                                             r"ImageID file name .* resolves outside"):
        read_openimages(p["boxes"], p["classes"], str(p["root"]), progress=False)
    masks = tmp_path / "masks.csv"
    masks.write_text("MaskPath,ImageID,LabelName,BoxID,BoxXMin,BoxXMax,BoxYMin,BoxYMax\n"
                     "../boxes.csv,000a1249af2bc5f0,/m/01bjv,x,0.1,0.5,0.25,1.0\n")
    (tmp_path / "masks").mkdir()
    bad = BadRecords("skip")
    rs = read_openimages(p["boxes"], p["classes"], str(p["root"]), masks_csv=masks, mask_dir=tmp_path / "masks",
                         on_bad=bad, progress=False)
    assert bad.total == 2 and len(rs) == 1
    assert any("MaskPath '../boxes.csv' resolves outside" in e for e in bad.examples)


def test_unreadable_csv_and_fifo(tmp_path, no_hang):
    p = _write(tmp_path)
    p["classes"].write_bytes(b"/m/011k07,Tort\xffoise\n")
    with pytest.raises(BadRecordError, match=r"classes\.csv: file: not UTF-8 text: invalid start byte"):
        read_openimages_classes(p["classes"])
    p["boxes"].unlink()
    os.mkfifo(p["boxes"])
    p["classes"].write_text(CLASSES)
    with no_hang(5), pytest.raises(NotRegularFileError, match=r"boxes\.csv: not a regular file \(a FIFO\)"):
        read_openimages(p["boxes"], p["classes"], str(p["root"]), progress=False)
