"""Make the ALP curation golden fixture (run once, with the per-phrase implementation of f64674c).

    .venv/bin/python tests/curate/data/make_alps_golden.py

Writes ``alps_golden_input.jsonl.gz`` (synthetic narratives with decimated traces, plus hand-made
edge cases: transcript edits, hyphens, spaCy's multi-token attribute-ruler words, window-boundary
ties, points off the image, odd JSON) and ``alps_golden_output.json.gz`` (for each config of
:data:`CONFIGS`: the bytes of ``alps.jsonl`` and the counts of ``stats.json``).
``tests/curate/test_alps_golden.py`` curates the input with the current code and compares.
"""

from __future__ import annotations

import gzip
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

from omniseg.curate.alps import AlpConfig  # noqa: E402
from omniseg.curate.alps_run import curate_alps  # noqa: E402
from omniseg.data.errors import BadRecords  # noqa: E402
from omniseg.data.formats.narratives import narrative_to_json  # noqa: E402
from omniseg.data.synth.world import SynthConfig, generate_scene  # noqa: E402

CONFIGS = {"default": {}, "t_pad=0,min_points=1": {"t_pad": 0.0, "min_points": 1}, "t_pad=1.5": {"t_pad": 1.5}}
STATS_KEYS = ("narratives", "images_with_narratives", "images", "alps", "unique_phrases", "dropped_phrases",
              "skipped_records", "top_phrases")


def _utts(words: list[str], t0: float = 0.0, dt: float = 0.25) -> list[dict]:
    return [{"utterance": w, "start_time": round(t0 + i * dt, 3), "end_time": round(t0 + (i + 1) * dt, 3)}
            for i, w in enumerate(words)]


def _trace(n: int, t0: float, dt: float, seed: int) -> list[dict]:
    import random

    rng = random.Random(seed)
    return [{"x": round(rng.uniform(-0.1, 1.1), 4), "y": round(rng.uniform(-0.1, 1.1), 4), "t": round(t0 + i * dt, 3)}
            for i in range(n)]


def hand_lines() -> list[str]:
    """Edge cases (image ids "h0".."h13"; "h99" is not in the size table)."""
    out = []

    def add(i, caption, words, traces, **kw):
        obj = {"dataset_id": "test", "image_id": f"h{i}", "annotator_id": 1, "caption": caption,
               "timed_caption": _utts(words, **kw), "traces": traces}
        out.append(json.dumps(obj))

    cap = "A five-pointed star and a red t-shirt near the tall green tree in the background."
    add(0, cap, cap.replace("-", " ").split(), [_trace(80, 0.0, 0.05, 0)])
    # transcript edits: words missing / changed / extra in the utterances
    cap = "There is a black dog and a white cat on the brown sofa."
    add(1, cap, "There is a black hound and cat on the the brown sofa".split(), [_trace(60, 0.0, 0.05, 1)])
    # multi-token attribute-ruler words of en_core_web_sm ("gonna", "gotta", "let's", "y'all", "c'mon")
    cap = "Let's see, the boy is gonna kick the ball and y'all gotta watch the red kite. C'mon, dogs!"
    add(2, cap, cap.split(), [_trace(100, 0.0, 0.05, 2)])
    # window-boundary ties: points exactly at T1 - t_p and T2 + t_p (t_p = 0.5, and 0 / 1.5)
    cap = "A blue cup."
    ts = [-0.25, 0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.75, 2.25, 2.5]
    add(3, cap, ["A", "blue", "cup."], [[{"x": 0.1 * k, "y": 0.05 * k + 0.1, "t": t} for k, t in enumerate(ts)]])
    # several segments, integer coordinates, points off the image
    add(4, "Two orange boxes and one purple ring.", "Two orange boxes and one purple ring.".split(),
        [[{"x": 0, "y": 0, "t": 0}, {"x": 1, "y": 1, "t": 0.3}], _trace(5, 0.4, 0.1, 4), [], _trace(30, 1.0, 0.05, 5)])
    # no traces at all; keys in another order; extra keys
    add(5, "A small yellow bird.", "A small yellow bird.".split(), [])
    add(6, "A small yellow bird.", "A small yellow bird.".split(),
        [[{"t": 0.05 * i, "y": 0.3 + 0.01 * i, "x": 0.2 + 0.02 * i, "extra": 1} for i in range(20)]])
    # non-ASCII and quotes in the caption (escaped JSON), uppercase, repeated phrases
    cap = 'A "RED" café chair, a red chair and a Red Chair.'
    add(7, cap, cap.split(), [_trace(40, 0.0, 0.07, 7)])
    # identical times (zero-length utterances) and overlapping utterances
    cap = "A grey elephant beside a huge rock."
    obj = {"dataset_id": "test", "image_id": "h8", "annotator_id": 1, "caption": cap,
           "timed_caption": [{"utterance": w, "start_time": 1.0, "end_time": 1.0 + (i % 2) * 0.5}
                             for i, w in enumerate(cap.split())], "traces": [_trace(50, 0.0, 0.05, 8)]}
    out.append(json.dumps(obj))
    # caption words never spoken; multi-word utterances; punctuation-only utterances
    add(9, "Nothing matches here: a violet vase.", ["hello", "world"], [_trace(30, 0.0, 0.05, 9)])
    obj = {"dataset_id": "test", "image_id": "h10", "annotator_id": 1, "caption": "In this image, a silver spoon.",
           "timed_caption": [{"utterance": "In this", "start_time": 0.0, "end_time": 0.4},
                             {"utterance": "image,", "start_time": 0.4, "end_time": 0.8},
                             {"utterance": ",", "start_time": 0.8, "end_time": 0.9},
                             {"utterance": "a silver spoon.", "start_time": 0.9, "end_time": 1.6}],
           "traces": [_trace(40, 0.0, 0.05, 10)]}
    out.append(json.dumps(obj))
    # compact JSON separators, whitespace inside the traces, exponent and negative-zero numbers
    obj = {"dataset_id": "test", "image_id": "h11", "annotator_id": 2, "caption": "A pink flower.", "timed_caption": _utts(["A", "pink", "flower."]),
           "traces": [[{"x": 1e-1, "y": -0.0, "t": 0}, {"x": 0.5, "y": 2E-1, "t": 0.2}, {"x": 0.7, "y": 0.6, "t": 0.4},
                       {"x": 0.3, "y": 0.9, "t": 0.6}]]}
    out.append(json.dumps(obj, separators=(",", ":")))
    out.append(json.dumps(obj).replace('"h11"', '"h12"').replace("}, {", "} ,\t{ "))
    # a bad line (NaN in a trace), a blank line, a malformed line, an unknown image
    out.append(json.dumps({**obj, "image_id": "h13", "traces": [[{"x": float("nan"), "y": 0.1, "t": 0.0}]]}))
    out.append("")
    out.append('{"image_id": "h1", "caption": ')
    out.append(json.dumps({**obj, "image_id": "h99"}))
    return out


