"""Recipe equivalence: do two versions of omniseg train the same, step for step?

Runs short fixed-seed trainings of each case (bench/equivalence/*.yaml) under two trees of this
repository and compares, in ``train.output_dir``: every loss row of ``metrics.jsonl`` (all loss
terms and lr, every step: ``train.log_period=1``; stage-wise Mask^X R-CNN also
``stage1/metrics.jsonl``), its eval rows (``eval/*``), and ``val_predictions.json`` leaf by leaf
(the detection recipes' AP is 0 after a few dozen steps; their predictions are not). Timing keys
(s_per_iter, eta_s) are ignored. For refactors that must not change behaviour (omniseg/recipes/*).

    .venv/bin/python bench/recipe_equivalence.py --old 2d16358 --new WORKTREE
    .venv/bin/python bench/recipe_equivalence.py --old 2d16358 --new 2d16358 --cases fcos_mo --iters 20
    .venv/bin/python bench/recipe_equivalence.py --old HEAD --new HEAD --self-test   # must see a FAIL

``--old`` / ``--new``: a git revision (``git archive REV | tar -x`` into the run folder) or
``WORKTREE`` (this checkout, in place). Both sides run this python as ``python -m omniseg.cli
train CASE.yaml ...`` with ``PYTHONPATH=<tree>``; the ``omniseg`` each side imports is printed and
checked to lie in its tree. A case's two sides run in parallel (``--jobs 2``), one torch thread
each (OMP_NUM_THREADS=1), PYTHONHASHSEED=0.

Values must be equal exactly unless ``--rtol`` > 0 (|a - b| <= rtol * max(|a|, |b|)); NaN equals
NaN only. A case FAILs on any difference and when a log has no loss rows, no eval metric was
compared or the predictions are empty (a check that cannot fail); it is an ERROR if a side does
not run (its last 20 stderr lines are shown). Exit status 1 unless every case passes;
``--self-test`` runs one case with ``train.seed=1`` on the new side and exits 0 only if it FAILs.
``--out`` writes a JSON summary atomically; ``--keep DIR`` runs in DIR and keeps it (default: a
temp folder, removed at exit).

Config keys may differ between the sides: each entry of CASES has per-side override lists
(old_overrides / new_overrides) and a metric-key map (old-side key -> new-side key).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trees import prepare_tree, side_env  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CASE_DIR = ROOT / "bench" / "equivalence"
TIMING_KEYS = {"s_per_iter", "eta_s"}
SIDES = ("old", "new")


@dataclass
class Case:
    yaml: str  # under bench/equivalence/
    overrides: tuple[str, ...] = ()  # both sides
    old_overrides: tuple[str, ...] = ()  # only the old side (keys that the refactor renamed / dropped)
    new_overrides: tuple[str, ...] = ()  # only the new side
    metric_map: dict[str, str] = field(default_factory=dict)  # old-side metric key -> new-side key
    logs: tuple[str, ...] = ("metrics.jsonl",)  # metric logs under train.output_dir, all compared
    outputs: tuple[str, ...] = ("val_predictions.json",)  # JSON files under train.output_dir, compared leaf by leaf


CASES: dict[str, Case] = {
    "box_to_mask": Case("box_to_mask.yaml", outputs=()),  # writes no predictions; its mask AP is not 0
    "fcos_mo": Case("fcos_mo.yaml"),
    "mask_rcnn_star": Case("mask_rcnn_star.yaml"),
    "mask_rcnn_star_image_labels": Case("mask_rcnn_star.yaml", ("alp.as_image_labels=true",)),
    "maskx_end_to_end": Case("maskx_rcnn.yaml"),
    "maskx_stage_wise": Case("maskx_rcnn.yaml", ("model.mode=stage_wise", "model.stage1_iters=20"),
                             logs=("stage1/metrics.jsonl", "metrics.jsonl")),
}

PROBE = "import omniseg, torch; print(omniseg.__file__); print(torch.__version__); print(torch.get_num_threads())"


def probe(side: str, tree: dict, cwd: Path) -> str:
    """Check (and print) that ``side`` imports omniseg from its own tree; returns torch's version."""
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=cwd, env=side_env(tree["tree"]), check=True,
                         capture_output=True, text=True).stdout.split()
    path, torch_version, threads = out
    print(f"[{side}] {tree['spec']} = {tree['commit'][:10]}{' (dirty)' if tree['dirty'] else ''}: "
          f"omniseg from {path} (torch {torch_version}, {threads} thread)", flush=True)
    if not Path(path).resolve().is_relative_to(Path(tree["tree"]).resolve()):
        raise SystemExit(f"[{side}] imports omniseg from {path}, not from its tree {tree['tree']}")
    return torch_version


def run_side(cmd: list[str], tree: str, folder: Path) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(folder / "out", ignore_errors=True)  # a kept folder's previous run (train refuses to mix runs)
    t0 = time.perf_counter()
    with open(folder / "stdout.log", "w") as out, open(folder / "stderr.log", "w") as err:
        rc = subprocess.run(cmd, cwd=folder, env=side_env(tree), stdout=out, stderr=err).returncode
    return {"rc": rc, "start": t0, "end": time.perf_counter(), "cmd": cmd}


