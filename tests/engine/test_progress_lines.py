"""engine/logging.ProgressLines: plain progress lines where no bar shows (a batch job's log)."""

from __future__ import annotations

from omniseg.engine.logging import ProgressLines, _duration


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


RECORD = {"loss": 1.23456, "lr": 0.00081, "s_per_iter": 1.5, "eta_s": 3725.0}


def test_duration_hand_worked():
    assert (_duration(3725), _duration(95), _duration(0), _duration(-3)) == ("1h02m", "1m35s", "0m00s", "0m00s")


def test_lines_are_throttled_and_short_runs_stay_silent(capsys):
    clock = Clock()
    lines = ProgressLines("runs/x", 4500, enabled=True, every_s=60, clock=clock)
    clock.t += 59
    lines.step(40, RECORD)
    lines.evaluation(40, {"box_AP": 0.1})
    assert capsys.readouterr().err == ""  # under a minute: nothing
    clock.t += 1
    lines.step(60, RECORD)
    clock.t += 30
    lines.step(80, RECORD)  # 30 s after the last line: skipped
    lines.evaluation(80, {"box_AP": 0.12345, "note": "x"})
    err = capsys.readouterr().err.splitlines()
    assert err == ["runs/x: step 60/4500 (1%) loss 1.235 lr 0.00081 1.50 s/it, 1h02m left",
                   "runs/x: evaluation at step 80: box_AP 0.1235"]


def test_disabled_prints_nothing(capsys):
    clock = Clock()
    lines = ProgressLines("r", 10, enabled=False, every_s=0, clock=clock)
    clock.t += 1000
    lines.step(5, RECORD)
    lines.evaluation(5, {"a": 1.0})
    assert capsys.readouterr().err == ""
