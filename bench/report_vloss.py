"""The BENCHMARKS.md section of issue 15 (VLOSS), rendered from the per-run results that
``bench/vloss_experiments.py`` records in ``bench/results/vloss/<table>/``: per table mean ± sample std over the
recorded seeds of PQ / PQ_th / PQ_st / mask AP and the open-world keys, a verdict per claim with bench/claims.py's
rule (beyond 2 std of the noisier row, >= 3 seeds), the issue's goal, and the runs still missing. A row shared by
two tables (the full model = Table 4's STT row; FPN-style = Table 6's CLIP row) is one run, read from where it
is recorded. The single-seed Table 6 takes the CLIP row's seed std (Table 5, >= 3 seeds) as its noise."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from claims import aggregate, verdict  # noqa: E402
from report_mal import _ms, recorded_runs  # noqa: E402

GOAL_MARGIN = 0.03  # issue 15: STT ahead of mixing by >= 3 PQ with non-overlapping ± 2 std
#: (column, metric key of the recipe's evaluation); "novel" = the detection-only (open-world) thing classes
METRICS = [("PQ", "PQ"), ("PQ_th", "PQ_th"), ("PQ_st", "PQ_st"), ("mask AP", "mask_AP"),
           ("PQ_th novel", "PQ_th/novel"), ("mask AP novel", "mask_AP/novel")]
#: the paper's PQ^all on ADE20K (Tables 3-6), next to ours for orientation only (other data, other scale)
PAPER_PQ = {"baseline": 11.003, "detection": 9.816, "pos_cls": 10.225, "stt": 13.761, "full": 15.371,
            "mix": 10.225, "pretrain_finetune": 13.914, "fpn": 11.169, "fpn_style": 12.680, "filip": 10.669}
TITLES = {"table3": "Table 3: factor by factor", "table4": "Table 4: mix vs pretrain-finetune vs STT",
          "table5": "Table 5: FPN vs FPN-style encoder (panoptic + image-text data, as the paper)",
          "table6": "Table 6: CLIP vs FILIP L_con (panoptic + image-text data)",
          "pseudo": "Detection boxes supervised by MAL pseudo masks vs the box-projection loss (one seed; no paper "
                    "claim)"}
#: a shared run's label in the table that borrows it
BORROWED = {("table4", "full"): "STT (= table3's full-model run)",
            ("table6", "fpn_style"): "CLIP-style L_con (= table5's FPN-style run)",
            ("pseudo", "full"): "box-projection loss (= table3's full-model run)"}
#: (statement, metric, better row, baseline row) judged with the 2-std rule
CLAIMS = [("STT > mix (Table 4; paper +4.2 PQ)", "PQ", "full", "mix"),
          ("STT > mix without L_con (Table 3 rows + STT vs + pos L_cls)", "PQ", "stt", "pos_cls"),
          ("STT > pretrain-finetune (Table 4; paper +1.5 PQ)", "PQ", "full", "pretrain_finetune"),
          ("positive-only L_cls > L_cls on every query (Table 3)", "PQ", "pos_cls", "detection"),
          ("FPN-style > FPN encoder (Table 5; paper +1.5 PQ)", "PQ", "fpn_style", "fpn"),
          ("CLIP > FILIP L_con (Table 6; paper +2.0 PQ)", "PQ", "fpn_style", "filip"),
          ("open world: VLOSS > panoptic-only baseline on PQ_th of detection-only classes", "PQ_th/novel", "full",
           "baseline"),
          ("open world: VLOSS > panoptic-only baseline on mask AP of detection-only classes", "mask_AP/novel", "full",
           "baseline")]


def all_runs(results: Path) -> dict[str, dict]:
    """Every recorded VLOSS run (run name -> record) over the tables' folders."""
    import vloss_experiments as vx

    return {n: r for t in vx.TABLES for n, r in recorded_runs(results / "vloss" / t).items()}


def needed(table: str) -> list[str]:
    """The run names ``python bench/vloss_experiments.py TABLE`` makes with its defaults (seeds 0 1 2)."""
    import vloss_experiments as vx

    return [j["name"] for j in vx.plan(vx.parse_args([table])) if j["table"] is not None]  # (not helper jobs)


def table_seed(runs: dict[str, dict], row: str) -> int:
    """The seed of a single-seed table: its recorded ``row`` run's; else the driver's default, 0."""
    return next((int(r["seed"]) for r in runs.values() if r["row_id"] == row), 0)


