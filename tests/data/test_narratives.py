"""Localized Narratives JSONL: fixtures written by hand in the public format."""

from __future__ import annotations

import json
import os

import pytest

from omniseg.data.errors import BadRecordError, BadRecords
from omniseg.data.formats import narratives as ln
from omniseg.data.formats.narratives import (
    UNKNOWN_IMAGE,
    InvalidNarrative,
    attach_narratives,
    iter_narratives,
    parse_narrative_obj,
    write_narratives_jsonl,
)
from omniseg.data.formats.validation import Invalid, NotRegularFileError
from omniseg.data.records import ImageRecord, Narrative, RecordSet, TracePoint, Utterance

# Two lines in the exact layout of the public coco_train_localized_narratives.jsonl (shortened).
LINE_A = (
    '{"dataset_id": "mscoco_train2017", "image_id": "137576", "annotator_id": 93, '
    '"caption": "In this image there are group of cows.", '
    '"timed_caption": [{"utterance": "In this", "start_time": 0.0, "end_time": 0.4}, '
    '{"utterance": "cows", "start_time": 1.2, "end_time": 1.6}], '
    '"traces": [[{"x": 0.2086, "y": -0.0533, "t": 0.022}, {"x": 1.0125, "y": 0.5, "t": 0.057}], '
    '[{"x": 0.3, "y": 0.4, "t": 1.3}]], '
    '"voice_recording": "coco_train/coco_train_137576_93.ogg"}'
)
LINE_B = (
    '{"dataset_id": "mscoco_train2017", "image_id": "000000000009", "annotator_id": 7, '
    '"caption": "A plate.", "timed_caption": [], "traces": [], "voice_recording": "x.ogg"}'
)


def _records() -> RecordSet:
    return RecordSet([ImageRecord(137576, "a.jpg", 10, 10), ImageRecord(9, "b.jpg", 10, 10)])


def test_iter_reads_exact_values(tmp_path):
    path = tmp_path / "ln.jsonl"
    path.write_text(LINE_A + "\n\n" + LINE_B + "\n")
    items = list(iter_narratives(path, progress=False))
    assert [i for i, _ in items] == ["137576", "000000000009"]
    n = items[0][1]
    assert n.caption == "In this image there are group of cows."
    assert n.annotator_id == 93 and n.dataset_id == "mscoco_train2017"
    assert n.voice_recording == "coco_train/coco_train_137576_93.ogg"
    assert n.timed_caption == [Utterance("In this", 0.0, 0.4), Utterance("cows", 1.2, 1.6)]
    # values outside [0, 1] are kept as they are
    assert n.traces == [
        [TracePoint(0.2086, -0.0533, 0.022), TracePoint(1.0125, 0.5, 0.057)],
        [TracePoint(0.3, 0.4, 1.3)],
    ]
    assert items[1][1].traces == [] and items[1][1].timed_caption == []


def test_streams_line_by_line(tmp_path, monkeypatch):
    """The reader yields the first narrative before a later line is even parsed."""
    path = tmp_path / "ln.jsonl"
    path.write_text(LINE_A + "\n{broken\n")
    it = iter_narratives(path, progress=False)
    image_id, _ = next(it)
    assert image_id == "137576"
    with pytest.raises(BadRecordError, match="line 2"):
        next(it)
    # the reader never calls read() / readlines() on the whole file
    monkeypatch.setattr(json, "load", lambda *a, **k: pytest.fail("json.load used"))
    assert len(list(iter_narratives(tmp_path / "ln.jsonl", on_bad=BadRecords("skip"), progress=False))) == 1


def _mutated(**changes) -> str:
    obj = json.loads(LINE_A)
    for k, v in changes.items():
        if v is None:
            del obj[k]
        else:
            obj[k] = v
    return json.dumps(obj)


BAD_LINES = {
    "json": ('{"dataset_id": ', "malformed JSON"),
    "not object": ("[1, 2]", "not a JSON object"),
    "missing": (_mutated(traces=None, caption=None), "missing key(s) caption, traces"),
    "nan": (_mutated(traces=[[{"x": float("nan"), "y": 0.1, "t": 0.0}]]), "traces[0][0].x is not finite"),
    "time": (
        _mutated(timed_caption=[{"utterance": "a", "start_time": 2.0, "end_time": 1.0}]),
        "end_time 1.0 < start_time 2.0",
    ),
    "point": (_mutated(traces=[[{"x": 0.1, "y": 0.2}]]), "traces[0][0] needs x, y, t"),
    "type": (_mutated(traces=[[{"x": "0.1", "y": 0.2, "t": 0}]]), "is not a number"),
    "huge int": ('{"dataset_id": "d", "image_id": "1", "annotator_id": 1, "caption": "c", "timed_caption": [], '
                 '"traces": [[{"x": 1' + "0" * 400 + ', "y": 0, "t": 0}]]}', "traces[0][0].x is not finite"),
    "digits": ('{"dataset_id": "d", "image_id": ' + "9" * 5000 + "}", "number with too many digits (more than 4300)"),
    "deep": ("[" * 50_000 + "]" * 50_000, "malformed JSON: nested too deeply"),
    "bytes": (b"\xff\xfe{}".decode("latin-1"), "malformed JSON"),
    "dataset_id": (_mutated(dataset_id=5), "dataset_id is not a string (5)"),
    "utterance": (_mutated(timed_caption=[{"utterance": [1], "start_time": 0, "end_time": 1}]),
                  "timed_caption[0].utterance is not a string ([1])"),
    "voice": (_mutated(voice_recording={"a": 1}), "voice_recording is not a string"),
    "empty image id": (_mutated(image_id=""), "image_id is not a string ('')"),
}


