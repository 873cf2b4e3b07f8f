"""ALP derivation on a hand-made narrative (hand-worked box), the ALP JSONL format, and the
streaming / resumable / multi-process driver with bad input."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from omniseg.cli import main as cli_main
from omniseg.commands.curate import image_sizes, word_list
from omniseg.curate.alps import (
    AlpConfig,
    ResumeMismatchError,
    attach_alps,
    chunk_paths,
    curate_alps,
    narrative_alps,
    plan_chunks,
    points_box,
    read_alps_jsonl,
    trace_array,
    window_points,
)
from omniseg.curate.pos import TaggedToken
from omniseg.data.errors import BadRecordError, BadRecords
from omniseg.data.formats.narratives import narrative_to_json
from omniseg.data.records import ImageRecord, Narrative, RecordSet, TracePoint, Utterance

CAPTION = "A red ball on the grass."


def hand_narrative() -> Narrative:
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


def hand_tokens() -> list[TaggedToken]:
    words = [("A", "DET"), ("red", "ADJ"), ("ball", "NOUN"), ("on", "ADP"), ("the", "DET"), ("grass", "NOUN")]
    out, pos = [], 0
    for w, p in words:
        out.append(TaggedToken(w, pos, p, w.lower(), space_after=w != "grass"))
        pos += len(w) + 1
    out.append(TaggedToken(".", pos - 1, "PUNCT", ".", False))
    assert all(CAPTION[t.start : t.end] == t.text for t in out)
    return out


def test_hand_made_narrative_box():
    res = narrative_alps(hand_narrative(), hand_tokens(), 200, 100, AlpConfig())
    assert len(res.alps) == 1
    alp = res.alps[0]
    assert alp.phrase == "red ball"
    assert alp.box == pytest.approx((0.0, 20.0, 60.0, 50.0))
    assert (alp.num_points, alp.t_start, alp.t_end) == (4, 0.25, 1.0)
    assert res.dropped == {"stuff": 1}
    inst = alp.instance()
    assert (inst.text, inst.category_id, inst.box_quality, inst.source) == ("red ball", None, "approximate", "alp")


def test_min_points_and_degenerate_boxes_are_dropped():
    res = narrative_alps(hand_narrative(), hand_tokens(), 200, 100, AlpConfig(min_points=5))
    assert res.alps == [] and res.dropped["too_few_points"] == 1
    # t_p = 0: window (0.25, 1.0) holds only the point at t = 0.5 -> a point, not a box
    res = narrative_alps(hand_narrative(), hand_tokens(), 200, 100, AlpConfig(t_pad=0.0, min_points=1))
    assert res.alps == [] and res.dropped["degenerate_box"] == 1
    # a caption whose words were never spoken: not aligned
    n = hand_narrative()
    n.timed_caption = [Utterance("hello", 0.0, 1.0)]
    res = narrative_alps(n, hand_tokens(), 200, 100, AlpConfig())
    assert res.alps == [] and res.dropped["not_aligned"] == 1
    # no trace at all
    n = hand_narrative()
    n.traces = []
    assert trace_array(n).shape == (0, 3)
    assert narrative_alps(n, hand_tokens(), 200, 100, AlpConfig()).dropped["too_few_points"] == 1


def _reference_box(points, t1, t2, t_pad, w, h):
    """Slow obvious reference: loop over points, keep strictly inside the window, clip the box."""
    xs, ys = [], []
    for x, y, t in points:
        if t1 - t_pad < t < t2 + t_pad:
            xs.append(x * w)
            ys.append(y * h)
    if not xs:
        return 0, None
    clip = lambda v, hi: min(max(v, 0.0), hi)  # noqa: E731
    box = (clip(min(xs), w), clip(min(ys), h), clip(max(xs), w), clip(max(ys), h))
    return len(xs), (box if box[2] > box[0] and box[3] > box[1] else None)


def test_window_and_box_against_reference():
    rng = random.Random(1)
    for _ in range(200):
        pts = [(rng.uniform(-0.1, 1.1), rng.uniform(-0.1, 1.1), rng.uniform(0, 10)) for _ in range(rng.randint(0, 30))]
        arr = np.asarray(pts, dtype=np.float64).reshape(-1, 3)
        t1 = rng.uniform(0, 9)
        t2 = t1 + rng.uniform(0, 1)
        w, h = rng.randint(1, 640), rng.randint(1, 480)
        win = window_points(arr, t1, t2, 0.5)
        n, box = _reference_box(pts, t1, t2, 0.5, w, h)
        assert len(win) == n
        got = points_box(win, w, h) if len(win) else None
        assert (got is None) == (box is None)
        if box is not None:
            assert got == pytest.approx(box)


def test_config_validation():
    with pytest.raises(ValueError, match="t_pad"):
        AlpConfig(t_pad=-1)
    with pytest.raises(ValueError, match="min_points"):
        AlpConfig(min_points=0)


# ------------------------------------------------------------------------------ driver


def write_narratives(path, n: int, bad_line: int | None = None, unknown: bool = False) -> dict:
    lines = []
    for i in range(n):
        lines.append(json.dumps(narrative_to_json(str(i + 1), hand_narrative())))
    if bad_line is not None:
        lines.insert(bad_line - 1, '{"image_id": "1", "caption": ')  # truncated JSON
    if unknown:
        lines.append(json.dumps(narrative_to_json("999", hand_narrative())))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {str(i + 1): (i + 1, 200, 100) for i in range(n)}


def test_plan_chunks_streams_lines(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_bytes(b"a\nbb\n\nccc")
    assert [(c.start, c.end, c.first_line, c.num_lines) for c in plan_chunks(p, 2)] == [(0, 5, 1, 2), (5, 9, 3, 2)]
    assert plan_chunks(tmp_path / "x.jsonl", 10)[0].num_lines == 4
    (tmp_path / "e.jsonl").write_bytes(b"")
    assert plan_chunks(tmp_path / "e.jsonl", 3) == []


def test_curate_end_to_end_and_resume(tmp_path):
    src = tmp_path / "ln.jsonl"
    sizes = write_narratives(src, 5)
    out = tmp_path / "out"
    stats = curate_alps(src, sizes, out, workers=1, chunk_lines=2, progress=False)
    assert (stats["narratives"], stats["alps"], stats["images"], stats["unique_phrases"]) == (5, 5, 5, 1)
    assert stats["mean_alps_per_image"] == 1.0 and stats["dropped_phrases"]["stuff"] == 5
    assert (stats["chunks"], stats["resumed_chunks"]) == (3, 0)
    rows = [json.loads(x) for x in (out / "alps.jsonl").read_text().splitlines()]
    assert [r["image_id"] for r in rows] == [1, 2, 3, 4, 5] and rows[0]["box"] == [0.0, 20.0, 60.0, 50.0]
    assert rows[0]["line"] == 1 and rows[4]["line"] == 5
    # finished chunks are skipped: mark chunk 0's output, drop chunk 1's marker (as after a kill)
    f0, _ = chunk_paths(out, 0)
    f0.write_text(f0.read_text().replace("red ball", "SENTINEL"))
    f1, d1 = chunk_paths(out, 1)
    d1.unlink()
    f1.write_text("partial garbage")
    stats = curate_alps(src, sizes, out, workers=1, chunk_lines=2, progress=False)
    assert stats["resumed_chunks"] == 2
    text = (out / "alps.jsonl").read_text()
    assert text.count("SENTINEL") == 2 and "garbage" not in text and text.count("red ball") == 3
    # other settings in the same folder: refused
    with pytest.raises(ResumeMismatchError, match="t_pad"):
        curate_alps(src, sizes, out, AlpConfig(t_pad=1.0), chunk_lines=2, progress=False)


def test_two_workers_give_the_same_output(tmp_path):
    src = tmp_path / "ln.jsonl"
    sizes = write_narratives(src, 6)
    curate_alps(src, sizes, tmp_path / "a", workers=1, chunk_lines=2, progress=False)
    stats = curate_alps(src, sizes, tmp_path / "b", workers=2, chunk_lines=2, progress=False)
    assert stats["alps"] == 6
    assert (tmp_path / "a" / "alps.jsonl").read_text() == (tmp_path / "b" / "alps.jsonl").read_text()


def test_bad_line_error_names_file_and_line(tmp_path):
    src = tmp_path / "ln.jsonl"
    sizes = write_narratives(src, 4, bad_line=3)
    with pytest.raises(BadRecordError, match=r"ln\.jsonl: line 3: malformed JSON"):
        curate_alps(src, sizes, tmp_path / "o1", chunk_lines=2, progress=False)
    with pytest.raises(BadRecordError, match=r"line 3"):  # same through the worker pool
        curate_alps(src, sizes, tmp_path / "o2", workers=2, chunk_lines=2, progress=False)


def test_bad_line_skip_policy_counts(tmp_path):
    src = tmp_path / "ln.jsonl"
    sizes = write_narratives(src, 4, bad_line=2, unknown=True)
    bad = BadRecords(policy="skip")
    stats = curate_alps(src, sizes, tmp_path / "o", chunk_lines=2, on_bad=bad, progress=False)
    assert stats["narratives"] == 4 and stats["alps"] == 4
    assert bad.total == 2 and any("line 2" in e for e in bad.examples)
    assert sum(stats["skipped_records"].values()) == 2


def test_alps_jsonl_round_trip_and_bad_lines(tmp_path):
    src = tmp_path / "ln.jsonl"
    sizes = write_narratives(src, 2)
    curate_alps(src, sizes, tmp_path / "o", progress=False)
    rs = RecordSet(records=[ImageRecord(1, "a.png", 200, 100), ImageRecord(2, "b.png", 200, 100)])
    assert attach_alps(rs, tmp_path / "o" / "alps.jsonl") == 2
    inst = rs.records[0].instances[0]
    assert (inst.text, inst.box, inst.box_quality, inst.category_id) == ("red ball", (0.0, 20.0, 60.0, 50.0),
                                                                        "approximate", None)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image_id": 1, "phrase": "x", "box": [5, 5, 1, 9]}\n')
    with pytest.raises(BadRecordError, match=r"bad\.jsonl: line 1: box .* has no area"):
        list(read_alps_jsonl(bad))


def test_image_sizes_and_word_list(tmp_path):
    coco = tmp_path / "i.json"
    coco.write_text(json.dumps({"images": [{"id": 391895, "width": 640, "height": 360, "file_name": "a.jpg"}],
                                "annotations": [], "categories": []}))
    assert image_sizes(coco) == {"391895": (391895, 640, 360)}
    coco.write_text(json.dumps({"images": [{"id": 5, "width": 0, "height": 360}]}))
    with pytest.raises(BadRecordError, match=r"i\.json: image 5: width/height"):
        image_sizes(coco)
    words = tmp_path / "stuff.txt"
    words.write_text("Sky\n# comment\nwater  # inline\n\n")
    assert word_list(str(words)) == ("sky", "water")
    assert word_list("sky, Grass,,") == ("sky", "grass")


def test_cli(tmp_path, capsys):
    src = tmp_path / "ln.jsonl"
    write_narratives(src, 3)
    coco = tmp_path / "i.json"
    coco.write_text(json.dumps({"images": [{"id": i, "width": 200, "height": 100} for i in (1, 2, 3)]}))
    out = tmp_path / "out"
    argv = ["curate", "alps", str(src), "--images", str(coco), "--out", str(out), "--no-progress"]
    assert cli_main(argv + ["--stuff-list", "ball"]) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["alps"] == 3 and stats["top_phrases"] == [["grass", 3]]  # grass kept, ball dropped
    assert cli_main(argv + ["--t-pad", "1.0"]) == 1  # settings differ from the run in OUT
    assert "other settings" in capsys.readouterr().err
    assert cli_main(["curate", "alps", str(tmp_path / "missing.jsonl"), "--images", str(coco),
                     "--out", str(tmp_path / "o2")]) == 1


def test_parse_line_fast_path_matches_the_reader():
    from omniseg.curate.alps import parse_line
    from omniseg.data.formats.narratives import _Invalid, _parse

    obj = narrative_to_json("42", hand_narrative())
    image_id, narrative, points = parse_line(json.dumps(obj).encode())
    ref_id, ref = _parse(obj)
    assert image_id == ref_id == "42" and narrative.caption == ref.caption
    assert narrative.timed_caption == ref.timed_caption
    np.testing.assert_array_equal(points, trace_array(ref))
    for value, message in ((True, r"traces\[1\]\[0\]\.x is not a number"), ("0.5", "is not a number"),
                           (float("nan"), "is not finite")):
        bad = json.loads(json.dumps(obj))
        bad["traces"][1][0]["x"] = value
        with pytest.raises(_Invalid, match=message):
            parse_line(json.dumps(bad).encode())
    bad = json.loads(json.dumps(obj))
    del bad["traces"][0][2]["t"]
    with pytest.raises(_Invalid, match=r"traces\[0\]\[2\] needs x, y, t"):
        parse_line(json.dumps(bad).encode())
    with pytest.raises(_Invalid, match="missing key"):
        parse_line(b'{"image_id": "1"}')


def test_rerun_after_error_with_skip_policy_resumes(tmp_path):
    src = tmp_path / "ln.jsonl"
    sizes = write_narratives(src, 4, bad_line=4)  # chunk 1 (lines 3-4) is bad, chunk 0 finishes
    out = tmp_path / "o"
    with pytest.raises(BadRecordError, match="line 4"):
        curate_alps(src, sizes, out, chunk_lines=2, progress=False)
    assert chunk_paths(out, 0)[1].exists() and not chunk_paths(out, 1)[1].exists()
    bad = BadRecords(policy="skip")
    stats = curate_alps(src, sizes, out, chunk_lines=2, on_bad=bad, progress=False)
    assert (stats["resumed_chunks"], stats["alps"], bad.total) == (1, 4, 1)


def test_synthetic_world_alps_point_at_the_referred_objects():
    """Small seeded version of bench/alp_curation.py: every thing mention gets an ALP whose box
    overlaps the referred object (bench, 2,000 scenes: recall 0.997, right object 0.88)."""
    from omniseg.curate.pos import load_tagger, tag_texts
    from omniseg.data.synth.world import SynthConfig, generate_scene

    scenes = [generate_scene(SynthConfig(seed=3, num_images=20, image_size=96), i) for i in range(20)]
    scenes = [s for s in scenes if s.record.narratives]
    tokens = tag_texts(load_tagger(), [s.record.narratives[0].caption for s in scenes])
    found = right = total = 0
    for scene, toks in zip(scenes, tokens):
        rec = scene.record
        alps = narrative_alps(rec.narratives[0], toks, rec.width, rec.height, AlpConfig()).alps
        for m in scene.mentions:
            if m.target[0] != "thing":
                assert not any(a.t_start >= m.start_time and a.t_end <= m.end_time for a in alps)  # stuff dropped
                continue
            total += 1
            hit = [a for a in alps if a.t_start < m.end_time and a.t_end > m.start_time]
            found += bool(hit)
            if hit:
                box = rec.instances[int(m.target[1])].box
                ix = min(hit[0].box[2], box[2]) - max(hit[0].box[0], box[0])
                iy = min(hit[0].box[3], box[3]) - max(hit[0].box[1], box[1])
                right += ix > 0 and iy > 0
    assert total > 30
    assert found / total >= 0.95 and right / total >= 0.85
