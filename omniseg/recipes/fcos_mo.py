"""Recipe: train FCOS-MO (:mod:`omniseg.modeling.fcos_mo`) on mixed supervision and score its masks.

Training data = the training view of a split (base classes keep their masks; novel classes get
what ``data.novel_supervision`` allows: "box" = exact boxes, the box-supervised oracle; "alp" =
nothing from the annotations) plus approximately localized phrases (ALPs):

* ``alp.path``: an ``alps.jsonl`` written by ``omniseg curate alps`` (:mod:`omniseg.curate.alps`),
  attached to the training images with the same ids: the real ALP setting of the paper;
* ``alp.simulate``: STAND-IN ALPs made from the true novel instances (class name as phrase, the
  true box shifted and rescaled at random, ``box_quality="approximate"``, source
  "simulated-alp"): a controlled weak label for development and smoke tests, never to be
  reported as curated ALPs.

Box quantization (alp-fcos-mo Sec. 3.3) acts on approximate boxes only; ``alp.quantize=false``
is the ablation. Evaluation: predictions on the validation images with the vocabulary = the
thing class names, mask AP / AP50 overall and for the split's base / novel groups
(:func:`omniseg.evaluation.instance.evaluate_instances`).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from omniseg.data.records import Instance, RecordSet
from omniseg.engine.config import TrainConfig
from omniseg.modeling.contrastive_classifier import PhraseEmbedder
from omniseg.modeling.fcos_mo import FCOS_MO_BUILDERS, FCOSMO, FCOSMOConfig
from omniseg.recipes.data import DataConfig, categories_of, open_source, pad_image, training_view


@dataclass
class TextConfig:
    """Frozen phrase encoder. ``encoder``: "minilm" (default), "clip" (with ``path``) or "hash"
    (random vectors, no semantics: tests). ``cache_dir``: on-disk embedding cache ("" = memory only)."""

    encoder: str = "minilm"
    path: str = ""
    cache_dir: str = ""


@dataclass
class ALPConfig:
    """Where ALPs come from, and the box-quantization switch (see module docstring)."""

    path: str = ""
    simulate: bool = False
    sim_shift: float = 0.15  # std of the center shift, as a fraction of the box side
    sim_min_scale: float = 0.5  # box sides scaled by a log-uniform factor in [min, max]
    sim_max_scale: float = 1.1
    sim_seed: int = 0
    quantize: bool = True


@dataclass
class FCOSMOExperiment:
    """Top-level config (YAML sections: model, text, alp, data, train)."""

    recipe: str = "fcos_mo"
    arch: str = "fcos_mo_r18"  # key of FCOS_MO_BUILDERS
    model: FCOSMOConfig = field(default_factory=FCOSMOConfig)
    text: TextConfig = field(default_factory=TextConfig)
    alp: ALPConfig = field(default_factory=ALPConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def build_phrase_embedder(cfg: TextConfig, dim: int) -> PhraseEmbedder:
    """In-memory cached phrase embeddings (over an on-disk cache when ``cache_dir`` is set)."""
    from omniseg.text.encoders import build_text_encoder

    kw: dict = {"dim": dim} if cfg.encoder == "hash" else ({"path": cfg.path} if cfg.path else {})
    enc = build_text_encoder(cfg.encoder, **kw)
    if enc.dim != dim:
        raise ValueError(f"text encoder {enc.name!r} gives {enc.dim}-d embeddings but model.embed_dim={dim}")
    if cfg.cache_dir:
        from omniseg.text.cache import CachedEncoder

        enc = CachedEncoder(enc, cfg.cache_dir)
    return PhraseEmbedder(enc.encode, dim)


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


def build_split(cfg: FCOSMOExperiment, rs: RecordSet):
    """The configured split of ``rs``'s categories, or None without one."""
    if not cfg.data.split:
        return None
    from omniseg.data.splits import SPLITS

    d = cfg.data
    return SPLITS[d.split](rs.categories, seed=d.split_seed, novel_supervision=d.novel_supervision)


def fcos_mo_train_dataset(cfg: FCOSMOExperiment, progress: bool = True):
    """Training RecordDataset: the split's training view + ALPs, with flip / LSJ / box quantization."""
    from omniseg.data.dataset import RecordDataset
    from omniseg.data.transforms import Compose, LargeScaleJitter, QuantizeApproxBoxes, RandomHFlip

    d, a = cfg.data, cfg.alp
    rs, load_image = open_source(d.train, d.train_num_images, d.train_seed, d.image_size, progress)
    view = training_view(rs, d)
    if a.simulate:
        split = build_split(cfg, rs)
        if split is None:
            raise ValueError("alp.simulate needs data.split (ALPs stand in for the novel classes)")
        by_id = simulated_alps(rs, set(split.novel_ids), a)
        for rec in view.records:
            rec.instances = [*rec.instances, *by_id.get(rec.image_id, [])]
    if a.path:
        from omniseg.curate.alps import attach_alps

        attach_alps(view, a.path)
    ts: list = [LargeScaleJitter(d.image_size)] if d.lsj else []
    ts += [RandomHFlip()] if d.flip else []
    if a.quantize:
        ts.append(QuantizeApproxBoxes())
    return RecordDataset(view, transforms=Compose(ts), load_image=load_image, seed=d.train_seed)


