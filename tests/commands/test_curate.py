"""``omniseg curate alps``: word-list files, outputs apart from inputs, narratives matching no image."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from omniseg.cli import main
from omniseg.commands.curate import word_list
from omniseg.data.synth.generate import SynthConfig, generate_dataset
from omniseg.errors import UsageError


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cu") / "s"
    generate_dataset(SynthConfig(seed=1, num_images=2, image_size=32), root, progress=False)
    return root


def test_word_list_file_or_words(tmp_path: Path) -> None:
    f = tmp_path / "w.txt"
    f.write_text("Sky # a comment\n\nwater\n")
    assert word_list(str(f)) == ("sky", "water") and word_list("Sky, grass,") == ("sky", "grass")
    os.mkfifo(tmp_path / "fifo")
    for value, says in [(str(tmp_path / "nofile.txt"), "no such file"), ("a/b", "no such file"),
                        (str(tmp_path), "not a regular file"), (str(tmp_path / "fifo"), "not a regular file")]:
        with pytest.raises(UsageError, match=f"^--non-object-list: {value}: {says}$"):
            word_list(value, "--non-object-list")


def _alps(dataset: Path, images: str, out: str, *extra: str) -> list[str]:
    return ["curate", "alps", str(dataset / "narratives.jsonl"), "--images", images, "--out", out, "--no-progress",
            *extra]


def test_missing_stuff_list_file_is_a_usage_error(dataset: Path, tmp_path: Path, capsys) -> None:
    argv = _alps(dataset, str(dataset), str(tmp_path / "o"), "--stuff-list", str(tmp_path / "nofile.txt"))
    assert main(argv) == 2
    assert capsys.readouterr().err == f"omniseg curate alps: error: --stuff-list: {tmp_path / 'nofile.txt'}: no such file\n"
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("out", ["{s}", "{s}/images"])
def test_out_that_is_an_input_is_refused(dataset: Path, capsys, out: str) -> None:
    before = sorted(os.listdir(dataset))
    out = out.format(s=dataset)
    assert main(_alps(dataset, str(dataset), out)) == 2
    assert capsys.readouterr().err.startswith(f"omniseg curate alps: error: --out: {out} is an input of this command")
    assert sorted(os.listdir(dataset)) == before


def test_out_that_is_a_file_is_refused(dataset: Path, tmp_path: Path, capsys) -> None:
    f = tmp_path / "f.txt"
    f.write_text("keep")
    assert main(_alps(dataset, str(dataset), str(f))) == 1
    assert capsys.readouterr().err == f"omniseg curate alps: error: {f}: exists and is not a folder\n"


def test_no_narrative_for_any_image_is_an_error(dataset: Path, tmp_path: Path, capsys) -> None:
    from omniseg.curate.pos import available_model

    try:
        available_model()
    except RuntimeError:
        pytest.skip("no spaCy model installed")
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"images": [{"id": 999, "width": 32, "height": 32, "file_name": "x.png"}],
                                 "annotations": [], "categories": []}))
    narr = dataset / "narratives.jsonl"
    assert main(_alps(dataset, str(other), str(tmp_path / "o"))) == 1
    err = capsys.readouterr().err
    assert err == (f"omniseg curate alps: error: {narr}: none of its 2 narratives is for an image of {other} "
                   "(image ids differ?)\n")
