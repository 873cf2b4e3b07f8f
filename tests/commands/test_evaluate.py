"""``omniseg eval``: the report output never overwrites an input; ``--out -`` is standard output only."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from omniseg.cli import main
from omniseg.data.synth.generate import SynthConfig, generate_dataset


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ev")
    generate_dataset(SynthConfig(seed=1, num_images=3, image_size=32), root / "s", progress=False)
    pred = root / "r.json"
    assert main(["data", "convert", str(root / "s"), "--to", "coco-results", "--out", str(pred)]) == 0
    return root / "s", pred


@pytest.mark.parametrize("which", ["gt", "pred", "gt-md"])
def test_out_that_is_an_input_is_refused(inputs: tuple[Path, Path], capsys, which: str) -> None:
    ds, pred = inputs
    gt = ds / "instances.json"
    out = {"gt": str(gt), "pred": str(pred), "gt-md": str(ds / "instances.json")}[which]
    before = gt.read_bytes(), pred.read_bytes()
    capsys.readouterr()
    assert main(["eval", str(gt if which != "gt-md" else ds), "--pred", str(pred), "--out", out]) == 2
    assert capsys.readouterr().err.startswith(f"omniseg eval: error: --out: {out} is an input of this command")
    assert (gt.read_bytes(), pred.read_bytes()) == before


def test_out_dash_is_json_on_stdout_only(inputs: tuple[Path, Path], tmp_path: Path, capfd, monkeypatch) -> None:
    ds, pred = inputs
    monkeypatch.chdir(tmp_path)
    capfd.readouterr()
    assert main(["eval", str(ds), "--pred", str(pred), "--out", "-"]) == 0
    out, err = capfd.readouterr()
    assert out.endswith("}\n") and json.loads(out)["metrics"]
    assert "report written to standard output" in err and "mask_AP" in err
    assert os.listdir(tmp_path) == []


def test_summary_names_the_markdown_sidecar(inputs: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    ds, pred = inputs
    out = tmp_path / "x.json"
    assert main(["eval", str(ds), "--pred", str(pred), "--out", str(out)]) == 0
    assert capsys.readouterr().out.endswith(f"report written to {out} and {tmp_path / 'x.md'}\n")
    assert sorted(os.listdir(tmp_path)) == ["x.json", "x.md"]


def test_md_out_is_refused(inputs: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    ds, pred = inputs
    assert main(["eval", str(ds), "--pred", str(pred), "--out", str(tmp_path / "x.md")]) == 2
    assert "the markdown report is written next to the JSON one" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_ground_truth_without_instances_is_blamed_not_the_predictions(inputs: tuple[Path, Path], capsys) -> None:
    """A captions file as GT: the error names the GT, not an 'unknown category' of the predictions."""
    ds, pred = inputs
    gt = ds / "captions.json"
    capsys.readouterr()
    assert main(["eval", str(gt), "--pred", str(pred)]) == 1
    assert capsys.readouterr().err == (f"omniseg eval: error: {gt}: has no categories / instances to evaluate "
                                       "against (eval needs COCO instances ground truth)\n")


def test_split_file_groups_base_and_novel(inputs: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    """Predictions = ground truth except every instance of one class: that class (named novel in the
    split file) scores 0, the others (base) 1."""
    ds, pred = inputs
    gt = json.loads((ds / "instances.json").read_text())
    present = sorted({a["category_id"] for a in gt["annotations"]})
    novel = present[0]
    names = {c["id"]: c["name"] for c in gt["categories"]}
    kept = [p for p in json.loads(pred.read_text()) if p["category_id"] != novel]
    (tmp_path / "p.json").write_text(json.dumps(kept))
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"base": [names[i] for i in present[1:]], "novel": [names[novel]]}))
    out = tmp_path / "r.json"
    assert main(["eval", str(ds), "--pred", str(tmp_path / "p.json"), "--split-file", str(split), "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())["metrics"]
    assert metrics["mask_AP/base"] == pytest.approx(1.0) and metrics["mask_AP/novel"] == pytest.approx(0.0)
    split.write_text(json.dumps({"base": ["no such class"]}))
    capsys.readouterr()
    assert main(["eval", str(ds), "--pred", str(pred), "--split-file", str(split)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("omniseg eval: error: ") and str(split) in err and "no such class" in err
    assert len(err.strip().splitlines()) == 1
    assert main(["eval", str(ds), "--pred", str(pred), "--split-file", str(split), "--split", "voc-like"]) == 2
