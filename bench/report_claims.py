"""BENCHMARKS.md sections of issue 12, rendered from per-run result folders: the pretrained
backbones (their manifests), the converging yardstick (learning curves, drawn to a PNG) and the
seed-repeated paper-claim rows with a verdict per claim. Whatever is recorded is shown; what is
planned but missing is listed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from claims import CLAIMS, aggregate, verdict, verdicts  # noqa: E402
from experiment_runner import read_results  # noqa: E402

#: the yardstick target (issue 12): oracle box / mask AP on 200 held-out images within 45 minutes
TARGET_BOX_AP, TARGET_MASK_AP, TARGET_MINUTES = 30.0, 25.0, 45.0


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def pretrained_section(results: Path) -> list[str]:
    out = ["## Pretrained backbones (`omniseg pretrain`, issue 12)", ""]
    manifests = sorted((results / "pretrained").glob("*/manifest.json"))
    if not manifests:
        return out + ["(none recorded yet: `omniseg pretrain configs/pretrain_r18_dense.yaml`, then copy "
                      "backbone.safetensors + manifest.json to bench/results/pretrained/<name>/)", ""]
    out += ["| backbone | kind | trained on | labels | steps | final losses | evaluation | training time (as run) | command |",
            "|---|---|---|---|---:|---|---|---:|---|"]
    for p in manifests:
        m = json.loads(p.read_text(encoding="utf-8"))
        d = m.get("data", {})
        labels = ("none (images only)" if not d.get("labels_read") else
                  f"{d.get('thing_classes')} classes, {d.get('evaluation_classes_labelled')} of them evaluation classes")
        losses = ", ".join(f"{k} {v:.3f}" for k, v in m.get("final_losses", {}).items() if k != "step")
        ev = ", ".join(f"{k} {v:.3f}" for k, v in (m.get("eval") or {}).items() if isinstance(v, (int, float)))
        model = m.get("model", {})
        out.append(f"| `{p.parent.name}` ({model.get('trunk', model.get('builder', ''))}, width "
                   f"{model.get('width', '–')}, {model.get('norm', '')}) | {m.get('kind')} | {d.get('train')} "
                   f"({d.get('train_num_images')} images, seed {d.get('train_seed')}) | {labels} | {m.get('steps')} "
                   f"| {losses} | {ev} | {m.get('train_loop_s', m.get('wall_s', 0)) / 60:.0f} min | `{m.get('command')}` |")
    return out + ["", "Each manifest (bench/results/pretrained/<name>/manifest.json) also holds the full config, "
                  "the weights' sha256 and the omniseg commit.", ""]


def yardstick_section(results: Path) -> list[str]:
    runs = read_results(results / "yardstick") if (results / "yardstick").is_dir() else {}
    out = ["## The converging yardstick: the oracle Mask R-CNN on voc-like (issue 12)", ""]
    if not runs:
        return out + ["(no run recorded yet: `python bench/yardstick.py --commit`)", ""]
    first = next(iter(runs.values()))
    out += [f"`python bench/yardstick.py` — box-supervised oracle (every class with boxes and masks, "
            f"class-specific masks), ResNet-18-FPN width 16 GN, {first['train_images']} training images, "
            f"{first['iters']} iterations (batch 4, AdamW, cosine), AP on {first['val_images']} held-out images "
            f"every {first['curve'][0]['step'] if first.get('curve') else '–'} iterations; {first['machine']}. Target: >= {TARGET_BOX_AP:.0f} box AP and >= "
            f"{TARGET_MASK_AP:.0f} mask AP within {TARGET_MINUTES:.0f} minutes on 2 cores.", "",
            "| run | init | seed | box AP | mask AP | box AP50 | iterations | s / iteration (as run) | wall time (as run) | "
            f"box AP >= {TARGET_BOX_AP:.0f} | mask AP >= {TARGET_MASK_AP:.0f} |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for name, r in runs.items():
        f = r.get("final") or {}
        box, mask = 100 * f.get("box_AP", 0.0), 100 * f.get("mask_AP", 0.0)
        wall = "unfinished" if r.get("partial") else f"{r['wall_s'] / 60:.0f} min"
        out.append(f"| {name}{' (partial)' if r.get('partial') else ''} | {r['init']} | {r['seed']} | {box:.1f} "
                   f"| {mask:.1f} | {_pct(f.get('box_AP50'))} | {f.get('step', '–')} of {r['iters']} "
                   f"| {f.get('s_per_iter', 0):.2f} | {wall} "
                   f"| {'met' if box >= TARGET_BOX_AP else 'NOT met'} | {'met' if mask >= TARGET_MASK_AP else 'NOT met'} |")
    analysed = {n: r["analysis"] for n, r in runs.items() if r.get("analysis")}
    if analysed:
        out += ["", "What limits the final models (`analyse` in bench/yardstick.py, from the saved validation "
                "predictions): box AP by object size (COCO: small < 32^2 px, medium < 96^2, large), AP50 against AP "
                "(localisation), and class-agnostic box AP (every class merged: finding things, without naming "
                "them).", "",
                "| run | box AP small | medium | large | box AP50 | box AP75 | class-agnostic box AP | "
                "class-agnostic AP50 | mask AP small | medium | large |", "|---|" + "---:|" * 10]
        for n, a in analysed.items():
            b, m, c = a["box"], a["mask"], a["class_agnostic_box"]
            out.append(f"| {n} | {_pct(b['APs'])} | {_pct(b['APm'])} | {_pct(b['APl'])} | {_pct(b['AP50'])} "
                       f"| {_pct(b['AP75'])} | {_pct(c['AP'])} | {_pct(c['AP50'])} | {_pct(m['APs'])} "
                       f"| {_pct(m['APm'])} | {_pct(m['APl'])} |")
        confused = {n: a["confusions"] for n, a in analysed.items() if a.get("confusions")}
        if confused:
            first_c = next(iter(confused.values()))
            out += ["", f"Naming of the confident detections (score >= {first_c['min_score']}) that lie on a true "
                    "object (box IoU >= 0.5): right class, right colour but wrong shape, right shape but wrong "
                    "colour, neither.", "",
                    "| run | confident detections | on an object | right class | colour only | shape only | neither |",
                    "|---|---:|---:|---:|---:|---:|---:|"]
            out += [f"| {n} | {c['detections']} | {_pct(c['localized_fraction'])}% | {_pct(c['class'])}% "
                    f"| {_pct(c['colour_only'])}% | {_pct(c['shape_only'])}% | {_pct(c['neither'])}% |"
                    for n, c in confused.items()]
    png = results / "yardstick" / "learning_curve.png"
    try:
        _draw_curves(runs, png)
        out += ["", f"![oracle learning curves]({png.relative_to(results.parent.parent).as_posix()})"]
    except (ImportError, ValueError) as e:
        out += ["", f"(learning-curve plot not drawn: {e})"]
    step = _step_seconds(results)
    out += ["", "Wall times are of runs sharing the 2 cores with other jobs (one torch thread each), so they are "
            "upper bounds; the iteration count is what carries over."
            + (f" Alone, one training step takes {step[0]:.2f} s on one thread (bench/results/{step[1]}; "
               f"data made in the training process included), so {first['iters']} iterations take "
               f"{first['iters'] * step[0] / 60:.0f} min plus the evaluations: the 45-minute budget holds about "
               f"{int(45 * 60 / step[0])} iterations." if step else ""), ""]
    return out


def _step_seconds(results: Path) -> tuple[float, str] | None:
    """Seconds per training step of the oracle alone on one thread and the file that says so:
    ``step_speed_oracle.json`` (bench/step_speed.py with the oracle's overrides), else the voc-like
    Mask^X config's ``step_speed.json``."""
    for name in ("step_speed_oracle.json", "step_speed.json"):
        try:
            return float(json.loads((results / name).read_text(encoding="utf-8"))["sides"]["new"]["step_s"]), name
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def _draw_curves(runs: dict[str, dict], png: Path) -> None:
    from plot import line_chart

    series = {}
    for r in runs.values():
        for key, label in (("box_AP", "box AP"), ("mask_AP", "mask AP")):
            series[f"{r['init']} s{r['seed']} {label}"] = [(p["step"], 100 * p[key]) for p in r["curve"]]
    line_chart(series, png, title="Oracle Mask R-CNN on voc-like: AP vs iteration", xlabel="iteration",
               ylabel="AP (200 held-out images)",
               hlines={f"target {TARGET_BOX_AP:.0f} box AP": TARGET_BOX_AP,
                       f"target {TARGET_MASK_AP:.0f} mask AP": TARGET_MASK_AP})


def claims_section(results: Path) -> list[str]:
    from claims import ALP_ROWS, MASKX_ROWS, MPNET_ROWS, TPAD_ROWS, TPAD_SUFFIX

    out = ["## Paper claims, seed-repeated from the pretrained trunk (issue 12)", "",
           "`python bench/claims.py maskx --commit` and `python bench/claims.py alp --commit` — every row over "
           ">= 3 training seeds on 200 held-out images, mean +- std (sample std); a difference is called only "
           "beyond 2 std (the larger row's). Runs are recorded one by one in bench/results/claims/<table>/ as "
           "they finish, so this table fills in over several sessions.", ""]
    planned = {"maskx": [r for r, _, _ in MASKX_ROWS] + ["oracle"], "alp": ALP_ROWS + [f"{r}_mpnet" for r in MPNET_ROWS]
               + [r + TPAD_SUFFIX for r in TPAD_ROWS]}
    metrics = {"maskx": ["mask_AP_B", "mask_AP_A", "box_AP_B", "given_box_mask_AP_B"],
               "alp": ["mask_AP50_novel", "mask_AP50_base", "box_AP50_novel"]}
    for table, rows in planned.items():
        recorded = read_results(results / "claims" / table) if (results / "claims" / table).is_dir() else {}
        out += [f"**{table}** ({len(recorded)} runs recorded)", "",
                "| row | seeds | " + " | ".join(metrics[table]) + " |", "|---|---|" + "---:|" * len(metrics[table])]
        aggs = {m: aggregate(recorded, m) for m in metrics[table]}
        for row in rows:
            seeds = aggs[metrics[table][0]].get(row, {}).get("seeds", [])
            cells = [f"{100 * a['mean']:.1f} ± {100 * a['std']:.1f}" if (a := aggs[m].get(row)) else "–"
                     for m in metrics[table]]
            out.append(f"| {row} | {', '.join(map(str, seeds)) or 'none yet'} | " + " | ".join(cells) + " |")
        out.append("")
    out += ["| claim | metric | better row | baseline row | verdict |", "|---|---|---|---|---|"]
    for v in verdicts(results / "claims"):
        b, a = v["better_stats"], v["baseline_stats"]
        out.append(f"| {v['statement']} | {v['metric']} | {v['better']}: {_stats(b)} | {v['baseline']}: {_stats(a)} "
                   f"| **{v['verdict']}** |")
    diagnostics = sum(c[4].startswith("diagnostic") for c in CLAIMS.values())
    return out + ["", f"{len(CLAIMS) - diagnostics} paper claims and {diagnostics} diagnostics (a diagnostic isolates "
                  "one part of a claim); 'incomplete' = fewer than 3 seeds recorded on a row.", ""] + causes(results)


def _errors_by_row(results: Path) -> dict[str, list[dict]]:
    """bench/alp_errors.py's runs (bench/results/alp_errors.json) grouped by row id (run folder ``alp_<row>_s<seed>``)."""
    f = results / "alp_errors.json"
    out: dict[str, list[dict]] = {}
    for r in json.loads(f.read_text())["runs"] if f.is_file() else []:
        row = Path(r["run"]).name.removeprefix("alp_").rpartition("_s")[0]
        out.setdefault(row, []).append(r)
    return out


def _mean_of(runs: list[dict], *keys: str) -> float:
    values = []
    for r in runs:
        for k in keys:
            r = r[k]
        values.append(float(r))
    return sum(values) / len(values)


def causes(results: Path) -> list[str]:
    """For every claim that has all its seeds and is not reproduced, what the recorded diagnostics measure on its two
    rows: Mask^X -- the same rows on the true boxes of B (the mask head alone) and their box AP_B (detection); ALP --
    bench/alp_errors.py's recall (any label / own class) and naming of the novel objects, averaged over its runs.
    The sentence that reads them is chosen from the numbers, never written per claim."""
    lines = []
    errors = _errors_by_row(results)
    maskx = results / "claims" / "maskx"
    recorded = read_results(maskx) if maskx.is_dir() else {}
    given, box = aggregate(recorded, "given_box_mask_AP_B"), aggregate(recorded, "box_AP_B")
    for v in verdicts(results / "claims"):
        if v["verdict"] not in ("within noise", "not reproduced") or v["statement"].startswith("diagnostic"):
            continue
        better, baseline = v["better"], v["baseline"]
        head = f"- \"{v['statement']}\" ({v['verdict']}):"
        if v["table"] == "maskx":
            g = verdict(given.get(better), given.get(baseline))
            reading = {"reproduced": "the difference is there in the mask head; end to end it applies only to the "
                                     "objects the shared detector finds and names, and shrinks to within noise",
                       "within noise": "the mask heads do not differ on the true boxes either"}.get(g, "")
            lines.append(f"{head} on the true boxes of B, the mask head alone: {better} {_stats(given.get(better))} vs "
                         f"{baseline} {_stats(given.get(baseline))} ({g}); box AP_B {_stats(box.get(better))} vs "
                         f"{_stats(box.get(baseline))}" + (f": {reading}." if reading else "."))
        elif better in errors and baseline in errors:
            b, a = errors[better], errors[baseline]
            anyb, anya = _mean_of(b, "recall", "novel", "any_label"), _mean_of(a, "recall", "novel", "any_label")
            ownb, owna = _mean_of(b, "recall", "novel", "own_class"), _mean_of(a, "recall", "novel", "own_class")
            baseb, basea = _mean_of(b, "novel_named", "base"), _mean_of(a, "novel_named", "base")
            # a detection of any label on the object is "finding it"; of its own class, "naming it" as well
            reading = ("it finds the novel objects about as often (within 5 points) and names fewer of them right"
                       if abs(anyb - anya) <= 0.05 and ownb < owna - 0.05 else
                       "it finds fewer of the novel objects" if anyb < anya - 0.05 else "")
            lines.append(f"{head} novel objects with a detection of any label {_pct(anyb)}% vs {_pct(anya)}%, of "
                         f"their own class {_pct(ownb)}% vs {_pct(owna)}%, named with a base class {_pct(baseb)}% vs "
                         f"{_pct(basea)}% ({better} over {len(b)} run(s), {baseline} over {len(a)}; "
                         "bench/alp_errors.py)" + (f": {reading}." if reading else "."))
        else:
            lines.append(f"{head} no diagnostic recorded for its rows yet (bench/alp_errors.py on their runs).")
    if not lines:
        return []
    return ["Where a claim with all its seeds is not reproduced, the recorded diagnostics on its two rows (better row "
            "first):", "", *lines, ""]


def alp_diagnosis_section(results: Path) -> list[str]:
    """Why the ALP rows miss: bench/alp_errors.py (the runs' detections, the ALPs' noise) and bench/alp_overlap.py."""
    errors, overlap = (json.loads(f.read_text()) if (f := results / n).is_file() else None
                       for n in ("alp_errors.json", "alp_overlap.json"))
    if not errors and not overlap:
        return []
    out = ["### Why the ALP rows miss", ""]
    if errors:
        out += [" then ".join(f"`{c}`" for c in errors["commands"]) + " — read off each finished run's saved "
                "validation predictions (200 held-out images; IoU >= 0.5 means a detection lies on an object). Recall: objects with a detection of any label "
                "/ of their class. Top 100 base-labelled: the 100 highest-scoring detections named with a base class, "
                "by what lies under them. Novel objects named: the label of the highest-scoring detection on each novel "
                "object.", "",
                "| run | base recall any / own | novel recall any / own | top 100 base-labelled: right / on novel / "
                "on other base / poor box / background | novel objects named: right / base class / other novel / none |",
                "|---|---|---|---|---|"]
        def pct(d: dict, *keys: str) -> str:
            return " / ".join(_pct(d.get(k, 0.0)) for k in keys)

        for r in errors["runs"]:
            rc, b, n = r["recall"], r["base_labelled"].get("100", {}), r["novel_named"]
            out.append(f"| {Path(r['run']).name.removeprefix('alp_')} | {pct(rc['base'], 'any_label', 'own_class')} | "
                       f"{pct(rc['novel'], 'any_label', 'own_class')} | "
                       f"{pct(b, 'right', 'novel_object', 'other_base_object', 'poor_box', 'background')} | "
                       f"{pct(n, 'right', 'base', 'novel', 'none')} |")
        seen = {}
        for r in errors["runs"]:
            if r.get("alps"):
                seen.setdefault(r["alps"]["path"], r["alps"])
        for path, q in seen.items():
            out += ["", f"The curated ALPs `{Path(path).parent.name}` of the training world ({q['alps']} ALPs; each "
                    f"against the true object its box overlaps most): mean best IoU {q['mean_best_iou']:.2f}, box "
                    f"centre inside that object {_pct(q['centre_inside_best_match_fraction'])}%, phrase = its class name "
                    f"{_pct(q['phrase_is_class_name_fraction'])}%, class name nearest to the phrase (MiniLM) right "
                    f"{_pct(q['nearest_class_name_right_fraction'])}% of the {q['localized_alps']} ALPs at IoU >= 0.5; "
                    f"{_pct(q['novel_covered_iou50_fraction'])}% of the novel instances have an ALP at IoU >= 0.5."]
    if overlap:
        out += ["", f"Same-image overlap (`python bench/alp_overlap.py {overlap['config']} "
                f"{' '.join(overlap['overrides'])}`): of the FCOS locations the exact (base) boxes get alone, ALPs "
                f"take {_pct(overlap['raw']['taken_by_alps'])}% with the curated boxes, "
                f"{_pct(overlap['quantized']['taken_by_alps'])}% after the training's box quantization."]
    return out + [""]


#: the coco-mini study's inits (bench/coco_mini_pretrain.py INITS) and what each row starts from
COCO_MINI_INITS = {"scratch": "random weights", "mim": "SimMIM on the training photos (images only)",
                   "dense": "the synthetic pretraining world's dense supervised trunk (r18w16_gn_dense)"}


def coco_mini_pretrain_section(results: Path, folder: Path | None = None) -> list[str]:
    """Box->mask on real photos from each trunk (bench/coco_mini_pretrain.py; its results in ``folder``, by default
    ``results/coco_mini_pretrain``): mean +- std per init over the recorded seeds, and whether each pretrained trunk
    beats random weights beyond 2 std (claims.verdict)."""
    folder = folder or results / "coco_mini_pretrain"
    recorded = read_results(folder) if folder.is_dir() else {}
    pre = recorded.pop("pretrain_mim", None)
    first = next(iter(recorded.values()), {"split_seed": 0, "heldout_images": 20, "iters": 200, "batch_size": 4})
    held = first["heldout_images"]
    out = ["## Pretraining on real photos: box->mask on coco-mini (issue 12)", "",
           f"`python bench/coco_mini_pretrain.py --commit` — the 80 coco-mini photos split once (split seed "
           f"{first['split_seed']}): {held} held out, {80 - held} for training. Box->mask "
           f"(configs/box_to_mask_synth.yaml: ResNet-18-FPN width 16, GN; {first['iters']} iterations, batch "
           f"{first['batch_size']}) trained on the {80 - held} from each trunk below, the same seeds for all; scored by "
           f"COCO mask AP of its masks for the true boxes of the {held} held-out photos, next to the filled box.", ""]
    if pre:
        m = pre["manifest"]
        losses = ", ".join(f"{k} {v:.3f}" for k, v in m.get("final_losses", {}).items() if k != "step")
        out += [f"MIM trunk (`pretrain_mim.safetensors`, sha256 {m['sha256'][:12]}): {m.get('steps')} steps on "
                f"{'the training photos' if pre.get('pretrain_images') == 'train' else 'all 80 photos'} (images "
                f"only), final {losses}, {m.get('train_loop_s', m.get('wall_s', 0)) / 60:.0f} min as run; "
                f"`{m.get('command')}`.", ""]
    rows = {k: {"row_id": r["init"], "seed": r["seed"], **r.get("eval", {})} for k, r in recorded.items()}
    metrics = ("mask_AP", "mask_AP50", "filled_box_AP")
    aggs = {m: aggregate(rows, m) for m in metrics}
    out += ["| init | starts from | seeds | mask AP | mask AP50 | filled-box AP |", "|---|---|---|---:|---:|---:|"]
    for init, what in COCO_MINI_INITS.items():
        a = aggs["mask_AP"].get(init)
        cells = [f"{100 * x['mean']:.1f} ± {100 * x['std']:.1f}" if (x := aggs[m].get(init)) else "–" for m in metrics]
        out.append(f"| {init} | {what} | {', '.join(map(str, a['seeds'])) if a else 'none yet'} | " + " | ".join(cells)
                   + " |")
    out.append("")
    words = {"reproduced": "better beyond 2 std", "not reproduced": "worse beyond 2 std"}
    for init in ("mim", "dense"):
        b, a = aggs["mask_AP"].get(init), aggs["mask_AP"].get("scratch")
        out.append(f"- {init} vs scratch (mask AP): {_stats(b)} vs {_stats(a)} -> **{words.get(v := verdict(b, a), v)}**")
    for init in COCO_MINI_INITS:  # the filled box is the same for every run: the learned masks against it
        b, a = aggs["mask_AP"].get(init), aggs["filled_box_AP"].get(init)
        out.append(f"- {init}'s masks vs the filled box (mask AP): {_stats(b)} vs {_stats(a)} -> "
                   f"**{words.get(v := verdict(b, a), v)}**")
    return out + ["", "'incomplete' = fewer than 3 seeds recorded on a row; a difference is called only beyond 2 std.", ""]


def _stats(s: dict | None) -> str:
    return f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f} (n={s['n']})" if s else "–"


def sections(results: Path) -> list[str]:
    return (pretrained_section(results) + yardstick_section(results) + claims_section(results)
            + alp_diagnosis_section(results) + coco_mini_pretrain_section(results))
