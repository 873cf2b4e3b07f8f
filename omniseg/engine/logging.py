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
