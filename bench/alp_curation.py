"""Benchmark: ALP curation (``omniseg curate alps``) speed and quality on synthetic narratives.

    OMP_NUM_THREADS=1 .venv/bin/python bench/alp_curation.py       # 2,000 narratives, 1 and 2 workers
    .venv/bin/python bench/alp_curation.py --narratives 300 --workers 1

Throughput against the tagger (``tagger_ratio``), in one process, repetitions interleaved,
medians: (a) spaCy tagging alone with every component of the loaded pipeline (``tag_texts``:
tok2vec, tagger, attribute ruler, lemmatizer), (b) the tagging curation does
(:class:`omniseg.curate.pos.PosTagger`: tok2vec and tagger through ``nlp.pipe``, the rule
components memoized, same tokens), (c) full curation of the same narratives by a warm worker
(``_process_chunk`` over all chunks: read, parse, tag, align, box, write), and the ratios c/a, c/b.
The rows below add end-to-end ``curate_alps`` runs with 1 and 2 worker processes (spaCy load,
chunk planning and merge included); ``cpu_ms_per_narrative`` gives the per-core rate on a shared
machine.

Speed: narratives / s of :func:`omniseg.curate.alps_run.curate_alps` (parse, tag, align, box, write),
fresh output folder per worker count, extrapolated to the COCO subset of Localized Narratives
(118K images; real narratives are longer than synthetic ones, so the run is repeated on
"long" narratives made by concatenating ``--concat`` synthetic ones, and the extrapolation
scales by the measured words and trace points per narrative).

Quality, against the generator's ground truth (``generate_scene`` knows which object each
narrative phrase refers to, :class:`omniseg.data.synth.narrative.Mention`): every ALP is matched
to the mention whose time span overlaps its own most; for thing mentions we report the IoU and
center error of the ALP box against the true box, and whether the object with the highest IoU
is the referred one. Also: thing-mention recall, exact phrase match, tagger accuracy on the
lexicon's color / size (adjective) and shape / stuff (noun) words, and a t_p sweep.

Writes bench/results/alp_curation.json and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omniseg.curate.alps import AlpConfig, narrative_alps  # noqa: E402
from omniseg.curate.alps_run import curate_alps  # noqa: E402
from omniseg.curate.pos import load_tagger, tag_texts  # noqa: E402
from omniseg.data.formats.narratives import narrative_to_json  # noqa: E402
from omniseg.data.records import Narrative, TracePoint, Utterance  # noqa: E402
from omniseg.data.synth import lexicon  # noqa: E402
from omniseg.data.synth.world import SynthConfig, generate_scene  # noqa: E402
from omniseg.utils.atomic import atomic_open, atomic_write_json  # noqa: E402

COCO_LN_IMAGES = 118_287


def iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def concat_narratives(parts: list[Narrative]) -> Narrative:
    """One long narrative from several (times shifted so they follow each other)."""
    caption, timed, traces, shift = [], [], [], 0.0
    for n in parts:
        caption.append(n.caption)
        timed += [Utterance(u.utterance, u.start_time + shift, u.end_time + shift) for u in n.timed_caption]
        traces += [[TracePoint(p.x, p.y, p.t + shift) for p in seg] for seg in n.traces]
        shift = max(p.t for seg in traces for p in seg) + 1.0
    return Narrative(" ".join(caption), timed, traces, dataset_id="synth")


def write_jsonl(path: Path, items: list[tuple[int, Narrative]]) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        for image_id, n in items:
            f.write(json.dumps(narrative_to_json(image_id, n)) + "\n")


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the worker pools)."""
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def speed(path: Path, sizes: dict, workers: list[int], chunk_lines: int, n: int) -> list[dict]:
    """Wall-clock narratives / s, and CPU seconds per narrative (what 2 idle cores would give:
    the machine is shared, so wall-clock rates with 2 workers depend on other jobs' load)."""
    rows = []
    for w in workers:
        with tempfile.TemporaryDirectory() as tmp:
            c0, t0 = _cpu_seconds(), time.perf_counter()
            stats = curate_alps(path, sizes, tmp, AlpConfig(), workers=w, chunk_lines=chunk_lines, progress=False)
            s = time.perf_counter() - t0
            cpu = _cpu_seconds() - c0
            t1 = time.perf_counter()
            curate_alps(path, sizes, tmp, AlpConfig(), workers=w, chunk_lines=chunk_lines, progress=False)
            resumed = time.perf_counter() - t1
        rows.append({"workers": w, "seconds": round(s, 3), "narratives_per_s": round(n / s, 1),
                     "cpu_ms_per_narrative": round(1000 * cpu / n, 2), "load_average_1min": os.getloadavg()[0],
                     "alps": stats["alps"], "resume_all_done_seconds": round(resumed, 3)})
    return rows


