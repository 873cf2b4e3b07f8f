"""ALP derivation on a hand-made narrative (hand-worked box), line parsing against the narratives
reader, and the ALP JSONL format (the driver is tested in test_alps_run.py)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from omniseg.curate.alps import (
    Alp,
    AlpConfig,
    alp_json,
    alp_line,
    attach_alps,
    narrative_alps,
    points_box,
    read_alps_jsonl,
    window_points,
)
from omniseg.curate.narrative_lines import (
    _utterances,
    parse_line,
    trace_array,
)
from omniseg.curate.pos import TaggedToken
from omniseg.data.errors import BadRecordError, BadRecords
from omniseg.data.formats.narratives import InvalidNarrative, narrative_to_json, parse_narrative_obj
from omniseg.data.records import ImageRecord, RecordSet, Utterance

CAPTION = "A red ball on the grass."


def hand_tokens() -> list[TaggedToken]:
    words = [("A", "DET"), ("red", "ADJ"), ("ball", "NOUN"), ("on", "ADP"), ("the", "DET"), ("grass", "NOUN")]
    out, pos = [], 0
    for w, p in words:
        out.append(TaggedToken(w, pos, p, w.lower(), space_after=w != "grass"))
        pos += len(w) + 1
    out.append(TaggedToken(".", pos - 1, "PUNCT", ".", False))
    assert all(CAPTION[t.start : t.end] == t.text for t in out)
    return out


def test_hand_made_narrative_box(hand_narrative):
    assert hand_narrative().caption == CAPTION
    res = narrative_alps(hand_narrative(), hand_tokens(), 200, 100, AlpConfig())
    assert len(res.alps) == 1
    alp = res.alps[0]
    assert alp.phrase == "red ball"
    assert alp.box == pytest.approx((0.0, 20.0, 60.0, 50.0))
    assert (alp.num_points, alp.t_start, alp.t_end) == (4, 0.25, 1.0)
    assert res.dropped == {"stuff": 1}
    inst = alp.instance()
    assert (inst.text, inst.category_id, inst.box_quality, inst.source) == ("red ball", None, "approximate", "alp")


def test_min_points_and_degenerate_boxes_are_dropped(hand_narrative):
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


def test_parse_line_fast_path_matches_the_reader(hand_narrative):
    obj = narrative_to_json("42", hand_narrative())
    image_id, narrative, points = parse_line(json.dumps(obj).encode())
    ref_id, ref = parse_narrative_obj(obj)
    assert image_id == ref_id == "42" and narrative.caption == ref.caption
    assert narrative.timed_caption == ref.timed_caption
    np.testing.assert_array_equal(points, trace_array(ref))
    for value, message in ((True, r"traces\[1\]\[0\]\.x is not a number"), ("0.5", "is not a number"),
                           (float("nan"), "is not finite")):
        bad = json.loads(json.dumps(obj))
        bad["traces"][1][0]["x"] = value
        with pytest.raises(InvalidNarrative, match=message):
            parse_line(json.dumps(bad).encode())
    bad = json.loads(json.dumps(obj))
    del bad["traces"][0][2]["t"]
    with pytest.raises(InvalidNarrative, match=r"traces\[0\]\[2\] needs x, y, t"):
        parse_line(json.dumps(bad).encode())
    with pytest.raises(InvalidNarrative, match="missing key"):
        parse_line(b'{"image_id": "1"}')


def test_parse_line_errors_are_the_readers(hand_narrative):
    """Every bad line gives parse_line exactly the reader's exception and message (the reader,
    :func:`parse_narrative_obj`, is the reference)."""
    good = narrative_to_json("7", hand_narrative())

    def mutated(edit):
        obj = json.loads(json.dumps(good))
        edit(obj)
        return obj

    cases = [
        [1, 2],
        "text",
        mutated(lambda o: o.pop("traces")),
        mutated(lambda o: o.update(traces={"x": 1})),
        mutated(lambda o: o.update(traces=[{"x": 1}])),
        mutated(lambda o: o["traces"][0].__setitem__(1, [0.1, 0.2, 0.3])),
        mutated(lambda o: o["traces"][1][2].__setitem__("t", None)),
        mutated(lambda o: o["traces"][0][0].__setitem__("y", float("inf"))),
        mutated(lambda o: o["traces"][0][1].__setitem__("y", 10**400)),  # an int beyond the float range
        mutated(lambda o: o["timed_caption"][0].__setitem__("end_time", -1.0)),
        mutated(lambda o: o.update(image_id=True)),
        mutated(lambda o: o.update(caption=3)),
    ]
    for obj in cases:
        with pytest.raises(InvalidNarrative) as ref:
            parse_narrative_obj(obj)
        with pytest.raises(InvalidNarrative) as got:
            parse_line(json.dumps(obj).encode())
        assert str(got.value) == str(ref.value) != ""
    with pytest.raises(json.JSONDecodeError):
        parse_line(b'{"image_id": ')
    # an empty trace list is valid: no points
    image_id, _, points = parse_line(json.dumps(mutated(lambda o: o.update(traces=[[], []]))).encode())
    assert image_id == "7" and points.shape == (0, 3)


def test_timed_caption_fast_path_equals_the_reader(hand_narrative):
    """parse_line builds valid timed captions without the reader's per-utterance loop: same
    narrative, same errors as the reader on fuzzed utterances (types, missing keys, NaN, order)."""
    good = narrative_to_json("7", hand_narrative())
    assert _utterances(good["timed_caption"]) == hand_narrative().timed_caption  # the fast path is taken
    values = [0.5, 2, True, None, "1.0", float("nan"), float("inf"), -0.0, 10**400, [1.0], 3.0]
    rng = random.Random(3)
    n_valid = 0
    for _ in range(400):
        obj = json.loads(json.dumps(good))
        utts = obj["timed_caption"]
        for _ in range(rng.randint(0, 2)):
            u = rng.choice([x for x in utts if isinstance(x, dict)] or [{}])
            r = rng.random()
            if r < 0.5:
                u[rng.choice(["start_time", "end_time"])] = rng.choice(values)
            elif r < 0.6:
                u.pop(rng.choice(["utterance", "start_time", "end_time"]), None)
            elif r < 0.7:
                u["utterance"] = rng.choice([3, None, "ok"])
            elif r < 0.8:
                utts.append(rng.choice([[1], "u", {"utterance": "x", "start_time": 1.0, "end_time": 1.5, "more": 1}]))
            elif r < 0.9:
                obj["timed_caption"] = rng.choice([{}, "x", [], None])
                utts = []
            else:
                obj.pop("caption", None)
        line = json.dumps(obj).encode()
        try:
            want = parse_narrative_obj(obj)
        except InvalidNarrative as e:
            with pytest.raises(InvalidNarrative) as got:
                parse_line(line)
            assert str(got.value) == str(e)
            continue
        n_valid += 1
        image_id, narrative, _ = parse_line(line)
        assert (image_id, narrative.timed_caption, narrative.caption) == (want[0], want[1].timed_caption,
                                                                          want[1].caption)
        assert [type(u.start_time) for u in narrative.timed_caption] == [float] * len(narrative.timed_caption)
    assert n_valid > 50


def test_alp_line_is_json_dumps_of_alp_json():
    rng = random.Random(4)
    phrases = ["red car", 'a "quoted" \\ phrase', "caf\u00e9 \u2603", "tab\there"]
    for _ in range(500):
        box = tuple(rng.choice([0.0, -0.0, 1e-9, 123456.789, rng.uniform(-1, 1e4)]) for _ in range(4))
        alp = Alp(rng.choice(phrases), box, rng.randint(1, 10**6), rng.uniform(0, 1e3), rng.choice([0.0, 1e-7, 12.3456]))
        image_id = rng.choice([0, 391895, 10**30, "000000000002", "\u00e9\""])
        line = rng.randint(1, 10**9)
        assert alp_line(image_id, alp, line) == json.dumps(alp_json(image_id, alp, line)) + "\n"
    odd = Alp("x", (np.float64(1.0), 2, 3.0, 4.0), 3, float("nan"), 1.0)  # (the general path)
    assert alp_line(1, odd, 2) == json.dumps(alp_json(1, odd, 2)) + "\n"


def test_alp_json_round_trip_and_bad_lines(tmp_path, hand_narrative):
    alp = narrative_alps(hand_narrative(), hand_tokens(), 200, 100, AlpConfig()).alps[0]
    row = alp_json(1, alp, 17)
    assert row == {"image_id": 1, "phrase": "red ball", "box": [0.0, 20.0, 60.0, 50.0], "box_quality": "approximate",
                   "source": "alp", "num_points": 4, "t_start": 0.25, "t_end": 1.0, "line": 17}
    path = tmp_path / "alps.jsonl"
    other = dict(row, image_id="000000000002", phrase="dog", box=[1.5, 2, 3, 4.25])
    path.write_text("\n".join(json.dumps(r) for r in (row, other, dict(row, image_id=555))) + "\n\n")
    got = list(read_alps_jsonl(path))
    assert [i for i, _ in got] == [1, "000000000002", 555]
    assert (got[1][1].text, got[1][1].box, got[1][1].source) == ("dog", (1.5, 2.0, 3.0, 4.25), "alp")
    rs = RecordSet(records=[ImageRecord(1, "a.png", 200, 100), ImageRecord(2, "b.png", 200, 100)])
    bad = BadRecords()
    assert attach_alps(rs, path, bad) == 2  # "000000000002" matches image 2; image 555 is not in rs
    inst = rs.records[0].instances[0]
    assert (inst.text, inst.box, inst.box_quality, inst.category_id) == ("red ball", (0.0, 20.0, 60.0, 50.0),
                                                                        "approximate", None)
    assert rs.records[1].instances[0].text == "dog" and bad.total == 1
    (tmp_path / "empty.jsonl").write_text("")
    assert list(read_alps_jsonl(tmp_path / "empty.jsonl")) == []
    bad_lines = {
        '{"image_id": 1, "phrase": "x", "box": [5, 5, 1, 9]}': r"box \[5, 5, 1, 9\] has no area",
        '{"image_id": 1, "phrase": "x"}': "missing key 'box'",
        '[1]': "line is not a JSON object",
        '{"image_id": 1, "phrase": " ", "box": [0, 0, 1, 1]}': "phrase is not a non-empty string",
        '{"image_id": 1, "phrase": "x", "box": [0, 0, 1, NaN]}': "box is not 4 finite numbers",
        '{"image_id": 1, "phrase": "x", "box": [0, 0, true, 1]}': "box is not 4 finite numbers",
        '{"image_id": 1.5, "phrase": "x", "box": [0, 0, 1, 1]}': "image_id is not an int or string",
        '{"image_id": 1, "phrase": "x", "box": [0, 0, 1, 1], "box_quality": "exact"}': "box_quality must be",
        '{"image_id": 1, ': "malformed JSON",
    }
    for line, message in bad_lines.items():
        path.write_text(json.dumps(row) + "\n" + line + "\n")
        with pytest.raises(BadRecordError, match=r"alps\.jsonl: line 2: " + message):
            list(read_alps_jsonl(path))
        skip = BadRecords(policy="skip")
        assert len(list(read_alps_jsonl(path, skip))) == 1 and skip.total == 1


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
