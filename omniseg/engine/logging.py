"""Training metrics: a JSONL log (one JSON object per line) and a tqdm progress bar.

The log is append-only during a run (a line per logged step, flushed, so a crash loses
at most the line being written). On resume :meth:`MetricLog.truncate_after` rewrites it
atomically without the records past the resumed step and without a torn last line, so
the log of a crashed-and-resumed run reads as one continuous run.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

from omniseg.errors import UserError
from omniseg.utils.atomic import atomic_write_text


class MetricLogError(UserError, ValueError):
    """A metric log is damaged somewhere other than its last line; the message names file and line."""


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/Inf; keep the information as text
    return v


def read_metric_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All complete records of a JSONL metric log (a torn last line is ignored)."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    lines = path.read_bytes().split(b"\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:  # invalid JSON or UTF-8
            if i == len(lines) - 1:  # last line, written when the process died
                continue
            raise MetricLogError(f"{path}: line {i + 1}: not valid JSON: {line[:80]!r}") from None
        if not isinstance(record, dict) or not isinstance(record.get("step", 0), int):
            raise MetricLogError(f"{path}: line {i + 1}: not a metric record (an object with an integer 'step')")
        records.append(record)
    return records


class MetricLog:
    """Writes metric records to a JSONL file (rank 0 only; other ranks pass enabled=False).

    Args:
        path: the .jsonl file.
        enabled: False makes every call a no-op.
    """

    def __init__(self, path: str | os.PathLike, enabled: bool = True):
        self.path, self.enabled = Path(path), enabled
        self._f: IO[str] | None = None

    def truncate_after(self, step: int) -> None:
        """Drop records with ``step > step`` (and a torn last line): called when resuming."""
        if not self.enabled or not self.path.exists():
            return
        self.close()
        kept = [r for r in read_metric_log(self.path) if int(r.get("step", 0)) <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def write(self, record: dict[str, Any]) -> None:
        """Append one record (must contain "step")."""
        if not self.enabled:
            return
        if self._f is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # An append-only log cannot go through a temp file + rename for every line;
            # it is made consistent on resume by truncate_after (atomic rewrite).
            self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        self._f.write(json.dumps({k: _json_safe(v) for k, v in record.items()}) + "\n")
        self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def make_progress(total: int, initial: int = 0, enabled: bool = True, desc: str = "train") -> tqdm:
    """A tqdm bar with ETA; disabled when ``enabled`` is False or stderr is not a TTY."""
    disable = not enabled or not sys.stderr.isatty()
    return tqdm(total=total, initial=initial, desc=desc, disable=disable, dynamic_ncols=True, smoothing=0.1)


def _duration(seconds: float) -> str:
    """``3725`` -> ``"1h02m"``, ``95`` -> ``"1m35s"``."""
    s = int(round(max(seconds, 0.0)))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class ProgressLines:
    """Plain progress lines on stderr where no progress bar shows (stderr not a TTY, e.g. a batch job's
    log file): at most one every ``every_s`` seconds, the first ``every_s`` after the start (short runs
    stay silent), and each evaluation once the run has been going that long.

    Args:
        name: what the lines are about (the run folder).
        total: the last step.
        enabled: False makes every call a no-op (a bar shows, or not rank 0).
        clock: seconds (tests pass a fake one).
    """

    def __init__(self, name: str, total: int, enabled: bool, every_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic):
        self.name, self.total, self.enabled, self.every_s, self.clock = name, total, enabled, every_s, clock
        self.start = self.last = clock()

    def step(self, step: int, record: dict[str, Any]) -> None:
        """After a logged step (``record``: the metric-log record with loss, lr, s_per_iter, eta_s)."""
        now = self.clock()
        if not self.enabled or now - self.last < self.every_s:
            return
        self.last = now
        print(f"{self.name}: step {step}/{self.total} ({100 * step / max(self.total, 1):.0f}%) "
              f"loss {record.get('loss', float('nan')):.4g} lr {record.get('lr', float('nan')):.3g} "
              f"{record.get('s_per_iter', 0.0):.2f} s/it, {_duration(record.get('eta_s', 0.0))} left",
              file=sys.stderr, flush=True)

    def evaluation(self, step: int, results: dict[str, Any]) -> None:
        """After an evaluation at ``step``."""
        if not self.enabled or self.clock() - self.start < self.every_s:
            return
        shown = ", ".join(f"{k} {v:.4g}" for k, v in results.items() if isinstance(v, (int, float)))
        print(f"{self.name}: evaluation at step {step}: {shown}", file=sys.stderr, flush=True)
