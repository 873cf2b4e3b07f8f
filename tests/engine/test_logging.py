from __future__ import annotations

import json

import pytest

from omniseg.engine.logging import MetricLog, MetricLogError, make_progress, read_metric_log


def test_write_read_and_non_finite_values(tmp_path):
    log = MetricLog(tmp_path / "m" / "metrics.jsonl")
    log.write({"step": 1, "loss": 0.5})
    log.write({"step": 2, "loss": float("nan"), "grad_norm": float("inf")})
    log.close()
    lines = (tmp_path / "m" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == [
        {"step": 1, "loss": 0.5},
        {"step": 2, "loss": "nan", "grad_norm": "inf"},  # strict JSON has no NaN literal
    ]
    assert read_metric_log(tmp_path / "m" / "metrics.jsonl")[0] == {"step": 1, "loss": 0.5}
    assert read_metric_log(tmp_path / "absent.jsonl") == []


def test_truncate_after_drops_replayed_steps_and_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(
        "".join(json.dumps({"step": s, "loss": s / 10}) + "\n" for s in range(1, 6)) + '{"step": 6, "lo'
    )
    assert [r["step"] for r in read_metric_log(path)] == [1, 2, 3, 4, 5]  # torn last line ignored
    log = MetricLog(path)
    log.truncate_after(3)
    log.write({"step": 4, "loss": 9.0})
    log.close()
    assert read_metric_log(path) == [
        {"step": 1, "loss": 0.1},
        {"step": 2, "loss": 0.2},
        {"step": 3, "loss": 0.3},
        {"step": 4, "loss": 9.0},
    ]


def test_corrupt_middle_line_is_an_error_naming_file_and_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\nGARBAGE\n{"step": 3}\n')
    with pytest.raises(MetricLogError, match=r"metrics\.jsonl: line 2: not valid JSON"):
        read_metric_log(path)
    path.write_bytes(b'{"step": 1}\n\xff\xfe\n{"step": 3}\n')
    with pytest.raises(MetricLogError, match=r"metrics\.jsonl: line 2: not valid JSON"):
        read_metric_log(path)
    path.write_text('{"step": 1}\n[2]\n')
    with pytest.raises(MetricLogError, match=r"metrics\.jsonl: line 2: not a metric record"):
        MetricLog(path).truncate_after(1)  # what a resume does with it


def test_disabled_log_writes_nothing(tmp_path):
    log = MetricLog(tmp_path / "metrics.jsonl", enabled=False)
    log.write({"step": 1})
    log.truncate_after(0)
    log.close()
    assert not (tmp_path / "metrics.jsonl").exists()


def test_progress_bar_disabled_when_asked():
    bar = make_progress(10, initial=3, enabled=False)
    assert bar.disable and bar.n == 3 and bar.total == 10
    bar.close()