def goal_verdict(better: dict | None, base: dict | None, margin: float = GOAL_MARGIN) -> str:
    """The issue's goal: better ahead by >= ``margin`` with the ± 2 std intervals apart; 'incomplete' below 3
    seeds on either row."""
    if not better or not base or min(better["n"], base["n"]) < 3:
        return "incomplete"
    gap = better["mean"] - base["mean"]
    if gap < margin:
        return f"NOT met (gap {100 * gap:+.1f} PQ)"
    if better["mean"] - 2 * better["std"] <= base["mean"] + 2 * base["std"]:
        return f"NOT met (gap {100 * gap:+.1f} PQ but the ± 2 std intervals overlap)"
    return "met"


def table_section(table: str, runs: dict[str, dict]) -> list[str]:
    import vloss_experiments as vx

    shown = runs
    if table in vx.SINGLE_SEED:
        seed = table_seed(runs, vx.TABLE_ROWS[table][0])
        shown = {n: r for n, r in runs.items() if int(r["seed"]) == seed}
    out = [f"### {TITLES[table]} (`python bench/vloss_experiments.py {table} --commit`)", "",
           "| row | seeds | " + " | ".join(c for c, _ in METRICS) + " | paper PQ (ADE20K) |",
           "|---|---|" + "---:|" * (len(METRICS) + 1)]
    for row in vx.TABLE_ROWS[table]:
        stats = [aggregate(shown, key).get(row) for _, key in METRICS]
        seeds = ", ".join(map(str, (stats[0] or {}).get("seeds", []))) or "none yet"
        label = BORROWED.get((table, row), vx.ROWS[row][0])
        paper = f"{PAPER_PQ[row]:.1f}" if row in PAPER_PQ else "–"
        out.append(f"| {label} | {seeds} | " + " | ".join(_ms(s, True) for s in stats) + f" | {paper} |")
    out += [f"\nPseudo masks of `{r['run']}` (labeler {p.get('labeler')}): mIoU with the true masks "
            f"{100 * p['train_boxes_mIoU']:.1f}% over {p.get('train_boxes_scored')} boxes."
            for r in shown.values() if (p := r.get("pseudo_masks")) and p.get("train_boxes_mIoU") is not None]
    left = [n for n in needed(table) if n not in runs]
    return out + ["", f"Missing ({len(left)}): {', '.join(left)}; make them with "
                  f"`python bench/vloss_experiments.py {table} --commit`." if left else "All planned runs recorded.", ""]


def claims_section(runs: dict[str, dict]) -> list[str]:
    out = ["### Claims", "", "| claim | better | baseline | verdict |", "|---|---:|---:|---|"]
    for text, metric, better, base in CLAIMS:
        agg = aggregate(runs, metric)
        out.append(f"| {text} | {_ms(agg.get(better), True)} | {_ms(agg.get(base), True)} "
                   f"| **{verdict(agg.get(better), agg.get(base))}** |")
    pq = aggregate(runs, "PQ")
    out.append(f"| goal: STT ahead of mix by >= {100 * GOAL_MARGIN:.0f} PQ, ± 2 std intervals apart "
               f"| {_ms(pq.get('full'), True)} | {_ms(pq.get('mix'), True)} "
               f"| **{goal_verdict(pq.get('full'), pq.get('mix'))}** |")
    return out + [""]


def sections(results: Path) -> list[str]:
    """The whole VLOSS section from ``results`` (bench/results)."""
    import vloss_experiments as vx

    runs = all_runs(results)
    out = ["## VLOSS: panoptic masks, detection boxes and captions in one model (issue 15)", "",
           "configs/vloss_synth.yaml (ResNet-18 w16 trunk from the committed dense-pretrained weights, FPN-style "
           "encoder, 3 masked-attention decoder layers, 32 queries, MiniLM text), 2000 iterations on the synthetic "
           "world: panoptic source = 400 images (stuff + the 20 voc-like base thing classes), detection source = "
           "400 images with boxes of all 80 thing classes (box-projection loss, no pseudo masks), image-text "
           "source = 400 captioned images; scored on 50 held-out images with every class name. \"novel\" = the "
           "60 thing classes seen only in the detection source (open world). Every run is recorded in "
           "bench/results/vloss/<table>/ as it finishes (command and machine in each file); rows are mean ± "
           "sample std over seeds, in %.", ""]
    for table in vx.TABLES:
        out += table_section(table, runs)
    return out + claims_section(runs)