def predict_records(
    model: FCOSMO, gt: RecordSet, load_image=None, batch_size: int = 4, rank: int = 0, world: int = 1,
    progress: bool = True,
) -> RecordSet:
    """Predictions on this rank's share of ``gt`` with the vocabulary = its thing class names."""
    from tqdm import tqdm

    from omniseg.data.loader import build_test_loader

    things = [c for c in gt.categories if c.isthing]
    vocab = model.text_embedder([c.name for c in things]) if model.text_embedder else None
    if vocab is None:
        raise ValueError("predict_records: the model has no text embedder")
    device = next(model.parameters()).device
    by_id = {r.image_id: r for r in gt}
    pred = RecordSet(records=[], categories=gt.categories, image_root=gt.image_root, name="fcos_mo")
    was_training = model.training
    model.eval()
    loader = build_test_loader(gt, batch_size, load_image=load_image, rank=rank, world_size=world)
    for batch in tqdm(loader, desc="fcos-mo predict", disable=not progress):
        out = model.predict(batch.images.to(device), vocab.to(device), batch.image_sizes, batch.orig_sizes)
        for image_id, p in zip(batch.image_ids, out):
            rec = copy.copy(by_id[image_id])
            rec.instances = p.to_instances([c.name for c in things], [c.id for c in things], source="fcos_mo")
            rec.segments = []
            pred.records.append(rec)
    model.train(was_training)
    return pred


def make_eval_fn(cfg: FCOSMOExperiment, progress: bool = True) -> Callable[[torch.nn.Module], dict[str, float]]:
    """eval_fn for the Trainer: mask (and box) AP overall and base / novel, gathered over ranks."""
    from omniseg.engine.distributed import get_rank, get_world_size
    from omniseg.recipes.scoring import detection_metrics, gather_predictions

    d = cfg.data
    gt, load_image = open_source(d.val, d.val_num_images, d.val_seed, d.image_size, progress)
    split = build_split(cfg, gt)

    def eval_fn(model: torch.nn.Module) -> dict[str, float]:
        core = model.module if hasattr(model, "module") else model
        part = predict_records(core, gt, load_image, d.batch_size, get_rank(), get_world_size(), progress)
        pred = gather_predictions(part, gt)
        if get_rank() == 0:  # kept for re-scoring under other groupings (bench/alp_experiments.py)
            from omniseg.data.formats.coco import write_coco_results

            write_coco_results(f"{cfg.train.output_dir}/val_predictions.json", pred)
        return detection_metrics(gt, pred, split)

    return eval_fn


def build_model(cfg: FCOSMOExperiment) -> FCOSMO:
    """The configured architecture with its phrase embedder attached."""
    if cfg.arch not in FCOS_MO_BUILDERS:
        raise ValueError(f"unknown arch {cfg.arch!r}; choose from {sorted(FCOS_MO_BUILDERS)}")
    model = FCOS_MO_BUILDERS[cfg.arch](cfg.model)
    model.set_text_embedder(build_phrase_embedder(cfg.text, cfg.model.embed_dim))
    return model


def run(cfg: FCOSMOExperiment, resume: bool = False) -> dict:
    """Train (optionally resuming) and evaluate; returns the Trainer's summary."""
    from omniseg.data.loader import build_train_loader
    from omniseg.engine.distributed import get_rank, get_world_size
    from omniseg.engine.optim import build_optimizer, build_scheduler
    from omniseg.engine.trainer import Trainer, seed_everything

    t = cfg.train
    seed_everything(t.seed + get_rank(), t.deterministic)
    model = build_model(cfg)
    data = build_train_loader(
        [fcos_mo_train_dataset(cfg, progress=t.progress)], "mix", cfg.data.batch_size,
        num_workers=cfg.data.num_workers, rank=get_rank(), world_size=get_world_size(), seed=t.seed,
    )
    optimizer = build_optimizer(model, t)
    trainer = Trainer(model, optimizer, build_scheduler(optimizer, t), data, t,
                      eval_fn=make_eval_fn(cfg, t.progress), run_config=dataclasses.replace(cfg))
    if resume:
        trainer.resume()
    return trainer.train()


def model_from_config(cfg: FCOSMOExperiment) -> FCOSMO:
    """The model a checkpoint of this recipe holds (used by :class:`omniseg.api.Segmenter`)."""
    return build_model(cfg)


def predict_image(model: FCOSMO, cfg: FCOSMOExperiment, image: torch.Tensor, vocabulary=None, boxes=None):
    """Detect and segment one 3 x H x W uint8 image with ANY vocabulary of phrases (default: the
    training classes' names): (|C|+1)-way softmax over their text embeddings (ALP paper Sec. 3.2)."""
    if boxes is not None:
        raise ValueError("FCOS-MO finds its own boxes; boxes= is for box-to-mask models")
    if not vocabulary:
        vocabulary = [c.name for c in categories_of(cfg.data) if c.isthing]
    batch, sizes = pad_image(image)
    return model.predict(batch, list(vocabulary), sizes, sizes)[0].to_instances(list(vocabulary), source="fcos_mo")