def tagger_ratio(path: Path, sizes: dict, captions: list[str], chunk_lines: int, reps: int = 3) -> dict:
    """Narratives / s of (a) stock spaCy tagging, (b) curation's tagging, (c) full curation by a warm
    worker; interleaved repetitions, medians (see the module docstring)."""
    from omniseg.curate import alps_run
    from omniseg.curate.pos import PosTagger

    nlp = load_tagger()
    tagger = PosTagger(nlp)
    chunks = alps_run.plan_chunks(path, chunk_lines)
    n = len(captions)
    times: dict[str, list[float]] = {"spacy_all_components": [], "curation_tagging": [], "full_curation": []}
    with tempfile.TemporaryDirectory() as tmp:
        alps_run._init_worker(sizes, AlpConfig())
        try:
            list(tagger.pipe(captions, AlpConfig().batch_size))  # warm both memos (steady state of a long run)
            for c in chunks:
                alps_run._process_chunk((str(path), c, tmp, "skip"))
            for _ in range(reps):
                t0 = time.perf_counter()
                list(tag_texts(nlp, captions, AlpConfig().batch_size))
                t1 = time.perf_counter()
                list(tagger.pipe(captions, AlpConfig().batch_size))
                t2 = time.perf_counter()
                for c in chunks:
                    alps_run._process_chunk((str(path), c, tmp, "skip"))
                t3 = time.perf_counter()
                for k, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2)):
                    times[k].append(dt)
        finally:
            alps_run._WORKER.clear()
    rate = {k: round(n / float(np.median(v)), 1) for k, v in times.items()}
    return {
        "narratives": n, "repetitions": reps, "narratives_per_s": rate,
        "full_over_spacy_all_components": round(rate["full_curation"] / rate["spacy_all_components"], 3),
        "full_over_curation_tagging": round(rate["full_curation"] / rate["curation_tagging"], 3),
        "curation_tagging_over_spacy_all_components": round(
            rate["curation_tagging"] / rate["spacy_all_components"], 3),
        "load_average_1min": os.getloadavg()[0],
    }


def quality(scenes, tokens, t_pads: list[float], min_points: list[int]) -> dict:
    """ALP box quality against the referred objects, for several t_p / min_points settings."""
    out = {}
    for t_pad in t_pads:
        for mp in min_points:
            cfg = AlpConfig(t_pad=t_pad, min_points=mp)
            ious, centers, right, spurious, stuff_hits, n_alps = [], [], 0, 0, 0, 0
            found: set[tuple[int, int]] = set()
            exact = 0
            for si, (scene, toks) in enumerate(zip(scenes, tokens)):
                rec = scene.record
                res = narrative_alps(rec.narratives[0], toks, rec.width, rec.height, cfg)
                for alp in res.alps:
                    n_alps += 1
                    ov = [min(alp.t_end, m.end_time) - max(alp.t_start, m.start_time) for m in scene.mentions]
                    k = int(np.argmax(ov)) if ov else -1
                    if k < 0 or ov[k] <= 0:
                        spurious += 1
                        continue
                    m = scene.mentions[k]
                    if m.target[0] != "thing":
                        stuff_hits += 1
                        continue
                    idx = int(m.target[1])
                    found.add((si, k))
                    exact += alp.phrase == m.phrase.lower()
                    true = rec.instances[idx].box
                    ious.append(iou(alp.box, true))
                    cx, cy = (alp.box[0] + alp.box[2]) / 2, (alp.box[1] + alp.box[3]) / 2
                    tx, ty = (true[0] + true[2]) / 2, (true[1] + true[3]) / 2
                    centers.append(float(np.hypot(cx - tx, cy - ty)))
                    best = max(range(len(rec.instances)), key=lambda j: iou(alp.box, rec.instances[j].box))
                    right += best == idx
            n_thing = sum(m.target[0] == "thing" for s in scenes for m in s.mentions)
            out[f"t_pad={t_pad},min_points={mp}"] = {
                "alps": n_alps,
                "thing_alps": len(ious),
                "mean_iou": round(float(np.mean(ious)), 4) if ious else None,
                "median_iou": round(float(np.median(ious)), 4) if ious else None,
                "median_center_error_px": round(float(np.median(centers)), 2) if centers else None,
                "right_object_fraction": round(right / len(ious), 4) if ious else None,
                "exact_phrase_fraction": round(exact / len(ious), 4) if ious else None,
                "thing_mention_recall": round(len(found) / n_thing, 4) if n_thing else None,
                "stuff_alps": stuff_hits,
                "spurious_alps": spurious,
            }
    return out


