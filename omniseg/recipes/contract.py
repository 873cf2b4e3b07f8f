"""The method contract: a method is one typed :class:`Recipe`, and :func:`run_recipe` runs every one.

A recipe bundles what differs between methods and nothing else:

* ``config``: its top-level config dataclass (YAML sections ``model``, ``data``, ``train``, ...);
* ``build_model(cfg, info)``: the trainable module for a run (``info`` carries the categories,
  so a checkpoint rebuilds the same model without the training data);
* ``train_data(cfg, progress)``: the training :class:`~omniseg.data.dataset.RecordDataset`;
* ``train_loader(cfg, dataset, rank, world_size, seed)`` (optional): the endless batch iterator over it
  (default: one source, ``data.batch_size``; VLOSS draws its sources by a schedule);
* ``eval_fn(cfg, info, progress)``: ``model -> metrics`` for the trainer (called on every rank);
* ``predictor(model, cfg, info)``: a :class:`Predictor` (plain images + any vocabulary in,
  :class:`~omniseg.modeling.predictions.ImagePrediction` out) used by evaluation, the API and the CLI;
* ``stages(cfg, model)`` (optional): training stages, e.g. Mask^X R-CNN's stage-wise mode;
* ``text_encoder(cfg)`` (optional): the id of the frozen phrase encoder the model reads;
* ``pad_divisor`` (optional): the API pads single images to a multiple of it (1: no padding).

Everything else -- seeding, the data loader, optimizer, schedule, the trainer, resuming, the run
folder's ``run.json`` and its guard (a new run never mixes with an old one's files; ``--resume``
needs a checkpoint) -- is :func:`run_recipe`, written once. The table of recipes is
:data:`omniseg.recipes.table.RECIPES`, a plain dict read by the CLI and the API.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import filecmp
import json
import math
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, Protocol, TypeVar

from torch import Tensor, nn

from omniseg.data.records import Category
from omniseg.engine.config import ConfigError, TrainConfig, config_to_dict, read_yaml
from omniseg.errors import UserError
from omniseg.modeling.predictions import ImagePrediction
from omniseg.utils.weights_io import CheckpointError

C = TypeVar("C")
EvalFn = Callable[[nn.Module], dict[str, float]]
RUN_INFO = "run.json"
#: what a run writes into its folder: the trainer's files, run.json, the evaluation's predictions
#: (a stage of a multi-stage run writes the trainer's files into a subfolder, e.g. ``stage1/``)
TRAINER_OUTPUTS = ("checkpoints", "metrics.jsonl", "config.yaml")
RUN_OUTPUTS = (*TRAINER_OUTPUTS, RUN_INFO, "val_predictions.json", "curves")
#: held (flock) by the ``omniseg train`` writing a run folder; the kernel drops it with the process
LOCK_FILE = ".omniseg-train.lock"


class RunFolderError(UserError):
    """``train.output_dir`` does not fit the request: ``--resume`` without a checkpoint there, or a
    new run into a folder that holds another run (without ``--overwrite``)."""


@dataclass
class RunInfo:
    """What a run folder needs, besides its config and weights, to predict on its own.

    Attributes:
        recipe: the recipe name (key of ``RECIPES``).
        categories: the training source's categories ``{"id", "name", "isthing"}``: a model's class
            indices refer to its thing categories sorted by id.
        text_encoder: id of the frozen phrase encoder ("" for closed-vocabulary models).
        metrics: the final evaluation metrics (filled in at the end of training; null where not
            defined, e.g. AP of a group without ground truth).
    """

    recipe: str
    categories: list[dict[str, Any]] = field(default_factory=list)
    text_encoder: str = ""
    metrics: dict[str, float | None] = field(default_factory=dict)

    def category_objects(self) -> list[Category]:
        return [Category(id=int(c["id"]), name=str(c["name"]), isthing=bool(c.get("isthing", True)))
                for c in self.categories]

    def things(self) -> list[Category]:
        """Thing categories in class-index order (sorted by id)."""
        return sorted((c for c in self.category_objects() if c.isthing), key=lambda c: c.id)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str) -> RunInfo:
        if not isinstance(data, dict) or not isinstance(data.get("recipe"), str):
            raise CheckpointError(f"{source}: not a run description (expected an object with a 'recipe' string)")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def categories_info(categories: Sequence[Category]) -> list[dict[str, Any]]:
    return [{"id": c.id, "name": c.name, "isthing": c.isthing} for c in categories]


class Predictor(Protocol):
    """A trained model behind one call: a padded image batch and a vocabulary in, one
    :class:`ImagePrediction` per image out (instances; OpenSeg / VLOSS add pixel or region
    embeddings and panoptic segments to the same container). Models with per-pixel output
    (openseg, lseg) fill ``semantic``: K x H x W scores over ``texts`` at the output size, whose
    argmax is each pixel's class (``Segmenter.predict_semantic``, ``omniseg segment --task semantic``).

    Args (of ``__call__``):
        images: B x 3 x H x W uint8, zero-padded as the model needs (:func:`pad_images`).
        image_sizes: B valid (height, width) inside the padding.
        output_sizes: B (height, width) to return boxes / masks at.
        vocabulary: class names / phrases to recognise; None = the model's training vocabulary.
        boxes: B tensors K_b x 4 (XYXY, output size) for models that segment given boxes.
    """

    def __call__(self, images: Tensor, image_sizes: Sequence[tuple[int, int]],
                 output_sizes: Sequence[tuple[int, int]], vocabulary: Sequence[str] | None = None,
                 boxes: Sequence[Tensor] | None = None) -> list[ImagePrediction]: ...


@dataclass
class Stage:
    """One training stage: its engine config, a hook that prepares the model, and whether the
    recipe's evaluation runs at its end (the last stage's metrics are the run's)."""

    train: TrainConfig
    prepare: Callable[[nn.Module], None] | None = None
    evaluate: bool = True


