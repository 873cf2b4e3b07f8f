"""Training curves from a hand-made metrics.jsonl, PR curves from a hand-made evaluation."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from omniseg.data.records import Category, ImageRecord, Instance, RecordSet
from omniseg.errors import UserError
from omniseg.viz.curves import (
    metric_logs,
    plot_pr_curves,
    pr_curves,
    training_series,
    write_training_curves,
    write_training_curves_or_warn,
)

RECORDS = [
    {"step": 10, "lr": 0.001, "loss": 2.0, "loss_mask": 1.5, "grad_norm": 3.0, "s_per_iter": 0.5},
    {"step": 20, "lr": 0.002, "loss": 1.0, "loss_mask": 0.5, "grad_norm": 2.0, "s_per_iter": 0.5},
    {"step": 20, "eval/mask_AP": 0.25, "eval/mask_AP/novel": "nan", "eval/mask_AP75": 0.1,
     "eval/class/mask/cat/AP": 0.3, "eval/mask_num_gt_skipped": 2.0},
    {"step": 30, "lr": 0.001, "loss": 0.5, "loss_mask": 0.25},
    {"step": 30, "eval/mask_AP": 0.5},
]


def _write_log(path: Path, records=RECORDS) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_training_series_hand() -> None:
    s = training_series(RECORDS)
    assert s["loss"] == {"loss": ([10, 20, 30], [2.0, 1.0, 0.5]), "loss_mask": ([10, 20, 30], [1.5, 0.5, 0.25])}
    assert s["lr"] == {"lr": ([10, 20, 30], [0.001, 0.002, 0.001])}
    assert sorted(s["eval"]) == ["mask_AP", "mask_AP/novel"]  # no AP75, per-class or counts
    assert s["eval"]["mask_AP"] == ([20, 30], [0.25, 0.5]) and np.isnan(s["eval"]["mask_AP/novel"][1][0])
    assert training_series([{"step": 1, "grad_norm": 1.0}]) == {}
    one_term = training_series([{"step": s, "loss": 1.0 / s, "loss_mask": 1.0 / s} for s in (1, 2)])
    assert one_term == {"loss": {"loss": ([1, 2], [1.0, 0.5])}}  # the total alone, not twice the same line
    # one logged point (evaluation at the end only, a 20-iteration run): no curve to draw
    assert training_series([RECORDS[0], RECORDS[2]]) == {}


def _check_png(path: Path, min_bytes: int = 8000) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > min_bytes
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.size == (640, 400)
        assert np.unique(np.asarray(im.convert("L"))).size > 10  # lines and text, not a blank canvas


def test_write_training_curves_from_a_metrics_log(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _write_log(run / "metrics.jsonl")
    _write_log(run / "stage1" / "metrics.jsonl", RECORDS[:3])
    assert metric_logs(run) == [("", run / "metrics.jsonl"), ("stage1_", run / "stage1" / "metrics.jsonl")]
    written = write_training_curves(run)
    names = ["eval.png", "loss.png", "lr.png", "stage1_loss.png", "stage1_lr.png"]
    assert sorted(p.name for p in written) == names
    assert sorted(p.name for p in (run / "curves").iterdir()) == names
    for p in written:
        _check_png(p)
    # a second run replaces the folder: a plot the new log no longer has is gone
    _write_log(run / "metrics.jsonl", RECORDS[:2])
    (run / "stage1" / "metrics.jsonl").unlink()
    write_training_curves(run)
    assert sorted(p.name for p in (run / "curves").iterdir()) == ["loss.png", "lr.png"]


def test_nothing_logged_nothing_written(tmp_path: Path) -> None:
    assert write_training_curves(tmp_path) == []
    (tmp_path / "metrics.jsonl").write_text("")
    assert write_training_curves(tmp_path) == [] and not (tmp_path / "curves").exists()
    _write_log(tmp_path / "metrics.jsonl", RECORDS[:1])  # a 1-iteration run: one point, no curve
    assert write_training_curves(tmp_path) == [] and not (tmp_path / "curves").exists()


def test_missing_matplotlib_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_log(tmp_path / "metrics.jsonl")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(UserError, match=r"pip install 'omniseg\[viz\]'"):
        write_training_curves(tmp_path)
    with pytest.warns(UserWarning, match=rf"{tmp_path}: training curves not drawn: .*omniseg\[viz\]"):
        assert write_training_curves_or_warn(tmp_path) == []
    assert not (tmp_path / "curves").exists()


def _box(x: float) -> tuple[float, float, float, float]:
    return (x, 10.0, x + 20.0, 30.0)


def test_pr_curves_hand_worked(tmp_path: Path) -> None:
    """Class 1 (base): 2 GT, a hit (0.9) then a false positive (0.8): precision 1 up to recall 0.5,
    0 beyond (never reached). Class 2 (novel): 1 GT, a false positive (0.95) then a hit (0.6):
    precision 1/2 at recall 1, so 0.5 at every recall point. Class 3 has no GT: left out."""
    cats = [Category(1, "cat"), Category(2, "dog"), Category(3, "cow")]
    gt = RecordSet([ImageRecord(1, "a.png", 100, 100, instances=[
        Instance("cat", 1, box=_box(0)), Instance("cat", 1, box=_box(40)), Instance("dog", 2, box=_box(70))])],
        categories=cats)
    pred = RecordSet([ImageRecord(1, "a.png", 100, 100, instances=[
        Instance("cat", 1, box=_box(0), score=0.9), Instance("cat", 1, box=(0, 60, 10, 70), score=0.8),
        Instance("dog", 2, box=(0, 80, 10, 90), score=0.95), Instance("dog", 2, box=_box(70), score=0.6),
        Instance("cow", 3, box=_box(0), score=0.5)])], categories=cats)
    curves = pr_curves(gt, pred, "bbox", {"base": [1], "novel": [2], "none": [3]})
    assert sorted(curves) == ["all", "base", "novel"]
    base = np.r_[np.ones(51), np.zeros(50)]
    np.testing.assert_allclose(curves["base"], base)
    np.testing.assert_allclose(curves["novel"], np.full(101, 0.5))
    np.testing.assert_allclose(curves["all"], (base + 0.5) / 2)
    png = plot_pr_curves(curves, tmp_path / "pr.png", "pr")
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 8000
