"""Write a run's ONNX graph(s) and their manifest (design: :mod:`omniseg.export`)."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import time
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn

from omniseg.errors import UsageError, UserError
from omniseg.export.graphs import (
    MIN_OPSET,
    BoxToMaskGraph,
    FCOSMODenseGraph,
    FCOSMOMaskGraph,
    MALGraph,
    TwoStageBoxGraph,
    TwoStageMaskGraph,
    TwoStageRPNGraph,
)

MANIFEST = "manifest.json"
TEXT_EMBEDDINGS = "text_embeddings.npy"
#: the manifest's ``format`` tag and version (bumped when its meaning changes)
FORMAT, VERSION = "omniseg-onnx", 1
#: opsets the (TorchScript-based) exporter of torch 2.x writes
MAX_OPSET = 20
#: what an export folder holds (atomic_dir replaces an older export only if it holds nothing else)
OWNED = ("*.onnx", MANIFEST, TEXT_EMBEDDINGS)
EXPORTABLE = ("box_to_mask", "mal", "fcos_mo", "maskx_rcnn", "mask_rcnn_star")
TWO_STAGE = ("maskx_rcnn", "mask_rcnn_star")
#: recipes whose phrase embeddings are a graph input (text_embeddings.npy ships the training vocabulary's)
OPEN_VOCAB = ("fcos_mo", "mask_rcnn_star")


def require(name: str) -> ModuleType:
    """Import an optional ONNX package, or a UserError naming the extra that installs it."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        raise UserError(f"ONNX export and inference need the {name} package: pip install 'omniseg[onnx]'") from None


@dataclasses.dataclass
class GraphSpec:
    """One graph to export: its role ("model"; "dense", "mask"; "rpn", "box", "mask"), file, traced module,
    example inputs and named, dynamic inputs / outputs."""

    role: str
    file: str
    module: nn.Module
    inputs: tuple[torch.Tensor, ...]
    input_names: list[str]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]]
    doc: dict[str, str]


def example_boxes(height: int, width: int) -> torch.Tensor:
    """Three boxes of different sizes inside an H x W image (example inputs; any K works)."""
    return torch.tensor([[0.1 * width, 0.1 * height, 0.5 * width, 0.6 * height],
                         [0.3 * width, 0.2 * height, 0.95 * width, 0.9 * height],
                         [2.0, 3.0, 2.0 + 0.1 * width, 3.0 + 0.1 * height]], dtype=torch.float32)


def graph_specs(recipe: str, model: nn.Module, cfg: Any, image: torch.Tensor, text: torch.Tensor | None,
                pad_divisor: int) -> list[GraphSpec]:
    """The graphs of a recipe's model, traced on ``image`` (1 x 3 x H x W uint8)."""
    h, w = image.shape[-2:]
    boxes = example_boxes(h, w)
    img_doc = "1 x 3 x H x W uint8 RGB (any H, W; normalized in the graph)"
    if recipe == "box_to_mask":
        return [GraphSpec("model", "box_to_mask.onnx", BoxToMaskGraph(model), (image, boxes), ["image", "boxes"], ["mask_probs"],
                          {"image": {2: "height", 3: "width"}, "boxes": {0: "num_boxes"}, "mask_probs": {0: "num_boxes"}},
                          {"image": img_doc, "boxes": "K x 4 float32 XYXY pixels",
                           "mask_probs": "K x M x M mask probabilities in each box (paste into the box, threshold 0.5)"})]
    if recipe == "mal":
        return [mal_spec(model, image)]
    if recipe in TWO_STAGE:
        return two_stage_specs(recipe, model, image, text, pad_divisor)
    assert recipe == "fcos_mo" and text is not None
    dense = FCOSMODenseGraph(model, pad_divisor)
    feats = list(cfg.model.mask_in_features)
    with torch.no_grad():
        maps = dense(image, text)[4:]
    loc = {0: "num_locations"}
    return [
        GraphSpec("dense", "fcos_mo_dense.onnx", dense, (image, text), ["image", "text_embeddings"],
                  ["class_probs", "ltrb", "centerness", "level_sizes", *feats],
                  {"image": {2: "height", 3: "width"}, "text_embeddings": {0: "num_phrases"},
                   "class_probs": {**loc, 1: "num_phrases"}, "ltrb": loc, "centerness": loc,
                   **{f: {2: f"{f}_height", 3: f"{f}_width"} for f in feats}},
                  {"image": img_doc + f"; padded to a multiple of {pad_divisor} in the graph",
                   "text_embeddings": "C x D phrase embeddings (the run's text encoder; text_embeddings.npy holds "
                                      "the training vocabulary's)",
                   "class_probs": "P x C: softmax over the C phrases + background (dropped), per location",
                   "ltrb": "P x 4 distances (left, top, right, bottom) in pixels", "centerness": "P logits",
                   "level_sizes": "L x 2 int64 (h, w) of P3..P7; locations are levels fine to coarse, row-major",
                   **{f: f"FPN map {f}, input of fcos_mo_mask.onnx" for f in feats}}),
        GraphSpec("mask", "fcos_mo_mask.onnx", FCOSMOMaskGraph(model), (*maps, boxes), [*feats, "boxes"], ["mask_probs"],
                  {**{f: {2: f"{f}_height", 3: f"{f}_width"} for f in feats}, "boxes": {0: "num_boxes"},
                   "mask_probs": {0: "num_boxes"}},
                  {"boxes": "K x 4 float32 XYXY pixels (detections)",
                   "mask_probs": "K x M x M mask probabilities in each box (paste into the box, threshold 0.5)"}),
    ]


