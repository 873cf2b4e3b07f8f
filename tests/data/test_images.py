"""load_image / image_size on files generated with PIL: modes, EXIF orientation, broken files."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
from PIL import Image

from omniseg.data.errors import BadRecordError
from omniseg.data.images import ImageReadError, image_size, load_image, load_record_image
from omniseg.data.records import ImageRecord, RecordSet


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def ref_orient(a: np.ndarray, orientation: int) -> np.ndarray:
    """Slow reference for the EXIF orientation tag (TIFF 6.0 / EXIF 2.3 definitions), pixel by pixel.

    ``out[i, j]`` reads the stored pixel that ends up at row i, column j of the upright image.
    """
    h, w = a.shape[:2]
    swap = orientation >= 5
    oh, ow = (w, h) if swap else (h, w)
    out = np.zeros((oh, ow) + a.shape[2:], a.dtype)
    for i in range(oh):
        for j in range(ow):
            src = {
                1: (i, j),
                2: (i, w - 1 - j),  # mirrored horizontally
                3: (h - 1 - i, w - 1 - j),  # rotated 180
                4: (h - 1 - i, j),  # mirrored vertically
                5: (j, i),  # transpose
                6: (h - 1 - j, i),  # stored image must be rotated 90 degrees clockwise
                7: (h - 1 - j, w - 1 - i),  # transverse
                8: (j, w - 1 - i),  # rotated 90 counter-clockwise
            }[orientation]
            out[i, j] = a[src]
    return out


def _unique_rgb(h: int, w: int) -> np.ndarray:
    v = np.arange(h * w * 3, dtype=np.uint8).reshape(h, w, 3)
    return v * 3


def test_rgb_png_exact(tmp_path):
    a = _unique_rgb(3, 5)
    Image.fromarray(a).save(tmp_path / "x.png")
    out = load_image(tmp_path / "x.png")
    assert out.dtype == np.uint8 and out.shape == (3, 5, 3)
    np.testing.assert_array_equal(out, a)
    assert image_size(tmp_path / "x.png") == (5, 3)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_png_lossless(tmp_path, orientation):
    a = _unique_rgb(2, 3)  # 3 wide, 2 high
    p = tmp_path / f"o{orientation}.png"
    Image.fromarray(a).save(p, exif=_exif(orientation))
    out = load_image(p)
    np.testing.assert_array_equal(out, ref_orient(a, orientation))
    assert image_size(p) == (out.shape[1], out.shape[0])


def test_ref_orient_hand_worked():
    a = np.array([[1, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(ref_orient(a, 6), [[4, 1], [5, 2], [6, 3]])  # 90 degrees clockwise
    np.testing.assert_array_equal(ref_orient(a, 8), [[3, 6], [2, 5], [1, 4]])
    np.testing.assert_array_equal(ref_orient(a, 3), [[6, 5, 4], [3, 2, 1]])


def test_exif_orientation_6_jpeg(tmp_path):
    a = np.zeros((16, 32, 3), np.uint8)  # 32 wide, 16 high: red left half, blue right half
    a[:, :16] = (255, 0, 0)
    a[:, 16:] = (0, 0, 255)
    p = tmp_path / "rot.jpg"
    Image.fromarray(a).save(p, quality=95, exif=_exif(6))
    assert image_size(p) == (16, 32)
    out = load_image(p)
    assert out.shape == (32, 16, 3)
    # rotated clockwise: the stored left (red) half is now on top
    assert out[4, 8, 0] > 200 and out[4, 8, 2] < 60
    assert out[28, 8, 2] > 200 and out[28, 8, 0] < 60
    with Image.open(p) as im:
        raw = np.asarray(im.convert("RGB"))  # same decoder, no orientation
    np.testing.assert_array_equal(out, ref_orient(raw, 6))


def test_grayscale_and_bilevel(tmp_path):
    g = np.array([[0, 7, 255], [128, 1, 2]], np.uint8)
    Image.fromarray(g).save(tmp_path / "g.png")
    np.testing.assert_array_equal(load_image(tmp_path / "g.png"), np.stack([g] * 3, axis=2))
    Image.fromarray(g > 100).save(tmp_path / "b.png")
    assert Image.open(tmp_path / "b.png").mode == "1"
    out = load_image(tmp_path / "b.png")
    np.testing.assert_array_equal(out[..., 0], np.where(g > 100, 255, 0))


def test_rgba_composited_on_black(tmp_path):
    a = np.array([[[200, 100, 50, 128], [10, 20, 30, 0], [1, 2, 3, 255]]], np.uint8)
    Image.fromarray(a, "RGBA").save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    # hand-worked: 200*128/255 = 100.4 -> 100, 100*128/255 = 50.2 -> 50, 50*128/255 = 25.1 -> 25
    np.testing.assert_array_equal(out, [[[100, 50, 25], [0, 0, 0], [1, 2, 3]]])
    ref = np.round(a[..., :3].astype(float) * a[..., 3:4] / 255).astype(np.uint8)
    np.testing.assert_array_equal(out, ref)
    la = Image.fromarray(a[..., [0, 3]], "LA")
    la.save(tmp_path / "la.png")
    np.testing.assert_array_equal(load_image(tmp_path / "la.png")[..., 1], [[100, 0, 1]])


def test_palette_with_and_without_transparency(tmp_path):
    idx = np.array([[0, 1], [2, 1]], np.uint8)
    palette = [10, 20, 30, 40, 50, 60, 70, 80, 90] + [0] * (768 - 9)
    im = Image.fromarray(idx, "P")
    im.putpalette(palette)
    im.save(tmp_path / "p.png")
    pal = np.array(palette, np.uint8).reshape(-1, 3)
    np.testing.assert_array_equal(load_image(tmp_path / "p.png"), pal[idx])
    im.save(tmp_path / "pt.png", transparency=1)
    ref = pal[idx].copy()
    ref[idx == 1] = 0
    np.testing.assert_array_equal(load_image(tmp_path / "pt.png"), ref)


def test_16bit_scaled_not_clipped(tmp_path):
    v = np.array([[0, 257, 65535], [32896, 5000, 1000]], np.uint16)
    Image.fromarray(v).save(tmp_path / "s.png")
    assert Image.open(tmp_path / "s.png").mode.startswith("I")
    out = load_image(tmp_path / "s.png")
    ref = np.array([[int(x / 257 + 0.5) for x in row] for row in v.tolist()], np.uint8)
    np.testing.assert_array_equal(out[..., 0], ref)
    np.testing.assert_array_equal(out[..., 0], [[0, 1, 255], [128, 19, 4]])
    assert (out[..., 0] == out[..., 2]).all()


def test_32bit_int_mode(tmp_path):
    v = np.array([[0, 65535, 70000, -5]], np.int32)
    Image.fromarray(v, "I").save(tmp_path / "i.tif")
    assert Image.open(tmp_path / "i.tif").mode == "I"
    np.testing.assert_array_equal(load_image(tmp_path / "i.tif")[..., 0], [[0, 255, 255, 0]])


def test_float_mode_is_an_error(tmp_path):
    Image.fromarray(np.zeros((2, 2), np.float32), "F").save(tmp_path / "f.tif")
    with pytest.raises(ImageReadError, match="f.tif"):
        load_image(tmp_path / "f.tif")


def test_cmyk(tmp_path):
    im = Image.new("CMYK", (2, 1), (0, 255, 255, 0))  # pure red in CMYK
    im.save(tmp_path / "c.tif")
    np.testing.assert_array_equal(load_image(tmp_path / "c.tif"), [[[255, 0, 0], [255, 0, 0]]])


def test_broken_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        load_image(tmp_path / "missing.jpg")
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        image_size(tmp_path / "missing.jpg")
    (tmp_path / "notes.jpg").write_text("this is not an image")
    for fn in (load_image, image_size):
        with pytest.raises(ImageReadError, match="notes.jpg"):
            fn(tmp_path / "notes.jpg")
    with pytest.raises(ImageReadError, match="directory"):
        load_image(tmp_path)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "full.jpg", quality=90)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="trunc.jpg"):
        load_image(tmp_path / "trunc.jpg")
    assert image_size(tmp_path / "trunc.jpg") == (64, 64)  # header only: no pixels decoded
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="trunc.png"):
        load_image(tmp_path / "trunc.png")


def test_non_regular_files_are_refused_without_blocking(tmp_path, no_hang):
    """Before: a FIFO named x.png blocked forever in open(). Now: ImageReadError at once."""
    os.mkfifo(tmp_path / "x.png")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "s.png"))
    try:
        for name, kind in (("x.png", "a FIFO"), ("s.png", "a socket")):
            for fn in (load_image, image_size):
                with no_hang(5), pytest.raises(ImageReadError, match=rf"{name}: not a regular file \({kind}\)"):
                    fn(tmp_path / name)
    finally:
        sock.close()
    if os.path.exists("/dev/zero"):
        with no_hang(5), pytest.raises(ImageReadError, match=r"/dev/zero: not a regular file \(a character device\)"):
            load_image("/dev/zero")


def _save(path, w, h, orientation=None):
    kw = {"exif": _exif(orientation)} if orientation else {}
    Image.fromarray(np.full((h, w, 3), 7, np.uint8)).save(path, **kw)


def test_load_record_image_checks_the_declared_size(tmp_path):
    _save(tmp_path / "a.png", 5, 3)
    rs = RecordSet([ImageRecord(4, "a.png", 5, 3), ImageRecord(5, "a.png", 6, 3)], image_root=str(tmp_path))
    assert load_record_image(rs, rs.records[0]).shape == (3, 5, 3)
    with pytest.raises(BadRecordError) as e:
        load_record_image(rs, rs.records[1])
    assert str(e.value) == (f"{tmp_path / 'a.png'}: image 5: the image is 5x3 (width x height, after EXIF "
                            "orientation) but the annotations declare 6x3")


def test_load_record_image_names_an_exif_rotation(tmp_path):
    """Stored 6 x 2 with orientation 6 = upright 2 x 6; annotations made on the raw 6 x 2 pixels are wrong."""
    _save(tmp_path / "r.jpg", 6, 2, orientation=6)
    rs = RecordSet([ImageRecord(1, "r.jpg", 2, 6), ImageRecord(2, "r.jpg", 6, 2)], image_root=str(tmp_path))
    assert load_record_image(rs, rs.records[0]).shape == (6, 2, 3)
    with pytest.raises(BadRecordError, match=r"r\.jpg: image 2: the image is 2x6 .* declare 6x2; the declared "
                                             r"6x2 matches the image before its EXIF rotation \(orientation 6\)"):
        load_record_image(rs, rs.records[1])


def test_load_record_image_never_leaves_the_image_root(tmp_path, no_hang):
    root = tmp_path / "images"
    root.mkdir()
    _save(tmp_path / "outside.png", 5, 3)
    (root / "link.png").symlink_to(tmp_path / "outside.png")
    os.mkfifo(tmp_path / "pipe.png")
    rs = RecordSet([ImageRecord(1, "../outside.png", 5, 3), ImageRecord(2, "link.png", 5, 3),
                    ImageRecord(3, "../pipe.png", 5, 3)], image_root=str(root))
    for rec in rs.records:  # the FIFO would block if it were opened
        with no_hang(5), pytest.raises(BadRecordError, match=rf"image {rec.image_id}: file_name .* resolves outside"):
            load_record_image(rs, rec)
    (root / "sub").mkdir()
    _save(root / "a.png", 5, 3)
    inside = ImageRecord(4, "sub/../a.png", 5, 3)  # ".." that stays inside the root is fine
    assert load_record_image(RecordSet([inside], image_root=str(root)), inside).shape == (3, 5, 3)
