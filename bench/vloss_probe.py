"""Why a VLOSS run finds no thing segments: per ground-truth thing of a split group, whether some query's mask
covers it (IoU > 0.5) and, for the covering query most sure of the true class, p(true class), p(any thing
class), p(no-object), the true class's rank among the thing classes, and ``no_object_top``: the share of
covered things whose query ranks no-object first. A panoptic segment needs a query whose top class is not
no-object (Mask2Former's inference) and above ``eval.object_threshold``; a model whose covering queries rank
the true class near the top but spread the probability over similar class names, leaving no-object on top,
finds none at any threshold. ``covering_queries``: how many queries cover a covered thing (duplicates: each is
matched to it only part of the time, so each learns no-object too).

    python bench/vloss_probe.py RUN [RUN ...] [--images 30] [--group base|novel] [--split val|train]
                                [--vocabulary all|panoptic] [--linear N] [--matching B [--points P]]

Images: the run's own synthetic validation (``data.val_seed``) or panoptic training (``data.train_seed``) world.

``--linear N``: instead, a linear probe of the features a query can attend to: per feature level (trunk c3-c5,
encoder levels, the stride-4 mask features), each base-class thing's features averaged under its true mask, a
logistic-regression classifier (L-BFGS, L2 1e-3, standardised inputs) fitted on the things of N training images
and scored on those of ``--images`` validation images. Low accuracy: the pooled features do not carry the class
(here: the shape), so an attention-pooling query has little to classify from. For comparison, ``roi_c3`` and
``roi_mask_features``: the thing's true box cut into a 4 x 4 RoIAlign grid, flattened (the layout a Mask R-CNN box
head reads). ``--trunk RUN``: the same with another run's trained trunk in place of this run's (e.g. a detector trained
on the same trunk: did its training make the mask-averaged trunk features carry the class?). ``val_acc_by_size``: validation accuracy [and count] by the box's long side (< 16, 16-32, >= 32 px).

``--matching B``: instead, on B of the run's own training batches that hold panoptic images, each thing's Hungarian-matched
query (the training's matching: class + point BCE + dice costs on ``--points`` sampled points): its p(true class),
p(no-object), whether no-object is its top class, how many queries cover the thing (IoU > 0.5), whether the matched
one does, and ``same_match_again``: whether matching the same predictions again, with a new point sample, picks
the same query. Low: near-duplicate queries take turns being matched, so each is trained to no-object mostly.
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
                covered.append((float(p[k]), float(p[things].sum()), float(p[-1]), int((p[things] > p[k]).sum()),
                                float(p[-1] >= p[:-1].max()), len(over)))
    mean = (lambda j: round(statistics.fmean(c[j] for c in covered), 3)) if covered else (lambda j: None)
    ranks = [c[3] for c in covered]
    return {"run": run, "split": split, "group": group, "vocabulary": vocabulary, "things": total, "covered": len(covered),
            "p_true": mean(0), "p_things": mean(1), "p_no_object": mean(2), "no_object_top": mean(4),
            "covering_queries": mean(5),
            "rank_median": statistics.median(ranks) if ranks else None,
            "top1": round(sum(r == 0 for r in ranks) / len(ranks), 3) if ranks else None,
            "top5": round(sum(r < 5 for r in ranks) / len(ranks), 3) if ranks else None}


#: long-side bins (pixels) of the linear probe's per-size accuracy
SIZE_BINS = ((0, 16, "<16"), (16, 32, "16-32"), (32, 10 ** 9, ">=32"))
#: the RoI layouts: each thing's true box cut from these levels into a ROI_GRID x ROI_GRID grid (as Mask R-CNN's box
#: head reads a 7 x 7 RoIAlign grid), flattened: whether the layout carries the class where the mask average does not
ROI_LEVELS, ROI_GRID = ("c3", "mask_features"), 4


def _pooled(seg, seed: int, images: int) -> tuple[dict[str, list], list[int], list[float]]:
    """Per feature level, each base-class thing's features averaged under its true mask (and, as ``roi_<level>``,
    its box's RoIAlign layout); its class id; its box's long side in pixels."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from omniseg.modeling.preprocess import normalize_images
    from omniseg.ops.rle import rle_decode
    from omniseg.ops.roi_align import roi_align
    from omniseg.recipes.contract import pad_images
    from omniseg.recipes.data import open_source
    from omniseg.recipes.vloss import source_split

    model, cfg = seg.model, seg.cfg
    rs, load = open_source("synth", images, seed, cfg.data.image_size, False)
    base = set(source_split(cfg.data, rs.categories).base_ids)
    feats: dict[str, list] = {}
    labels: list[int] = []
    sides: list[float] = []
    for i, rec in enumerate(rs):
        x, sizes = pad_images(torch.as_tensor(np.asarray(load(i))).permute(2, 0, 1).float(), seg.recipe.pad_divisor)
        with torch.no_grad():
            c = model.net.trunk(normalize_images(x, model.pixel_mean, model.pixel_std, sizes))
            enc, mask_features = model.net.encoder([c["c2"], c["c3"], c["c4"], c["c5"]])
        levels = {"c3": c["c3"], "c4": c["c4"], "c5": c["c5"], **{f"encoder{k}": f for k, f in enumerate(enc)},
                  "mask_features": mask_features}
        for inst in rec.instances:
            if inst.category_id not in base or inst.mask is None:
                continue
            m = torch.as_tensor(rle_decode(inst.mask)).float()[None, None]
            m = F.pad(m, (0, x.shape[-1] - m.shape[-1], 0, x.shape[-2] - m.shape[-2]))
            for name, f in levels.items():
                w = F.interpolate(m, size=f.shape[-2:], mode="area")[0, 0]  # mask fraction per feature cell
                feats.setdefault(name, []).append(((f[0] * w).sum((1, 2)) / w.sum().clamp(min=1e-6)).numpy())
            box = torch.tensor([inst.box], dtype=torch.float32)
            for name in ROI_LEVELS:
                f = levels[name]
                grid = roi_align(f, [box], ROI_GRID, spatial_scale=f.shape[-1] / x.shape[-1], sampling_ratio=2)
                feats.setdefault(f"roi_{name}", []).append(grid.flatten().numpy())
            labels.append(inst.category_id)
            sides.append(float(max(inst.box[2] - inst.box[0], inst.box[3] - inst.box[1])))
    return feats, labels, sides


