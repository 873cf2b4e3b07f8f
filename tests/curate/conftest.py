"""Shared fixtures of the curation tests: a hand-made narrative and a narratives JSONL writer."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from omniseg.data.formats.narratives import narrative_to_json
from omniseg.data.records import Narrative, TracePoint, Utterance

CAPTION = "A red ball on the grass."


def make_hand_narrative() -> Narrative:
    """'A red ball on the grass.' on a 200 x 100 image.

    "red ball" spans utterances [0.25, 0.5] and [0.5, 1.0]: T1 = 0.25, T2 = 1.0; with t_p = 0.5 the
    window is the open interval (-0.25, 1.5). Points inside it (x, y normalized):
    (0.10, 0.20), (0.30, 0.25), (0.20, 0.50), (-0.05, 0.40) -> pixels x: 20, 60, 40, -10 -> clipped
    [0, 60]; y: 20, 25, 50, 40 -> [20, 50]. Hand-worked box: (0, 20, 60, 50) from 4 points.
    """
    return Narrative(
        caption=CAPTION,
        timed_caption=[
            Utterance("A", 0.0, 0.25), Utterance("red", 0.25, 0.5), Utterance("ball", 0.5, 1.0),
            Utterance("on the", 1.0, 1.25), Utterance("grass.", 1.25, 2.0),
        ],
        traces=[
            [TracePoint(0.9, 0.9, -0.25), TracePoint(0.10, 0.20, 0.0), TracePoint(0.30, 0.25, 0.5),
             TracePoint(0.20, 0.50, 1.0)],
            [TracePoint(-0.05, 0.40, 1.25), TracePoint(0.95, 0.95, 1.5), TracePoint(0.8, 0.1, 2.0)],
        ],
        annotator_id=7,
        dataset_id="test",
    )


def write_narratives_file(path: Path, n: int, bad_line: int | None = None, unknown: bool = False) -> dict:
    """``n`` copies of the hand narrative for images "1".."n" (plus a truncated line at ``bad_line``
    and one narrative of the unknown image "999"); returns the image sizes (all 200 x 100)."""
    lines = []
    for i in range(n):
        lines.append(json.dumps(narrative_to_json(str(i + 1), make_hand_narrative())))
    if bad_line is not None:
        lines.insert(bad_line - 1, '{"image_id": "1", "caption": ')  # truncated JSON
    if unknown:
        lines.append(json.dumps(narrative_to_json("999", make_hand_narrative())))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {str(i + 1): (i + 1, 200, 100) for i in range(n)}


@pytest.fixture
def hand_narrative() -> Callable[[], Narrative]:
    """Factory of fresh copies of :func:`make_hand_narrative` (tests mutate them)."""
    return make_hand_narrative


@pytest.fixture
def write_narratives() -> Callable[..., dict]:
    return write_narratives_file
