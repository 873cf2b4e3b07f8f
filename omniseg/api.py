"""``Segmenter``: load a trained run and predict on plain images with any vocabulary.

The trainable model (``omniseg.modeling``) is kept apart from this stateful predictor, as in
SAM's ``modeling/sam.py`` vs ``predictor.py``. A run folder is self-describing: a checkpoint
holds the resolved config (``config.json``, whose ``recipe`` names the method), the weights
(``model.safetensors``, ``ema.safetensors`` when EMA was on) and the run description
(:class:`~omniseg.recipes.contract.RunInfo`: categories, text-encoder id) -- nothing else, in
particular not the training data, is needed to predict.

    from omniseg.api import Segmenter
    seg = Segmenter.from_checkpoint("runs/x")                     # run folder, checkpoints/ or step_N/
    for inst in seg.predict("photo.jpg", vocabulary=["red ring", "blue star"]):
        print(inst.text, inst.score, inst.box)                     # inst.mask is COCO RLE
    sem = seg.predict_semantic("photo.jpg", vocabulary=["sky", "grass"])   # openseg / lseg runs
    sem.labels                                                     # H x W: index into sem.names, -1: none
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from omniseg.data.records import Instance
from omniseg.engine.checkpoint import resolve_checkpoint
from omniseg.errors import ArgumentValueError, UserError
from omniseg.modeling.predictions import ImagePrediction, semantic_labels
from omniseg.recipes.contract import Recipe, RunInfo, pad_images

__all__ = ["BoxError", "Segmenter", "SemanticResult", "clip_boxes", "resolve_checkpoint", "resolve_device"]


class BoxError(UserError, ValueError):
    """A prompt box is malformed or does not overlap the image; the message names the image."""


def resolve_device(device: str | torch.device, key: str = "device") -> torch.device:
    """``device`` as a torch device, checked to exist here (a UserError naming ``key`` otherwise,
    e.g. CUDA asked for on a machine without it) so that a bad device fails before any model is
    built. The same check as training's (:func:`omniseg.engine.trainer.resolve_device`)."""
    from omniseg.engine.trainer import resolve_device as resolve

    return resolve(str(device), key)


def clip_boxes(boxes: np.ndarray | list, width: int, height: int, source: str = "image") -> np.ndarray:
    """K x 4 XYXY prompt boxes clipped to a ``width`` x ``height`` image.

    A box partly outside the image is clipped to it; a box that is not finite, not
    ``x1 > x0, y1 > y0``, or that does not overlap the image at all is a :class:`BoxError` naming
    the box, ``source`` (the image file) and the image size -- a mask for it would be empty.
    """
    try:
        arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    except (ValueError, TypeError) as e:
        raise BoxError(f"{source}: boxes must be K x 4 numbers [x0, y0, x1, y1]: {e}") from None
    for b in arr:
        shown = f"[{', '.join(f'{v:g}' for v in b)}]"
        if not np.isfinite(b).all() or not (b[2] > b[0] and b[3] > b[1]):
            raise BoxError(f"{source}: box {shown} is not x0,y0,x1,y1 with finite x1 > x0 and y1 > y0")
        if b[0] >= width or b[1] >= height or b[2] <= 0 or b[3] <= 0:
            raise BoxError(f"{source}: box {shown} does not overlap the image ({width} x {height} pixels)")
    return np.clip(arr, 0, [width, height, width, height]).astype(np.float32)


