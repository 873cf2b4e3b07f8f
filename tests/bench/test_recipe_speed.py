"""bench/recipe_speed.py: the summary arithmetic, the inference score cuts, and one tiny end-to-end run per
smoke config (a child process trains 1 + 2 steps and predicts 1 + 1 images)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from omniseg.recipes.contract import RunInfo, categories_info
from omniseg.recipes.table import load_experiment

ROOT = Path(__file__).resolve().parents[2]

# imported by the `bench` fixture (tests/bench/conftest.py)
BENCH = ("recipe_speed",)


@pytest.fixture(scope="module")
def recipe_speed(bench):
    return bench["recipe_speed"]


def test_p90_is_nearest_rank(recipe_speed):
    assert recipe_speed.p90([5.0, 1.0, 2.0, 3.0, 4.0, 6.0, 7.0, 8.0, 9.0, 10.0]) == 9.0
    assert recipe_speed.p90([3.0, 1.0]) == 3.0 and recipe_speed.p90([2.0]) == 2.0


def test_summarize_medians_and_images_per_second(recipe_speed):
    raw = {"threads": 2, "step_s": [3.0, 1.0, 2.0], "step_cpu_s": [4.0, 4.0, 5.0], "data_s": [0.5, 0.1, 0.3],
           "infer_s": [0.2, 0.4], "detections": [3, 3], "setup_s": 1.0, "rss_setup_mib": 10.0, "rss_train_mib": 20.0,
           "rss_infer_mib": 30.0, "params": 7, "trainable_params": 5, "torch_threads": 2, "batch_size": 4}
    r = recipe_speed.summarize(raw)
    assert r["s_per_iter"] == 2.0 and r["s_per_iter_p90"] == 3.0 and r["images_per_s"] == 2.0
    assert r["data_s_per_iter"] == 0.3 and r["cpu_s_per_iter"] == 4.0 and r["s_per_image"] == pytest.approx(0.3)
    assert r["n_steps"] == 3 and r["n_images"] == 2
    assert recipe_speed.summarize({**raw, "batch_size": None})["images_per_s"] is None


def test_infer_thresholds_follow_the_config_fields(recipe_speed):
    detector = SimpleNamespace(model=SimpleNamespace(score_threshold=0.05))
    panoptic = SimpleNamespace(model=SimpleNamespace(), eval=SimpleNamespace(object_threshold=0.5))
    assert recipe_speed.infer_thresholds(detector) == ["model.score_threshold=0.0"]
    assert recipe_speed.infer_thresholds(panoptic) == ["eval.object_threshold=0.0"]
    assert recipe_speed.infer_thresholds(SimpleNamespace(model=SimpleNamespace())) == []
    # the field paths are the real configs' (a wrong one would make load_config refuse the override)
    assert recipe_speed.infer_thresholds(load_experiment(ROOT / "configs/maskx_smoke.yaml")[1]) == \
        ["model.score_threshold=0.0"]
    assert recipe_speed.infer_thresholds(load_experiment(ROOT / "configs/openseg_smoke.yaml")[1]) == []


def test_shown_command_drops_out(recipe_speed):
    assert recipe_speed._shown_command("python b.py c.yaml --out r.json --steps 2 --out=s.json") == \
        "python b.py c.yaml --steps 2"


def test_missing_config_is_an_argument_error(recipe_speed, tmp_path):
    with pytest.raises(SystemExit) as e:
        recipe_speed.main([str(tmp_path / "none.yaml")])
    assert e.value.code == 2


def direct_param_count(config: Path) -> int:
    """The model's parameter count, built here through the recipe contract (as run_recipe does)."""
    recipe, cfg = load_experiment(config)
    dataset = recipe.train_data(cfg, False)
    info = RunInfo(recipe.name, categories_info(dataset.rs.categories), recipe.text_encoder(cfg))
    return sum(p.numel() for p in recipe.build_model(cfg, info).parameters())


@pytest.mark.parametrize("name, recipe, infer_set", [
    ("vloss_smoke", "vloss", ["eval.object_threshold=0.0"]),  # the panoptic inference, every query kept
    ("mal_smoke", "mal", []),  # box-prompted: segments the image's own boxes
])
def test_smoke_run_writes_sane_json(recipe_speed, tmp_path, capsys, name, recipe, infer_set):
    config, out = ROOT / "configs" / f"{name}.yaml", tmp_path / f"recipe_speed_{name}.json"
    assert recipe_speed.main([str(config), "--threads", "1", "--steps", "2", "--warmup", "1", "--infer", "1",
                              "--set", "data.batch_size=2", "--out", str(out)]) == 0
    assert "s/iter" in capsys.readouterr().out  # the table
    d = json.loads(out.read_text())
    assert d["config"] == f"configs/{name}.yaml" and d["recipe"] == recipe and d["overrides"] == ["data.batch_size=2"]
    assert d["machine"]["cpu_count"] >= 1 and len(d["load_avg_before"]) == 3 and d["batch_size"] == 2
    (r,) = d["rows"]
    assert r["threads"] == r["torch_threads"] == 1 and r["n_steps"] == 2 and r["n_images"] == 1
    assert 0 < r["s_per_iter"] <= r["s_per_iter_p90"] and r["images_per_s"] == pytest.approx(2 / r["s_per_iter"])
    assert 0 <= r["data_s_per_iter"] < r["s_per_iter"] and r["s_per_image"] > 0
    assert 0 < r["rss_setup_mib"] <= r["rss_train_mib"] <= r["rss_infer_mib"] < 1e5
    assert r["infer_set"] == infer_set and len(r["detections"]) == 1 and r["detections"][0] > 0
    assert r["params"] == direct_param_count(config) and 0 < r["trainable_params"] <= r["params"]
    section = recipe_speed.recipe_speed_section(tmp_path)
    assert section[0] == f"## Speed and memory: configs/{name}.yaml ({recipe})"
    assert section[-2].startswith(f"| 1 | {r['s_per_iter']:.3f} | ") and "--out" not in section[2]
    native = {True: "native bf16", False: "no native bf16", None: "bf16 unknown"}[d["machine"]["bf16_native"]]
    assert f"{d['machine']['cpu_isa']}, {native}), " in section[2]  # the CPU's bf16 speed class is on the line


def test_section_names_the_builder_and_the_precision_an_override_chooses(bench):
    variant = bench["recipe_speed"]._variant
    assert variant(["model.width=64", "model.builder=maskx_rcnn_r50_fpn"]) == ", maskx_rcnn_r50_fpn"
    assert variant(["model.width=64"]) == ""
    assert variant(["train.amp=bf16", "model.builder=b"]) == ", amp bf16, b"  # in override order
