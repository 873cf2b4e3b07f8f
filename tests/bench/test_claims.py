"""bench/claims.py, bench/yardstick.py, bench/report_claims.py: turning recorded runs into mean +- std,
verdicts and the report (the training itself is not tested here)."""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


# imported by the `bench` fixture (tests/bench/conftest.py)
BENCH = ("claims", "alp_experiments", "yardstick", "report_claims", "experiment_runner")


def test_mean_std_is_the_sample_std(bench):
    values = [0.31, 0.27, 0.35]
    m, s = bench["claims"].mean_std(values)
    assert m == pytest.approx(statistics.mean(values)) and s == pytest.approx(statistics.stdev(values))
    assert bench["claims"].mean_std([0.4]) == (0.4, 0.0)


def _run(row, seed, value, metric="mask_AP_B"):
    return {"row_id": row, "seed": seed, metric: value}


def test_aggregate_groups_by_row_and_skips_missing_values(bench):
    results = {"a0": _run("a", 0, 0.2), "a1": _run("a", 1, 0.4), "b0": _run("b", 0, float("nan")),
               "b1": _run("b", 1, None), "c0": {"row_id": "c", "seed": 0}}
    agg = bench["claims"].aggregate(results, "mask_AP_B")
    assert set(agg) == {"a"}
    assert agg["a"]["mean"] == pytest.approx(0.3) and agg["a"]["std"] == pytest.approx(math.sqrt(0.02))
    assert agg["a"]["n"] == 2 and agg["a"]["seeds"] == [0, 1]


@pytest.mark.parametrize(("better", "baseline", "expected"), [
    ((0.30, 0.01, 3), (0.20, 0.01, 3), "reproduced"),        # 0.10 > 2 * 0.01
    ((0.21, 0.01, 3), (0.20, 0.01, 3), "within noise"),      # 0.01 < 0.02
    ((0.20, 0.03, 3), (0.25, 0.01, 3), "within noise"),      # -0.05 within 2 * 0.03 (the larger std)
    ((0.10, 0.01, 3), (0.25, 0.01, 3), "not reproduced"),
    ((0.30, 0.01, 2), (0.20, 0.01, 3), "incomplete"),        # fewer than 3 seeds
])
def test_verdict_uses_two_std_of_the_noisier_row(bench, better, baseline, expected):
    stats = [{"mean": m, "std": s, "n": n} for m, s, n in (better, baseline)]
    assert bench["claims"].verdict(*stats) == expected
    assert bench["claims"].verdict(None, stats[1]) == "incomplete"


@pytest.mark.parametrize(("better", "baseline", "floor", "expected"), [
    ((0.30, 0.0, 1), (0.25, 0.01, 3), 0.02, "reproduced"),      # 0.05 > 2 x max(0, 0.01, floor 0.02)
    ((0.30, 0.0, 1), (0.27, 0.01, 3), 0.02, "within noise"),    # 0.03 < 0.04: the floor, not the 0 of one seed
    ((0.30, 0.03, 2), (0.25, 0.01, 3), 0.02, "within noise"),   # 0.05 < 2 x 0.03 (a row's own std above the floor)
    ((0.20, 0.0, 1), (0.25, 0.0, 1), 0.02, "not reproduced"),
    ((0.30, 0.0, 1), (0.25, 0.0, 1), 0.0, None),                # no noise estimate at all: no hint
])
def test_verdict_so_far_floors_the_noise_and_needs_no_three_seeds(bench, better, baseline, floor, expected):
    stats = [{"mean": m, "std": s, "n": n} for m, s, n in (better, baseline)]
    assert bench["claims"].verdict_so_far(*stats, floor) == expected
    assert bench["claims"].verdict_so_far(stats[0], None, floor) is None