class Segmenter:
    """A trained model ready to predict.

    Args:
        model: the trained module (eval mode is set here).
        recipe: the method that built it.
        cfg: the run's resolved config.
        info: the run's description (categories, text encoder).
        device: where to run.
    """

    def __init__(self, model: torch.nn.Module, recipe: Recipe, cfg: Any, info: RunInfo,
                 device: str | torch.device = "cpu"):
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.recipe, self.cfg, self.info = recipe, cfg, info
        self.predictor = recipe.predictor(self.model, cfg, info)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str = "cpu", use_ema: bool = False) -> Segmenter:
        """Build the model the checkpoint describes and load its (or its EMA's) weights.

        Every problem with the checkpoint (missing or damaged config, unknown recipe, no run
        description, weights that do not fit) is a one-line :class:`~omniseg.errors.UserError`
        (or ``FileNotFoundError``) naming the file; the device is checked first.
        """
        from omniseg.data.formats.validation import load_json_file
        from omniseg.engine.checkpoint import load_weights_into
        from omniseg.engine.config import ConfigError, config_from_dict
        from omniseg.recipes.contract import read_run_info
        from omniseg.recipes.table import get_recipe
        from omniseg.utils.weights_io import CheckpointError

        dev = resolve_device(device)
        step = resolve_checkpoint(path)
        config_file = step / "config.json"
        if not config_file.exists():
            raise FileNotFoundError(f"{config_file}: checkpoint has no config; cannot rebuild the model")
        raw = load_json_file(config_file)
        if not isinstance(raw, dict):
            raise ConfigError(f"{config_file}: expected a JSON object (the run config), got {type(raw).__name__}")
        recipe = get_recipe(raw.get("recipe", ""), str(config_file))
        cfg = config_from_dict(recipe.config, raw, str(config_file))
        info = read_run_info(step, raw)
        if info.recipe != recipe.name:
            raise CheckpointError(f"{step}: its run description names recipe {info.recipe!r}, its config "
                                  f"{config_file} names {recipe.name!r}; which model this is is unclear")
        for key in ("pretrained", "init_from"):  # the checkpoint holds every weight; the initial files may be gone
            if getattr(getattr(cfg, "model", None), key, ""):
                setattr(cfg.model, key, "")
        model = recipe.build_model(cfg, info)
        weights_file = step / ("ema.safetensors" if use_ema else "model.safetensors")
        if not weights_file.exists():
            raise FileNotFoundError(f"{weights_file}: not in the checkpoint" + (" (trained without EMA?)" if use_ema else ""))
        load_weights_into(model, weights_file)
        return cls(model, recipe, cfg, info, dev)

    def predict(
        self,
        image: np.ndarray | str | os.PathLike,
        vocabulary: list[str] | None = None,
        boxes: np.ndarray | list | None = None,
        min_score: float = 0.0,
    ) -> list[Instance]:
        """Instances (text, score, box, RLE mask) in one image.

        Args:
            image: H x W x 3 uint8 RGB array, or a path to an image file.
            vocabulary: class names / phrases to recognise (open-vocabulary models); None = the
                model's training vocabulary. With ``boxes``, box k is named ``vocabulary[k]``
                ("object" past its end; Mask^X R-CNN: the box's class, see its predictor).
            boxes: K x 4 XYXY boxes for models that segment given boxes (box-to-mask, Mask^X
                R-CNN); a box partly outside the image is clipped to it, one wholly outside is a
                :class:`BoxError` (see :func:`clip_boxes`).
            min_score: drop predictions below this score, in [0, 1].
        """
        return self.predict_batch([image], vocabulary, None if boxes is None else [boxes], min_score)[0]

    def predict_batch(
        self,
        images: Sequence[np.ndarray | str | os.PathLike],
        vocabulary: Sequence[str] | Sequence[Sequence[str]] | None = None,
        boxes: Sequence[np.ndarray | list] | None = None,
        min_score: float = 0.0,
    ) -> list[list[Instance]]:
        """:meth:`predict` for several images: one list of instances per image, in order.

        Images whose padded sizes agree (and, with boxes, whose box names agree) go through the
        model as one batch; the others in separate passes. Results therefore never depend on how
        images are grouped: ``predict_batch(xs)[i] == predict(xs[i])``. Every image and box is
        checked before the model runs.

        Args:
            images: H x W x 3 uint8 RGB arrays or image paths (sizes may differ).
            vocabulary: as in :meth:`predict`, for every image; with ``boxes`` also one list per
                image naming that image's boxes.
            boxes: one K_i x 4 XYXY array per image (K_i may be 0: no instance for that image).
            min_score: drop predictions below this score, in [0, 1].
        """
        if not (isinstance(min_score, (int, float)) and 0.0 <= min_score <= 1.0):  # NaN fails too
            raise ValueError(f"min_score must be a number in [0, 1], got {min_score!r}")
        arrays, sources = self._load(images)
        names = _names_per_image(vocabulary, len(arrays), boxes is not None)
        prompts = None
        if boxes is not None:
            if len(boxes) != len(arrays):
                raise ValueError(f"boxes: one K x 4 array per image expected, got {len(boxes)} for {len(arrays)} images")
            prompts = [clip_boxes(b, a.shape[1], a.shape[0], s) for b, a, s in zip(boxes, arrays, sources)]
        ids = {c.name: c.id for c in self.info.things()}  # training class names keep their ids
        found: list[list[Instance]] = []
        for out in self._run(arrays, names, prompts):
            insts = [] if out is None else out.to_instances([ids.get(t) for t in out.texts], source=self.recipe.name)
            found.append([i for i in insts if i.score is None or i.score >= min_score])
        return found

    def predict_semantic(
        self,
        image: np.ndarray | str | os.PathLike,
        vocabulary: list[str] | None = None,
        min_score: float | None = None,
        class_scores: bool = False,
    ) -> SemanticResult:
        """The class of every pixel (semantic segmentation) of one image, for models with per-pixel
        output (``openseg``, ``lseg``): the argmax of the per-pixel scores over the vocabulary
        (OpenSeg Sec. 3.4, Eq. 6).

        Args:
            image: H x W x 3 uint8 RGB array, or a path to an image file.
            vocabulary: class names / phrases; None = the model's classes (a model trained
                without classes, on captions only, needs one).
            min_score: pixels whose best score is below this get no class (-1); on the model's
                score scale (:attr:`~omniseg.modeling.predictions.ImagePrediction.semantic`).
                None: every pixel gets a class.
            class_scores: also return the K x H x W scores of every class.

        Raises:
            ArgumentValueError: the model has no per-pixel output, or no vocabulary of its own
                and none was given.
        """
        return self.predict_semantic_batch([image], vocabulary, min_score, class_scores)[0]

    def predict_semantic_batch(
        self,
        images: Sequence[np.ndarray | str | os.PathLike],
        vocabulary: Sequence[str] | None = None,
        min_score: float | None = None,
        class_scores: bool = False,
    ) -> list[SemanticResult]:
        """:meth:`predict_semantic` for several images (batched as in :meth:`predict_batch`)."""
        no_output = ArgumentValueError(f"recipe {self.recipe.name!r} has no per-pixel output (it predicts "
                                       "instances); semantic segmentation needs an openseg, lseg or align model")
        if self.recipe.boxes == "required":  # it segments given boxes only
            raise no_output
        if min_score is not None and not (isinstance(min_score, (int, float)) and math.isfinite(min_score)):
            raise ValueError(f"min_score must be a finite number or None, got {min_score!r}")
        if vocabulary is None and not self.info.categories:
            raise ArgumentValueError(f"recipe {self.recipe.name!r}: this model has no classes of its own (trained "
                                     "on captions); give a vocabulary of class names / phrases")
        arrays, _ = self._load(images)
        results = []
        for image, out in zip(arrays, self._run(arrays, _names_per_image(vocabulary, len(arrays), False), None)):
            if out is None or out.semantic is None:
                raise no_output
            want = (len(out.texts), *image.shape[:2])
            if tuple(out.semantic.shape) != want:
                raise RuntimeError(f"recipe {self.recipe.name!r} returned semantic scores of shape "
                                   f"{tuple(out.semantic.shape)}, expected K x H x W = {want}")
            labels, best = semantic_labels(out.semantic, min_score)
            results.append(SemanticResult(labels.cpu().numpy(), best.cpu().numpy().astype(np.float32),
                                          list(out.texts),
                                          out.semantic.float().cpu().numpy() if class_scores else None))
        return results

    def predict_panoptic(self, image: np.ndarray | str | os.PathLike,
                         vocabulary: list[str] | None = None) -> PanopticResult:
        """Panoptic segmentation of one image (models with panoptic output: ``vloss``): every pixel
        belongs to at most one segment, a thing instance or a stuff region.

        Raises:
            ArgumentValueError: the model has no panoptic output.
        """
        return self.predict_panoptic_batch([image], vocabulary)[0]

    def predict_panoptic_batch(self, images: Sequence[np.ndarray | str | os.PathLike],
                               vocabulary: Sequence[str] | None = None) -> list[PanopticResult]:
        """:meth:`predict_panoptic` for several images (batched as in :meth:`predict_batch`)."""
        none = ArgumentValueError(f"recipe {self.recipe.name!r} has no panoptic output; panoptic segmentation "
                                  "needs a model that segments things and stuff (vloss)")
        if self.recipe.boxes == "required":
            raise none
        arrays, _ = self._load(images)
        results = []
        for image, out in zip(arrays, self._run(arrays, _names_per_image(vocabulary, len(arrays), False), None)):
            if out is None or out.panoptic is None or out.segments is None:
                raise none
            if tuple(out.panoptic.shape) != image.shape[:2]:
                raise RuntimeError(f"recipe {self.recipe.name!r} returned a panoptic map of shape "
                                   f"{tuple(out.panoptic.shape)} for an image of {image.shape[:2]}")
            results.append(PanopticResult(out.panoptic.cpu().numpy(), list(out.segments), list(out.texts)))
        return results

    def _load(self, images: Sequence[np.ndarray | str | os.PathLike]) -> tuple[list[np.ndarray], list[str]]:
        """The images as H x W x 3 uint8 arrays (files read) and their names for messages."""
        arrays, sources = [], []
        for k, image in enumerate(images):
            source = f"image #{k}" if len(images) > 1 else "image"
            if not isinstance(image, np.ndarray):
                from omniseg.data.images import load_image

                source = os.fspath(image)
                image = load_image(image)
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(f"{source}: expected an H x W x 3 uint8 RGB image, got {image.shape} {image.dtype}")
            arrays.append(image)
            sources.append(source)
        return arrays, sources

    def _run(self, arrays: list[np.ndarray], names: list[list[str] | None],
             prompts: list[np.ndarray] | None) -> list[ImagePrediction | None]:
        """The predictor's output per image (None: an image with an empty box list, not run).

        Images whose padded sizes agree (and, with ``prompts``, whose box names agree) go through
        the model as one batch, the others in separate passes.
        """
        groups: dict[tuple, list[int]] = {}
        tensors = []
        for k, image in enumerate(arrays):
            tensors.append(torch.from_numpy(np.array(image)).permute(2, 0, 1).to(self.device))  # copy: may be read-only
            if prompts is not None and len(prompts[k]) == 0:
                continue  # no box, no instance: nothing to run
            hp, wp = (-(-s // self.recipe.pad_divisor) * self.recipe.pad_divisor for s in image.shape[:2])
            groups.setdefault((hp, wp, tuple(names[k] or ()) if prompts is not None else None), []).append(k)
        outs: list[ImagePrediction | None] = [None] * len(arrays)
        for members in groups.values():
            padded = [pad_images(tensors[k], self.recipe.pad_divisor) for k in members]
            batch = torch.cat([p for p, _ in padded])
            sizes = [s for _, (s,) in padded]
            box_t = None if prompts is None else [torch.from_numpy(prompts[k]) for k in members]
            with torch.no_grad():
                for k, out in zip(members, self.predictor(batch, sizes, sizes, names[members[0]], box_t)):
                    outs[k] = out
        return outs


@dataclass
class PanopticResult:
    """One image's panoptic segmentation (:meth:`Segmenter.predict_panoptic`).

    Attributes:
        index: H x W int64, per pixel an index into ``segments``; -1: no segment.
        segments: one dict per segment: ``text`` (its class name / phrase), ``isthing``, ``score``.
        names: the class names / phrases asked for (the vocabulary, or the model's classes).
    """

    index: np.ndarray
    segments: list[dict]
    names: list[str]


@dataclass
class SemanticResult:
    """The class of every pixel of one image (:meth:`Segmenter.predict_semantic`).

    Attributes:
        labels: H x W int64, per pixel an index into ``names``; -1: no class (its best score is
            below ``min_score``, or the model ruled every class out there).
        scores: H x W float32, the score of each pixel's best class (the model's scale).
        names: the K class names / phrases the labels index (the vocabulary asked for, or the
            model's classes).
        class_scores: K x H x W float32 scores of every class (only when asked for).
    """

    labels: np.ndarray
    scores: np.ndarray
    names: list[str]
    class_scores: np.ndarray | None = None

    def label_map(self, ignore_index: int = 255) -> np.ndarray:
        """``labels`` with ``ignore_index`` where no class: the prediction maps of
        :func:`omniseg.evaluation.semantic.semantic_miou` (its "no prediction")."""
        return np.where(self.labels < 0, ignore_index, self.labels)

    def areas(self) -> list[int]:
        """Pixels per class, in ``names`` order."""
        return np.bincount(self.labels[self.labels >= 0].ravel(), minlength=len(self.names)).tolist()


def _names_per_image(vocabulary: Sequence | None, n: int, per_image_allowed: bool) -> list[list[str] | None]:
    """``vocabulary`` of :meth:`Segmenter.predict_batch` as one list (or None) per image."""
    if vocabulary is None or isinstance(vocabulary, str):
        if isinstance(vocabulary, str):
            raise ValueError(f"vocabulary must be a list of names, got the string {vocabulary!r}")
        return [None] * n
    items = list(vocabulary)
    if not any(isinstance(v, (list, tuple)) for v in items):
        return [items] * n
    if not per_image_allowed or len(items) != n or not all(isinstance(v, (list, tuple)) for v in items):
        raise ValueError("vocabulary: a list of names, or (with boxes) one list of box names per image "
                         f"({n} images)")
    return [list(v) for v in items]
