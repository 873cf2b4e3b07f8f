"""Bad-record policy: raise naming file + record, or count skips by reason."""

from __future__ import annotations

import pytest

from omniseg.data.errors import BadRecordError, BadRecords


def test_error_policy_raises_with_file_and_record() -> None:
    bad = BadRecords()
    assert bad.policy == "error"
    with pytest.raises(BadRecordError) as info:
        bad.report("ann/instances.json", "annotation #3 (id=17)", "bbox has zero width")
    err = info.value
    assert str(err) == "ann/instances.json: annotation #3 (id=17): bbox has zero width"
    assert (err.file, err.record, err.reason) == ("ann/instances.json", "annotation #3 (id=17)", "bbox has zero width")
    assert isinstance(err, ValueError)
    assert bad.total == 0 and bad.examples == []


def test_error_message_stringifies_paths() -> None:
    from pathlib import Path

    err = BadRecordError(Path("/d/x.json"), 5, "why")  # type: ignore[arg-type]
    assert (err.file, err.record) == ("/d/x.json", "5")
    assert str(err) == "/d/x.json: 5: why"


def test_skip_policy_counts_per_reason() -> None:
    bad = BadRecords(policy="skip")
    assert bad.summary() == "no bad records"
    bad.report("a.json", "annotation #0", "unknown image id 9")
    bad.report("a.json", "annotation #1", "bad bbox")
    bad.report("b.json", "annotation #2", "unknown image id 9")
    assert bad.total == 3
    assert dict(bad.skipped) == {"unknown image id 9": 2, "bad bbox": 1}
    assert bad.examples == [
        "a.json: annotation #0: unknown image id 9",
        "a.json: annotation #1: bad bbox",
        "b.json: annotation #2: unknown image id 9",
    ]
    assert bad.summary() == (
        "skipped 3 bad record(s):\n"
        "  2 x unknown image id 9\n"
        "  1 x bad bbox\n"
        "  e.g. a.json: annotation #0: unknown image id 9\n"
        "  e.g. a.json: annotation #1: bad bbox\n"
        "  e.g. b.json: annotation #2: unknown image id 9"
    )


def test_examples_capped_but_counts_complete() -> None:
    bad = BadRecords(policy="skip", max_examples=2)
    for i in range(7):
        bad.report("f.csv", f"line {i + 2}", "too few fields")
    assert bad.total == 7
    assert bad.examples == ["f.csv: line 2: too few fields", "f.csv: line 3: too few fields"]
    # the summary shows at most 5 examples even when more are kept
    many = BadRecords(policy="skip")
    for i in range(9):
        many.report("g", f"r{i}", "x")
    assert many.summary().count("e.g.") == 5
    assert many.summary().splitlines()[:2] == ["skipped 9 bad record(s):", "  9 x x"]


@pytest.mark.parametrize("policy", ["ignore", "", "ERROR", None])
def test_invalid_policy_rejected(policy) -> None:
    with pytest.raises(ValueError, match="on_bad_record must be 'error' or 'skip'"):
        BadRecords(policy=policy)  # type: ignore[arg-type]


def test_instances_do_not_share_counters() -> None:
    a, b = BadRecords(policy="skip"), BadRecords(policy="skip")
    a.report("f", "r", "why")
    assert b.total == 0 and b.examples == []
