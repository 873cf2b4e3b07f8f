"""bench/report.py: targets stated from the recorded numbers (issue 11's curation rate)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

BENCH = ("report",)
ROOT = Path(__file__).resolve().parents[2]


def test_curation_rate_target_and_its_tagger_bound(bench):
    recorded = json.loads((ROOT / "bench" / "results" / "alp_curation.json").read_text())
    d = copy.deepcopy(recorded)
    d["short"]["rows"] = [{**r, "narratives_per_s": v} for r, v in zip(d["short"]["rows"], (250.0, 410.0))]
    d["tagger_ratio"]["narratives_per_s"]["curation_tagging"] = 300.0
    text = "\n".join(bench["report"].alp_section(d))
    assert "best measured 410.0/s (2 worker(s)) -> NOT met." in text
    assert "Tagging alone runs 300.0/s on one core, so two cores cannot pass 600/s" in text
    d["tagger_ratio"]["narratives_per_s"]["curation_tagging"] = 400.0  # 800/s possible: no tagger bound is claimed
    text = "\n".join(bench["report"].alp_section(d))
    assert "-> NOT met." in text and "cannot pass" not in text
    d["short"]["rows"][1]["narratives_per_s"] = 720.0
    assert "best measured 720.0/s (2 worker(s)) -> met." in "\n".join(bench["report"].alp_section(d))