def _fit_linear(x, y, k: int):
    """Multinomial logistic regression ``x @ w + bias`` (L-BFGS, L2 1e-3 on w) of labels ``y`` in [0, k)."""
    import torch
    import torch.nn.functional as F

    w = torch.zeros(x.shape[1], k, requires_grad=True)
    bias = torch.zeros(k, requires_grad=True)
    opt = torch.optim.LBFGS([w, bias], max_iter=200)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + bias, y) + 1e-3 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), bias.detach()


def load_trunk(seg, run: str) -> int:
    """Put another run's trained ResNet trunk (any recipe: the trunk is the parameters named ``*.trunk.*`` or
    ``*.bottom_up.*``) into the VLOSS model of ``seg``; the number of tensors loaded. Raises SystemExit when the
    other run's trunk does not fit."""
    from safetensors.torch import load_file

    from omniseg.engine.checkpoint import latest_checkpoint

    ckpt = latest_checkpoint(f"{run}/checkpoints")
    if ckpt is None:
        raise SystemExit(f"{run}: no checkpoint")
    state = load_file(str(ckpt / "model.safetensors"))
    trunk = {k.split(m, 1)[1]: v for k, v in state.items() for m in (".trunk.", "bottom_up.") if m in k}
    own = seg.model.net.trunk.state_dict()
    if set(trunk) != set(own) or any(trunk[k].shape != own[k].shape for k in own):
        raise SystemExit(f"{ckpt}: its trunk ({len(trunk)} tensors) does not fit this run's ({len(own)})")
    seg.model.net.trunk.load_state_dict(trunk)
    return len(trunk)


def linear_probe(run: str, train_images: int = 300, val_images: int = 50, trunk: str | None = None) -> dict:
    """The module docstring's ``--linear``: per level, train / validation accuracy of the linear probe
    (``trunk``: with that run's trunk, see :func:`load_trunk`)."""
    import numpy as np
    import torch

    from omniseg.api import Segmenter

    seg = Segmenter.from_checkpoint(run)
    if trunk:
        load_trunk(seg, trunk)
    xtr, ytr, _ = _pooled(seg, seg.cfg.data.train_seed, train_images)
    xva, yva, sides = _pooled(seg, seg.cfg.data.val_seed, val_images)
    classes = {c: k for k, c in enumerate(sorted(set(ytr)))}
    t = torch.tensor([classes[c] for c in ytr])
    seen = torch.tensor([c in classes for c in yva], dtype=torch.bool)  # a class with no training thing: unscored
    tv = torch.tensor([classes.get(c, -1) for c in yva])
    out = {"run": run, **({"trunk": trunk} if trunk else {}), "train_things": len(ytr), "val_things": int(seen.sum()), "classes": len(classes), "levels": {}}
    for name in xtr:
        a = torch.tensor(np.stack(xtr[name]))
        mu, sd = a.mean(0), a.std(0) + 1e-6
        a = (a - mu) / sd
        w, bias = _fit_linear(a, t, len(classes))
        with torch.no_grad():
            acc = float(((a @ w + bias).argmax(1) == t).float().mean())
            val, by_size = None, {}
            if seen.any():
                b = (torch.tensor(np.stack(xva[name])) - mu) / sd
                right = (b @ w + bias).argmax(1) == tv
                val = round(float(right[seen].float().mean()), 3)
                side = torch.tensor(sides)
                for lo, hi, label in SIZE_BINS:
                    sel = seen & (side >= lo) & (side < hi)
                    by_size[label] = [round(float(right[sel].float().mean()), 3), int(sel.sum())] if sel.any() else None
        out["levels"][name] = {"dim": a.shape[1], "train_acc": round(acc, 3), "val_acc": val,
                               "val_acc_by_size": by_size}
    return out


