"""The streaming / resumable / multi-process ALP curation driver with bad input, the
``omniseg curate alps`` command and its image-size reader."""

from __future__ import annotations

import json

import pytest

from omniseg.cli import main as cli_main
from omniseg.commands.curate import image_sizes, word_list
from omniseg.curate.alps import AlpConfig, attach_alps
from omniseg.curate.alps_run import ResumeMismatchError, chunk_paths, curate_alps, plan_chunks
from omniseg.data.errors import BadRecordError, BadRecords
from omniseg.data.records import ImageRecord, RecordSet


def test_plan_chunks_streams_lines(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_bytes(b"a\nbb\n\nccc")
    assert [(c.start, c.end, c.first_line, c.num_lines) for c in plan_chunks(p, 2)] == [(0, 5, 1, 2), (5, 9, 3, 2)]
    assert plan_chunks(tmp_path / "x.jsonl", 10)[0].num_lines == 4
    (tmp_path / "e.jsonl").write_bytes(b"")
    assert plan_chunks(tmp_path / "e.jsonl", 3) == []


def test_curate_end_to_end_and_resume(tmp_path, write_narratives):
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


def test_two_workers_give_the_same_output(tmp_path, write_narratives):
    src = tmp_path / "ln.jsonl"
    sizes = write_narratives(src, 6)
    curate_alps(src, sizes, tmp_path / "a", workers=1, chunk_lines=2, progress=False)
    stats = curate_alps(src, sizes, tmp_path / "b", workers=2, chunk_lines=2, progress=False)
    assert stats["alps"] == 6
    assert (tmp_path / "a" / "alps.jsonl").read_text() == (tmp_path / "b" / "alps.jsonl").read_text()


def test_bad_line_error_names_file_and_line(tmp_path, write_narratives):
    src = tmp_path / "ln.jsonl"
    sizes = write_narratives(src, 4, bad_line=3)
    with pytest.raises(BadRecordError, match=r"ln\.jsonl: line 3: malformed JSON"):
        curate_alps(src, sizes, tmp_path / "o1", chunk_lines=2, progress=False)
    with pytest.raises(BadRecordError, match=r"line 3"):  # same through the worker pool
        curate_alps(src, sizes, tmp_path / "o2", workers=2, chunk_lines=2, progress=False)


def test_bad_line_skip_policy_counts(tmp_path, write_narratives):
    src = tmp_path / "ln.jsonl"
    sizes = write_narratives(src, 4, bad_line=2, unknown=True)
    bad = BadRecords(policy="skip")
    stats = curate_alps(src, sizes, tmp_path / "o", chunk_lines=2, on_bad=bad, progress=False)
    assert stats["narratives"] == 4 and stats["alps"] == 4
    assert bad.total == 2 and any("line 2" in e for e in bad.examples)
    assert sum(stats["skipped_records"].values()) == 2


def test_curated_alps_attach_back(tmp_path, write_narratives):
    src = tmp_path / "ln.jsonl"
    sizes = write_narratives(src, 2)
    curate_alps(src, sizes, tmp_path / "o", progress=False)
    rs = RecordSet(records=[ImageRecord(1, "a.png", 200, 100), ImageRecord(2, "b.png", 200, 100)])
    assert attach_alps(rs, tmp_path / "o" / "alps.jsonl") == 2
    inst = rs.records[0].instances[0]
    assert (inst.text, inst.box, inst.box_quality, inst.category_id) == ("red ball", (0.0, 20.0, 60.0, 50.0),
                                                                        "approximate", None)


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


def test_cli(tmp_path, capsys, write_narratives):
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


def test_rerun_after_error_with_skip_policy_resumes(tmp_path, write_narratives):
    src = tmp_path / "ln.jsonl"
    sizes = write_narratives(src, 4, bad_line=4)  # chunk 1 (lines 3-4) is bad, chunk 0 finishes
    out = tmp_path / "o"
    with pytest.raises(BadRecordError, match="line 4"):
        curate_alps(src, sizes, out, chunk_lines=2, progress=False)
    assert chunk_paths(out, 0)[1].exists() and not chunk_paths(out, 1)[1].exists()
    bad = BadRecords(policy="skip")
    stats = curate_alps(src, sizes, out, chunk_lines=2, on_bad=bad, progress=False)
    assert (stats["resumed_chunks"], stats["alps"], bad.total) == (1, 4, 1)


@pytest.mark.parametrize(
    ("flag", "value", "reason"),
    [
        ("--workers", "0", "must be >= 1, got 0"),
        ("--workers", "-3", "must be >= 1, got -3"),
        ("--chunk-lines", "0", "must be >= 1, got 0"),
        ("--min-points", "0", "must be >= 1, got 0"),
        ("--t-pad", "nan", "must be a finite number >= 0, got 'nan'"),
        ("--t-pad", "-0.5", "must be a finite number >= 0, got '-0.5'"),
    ],
)
def test_cli_rejects_out_of_range_numbers(tmp_path, capsys, write_narratives, flag, value, reason):
    src = tmp_path / "ln.jsonl"
    write_narratives(src, 1)
    with pytest.raises(SystemExit) as e:  # argparse's usage error
        cli_main(["curate", "alps", str(src), "--images", str(src), "--out", str(tmp_path / "o"), flag, value])
    assert e.value.code == 2
    assert f"argument {flag}: {reason}" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_bad_paths_are_one_line_errors(tmp_path, capsys, write_narratives):
    src = tmp_path / "ln.jsonl"
    write_narratives(src, 2)
    coco = tmp_path / "i.json"
    coco.write_text(json.dumps({"images": [{"id": i, "width": 200, "height": 100} for i in (1, 2)]}))
    (tmp_path / "file").write_text("x")
    base = ["curate", "alps", "--no-progress"]
    cases = [
        ([str(tmp_path), "--images", str(coco), "--out", str(tmp_path / "o")], f"{tmp_path}: not a regular file"),
        ([str(src), "--images", str(coco), "--out", str(tmp_path / "file")], "file: exists and is not a folder"),
        ([str(src), "--images", str(src), "--out", str(tmp_path / "o")], "ln.jsonl: file: malformed JSON"),
    ]
    coco_no_images = tmp_path / "c.json"
    coco_no_images.write_text(json.dumps({"annotations": []}))
    cases.append(([str(src), "--images", str(coco_no_images), "--out", str(tmp_path / "o")],
                  "c.json: no 'images' list"))
    for argv, message in cases:
        assert cli_main(base + argv) == 1, argv
        err = capsys.readouterr().err
        assert err.startswith("omniseg curate alps: error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()


def test_cli_unknown_model_is_a_usage_error(tmp_path, capsys, write_narratives):
    src = tmp_path / "ln.jsonl"
    write_narratives(src, 1)
    argv = ["curate", "alps", str(src), "--images", str(src), "--out", str(tmp_path / "o"), "--model", "no_such_pkg"]
    assert cli_main(argv) == 2
    assert capsys.readouterr().err.startswith("omniseg curate alps: error: --model: no spaCy English model installed")
    assert not (tmp_path / "o").exists()
