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

    python bench/openseg_ceiling.py [--config configs/openseg_synth.yaml] [--set KEY=VALUE ...] [--images 40]
                                    [--heldout-batches 200] [--seed 0] [--out bench/results/openseg/ceiling.json]
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
TAIL = 100
#: where the class vectors start: the class names' text embeddings (a text-aligned start, as OpenSeg from ALIGN) or
#: random unit vectors (as OpenSeg's F_z from scratch)
INITS = ("names", "random")


def world(cfg, split: str) -> tuple[list[list[int]], list[list[str]], list]:
    """Per image of the config's ``split`` world: its segments' class ids (crowd left out) and its captions; and
    the world's categories by id."""
    from omniseg.recipes.data import open_train, open_val
    from omniseg.recipes.openseg import gt_segments

    rs, _ = (open_train if split == "train" else open_val)(cfg.data, progress=False)
    segs = [[s.category_id for s in gt_segments(r) if not s.is_crowd] for r in rs]
    return segs, [list(r.captions) for r in rs], sorted(rs.categories, key=lambda c: c.id)


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
    """Tensors of one batch: region class indices (B x N, valid mask) and kept caption words (B x W x D, mask)."""

    def __init__(self, segs, captions, words, embed, index: dict[int, int], keep_prob: float, generator, rng):
        self.segs, self.captions, self.words, self.embed = segs, captions, words, embed
        self.index, self.keep_prob, self.generator, self.rng = index, keep_prob, generator, rng

    def __call__(self, images: list[int]):
        import torch

        from omniseg.data.caption_words import drop_words

        kept = []
        for i in images:
            caps = self.captions[i]
            kept.append(drop_words(self.words(caps[int(self.rng.integers(len(caps)))]), self.keep_prob,
                                   self.generator) if caps else [])
        n, w = max(len(self.segs[i]) for i in images), max([len(k) for k in kept] + [1])
        ri, rv = torch.zeros(len(images), n, dtype=torch.long), torch.zeros(len(images), n, dtype=torch.bool)
        wi, wv = torch.zeros(len(images), w, dtype=torch.long), torch.zeros(len(images), w, dtype=torch.bool)
        vocab = list(dict.fromkeys(x for k in kept for x in k))
        pos = {x: j for j, x in enumerate(vocab)}
        for b, i in enumerate(images):
            ids = [self.index[c] for c in self.segs[i]]
            ri[b, :len(ids)], rv[b, :len(ids)] = torch.tensor(ids, dtype=torch.long), True
            wi[b, :len(kept[b])] = torch.tensor([pos[x] for x in kept[b]], dtype=torch.long)
            wv[b, :len(kept[b])] = True
        emb = self.embed(vocab) if vocab else torch.zeros(1, self.embed.dim)
        return ri, rv, emb[wi], wv


def grounding(vectors, tau, ri, rv, words, wv):
    """L_G of one batch as ``OpenSeg.forward`` computes it (Eq. 4 as printed: twice the two-way mean)."""
    from omniseg.ops.openseg_losses import grounding_loss, grounding_scores

    return 2 * grounding_loss(grounding_scores(vectors[ri], rv, words, wv, tau), valid=wv.any(1))