def mal_spec(model: nn.Module, image: torch.Tensor) -> GraphSpec:
    """MAL's task network on crops (:class:`~omniseg.export.graphs.MALGraph`), traced on the crops of
    :func:`example_boxes` in ``image`` made as its predictor makes them."""
    from omniseg.data.box_crops import fixed_expansion
    from omniseg.modeling.mal import box_crops, normalize_crops

    c, (h, w) = model.cfg, image.shape[-2:]
    boxes = example_boxes(h, w)
    crops, valid, _, sizes, _ = box_crops(image, [(h, w)], [boxes], fixed_expansion(len(boxes), c.test_theta),
                                          c.crop_size, c.size_limits)
    scaled = model.student.scale_by_size
    k = {0: "num_boxes"}
    return GraphSpec(
        "model", "mal.onnx", MALGraph(model.student), (normalize_crops(crops, valid), *((sizes,) if scaled else ())),
        ["crops", *(["size_classes"] if scaled else [])], ["mask_probs"],
        {"crops": k, "mask_probs": k, **({"size_classes": k} if scaled else {})},
        {"crops": f"K x 3 x {c.crop_size} x {c.crop_size} float32: each box expanded by the test margin (manifest "
                  "mal.test_theta), cropped, resized (bilinear), (RGB/255 - pixel_mean/255) / (pixel_std/255), 0 "
                  "outside the image (omniseg.modeling.mal.box_crops, normalize_crops)",
         **({"size_classes": f"K int64: 0 / 1 / 2 for box areas below {c.size_limits[0]}^2 / below "
                             f"{c.size_limits[1]}^2 / above (the original box)"} if scaled else {}),
         "mask_probs": f"K x {c.crop_size} x {c.crop_size} mask probabilities in each crop (paste into the crop "
                       f"box, threshold mal.mask_threshold; score = mean probability inside the mask)"})