def test_verdicts_read_recorded_runs(bench, tmp_path):
    folder = tmp_path / "maskx"
    folder.mkdir()
    for seed, (t, a) in enumerate([(0.30, 0.20), (0.31, 0.21), (0.29, 0.19)]):
        (folder / f"t{seed}.json").write_text(json.dumps(_run("voc_ab_transfer_mlp", seed, t)))
        (folder / f"a{seed}.json").write_text(json.dumps(_run("voc_ab_class_agnostic", seed, a)))
    by = {v["claim"]: v for v in bench["claims"].verdicts(tmp_path)}
    assert by["maskx_transfer_vs_agnostic_ab"]["verdict"] == "reproduced"
    assert by["maskx_transfer_vs_agnostic_ba"]["verdict"] == "incomplete"
    assert by["alp_mrcnn_alp_vs_masks_only"]["verdict"] == "incomplete"  # no alp folder at all


def test_maskx_jobs_share_one_detector_per_seed(bench, tmp_path):
    import argparse

    args = argparse.Namespace(runs="runs/claims", seeds=[0, 1, 2], pretrained="p.safetensors", iters=100,
                              stage2_iters=10, train_images=8, val_images=4, results=str(tmp_path))
    kept = tmp_path / "maskx" / "detectors" / "maskx_detector_s1.safetensors"
    kept.parent.mkdir(parents=True)
    kept.write_bytes(b"")  # seed 1's detector is kept (recorded on another machine): its rows need no run folder
    jobs = bench["claims"].maskx_jobs(args)
    assert len(jobs) == 3 * 5 and len({j["name"] for j in jobs}) == 15
    for j in jobs:
        assert f"train.seed={j['seed']}" in j["overrides"] and "model.pretrained=p.safetensors" in j["overrides"]
        if j["name"].startswith("maskx_detector_"):
            assert j["after"] is None
            continue
        assert j["after"] == (None if j["seed"] == 1 else f"maskx_detector_s{j['seed']}")
        path = tmp_path / "maskx" / "detectors" / f"maskx_detector_s{j['seed']}.safetensors"
        assert f"model.detector_init={path}" in j["overrides"]


def test_alp_mpnet_rows_set_the_encoders_embedding_width(bench):
    import argparse

    from omniseg.recipes.table import load_experiment

    args = argparse.Namespace(runs="runs/claims", seeds=[0, 1], pretrained="p.safetensors", iters=100,
                              stage2_iters=10, train_images=8, val_images=4, mpnet=True, tpad=False,
                              synonym_vocabularies=3)
    jobs = bench["claims"].alp_jobs(args)
    mpnet = [j for j in jobs if j["row"].endswith("_mpnet")]
    assert {j["row"] for j in mpnet} == {"fcos_mo_alp_mpnet", "fcos_mo_oracle_mpnet"} and len(jobs) == 2 * 6
    for j in jobs:  # all-mpnet-base-v2 gives 768-d embeddings, MiniLM 384-d (a mismatch stops the run at start)
        _, cfg = load_experiment(bench["alp_experiments"].CONFIGS[j["model"]], j["overrides"])
        assert (cfg.text.encoder, cfg.model.embed_dim) == (("mpnet", 768) if j in mpnet else ("minilm", 384))


def test_alp_tpad_rows_train_on_the_tpad_alps_and_the_others_do_not(bench):
    import argparse

    from omniseg.recipes.table import load_experiment

    args = argparse.Namespace(runs="runs/claims", seeds=[0], pretrained="p.safetensors", iters=100, stage2_iters=10,
                              train_images=8, val_images=4, mpnet=False, tpad=True, synonym_vocabularies=3)
    jobs = bench["claims"].alp_jobs(args)
    assert [j["row"] for j in jobs] == ["mrcnn_masks_only", "mrcnn_alp", "fcos_mo_alp", "fcos_mo_oracle",
                                        "mrcnn_alp_tp025", "fcos_mo_alp_tp025"]
    for j in jobs:
        _, cfg = load_experiment(bench["alp_experiments"].CONFIGS[j["model"]], j["overrides"])
        assert sum(o.startswith("alp.path=") for o in j["overrides"]) <= 1
        want = {"mrcnn_masks_only": "", "fcos_mo_oracle": ""}.get(j["row"], "runs/claims/alps/alps.jsonl")
        if j["row"].endswith("_tp025"):
            want = "runs/claims/alps_tp025/alps.jsonl"
        assert cfg.alp.path == want, j["row"]


