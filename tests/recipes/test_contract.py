"""The method contract: every recipe in the table, self-describing runs, typed kinds."""

from __future__ import annotations

import dataclasses
import json
import shutil
import typing
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from omniseg.api import Segmenter
from omniseg.data.load import load_dataset
from omniseg.engine.config import ConfigError, load_config
from omniseg.recipes.contract import (
    LOCK_FILE,
    Recipe,
    RunFolderError,
    RunInfo,
    check_resume_config,
    prepare_run_folder,
    read_run_info,
    run_folder_lock,
    run_recipe,
)
from omniseg.recipes.table import RECIPES, get_recipe
from omniseg.utils.weights_io import CheckpointError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_table_entries_are_recipes_whose_config_names_them():
    assert set(RECIPES) == {"align", "box_to_mask", "fcos_mo", "lseg", "mal", "mask_rcnn_star", "maskx_rcnn", "openseg", "vloss"}
    for name, recipe in RECIPES.items():
        assert isinstance(recipe, Recipe) and recipe.name == name
        hint = typing.get_type_hints(recipe.config)["recipe"]
        assert typing.get_args(hint) == (name,), f"{name}: config's recipe field must be Literal[{name!r}]"
    with pytest.raises(ValueError, match=r"x.yaml: unknown recipe 'nope'; choose from \['align', 'box_to_mask'"):
        get_recipe("nope", "x.yaml")


