"""Every method OmniSeg trains: recipe name -> :class:`~omniseg.recipes.contract.Recipe`.

A plain dict, below the CLI and the API (both read it; nothing here imports them). Adding a
method = one recipe module defining ``RECIPE`` + one line here + one YAML in configs/.
"""

from __future__ import annotations

import os
from typing import Any

from omniseg.engine.config import ConfigError, load_config, parse_overrides, read_yaml
from omniseg.recipes import box_to_mask, fcos_mo, mal, mask_rcnn_star, maskx_rcnn, openseg, vloss
from omniseg.recipes.contract import Recipe

RECIPES: dict[str, Recipe] = {r.name: r for r in (
    box_to_mask.RECIPE,
    fcos_mo.RECIPE,
    mal.RECIPE,
    mask_rcnn_star.RECIPE,
    maskx_rcnn.RECIPE,
    openseg.ALIGN,
    openseg.OPENSEG,
    openseg.LSEG,
    vloss.RECIPE,
)}


def get_recipe(name: Any, source: str = "config", table: dict[str, Recipe] = RECIPES) -> Recipe:
    """The recipe called ``name``; a :class:`ConfigError` naming ``source`` and the known names otherwise."""
    if not isinstance(name, str) or name not in table:
        raise ConfigError(f"{source}: unknown recipe {name!r}; choose from {sorted(table)}")
    return table[name]


def load_experiment(path: str | os.PathLike, overrides: list[str] | None = None,
                    table: dict[str, Recipe] = RECIPES) -> tuple[Recipe, Any]:
    """The recipe and the resolved config of an experiment YAML plus ``key=value`` overrides.

    The YAML is read once; the recipe is the final config's ``recipe`` (a ``recipe=NAME``
    override picks another one, whose config type then reads the same file).

    ``table``: the recipes to choose from (:data:`RECIPES`; ``omniseg pretrain`` passes its own).

    Raises:
        ConfigError: the file or an override is invalid, or names no / an unknown recipe.
    """
    data = read_yaml(path)
    name, source = data.get("recipe"), str(path)
    override = parse_overrides(overrides or []).get("recipe")
    if override is not None:
        name, source = override, "command line"
    if name is None:
        raise ConfigError(f"{path}: no 'recipe' key; add one of {sorted(table)} (e.g. recipe: {min(table)})")
    recipe = get_recipe(name, f"{source}: recipe", table)
    if override is not None:
        data = {**data, "recipe": name}
    return recipe, load_config(recipe.config, path, overrides, data=data)