def test_kept_detector_holds_the_detector_weights_and_loads_into_a_fresh_model(bench, tmp_path):
    import torch

    from omniseg.engine.checkpoint import save_checkpoint
    from omniseg.recipes.maskx_rcnn import load_detector

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.detector, self.mask_head = torch.nn.Linear(3, 2), torch.nn.Linear(2, 2)

    trained = Model()
    save_checkpoint(tmp_path / "run" / "stage1" / "checkpoints", 7, model=trained)
    out = bench["claims"].keep_detector(tmp_path / "run" / "stage1", tmp_path / "kept" / "d.safetensors")
    from safetensors.torch import load_file

    assert sorted(load_file(out)) == ["detector.bias", "detector.weight"]
    fresh = Model()
    mask_before = fresh.mask_head.weight.clone()
    load_detector(fresh, str(out))
    assert torch.equal(fresh.detector.weight, trained.detector.weight)
    assert torch.equal(fresh.mask_head.weight, mask_before)


def test_yardstick_curve_reads_the_evaluations(bench, tmp_path):
    lines = [{"step": 20, "loss": 2.0, "s_per_iter": 0.5}, {"step": 40, "loss": 1.5, "s_per_iter": 0.7},
             {"step": 40, "eval/box_AP": 0.1, "eval/mask_AP": 0.08, "eval/box_AP50": 0.2},
             {"step": 60, "loss": 1.2, "s_per_iter": 0.9}, {"step": 60, "eval/box_AP": 0.2, "eval/mask_AP": 0.15}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    curve = bench["yardstick"].curve(tmp_path)
    assert [p["step"] for p in curve] == [40, 60]
    assert [p["box_AP"] for p in curve] == [0.1, 0.2] and curve[0]["box_AP50"] == 0.2 and curve[1]["mask_AP50"] is None
    assert curve[0]["s_per_iter"] == pytest.approx(0.6) and curve[1]["s_per_iter"] == pytest.approx(0.7)


def test_report_renders_recorded_yardstick_runs_and_says_what_is_missing(bench, tmp_path):
    rc = bench["report_claims"]
    empty = rc.sections(tmp_path)
    assert any("no run recorded yet" in line for line in empty)
    folder = tmp_path / "yardstick"
    folder.mkdir()
    run = {"run": "oracle_pretrained_s0", "init": "pretrained", "seed": 0, "wall_s": 1800.0, "iters": 60,
           "train_images": 8, "val_images": 4, "machine": "m", "curve": [
               {"step": 30, "box_AP": 0.2, "mask_AP": 0.15, "s_per_iter": 0.5},
               {"step": 60, "box_AP": 0.31, "mask_AP": 0.24, "s_per_iter": 0.5}]}
    run["final"] = run["curve"][-1]
    keys = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    run["analysis"] = {"box": dict.fromkeys(keys, 0.25), "mask": dict.fromkeys(keys, 0.2),
                       "class_agnostic_box": dict.fromkeys(keys, 0.5),
                       "confusions": {"min_score": 0.3, "detections": 10, "localized_fraction": 0.9, "class": 0.5,
                                      "colour_only": 0.3, "shape_only": 0.1, "neither": 0.1}}
    (folder / "oracle_pretrained_s0.json").write_text(json.dumps(run))
    text = "\n".join(rc.yardstick_section(tmp_path))
    assert "| oracle_pretrained_s0 | pretrained | 0 | 31.0 | 24.0 |" in text and "| 60 of 60 |" in text
    assert "| met | NOT met |" in text  # 31.0 >= 30 box AP; 24.0 < 25 mask AP
    assert "| oracle_pretrained_s0 | 25.0 | 25.0 | 25.0 | 25.0 | 25.0 | 50.0 | 50.0 | 20.0 | 20.0 | 20.0 |" in text
    assert "| oracle_pretrained_s0 | 10 | 90.0% | 50.0% | 30.0% | 10.0% | 10.0% |" in text
    assert (folder / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_record_result_writes_json_atomically(bench, tmp_path):
    path = tmp_path / "sub" / "r.json"
    bench["experiment_runner"].record_result(path, {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}
    assert bench["experiment_runner"].read_results(path.parent) == {"r": {"a": 1}}
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]


def test_record_result_commits_into_the_repository_holding_the_file(bench, tmp_path, monkeypatch):
    import subprocess

    repo = tmp_path / "other"
    repo.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "root"], cwd=repo, check=True)
    (repo / "res").mkdir()
    extra = repo / "res" / "w.bin"
    extra.write_bytes(b"w")
    for k in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL"):
        monkeypatch.setenv(k, "t")
    bench["experiment_runner"].record_result(repo / "res" / "r.json", {"a": 1}, commit=True, extra=[extra])
    files = subprocess.run(["git", "show", "--name-only", "--format=", "HEAD"], cwd=repo, capture_output=True,
                           text=True, check=True).stdout.split()
    assert sorted(files) == ["res/r.json", "res/w.bin"]


