"""The recipe table: experiment YAMLs name their recipe; the recipe comes from the final config."""

from __future__ import annotations

from pathlib import Path

import pytest

from omniseg.engine.config import ConfigError
from omniseg.recipes.fcos_mo import FCOSMOExperiment
from omniseg.recipes.table import RECIPES, get_recipe, load_experiment

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
KNOWN = r"\['align', 'box_to_mask', 'fcos_mo', 'lseg', 'mal', 'mask_rcnn_star', 'maskx_rcnn', 'openseg', 'vloss'\]"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_names_its_recipe_and_loads(path):
    from omniseg.recipes.pretraining import PRETRAIN_RECIPES

    table = PRETRAIN_RECIPES if path.name.startswith("pretrain_") else RECIPES  # `omniseg pretrain` configs
    recipe, cfg = load_experiment(path, table=table)
    assert recipe is table[cfg.recipe] and isinstance(cfg, recipe.config)


def test_pretraining_configs_are_not_training_recipes():
    with pytest.raises(ConfigError, match="unknown recipe 'pretrain_dense'"):
        load_experiment(CONFIGS / "pretrain_r18_dense.yaml")


def test_a_config_without_recipe_lists_the_recipes(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  max_iter: 2\n")
    with pytest.raises(ConfigError, match=rf"c\.yaml: no 'recipe' key; add one of {KNOWN}"):
        load_experiment(path)


@pytest.mark.parametrize(("text", "overrides", "where"), [
    ("recipe: nosuch\n", [], r"c\.yaml: recipe"),
    ("recipe: [box_to_mask]\n", [], r"c\.yaml: recipe"),
    ("recipe: box_to_mask\n", ["recipe=nosuch"], "command line: recipe"),
])
def test_an_unknown_recipe_lists_the_recipes(tmp_path, text, overrides, where):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"{where}: unknown recipe .*; choose from {KNOWN}"):
        load_experiment(path, overrides)
    with pytest.raises(ConfigError, match=rf"x\.yaml: unknown recipe 'nope'; choose from {KNOWN}"):
        get_recipe("nope", "x.yaml")


def test_a_recipe_override_picks_the_recipe_it_records(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("recipe: box_to_mask\ntrain:\n  max_iter: 2\n")
    recipe, cfg = load_experiment(path, ["recipe=fcos_mo", "train.lr=0.5"])
    assert recipe is RECIPES["fcos_mo"] and type(cfg) is FCOSMOExperiment
    assert (cfg.recipe, cfg.train.max_iter, cfg.train.lr) == ("fcos_mo", 2, 0.5)
    # the YAML is checked against the picked recipe's config: a box_to_mask model key is unknown there
    path.write_text("recipe: box_to_mask\nmodel:\n  roi_size: 14\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: model: unknown key 'roi_size'"):
        load_experiment(path, ["recipe=fcos_mo"])


def test_the_yaml_is_parsed_once_with_its_errors_located(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("recipe: box_to_mask\ntrain:\n  lr: 0.1\n  lr: 0.2\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:4:3: .*duplicate key 'lr' \(lines 3 and 4\)"):
        load_experiment(path)
    path.write_text("- recipe\n- box_to_mask\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: top level must be a mapping"):
        load_experiment(path)