def matching_probe(run: str, batches: int = 6, points: int | None = None, seed: int = 123) -> dict:
    """The module docstring's ``--matching``: the run's final predictions on its own panoptic training batches,
    each thing's Hungarian-matched query (``points`` sampled points, default the run's ``model.num_points``), and
    the matching once more on the same predictions with a new point sample."""
    import statistics

    import torch
    import torch.nn.functional as F

    from omniseg.api import Segmenter
    from omniseg.modeling.vloss import MASK_STRIDE
    from omniseg.ops.matching import MatcherConfig, match_queries
    from omniseg.recipes.vloss import source_kind, train_data, train_loader

    seg = Segmenter.from_checkpoint(run)
    model, cfg, net_cfg = seg.model, seg.cfg, seg.model.net.cfg
    cats = sorted(seg.info.category_objects(), key=lambda c: c.id)  # the order of model.class_names
    things = {k for k, c in enumerate(cats) if c.isthing}
    mcfg = MatcherConfig(net_cfg.cls_weight, net_cfg.bce_weight, net_cfg.dice_weight, points or net_cfg.num_points)
    loader = iter(train_loader(cfg, train_data(cfg, progress=False), seed=seed))
    rows = []
    with torch.no_grad():
        seen = 0
        for _ in range(50 * batches):  # STT's warm-up batches hold no panoptic image: drawn past
            if seen == batches:
                break
            batch = next(loader)
            pan = [b for b, s in enumerate(batch.sources) if source_kind(s) == "panoptic"]
            if not pan:
                continue
            seen += 1
            targets = [model.target(batch.targets[b], "panoptic", batch.captions[b]) for b in pan]
            out, _ = model.run(batch.images[pan], [batch.image_sizes[b] for b in pan], model.class_names)
            logits, masks = out["logits"], out["masks"]
            wanted = [{"labels": t.labels, "masks": t.masks.float()} for t in targets]
            first, again = match_queries(logits, masks, wanted, mcfg), match_queries(logits, masks, wanted, mcfg)
            probs = logits.softmax(-1)
            for b, ((qi, ti), (qi2, ti2), t) in enumerate(zip(first, again, targets)):
                pm = F.interpolate(masks[b:b + 1], scale_factor=MASK_STRIDE, mode="bilinear", align_corners=False)[0]
                pm = pm[:, :t.masks.shape[-2], :t.masks.shape[-1]] > 0
                second = {int(j): int(q) for q, j in zip(qi2, ti2)}
                for q, j in zip(qi.tolist(), ti.tolist()):
                    label, gt = int(t.labels[j]), t.masks[j].bool()
                    if label not in things or not gt.any():
                        continue
                    iou = (pm & gt).flatten(1).sum(1) / (pm | gt).flatten(1).sum(1).clamp(min=1)
                    p = probs[b, q]
                    rows.append((float(p[label]), float(p[-1]), float(p[-1] >= p[:-1].max()),
                                 int((iou > 0.5).sum()), float(iou[q] > 0.5), float(second.get(j) == q)))
    mean = (lambda j: round(statistics.fmean(r[j] for r in rows), 3)) if rows else (lambda j: None)
    return {"run": run, "points": mcfg.num_points, "matched_things": len(rows), "p_true": mean(0),
            "p_no_object": mean(1), "no_object_top": mean(2), "covering_queries": mean(3), "matched_covers": mean(4),
            "same_match_again": mean(5)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--images", type=int, default=30)
    ap.add_argument("--group", choices=("base", "novel"), default="base")
    ap.add_argument("--split", choices=("val", "train"), default="val")
    ap.add_argument("--vocabulary", choices=("all", "panoptic"), default="all",
                    help="panoptic: leave the novel thing names out of the softmax")
    ap.add_argument("--linear", type=int, metavar="N", help="linear probe of mask-pooled features, N training images")
    ap.add_argument("--trunk", metavar="RUN", help="--linear: with the trained trunk of another run (e.g. a detector's)")
    ap.add_argument("--matching", type=int, metavar="B", help="the matched queries of B training batches")
    ap.add_argument("--points", type=int, help="--matching: sampled points of the matching cost (default: the run's)")
    args = ap.parse_args(argv)
    from omniseg.errors import UserError

    for run in args.runs:
        try:
            if args.matching:
                res = matching_probe(run, args.matching, args.points)
            elif args.linear:
                res = linear_probe(run, args.linear, args.images, args.trunk)
            else:
                res = probe(run, args.images, args.group, args.split, args.vocabulary)
        except (UserError, OSError) as e:  # no run / checkpoint there, a bad config: one line, exit 1
            raise SystemExit(f"vloss_probe: {e}") from None
        print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