def single_stage(cfg: Any, model: nn.Module) -> list[Stage]:
    return [Stage(cfg.train)]


def single_source_loader(cfg: Any, dataset: Any, rank: int, world_size: int, seed: int) -> Any:
    """The default training loader: ``dataset`` alone, ``data.batch_size`` images a batch."""
    from omniseg.data.loader import build_train_loader

    return build_train_loader([dataset], "mix", cfg.data.batch_size, num_workers=cfg.data.num_workers,
                              rank=rank, world_size=world_size, seed=seed)


def no_text_encoder(cfg: Any) -> str:
    return ""


def no_predictor(model: nn.Module, cfg: Any, info: RunInfo) -> Predictor:
    """The predictor of a pretraining recipe (``omniseg pretrain``): such a run predicts nothing, its
    product is the exported backbone."""
    from omniseg.errors import ArgumentValueError

    raise ArgumentValueError("a pretraining run predicts nothing; load its backbone with "
                             "model.pretrained=<run>/backbone.safetensors")


@dataclass(frozen=True)
class Recipe(Generic[C]):
    """A method (module docstring). Instances live in the recipe modules as ``RECIPE``."""

    name: str
    config: type[C]
    build_model: Callable[[C, RunInfo], nn.Module]
    train_data: Callable[[C, bool], Any]
    eval_fn: Callable[[C, RunInfo, bool], EvalFn]
    predictor: Callable[[nn.Module, C, RunInfo], Predictor]
    stages: Callable[[C, nn.Module], list[Stage]] = single_stage
    train_loader: Callable[[C, Any, int, int, int], Any] = single_source_loader
    text_encoder: Callable[[C], str] = no_text_encoder
    pad_divisor: int = 32  # the API pads a single image to a multiple of this before predicting
    #: prompt boxes: "none" (the model finds its objects), "required" (it segments given boxes only:
    #: box_to_mask, MAL), "optional" (it finds its objects, or segments given boxes of named classes: Mask^X)
    boxes: Literal["none", "required", "optional"] = "none"


def _is_temp(p: Path) -> bool:
    """A temporary file or folder of the atomic writers (hidden, ``.tmp`` in its name)."""
    return p.name.startswith(".") and ".tmp" in p.name


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    else:
        p.unlink(missing_ok=True)