@pytest.mark.parametrize("case", list(BAD_LINES))
def test_bad_lines(tmp_path, case):
    line, reason = BAD_LINES[case]
    path = tmp_path / "ln.jsonl"
    path.write_bytes((LINE_B + "\n").encode() + line.encode("latin-1" if case == "bytes" else "utf-8")
                     + ("\n" + LINE_A + "\n").encode())
    with pytest.raises(BadRecordError) as e:
        list(iter_narratives(path, progress=False))
    assert str(path) in str(e.value) and "line 2" in str(e.value) and reason in str(e.value)
    bad = BadRecords("skip")
    assert [i for i, _ in iter_narratives(path, on_bad=bad, progress=False)] == ["000000000009", "137576"]
    assert bad.total == 1


def test_parse_narrative_obj_is_the_readers_parser():
    """The public parser gives what the reader yields, and raises the reader's messages."""
    image_id, n = parse_narrative_obj(json.loads(LINE_A))
    assert image_id == "137576" and n.annotator_id == 93 and n.traces[1] == [TracePoint(0.3, 0.4, 1.3)]
    assert n.timed_caption[1] == Utterance("cows", 1.2, 1.6)
    assert parse_narrative_obj(json.loads(LINE_B))[0] == "000000000009"
    assert parse_narrative_obj(dict(json.loads(LINE_B), image_id=12, annotator_id=None))[0] == "12"
    for case, (line, reason) in BAD_LINES.items():
        if case in ("json", "digits", "deep", "bytes"):
            continue
        with pytest.raises(InvalidNarrative) as e:
            parse_narrative_obj(json.loads(line))
        assert reason in str(e.value)
        # one of the shared reader errors, and still a ValueError (as the private class was)
        assert isinstance(e.value, Invalid) and isinstance(e.value, ValueError)
    more = {
        "caption is not a string": _mutated(caption=5),
        "image_id is not a string (True)": _mutated(image_id=True),
        "timed_caption and traces must be lists": _mutated(traces={"x": 1}),
        "traces[1] is not a list": _mutated(traces=[[], 3]),
        "timed_caption[0] needs utterance, start_time, end_time": _mutated(timed_caption=[{"utterance": "a"}]),
        "timed_caption[0].end_time is not finite (inf)": _mutated(
            timed_caption=[{"utterance": "a", "start_time": 0, "end_time": float("inf")}]
        ),
        "traces[0][0].t is not a number (True)": _mutated(traces=[[{"x": 0, "y": 0, "t": True}]]),
        "annotator_id is not an int or string (1.5)": _mutated(annotator_id=1.5),
    }
    for reason, line in more.items():
        with pytest.raises(InvalidNarrative) as e:
            parse_narrative_obj(json.loads(line))
        assert str(e.value) == reason


def test_attach_matches_str_and_int_ids_and_counts_unknown(tmp_path):
    other = _mutated(image_id="555")
    path = tmp_path / "ln.jsonl"
    path.write_text("\n".join([LINE_A, LINE_B, other, LINE_A]) + "\n")
    rs = _records()
    bad = BadRecords()  # policy "error": unknown images are still only counted skips
    assert attach_narratives(rs, path, on_bad=bad, progress=False) == 3
    assert len(rs.records[0].narratives) == 2 and len(rs.records[1].narratives) == 1
    assert bad.skipped[UNKNOWN_IMAGE] == 1 and "image 555" in bad.examples[0]
    # string ids on the record side too
    rs2 = RecordSet([ImageRecord("137576", "a.jpg", 1, 1)])
    assert attach_narratives(rs2, path, progress=False) == 2
    assert ln.id_key(9) == ln.id_key("000000000009") == "9" and ln.id_key("0a1b") == "0a1b"


def test_round_trip(tmp_path):
    src = tmp_path / "ln.jsonl"
    src.write_text(LINE_A + "\n" + LINE_B + "\n")
    rs = _records()
    attach_narratives(rs, src, progress=False)
    out = tmp_path / "out" / "ln.jsonl"
    assert write_narratives_jsonl(out, rs) == 2
    lines = out.read_text().splitlines()
    assert json.loads(lines[0]) == json.loads(LINE_A)  # byte-for-byte same content as the public line
    assert json.loads(lines[1])["image_id"] == "9"  # written as the record's id, as a string
    rs2 = _records()
    attach_narratives(rs2, out, progress=False)
    assert [r.narratives for r in rs2] == [r.narratives for r in rs]
    assert not list(out.parent.glob(".*.tmp"))


def test_empty_and_writer_rejects_nan(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    assert list(iter_narratives(path, progress=False)) == []
    assert write_narratives_jsonl(tmp_path / "none.jsonl", _records()) == 0
    assert (tmp_path / "none.jsonl").read_text() == ""
    rs = _records()
    rs.records[0].narratives.append(Narrative("c", traces=[[TracePoint(float("nan"), 0.0, 0.0)]]))
    with pytest.raises(ValueError):
        write_narratives_jsonl(tmp_path / "nan.jsonl", rs)
    assert not (tmp_path / "nan.jsonl").exists()


def test_fifo_is_refused_without_blocking(tmp_path, no_hang):
    os.mkfifo(tmp_path / "ln.jsonl")
    with no_hang(5), pytest.raises(NotRegularFileError, match=r"ln\.jsonl: not a regular file \(a FIFO\)"):
        list(iter_narratives(tmp_path / "ln.jsonl", progress=False))
    with pytest.raises(IsADirectoryError, match="is a directory"):
        list(iter_narratives(tmp_path, progress=False))
