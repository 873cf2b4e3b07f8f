"""Training data with approximately localized phrases (ALPs), shared by the FCOS-MO and Mask R-CNN*
recipes: config sections for the phrase encoder and the ALP source, and the training dataset.

Training data = the training view of a split (base classes keep their masks; novel classes get
what ``data.novel_supervision`` allows: "box" = exact boxes, the box-supervised oracle; "alp" =
nothing from the annotations) plus ALPs:

* ``alp.path``: an ``alps.jsonl`` written by ``omniseg curate alps`` (:mod:`omniseg.curate.alps`),
  attached to the training images with the same ids: the real ALP setting of the paper;
* ``alp.simulate``: STAND-IN ALPs made from the true novel instances (class name as phrase, the
  true box shifted and rescaled at random, ``box_quality="approximate"``, source
  "simulated-alp"): a controlled weak label for development and smoke tests, never to be
  reported as curated ALPs;
* ``alp.as_image_labels``: drop the ALPs' boxes -- the phrases become image-level labels
  (alp-fcos-mo Sec. 4, the "ALPs without boxes" ablation of Mask R-CNN*).

Box quantization (alp-fcos-mo Sec. 3.3) acts on approximate boxes only; ``alp.quantize=false``
is the ablation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from omniseg.data.records import Instance, RecordSet
from omniseg.engine.config import ConfigError, bounded
from omniseg.recipes.contract import Recipe
from omniseg.recipes.data import DataConfig, named_split, open_train, train_transforms, training_view


@dataclass
class ALPConfig:
    """Where ALPs come from, how they are used, and the box-quantization switch (module docstring)."""

    path: str = ""
    simulate: bool = False
    sim_shift: float = bounded(0.15, ge=0)  # std of the center shift, as a fraction of the box side
    sim_min_scale: float = bounded(0.5, gt=0)  # box sides scaled by a log-uniform factor in [min, max]
    sim_max_scale: float = bounded(1.1, gt=0)
    sim_seed: int = bounded(0, ge=0)
    quantize: bool = True
    as_image_labels: bool = False


def simulated_alps(rs: RecordSet, novel_ids: set[int], cfg: ALPConfig) -> dict[int | str, list[Instance]]:
    """Stand-in ALPs: each true non-crowd novel instance with a box becomes a phrase (its class
    name) with a randomly shifted and rescaled approximate box, clipped to the image."""
    from omniseg.ops.rle import rle_to_box

    rng = np.random.default_rng(cfg.sim_seed)
    names = {c.id: c.name for c in rs.categories}
    out: dict[int | str, list[Instance]] = {}
    for rec in rs.records:
        for inst in rec.instances:
            if inst.category_id not in novel_ids or inst.is_crowd:
                continue
            box = inst.box if inst.box is not None else (rle_to_box(inst.mask) if inst.mask else None)
            if box is None:
                continue
            x0, y0, x1, y1 = box
            w, h = x1 - x0, y1 - y0
            cx = (x0 + x1) / 2 + rng.normal(0, cfg.sim_shift) * w
            cy = (y0 + y1) / 2 + rng.normal(0, cfg.sim_shift) * h
            sw, sh = np.exp(rng.uniform(np.log(cfg.sim_min_scale), np.log(cfg.sim_max_scale), 2))
            nb = (max(cx - w * sw / 2, 0.0), max(cy - h * sh / 2, 0.0),
                  min(cx + w * sw / 2, float(rec.width)), min(cy + h * sh / 2, float(rec.height)))
            if nb[2] - nb[0] < 1 or nb[3] - nb[1] < 1:
                continue
            out.setdefault(rec.image_id, []).append(Instance(
                text=names[inst.category_id], category_id=None, box=tuple(float(v) for v in nb),
                box_quality="approximate", source="simulated-alp"))
    return out


def with_alps(view: RecordSet, full: RecordSet, data: DataConfig, alp: ALPConfig) -> RecordSet:
    """``view`` (a training view of ``full``) with the configured ALPs added in place."""
    if alp.simulate:
        split = named_split(data, full.categories)
        if split is None:
            raise ConfigError("alp.simulate needs data.split (ALPs stand in for the novel classes)")
        by_id = simulated_alps(full, set(split.novel_ids), alp)
        for rec in view.records:
            rec.instances = [*rec.instances, *by_id.get(rec.image_id, [])]
    if alp.path:
        from omniseg.curate.alps import attach_alps

        attach_alps(view, alp.path)
    if alp.as_image_labels:
        for rec in view.records:
            rec.instances = [dataclasses.replace(i, box=None, box_quality="exact")
                             if i.box is not None and i.box_quality == "approximate" else i for i in rec.instances]
    return view


def alp_train_dataset(data: DataConfig, alp: ALPConfig, progress: bool = True):
    """Training RecordDataset: the split's training view + ALPs, with flip / LSJ / box quantization."""
    from omniseg.data.dataset import RecordDataset

    rs, load_image = open_train(data, progress)
    view = with_alps(training_view(rs, data), rs, data, alp)
    transforms = train_transforms(data, photos=load_image is None, quantize=alp.quantize)
    return RecordDataset(view, transforms=transforms, load_image=load_image, seed=data.train_seed)


def alp_recipe(name: str, config: type, build_model: Callable, predictor: Callable) -> Recipe:
    """The :class:`~omniseg.recipes.contract.Recipe` of a method trained on this data (training
    view + ALPs) and scored with the validation class names as its vocabulary: FCOS-MO, Mask R-CNN*.
    ``config`` needs the sections ``text``, ``alp``, ``data`` and ``train``."""
    from omniseg.recipes.open_vocab import text_encoder_id
    from omniseg.recipes.scoring import detection_eval_fn

    return Recipe(
        name=name, config=config, build_model=build_model, predictor=predictor,
        train_data=lambda cfg, progress: alp_train_dataset(cfg.data, cfg.alp, progress),
        eval_fn=lambda cfg, info, progress: detection_eval_fn(
            lambda m: predictor(m, cfg, info), cfg.data, cfg.train.output_dir, progress, source=name),
        text_encoder=lambda cfg: text_encoder_id(cfg.text),
    )