def fit(cfg, start, make, usable: list[int], seed: int, lr: float, log):
    """Class vectors (K x D, normalised) and tau fitted to L_G from ``start`` for ``train.max_iter`` steps by Adam
    at step size ``lr``, and L_G's mean over the last :data:`TAIL` steps."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    vectors = torch.nn.Parameter(start.clone())
    log_tau = torch.nn.Parameter(torch.tensor(float(cfg.model.temperature)).log())
    opt = torch.optim.Adam([vectors, log_tau], lr=lr)
    steps, losses = cfg.train.max_iter, []
    for step, bi in enumerate(batches(len(usable), cfg.data.batch_size, steps, np.random.default_rng(seed)), 1):
        loss = grounding(vectors, log_tau.exp().clamp(0.01, 1.0), *make([usable[j] for j in bi]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if step % 500 == 0 or step == steps:
            log(f"step {step}/{steps}: L_G {statistics.fmean(losses[-TAIL:]):.3f} (mean of the last "
                f"{min(TAIL, len(losses))}), tau {float(log_tau.detach().exp()):.4f}")
    return (F.normalize(vectors.detach(), dim=-1), log_tau.detach().exp().clamp(0.01, 1.0),
            round(statistics.fmean(losses[-TAIL:]), 3))


def ceiling(cfg, images: int = 40, heldout_batches: int = 200, seed: int = 0, log=print) -> dict:
    """The module docstring's numbers for one OpenSeg config."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from openseg_probe import NameScorer

    from omniseg.data.caption_words import CaptionWords
    from omniseg.recipes.open_vocab import build_phrase_embedder

    torch.manual_seed(seed)
    embed = build_phrase_embedder(cfg.text, cfg.model.embed_dim)
    words = CaptionWords(cfg.model.words)
    train_segs, train_caps, cats = world(cfg, "train")
    val_segs, val_caps, val_cats = world(cfg, "val")
    if [c.id for c in cats] != [c.id for c in val_cats]:
        raise SystemExit("the training and held-out worlds have different categories")
    words.prefetch([c for caps in train_caps + val_caps for c in caps])
    index = {c.id: k for k, c in enumerate(cats)}
    names = F.normalize(embed([c.name for c in cats]), dim=-1)
    b = cfg.data.batch_size

    def maker(segs, caps, s):
        return Batches(segs, caps, words, embed, index, cfg.model.keep_prob, torch.Generator().manual_seed(s),
                       np.random.default_rng(s))

    usable = [i for i, s in enumerate(val_segs) if s]
    make_val = maker(val_segs, val_caps, seed + 1)
    heldout = [make_val([usable[j] for j in bi])
               for bi in batches(len(usable), b, heldout_batches, np.random.default_rng(seed + 1))]

    def heldout_lg(vectors, tau) -> float:
        with torch.no_grad():
            return float(torch.stack([grounding(vectors, tau, *x) for x in heldout]).mean())

    name_lg = {t: heldout_lg(names, torch.tensor(t)) for t in NAME_TAUS}
    best_tau = min(name_lg, key=name_lg.get)
    train_usable = [i for i, s in enumerate(train_segs) if s]
    fits = {}
    for init in INITS:
        start = names if init == "names" else F.normalize(torch.randn(names.shape), dim=-1)
        tried = {lr: fit(cfg, start, maker(train_segs, train_caps, seed), train_usable, seed, lr,
                         lambda m, lr=lr, init=init: log(f"{init} start, lr {lr:g}: {m}")) for lr in FIT_LRS}
        lr = min(tried, key=lambda k: tried[k][2])
        vectors, tau, tail = tried[lr]
        scorer = NameScorer(cats, embed)
        for segs in val_segs[:images]:
            if segs:
                ks = [index[c] for c in segs]
                scorer.add(vectors[ks], ks, [cats[k].isthing for k in ks])
        fits[init] = {"lr": lr, "lg_last100_by_lr": {f"{k:g}": v[2] for k, v in tried.items()},
                      "tau": round(float(tau), 4), "lg_last100": tail, "lg_heldout": round(heldout_lg(vectors, tau), 3),
                      "images": images, **scorer.summary()}
    return {
        "steps": cfg.train.max_iter, "batch": b, "keep_prob": cfg.model.keep_prob, "words": cfg.model.words,
        "text": cfg.text.encoder, "train_images": len(train_usable), "heldout_batches": len(heldout),
        "chance": round(2 * math.log(b), 3),
        "names": {"tau": best_tau, "lg_heldout": round(name_lg[best_tau], 3),
                  "lg_heldout_by_tau": {str(t): round(v, 3) for t, v in name_lg.items()}},
        "fitted": fits,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "openseg_synth.yaml")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    ap.add_argument("--images", type=int, default=40, help="held-out images whose segments score the vectors")
    ap.add_argument("--heldout-batches", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
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
    res = {"config": str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else args.config),
           **ceiling(cfg, args.images, args.heldout_batches, args.seed)}
    res.update(seconds=round(time.perf_counter() - t0, 1), machine=machine(),
               command="python bench/openseg_ceiling.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    print(json.dumps(res))
    if args.out:
        atomic_write_json(args.out, res, indent=1)


if __name__ == "__main__":
    main()