def two_stage_specs(recipe: str, model: nn.Module, image: torch.Tensor, text: torch.Tensor | None,
                    pad_divisor: int) -> list[GraphSpec]:
    """The three graphs of a Mask^X R-CNN / Mask R-CNN* (:class:`~omniseg.modeling.maskx_rcnn.MaskRCNN`)."""
    det, head = model.detector, model.mask_head
    if det.roi_heads.cfg.sampling_ratio != 0 or head.cfg.sampling_ratio != 0:
        raise UserError(f"{recipe}: only adaptive RoIAlign sampling (sampling_ratio 0) exports to ONNX")
    box_maps, mask_maps = list(det.box_in_features), list(model.mask_in_features)
    maps = list(dict.fromkeys(box_maps + mask_maps))
    rpn = TwoStageRPNGraph(model, pad_divisor, maps)
    with torch.no_grad():
        feats = dict(zip(maps, rpn(image)[3:]))
    h, w = image.shape[-2:]
    boxes = example_boxes(h, w)
    map_axes = {f: {2: f"{f}_height", 3: f"{f}_width"} for f in maps}
    k = {0: "num_boxes"}
    box_in, box_names = [*(feats[f] for f in box_maps), boxes], [*box_maps, "proposals"]
    box_axes: dict[str, dict[int, str]] = {**{f: map_axes[f] for f in box_maps}, "proposals": k,
                                           "class_logits": k, "box_deltas": k}
    if text is not None:
        box_in.append(text)
        box_names.append("class_embeddings")
        box_axes.update(class_embeddings={0: "num_phrases"}, class_logits={**k, 1: "num_phrases_and_background"})
    mask_in, mask_names = [*(feats[f] for f in mask_maps), boxes], [*mask_maps, "boxes"]
    mask_axes: dict[str, dict[int, str]] = {**{f: map_axes[f] for f in mask_maps}, "boxes": k, "mask_probs": k}
    mask_doc = {"boxes": "K x 4 float32 XYXY pixels (detections)",
                "mask_probs": "K x M x M mask probabilities in each box (paste into the box, threshold 0.5)"}
    if head.cfg.kind != "class-agnostic":  # per-class mask weights: each box's class picks them
        mask_in.append(torch.arange(3) % head.num_classes)
        mask_names.append("classes")
        mask_axes["classes"] = k
        mask_doc["classes"] = "K int64 class indices (of the detections)"
    img_doc = f"1 x 3 x H x W uint8 RGB (any H, W; normalized and padded to a multiple of {pad_divisor} in the graph)"
    return [
        GraphSpec("rpn", f"{recipe}_rpn.onnx", rpn, (image,), ["image"],
                  ["objectness", "anchor_deltas", "level_sizes", *maps],
                  {"image": {2: "height", 3: "width"}, "objectness": {0: "num_anchors"},
                   "anchor_deltas": {0: "num_anchors"}, **map_axes},
                  {"image": img_doc, "objectness": "P RPN logits, anchors of the levels fine to coarse, each (y, x, a)",
                   "anchor_deltas": "P x 4 RPN box deltas (weights 1, 1, 1, 1)",
                   "level_sizes": "L x 2 int64 (h, w) of the RPN levels (anchors: manifest two_stage.anchors)",
                   **{f: f"FPN map {f}, input of the box / mask graphs" for f in maps}}),
        GraphSpec("box", f"{recipe}_box.onnx", TwoStageBoxGraph(model), tuple(box_in), box_names,
                  ["class_logits", "box_deltas"], box_axes,
                  {"proposals": "K x 4 float32 XYXY pixels (selected RPN proposals)",
                   **({"class_embeddings": "C x D phrase embeddings (text_embeddings.npy: the training vocabulary's)"}
                      if text is not None else {}),
                   "class_logits": "K x (C + 1) class logits, background last",
                   "box_deltas": "K x 4C (class-specific) or K x 4 deltas from the proposals (weights "
                                 f"{list(det.roi_heads.cfg.box_weights)})"}),
        GraphSpec("mask", f"{recipe}_mask.onnx", TwoStageMaskGraph(model), tuple(mask_in), mask_names,
                  ["mask_probs"], mask_axes, mask_doc),
    ]


def two_stage_settings(model: nn.Module) -> dict[str, Any]:
    """What the runtime needs between the graphs of a two-stage model: feature names, anchors, and the
    RPN / box-head configs (test-time top-k, thresholds)."""
    det = model.detector
    return {"rpn_in_features": list(det.rpn_in_features), "box_in_features": list(det.box_in_features),
            "mask_in_features": list(model.mask_in_features), "mask_classes": model.mask_head.cfg.kind != "class-agnostic",
            "anchors": dataclasses.asdict(det.rpn.anchor_generator.cfg), "rpn": dataclasses.asdict(det.rpn.cfg),
            "box": dataclasses.asdict(det.roi_heads.cfg)}


def export_graph(spec: GraphSpec, opset: int, metadata: dict[str, str]) -> bytes:
    """The serialized ONNX model of one graph, with ``metadata`` as its metadata_props."""
    onnx = require("onnx")
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # the TorchScript-based exporter: the dynamo one needs onnxscript and cannot trace RoiAlign as one op
        warnings.simplefilter("ignore")
        torch.onnx.export(spec.module.eval(), spec.inputs, buf, dynamo=False, opset_version=opset,
                          input_names=spec.input_names, output_names=spec.output_names,
                          dynamic_axes=spec.dynamic_axes, do_constant_folding=True)
    proto = onnx.load_from_string(buf.getvalue())
    for key, value in metadata.items():
        prop = proto.metadata_props.add()
        prop.key, prop.value = key, value
    return proto.SerializeToString()


