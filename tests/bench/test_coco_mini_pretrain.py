"""bench/coco_mini_pretrain.py (issue 12: what pretraining on real photos does for real-photo box->mask): the split,
the jobs, the kept MIM trunk that every machine's seeds start from, and the report section (no training here)."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import pytest

BENCH = ("coco_mini_pretrain", "report_claims")


def _coco(root: Path, n: int = 10) -> Path:
    (root / "annotations").mkdir(parents=True)
    (root / "train2017").mkdir()
    coco = {"images": [{"id": i, "file_name": f"{i}.jpg", "width": 8, "height": 8} for i in range(1, n + 1)],
            "annotations": [{"id": 100 + i, "image_id": i, "category_id": 1, "bbox": [0, 0, 4, 4], "area": 16,
                             "iscrowd": 0} for i in range(1, n + 1)],
            "categories": [{"id": 1, "name": "thing"}]}
    (root / "annotations" / "instances_train2017.json").write_text(json.dumps(coco))
    return root


def test_split_is_disjoint_deterministic_and_pretraining_images_carry_no_labels(bench, tmp_path):
    root = _coco(tmp_path / "coco")
    a = bench["coco_mini_pretrain"].split_coco_mini(root, tmp_path / "a", heldout=3, seed=0)
    b = bench["coco_mini_pretrain"].split_coco_mini(root, tmp_path / "b", heldout=3, seed=0)
    read = {k: json.loads((v / "instances.json").read_text()) for k, v in a.items()}
    ids = {k: {im["id"] for im in d["images"]} for k, d in read.items()}
    assert len(ids["heldout"]) == 3 and len(ids["train"]) == 7 and not ids["heldout"] & ids["train"]
    assert ids["train_images"] == ids["train"] and read["train_images"]["annotations"] == []
    assert {a_["image_id"] for a_ in read["train"]["annotations"]} == ids["train"]
    assert (a["train"] / "images").resolve() == (root / "train2017").resolve()
    assert read["heldout"] == json.loads((b["heldout"] / "instances.json").read_text())


def _args(tmp_path: Path, **kw) -> argparse.Namespace:
    base = {"results": tmp_path / "results", "pretrain_images": "train", "split_seed": 0, "heldout": 20,
            "pretrain_iters": 1000, "parallel": 1, "commit": False, "seeds": [0, 1], "iters": 30, "batch_size": 2,
            "inits": ["scratch", "mim"]}
    return argparse.Namespace(**{**base, **kw})


def test_the_kept_trunk_is_reused_only_for_the_same_study_and_the_same_bytes(bench, tmp_path):
    cm = bench["coco_mini_pretrain"]
    args = _args(tmp_path)
    args.results.mkdir()
    kept = args.results / "pretrain_mim.safetensors"
    kept.write_bytes(b"weights")
    record = {"run": "pretrain_mim", "pretrain_images": "train", "split_seed": 0, "heldout": 20, "pretrain_iters": 1000,
              "manifest": {"sha256": hashlib.sha256(b"weights").hexdigest()}}
    (args.results / "pretrain_mim.json").write_text(json.dumps(record))
    split = {"train_images": tmp_path / "nowhere", "heldout": tmp_path / "nowhere"}
    # reused without pretraining: the runs folder is never touched
    assert cm.pretrain(args, split, tmp_path / "runs") == kept.resolve() and not (tmp_path / "runs").exists()
    with pytest.raises(SystemExit, match="pretrained for .*'heldout': 20.*not .*'heldout': 10"):
        cm.pretrain(_args(tmp_path, heldout=10), split, tmp_path / "runs")
    kept.write_bytes(b"other weights")
    with pytest.raises(SystemExit, match="sha256 is not the one pretrain_mim.json records"):
        cm.pretrain(args, split, tmp_path / "runs")


def test_only_the_mim_rows_start_from_the_trunk_and_every_init_gets_the_same_seeds(bench, tmp_path):
    split = {"train": tmp_path / "train", "heldout": tmp_path / "heldout"}
    jobs = bench["coco_mini_pretrain"].jobs(_args(tmp_path), split, {"mim": tmp_path / "t.safetensors"})
    assert [j["name"] for j in jobs] == ["scratch_s0", "mim_s0", "scratch_s1", "mim_s1"]
    for j in jobs:
        pre = [o for o in j["overrides"] if o.startswith("model.pretrained=")]
        assert pre == ([f"model.pretrained={tmp_path / 't.safetensors'}"] if j["init"] == "mim" else [])
        assert f"train.seed={j['seed']}" in j["overrides"] and f"data.train={split['train']}" in j["overrides"]


def test_report_section_shows_mean_std_per_init_and_the_verdicts(bench, tmp_path):
    rc = bench["report_claims"]
    folder = tmp_path / "coco_mini_pretrain"
    folder.mkdir()
    assert "| scratch | random weights | none yet |" in "\n".join(rc.coco_mini_pretrain_section(tmp_path))
    for seed, (s, m) in enumerate([(0.20, 0.30), (0.21, 0.31), (0.22, 0.32)]):
        for init, v in (("scratch", s), ("mim", m)):
            (folder / f"{init}_s{seed}.json").write_text(json.dumps(
                {"run": f"{init}_s{seed}", "init": init, "seed": seed, "iters": 200, "batch_size": 4,
                 "heldout_images": 20, "split_seed": 0,
                 "eval": {"mask_AP": v, "mask_AP50": 2 * v, "filled_box_AP": 0.1}}))
    (folder / "pretrain_mim.json").write_text(json.dumps(
        {"run": "pretrain_mim", "pretrain_images": "train", "manifest": {
            "sha256": "ab" * 32, "steps": 1000, "final_losses": {"loss_mim": 0.25}, "wall_s": 1500, "command": "c"}}))
    text = "\n".join(rc.coco_mini_pretrain_section(tmp_path))
    assert "| scratch | random weights | 0, 1, 2 | 21.0 ± 1.0 | 42.0 ± 2.0 | 10.0 ± 0.0 |" in text
    assert "| mim | SimMIM on the training photos (images only) | 0, 1, 2 | 31.0 ± 1.0 |" in text
    assert "mim vs scratch (mask AP): 31.0 ± 1.0 (n=3) vs 21.0 ± 1.0 (n=3) -> **better beyond 2 std**" in text
    assert "dense vs scratch (mask AP): – vs 21.0 ± 1.0 (n=3) -> **incomplete**" in text
    assert "scratch's masks vs the filled box (mask AP): 21.0 ± 1.0 (n=3) vs 10.0 ± 0.0 (n=3) -> **better beyond" in text
    assert "1000 steps on the training photos" in text and "loss_mim 0.250, 25 min" in text
    assert "20 held out, 60 for training" in text
