"""``omniseg viz``: drawings never land in (or replace) the input dataset."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from omniseg.cli import main
from omniseg.data.synth.generate import SynthConfig, generate_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("vz") / "s"
    generate_dataset(SynthConfig(seed=1, num_images=2, image_size=32), root, progress=False)
    return root


@pytest.mark.parametrize("out", ["{s}", "{s}/images", "{s}/x", "{s}/images/../images/z", "{s}/instances.json"])
def test_out_overlapping_the_dataset_is_refused(dataset: Path, capsys, out: str) -> None:
    before = sorted(os.listdir(dataset)), sorted(os.listdir(dataset / "images"))
    out = out.format(s=dataset)
    assert main(["viz", str(dataset), "--out", out, "--no-progress"]) == 2
    assert capsys.readouterr().err.startswith(f"omniseg viz: error: --out: {out} is an input of this command")
    assert (sorted(os.listdir(dataset)), sorted(os.listdir(dataset / "images"))) == before


def test_out_whose_images_folder_is_the_input_is_refused(dataset: Path, capsys) -> None:
    """``viz s/images --out s``: the drawings would go to s/images."""
    assert main(["viz", str(dataset / "images"), "--out", str(dataset), "--no-progress"]) == 2
    assert "is an input of this command" in capsys.readouterr().err


def test_out_beside_the_dataset_works(dataset: Path, capsys) -> None:
    out = dataset.parent / "v"
    assert main(["viz", str(dataset), "--out", str(out), "--no-progress"]) == 0
    assert (out / "index.html").is_file() and len(os.listdir(out / "images")) == 2


def test_rerun_into_the_same_out_keeps_only_this_runs_drawings(dataset: Path, tmp_path: Path, capsys) -> None:
    """A second run (--limit 1) replaces the drawings folder: no stale drawing of the first run stays."""
    out = tmp_path / "v"
    assert main(["viz", str(dataset), "--out", str(out), "--no-progress"]) == 0
    first = sorted(os.listdir(out / "images"))
    assert len(first) == 2
    (out / "notes.txt").write_text("mine")  # the user's file beside the drawings is kept
    assert main(["viz", str(dataset), "--out", str(out), "--no-progress", "--limit", "1"]) == 0
    assert sorted(os.listdir(out / "images")) == first[:1]
    assert sorted(os.listdir(out)) == ["images", "index.html", "notes.txt"]
    assert first[1] not in (out / "index.html").read_text()


def test_drawings_folder_with_foreign_files_is_refused(dataset: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "v"
    (out / "images").mkdir(parents=True)
    (out / "images" / "keep.txt").write_text("keep")
    capsys.readouterr()
    assert main(["viz", str(dataset), "--out", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"omniseg viz: error: {out / 'images'}: exists and holds files") and "keep.txt" in err
    assert sorted(os.listdir(out)) == ["images"] and os.listdir(out / "images") == ["keep.txt"]
