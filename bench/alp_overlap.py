"""How much of the exact boxes' FCOS supervision the ALPs of the same images take over (issue 12, the ALP rows).

The paper trains on COCO masks and on ALPs of *other* images (LocNar-OID; alp-fcos-mo Sec. 3.3 "alternating batches
from each dataset"). Here the curated ALPs sit on the training images that also hold the base classes' exact boxes and
masks, and a narrative names base objects as well as novel ones, so a base object often carries its exact box and an
ALP. FCOS gives a location that is a candidate for several boxes to the one of smallest area
(:mod:`omniseg.modeling.fcos_targets`); a scribble box is often smaller than the object, so the ALP takes the base
object's central locations, and there FCOS-MO trains no box regression and no centerness (disabled for ALPs) and the
classifier's target is the free phrase, not the class name.

For the training data a config builds (training view + ALPs; no flip), at the image size of the config, this counts per
image the locations (P3-P7, FCOS rules) that the exact boxes receive alone and how many of them go to an ALP once the
ALPs are added, with the ALP boxes as curated ("raw") and after the training's box quantization ("quantized", one
draw per ALP, seed 0):

    python bench/alp_overlap.py CONFIG [key=value ...] [--images N]

e.g. ``python bench/alp_overlap.py configs/fcos_mo_voc_like.yaml data.train=RUNS/claims/world
data.train_num_images=2000 data.novel_supervision=alp alp.simulate=false alp.path=RUNS/claims/alps/alps.jsonl``.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@functools.lru_cache(maxsize=4)
def _locations(size: int):
    """FCOS-MO's locations of a ``size`` x ``size`` image: P3-P7 (strides 8-128), the default scale ranges."""
    from omniseg.modeling.fcos_mo import LEVELS
    from omniseg.modeling.fcos_targets import DEFAULT_SCALE_RANGES, all_level_locations

    strides = [2 ** (3 + k) for k in range(len(LEVELS))]
    sizes = [(-(-size // s), -(-size // s)) for s in strides]
    return all_level_locations(sizes, strides, DEFAULT_SCALE_RANGES)[:3]


def taken_locations(exact, approx, size: int) -> tuple[int, int, list[float]]:
    """Locations of a ``size`` x ``size`` image matched to an exact box alone / to an ALP once ``approx`` boxes are
    added, and per exact box the share of its locations that it loses.

    Args:
        exact: E x 4 XYXY exact boxes; approx: A x 4 XYXY approximate boxes (tensors).
    """
    import torch

    from omniseg.modeling.fcos_targets import assign_fcos_targets

    points, point_strides, point_ranges = _locations(size)
    alone, _ = assign_fcos_targets(points, point_strides, point_ranges, exact)
    both, _ = assign_fcos_targets(points, point_strides, point_ranges, torch.cat([exact, approx]))
    own = alone >= 0
    lost = own & (both >= len(exact))
    shares = [float(lost[alone == i].sum() / (alone == i).sum()) for i in range(len(exact)) if (alone == i).any()]
    return int(own.sum()), int(lost.sum()), shares


def overlap(config: str, overrides: list[str], images: int | None = None) -> dict:
    """The module docstring's counts over the first ``images`` training images (all when None)."""
    import numpy as np
    import torch

    from omniseg.data.transforms import QuantizeApproxBoxes, quantize_box
    from omniseg.recipes.alp_data import with_alps
    from omniseg.recipes.data import open_train, training_view
    from omniseg.recipes.table import load_experiment

    _, cfg = load_experiment(config, overrides)
    rs, _ = open_train(cfg.data, False)
    view = with_alps(training_view(rs, cfg.data), rs, cfg.data, cfg.alp)
    size = cfg.data.image_size
    rng, quantizer = np.random.default_rng(0), QuantizeApproxBoxes()
    out: dict = {"config": config, "overrides": overrides, "images": len(view.records[:images]),
                 "exact_boxes": 0, "alp_boxes": 0}
    tallies = {k: [0, 0, []] for k in ("raw", "quantized")}  # own locations, lost ones, per-box lost shares
    for rec in view.records[:images]:
        boxes = {"exact": [], "approximate": []}
        for inst in rec.instances:
            if inst.box is not None and not inst.is_crowd:
                boxes[inst.box_quality].append(list(inst.box))
        if not boxes["exact"]:
            continue
        exact = torch.tensor(boxes["exact"], dtype=torch.float32)
        # the training's box quantization (Sec. 3.3): Q drawn per ALP from (phi, 8, 16, 32), cells of Q * L / 256 px
        cells = [quantizer.cell(rng, size, size) for _ in boxes["approximate"]]
        quantized = [b if c is None else quantize_box(b, c, size, size) for b, c in zip(boxes["approximate"], cells)]
        for kind, approx in (("raw", boxes["approximate"]), ("quantized", quantized)):
            o, lo, s = taken_locations(exact, torch.tensor(approx, dtype=torch.float32).reshape(-1, 4), size)
            t = tallies[kind]
            t[0], t[1], t[2] = t[0] + o, t[1] + lo, t[2] + s
        out["exact_boxes"] += len(exact)
        out["alp_boxes"] += len(boxes["approximate"])
    out["exact_locations"] = tallies["raw"][0]
    for kind, (own, lost, shares) in tallies.items():
        out[kind] = {"taken_by_alps": round(lost / max(own, 1), 4),
                     "exact_boxes_losing_half_or_more": round(sum(s >= 0.5 for s in shares) / max(len(shares), 1), 4),
                     "exact_boxes_losing_all": round(sum(s == 1.0 for s in shares) / max(len(shares), 1), 4)}
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--images", type=int)
    args = ap.parse_args(argv)
    from omniseg.errors import UserError

    try:
        res = overlap(args.config, args.overrides, args.images)
    except (UserError, OSError) as e:  # a bad config / world / ALP file: one line, exit 1
        raise SystemExit(f"alp_overlap: {e}") from None
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
