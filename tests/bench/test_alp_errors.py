"""bench/alp_errors.py (what a run's detections get wrong) and alp_quality of bench/alp_experiments.py (ALP noise)."""

from __future__ import annotations

import json

import pytest

BENCH = ("alp_errors", "alp_experiments", "report_claims")

NAMES = {1: "red circle", 2: "blue ring", 3: "red ring"}
BASE = {1}
# one base object (1), three novel ones (2, 3 of class 3, 4 of class 2 with no detection on it)
OBJECTS = {7: [([0, 0, 10, 10], 1), ([20, 20, 30, 30], 2), ([100, 100, 110, 110], 3), ([200, 200, 210, 210], 2)]}
DETECTIONS = {7: [
    ([0, 0, 10, 10], 0.9, 1),        # right base
    ([20, 20, 30, 30], 0.8, 1),      # base label on the novel "blue ring": neither word kept
    ([21, 21, 30, 30], 0.6, 3),      # IoU 0.81 with it, another novel label, lower score
    ([50, 50, 60, 60], 0.5, 1),      # base label on nothing
    ([0, 0, 10, 25], 0.4, 1),        # IoU 100 / 250 = 0.4 with the base object: a poor box
    ([100, 100, 110, 110], 0.3, 2),  # "blue ring" on a "red ring": a novel label keeping the shape
]}


def test_recall_counts_any_label_and_own_class_per_group(bench):
    r = bench["alp_errors"].recall(OBJECTS, DETECTIONS, BASE)
    assert r["base"] == {"objects": 1, "any_label": 1.0, "own_class": 1.0}
    assert r["novel"] == {"objects": 3, "any_label": round(2 / 3, 4), "own_class": 0.0}


def test_base_labelled_detections_by_what_lies_under_them_in_score_order(bench):
    b = bench["alp_errors"].base_labelled(OBJECTS, DETECTIONS, BASE, tops=(2, 100))
    assert b["2"] == {"detections": 2, "right": 0.5, "novel_object": 0.5, "other_base_object": 0.0, "poor_box": 0.0,
                      "background": 0.0}
    assert b["100"] == {"detections": 4, "right": 0.25, "novel_object": 0.25, "other_base_object": 0.0,
                        "poor_box": 0.25, "background": 0.25}


def test_novel_objects_take_the_label_of_their_best_scoring_detection(bench):
    n = bench["alp_errors"].novel_named(OBJECTS, DETECTIONS, BASE, NAMES)
    third = round(1 / 3, 4)
    assert n == {"objects": 3, "base": third, "base_neither": third, "novel": third, "novel_same_shape": third,
                 "none": third}


def test_alp_quality_centre_inside_and_names(bench, tmp_path):
    from omniseg.data.synth.lexicon import categories

    cats = [c for c in categories() if c.isthing]
    red_circle, blue_ring = cats[0], cats[1]
    world = tmp_path / "world"
    world.mkdir()
    (world / "instances.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "width": 100, "height": 100}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": red_circle.id, "bbox": [0, 0, 20, 20], "area": 400,
                         "iscrowd": 0},
                        {"id": 2, "image_id": 1, "category_id": blue_ring.id, "bbox": [50, 50, 40, 40], "area": 1600,
                         "iscrowd": 0}],
        "categories": [{"id": c.id, "name": c.name} for c in cats]}))
    alps = tmp_path / "alps.jsonl"
    alps.write_text("\n".join(json.dumps(a) for a in [
        # the first object's exact box and class name: IoU 1, centre inside, named
        {"image_id": 1, "phrase": red_circle.name, "box": [0, 0, 20, 20], "box_quality": "approximate"},
        # a box reaching from the second object far to its upper left: best match the second object, centre
        # (45, 45) outside its box [50, 90]
        {"image_id": 1, "phrase": "large azure hoop", "box": [10, 10, 80, 80], "box_quality": "approximate"},
    ]) + "\n")
    q = bench["alp_experiments"].alp_quality(world, alps)
    assert q["alps"] == 2
    assert q["centre_inside_best_match_fraction"] == 0.5
    assert q["phrase_is_class_name_fraction"] == 0.5
    assert abs(q["mean_best_iou"] - (1.0 + 900 / 5600) / 2) < 1e-6
    # only the first ALP is localized (IoU >= 0.5); its phrase is its class name, nearest to itself
    assert q["localized_alps"] == 1 and q["nearest_class_name_right_fraction"] == 1.0


