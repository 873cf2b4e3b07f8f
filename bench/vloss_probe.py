"""Why a VLOSS run finds no thing segments: per ground-truth thing of a split group, whether some query's mask
covers it (IoU > 0.5) and, for the covering query most sure of the true class, p(true class), p(any thing
class), p(no-object) and the true class's rank among the thing classes. A panoptic segment needs one class
above ``eval.object_threshold``; a model whose covering queries rank the true class near the top but spread
the probability over similar class names and no-object finds none.

    python bench/vloss_probe.py RUN [RUN ...] [--images 30] [--group base|novel] [--split val|train]
                                [--vocabulary all|panoptic]

Images: the run's own synthetic validation (``data.val_seed``) or panoptic training (``data.train_seed``) world.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def probe(run: str, images: int = 30, group: str = "base", split: str = "val", vocabulary: str = "all") -> dict:
    """The module docstring's numbers for one run (means over the covered things; rank 0 = top-1);
    ``vocabulary="panoptic"``: the novel thing names are left out of the softmax (the vocabulary of a run
    trained on the panoptic source only)."""
    import numpy as np
    import torch

    from omniseg.api import Segmenter
    from omniseg.modeling.openseg_heads import resize_valid
    from omniseg.modeling.vloss import MASK_STRIDE
    from omniseg.ops.rle import rle_decode
    from omniseg.recipes.contract import pad_images
    from omniseg.recipes.data import open_source
    from omniseg.recipes.vloss import source_split

    seg = Segmenter.from_checkpoint(run)
    model, cfg = seg.model, seg.cfg
    seed = cfg.data.val_seed if split == "val" else cfg.data.train_seed
    rs, load = open_source("synth", images, seed, cfg.data.image_size, False)
    names = list(model.class_names)
    index = {c.id: k for k, c in enumerate(rs.categories)}
    groups = source_split(cfg.data, rs.categories)
    wanted = set(groups.base_ids if group == "base" else groups.novel_ids)
    dropped = [k for k, c in enumerate(rs.categories) if vocabulary == "panoptic" and c.id in set(groups.novel_ids)]
    things = [k for k, c in enumerate(rs.categories) if c.isthing and k not in dropped]
    total, covered = 0, []
    for i, rec in enumerate(rs):
        x, sizes = pad_images(torch.as_tensor(np.asarray(load(i))).permute(2, 0, 1).float(), seg.recipe.pad_divisor)
        with torch.no_grad():
            out, _ = model.run(x, sizes, names)
        probs = out["logits"][0].index_fill(-1, torch.tensor(dropped, dtype=torch.long), float("-inf")).softmax(-1)
        masks = resize_valid(out["masks"][0], sizes[0], MASK_STRIDE, sizes[0]) > 0  # as the inference: sigmoid > 0.5
        for inst in rec.instances:
            if inst.category_id not in wanted or inst.mask is None:
                continue
            total += 1
            gt = torch.as_tensor(rle_decode(inst.mask)).bool()
            iou = (masks & gt).flatten(1).sum(1) / (masks | gt).flatten(1).sum(1).clamp(min=1)
            over = (iou > 0.5).nonzero().flatten()
            if len(over):
                k = index[inst.category_id]
                p = probs[over][int(probs[over][:, k].argmax())]
                covered.append((float(p[k]), float(p[things].sum()), float(p[-1]), int((p[things] > p[k]).sum())))
    mean = (lambda j: round(statistics.fmean(c[j] for c in covered), 3)) if covered else (lambda j: None)
    ranks = [c[3] for c in covered]
    return {"run": run, "split": split, "group": group, "vocabulary": vocabulary, "things": total, "covered": len(covered),
            "p_true": mean(0), "p_things": mean(1), "p_no_object": mean(2),
            "rank_median": statistics.median(ranks) if ranks else None,
            "top1": round(sum(r == 0 for r in ranks) / len(ranks), 3) if ranks else None,
            "top5": round(sum(r < 5 for r in ranks) / len(ranks), 3) if ranks else None}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--images", type=int, default=30)
    ap.add_argument("--group", choices=("base", "novel"), default="base")
    ap.add_argument("--split", choices=("val", "train"), default="val")
    ap.add_argument("--vocabulary", choices=("all", "panoptic"), default="all",
                    help="panoptic: leave the novel thing names out of the softmax")
    args = ap.parse_args(argv)
    for run in args.runs:
        print(json.dumps(probe(run, args.images, args.group, args.split, args.vocabulary)), flush=True)


if __name__ == "__main__":
    main()
