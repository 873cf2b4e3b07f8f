"""Bad-input policy shared by every reader.

Readers call :meth:`BadRecords.report` for each invalid record. Under the default
``"error"`` policy that raises :class:`BadRecordError` naming the file and the record;
under ``"skip"`` the record is skipped and counted by reason, and the caller prints the
summary (``omniseg data ... --on-bad-record skip``). Nothing is dropped silently.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

from omniseg.errors import UserError

Policy = Literal["error", "skip"]


class BadRecordError(UserError, ValueError):
    """An input record is invalid. The message names the file and the record."""

    def __init__(self, file: str, record: str, reason: str):
        self.file, self.record, self.reason = str(file), str(record), reason
        super().__init__(f"{file}: {record}: {reason}")


@dataclass
class BadRecords:
    """Collects (or raises on) bad records for one read.

    Attributes:
        policy: "error" raises on the first bad record, "skip" counts and continues.
        skipped: count per reason.
        examples: first few messages, for the report.
    """

    policy: Policy = "error"
    skipped: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    max_examples: int = 20

    def __post_init__(self) -> None:
        if self.policy not in ("error", "skip"):
            raise ValueError(f"on_bad_record must be 'error' or 'skip', got {self.policy!r}")

    def report(self, file: str, record: str, reason: str) -> None:
        """Raise (policy "error") or count the skip (policy "skip")."""
        if self.policy == "error":
            raise BadRecordError(file, record, reason)
        self.skip(file, record, reason)

    def skip(self, file: str, record: str, reason: str) -> None:
        """Count a record that is skipped whatever the policy (e.g. a FIFO in an image folder,
        a narrative of an image outside the set)."""
        self.skipped[reason] += 1
        if len(self.examples) < self.max_examples:
            self.examples.append(str(BadRecordError(file, record, reason)))

    @property
    def total(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        if not self.total:
            return "no bad records"
        lines = [f"skipped {self.total} bad record(s):"]
        lines += [f"  {n} x {reason}" for reason, n in self.skipped.most_common()]
        lines += ["  e.g. " + e for e in self.examples[:5]]
        return "\n".join(lines)
