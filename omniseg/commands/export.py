"""``omniseg export RUN --format onnx [--out FOLDER_OR_FILE] [--opset 17] [--image-size H W]``.

Writes the run's ONNX graph(s), ``manifest.json`` and (open-vocabulary models) the training
vocabulary's ``text_embeddings.npy`` into ``--out`` (default ``RUN/onnx``), atomically; a box→mask
model (box_to_mask, mal) may also go to a single ``.onnx`` file (its manifest in the metadata). Each graph is checked
against PyTorch with onnxruntime on the example image before anything is written (``--no-check``
skips it). What is exported and why: :mod:`omniseg.export`. Predict with an export through
:class:`omniseg.export.OnnxSegmenter`.
"""

from __future__ import annotations

import argparse

from omniseg.commands.common import non_empty_path, positive_int
from omniseg.errors import UsageError

FORMATS = ("onnx",)


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run folder, its checkpoints/ folder or a step_N folder")
    p.add_argument("--format", default="onnx", help=f"export format: {', '.join(FORMATS)}")
    p.add_argument("--out", type=non_empty_path, default=None,
                   help="output folder (default RUN/onnx), or a .onnx file for single-graph models (box_to_mask, mal)")
    p.add_argument("--opset", type=positive_int, default=17, help="ONNX opset, 16..20 (default 17)")
    p.add_argument("--image-size", type=positive_int, nargs=2, metavar=("H", "W"), default=None,
                   help="example image traced and checked (default: the run's data.image_size); "
                        "the graphs take any size")
    p.add_argument("--ema", action="store_true", help="export the EMA weights (ema.safetensors)")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime vs PyTorch check")


def main(args: argparse.Namespace) -> int:
    if args.format not in FORMATS:
        raise UsageError(f"--format {args.format!r}: unknown export format; choose from {', '.join(FORMATS)}")
    from omniseg.export.writer import export_onnx

    res = export_onnx(args.run, args.out, args.opset, tuple(args.image_size) if args.image_size else None,
                      use_ema=args.ema, check=not args.no_check)
    for name, size in res["files"].items():
        print(f"{name}: {size / 2**20:.1f} MiB")
    if res["max_diff"] is not None:
        print(f"checked: largest |onnxruntime - pytorch| / (1 + max |pytorch|) = {res['max_diff']:.2g}")
    print(f"exported to {res['out']} in {res['seconds']:.1f} s")
    return 0
