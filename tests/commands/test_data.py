"""``omniseg data``: ``--out -`` (standard output) and the bounds of numeric flags."""

from __future__ import annotations

import json
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
    assert captured.out == "" and captured.err.startswith(f"omniseg data convert: error: {message.format(d=d)}")
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


# ----------------------------------------------------------------------------- outputs never destroy data


@pytest.mark.parametrize(
    ("fmt", "out"),
    [("coco", "{s}/instances.json"), ("coco-results", "{s}/../syn/captions.json"), ("panoptic", "{s}/panoptic.json"),
     ("coco", "{s}/images/x.json"), ("coco", "{s}")],
)
def test_convert_refuses_out_that_is_part_of_the_input(dataset: Path, capsys, fmt: str, out: str) -> None:
    before = {p: p.stat().st_mtime_ns for p in dataset.rglob("*")}
    out = out.format(s=dataset)
    assert main(["data", "convert", str(dataset), "--to", fmt, "--out", out]) == 2
    assert capsys.readouterr().err == f"omniseg data convert: error: --out: {out} is an input of this command ({dataset})\n"
    assert {p: p.stat().st_mtime_ns for p in dataset.rglob("*")} == before


def test_convert_refuses_its_own_input_file_also_through_a_symlink(dataset: Path, tmp_path: Path, capsys) -> None:
    src = tmp_path / "r.json"
    assert main(["data", "convert", str(dataset), "--to", "coco-results", "--out", str(src)]) == 0
    (tmp_path / "link.json").symlink_to(src)
    text = src.read_text()
    for out in (src, tmp_path / "link.json"):
        assert main(["data", "convert", str(src), "--to", "coco-results", "--out", str(out)]) == 2
        assert "is an input of this command" in capsys.readouterr().err
    assert src.read_text() == text


def test_convert_out_with_trailing_slash_is_a_usage_error(dataset: Path, tmp_path: Path, capsys) -> None:
    out = f"{tmp_path}/new/"
    assert main(["data", "convert", str(dataset), "--to", "coco", "--out", out]) == 2
    assert capsys.readouterr().err == f"omniseg data convert: error: --out: {out} names a folder; give a file name\n"
    assert os.listdir(tmp_path) == []


def test_panoptic_never_swaps_away_a_folder_of_other_files(dataset: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "foo").mkdir()
    (tmp_path / "foo" / "precious.txt").write_text("keep")
    assert main(["data", "convert", str(dataset), "--to", "panoptic", "--out", str(tmp_path / "foo.json")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"omniseg data convert: error: {tmp_path / 'foo'}: exists and holds files") and "precious.txt" in err
    assert sorted(os.listdir(tmp_path)) == ["foo"] and os.listdir(tmp_path / "foo") == ["precious.txt"]


def test_openimages_summary_names_the_classes_sidecar(dataset: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "oi.csv"
    assert main(["data", "convert", str(dataset), "--to", "openimages", "--out", str(out)]) == 0
    assert capsys.readouterr().out == f"wrote 4 images as openimages to {out}, {tmp_path / 'oi-classes.csv'}\n"


@pytest.mark.parametrize(("fmt", "what"), [("panoptic", "panoptic segments"), ("narratives", "narratives"),
                                           ("captions", "captions")])
def test_convert_refuses_an_empty_export(dataset: Path, tmp_path: Path, capsys, fmt: str, what: str) -> None:
    src = dataset / "instances.json"  # instances only
    out = tmp_path / "o.json"
    assert main(["data", "convert", str(src), "--to", fmt, "--out", str(out)]) == 1
    assert capsys.readouterr().err == f"omniseg data convert: error: {src}: has no {what} to write as {fmt}\n"
    assert os.listdir(tmp_path) == []


def test_synth_into_an_existing_file(tmp_path: Path, capsys) -> None:
    f = tmp_path / "tiny.yaml"
    f.write_text("x: 1\n")
    assert main(["data", "synth", "--out", str(f), "--num-images", "1", "--image-size", "16", "--no-progress"]) == 1
    assert capsys.readouterr().err == f"omniseg data synth: error: {f}: exists and is not a folder\n"
    assert f.read_text() == "x: 1\n"


def test_synth_rerun_with_fewer_images_removes_its_own_stale_pngs(tmp_path: Path, capsys) -> None:
    out = tmp_path / "s"
    argv = ["data", "synth", "--out", str(out), "--image-size", "16", "--no-progress", "--num-images"]
    assert main([*argv, "7"]) == 0
    (out / "images" / "mine.png").write_text("keep")  # not the generator's naming: never touched
    capsys.readouterr()
    assert main([*argv, "2"]) == 0
    assert "removed 5 image(s) of an earlier run that are not in this set\n" in capsys.readouterr().out
    names = [im["file_name"] for im in json.loads((out / "instances.json").read_text())["images"]]
    assert sorted(os.listdir(out / "images")) == [*sorted(names), "mine.png"] and len(names) == 2
    assert json.loads((out / "synth_config.json").read_text())["images_removed"] == 5
