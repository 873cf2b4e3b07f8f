"""``omniseg data``: ``--out -`` (standard output) and the bounds of numeric flags."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from omniseg.cli import main
from omniseg.data.synth.generate import SynthConfig, generate_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ds") / "syn"
    generate_dataset(SynthConfig(seed=1, num_images=4, image_size=32), root, progress=False)
    return root


def _exit_code(argv: list[str]) -> int:
    """The CLI's exit status (argparse's own usage errors raise SystemExit)."""
    try:
        return main(argv)
    except SystemExit as e:
        return int(e.code)


@pytest.mark.parametrize("fmt", ["coco", "coco-results", "captions", "narratives"])
def test_stdout_holds_the_file_and_nothing_else(dataset: Path, tmp_path: Path, capfdbinary, fmt: str) -> None:
    assert main(["data", "convert", str(dataset), "--to", fmt, "--out", str(tmp_path / "f")]) == 0
    capfdbinary.readouterr()
    assert main(["data", "convert", str(dataset), "--to", fmt, "--out", "-"]) == 0
    out, err = capfdbinary.readouterr()
    assert out == (tmp_path / "f").read_bytes() and len(out) > 100
    assert err.decode().endswith(f"wrote 4 images as {fmt} to standard output\n")
    assert os.listdir(tmp_path) == ["f"]


@pytest.mark.parametrize(
    ("fmt", "out", "message"),
    [
        ("panoptic", "-", "--out -: panoptic writes several files"),
        ("openimages", "-", "--out -: openimages writes several files"),
        ("panoptic", "{d}/pan", "--out {d}/pan: panoptic needs a JSON name with a suffix"),
        ("coco", "", "--out: empty path"),
    ],
)
def test_unusable_out_is_a_usage_error(dataset: Path, tmp_path: Path, capsys, fmt: str, out: str, message: str):
    d = str(tmp_path)
    assert main(["data", "convert", str(dataset), "--to", fmt, "--out", out.format(d=d)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith(f"omniseg data: error: {message.format(d=d)}")
    assert captured.err.count("\n") == 1 and os.listdir(tmp_path) == []


def test_panoptic_lists_json_and_folder(dataset: Path, tmp_path: Path, capsys) -> None:
    assert main(["data", "convert", str(dataset), "--to", "panoptic", "--out", str(tmp_path / "p.json")]) == 0
    assert capsys.readouterr().out == f"wrote 4 images as panoptic to {tmp_path / 'p.json'}, {tmp_path / 'p'}\n"
    assert sorted(os.listdir(tmp_path)) == ["p", "p.json"] and len(os.listdir(tmp_path / "p")) == 4


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--image-size", "8", "--image-size: must be between 16 and 8192, got 8"),
        ("--image-size", "15", "--image-size: must be between 16 and 8192, got 15"),
        ("--image-size", "8193", "--image-size: must be between 16 and 8192, got 8193"),
        ("--num-images", "0", "argument --num-images: must be >= 1, got 0"),
        ("--workers", "0", "argument --workers: must be >= 1, got 0"),
        ("--workers", "-2", "argument --workers: must be >= 1, got -2"),
        ("--seed", "-1", "argument --seed: must be >= 0, got -1"),
    ],
)
def test_synth_flags_out_of_range(tmp_path: Path, capsys, flag: str, value: str, message: str) -> None:
    argv = ["data", "synth", "--out", str(tmp_path / "s"), "--num-images", "2", "--no-progress", flag, value]
    assert _exit_code(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_synth_smallest_image_size_works(tmp_path: Path, capsys) -> None:
    argv = ["data", "synth", "--out", str(tmp_path / "s"), "--num-images", "3", "--image-size", "16", "--no-progress"]
    assert main(argv) == 0
    assert "wrote 3 images" in capsys.readouterr().out