def test_yardstick_analysis_of_perfect_and_mislabelled_predictions(bench, tmp_path):
    import dataclasses

    from omniseg.data.formats.coco import write_coco_results
    from omniseg.data.records import RecordSet
    from omniseg.recipes.data import open_source

    gt, _ = open_source("synth", 3, 1000, 256, progress=False)
    wrong = {c.id: c.id % 80 + 1 for c in gt.categories if c.isthing}  # every class -> another class
    for name, relabel in (("right", lambda i: i.category_id), ("wrong", lambda i: wrong[i.category_id])):
        records = [dataclasses.replace(r, instances=[dataclasses.replace(i, score=1.0, category_id=relabel(i))
                                                     for i in r.instances]) for r in gt.records]
        (tmp_path / name).mkdir()
        write_coco_results(tmp_path / name / "val_predictions.json", RecordSet(records=records, categories=gt.categories))
    right = bench["yardstick"].analyse(tmp_path / "right", 3)
    assert right["box"]["AP"] == pytest.approx(1.0) and right["mask"]["AP"] == pytest.approx(1.0)
    assert right["confusions"]["class"] == 1.0 and right["confusions"]["localized_fraction"] == 1.0
    mislabelled = bench["yardstick"].analyse(tmp_path / "wrong", 3)
    assert mislabelled["box"]["AP"] == pytest.approx(0.0)  # right places, wrong classes
    assert mislabelled["class_agnostic_box"]["AP"] == pytest.approx(1.0)
    c = mislabelled["confusions"]
    # ids are shape-major, 8 colours per shape: id -> id + 1 keeps the shape except for the 8th colour
    names = {cat.id: cat.name.split(" ") for cat in gt.categories if cat.isthing}
    objects = [i.category_id for r in gt.records for i in r.instances]
    same_shape = sum(names[i][1] == names[wrong[i]][1] for i in objects) / len(objects)
    assert c["class"] == 0.0 and c["shape_only"] == pytest.approx(same_shape)
    assert c["shape_only"] + c["colour_only"] + c["neither"] == pytest.approx(1.0)


