"""Shared by the experiment drivers (bench/maskx_experiments.py, bench/alp_experiments.py,
bench/yardstick.py): which runs have finished, running the missing ones a few at a time (one torch
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


def machine() -> str:
    """The machine a run was measured on, for result files."""
    return f"{platform.machine()}, {os.cpu_count()} cores, 1 torch thread per run"


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


def run_jobs(todo: list[dict], runs: Path, command: Callable[[dict], list[str]], parallel: int,
             cwd: Path, on_done: Callable[[dict], None] | None = None) -> dict[str, dict]:
    """Run the unfinished jobs ``parallel`` at a time (a job's optional "after" names a job that must
    finish first); an interrupted run resumes from its checkpoints. ``on_done(job)`` is called as
    each run finishes (e.g. to score and record it). Returns every finished job."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
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
    table, seeds, run and result folders, --commit, --parallel, --hours, --dry-run."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("table", choices=tables)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="ablations: the first one only")
    ap.add_argument("--runs", default=str(runs))
    ap.add_argument("--results", default=str(results), help="recorded results (committed in the repository holding it)")
    ap.add_argument("--commit", action="store_true", help="git commit each run's result (and artefacts) as it lands")
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--hours", type=float, default=0.0, help="start only the jobs estimated to end within H hours")
    ap.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    return ap
