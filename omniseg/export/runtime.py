"""``OnnxSegmenter``: predict with an exported model under onnxruntime, post-processed by the
same code as the PyTorch predictor (design: :mod:`omniseg.export`).

    from omniseg.export import OnnxSegmenter
    seg = OnnxSegmenter("runs/x/onnx")                 # export folder, or a single .onnx file
    found = seg.predict("photo.jpg", boxes=[[10, 20, 200, 180]])   # list of Instance, masks as RLE
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from omniseg.data.records import Instance
from omniseg.errors import ArgumentValueError, UserError
from omniseg.export.writer import FORMAT, MANIFEST, VERSION, require
from omniseg.modeling.predictions import ImagePrediction, InstancePredictions
from omniseg.ops.masks import paste_masks_in_image


class ExportError(UserError):
    """An export folder / file that is not a readable omniseg ONNX export; the message names it."""


def read_manifest(path: str | os.PathLike) -> tuple[dict[str, Any], Path]:
    """The manifest of an export folder (``manifest.json``) or single ``.onnx`` file (metadata_props),
    and the folder holding its graphs."""
    p = Path(path)
    if p.is_dir():
        try:
            manifest = json.loads((p / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ExportError(f"{p / MANIFEST}: not an omniseg ONNX export ({e})") from None
        folder = p
    else:
        onnx = require("onnx")
        try:
            props = {m.key: m.value for m in onnx.load(str(p), load_external_data=False).metadata_props}
            manifest = json.loads(props["omniseg_manifest"])
        except FileNotFoundError:
            raise
        except Exception as e:  # protobuf / key / JSON errors all mean: not our export
            raise ExportError(f"{p}: not an omniseg ONNX export (no readable omniseg_manifest: {e})") from None
        folder = p.parent
        for graph in manifest.get("graphs", {}).values():  # the file may have been renamed
            graph["file"] = p.name
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ExportError(f"{p}: not an omniseg ONNX export of version {VERSION}")
    return manifest, folder


class OnnxSegmenter:
    """An exported model ready to predict, like :class:`omniseg.api.Segmenter` (same arguments and results).

    Args:
        path: an export folder (``omniseg export``) or a single-graph ``.onnx`` file.
        threads: onnxruntime intra-op threads (0: its default).
    """

    def __init__(self, path: str | os.PathLike, threads: int = 1):
        ort = require("onnxruntime")
        self.manifest, folder = read_manifest(path)
        self.recipe = self.manifest["recipe"]
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = opts.inter_op_num_threads = threads
        self.sessions = {role: ort.InferenceSession(str(folder / g["file"]), opts, providers=["CPUExecutionProvider"])
                         for role, g in self.manifest["graphs"].items()}
        from omniseg.engine.config import config_from_dict
        from omniseg.recipes.contract import RunInfo
        from omniseg.recipes.table import get_recipe

        self.cfg = config_from_dict(get_recipe(self.recipe, str(path)).config, self.manifest["config"], str(path))
        self.info = RunInfo(self.recipe, self.manifest["categories"], self.manifest["text_encoder"])
        self.vocabulary = list(self.manifest.get("vocabulary") or [])
        emb = self.manifest.get("text_embeddings")
        self.text_embeddings = np.load(folder / emb) if emb else None
        self._embedder = None

    def embed(self, texts: list[str]) -> np.ndarray:
        """C x D phrase embeddings: the exported ones for the training vocabulary, else the run's text encoder."""
        if self.text_embeddings is not None and all(t in self.vocabulary for t in texts):
            return self.text_embeddings[[self.vocabulary.index(t) for t in texts]].astype(np.float32)
        if self._embedder is None:
            from omniseg.recipes.open_vocab import build_phrase_embedder

            self._embedder = build_phrase_embedder(self.cfg.text, self.cfg.model.embed_dim)
        return self._embedder(texts).float().cpu().numpy()

    def predict(self, image: np.ndarray | str | os.PathLike, vocabulary: list[str] | None = None,
                boxes: np.ndarray | list | None = None, min_score: float = 0.0) -> list[Instance]:
        """Instances (text, score, box, RLE mask) in one image; see :meth:`omniseg.api.Segmenter.predict`."""
        from omniseg.api import clip_boxes

        if not (isinstance(min_score, (int, float)) and 0.0 <= min_score <= 1.0):
            raise ValueError(f"min_score must be a number in [0, 1], got {min_score!r}")
        source = "image"
        if not isinstance(image, np.ndarray):
            from omniseg.data.images import load_image

            source = os.fspath(image)
            image = load_image(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an H x W x 3 uint8 RGB image, got {image.shape} {image.dtype}")
        h, w = image.shape[:2]
        chw = np.ascontiguousarray(image.transpose(2, 0, 1)[None])
        if self.recipe in ("box_to_mask", "mal"):
            if boxes is None:
                raise ArgumentValueError(f"{self.recipe} segments given boxes: pass boxes=[[x0, y0, x1, y1], ...]")
            run = self._box_to_mask if self.recipe == "box_to_mask" else self._mal
            pred = run(chw, clip_boxes(boxes, w, h, source), vocabulary)
        elif self.recipe == "maskx_rcnn":
            pred = self._maskx(chw, vocabulary, None if boxes is None else clip_boxes(boxes, w, h, source))
        else:
            if boxes is not None:
                raise ArgumentValueError(f"{self.recipe} finds its own boxes; boxes= is for box-to-mask models")
            texts = list(vocabulary or self.vocabulary)
            if not texts:
                raise ArgumentValueError(f"{self.recipe}: empty vocabulary (pass vocabulary=[...])")
            pred = self._fcos_mo(chw, texts) if self.recipe == "fcos_mo" else self._two_stage(chw, texts)
        ids = {c.name: c.id for c in self.info.things()}
        found = pred.to_instances([ids.get(t) for t in pred.texts], source=self.recipe)
        return [i for i in found if i.score is None or i.score >= min_score]

    def _box_to_mask(self, image: np.ndarray, boxes: np.ndarray, vocabulary: list[str] | None) -> ImagePrediction:
        h, w = image.shape[-2:]
        probs = self.sessions["model"].run(None, {"image": image, "boxes": boxes})[0]
        b = torch.from_numpy(boxes)
        masks = paste_masks_in_image(torch.from_numpy(probs), b, (h, w), threshold=self.manifest["mask_threshold"])
        k, names = len(boxes), list(vocabulary or [])
        texts = [names[i] if i < len(names) else "object" for i in range(k)]
        return ImagePrediction(InstancePredictions(b, torch.ones(k), torch.arange(k), masks), texts)

    def _mal(self, image: np.ndarray, boxes: np.ndarray, vocabulary: list[str] | None, chunk: int = 32
             ) -> ImagePrediction:
        """MAL's masks for ``boxes``, as :meth:`omniseg.modeling.mal.MAL.predict_masks` makes them: its crop
        code (test-time margin, crop + resize, normalization), the graph, its paste-back and score."""
        from omniseg.data.box_crops import fixed_expansion
        from omniseg.modeling.mal import box_crops, normalize_crops, paste_and_score

        c, (h, w) = self.cfg.model, image.shape[-2:]
        b = torch.from_numpy(boxes).float().reshape(-1, 4)
        k = len(b)
        masks, scores = torch.zeros(k, h, w, dtype=torch.bool), torch.zeros(k)
        names = self.manifest["graphs"]["model"]["inputs"]
        for s in range(0, k, chunk):
            part = b[s: s + chunk]
            crops, valid, _, sizes, crop_boxes = box_crops(torch.from_numpy(image), [(h, w)], [part],
                                                           fixed_expansion(len(part), c.test_theta), c.crop_size,
                                                           c.size_limits)
            feeds = {"crops": normalize_crops(crops, valid).numpy(), "size_classes": sizes.numpy()}
            probs = torch.from_numpy(self.sessions["model"].run(None, {n: feeds[n] for n in names})[0])
            masks[s: s + chunk], scores[s: s + chunk] = paste_and_score(probs, crop_boxes, (h, w), c.mask_threshold)
        texts = [vocabulary[i] if vocabulary and i < len(vocabulary) else "object" for i in range(k)]
        return ImagePrediction(InstancePredictions(b, scores, torch.arange(k), masks), texts)

    def _fcos_mo(self, image: np.ndarray, texts: list[str]) -> ImagePrediction:
        from omniseg.modeling.fcos_mo import decode_detections, scale_ranges
        from omniseg.modeling.fcos_targets import all_level_locations

        h, w = image.shape[-2:]
        cfg = self.cfg.model
        probs, ltrb, ctr, sizes, *maps = self.sessions["dense"].run(
            None, {"image": image, "text_embeddings": self.embed(texts)})
        pts, _, _, counts = all_level_locations([tuple(s) for s in sizes.tolist()], self.manifest["strides"],
                                                scale_ranges(cfg.scale_bounds))
        r = decode_detections(torch.from_numpy(probs), torch.from_numpy(ctr), torch.from_numpy(ltrb), pts, counts,
                              (h, w), cfg)
        if len(r):
            feeds = dict(zip(cfg.mask_in_features, maps), boxes=r.boxes.numpy().astype(np.float32))
            m = torch.from_numpy(self.sessions["mask"].run(None, feeds)[0])
        else:
            m = r.boxes.new_zeros(0, 1, 1)
        r.masks = paste_masks_in_image(m, r.boxes, (h, w), threshold=self.manifest["mask_threshold"])
        return ImagePrediction(r, texts)

    def _two_stage_run(self, role: str, maps: dict[str, np.ndarray], boxes: torch.Tensor, **extra: np.ndarray
                       ) -> list[np.ndarray]:
        """Run the box or mask graph of a two-stage export on ``boxes`` (K >= 1)."""
        feeds = {**maps, "proposals" if role == "box" else "boxes": boxes.numpy().astype(np.float32), **extra}
        return self.sessions[role].run(None, {n: feeds[n] for n in self.manifest["graphs"][role]["inputs"]})

    def _two_stage(self, image: np.ndarray, texts: list[str] | None) -> ImagePrediction:
        """Mask^X R-CNN / Mask R-CNN* detections, as :meth:`omniseg.modeling.maskx_rcnn.MaskRCNN.predict`:
        the RPN graph, proposal selection, the box graph, second-stage decoding / NMS, the mask graph."""
        from omniseg.modeling.anchors import AnchorConfig, AnchorGenerator
        from omniseg.modeling.box_predictor import detections_from_outputs
        from omniseg.modeling.rpn import select_proposals

        h, w = image.shape[-2:]
        ts = self.manifest["two_stage"]
        rpn, box = ts["rpn"], ts["box"]
        obj, deltas, sizes, *maps = self.sessions["rpn"].run(None, {"image": image})
        feats = dict(zip(self.manifest["graphs"]["rpn"]["outputs"][3:], maps))
        anc = ts["anchors"]
        anchor_cfg = AnchorConfig(sizes=tuple(tuple(s) for s in anc["sizes"]), aspect_ratios=tuple(anc["aspect_ratios"]),
                                  strides=tuple(anc["strides"]), offset=anc["offset"])
        anchors = AnchorGenerator(anchor_cfg)([tuple(s) for s in sizes.tolist()])
        counts = [len(x) for x in anchors]
        props = select_proposals(anchors, [o[None] for o in torch.from_numpy(obj).split(counts)],
                                 [d[None] for d in torch.from_numpy(deltas).split(counts)], [(h, w)],
                                 rpn["pre_nms_topk_test"], rpn["post_nms_topk_test"], rpn["nms_threshold"],
                                 rpn["min_box_size"])[0]
        extra = {} if texts is None else {"class_embeddings": self.embed(texts)}
        names = texts if texts is not None else [c.name for c in self.info.things()]
        if len(props):
            logits, box_deltas = (torch.from_numpy(x) for x in self._two_stage_run("box", feats, props.boxes, **extra))
        else:
            logits, box_deltas = props.boxes.new_zeros(0, len(names) + 1), props.boxes.new_zeros(0, 4)
        objectness = props.objectness_logits.sigmoid() if box["calibrate_with_objectness"] else None
        d = detections_from_outputs(logits, box_deltas, props.boxes, (h, w), objectness, box["score_threshold"],
                                    box["nms_threshold"], box["detections_per_image"], tuple(box["box_weights"]))
        r = InstancePredictions(d.boxes, d.scores, d.labels, self._two_stage_masks(feats, d.boxes, d.labels, (h, w)))
        return ImagePrediction(r, names)

    def _two_stage_masks(self, feats: dict[str, np.ndarray], boxes: torch.Tensor, labels: torch.Tensor,
                         size: tuple[int, int]) -> torch.Tensor:
        """K x H x W bool masks of ``boxes`` for classes ``labels`` from the mask graph."""
        if len(boxes):
            extra = {"classes": labels.numpy().astype(np.int64)} if self.manifest["two_stage"]["mask_classes"] else {}
            probs = torch.from_numpy(self._two_stage_run("mask", feats, boxes, **extra)[0])
        else:
            probs = boxes.new_zeros(0, 1, 1)
        return paste_masks_in_image(probs, boxes, size, threshold=self.manifest["mask_threshold"])

    def _maskx(self, image: np.ndarray, vocabulary: list[str] | None, boxes: np.ndarray | None) -> ImagePrediction:
        """Mask^X R-CNN (closed vocabulary): detections restricted to ``vocabulary``, or masks of prompt
        ``boxes`` as its PyTorch predictor makes them (:func:`omniseg.recipes.maskx_rcnn.predictor`)."""
        names = [c.name for c in self.info.things()]
        unknown = sorted(set(vocabulary or []) - {*names, *(["object"] if boxes is not None else [])})
        if unknown:
            raise ArgumentValueError(f"not among this model's {len(names)} classes: {unknown} (closed vocabulary; "
                                     f"e.g. {names[:3]})")
        if boxes is None:
            pred = self._two_stage(image, None)
            return pred.restrict(vocabulary) if vocabulary else pred
        b = torch.from_numpy(boxes).float().reshape(-1, 4)
        given = [names.index(v) if v in names else -1 for v in (vocabulary or [])]
        labels = torch.tensor((given + [-1] * len(b))[:len(b)], dtype=torch.long)
        scores = torch.ones(len(b))
        maps = self.sessions["rpn"].run(None, {"image": image})[3:]
        feats = dict(zip(self.manifest["graphs"]["rpn"]["outputs"][3:], maps))
        unnamed = labels < 0
        if bool(unnamed.any()):  # the box head's best class (background excluded) and its probability
            logits = torch.from_numpy(self._two_stage_run("box", feats, b)[0])
            prob, cls = logits.softmax(-1)[:, :-1].max(-1)
            labels[unnamed], scores[unnamed] = cls[unnamed], prob[unnamed]
        masks = self._two_stage_masks(feats, b, labels, tuple(image.shape[-2:]))
        return ImagePrediction(InstancePredictions(b, scores, labels, masks), names)