def tagger_accuracy(scenes, tokens) -> dict:
    """POS accuracy on the lexicon's words in the synthetic narrative captions."""
    adj = set(lexicon.COLORS) | {w for ws in lexicon.COLOR_SYNONYMS.values() for w in ws} | {"large", "small", "tiny"}
    noun = set(lexicon.SHAPES) | {ws.split()[-1].split("-")[-1] for v in lexicon.SHAPE_SYNONYMS.values() for ws in v}
    noun |= set(lexicon.HYPERNYMS) | set(lexicon.STUFF_NAMES)
    noun |= {w for ws in lexicon.STUFF_SYNONYMS.values() for w in ws}
    noun -= {"plus"}  # "plus sign": a noun modifier, ambiguous
    counts = {"adj_total": 0, "adj_as_ADJ": 0, "adj_as_ADJ_or_NOUN": 0, "noun_total": 0, "noun_as_NOUN": 0}
    for toks in tokens:
        for t in toks:
            w = t.text.lower()
            if w in adj:
                counts["adj_total"] += 1
                counts["adj_as_ADJ"] += t.pos == "ADJ"
                counts["adj_as_ADJ_or_NOUN"] += t.pos in ("ADJ", "NOUN", "PROPN")
            elif w in noun:
                counts["noun_total"] += 1
                counts["noun_as_NOUN"] += t.pos in ("NOUN", "PROPN")
    tot = counts["adj_total"] + counts["noun_total"]
    counts["accuracy"] = round((counts["adj_as_ADJ"] + counts["noun_as_NOUN"]) / tot, 4) if tot else None
    counts["phrase_role_accuracy"] = (
        round((counts["adj_as_ADJ_or_NOUN"] + counts["noun_as_NOUN"]) / tot, 4) if tot else None
    )
    return counts


def hand_tagged_accuracy() -> dict:
    """The tagger's accuracy on the hand-tagged narrative sentences of tests/curate/test_pos.py."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "tests" / "curate" / "test_pos.py"
    spec = importlib.util.spec_from_file_location("_hand_tagged", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.measure_hand_tagged(load_tagger())


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--narratives", type=int, default=2000)
    ap.add_argument("--size", type=int, default=128, help="synthetic image side (narratives barely depend on it)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--chunk-lines", type=int, default=250)
    ap.add_argument("--concat", type=int, default=3, help="synthetic narratives per 'long' narrative")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "alp_curation.json"))
    args = ap.parse_args(argv)

    cfg = SynthConfig(seed=args.seed, num_images=args.narratives, image_size=args.size)
    t0 = time.perf_counter()
    scenes = [generate_scene(cfg, i) for i in tqdm(range(cfg.num_images), desc="synthetic scenes",
                                                    disable=not sys.stderr.isatty())]
    scenes = [s for s in scenes if s.record.narratives]
    gen_s = time.perf_counter() - t0
    sizes = {str(s.record.image_id): (s.record.image_id, s.record.width, s.record.height) for s in scenes}
    narrs = [(s.record.image_id, s.record.narratives[0]) for s in scenes]
    longs = [
        (narrs[i][0], concat_narratives([n for _, n in narrs[i : i + args.concat]]))
        for i in range(0, len(narrs), args.concat)
    ]

    def shape(items):
        words = np.mean([len(n.caption.split()) for _, n in items])
        points = np.mean([sum(len(s) for s in n.traces) for _, n in items])
        return {"narratives": len(items), "mean_words": round(float(words), 1), "mean_points": round(float(points), 1)}

    result: dict = {"benchmark": "alp_curation", "cpu_count": os.cpu_count(), "python": platform.python_version(),
                    "load_average_1min": os.getloadavg()[0], "generate_seconds": round(gen_s, 2)}
    with tempfile.TemporaryDirectory() as tmp:
        short_path, long_path = Path(tmp) / "short.jsonl", Path(tmp) / "long.jsonl"
        write_jsonl(short_path, narrs)
        write_jsonl(long_path, longs)
        result["tagger_ratio"] = tagger_ratio(short_path, sizes, [n.caption for _, n in narrs], args.chunk_lines)
        result["short"] = {**shape(narrs), "rows": speed(short_path, sizes, args.workers, args.chunk_lines, len(narrs))}
        result["long"] = {**shape(longs), "rows": speed(long_path, sizes, args.workers, max(1, args.chunk_lines // args.concat),
                                                       len(longs))}
    extra = {}
    for kind in ("short", "long"):
        rows = result[kind]["rows"]
        best = max(r["narratives_per_s"] for r in rows)
        cpu_ms = min(r["cpu_ms_per_narrative"] for r in rows if r["workers"] == max(args.workers))
        extra[kind] = {
            "minutes_measured_wall_clock": round(COCO_LN_IMAGES / best / 60, 1),
            "minutes_on_2_idle_cores_from_cpu_time": round(COCO_LN_IMAGES * cpu_ms / 1000 / 2 / 60, 1),
        }
    result["extrapolation_coco_118k"] = {
        **extra,
        "note": "118K narratives (one per image); 'short' = synthetic narratives, 'long' = 3 concatenated "
        "(see mean_words / mean_points; real LN narratives are probably in between); goal < 10 minutes",
    }
    nlp = load_tagger()
    t1 = time.perf_counter()
    tokens = list(tag_texts(nlp, (s.record.narratives[0].caption for s in scenes)))
    result["tagging_only_narratives_per_s"] = round(len(scenes) / (time.perf_counter() - t1), 1)
    result["quality"] = quality(scenes, tokens, [0.0, 0.25, 0.5, 1.0], [1, 4])
    result["tagger_synthetic"] = tagger_accuracy(scenes, tokens)
    result["tagger_hand_tagged"] = hand_tagged_accuracy()
    atomic_write_json(args.out, result, indent=2)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
