"""read_image_folder: sorted deterministic records, sizes, non-image policy."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from omniseg.data.errors import BadRecordError, BadRecords
from omniseg.data.formats.coco import read_coco_instances, write_coco_instances
from omniseg.data.formats.folder import list_files, read_image_folder


def _img(path, w, h, orientation=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    kw = {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kw["exif"] = exif
    Image.fromarray(np.full((h, w, 3), 99, np.uint8)).save(path, **kw)


def ref_walk(root) -> list[str]:
    """Slow reference: every non-hidden file (no hidden folder on its path), relative, sorted."""
    out = []
    for dirpath, _, files in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        parts = [] if rel == "." else rel.split(os.sep)
        if any(p.startswith(".") for p in parts):
            continue
        out += ["/".join(parts + [f]) for f in files if not f.startswith(".")]
    return sorted(out)


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "imgs"
    _img(root / "b.png", 4, 3)
    _img(root / "a.jpg", 5, 2)
    _img(root / "sub" / "c.jpg", 6, 2, orientation=6)  # stored 6 x 2, upright 2 x 6
    _img(root / "sub" / "deeper" / "d.png", 1, 1)
    _img(root / ".hidden" / "e.png", 1, 1)
    (root / ".DS_Store").write_bytes(b"\0\1")
    return root


def test_sorted_sizes_ids(folder):
    rs = read_image_folder(folder)
    assert (
        [r.file_name for r in rs] == ["a.jpg", "b.png", "sub/c.jpg", "sub/deeper/d.png"] == ref_walk(folder)
    )
    assert [r.image_id for r in rs] == [1, 2, 3, 4]
    assert [(r.width, r.height) for r in rs] == [(5, 2), (4, 3), (2, 6), (1, 1)]
    assert rs.image_root == str(folder) and rs.image_path(rs.records[2]) == os.path.join(folder, "sub/c.jpg")
    assert all(not r.instances and not r.captions for r in rs)
    again = read_image_folder(folder)
    assert [(r.image_id, r.file_name) for r in again] == [(r.image_id, r.file_name) for r in rs]


def test_not_recursive(folder):
    rs = read_image_folder(folder, recursive=False)
    assert [r.file_name for r in rs] == ["a.jpg", "b.png"]
    assert list_files(folder, recursive=False) == ["a.jpg", "b.png"]


def test_non_images_policy(folder):
    (folder / "notes.txt").write_text("hello")
    with pytest.raises(BadRecordError, match="notes.txt") as e:
        read_image_folder(folder)
    assert str(folder) in str(e.value)
    bad = BadRecords("skip")
    rs = read_image_folder(folder, on_bad=bad)
    assert bad.total == 1 and [r.image_id for r in rs] == [1, 2, 3, 4]
    assert "notes.txt" not in [r.file_name for r in rs]


def test_verify_catches_truncated(folder):
    noise = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "a.jpg", quality=90)  # big enough that half keeps the header
    data = (folder / "a.jpg").read_bytes()
    (folder / "a.jpg").write_bytes(data[: len(data) // 2])
    assert len(read_image_folder(folder)) == 4  # header-only read cannot see it
    bad = BadRecords("skip")
    rs = read_image_folder(folder, on_bad=bad, verify=True)
    assert bad.total == 1 and [r.file_name for r in rs][0] == "b.png"
    assert [(r.width, r.height) for r in rs][1] == (2, 6)  # decoded size is also upright


def test_empty_and_missing(tmp_path):
    (tmp_path / "empty").mkdir()
    assert len(read_image_folder(tmp_path / "empty")) == 0
    with pytest.raises(FileNotFoundError, match="nothere"):
        read_image_folder(tmp_path / "nothere")
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError):
        read_image_folder(tmp_path / "f")


def test_folder_to_coco(folder, tmp_path):
    rs = read_image_folder(folder)
    write_coco_instances(tmp_path / "f.json", rs)
    back = read_coco_instances(tmp_path / "f.json")
    assert [(r.image_id, r.file_name, r.width, r.height) for r in back] == [
        (r.image_id, r.file_name, r.width, r.height) for r in rs
    ]


def test_fifo_and_outside_links_are_counted_skips(folder, tmp_path, no_hang):
    """Before: a FIFO named x.png hung ``data stats``. Now it is skipped with a reason, never opened."""
    os.mkfifo(folder / "x.png")
    (folder / "broken.png").symlink_to(tmp_path / "nothing.png")
    (folder / "in.png").symlink_to(folder / "b.png")  # a link inside the folder is an ordinary image
    assert "x.png" not in list_files(folder) and "broken.png" not in list_files(folder)
    for policy in ("error", "skip"):  # not regular: skipped and counted under either policy
        bad = BadRecords(policy)
        with no_hang(5):
            rs = read_image_folder(folder, on_bad=bad)
        assert [r.file_name for r in rs] == ["a.jpg", "b.png", "in.png", "sub/c.jpg", "sub/deeper/d.png"]
        assert bad.total == 2 and bad.skipped["not a regular file (a FIFO)"] == 1
        assert bad.skipped["cannot stat (No such file or directory) (broken symbolic link)"] == 1
        assert f"{folder}: x.png: not a regular file (a FIFO)" in bad.examples
    with no_hang(5):
        assert len(read_image_folder(folder, recursive=False)) == 3
    _img(tmp_path / "outside.png", 2, 2)
    (folder / "sub" / "out.png").symlink_to(tmp_path / "outside.png")
    with pytest.raises(BadRecordError, match=rf"imgs: sub/out\.png: symbolic link to {tmp_path / 'outside.png'}, "
                                             "outside the image folder"):
        read_image_folder(folder)
    bad = BadRecords("skip")
    assert "sub/out.png" not in [r.file_name for r in read_image_folder(folder, on_bad=bad)] and bad.total == 3
