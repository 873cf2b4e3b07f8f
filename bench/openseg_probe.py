"""Why an OpenSeg run (or an ALIGN-style / LSeg+ one: the same dense F_z) grounds (almost) nothing: each
ground-truth segment of ``--images`` synthetic images (the run's
held-out world, or ``--split train``: the world it trained on) as a region, its feature z the mask-weighted mean of
the model's F_z (exactly the GT-mask upper bound's z, ``openseg_experiments.gt_regions``), scored against the text
embeddings the run uses. Per kind (thing / stuff):

* ``top1_all`` / ``top1_present``: the true class name scores highest among all class names / among the classes
  present in the image (the grounding mIoU's candidates); ``chance_present``: the mean of 1 / |present|.
* ``own_word_cos``: mean cosine of z with each single word of its class name ("red", "circle"; the grounding loss
  trains on single nouns and adjectives, Sec. 3.2); ``absent_word_cos``: with the words of the absent classes'
  names (not in the segment's own name). A trained F_z puts the first well above the second.

    python bench/openseg_probe.py RUN [RUN ...] [--images 40] [--split val|train] [--out probe.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


class NameScorer:
    """Scores region features of true segments against a world's class names and their single words."""

    KEYS = ("top1_all", "top1_present", "chance_present", "own_word_cos", "absent_word_cos")

    def __init__(self, cats: list, embed) -> None:
        """``cats``: the categories by id; ``embed``: texts -> len(texts) x D (the run's frozen encoder)."""
        import torch.nn.functional as F

        self.words = sorted({w for c in cats for w in c.name.split()})
        self.names = F.normalize(embed([c.name for c in cats]), dim=-1)
        self.vocab = F.normalize(embed(self.words), dim=-1)
        self.own = [[self.words.index(w) for w in c.name.split()] for c in cats]
        self.rows: dict[str, list[tuple[float, ...]]] = {"thing": [], "stuff": []}

    def add(self, z, classes: list[int], things: list[bool]) -> None:
        """One image: S x D region features of its S true segments, their class indices (into ``cats``) and
        thing / stuff flags; the present classes are the segments' classes."""
        import torch.nn.functional as F

        z = F.normalize(z, dim=-1)
        present = sorted(set(classes))
        absent_words = sorted(set(range(len(self.words))) - {w for k in present for w in self.own[k]})
        by_name, by_word = z @ self.names.t(), z @ self.vocab.t()  # S x K, S x V
        for k, thing, name_cos, word_cos in zip(classes, things, by_name, by_word):
            best_present = max(present, key=lambda c: float(name_cos[c]))
            self.rows["thing" if thing else "stuff"].append((
                float(int(name_cos.argmax()) == k), float(best_present == k), 1 / len(present),
                float(word_cos[self.own[k]].mean()),
                float(word_cos[absent_words].mean()) if absent_words else float("nan")))

    def summary(self) -> dict:
        """Per kind: the segment count and the mean of each of :attr:`KEYS`."""
        return {kind: {"segments": len(r), **({k: round(statistics.fmean(x[j] for x in r), 3)
                                               for j, k in enumerate(self.KEYS)} if r else {})}
                for kind, r in self.rows.items()}


def probe(run: str, images: int = 40, split: str = "val") -> dict:
    """The module docstring's numbers for one run."""
    import torch
    from openseg_experiments import gt_regions

    from omniseg.api import Segmenter
    from omniseg.data.loader import build_test_loader
    from omniseg.recipes.data import open_source
    from omniseg.recipes.openseg import gt_segments

    seg = Segmenter.from_checkpoint(run)
    model, cfg = seg.model, seg.cfg
    model.eval()
    seed = cfg.data.val_seed if split == "val" else cfg.data.train_seed
    rs, load = open_source("synth", images, seed, cfg.data.image_size, False)
    cats = sorted(rs.categories, key=lambda c: c.id)
    index = {c.id: k for k, c in enumerate(cats)}
    by_id = {r.image_id: r for r in rs}
    with torch.no_grad():
        scorer = NameScorer(cats, model.embed)
        for batch in build_test_loader(rs, cfg.data.batch_size, load_image=load):
            enc = model.encode(batch.images, batch.image_sizes)
            for i, image_id in enumerate(batch.image_ids):
                segs = gt_segments(by_id[image_id])
                if not segs:
                    continue
                _, z = gt_regions(enc, i, segs, batch.image_sizes[i], batch.images.shape[-2:])
                scorer.add(z, [index[s.category_id] for s in segs], [s.is_thing for s in segs])
    return {"run": run, "split": split, "images": images, **scorer.summary()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--split", choices=("val", "train"), default="val")
    ap.add_argument("--out", type=Path, help="write the results as JSON")
    args = ap.parse_args(argv)
    from omniseg.utils.atomic import atomic_write_json

    res = [probe(r, args.images, args.split) for r in args.runs]
    for r in res:
        print(json.dumps(r))
    if args.out:
        atomic_write_json(args.out, res if len(res) > 1 else res[0])


if __name__ == "__main__":
    main()
