"""Benchmark: does the default text encoder map the synthetic lexicon's synonyms to their class?

For every thing class of :mod:`omniseg.data.synth.lexicon` ("red ring") and every other
phrasing of it (``synonyms_of``: "crimson hoop", "red donut", ...), recall@1 asks whether the
class name nearest by cosine to the phrasing is the right one (recall@5: among the 5 nearest).
Measured with plain embeddings and with prompt ensembling (:data:`omniseg.text.prompts.TEMPLATES`
on both the phrasing and the class names, the ViLD / ALP recipe), split by which word was
replaced (color word only, shape word only, both). A hash ("randn") encoder gives the chance
level. Also times each encoder on 1,000 phrases.

    .venv/bin/python bench/text_synonyms.py
    .venv/bin/python bench/text_synonyms.py --templates 5   # fewer prompt templates, faster
    .venv/bin/python bench/text_synonyms.py --encoders minilm,mpnet   # + all-mpnet-base-v2 (make mpnet)

Writes bench/results/text_synonyms.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omniseg.data.synth import lexicon  # noqa: E402
from omniseg.text.encoders import HashEncoder, TextEncoder, build_text_encoder  # noqa: E402
from omniseg.text.prompts import NAME_ONLY, TEMPLATES, encode_with_prompts  # noqa: E402
from omniseg.utils.atomic import atomic_write_json  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "text_synonyms.json"


def queries() -> list[tuple[str, int, str]]:
    """``(phrasing, index of its class, kind)``; kind: which word differs from the class name."""
    out = []
    for ci, name in enumerate(lexicon.class_names()):
        color, _, shape = name.partition(" ")
        for phrase in lexicon.synonyms_of(name):
            if phrase == name:
                continue
            c, _, s = phrase.partition(" ")
            kind = "shape word" if c == color else "color word" if s == shape else "both words"
            out.append((phrase, ci, kind))
    return out


def recall(
    encoder: TextEncoder, templates: tuple[str, ...] | list[str], qs: list[tuple[str, int, str]]
) -> dict:
    names = lexicon.class_names()
    cls = encode_with_prompts(encoder, names, templates)  # C x D
    q = encode_with_prompts(encoder, [p for p, _, _ in qs], templates)  # Q x D
    sim = q @ cls.T  # Q x C cosine
    target = torch.tensor([ci for _, ci, _ in qs])
    top5 = sim.topk(min(5, len(names)), dim=1).indices
    hit1 = top5[:, 0] == target
    hit5 = (top5 == target[:, None]).any(dim=1)
    res = {"recall@1": hit1.float().mean().item(), "recall@5": hit5.float().mean().item()}
    for kind in ("color word", "shape word", "both words"):
        sel = torch.tensor([k == kind for _, _, k in qs])
        if sel.any():
            res[f"recall@1 ({kind})"] = hit1[sel].float().mean().item()
    return res


def time_encoder(encoder: TextEncoder, n: int = 1000, runs: int = 3) -> float:
    """Best-of-``runs`` seconds to encode ``n`` distinct short phrases (after one warm-up call)."""
    names = lexicon.class_names()
    phrases = [f"a photo of the {names[i % len(names)]} number {i}" for i in range(n)]
    encoder.encode(phrases[:32])
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        encoder.encode(phrases)
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--templates", type=int, default=len(TEMPLATES), help="number of prompt templates to use")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--encoders", default="minilm",
                    help="comma-separated text encoders to compare (minilm, mpnet); the first one's timing is "
                         "the top-level load_s / encode_1000_phrases_s")
    args = ap.parse_args(argv)
    templates = TEMPLATES[: args.templates]
    qs = queries()
    kinds = [k.strip() for k in args.encoders.split(",") if k.strip()]

    rows, timing = {}, {}
    for kind in kinds:
        t0 = time.perf_counter()
        enc = build_text_encoder(kind)
        load_s = time.perf_counter() - t0
        rows[f"{enc.name}, name only"] = recall(enc, NAME_ONLY, qs)
        rows[f"{enc.name}, {len(templates)} prompts"] = recall(enc, templates, qs)
        timing[enc.name] = {"dim": enc.dim, "load_s": load_s, "encode_1000_phrases_s": time_encoder(enc)}
        first = timing[next(iter(timing))]
    control = HashEncoder(dim=first["dim"], seed=0)
    rows["hash randn control, name only"] = recall(control, NAME_ONLY, qs)
    result = {
        "encoder": next(iter(timing)),
        "classes": len(lexicon.class_names()),
        "queries": len(qs),
        "templates": len(templates),
        "chance@1": 1 / len(lexicon.class_names()),
        "results": rows,
        "load_s": first["load_s"],
        "encode_1000_phrases_s": first["encode_1000_phrases_s"],
        "encoders": timing,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "command": "python bench/text_synonyms.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    atomic_write_json(args.out, result, indent=2)

    keys = list(next(iter(rows.values())))
    print(
        f"{len(qs)} synonym phrasings of {result['classes']} classes (chance recall@1 {result['chance@1']:.3f})\n"
    )
    print("| encoder | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for label, r in rows.items():
        print(f"| {label} | " + " | ".join(f"{r[k]:.3f}" for k in keys) + " |")
    for name, t in timing.items():
        print(
            f"\n{name}: encode 1000 phrases {t['encode_1000_phrases_s']:.2f} s "
            f"({result['torch_threads']} threads); model load {t['load_s']:.1f} s"
        )
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
