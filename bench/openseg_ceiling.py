"""What OpenSeg's grounding loss can teach on a world's captions, apart from any network (issue 14).

Every true class (the synthetic world: 80 things and 6 stuff classes) gets one free region vector, and every image's
regions are its true segments, each carrying its class's vector: a model that segments and recognises every class
perfectly, whose only freedom is where each class sits in the word-embedding space. These vectors (initialised at
the class names' text embeddings) and tau are fitted by Adam to L_G exactly as the recipe trains it (Eq. 2-4,
Sec. 3.2: batches of ``data.batch_size`` images drawn without replacement per epoch, one caption per image per
step, its ``model.words`` words each kept with probability ``model.keep_prob``, the run's frozen text encoder,
``2 * grounding_loss`` as ``OpenSeg.forward``) for ``train.max_iter`` steps. Reported:

* L_G over the last 100 fitting steps (the trained model's logged ``loss_grounding`` is the same quantity) and on
  fresh batches of the held-out world; chance is 2 log B. The same held-out L_G with the frozen class-name
  embeddings as the region vectors (no fitting; the best tau of a grid) shows what the text encoder gives for free.
* The fitted vectors scored as ``bench/openseg_probe.py`` scores a run's region features of the true segments
  (top-1 among all / the present class names, own-word vs absent-word cosine), on the held-out world: how well a
  region that is optimal for L_G names its class -- the grounding a perfect network could reach with this loss.

``--features`` turns the free class vectors into a *linear probe*: every segment's features (the mask-weighted
mean of a feature map over the segment, standardised with the training segments' statistics) go through one
linear map + bias (random start), fitted to L_G and scored the same way. It asks whether a network's features
hold what L_G needs where a linear read-out can find it: ``rgb`` (the normalised pixels: colour alone),
``trunk`` (the config's ``model.pretrained`` ResNet, C2..C5 upsampled to stride 4 and stacked: before any L_G),
``trunk:RUN`` / ``fz:RUN`` (a trained OpenSeg run's trunk / its F_z). A supervised control that OpenSeg never
has, softmax regression of the class label from the same features (``class_probe``), tells whether the classes
are linearly separable in them at all. Records go to
bench/results/openseg/linear/<name>.json by convention.

    python bench/openseg_ceiling.py [--config configs/openseg_synth.yaml] [--set KEY=VALUE ...] [--images 40]
                                    [--heldout-batches 200] [--seed 0] [--features classes|rgb|trunk[:RUN]|fz:RUN]
                                    [--weight-decay 0]
                                    [--out bench/results/openseg/ceiling.json]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

#: the taus tried for the frozen class-name regions (their held-out L_G is reported at the best)
NAME_TAUS = (0.01, 0.02, 0.05, 0.07, 0.1, 0.2, 0.5)
#: Adam's step sizes tried for the class vectors and log tau; each start keeps the one with the lowest L_G over its
#: last fitting steps (training batches only: the held-out batches pick nothing)
FIT_LRS = (3e-4, 1e-3, 3e-3, 1e-2)
#: full-batch steps of the supervised class probe (:func:`class_probe`)
CLASS_STEPS = 500
TAIL = 100
#: where the class vectors start: the class names' text embeddings (a text-aligned start, as OpenSeg from ALIGN) or
#: random unit vectors (as OpenSeg's F_z from scratch)
INITS = ("names", "random")


class World:
    """The config's ``split`` world: per image its true segments (crowd left out) and captions; the categories by
    id; the records and their image loader (for :func:`segment_features`)."""

    def __init__(self, cfg, split: str) -> None:
        from omniseg.recipes.data import open_train, open_val
        from omniseg.recipes.openseg import gt_segments

        self.records, self.load = (open_train if split == "train" else open_val)(cfg.data, progress=False)
        self.segments = [[s for s in gt_segments(r) if not s.is_crowd] for r in self.records]
        self.captions = [list(r.captions) for r in self.records]
        self.categories = sorted(self.records.categories, key=lambda c: c.id)


def batches(num_images: int, batch: int, steps: int, rng) -> list[list[int]]:
    """``steps`` batches of image indices, each epoch a fresh permutation cut into full batches."""
    if num_images < batch:
        raise SystemExit(f"{num_images} image(s) with segments, fewer than one batch of {batch}")
    out: list[list[int]] = []
    while len(out) < steps:
        order = rng.permutation(num_images).tolist()
        out += [order[i:i + batch] for i in range(0, num_images - batch + 1, batch)]
    return out[:steps]


class Batches:
    """Tensors of one batch: region row indices (B x N, valid mask; rows of the segment-feature matrix) and kept
    caption words (B x W x D, mask)."""

    def __init__(self, rows: list[list[int]], captions, words, embed, keep_prob: float, generator, rng):
        self.rows, self.captions, self.words, self.embed = rows, captions, words, embed
        self.keep_prob, self.generator, self.rng = keep_prob, generator, rng

    def __call__(self, images: list[int]):
        import torch

        from omniseg.data.caption_words import drop_words

        kept = []
        for i in images:
            caps = self.captions[i]
            kept.append(drop_words(self.words(caps[int(self.rng.integers(len(caps)))]), self.keep_prob,
                                   self.generator) if caps else [])
        n, w = max(len(self.rows[i]) for i in images), max([len(k) for k in kept] + [1])
        ri, rv = torch.zeros(len(images), n, dtype=torch.long), torch.zeros(len(images), n, dtype=torch.bool)
        wi, wv = torch.zeros(len(images), w, dtype=torch.long), torch.zeros(len(images), w, dtype=torch.bool)
        vocab = list(dict.fromkeys(x for k in kept for x in k))
        pos = {x: j for j, x in enumerate(vocab)}
        for b, i in enumerate(images):
            ids = self.rows[i]
            ri[b, :len(ids)], rv[b, :len(ids)] = torch.tensor(ids, dtype=torch.long), True
            wi[b, :len(kept[b])] = torch.tensor([pos[x] for x in kept[b]], dtype=torch.long)
            wv[b, :len(kept[b])] = True
        emb = self.embed(vocab) if vocab else torch.zeros(1, self.embed.dim)
        return ri, rv, emb[wi], wv


def grounding(regions, tau, rv, words, wv):
    """L_G of one batch of B x N x D region features as ``OpenSeg.forward`` computes it (Eq. 4 as printed: twice
    the two-way mean)."""
    from omniseg.ops.openseg_losses import grounding_loss, grounding_scores

    return 2 * grounding_loss(grounding_scores(regions, rv, words, wv, tau), valid=wv.any(1))


def fit(cfg, x, start, make, usable: list[int], seed: int, lr: float, log, bias: bool = False,
        weight_decay: float = 0.0):
    """The region map z = x W (+ b) fitted to L_G from W = ``start`` (F x D; b = 0) with tau for ``train.max_iter``
    steps by Adam at step size ``lr`` (AdamW's decoupled ``weight_decay`` on W); ``x`` (R x F) holds the rows
    ``make``'s batches index. With ``x`` the identity, W's rows are free class vectors. Returns W, b (D; zero without
    ``bias``), tau and L_G's mean over the last :data:`TAIL` steps."""
    import numpy as np
    import torch

    weight = torch.nn.Parameter(start.clone())
    shift = torch.nn.Parameter(torch.zeros(start.shape[1]), requires_grad=bias)
    log_tau = torch.nn.Parameter(torch.tensor(float(cfg.model.temperature)).log())
    opt = torch.optim.AdamW([{"params": [weight], "weight_decay": weight_decay},
                             {"params": [log_tau] + ([shift] if bias else []), "weight_decay": 0.0}], lr=lr)
    steps, losses = cfg.train.max_iter, []
    for step, bi in enumerate(batches(len(usable), cfg.data.batch_size, steps, np.random.default_rng(seed)), 1):
        ri, rv, words, wv = make([usable[j] for j in bi])
        loss = grounding(x[ri] @ weight + shift, log_tau.exp().clamp(0.01, 1.0), rv, words, wv)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if step % 500 == 0 or step == steps:
            log(f"step {step}/{steps}: L_G {statistics.fmean(losses[-TAIL:]):.3f} (mean of the last "
                f"{min(TAIL, len(losses))}), tau {float(log_tau.detach().exp()):.4f}")
    return (weight.detach(), shift.detach(), log_tau.detach().exp().clamp(0.01, 1.0),
            round(statistics.fmean(losses[-TAIL:]), 3))


def feature_maps(spec: str, cfg):
    """``--features`` other than ``classes`` -> a function (uint8 B x 3 x H x W images, their sizes) -> B x C x h x w
    feature maps (no gradients)."""
    import torch
    import torch.nn.functional as F

    from omniseg.modeling.preprocess import PIXEL_MEAN, PIXEL_STD, normalize_images

    kind, _, run = spec.partition(":")
    mean, std = torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), torch.tensor(PIXEL_STD).view(1, 3, 1, 1)
    if kind == "rgb" and not run:
        return lambda images, sizes: normalize_images(images, mean, std, sizes)
    if kind not in ("trunk", "fz") or (kind == "fz" and not run):
        raise SystemExit(f"--features {spec!r}: expected classes, rgb, trunk, trunk:RUN or fz:RUN")
    if run:
        from omniseg.api import Segmenter

        model = Segmenter.from_checkpoint(run).model.eval()
        if kind == "fz":
            return lambda images, sizes: model.encode(images, sizes)["pixels"]
        trunk = model.pyramid.fpn.bottom_up
    else:
        from dataclasses import replace

        from omniseg.modeling.openseg import build_pyramid

        if not cfg.model.pretrained:
            raise SystemExit("--features trunk: the config names no model.pretrained trunk")
        path = Path(cfg.model.pretrained)
        trunk = build_pyramid(replace(cfg.model, pretrained=str(path if path.is_absolute() else ROOT / path)))
        trunk = trunk.fpn.bottom_up.eval()

    def stages(images, sizes):
        # every stage (C2..C5) bilinearly upsampled to C2's grid (stride 4) and stacked: C2+...+C5 channels
        feats = list(trunk(normalize_images(images, mean, std, sizes)).values())
        size = feats[0].shape[-2:]
        return torch.cat([feats[0]] + [F.interpolate(f, size=size, mode="bilinear", align_corners=False)
                                       for f in feats[1:]], 1)

    return stages