def _trained(folder: Path) -> bool:
    """Whether ``folder`` holds a run that got somewhere: checkpoints or metrics (a lone
    ``config.yaml`` is what a run that failed before its first step leaves; it is no run)."""
    return any((folder / n).exists() for n in TRAINER_OUTPUTS if n != "config.yaml")


def run_outputs(folder: Path, stage_dirs: Sequence[str] | None = None) -> list[Path]:
    """The files of a previous run in ``folder`` (:data:`RUN_OUTPUTS`, and its stage subfolders
    holding trainer files), temporary files left by a killed run excluded.

    ``stage_dirs``: the names of this run's stage subfolders; None counts every subfolder holding
    trainer files as one. A folder whose only run file is ``config.yaml`` holds no run.
    """
    if not folder.is_dir():
        return []
    found = [folder / n for n in RUN_OUTPUTS if (folder / n).exists()]
    found += [p for p in _run_subfolders(folder) if stage_dirs is None or p.name in stage_dirs]
    return [] if [p.name for p in found] == ["config.yaml"] else found


def _run_subfolders(folder: Path) -> list[Path]:
    """Subfolders of ``folder`` that hold a run's trainer files (a stage's, or another run's)."""
    return [p for p in sorted(folder.iterdir()) if p.is_dir() and not p.is_symlink() and p.name not in RUN_OUTPUTS
            and _trained(p)]


def stage_dir_names(output_dir: str | Path, stages: Sequence[Stage]) -> list[str]:
    """The subfolders of ``output_dir`` that ``stages`` write into (e.g. ``["stage1"]``)."""
    out, names = Path(output_dir), []
    for stage in stages:
        with contextlib.suppress(ValueError):  # a stage writing elsewhere
            rel = Path(stage.train.output_dir).relative_to(out)
            if rel.parts:
                names.append(rel.parts[0])
    return names