def test_record_partial_keeps_only_unfinished_curves(bench, tmp_path, monkeypatch):
    ys = bench["yardstick"]
    monkeypatch.setattr(ys, "RESULTS", tmp_path / "results")
    runs = tmp_path / "runs"
    (runs / "oracle_scratch_s0").mkdir(parents=True)
    (runs / "oracle_scratch_s0" / "metrics.jsonl").write_text(
        json.dumps({"step": 10, "loss": 1.0, "s_per_iter": 0.5}) + "\n"
        + json.dumps({"step": 10, "eval/box_AP": 0.05, "eval/mask_AP": 0.04}) + "\n")
    monkeypatch.setattr(sys, "argv", ["yardstick.py", "--inits", "scratch", "--runs", str(runs), "--iters", "20",
                                      "--record-partial"])
    ys.main()
    rec = json.loads((tmp_path / "results" / "oracle_scratch_s0.json").read_text())
    assert rec["partial"] is True and rec["final"]["step"] == 10 and rec["wall_s"] is None
    assert "train.max_iter=20" in rec["command"]
    (runs / "oracle_scratch_s0" / "wall_s.txt").write_text("12.0")  # finished: --record-partial leaves it
    (tmp_path / "results" / "oracle_scratch_s0.json").unlink()
    ys.main()
    assert not (tmp_path / "results" / "oracle_scratch_s0.json").exists()


def test_causes_read_the_diagnostics_of_a_claim_that_is_not_reproduced(bench, tmp_path):
    rc = bench["report_claims"]
    folder = tmp_path / "claims" / "maskx"
    folder.mkdir(parents=True)
    # end to end within noise (0.01 < 2 * 0.01 std), on the true boxes reproduced (0.10 > 2 * 0.01)
    for seed, (t, a, gt, ga) in enumerate([(0.21, 0.20, 0.60, 0.50), (0.20, 0.19, 0.61, 0.51), (0.22, 0.21, 0.59, 0.49)]):
        for row, m, g in (("voc_ab_transfer_mlp", t, gt), ("voc_ab_class_agnostic", a, ga)):
            (folder / f"{row}_{seed}.json").write_text(json.dumps(
                {"row_id": row, "seed": seed, "mask_AP_B": m, "given_box_mask_AP_B": g, "box_AP_B": 0.3}))
    assert rc.causes(tmp_path) and not rc.causes(tmp_path / "nothing")
    line = next(x for x in rc.causes(tmp_path) if "voc A->B" in x)
    assert 'maskx-rcnn Table 2)" (within noise): on the true boxes of B' in line
    assert "voc_ab_transfer_mlp 60.0 ± 1.0 (n=3)" in line
    assert "50.0 ± 1.0 (n=3) (reproduced)" in line and "the difference is there in the mask head" in line
    # an ALP claim: FCOS-MO finds the novel objects as often as Mask R-CNN* + ALPs but names fewer right
    folder = tmp_path / "claims" / "alp"
    folder.mkdir()
    for seed in range(3):
        for row, v in (("fcos_mo_alp", 0.05 + 0.01 * seed), ("mrcnn_alp", 0.15 + 0.01 * seed)):
            (folder / f"{row}_{seed}.json").write_text(json.dumps({"row_id": row, "seed": seed, "mask_AP50_novel": v}))
    assert any("no diagnostic recorded" in x and "FCOS-MO uses ALPs better" in x for x in rc.causes(tmp_path))

    def err(run, any_label, own, base):
        return {"run": run, "recall": {"novel": {"any_label": any_label, "own_class": own}}, "novel_named": {"base": base}}

    runs = [err("/r/alp_fcos_mo_alp_s0", 0.80, 0.40, 0.5), err("/r/alp_fcos_mo_alp_s2", 0.84, 0.42, 0.4),
            err("/r/alp_mrcnn_alp_s1", 0.85, 0.55, 0.3)]
    (tmp_path / "alp_errors.json").write_text(json.dumps({"command": "c", "runs": runs}))
    line = next(x for x in rc.causes(tmp_path) if "FCOS-MO uses ALPs better" in x)
    assert "(not reproduced): novel objects with a detection of any label 82.0% vs 85.0%" in line
    assert "of their own class 41.0% vs 55.0%, named with a base class 45.0% vs 30.0%" in line
    assert "fcos_mo_alp over 2 run(s), mrcnn_alp over 1" in line and "names fewer of them right" in line
