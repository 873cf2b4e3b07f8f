"""Shared by the experiment drivers (bench/maskx_experiments.py, bench/alp_experiments.py): which runs
have finished, and running the missing ones a few at a time, one torch thread each."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def finished_runs(jobs: list[dict], runs: Path) -> dict[str, dict]:
    """The jobs whose run folder holds final validation predictions and a wall time."""
    return {j["name"]: {**j, "wall_s": float((runs / j["name"] / "wall_s.txt").read_text())}
            for j in jobs if (runs / j["name"] / "wall_s.txt").exists()
            and (runs / j["name"] / "val_predictions.json").exists()}


def run_jobs(todo: list[dict], runs: Path, command: Callable[[dict], list[str]], parallel: int,
             cwd: Path) -> dict[str, dict]:
    """Run the unfinished jobs ``parallel`` at a time (a job's optional "after" names a job that must
    finish first); an interrupted run resumes from its checkpoints. Returns every finished job."""
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
    return done