def synthetic_lines(n: int = 32, keep_every: int = 8) -> list[str]:
    cfg = SynthConfig(seed=0, num_images=n, image_size=128)
    out = []
    for i in range(n):
        rec = generate_scene(cfg, i).record
        if not rec.narratives:
            continue
        obj = narrative_to_json(rec.image_id, rec.narratives[0])
        obj["traces"] = [seg[::keep_every] for seg in obj["traces"]]
        out.append(json.dumps(obj))
    return out


def sizes(lines: list[str]) -> dict[str, list]:
    out = {}
    for line in lines:
        try:
            key = str(json.loads(line)["image_id"])
        except (ValueError, KeyError):
            continue
        if key != "h99":
            out[key] = [key, 160 + len(key), 120]
    return out


def curate(input_path: Path, size_table: dict[str, list], chunk_lines: int = 7) -> dict[str, dict]:
    """Curate the fixture under every config -> {config name: {"alps_jsonl": str, "stats": dict}}."""
    table = {k: tuple(v) for k, v in size_table.items()}
    res = {}
    for name, kw in CONFIGS.items():
        with tempfile.TemporaryDirectory() as tmp:
            stats = curate_alps(input_path, table, tmp, AlpConfig(**kw), workers=1, chunk_lines=chunk_lines,
                                on_bad=BadRecords(policy="skip"), progress=False)
            res[name] = {"alps_jsonl": (Path(tmp) / "alps.jsonl").read_text(encoding="utf-8"),
                         "stats": json.loads(json.dumps({k: stats[k] for k in STATS_KEYS}))}
    return res


def main() -> None:
    lines = synthetic_lines() + hand_lines()
    data = ("\n".join(lines) + "\n").encode("utf-8")
    (HERE / "alps_golden_input.jsonl.gz").write_bytes(gzip.compress(data, mtime=0))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "in.jsonl"
        path.write_bytes(data)
        table = sizes(lines)
        out = {"sizes": table, "results": curate(path, table)}
    (HERE / "alps_golden_output.json.gz").write_bytes(gzip.compress(json.dumps(out, indent=1).encode(), mtime=0))
    for name, r in out["results"].items():
        print(name, r["stats"]["alps"], r["stats"]["dropped_phrases"], r["stats"]["skipped_records"])


if __name__ == "__main__":
    main()
