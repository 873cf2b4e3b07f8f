"""Shared by the experiment drivers (bench/maskx_experiments.py, bench/alp_experiments.py,
bench/yardstick.py, bench/mal_experiments.py, bench/openseg_experiments.py): which runs have finished, running the missing ones a few at a time (one torch
thread each), and recording each finished run's result in bench/results as it lands (optionally
committed), so a long table can be completed over several sessions on different machines."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def proc_field(path: str, key: str) -> str | None:
    """The value of the first ``key: value`` line of a /proc file (e.g. /proc/cpuinfo's "model name"), None if
    there is none (not Linux)."""
    try:
        line = next(ln for ln in Path(path).read_text().splitlines() if ln.startswith(key))
    except (OSError, StopIteration):
        return None
    return line.split(":", 1)[1].strip()


#: how a record names ``omniseg.engine.precision.cpu_bf16_native()``
BF16_WORDS = {True: "native bf16", False: "no native bf16", None: "bf16 unknown"}


def cpu() -> str:
    """The CPU as timings depend on it: model, the ISA torch dispatches to and whether bf16 is native
    ("AMD EPYC (AVX2, no native bf16)"): one model name covers CPUs with and without AVX512-BF16."""
    from omniseg.engine.precision import cpu_bf16_native, cpu_capability

    model = proc_field("/proc/cpuinfo", "model name") or platform.processor() or "?"
    return f"{model} ({cpu_capability() or '?'}, {BF16_WORDS[cpu_bf16_native()]})"


def machine(threads: int = 1) -> str:
    """The machine a run was measured on, for result files."""
    return f"{platform.machine()} {cpu()}, {os.cpu_count()} cores, {threads} torch thread{'s' * (threads > 1)} per run"


def refuse_slow_bf16(jobs: Sequence[dict]) -> None:
    """Stop (one line, exit 1) before training ``jobs`` under bf16 autocast (``"amp": "bf16"``) on a CPU without
    native bf16 kernels, where a step is many times slower than fp32 (:mod:`omniseg.engine.precision`): a table
    planned in hours would take days. Its fp32 rows (``--amp none``) or another machine are the way on."""
    import torch

    from omniseg.engine.precision import MEASURED_SLOWDOWN, cpu_bf16_native

    slow = [j["name"] for j in jobs if j.get("amp") == "bf16"]
    if slow and cpu_bf16_native() is False and not torch.cuda.is_available():  # train.device auto: CUDA if there
        raise SystemExit(f"{slow[0]} (and {len(slow) - 1} more): bf16 autocast, but this CPU, {cpu()}, has no native "
                         f"bf16 kernels ({MEASURED_SLOWDOWN}); run the table with --amp none, or on a "
                         "CPU with AVX-512 (--slow-bf16 trains them anyway)")


def record_result(path: Path, result: dict[str, Any], commit: bool = False, extra: Sequence[Path] = ()) -> None:
    """Write one finished run's result JSON (atomically); with ``commit``, ``git commit`` that file
    and the ``extra`` files (already written) alone (a failed commit is reported, not fatal: the
    files stay for the next commit)."""
    from omniseg.utils.atomic import atomic_write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, result, indent=1)
    if commit:
        # in the repository that holds the file (a driver run from a snapshot clone may record into main)
        repo = path.resolve().parent
        rel = os.path.relpath(path.resolve(), ROOT) if path.resolve().is_relative_to(ROOT) else str(path)
        files = [str(p.resolve()) for p in (path, *extra)]
        add = subprocess.run(["git", "add", "--", *files], cwd=repo, capture_output=True, text=True)
        done = add.returncode == 0 and subprocess.run(
            ["git", "commit", "-q", "-m", f"bench result: {rel}", "--", *files], cwd=repo, capture_output=True,
            text=True).returncode == 0
        print(f"[{'committed' if done else 'NOT committed'}] {rel}", flush=True)


def read_results(folder: Path) -> dict[str, dict]:
    """Every recorded run result in ``folder`` (file stem -> result)."""
    return {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted(folder.glob("*.json"))}


def finished_runs(jobs: list[dict], runs: Path) -> dict[str, dict]:
    """The jobs whose run folder holds final validation predictions and a wall time."""
    return {j["name"]: {**j, "wall_s": float((runs / j["name"] / "wall_s.txt").read_text())}
            for j in jobs if (runs / j["name"] / "wall_s.txt").exists()
            and (runs / j["name"] / "val_predictions.json").exists()}


def train_or_score(jobs: list[dict], runs: Path, command: Callable[[dict, Path], list[str]], parallel: int,
                   cwd: Path, score_only: bool) -> dict[str, dict]:
    """The finished jobs of a one-table driver (bench/alp_experiments.py, maskx_experiments.py): with ``score_only``
    those already finished in ``runs``, else after running the missing ones (:func:`run_jobs`, ``command(job,
    runs)``)."""
    if score_only:
        return finished_runs(jobs, runs)
    return run_jobs(jobs, runs, lambda j: command(j, runs), parallel, cwd)


def run_jobs(todo: list[dict], runs: Path, command: Callable[[dict], list[str]], parallel: int,
             cwd: Path, on_done: Callable[[dict], None] | None = None, threads: int = 1) -> dict[str, dict]:
    """Run the unfinished jobs ``parallel`` at a time with ``threads`` torch threads each (a job's optional
    "after" names a job that must finish first); an interrupted run resumes from its checkpoints.
    ``on_done(job)`` is called as each run finishes (e.g. to score and record it). Returns every finished job."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    done = finished_runs(todo, runs)
    running: dict[str, tuple[subprocess.Popen, dict, float]] = {}
    while len(done) < len(todo):
        ready = [j for j in todo if j["name"] not in done and j["name"] not in running
                 and (j.get("after") is None or j["after"] in done)]
        while ready and len(running) < parallel:
            j = ready.pop(0)
            (runs / j["name"]).mkdir(parents=True, exist_ok=True)
            log = open(runs / j["name"] / "stdout.log", "a")  # noqa: SIM115 (closed with the process)
            # resume a killed run from its checkpoints (its own or a stage's); else start over
            has_ckpt = any((runs / j["name"]).glob("checkpoints/step_*/state.json")) or any(
                (runs / j["name"]).glob("*/checkpoints/step_*/state.json"))
            resume = ["--resume"] if has_ckpt else ["--overwrite"]
            print(f"[start] {j['name']}", flush=True)
            running[j["name"]] = (subprocess.Popen(command(j) + resume, stdout=log, stderr=subprocess.STDOUT,
                                                   env=env, cwd=cwd), j, time.perf_counter())
        time.sleep(2)
        for name, (proc, j, t0) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[name]
            if proc.returncode != 0:
                raise SystemExit(f"run {name} failed (exit {proc.returncode}); see {runs / name / 'stdout.log'}")
            wall = time.perf_counter() - t0
            (runs / name / "wall_s.txt").write_text(f"{wall:.1f}")
            done[name] = {**j, "wall_s": wall}
            print(f"[done] {name} in {wall / 60:.1f} min ({len(done)}/{len(todo)})", flush=True)
            if on_done is not None:
                on_done(done[name])
    return done


def driver_parser(doc: str, tables: Sequence[str], runs: Path, results: Path) -> argparse.ArgumentParser:
    """The arguments every per-run experiment driver takes (bench/mal_experiments.py, openseg_experiments.py):
    table, seeds, run and result folders, --commit, --parallel, --hours, --dry-run, --slow-bf16."""
    from omniseg.commands.common import positive_int

    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("table", choices=tables)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--runs", default=str(runs))
    ap.add_argument("--results", default=str(results), help="recorded results (committed in the repository holding it)")
    ap.add_argument("--commit", action="store_true", help="git commit each run's result (and artefacts) as it lands")
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--run-threads", type=positive_int, default=1, help="torch threads per run (2 with --parallel 1: one "
                    "long run on both cores, e.g. a chain that must finish within a session)")
    ap.add_argument("--hours", type=float, default=0.0, help="start only the jobs estimated to end within H hours")
    ap.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    ap.add_argument("--only", nargs="+", metavar="JOB", help="run only these jobs (and the jobs they wait for)")
    ap.add_argument("--slow-bf16", action="store_true", help="train bf16 jobs even on a CPU without native bf16 "
                    "kernels (many times slower than fp32 there; e.g. a 2-step smoke run)")
    return ap


def only(todo: list[dict], names: Sequence[str] | None) -> list[dict]:
    """``todo`` cut to the jobs ``names`` and, transitively, the jobs they run after (None: all of it)."""
    if not names:
        return todo
    by_name = {j["name"]: j for j in todo}
    keep, stack = set(), [n for n in names if n in by_name]
    while stack:
        n = stack.pop()
        if n not in keep:
            keep.add(n)
            if by_name[n]["after"] in by_name:
                stack.append(by_name[n]["after"])
    return [j for j in todo if j["name"] in keep]


def finished_local(jobs: list[dict], runs: Path) -> dict[str, dict]:
    """The jobs whose run folder says they finished (run_jobs writes wall_s.txt after exit 0)."""
    return {j["name"]: {**j, "wall_s": float((runs / j["name"] / "wall_s.txt").read_text())}
            for j in jobs if (runs / j["name"] / "wall_s.txt").is_file()}


def resolve(jobs: list[dict], recorded: set[str], local: set[str]) -> list[dict]:
    """The jobs to run: unrecorded ones and the dependencies of those whose artefacts are not on this
    machine; less the ones finished here (dependencies on them dropped)."""
    needed: set[str] = set()
    for j in reversed(jobs):
        if (j["table"] is not None and j["name"] not in recorded) or any(
                k["after"] == j["name"] and k["name"] in needed for k in jobs):
            needed.add(j["name"])
    todo = [j for j in jobs if j["name"] in needed and j["name"] not in local]
    names = {j["name"] for j in todo}
    return [{**j, "after": j["after"] if j["after"] in names else None} for j in todo]


def preflight(todo: list[dict]) -> tuple[list[dict], dict[str, str]]:
    """``todo`` less the training jobs whose config does not load (and their dependants), and why."""
    from omniseg.recipes.pretraining import PRETRAIN_RECIPES
    from omniseg.recipes.table import load_experiment

    bad: dict[str, str] = {}
    for j in todo:
        if j["after"] in bad:
            bad[j["name"]] = f"needs {j['after']}"
        elif "overrides" in j:
            try:
                load_experiment(ROOT / j["config"], j["overrides"], *([PRETRAIN_RECIPES] if j["kind"] == "mae" else []))
            except Exception as e:  # noqa: BLE001 (any config error: named and skipped, the rest runs)
                bad[j["name"]] = str(e).splitlines()[0]
    return [j for j in todo if j["name"] not in bad], bad


def schedule(todo: list[dict], parallel: int) -> dict[str, tuple[float, float]]:
    """Estimated (start, end) seconds of each job, started as run_jobs does (list order among the ready)."""
    t, running, out, pending = 0.0, {}, {}, list(todo)
    while pending or running:
        ready = [j for j in pending if j["after"] is None or (j["after"] in out and out[j["after"]][1] <= t)]
        while ready and len(running) < parallel:
            j = ready.pop(0)
            pending.remove(j)
            out[j["name"]] = (t, t + j["est_s"])
            running[j["name"]] = t + j["est_s"]
        if not running:
            break  # a dependency outside the plan: never ready
        t = min(running.values())
        running = {n: e for n, e in running.items() if e > t}
    return out


def print_plan(todo: list[dict], times: dict, deferred: list[str], bad: dict[str, str], parallel: int) -> None:
    print(f"{'job':<28} {'records into':<13} {'after':<20} {'est. min':>8} {'start-end (min)':>16}")
    for j in todo:
        a, b = times.get(j["name"], (float("nan"), float("nan")))
        print(f"{j['name']:<28} {j['table'] or '-':<13} {j['after'] or '-':<20} {j['est_s'] / 60:>8.0f} "
              f"{a / 60:>7.0f}-{b / 60:<7.0f}{'  (deferred: past --hours)' if j['name'] in deferred else ''}")
        print(f"    $ {j['command']}")
    total = sum(j["est_s"] for j in todo)
    end = max((b for _, b in times.values()), default=0.0)
    print(f"estimate: {total / 3600:.1f} h of one-thread work, ~{end / 3600:.1f} h wall with --parallel {parallel} "
          "(per-iteration times of a busy 2-core machine; see S_PER)")
    for name, why in bad.items():
        print(f"[cannot run] {name}: {why}")


def drive(args: argparse.Namespace, jobs: list[dict], score: Callable[[dict, argparse.Namespace], tuple[dict, list[Path]]],
          prepare: Callable[[list[dict], argparse.Namespace], None] | None = None, parallel: int | None = None) -> None:
    """The main loop of a per-run table driver (``driver_parser``'s arguments): record the runs that finished
    here but were never recorded (e.g. the driver was stopped), plan the rest (``resolve``, ``preflight``,
    ``schedule``, ``--hours`` deferral), print the plan, then run it, scoring and recording each run as it
    lands (``score(job, args) -> (result, extra files)``; jobs of table None are helpers, never recorded).
    ``prepare(todo, args)`` runs once before the first job (e.g. writing a data split)."""
    runs, results = Path(args.runs), Path(args.results)
    parallel = args.parallel if parallel is None else parallel
    recorded = {n for t in {j["table"] for j in jobs} - {None} for n in read_results(results / t)}

    def done(job: dict) -> None:
        if job["table"] is not None and job["name"] not in recorded:
            result, extra = score(job, args)
            record_result(results / job["table"] / f"{job['name']}.json", result, args.commit, extra)
            recorded.add(job["name"])

    for job in finished_local(jobs, runs).values():
        done(job)
    todo, bad = preflight(only(resolve(jobs, recorded, set(finished_local(jobs, runs))), getattr(args, "only", None)))
    times = schedule(todo, parallel)
    deferred = [n for n, (_, end) in times.items() if args.hours and end > args.hours * 3600]
    print(f"{args.table}: {sum(j['name'] in recorded for j in jobs if j['table'] == args.table)} recorded, "
          f"{len(todo)} job(s) to run (times are ESTIMATES from S_PER, not measurements) on {machine(args.run_threads)}",
          flush=True)
    print_plan(todo, times, deferred, bad, parallel)
    todo = [j for j in todo if j["name"] not in deferred]
    if args.dry_run or not todo:
        return
    if not args.slow_bf16:
        refuse_slow_bf16(todo)
    runs.mkdir(parents=True, exist_ok=True)
    if prepare is not None:
        prepare(todo, args)
    run_jobs(todo, runs, lambda j: j["cmd"], parallel, ROOT, done, args.run_threads)