def run_graph(data: bytes, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs of a serialized graph under onnxruntime (CPU, one thread)."""
    ort = require("onnxruntime")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"]).run(None, inputs)


def check_parity(spec: GraphSpec, data: bytes, inputs: tuple[torch.Tensor, ...]) -> float:
    """Largest ``max |onnxruntime - PyTorch| / (1 + max |PyTorch|)`` over the graph's outputs on
    ``inputs``: absolute for outputs up to 1 (probabilities), relative to the output's scale for
    large ones (pixel distances, feature maps), where float32 rounding grows with the values."""
    with torch.no_grad():
        ref = spec.module(*inputs)
    ref = ref if isinstance(ref, tuple) else (ref,)
    got = run_graph(data, {n: t.numpy() for n, t in zip(spec.input_names, inputs)})
    return max((float(np.abs(np.asarray(g, np.float64) - r.double().numpy()).max() / (1 + r.abs().max().item()))
                for g, r in zip(got, ref) if r.numel()), default=0.0)


def export_onnx(run: str | os.PathLike, out: str | os.PathLike | None = None, opset: int = 17,
                image_size: tuple[int, int] | None = None, use_ema: bool = False, check: bool = True) -> dict[str, Any]:
    """Export a trained run as ONNX graph(s) + ``manifest.json`` (in the folder ``out``, written atomically).

    ``out`` ending in ``.onnx`` writes a single-graph model (box_to_mask, mal) as that one file, the
    manifest in its metadata_props. ``image_size`` (H, W): the example input traced (and checked)
    at; the graphs take any size. ``check``: compare onnxruntime with PyTorch on the example.

    Returns:
        {"out", "files" (name -> bytes), "seconds", "max_diff" (:func:`check_parity`, None without check)}.
    """
    from omniseg.api import Segmenter
    from omniseg.engine.checkpoint import resolve_checkpoint
    from omniseg.engine.config import config_to_dict
    from omniseg.modeling.preprocess import PIXEL_MEAN, PIXEL_STD
    from omniseg.utils.atomic import atomic_dir, atomic_write_bytes

    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise UsageError(f"--opset {opset}: choose {MIN_OPSET}..{MAX_OPSET} (RoiAlign's half_pixel mode needs "
                         f"{MIN_OPSET})")
    require("onnx")
    if check:
        require("onnxruntime")
    step = resolve_checkpoint(run)
    start = time.perf_counter()
    seg = Segmenter.from_checkpoint(step, use_ema=use_ema)
    name = seg.recipe.name
    if name not in EXPORTABLE:
        raise UserError(f"{step}: recipe {name!r} cannot be exported to ONNX; exportable: {', '.join(EXPORTABLE)}")
    cfg, model, pad = seg.cfg, seg.model, seg.recipe.pad_divisor
    if name == "mal" and cfg.model.input != "crop":
        raise UserError(f"{step}: model.input={cfg.model.input}: only MAL's crop labeler (model.input=crop) exports "
                        "to ONNX; the whole-image ablation has no exported graph")
    h, w = image_size or (getattr(getattr(cfg, "data", None), "image_size", 256),) * 2
    if min(h, w) < 1:
        raise UsageError(f"--image-size {h} {w}: must be positive")
    image = torch.randint(0, 256, (1, 3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    vocabulary = [c.name for c in seg.info.things()]
    text = None
    if name in OPEN_VOCAB:
        if not vocabulary:
            raise UserError(f"{step}: the run has no thing categories to export a vocabulary for")
        embed = model.text_embedder if name == "fcos_mo" else model.detector.text_embedder
        with torch.no_grad():
            text = embed(vocabulary).float().cpu()
    specs = graph_specs(name, model, cfg, image, text, pad)
    manifest = {
        "format": FORMAT, "version": VERSION, "recipe": name, "checkpoint": str(step), "weights": "ema" if use_ema else "model",
        "opset": opset, "categories": seg.info.categories, "text_encoder": seg.info.text_encoder,
        "vocabulary": vocabulary if text is not None else [],
        "text_embeddings": TEXT_EMBEDDINGS if text is not None else None,
        "image": {"layout": "1x3xHxW", "dtype": "uint8", "channels": "RGB", "pixel_mean": list(PIXEL_MEAN),
                  "pixel_std": list(PIXEL_STD), "normalized_in_graph": name != "mal", "pad_divisor": pad},
        "mask_threshold": model.cfg.mask_threshold if name == "mal" else 0.5,
        "strides": list(getattr(model, "strides", ())),
        **({"two_stage": two_stage_settings(model)} if name in TWO_STAGE else {}),
        **({"mal": {k: getattr(model.cfg, k) for k in ("crop_size", "test_theta", "size_limits", "mask_threshold")}}
           if name == "mal" else {}),
        "graphs": {s.role: {"file": s.file, "inputs": s.input_names, "outputs": s.output_names, "doc": s.doc}
                   for s in specs},
        "config": config_to_dict(cfg),
    }
    meta = {"omniseg_manifest": json.dumps(manifest)}
    files = {s.file: export_graph(s, opset, meta) for s in specs}
    diff = max(check_parity(s, files[s.file], s.inputs) for s in specs) if check else None
    target = Path(out) if out is not None else step.parent.parent / "onnx"
    if target.suffix == ".onnx":
        if len(files) != 1:
            raise UsageError(f"{target}: recipe {name!r} exports {len(files)} graphs; give --out a folder")
        atomic_write_bytes(target, next(iter(files.values())))
    else:
        with atomic_dir(target, owned=OWNED) as tmp:
            for file, data in files.items():
                (tmp / file).write_bytes(data)
            if text is not None:
                np.save(tmp / TEXT_EMBEDDINGS, text.numpy())
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return {"out": str(target), "files": {f: len(d) for f, d in files.items()},
            "seconds": time.perf_counter() - start, "max_diff": diff}
