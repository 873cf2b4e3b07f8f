"""ONNX export of trained runs (``omniseg export RUN --format onnx``) and a runtime for the exports.

Design (what is a graph, what is not, and why):

* **box_to_mask exports whole**: one graph ``box_to_mask.onnx``, inputs ``image`` (1 x 3 x H x W
  uint8 RGB, any H, W) and ``boxes`` (K x 4 float32 XYXY, any K), output ``mask_probs`` (K x M x M
  sigmoid probabilities inside each box). Normalization is in the graph. Pasting the M x M grid
  into the image (bilinear, threshold 0.5) stays outside: it makes K x H x W outputs, which the
  consumer may not want, and is a few lines (:func:`omniseg.ops.masks.paste_masks_in_image`).
* **MAL exports its task network only**: ``mal.onnx``, inputs ``crops`` (K x 3 x Hc x Wc float32,
  normalized) [and ``size_classes`` (K int64) when the decoder's input grid depends on the box size,
  Appendix A.2: every crop is decoded at the three grids and its class's kept], output ``mask_probs``
  (K x Hc x Wc). The crops (test-time margin, crop + resize, normalization) and the paste-back
  (threshold, mean-probability score) are MAL's own code
  (:func:`omniseg.modeling.mal.box_crops`, :func:`~omniseg.modeling.mal.normalize_crops`,
  :func:`~omniseg.modeling.mal.paste_and_score`), which :class:`OnnxSegmenter` calls as the PyTorch
  predictor does, so there is one copy of the crop geometry (no traced twin to drift) and the graph
  is the part worth accelerating.
* **Detectors are split where the computation becomes data dependent.** Score thresholds,
  per-level top-k and NMS change the number of boxes; inside a graph they would need ONNX's
  NonMaxSuppression, whose tie-breaking and class-wise grouping differ from omniseg's. So FCOS-MO
  exports two graphs: ``fcos_mo_dense.onnx`` (image + text embeddings -> per-location class
  probabilities, box distances, centerness logits, the level sizes and the FPN maps the mask head
  reads) and ``fcos_mo_mask.onnx`` (those maps + K boxes -> K x M x M mask probabilities). Between
  them :class:`OnnxSegmenter` runs the *same* decoding code as the PyTorch model
  (:func:`omniseg.modeling.fcos_mo.decode_detections`: threshold, top-k, centerness calibration,
  class-wise NMS), so its instances match ``Segmenter.predict``.
* **Two-stage detectors** (maskx_rcnn, mask_rcnn_star) export three graphs, split the same way:
  ``<recipe>_rpn.onnx`` (image -> RPN objectness logits and anchor deltas over every level,
  the level sizes, and the FPN maps P2..P5), ``<recipe>_box.onnx`` (maps + K proposals [+ phrase
  embeddings] -> class logits, box deltas) and ``<recipe>_mask.onnx`` (maps + K detections
  [+ their class indices] -> K x M x M mask probabilities). :class:`OnnxSegmenter` runs the
  model's own code between them: anchors from its
  :class:`~omniseg.modeling.anchors.AnchorGenerator` (config in the manifest's ``two_stage``),
  :func:`~omniseg.modeling.rpn.select_proposals`, and
  :func:`~omniseg.modeling.box_predictor.detections_from_outputs` (softmax, objectness
  calibration, class-wise NMS). Mask^X R-CNN's transferred mask weights w_seg = T(w_det) are a
  function of the weights alone (closed vocabulary), so they are folded into the mask graph as
  a constant; its prompt boxes (``boxes=``) work as in PyTorch (box graph for unnamed boxes).
* **Open vocabulary**: phrase embeddings are a graph input (C x D, any C), not constants; the
  run's training vocabulary's embeddings ship as ``text_embeddings.npy``, so that vocabulary
  needs no text encoder. Other phrases are embedded with the run's encoder (``text`` config).
* **RoIAlign**: omniseg's op does not trace; the graphs use ONNX ``RoiAlign`` (opset >= 16,
  half_pixel = ``aligned=True``, adaptive sampling), the same definition; the FPN level of each
  box is chosen in the graph (:mod:`omniseg.export.graphs`).
* **Self-describing**: ``manifest.json`` (also in each graph's metadata_props as
  ``omniseg_manifest``): recipe, categories, vocabulary, text encoder, inputs / outputs,
  normalization, opset, the run config. Exported with the TorchScript-based exporter
  (``dynamo=False``), which needs no onnxscript.

onnx / onnxruntime are optional (``pip install 'omniseg[onnx]'``) and imported only here.
"""

from omniseg.export.runtime import OnnxSegmenter, read_manifest
from omniseg.export.writer import EXPORTABLE, export_onnx

__all__ = ["EXPORTABLE", "OnnxSegmenter", "export_onnx", "read_manifest"]