def test_a_missing_run_is_one_line_and_exit_1(bench_error, tmp_path):
    assert "norun" in bench_error("alp_errors", str(tmp_path / "norun"))


def test_report_renders_the_recorded_diagnosis(bench, tmp_path):
    report_claims = bench["report_claims"]
    run = {"run": "/x/alp_fcos_mo_alp_s0",
           "recall": {"base": {"any_label": 0.9, "own_class": 0.6}, "novel": {"any_label": 0.8, "own_class": 0.3}},
           "base_labelled": {"100": {"right": 0.13, "novel_object": 0.65, "other_base_object": 0.2, "poor_box": 0.01,
                                     "background": 0.01}},
           "novel_named": {"right": 0.05, "base": 0.48, "novel": 0.28, "none": 0.19},
           "alps": {"path": "/r/alps_tp025/alps.jsonl", "alps": 10, "localized_alps": 4, "mean_best_iou": 0.34, "centre_inside_best_match_fraction": 0.5,
                    "phrase_is_class_name_fraction": 0.1, "nearest_class_name_right_fraction": 0.25,
                    "novel_covered_iou50_fraction": 0.3}}
    assert report_claims.alp_diagnosis_section(tmp_path) == []  # nothing recorded: no section
    (tmp_path / "alp_errors.json").write_text(json.dumps({"commands": ["python bench/alp_errors.py R"], "runs": [run]}))
    text = "\n".join(report_claims.alp_diagnosis_section(tmp_path))
    assert "| fcos_mo_alp_s0 | 90.0 / 60.0 | 80.0 / 30.0 | 13.0 / 65.0 / 20.0 / 1.0 / 1.0 | 5.0 / 48.0 / 28.0 / 19.0 |" \
        in text
    assert "ALPs `alps_tp025`" in text and "box centre inside that object 50.0%" in text and "right 25.0% of the 4 ALPs" in text


def test_add_keeps_the_earlier_runs_and_replaces_a_run_of_the_same_name(bench, tmp_path, monkeypatch, capsys):
    ae = bench["alp_errors"]
    monkeypatch.setattr(ae, "run_errors", lambda run, alps, top: {"run": run, "scored_here": True})
    out = tmp_path / "e.json"
    out.write_text(json.dumps({"benchmark": "alp_errors", "commands": ["python bench/alp_errors.py /old/alp_a_s0 "
                                                                        "/old/alp_b_s0"],
                               "runs": [{"run": "/old/alp_a_s0"}, {"run": "/old/alp_b_s0"}]}))
    ae.main(["/new/alp_b_s0", "/new/alp_c_s1", "--out", str(out), "--add"])
    d = json.loads(out.read_text())
    assert d["runs"] == [{"run": "/old/alp_a_s0"}, {"run": "/new/alp_b_s0", "scored_here": True},
                         {"run": "/new/alp_c_s1", "scored_here": True}]
    assert d["commands"][0].endswith("/old/alp_b_s0") and d["commands"][1].endswith("alp_c_s1 --out " + str(out) + " --add")
    ae.main(["/new/alp_c_s1", "--out", str(out)])  # without --add the file holds this call's runs alone
    assert [r["run"] for r in json.loads(out.read_text())["runs"]] == ["/new/alp_c_s1"]
    capsys.readouterr()
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"benchmark": "something else"}))
    with pytest.raises(SystemExit, match=f"alp_errors: {other}: not an alp_errors result"):
        ae.main(["/new/alp_c_s1", "--out", str(other), "--add"])


def test_add_without_out_is_one_line(bench_error):
    assert "--add needs --out" in bench_error("alp_errors", "/x/alp_a_s0", "--add")
