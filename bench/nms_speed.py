"""NMS speed: the new sweep NMS vs the earlier implementation vs torchvision's C++ op (issue 11).

Three implementations side by side in one process, one thread, interleaved (each repetition runs
every implementation once, in rotating order, so load from other processes hits all alike);
medians over ``--runs`` repetitions:

* ``new``: :func:`omniseg.ops.nms.nms` / ``batched_nms`` (``impl="torch"``);
* ``old``: :mod:`omniseg.ops.nms_reference`, the implementation this replaced (the code of
  ``ops/nms.py`` at f64674c, renamed: numpy IoU blocks and a Python loop per box);
* ``torchvision``: ``torchvision.ops.nms`` / ``batched_nms`` on the CPU, only when torchvision's
  compiled ops import (the peer venv, ``make peer``); the column is skipped otherwise.

Cases (float32 boxes, as the models produce them):

* ``random_5000``: 5,000 random boxes of a 800 x 800 image, log-uniform sides 8..267 px (the
  boxes of bench/ops_speed.py), IoU 0.5. Target: new <= 2 x torchvision.
* ``rpn_p2_1000`` / ``rpn_p3_1000``: the per-level case the RPN runs in the Mask^X experiment
  config (configs/maskx_voc_like.yaml: 256 px images, pre-NMS top 1,000 per level): the level's
  anchors, the top 1,000 by a random logit, decoded with random deltas (std 0.1) and clipped,
  IoU 0.7. Target: new <= 1 x torchvision.
* ``rpn_step``: all NMS work of one training step of that config: 4 images x 5 levels. ``new`` is
  one ``batched_nms`` call over image x level groups (what ``select_proposals`` now does); ``old``
  and ``torchvision`` run one ``batched_nms`` per image with levels as classes (the old
  ``select_proposals``; torchvision's RPN does the same).
* ``identical_5000``: 5,000 copies of one box, the degenerate case (a sweep finds every pair;
  torchvision keeps the first box and is done). Informational, no target.

Every case first checks that all implementations return identical indices. Ratios are of medians;
``min_ms`` is there to read the noise (on a loaded machine, millisecond runs that lose the CPU
mid-way skew medians). Prints JSON; with ``--out`` also writes it (bench/results/nms_speed.json
is the lead's).

    .venv/bin/python bench/nms_speed.py [--runs 15] [--out FILE]          # new vs old
    .venv-peer/bin/python bench/nms_speed.py [--runs 15] [--out FILE]     # + torchvision
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the peer venv imports omniseg from the repository
    sys.path.insert(0, str(ROOT))

from omniseg.modeling.anchors import AnchorGenerator  # noqa: E402
from omniseg.modeling.rpn import RPN_BOX_WEIGHTS  # noqa: E402
from omniseg.ops.boxes import clip_boxes, decode_boxes  # noqa: E402
from omniseg.ops.nms import batched_nms, nms  # noqa: E402
from omniseg.ops.nms_reference import batched_nms_reference, nms_reference  # noqa: E402
from omniseg.ops.roi_align import torchvision_ops  # noqa: E402
from omniseg.utils.atomic import atomic_write_json  # noqa: E402

IMAGE, PRE_NMS_TOPK, BATCH = 256, 1000, 4  # configs/maskx_voc_like.yaml, recipes/maskx_rcnn.py


def random_boxes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    image, lo, hi = 800, 8.0, 800 / 3
    size = torch.exp(torch.empty(n, 2).uniform_(math.log(lo), math.log(hi), generator=g))
    xy = torch.rand(n, 2, generator=g) * (image - size)
    return torch.cat([xy, xy + size], dim=1), torch.rand(n, generator=g)


def rpn_candidates(seed: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per image and level: decoded, clipped top-k boxes, logits, level ids (as select_proposals)."""
    gen = AnchorGenerator()
    anchors = gen([(IMAGE // s, IMAGE // s) for s in gen.strides])
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(BATCH):
        per_level = []
        for lvl, anc in enumerate(anchors):
            logit = torch.randn(anc.shape[0], generator=g)
            delta = torch.randn(anc.shape[0], 4, generator=g) * 0.1
            s, i = logit.topk(min(PRE_NMS_TOPK, logit.numel()), sorted=True)
            b = clip_boxes(decode_boxes(delta[i], anc[i], RPN_BOX_WEIGHTS), (IMAGE, IMAGE))
            ok = ((b[:, 2:] - b[:, :2]) > 0).all(dim=1)
            per_level.append((b[ok], s[ok], torch.full((int(ok.sum()),), lvl)))
        out.append(per_level)
    return out


def cases(tv) -> list[dict]:
    """Each case: name, size, threshold, and one zero-argument callable per implementation."""
    out = []

    def single(name: str, boxes: torch.Tensor, scores: torch.Tensor, thr: float, target: float | None) -> None:
        impls = {"new": lambda: nms(boxes, scores, thr, impl="torch"),
                 "old": lambda: nms_reference(boxes, scores, thr)}
        if tv is not None:
            impls["torchvision"] = lambda: tv.nms(boxes, scores, thr)
        out.append({"case": name, "boxes": boxes.shape[0], "iou_threshold": thr, "target_new_over_tv": target,
                    "impls": impls})

    single("random_5000", *random_boxes(5000, 0), 0.5, 2.0)
    rpn = rpn_candidates(0)
    for lvl in (0, 1):
        b, s, _ = rpn[0][lvl]
        single(f"rpn_p{lvl + 2}_1000", b, s, 0.7, 1.0)

    per_image = [(torch.cat([b for b, _, _ in im]), torch.cat([s for _, s, _ in im]), torch.cat([v for _, _, v in im]))
                 for im in rpn]
    levels = len(rpn[0])
    all_b = torch.cat([b for b, _, _ in per_image])
    all_s = torch.cat([s for _, s, _ in per_image])
    all_g = torch.cat([v + i * levels for i, (_, _, v) in enumerate(per_image)])
    offsets = np.cumsum([0] + [b.shape[0] for b, _, _ in per_image])

    def split(keep: torch.Tensor) -> list[list[int]]:  # global indices -> per-image local lists
        img = all_g[keep] // levels
        return [(keep[img == i] - int(offsets[i])).tolist() for i in range(len(per_image))]

    impls: dict[str, Callable[[], object]] = {
        "new": lambda: split(batched_nms(all_b, all_s, all_g, 0.7, impl="torch")),
        "old": lambda: [batched_nms_reference(b, s, v, 0.7).tolist() for b, s, v in per_image],
    }
    if tv is not None:
        impls["torchvision"] = lambda: [tv.batched_nms(b, s, v, 0.7).tolist() for b, s, v in per_image]
    out.append({"case": "rpn_step", "boxes": int(all_b.shape[0]), "iou_threshold": 0.7,
                "target_new_over_tv": None, "impls": impls})
    same = torch.tensor([[10.0, 10.0, 200.0, 200.0]]).repeat(5000, 1)
    single("identical_5000", same, torch.rand(5000, generator=torch.Generator().manual_seed(1)), 0.5, None)
    return out


def as_lists(result: object) -> object:
    return result.tolist() if isinstance(result, torch.Tensor) else result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=15, help="interleaved repetitions (medians)")
    ap.add_argument("--out", default="", help="also write the JSON here")
    args = ap.parse_args()
    if args.runs < 1:
        ap.error("--runs must be >= 1")
    torch.set_num_threads(1)
    tv = torchvision_ops()
    load_before = [round(x, 2) for x in os.getloadavg()]
    results = []
    for case in cases(tv):
        impls = case.pop("impls")
        outputs = {k: as_lists(f()) for k, f in impls.items()}  # also the warm-up
        identical = all(v == outputs["new"] for v in outputs.values())
        times: dict[str, list[float]] = {k: [] for k in impls}
        names = list(impls)
        for rep in range(args.runs):
            for k in names[rep % len(names):] + names[: rep % len(names)]:
                t0 = time.perf_counter()
                impls[k]()
                times[k].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        row = {**case, "identical": identical, "median_ms": {k: round(v, 3) for k, v in med.items()},
               "min_ms": {k: round(min(v) * 1e3, 3) for k, v in times.items()},
               "new_over_old": round(med["new"] / med["old"], 4)}
        if "torchvision" in med:
            row["new_over_torchvision"] = round(med["new"] / med["torchvision"], 3)
            target = case["target_new_over_tv"]
            row["target_met"] = None if target is None else row["new_over_torchvision"] <= target
        results.append(row)
    report = {
        "bench": "nms_speed",
        "runs": args.runs,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchvision": None if tv is None else __import__("torchvision").__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_1_5_15_before": load_before,
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "results": results,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        atomic_write_json(args.out, report, indent=2)


if __name__ == "__main__":
    main()
