"""Every method OmniSeg trains: recipe name -> :class:`~omniseg.recipes.contract.Recipe`.

A plain dict, below the CLI and the API (both read it; nothing here imports them). Adding a
method = one recipe module defining ``RECIPE`` + one line here + one YAML in configs/.
"""

from __future__ import annotations

from omniseg.recipes import box_to_mask, fcos_mo, mask_rcnn_star, maskx_rcnn
from omniseg.recipes.contract import Recipe

RECIPES: dict[str, Recipe] = {r.name: r for r in (
    box_to_mask.RECIPE,
    fcos_mo.RECIPE,
    mask_rcnn_star.RECIPE,
    maskx_rcnn.RECIPE,
)}


def get_recipe(name: str, source: str = "config") -> Recipe:
    """The recipe called ``name``; a ValueError naming ``source`` and the known names otherwise."""
    if name not in RECIPES:
        raise ValueError(f"{source}: unknown recipe {name!r}; choose from {sorted(RECIPES)}")
    return RECIPES[name]