# ------------------------------------------------------------------------------ comparison


def as_number(v):
    if isinstance(v, str) and v.lower() in ("nan", "inf", "-inf"):  # how the engine logs non-finite floats
        return float(v)
    return v


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def abs_diff(a, b) -> float:
    """0 where equal (NaN == NaN), inf where one side is missing, NaN, infinite or not a number."""
    a, b = as_number(a), as_number(b)
    if not (is_number(a) and is_number(b)):
        return 0.0 if type(a) is type(b) and a == b else math.inf
    if math.isnan(a) or math.isnan(b):
        return 0.0 if math.isnan(a) and math.isnan(b) else math.inf
    return 0.0 if a == b else abs(a - b)


def same(a, b, rtol: float) -> bool:
    d = abs_diff(a, b)
    return d == 0.0 or (math.isfinite(d) and d <= rtol * max(abs(as_number(a)), abs(as_number(b))))


def read_log(path: Path, key_map: dict[str, str]) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{key_map.get(k, k): v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def flatten(v, prefix: str = "") -> dict:
    """A JSON value as {"0/bbox/2": leaf, ...}."""
    if not isinstance(v, (dict, list)):
        return {prefix: v}
    items = v.items() if isinstance(v, dict) else enumerate(v)
    return {k: x for key, item in items for k, x in flatten(item, f"{prefix}/{key}" if prefix else str(key)).items()}


def compare_rows(old: list[dict], new: list[dict], rtol: float, where: str,
                 show_rows: bool = True) -> tuple[int, int, float, dict | None]:
    """(rows, values compared (not counting "step"), max |diff|, first difference or None)."""
    if len(old) != len(new):
        return 0, 0, math.inf, {"where": where, "problem": f"{len(old)} old rows vs {len(new)} new rows"}
    n_values, worst, first = 0, 0.0, None
    for i, (a, b) in enumerate(zip(old, new)):
        for k in sorted(set(a) | set(b)):
            va, vb = a.get(k, "<missing>"), b.get(k, "<missing>")
            n_values += k != "step"
            worst = max(worst, abs_diff(va, vb))
            if first is None and not same(va, vb, rtol):
                first = {"where": where, "row": i, "step": a.get("step"), "key": k, "old": va, "new": vb,
                         **({"old_row": a, "new_row": b} if show_rows else {})}
    return len(old), n_values, worst, first


def compare_case(case: Case, out: dict[str, Path], rtol: float) -> dict:
    res = {"loss_rows": 0, "loss_max_abs_diff": 0.0, "eval_keys": 0, "eval_max_abs_diff": 0.0,
           "output_values": 0, "output_max_abs_diff": 0.0, "problems": []}
    for log in case.logs:
        paths = {s: out[s] / log for s in SIDES}
        if missing := [s for s in SIDES if not paths[s].exists()]:
            res["problems"].append({"where": log, "problem": f"no {log} on side(s) {missing}"})
            continue
        old, new = read_log(paths["old"], case.metric_map), read_log(paths["new"], {})
        n, _, d, first = compare_rows([r for r in old if "loss" in r], [r for r in new if "loss" in r], rtol,
                                      f"{log} loss rows")
        res["loss_rows"] += n
        res["loss_max_abs_diff"] = max(res["loss_max_abs_diff"], d)
        if n == 0 and first is None:
            first = {"where": log, "problem": "no loss rows compared"}
        evals = [[{k: v for k, v in r.items() if k.startswith("eval/") or k == "step"} for r in rows
                  if any(k.startswith("eval/") for k in r)] for rows in (old, new)]
        _, n_eval, d_eval, first_eval = compare_rows(*evals, rtol, f"{log} eval rows")
        res["eval_keys"] += n_eval
        res["eval_max_abs_diff"] = max(res["eval_max_abs_diff"], d_eval)
        res["problems"] += [p for p in (first, first_eval) if p is not None]
    for name in case.outputs:
        if missing := [s for s in SIDES if not (out[s] / name).exists()]:
            res["problems"].append({"where": name, "problem": f"no {name} on side(s) {missing}"})
            continue
        flat = [flatten(json.loads((out[s] / name).read_text())) for s in SIDES]
        _, n, d, first = compare_rows(flat[:1], flat[1:], rtol, name, show_rows=False)
        res["output_values"] += n
        res["output_max_abs_diff"] = max(res["output_max_abs_diff"], d)
        if n == 0 and first is None:
            first = {"where": name, "problem": "empty on both sides: nothing compared"}
        res["problems"] += [first] if first is not None else []
    if res["eval_keys"] == 0 and not res["problems"]:
        res["problems"].append({"where": case.logs[-1], "problem": "no eval metrics compared"})
    res["status"] = "FAIL" if res["problems"] else "PASS"
    return res


# ------------------------------------------------------------------------------ driver


def json_safe(v):
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, dict):
        return {k: json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    return v


def write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(json_safe(data), indent=1) + "\n")
    os.replace(tmp, path)