@pytest.mark.parametrize("config,key,bad", [
    ("maskx_smoke.yaml", "model.mask_head", "class_agnostic"),
    ("maskx_smoke.yaml", "model.norm", "LN"),
    ("fcos_mo_smoke.yaml", "model.mask_head", "hourglass20"),
    ("fcos_mo_smoke.yaml", "text.encoder", "mini-lm"),
    ("mask_rcnn_star_smoke.yaml", "data.novel_supervision", "boxes"),
    ("box_to_mask_synth.yaml", "model.backbone", "resnet18"),
])
def test_a_wrong_kind_is_one_clear_error_at_load_time(tmp_path, config, key, bad):
    section, field = key.split(".")
    text = (CONFIGS / config).read_text()
    recipe = get_recipe(yaml.safe_load(text)["recipe"])
    path = tmp_path / "c.yaml"  # the wrong value in the YAML itself, not only on the command line
    data = yaml.safe_load(text)
    data.setdefault(section, {})[field] = bad
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as e:
        load_config(recipe.config, path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: {section}.{field}: {bad!r} is not one of [") and "\n" not in msg


def test_a_run_predicts_with_its_training_data_deleted(tmp_path):
    """Train Mask^X (closed vocabulary: class names come from the training data) on a dataset on
    disk, delete the dataset, then load the run folder and predict."""
    from omniseg.data.synth.generate import SynthConfig, generate_dataset

    data = tmp_path / "data"
    generate_dataset(SynthConfig(seed=3, num_images=4, image_size=96), data, progress=False)
    run_dir = tmp_path / "run"
    recipe = RECIPES["maskx_rcnn"]
    cfg = load_config(recipe.config, CONFIGS / "maskx_smoke.yaml", [
        f"data.train={data}", f"data.val={data}", "train.max_iter=2", "train.checkpoint_period=2",
        f"train.output_dir={run_dir}", "model.score_threshold=0.0"])
    summary = run_recipe(recipe, cfg)
    categories = [(c.id, c.name) for c in load_dataset(data).categories]
    image = np.asarray(Image.open(next((data / "images").iterdir())).convert("RGB"))
    shutil.rmtree(data)

    info = json.loads((run_dir / "run.json").read_text())
    assert info["recipe"] == "maskx_rcnn" and info["text_encoder"] == ""
    assert [(c["id"], c["name"]) for c in info["categories"]] == categories
    assert set(info["metrics"]) == set(summary["eval"]) and "mask_AP/novel" in info["metrics"]
    step = run_dir / "checkpoints" / "step_00000002"
    assert read_run_info(step, {}).categories == info["categories"]  # from state.json, not run.json
    (run_dir / "run.json").unlink()

    seg = Segmenter.from_checkpoint(run_dir)
    found = seg.predict(image, min_score=0.0)
    assert found, "an untrained model still detects something at threshold 0"
    names = dict(categories)
    assert all(i.category_id in names and i.text == names[i.category_id] for i in found)


def test_a_checkpoint_without_a_run_description_is_a_clear_error(tmp_path):
    step = tmp_path / "checkpoints" / "step_00000001"
    step.mkdir(parents=True)
    (step / "state.json").write_text(json.dumps({"step": 1, "extra": {}}))
    with pytest.raises(CheckpointError, match=f"{step}: checkpoint does not describe its run"):
        read_run_info(step, {"recipe": "fcos_mo"})
    with pytest.raises(CheckpointError, match="x.json: not a run description"):
        RunInfo.from_dict({"categories": []}, "x.json")
    (step / "state.json").write_text('{"step": 1, "ext')
    with pytest.raises(CheckpointError, match=r"state\.json: cannot read"):
        read_run_info(step, {})


def test_run_info_things_are_sorted_thing_categories():
    info = RunInfo("x", [{"id": 5, "name": "b", "isthing": True}, {"id": 2, "name": "sky", "isthing": False},
                         {"id": 1, "name": "a", "isthing": True}])
    assert [(c.id, c.name) for c in info.things()] == [(1, "a"), (5, "b")]
    assert dataclasses.asdict(RunInfo.from_dict(dataclasses.asdict(info) | {"extra": 1}, "x")) == \
        dataclasses.asdict(info)


# --------------------------------------------------------------------------- the run folder


def _old_run(out: Path) -> None:
    """The files a finished two-stage run leaves (a stage's trainer files in stage1/)."""
    for sub in (out, out / "stage1"):
        step = sub / "checkpoints" / "step_00000002"
        step.mkdir(parents=True)
        (step / "state.json").write_text('{"step": 2}')
        (sub / "checkpoints" / "latest").write_text("step_00000002\n")
        (sub / "metrics.jsonl").write_text('{"step": 1}\n')
        (sub / "config.yaml").write_text("recipe: x\n")
    (out / "run.json").write_text('{"recipe": "x"}')


def test_resume_without_a_checkpoint_is_an_error(tmp_path):
    cfg = load_config(RECIPES["maskx_rcnn"].config, CONFIGS / "maskx_smoke.yaml", [f"train.output_dir={tmp_path}"])
    with pytest.raises(RunFolderError, match=rf"{tmp_path}: --resume, but there is no checkpoint"):
        run_recipe(RECIPES["maskx_rcnn"], cfg, resume=True)
    (tmp_path / "checkpoints" / "step_00000003").mkdir(parents=True)  # torn: no state.json
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(RunFolderError, match="no checkpoint"):
        prepare_run_folder(tmp_path, resume=True, overwrite=False)
    assert not list(tmp_path.glob("run.json")) and (tmp_path / "metrics.jsonl").exists()


def test_a_new_run_into_a_used_folder_is_refused_and_nothing_is_touched(tmp_path):
    _old_run(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    cfg = load_config(RECIPES["maskx_rcnn"].config, CONFIGS / "maskx_smoke.yaml", [f"train.output_dir={tmp_path}"])
    with pytest.raises(RunFolderError, match=rf"{tmp_path}: holds a previous run \(checkpoints, metrics\.jsonl, "
                                             r"config\.yaml, run\.json, stage1\); pass --resume .* or --overwrite"):
        run_recipe(RECIPES["maskx_rcnn"], cfg)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    (tmp_path / "stage1" / "checkpoints").rename(tmp_path / "stage1" / "old")  # a stage's files alone count too
    for name in ("checkpoints", "metrics.jsonl", "config.yaml", "run.json"):
        shutil.rmtree(tmp_path / name) if name == "checkpoints" else (tmp_path / name).unlink()
    with pytest.raises(RunFolderError, match=r"holds a previous run \(stage1\)"):
        prepare_run_folder(tmp_path, resume=False, overwrite=False)


def test_overwrite_removes_the_previous_run_only_and_says_so(tmp_path, capsys):
    _old_run(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")  # not a run file: kept
    (tmp_path / ".config.yaml.abc123.tmp").write_text("torn")  # a killed writer's temp file: removed
    prepare_run_folder(tmp_path, resume=False, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    assert "--overwrite: removed the previous run (checkpoints, metrics.jsonl, config.yaml, run.json, stage1)" \
        in capsys.readouterr().err
    prepare_run_folder(tmp_path / "new", resume=False, overwrite=True)  # nothing there: fine
    prepare_run_folder(tmp_path, resume=False, overwrite=False)  # now empty of runs: a new run may start


def test_resume_removes_temp_files_a_killed_run_left(tmp_path):
    _old_run(tmp_path)
    temps = [tmp_path / ".metrics.jsonl.x1.tmp", tmp_path / "checkpoints" / ".latest.x2.tmp",
             tmp_path / "stage1" / "checkpoints" / ".tmp-step_00000004-x3"]
    for t in temps[:2]:
        t.write_text("torn")
    temps[2].mkdir()
    prepare_run_folder(tmp_path, resume=True, overwrite=False)
    assert not any(t.exists() for t in temps)
    assert (tmp_path / "checkpoints" / "step_00000002" / "state.json").exists()


TINY = ["model.width=8", "model.fpn_channels=16", "model.norm=GN", "model.freeze_at=0", "model.head_convs=1",
        "model.head_dim=8", "data.train_num_images=2", "data.val_num_images=1", "data.image_size=64",
        "data.batch_size=2", "train.max_iter=1", "train.progress=false"]


@pytest.mark.parametrize(("recipe", "override", "message"), [
    ("box_to_mask", "data.batch_size=0", "data.batch_size: must be >= 1, got 0"),
    ("box_to_mask", "data.image_size=1", "data.image_size: must be >= 16, got 1"),
    ("box_to_mask", "data.num_workers=-1", "data.num_workers: must be >= 0, got -1"),
    ("box_to_mask", "data.train_num_images=-3", "data.train_num_images: must be >= 1, got -3"),
    ("box_to_mask", "data.train_seed=-1", "data.train_seed: must be >= 0, got -1"),
    ("box_to_mask", "train.seed=-1", "train.seed: must be >= 0, got -1"),
    ("box_to_mask", "model.width=-8", "model.width: must be >= 1, got -8"),
    ("box_to_mask", "model.freeze_at=9", "model.freeze_at: must be <= 5, got 9"),
    ("box_to_mask", "model.head_convs=-1", "model.head_convs: must be >= 0, got -1"),
    ("box_to_mask", "model.roi_size=0", "model.roi_size: must be >= 1, got 0"),
    ("fcos_mo", "model.nms_threshold=1.5", "model.nms_threshold: must be <= 1, got 1.5"),
    ("fcos_mo", "alp.sim_min_scale=0", "alp.sim_min_scale: must be > 0, got 0.0"),
    ("mask_rcnn_star", "model.mask_roi_size=0", "model.mask_roi_size: must be >= 1, got 0"),
    ("maskx_rcnn", "model.stage1_iters=-1", "model.stage1_iters: must be >= 0, got -1"),
    ("maskx_rcnn", "data.random_base=-2", "data.random_base: must be >= 0, got -2"),
])
def test_out_of_range_config_values_name_the_key(recipe, override, message):
    with pytest.raises(ConfigError, match=rf"^command line: {message}$"):
        load_config(RECIPES[recipe].config, None, [override])


def _trained_run(out: Path) -> None:
    (out / "checkpoints" / "step_00000001").mkdir(parents=True)
    (out / "checkpoints" / "step_00000001" / "state.json").write_text('{"step": 1}')
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    (out / "config.yaml").write_text("recipe: box_to_mask\n")


def test_overwrite_never_removes_other_runs_in_subfolders(tmp_path):
    for name in ("expA", "expB"):
        _trained_run(tmp_path / name)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(RunFolderError, match=rf"^{tmp_path}: holds other runs in subfolders \(expA, expB\)"):
        prepare_run_folder(tmp_path, resume=False, overwrite=True, stage_dirs=[])
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    _trained_run(tmp_path)  # this run's own files and its stage folder go; a plain subfolder stays
    _trained_run(tmp_path / "stage1")
    (tmp_path / "notes").mkdir()
    for name in ("expA", "expB"):
        shutil.rmtree(tmp_path / name)
    prepare_run_folder(tmp_path, resume=False, overwrite=True, stage_dirs=["stage1"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes"]


def test_overwrite_deletes_nothing_when_the_data_cannot_be_built(tmp_path, capsys):
    _trained_run(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    cfg = load_config(RECIPES["box_to_mask"].config, None,
                      [*TINY, f"train.output_dir={tmp_path}", f"data.train={tmp_path / 'missing.json'}"])
    with pytest.raises(OSError):
        run_recipe(RECIPES["box_to_mask"], cfg, overwrite=True)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert "removed" not in capsys.readouterr().err


def test_a_folder_with_only_config_yaml_is_no_previous_run(tmp_path):
    (tmp_path / "config.yaml").write_text("recipe: box_to_mask\n")  # a run that failed before step 1
    (tmp_path / "stage1").mkdir()
    (tmp_path / "stage1" / "config.yaml").write_text("recipe: maskx_rcnn\n")
    prepare_run_folder(tmp_path, resume=False, overwrite=False)
    prepare_run_folder(tmp_path, resume=False, overwrite=False, stage_dirs=[])
    with pytest.raises(RunFolderError, match="no checkpoint"):
        prepare_run_folder(tmp_path, resume=True, overwrite=False)


def test_a_run_folder_is_locked_while_a_run_writes_it(tmp_path):
    import os

    with run_folder_lock(tmp_path / "run"):
        assert (tmp_path / "run" / LOCK_FILE).read_text() == f"{os.getpid()}\n"
        with pytest.raises(RunFolderError, match=rf"^{tmp_path / 'run'}: is in use by another omniseg train "
                                                 rf"\(pid {os.getpid()}\)$"), run_folder_lock(tmp_path / "run"):
            pass
    assert not (tmp_path / "run").exists()  # created here and nothing written: removed again
    with run_folder_lock(tmp_path / "run"):  # released: the next run gets it
        (tmp_path / "run" / "metrics.jsonl").write_text("")
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["metrics.jsonl"]  # no lock file left


def test_resume_with_another_model_names_the_differing_keys(tmp_path):
    recipe = RECIPES["box_to_mask"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"recipe": "box_to_mask", "model": {"width": 8}}))
    _trained_run(tmp_path)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(
        dataclasses.asdict(load_config(recipe.config, None, ["model.width=8"]))))
    cfg = load_config(recipe.config, None, ["model.width=16", f"train.output_dir={tmp_path}"])
    with pytest.raises(RunFolderError, match=r"--resume with another model than the run's \(model.width: 8 -> 16\)"):
        run_recipe(recipe, cfg, resume=True)
    check_resume_config(tmp_path, load_config(recipe.config, None, ["model.width=8", "train.max_iter=5"]))


def test_resume_accepts_the_same_weights_at_another_path(tmp_path):
    # a run started from one checkout and resumed from a clone of it: model.pretrained names another path
    recipe = RECIPES["mal"]
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    for name, data in (("a/w.safetensors", b"weights"), ("b/w.safetensors", b"weights"), ("b/v.safetensors", b"other")):
        (tmp_path / name).write_bytes(data)
    run = tmp_path / "run"
    run.mkdir()
    saved = dataclasses.asdict(load_config(recipe.config, None, [f"model.pretrained={tmp_path / 'a' / 'w.safetensors'}"]))
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    check_resume_config(run, load_config(recipe.config, None, [f"model.pretrained={tmp_path / 'b' / 'w.safetensors'}"]))
    for other in ("b/v.safetensors", "b/missing.safetensors"):  # other bytes, or nothing to compare: another model
        cfg = load_config(recipe.config, None, [f"model.pretrained={tmp_path / other}"])
        with pytest.raises(RunFolderError, match=rf"model.pretrained: '{tmp_path / 'a' / 'w.safetensors'}' -> "):
            check_resume_config(run, cfg)


def test_resume_accepts_a_model_field_added_since_at_its_default(tmp_path):
    recipe = RECIPES["box_to_mask"]
    saved = dataclasses.asdict(load_config(recipe.config, None, ["model.width=8"]))
    del saved["model"]["head_dim"]  # a run written before the field existed
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    default = load_config(recipe.config, None, ["model.width=8"])
    check_resume_config(tmp_path, default)  # new field at its default: the same model
    changed = load_config(recipe.config, None, ["model.width=8", f"model.head_dim={default.model.head_dim + 1}"])
    with pytest.raises(RunFolderError, match=r"model.head_dim: None -> "):
        check_resume_config(tmp_path, changed)