@contextlib.contextmanager
def run_folder_lock(folder: str | Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``<folder>/.omniseg-train.lock`` (creating the folder).

    A second ``omniseg train`` into the same folder fails at once instead of interleaving its
    metrics and checkpoints with this one's. The kernel releases the lock when the process
    ends, also on kill -9 (a stale lock file is then simply locked again). On exit the lock
    file is removed, and so is a folder this call created that nothing else was written into.

    Raises:
        RunFolderError: another process holds the lock (naming its pid).
    """
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_FILE
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise RunFolderError(f"{folder}: is in use by another omniseg train (pid {pid})") from None
        try:  # the holder before us may have removed the file we opened: lock the one at the path
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        lock.unlink(missing_ok=True)  # still locked: whoever opened it retries on the new file
        os.close(fd)
        if created:
            with contextlib.suppress(OSError):  # not empty: the run wrote there
                folder.rmdir()


def _same_file(a: Any, b: Any) -> bool:
    """Whether ``a`` and ``b`` are paths of two existing files with the same bytes (e.g. ``model.pretrained`` of one
    checkout and of a clone of it: the same weights)."""
    if not (isinstance(a, str) and isinstance(b, str) and a and b):
        return False
    try:
        return Path(a).is_file() and Path(b).is_file() and filecmp.cmp(a, b, shallow=False)
    except OSError:
        return False


def check_resume_config(output_dir: str | Path, cfg: Any) -> None:
    """Refuse to ``--resume`` a run with another model than the one its folder holds.

    Compares the recipe and the ``model`` section with the run's saved ``config.yaml`` (a path to a file with the same
    bytes, e.g. the pretrained weights read from a clone of the checkout, is the same value); without
    one there is nothing to compare (the checkpoint's own check then names a shape that differs).

    Raises:
        RunFolderError: naming the folder and each differing key (old -> new value).
    """
    saved_path = Path(output_dir) / "config.yaml"
    if not saved_path.is_file():
        return
    try:
        saved = read_yaml(saved_path)
    except ConfigError:
        return  # a damaged copy; the checkpoints decide
    new = config_to_dict(cfg)
    diffs = [f"recipe: {saved.get('recipe')!r} -> {new.get('recipe')!r}"] \
        if "recipe" in new and saved.get("recipe") not in (None, new["recipe"]) else []
    old_model, new_model = saved.get("model"), new.get("model")
    if isinstance(old_model, dict) and isinstance(new_model, dict):
        # a field added to the model section since the run started, at its default, is the old behaviour
        defaults = config_to_dict(type(cfg.model)()) if dataclasses.is_dataclass(getattr(cfg, "model", None)) else {}
        diffs += [f"model.{k}: {old_model.get(k)!r} -> {new_model.get(k)!r}"
                  for k in sorted(set(old_model) | set(new_model)) if old_model.get(k) != new_model.get(k)
                  and not (k not in old_model and k in defaults and new_model.get(k) == defaults[k])
                  and not _same_file(old_model.get(k), new_model.get(k))]
    if diffs:
        raise RunFolderError(f"{output_dir}: --resume with another model than the run's ({'; '.join(diffs)}); "
                             "use the run's config, or start a new run elsewhere")


def prepare_run_folder(output_dir: str | Path, *, resume: bool, overwrite: bool, remove: bool = True,
                       stage_dirs: Sequence[str] | None = None) -> None:
    """Check ``train.output_dir`` against the request before anything is trained or written.

    * ``resume``: a checkpoint must be there (its own or a stage's); temporary files a killed run
      left are removed (one writer per run folder).
    * a new run: the folder must hold no other run's files (:func:`run_outputs`), or ``overwrite``
      removes them (and says so on stderr). Only this run's own files and stage folders
      (``stage_dirs``) are ever removed: a subfolder holding another run is refused.

    ``remove=False`` only checks (before the data and model are built; and on the other ranks of
    a distributed run: rank 0 removes). ``stage_dirs`` None: the stage names are not known yet,
    every run-like subfolder counts as one of this run's stages.

    Raises:
        RunFolderError: naming the folder.
    """
    from omniseg.engine.checkpoint import latest_checkpoint

    out = Path(output_dir)
    previous = run_outputs(out, stage_dirs)
    if resume:
        runs = [out, *(p for p in previous if p.name not in RUN_OUTPUTS)]
        if not any(latest_checkpoint(r / "checkpoints") for r in runs):
            raise RunFolderError(f"{out}: --resume, but there is no checkpoint to resume from "
                                 f"(no complete step_* folder in {out / 'checkpoints'}); run without --resume")
        for folder in (f for r in runs for f in (r, r / "checkpoints") if remove and f.is_dir()):
            for p in folder.iterdir():
                if _is_temp(p):
                    _remove(p)
        return
    if stage_dirs is not None and out.is_dir():
        others = [p.name for p in _run_subfolders(out) if p.name not in stage_dirs]
        if others:
            raise RunFolderError(f"{out}: holds other runs in subfolders ({', '.join(others)}), which this run "
                                 "would not replace; choose a folder of its own for train.output_dir")
    if previous and not overwrite:
        names = ", ".join(p.name for p in previous)
        raise RunFolderError(f"{out}: holds a previous run ({names}); pass --resume to continue it "
                             "or --overwrite to delete it and start again")
    if overwrite and remove and out.is_dir():
        leftovers = [p for p in out.iterdir() if _is_temp(p)]
        for p in previous + leftovers:
            _remove(p)
        if previous:
            print(f"{out}: --overwrite: removed the previous run ({', '.join(p.name for p in previous)})",
                  file=sys.stderr)


def run_recipe(recipe: Recipe, cfg: Any, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Train ``recipe`` as ``cfg`` says (optionally resuming every stage) and evaluate.

    ``train.output_dir`` is checked first (:func:`prepare_run_folder`): ``resume`` needs a
    checkpoint there; a new run needs a folder without another run's files, or ``overwrite``.
    Writes ``<train.output_dir>/run.json`` (:class:`RunInfo`, metrics included at the end) and
    keeps the same description in every checkpoint. Returns the last stage's trainer summary
    (``{"step", "losses", "eval"}``).

    Raises:
        RunFolderError: the run folder does not fit ``resume`` / ``overwrite``.
    """
    from omniseg.engine.distributed import barrier, get_rank, get_world_size, is_main_process
    from omniseg.engine.trainer import resolve_device, seed_everything
    from omniseg.viz.curves import write_training_curves_or_warn

    t = cfg.train
    resolve_device(t.device)  # a device this machine lacks fails now, not after the data are built
    main = is_main_process()
    with run_folder_lock(t.output_dir) if main else contextlib.nullcontext():
        prepare_run_folder(t.output_dir, resume=resume, overwrite=overwrite, remove=False)
        if resume:
            check_resume_config(t.output_dir, cfg)
        seed_everything(t.seed + get_rank(), t.deterministic)
        dataset = recipe.train_data(cfg, t.progress)
        info = RunInfo(recipe.name, categories_info(dataset.rs.categories), recipe.text_encoder(cfg))
        model = recipe.build_model(cfg, info)
        data = recipe.train_loader(cfg, dataset, get_rank(), get_world_size(), t.seed)
        stages = recipe.stages(cfg, model)
        # everything is valid and built: only now may --overwrite delete the previous run
        prepare_run_folder(t.output_dir, resume=resume, overwrite=overwrite, remove=main,
                           stage_dirs=stage_dir_names(t.output_dir, stages))
        barrier()  # every rank checked; rank 0 removed what had to go
        summary = _train_stages(recipe, cfg, stages, model, data, info, resume)
        if main:  # <run>/curves/*.png; a failure to draw is a warning, not a failed run
            write_training_curves_or_warn(t.output_dir)
        return summary


def _train_stages(recipe: Recipe, cfg: Any, stages: list[Stage], model: nn.Module, data: Any, info: RunInfo,
                  resume: bool) -> dict[str, Any]:
    """The training loop of :func:`run_recipe` over its ``stages``, then ``run.json``."""
    from omniseg.engine.distributed import is_main_process
    from omniseg.engine.optim import build_optimizer, build_scheduler
    from omniseg.engine.trainer import Trainer
    from omniseg.utils.atomic import atomic_write_json

    t = cfg.train
    summary: dict[str, Any] = {}
    for stage in stages:
        if stage.prepare is not None:
            stage.prepare(model)
        optimizer = build_optimizer(model, stage.train)
        trainer = Trainer(model, optimizer, build_scheduler(optimizer, stage.train), data, stage.train,
                          eval_fn=recipe.eval_fn(cfg, info, t.progress) if stage.evaluate else None,
                          run_config=cfg, run_info=dataclasses.asdict(info))
        if resume:
            trainer.resume()
        summary = trainer.train()
    if is_main_process():
        info.metrics = {k: v if math.isfinite(v) else None for k, v in (summary.get("eval") or {}).items()}
        atomic_write_json(Path(t.output_dir) / RUN_INFO, dataclasses.asdict(info), indent=1)
    return summary


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read: {e}") from None


def read_run_info(step_dir: Path, config: dict[str, Any]) -> RunInfo:
    """The :class:`RunInfo` of a checkpoint folder (``state.json`` extras), falling back to the run
    folder's ``run.json`` two levels up."""
    state = step_dir / "state.json"
    data = _read_json(state)
    extra = (data.get("extra") if isinstance(data, dict) else None) or {}
    if "run_info" in extra:
        return RunInfo.from_dict(extra["run_info"], str(state))
    run_json = step_dir.parent.parent / RUN_INFO
    if run_json.exists():
        return RunInfo.from_dict(_read_json(run_json), str(run_json))
    raise CheckpointError(f"{step_dir}: checkpoint does not describe its run (no run_info in state.json, no {run_json}); "
                     f"it was written before self-describing checkpoints (recipe {config.get('recipe')!r})")


def pad_images(image: Tensor, divisor: int = 32) -> tuple[Tensor, list[tuple[int, int]]]:
    """3 x H x W -> (1 x 3 x Hp x Wp zero-padded batch, [(H, W)]) with Hp, Wp multiples of ``divisor``."""
    import torch.nn.functional as F

    h, w = image.shape[-2:]
    ph, pw = (-h) % divisor, (-w) % divisor
    return F.pad(image, (0, pw, 0, ph))[None], [(int(h), int(w))]