def run_case(name: str, case: Case, trees: dict[str, dict], run_dir: Path, args) -> dict:
    side_over = {"old": case.old_overrides, "new": case.new_overrides + (("train.seed=1",) if args.self_test else ())}
    folders = {s: run_dir / name / s for s in SIDES}
    cmds = {s: [sys.executable, "-m", "omniseg.cli", "train", str(CASE_DIR / case.yaml), *case.overrides,
                *side_over[s], f"train.max_iter={args.iters}", f"train.output_dir={folders[s] / 'out'}"]
            for s in SIDES}
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {s: pool.submit(run_side, cmds[s], trees[s]["tree"], folders[s]) for s in SIDES}
        runs = {s: f.result() for s, f in futures.items()}
    wall = {s: round(r["end"] - r["start"], 1) for s, r in runs.items()}
    wall["case"] = round(max(r["end"] for r in runs.values()) - min(r["start"] for r in runs.values()), 1)
    res = {"case": name, "wall_s": wall, "commands": {s: " ".join(c) for s, c in cmds.items()}}
    failed = [s for s in SIDES if runs[s]["rc"] != 0]
    for s in failed:
        tail = (folders[s] / "stderr.log").read_text().splitlines()[-20:]
        print(f"[{name}] {s} side exited {runs[s]['rc']}; last stderr lines:\n  " + "\n  ".join(tail), flush=True)
    if failed:
        return {**res, "status": "ERROR", "problems": [{"problem": f"side(s) {failed} failed to run"}]}
    return {**res, **compare_case(case, {s: folders[s] / "out" for s in SIDES}, args.rtol)}


def report(r: dict) -> None:
    line = f"{r['case']:<28} {r['status']:<5}"
    if r["status"] != "ERROR":
        line += (f" loss rows {r['loss_rows']} (max |diff| {r['loss_max_abs_diff']:.3g}),"
                 f" eval keys {r['eval_keys']} (max |diff| {r['eval_max_abs_diff']:.3g}),"
                 f" output values {r['output_values']} (max |diff| {r['output_max_abs_diff']:.3g}),")
    w = r["wall_s"]
    print(f"{line} wall {w['case']} s (old {w['old']} s, new {w['new']} s)", flush=True)
    for p in r["problems"][:1]:
        print("  first problem: " + json.dumps(json_safe(p)), flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--old", required=True, help="git revision, or WORKTREE")
    p.add_argument("--new", required=True, help="git revision, or WORKTREE")
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from: {', '.join(CASES)}")
    p.add_argument("--iters", type=int, default=50, help="train.max_iter of every case")
    p.add_argument("--jobs", type=int, default=2, choices=(1, 2), help="processes at once (a case's two sides)")
    p.add_argument("--rtol", type=float, default=0.0, help="relative tolerance (default: exact equality)")
    p.add_argument("--out", type=Path, help="write the JSON summary here (atomically)")
    p.add_argument("--keep", type=Path, help="run in this folder and keep it (default: temp folder, removed)")
    p.add_argument("--self-test", action="store_true", help="first case only, train.seed=1 on the new side: "
                                                              "exit 0 only if it FAILs")
    args = p.parse_args()
    names = [c for c in args.cases.split(",") if c]
    if unknown := sorted(set(names) - set(CASES)):
        p.error(f"unknown case(s) {unknown}; choose from {list(CASES)}")
    names = names[:1] if args.self_test else names
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        if any(args.keep.iterdir()):
            p.error(f"--keep {args.keep}: not empty")
    run_dir = args.keep.resolve() if args.keep else Path(tempfile.mkdtemp(prefix="recipe_equivalence_"))
    print(f"run folder: {run_dir}{'' if args.keep else ' (removed at exit)'}", flush=True)
    try:
        trees = {s: prepare_tree(spec, run_dir / "trees" / s) for s, spec in zip(SIDES, (args.old, args.new))}
        torch_version = {s: probe(s, trees[s], run_dir) for s in SIDES}["new"]
        results = []
        for name in names:
            results.append(run_case(name, CASES[name], trees, run_dir, args))
            report(results[-1])
    finally:
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
    passed = all(r["status"] == "PASS" for r in results)
    ok = results[0]["status"] == "FAIL" if args.self_test else passed
    summary = {"machine": platform.platform(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
               "torch": torch_version, "iters": args.iters, "rtol": args.rtol, "self_test": args.self_test,
               **{s: {k: v for k, v in trees[s].items() if k != "tree"} for s in SIDES},
               "passed": passed, "cases": results}
    if args.out:
        write_json_atomic(args.out, summary)
        print(f"wrote {args.out}")
    verdict = (("OK: the seed change FAILed" if ok else "BROKEN: a seed change was not caught") if args.self_test
               else "PASS" if ok else "FAIL")
    print(f"{'self-test' if args.self_test else 'equivalence'}: {verdict} "
          f"({sum(r['status'] == 'PASS' for r in results)}/{len(results)} cases passed)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
