"""Shared argument / output helpers of the command modules."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from omniseg.commands.common import (
    int_at_least,
    load_image_or_skip,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    removed_on_error,
    unique_name,
    unit_float,
)
from omniseg.data.errors import BadRecordError, BadRecords


def test_bounded_ints() -> None:
    assert positive_int("3") == 3 and non_negative_int("0") == 0 and int_at_least(16)("16") == 16
    for parse, text, says in [(positive_int, "0", "must be >= 1, got 0"), (non_negative_int, "-1", "must be >= 0"),
                              (int_at_least(16), "8", "must be >= 16, got 8"), (positive_int, "1.5", "an integer"),
                              (positive_int, "", "an integer")]:
        with pytest.raises(argparse.ArgumentTypeError, match=says):
            parse(text)


def test_unit_float() -> None:
    assert [unit_float(t) for t in ("0", "1", "0.25", "1e-3")] == [0.0, 1.0, 0.25, 0.001]
    for text in ("nan", "-0.1", "1.0001", "inf", "x", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            unit_float(text)


def test_bounded_floats() -> None:
    assert positive_float("0.5") == 0.5 and non_negative_float("0") == 0.0 and non_negative_float("1e-3") == 0.001
    for parse, text, says in [(positive_float, "0", "must be a number > 0, got '0'"),
                              (non_negative_float, "-1", "must be a number >= 0, got '-1'"),
                              (non_negative_float, "nan", ">= 0"), (positive_float, "inf", "> 0"),
                              (non_negative_float, "x", "expected a number, got 'x'")]:
        with pytest.raises(argparse.ArgumentTypeError, match=says):
            parse(text)


def test_bounded_types_give_argparse_usage_errors_naming_the_flag(capsys) -> None:
    p = argparse.ArgumentParser(prog="t")
    p.add_argument("--limit", type=non_negative_int)
    with pytest.raises(SystemExit) as info:
        p.parse_args(["--limit", "-2"])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().endswith("t: error: argument --limit: must be >= 0, got -2")


def test_unique_name() -> None:
    taken: set[str] = set()
    got = [unique_name(stem, ".png", taken, i) for i, stem in enumerate(["x", "x", "X", "x_1", "a/b", "..", ""])]
    assert got == ["x.png", "x_1.png", "X_2.png", "x_1_3.png", "a_b.png", "image.png", "image_6.png"]
    assert unique_name("x", ".png", taken, 1) == "x_1_2.png"  # x.png and x_1.png are taken
    assert len(unique_name("y" * 500, ".png", set(), 0)) == 104


def test_load_image_or_skip(tmp_path: Path) -> None:
    good, junk, missing = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"
    Image.fromarray(np.full((4, 5, 3), 7, np.uint8)).save(good)
    junk.write_text("no image")
    skip = BadRecords("skip")
    assert load_image_or_skip(good, skip).shape == (4, 5, 3)
    assert load_image_or_skip(junk, skip) is None and load_image_or_skip(missing, skip, "image 3") is None
    assert skip.total == 2
    assert skip.examples == [f"{junk}: image: not a recognized image file", f"{missing}: image 3: no such image file"]
    with pytest.raises(BadRecordError, match=f"^{junk}: image: not a recognized image file$"):
        load_image_or_skip(junk, BadRecords())


def test_removed_on_error(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        with removed_on_error(out, out / "images") as written:
            (out / "images").mkdir(parents=True)
            for name in ("images/a.png", "b.json"):
                (out / name).write_text("x")
                written.append(out / name)
            raise KeyboardInterrupt
    assert not out.exists()
    # a folder that existed before is kept, with what was in it; success keeps everything
    out.mkdir()
    (out / "old.txt").write_text("keep")
    with pytest.raises(ValueError):
        with removed_on_error(out) as written:
            (out / "new.txt").write_text("x")
            written.append(out / "new.txt")
            raise ValueError
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    with removed_on_error(out) as written:
        (out / "new.txt").write_text("x")
        written.append(out / "new.txt")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt", "old.txt"]


def test_check_output_not_input(tmp_path: Path) -> None:
    from omniseg.commands.common import check_out_file, check_output_not_input
    from omniseg.errors import UsageError

    ds = tmp_path / "s"
    (ds / "images").mkdir(parents=True)
    (ds / "instances.json").write_text("{}")
    (tmp_path / "link").symlink_to(ds / "instances.json")
    for out in [ds, ds / "instances.json", ds / "captions.json", ds / "images" / "a.png", tmp_path / "link",
                f"{ds}/images/../instances.json"]:
        with pytest.raises(UsageError, match=f"^--out: {out} is an input of this command"):
            check_output_not_input([tmp_path / "fine.json", out], [None, ds])
    check_output_not_input([tmp_path / "fine.json", "-", ds / "other.json"], [ds])
    with pytest.raises(UsageError, match="^--pred: .* is an input"):
        check_output_not_input(ds / "x.json", [ds / "x.json"], "--pred")
    with pytest.raises(UsageError, match="names a folder"):
        check_out_file(f"{tmp_path}/new/")
    check_out_file("-")