def segment_features(maps, cfg, world: World) -> list:
    """Per image of ``world``: S x C features of its S segments, the mask-weighted means of the feature maps that
    ``maps`` (:func:`feature_maps`) gives (as the probe's and the GT-mask upper bound's z:
    ``openseg_experiments.gt_regions``)."""
    import torch
    from openseg_experiments import gt_regions

    from omniseg.data.loader import build_test_loader

    index = {r.image_id: i for i, r in enumerate(world.records)}
    out: list = [None] * len(index)
    with torch.no_grad():
        for batch in build_test_loader(world.records, cfg.data.batch_size, load_image=world.load):
            m = maps(batch.images, batch.image_sizes).float()
            for i, image_id in enumerate(batch.image_ids):
                segs = world.segments[index[image_id]]
                out[index[image_id]] = (gt_regions({"pixels": m}, i, segs, batch.image_sizes[i],
                                                   batch.images.shape[-2:])[1] if segs else m.new_zeros(0, len(m[0])))
    return out


def class_probe(x: dict, labels: dict, things: dict, steps: int = CLASS_STEPS, lr: float = 1e-2) -> dict:
    """Supervised control (not OpenSeg's: it reads class labels): softmax regression of the class index from the same
    standardised segment features, full-batch Adam for ``steps``; top-1 accuracy on the training segments and, per
    kind, on the held-out ones (chance 1 / K). ``x`` / ``labels`` / ``things``: "train" and "val" -> R x F, R class
    indices, R thing flags."""
    import torch
    import torch.nn.functional as F

    k = int(max(int(labels["train"].max()), int(labels["val"].max()))) + 1
    head = torch.nn.Linear(x["train"].shape[1], k)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    for _ in range(steps):
        loss = F.cross_entropy(head(x["train"]), labels["train"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        hit = {w: (head(x[w]).argmax(1) == labels[w]).float() for w in x}
    return {"train_top1": round(float(hit["train"].mean()), 3), "classes": k, "steps": steps,
            **{kind: round(float(hit["val"][things["val"] == flag].mean()), 3)
               for kind, flag in (("thing", True), ("stuff", False)) if bool((things["val"] == flag).any())}}


def ceiling(cfg, images: int = 40, heldout_batches: int = 200, seed: int = 0, features: str = "classes",
            weight_decay: float = 0.0, log=print) -> dict:
    """The module docstring's numbers for one OpenSeg config: free class vectors (``features="classes"``, both
    starts of :data:`INITS`) or a linear map of ``features`` segment features (random start)."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from openseg_probe import NameScorer

    from omniseg.data.caption_words import CaptionWords
    from omniseg.recipes.open_vocab import build_phrase_embedder

    maps = None if features == "classes" else feature_maps(features, cfg)  # a bad spec or run fails here, first
    torch.manual_seed(seed)
    embed = build_phrase_embedder(cfg.text, cfg.model.embed_dim)
    words = CaptionWords(cfg.model.words)
    worlds = {"train": World(cfg, "train"), "val": World(cfg, "val")}
    train, val = worlds["train"], worlds["val"]
    cats = train.categories
    if [c.id for c in cats] != [c.id for c in val.categories]:
        raise SystemExit("the training and held-out worlds have different categories")
    words.prefetch([c for caps in train.captions + val.captions for c in caps])
    index = {c.id: k for k, c in enumerate(cats)}
    names = F.normalize(embed([c.name for c in cats]), dim=-1)
    b = cfg.data.batch_size
    if features == "classes":  # one row per class: W's rows are the class vectors
        x = {w: torch.eye(len(cats)) for w in ("train", "val")}
        rows = {w: [[index[s.category_id] for s in segs] for segs in v.segments] for w, v in worlds.items()}
    else:  # one row per segment, standardised with the training segments' statistics
        log(f"features {features}: the segments of {len(train.records)} + {len(val.records)} images")
        feats = {w: segment_features(maps, cfg, v) for w, v in worlds.items()}
        x = {w: torch.cat(f) for w, f in feats.items()}
        mu, sd = x["train"].mean(0), x["train"].std(0).clamp_min(1e-6)
        x = {w: (v - mu) / sd for w, v in x.items()}
        ends = {w: np.cumsum([0] + [len(v) for v in f]).tolist() for w, f in feats.items()}
        rows = {w: [list(range(e[i], e[i + 1])) for i in range(len(e) - 1)] for w, e in ends.items()}
        supervised = class_probe(
            x, {w: torch.tensor([index[s.category_id] for segs in v.segments for s in segs]) for w, v in worlds.items()},
            {w: torch.tensor([s.is_thing for segs in v.segments for s in segs]) for w, v in worlds.items()})
        log(f"class probe (supervised control): {supervised}")

    def maker(w, s):
        return Batches(rows[w], worlds[w].captions, words, embed, cfg.model.keep_prob,
                       torch.Generator().manual_seed(s), np.random.default_rng(s))

    usable = [i for i, s in enumerate(val.segments) if s]
    make_val = maker("val", seed + 1)
    heldout = [make_val([usable[j] for j in bi])
               for bi in batches(len(usable), b, heldout_batches, np.random.default_rng(seed + 1))]

    def heldout_lg(weight, shift, tau) -> float:
        with torch.no_grad():
            return float(torch.stack([grounding(x["val"][ri] @ weight + shift, tau, rv, w, wv)
                                      for ri, rv, w, wv in heldout]).mean())

    frozen = {}  # the frozen class-name embeddings as the class vectors (no fitting), at the best tau of NAME_TAUS
    if features == "classes":
        name_lg = {t: heldout_lg(names, 0, torch.tensor(t)) for t in NAME_TAUS}
        best_tau = min(name_lg, key=name_lg.get)
        frozen = {"names": {"tau": best_tau, "lg_heldout": round(name_lg[best_tau], 3),
                            "lg_heldout_by_tau": {str(t): round(v, 3) for t, v in name_lg.items()}}}
    train_usable = [i for i, s in enumerate(train.segments) if s]
    fits = {}
    for init in INITS if features == "classes" else ("random",):
        if features != "classes":
            start = torch.randn(x["train"].shape[1], names.shape[1]) / x["train"].shape[1] ** 0.5
        else:
            start = names if init == "names" else F.normalize(torch.randn(names.shape), dim=-1)
        tried = {lr: fit(cfg, x["train"], start, maker("train", seed), train_usable, seed, lr,
                         lambda m, lr=lr, init=init: log(f"{init} start, lr {lr:g}: {m}"),
                         bias=features != "classes", weight_decay=weight_decay) for lr in FIT_LRS}
        lr = min(tried, key=lambda k: tried[k][3])
        weight, shift, tau, tail = tried[lr]
        scorer = NameScorer(cats, embed)
        for segs, r in list(zip(val.segments, rows["val"]))[:images]:
            if segs:
                ks = [index[s.category_id] for s in segs]
                scorer.add(x["val"][r] @ weight + shift, ks, [cats[k].isthing for k in ks])
        fits[init] = {"lr": lr, "lg_last100_by_lr": {f"{k:g}": v[3] for k, v in tried.items()},
                      "tau": round(float(tau), 4), "lg_last100": tail,
                      "lg_heldout": round(heldout_lg(weight, shift, tau), 3),
                      "images": images, **scorer.summary()}
    return {
        "features": features, "feature_dim": x["train"].shape[1], "weight_decay": weight_decay,
        "steps": cfg.train.max_iter, "batch": b, "keep_prob": cfg.model.keep_prob, "words": cfg.model.words,
        "text": cfg.text.encoder, "train_images": len(train_usable), "heldout_batches": len(heldout),
        "chance": round(2 * math.log(b), 3),
        **frozen, "fitted": fits, **({"class_probe": supervised} if features != "classes" else {}),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "openseg_synth.yaml")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    ap.add_argument("--images", type=int, default=40, help="held-out images whose segments score the vectors")
    ap.add_argument("--heldout-batches", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--weight-decay", type=float, default=0.0,
                    help="AdamW's decoupled weight decay on the class vectors / the linear map (default 0: Adam)")
    ap.add_argument("--features", default="classes", metavar="SPEC",
                    help="classes (free class vectors, default), or a linear probe of segment features: rgb, trunk "
                         "(the config's model.pretrained), trunk:RUN or fz:RUN (a trained run's trunk / F_z)")
    ap.add_argument("--out", type=Path, help="write the result as JSON")
    args = ap.parse_args(argv)
    from experiment_runner import machine

    from omniseg.engine.config import load_config
    from omniseg.errors import UserError
    from omniseg.recipes.openseg import OpenSegExperiment
    from omniseg.utils.atomic import atomic_write_json

    try:
        cfg = load_config(OpenSegExperiment, args.config, args.set)
    except (UserError, OSError) as e:
        raise SystemExit(f"{args.config}: {e}") from None
    t0 = time.perf_counter()
    path = args.config.resolve()
    try:
        res = {"config": str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else args.config),
               **ceiling(cfg, args.images, args.heldout_batches, args.seed, args.features, args.weight_decay)}
    except (UserError, FileNotFoundError) as e:  # e.g. --features fz:RUN with no such run: the error names the file
        raise SystemExit(f"--features {args.features}: {e}") from None
    res.update(seconds=round(time.perf_counter() - t0, 1), machine=machine(),
               command="python bench/openseg_ceiling.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    print(json.dumps(res))
    if args.out:
        atomic_write_json(args.out, res, indent=1)


if __name__ == "__main__":
    main()
