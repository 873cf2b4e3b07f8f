import json

import numpy as np

from omniseg.evaluation.report import (
    build_report,
    format_value,
    markdown_table,
    metrics_table,
    per_class_results,
    per_class_table,
    to_jsonable,
    write_report,
)

RES = {
    "AP50": 0.5,
    "AP": 0.25,
    "novel/AP": float("nan"),
    "class/cat/AP": 0.123,
    "class/cat/AP50": 0.5,
    "class/a/b/AP": 1.0,
    "num_gt_skipped": 0,
}


def strict_loads(text):
    def bad(c):
        raise ValueError(f"non-standard JSON constant {c}")

    return json.loads(text, parse_constant=bad)


def test_to_jsonable():
    out = to_jsonable({1: np.float32(0.5), "x": [float("nan"), np.int64(3), np.array([1.0, np.inf])]})
    assert out == {"1": 0.5, "x": [None, 3, [1.0, None]]}
    strict_loads(json.dumps(out))


def test_format_value():
    assert format_value(0.12345) == "12.3"
    assert format_value(0.12345, scale=1, digits=3) == "0.123"
    assert format_value(float("nan")) == "—" and format_value(None) == "—"
    assert format_value("abc") == "abc"


def test_markdown_tables():
    assert markdown_table(["a", "b|c"], [["1", "2"]]) == "| a | b\\|c |\n|---|---|\n| 1 | 2 |\n"
    table = metrics_table({"mal": RES, "full": {"AP": 0.5}})
    lines = table.splitlines()
    assert lines[0] == "| run | AP | AP50 | novel/AP | num_gt_skipped |"
    assert lines[2] == "| mal | 25.0 | 50.0 | — | 0 |"  # counts are printed as counts, not x100
    assert metrics_table({"r": {"AP": 0.5, "num_gt_skipped": 3.0}}).splitlines()[2] == "| r | 50.0 | 3 |"
    assert lines[3] == "| full | 50.0 | — | — | — |"
    assert metrics_table({"x": RES}, keys=["AP50"]).splitlines()[2] == "| x | 50.0 |"


def test_per_class():
    per = per_class_results(RES)
    assert per == {"cat": {"AP": 0.123, "AP50": 0.5}, "a/b": {"AP": 1.0}}
    lines = per_class_table(RES).splitlines()
    assert lines[0] == "| class | AP | AP50 |"
    assert lines[2:] == ["| cat | 12.3 | 50.0 |", "| a/b | 100.0 | — |"]


def test_build_and_write_report(tmp_path):
    rep = build_report(RES, title="t", meta={"engine": "faster"})
    assert rep["metrics"] == {"AP": 0.25, "AP50": 0.5, "novel/AP": None, "num_gt_skipped": 0}
    assert rep["per_class"][0] == {"name": "cat", "AP": 0.123, "AP50": 0.5}
    write_report(tmp_path / "r.json", RES, tmp_path / "r.md", title="t")
    assert strict_loads((tmp_path / "r.json").read_text()) == rep | {"meta": {}}
    md = (tmp_path / "r.md").read_text()
    assert md.startswith("# t\n\n| run |") and "| cat | 12.3 | 50.0 |" in md
