"""Run every benchmark one after another (never in parallel: they time the same cores), then
regenerate BENCHMARKS.md.

    python bench/run_all.py [--only NAME ...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: name -> extra arguments
BENCHES: dict[str, list[str]] = {
    "synth_speed": [],
    "eval_speed": ["--no-progress"],
    "ops_speed": ["--runs", "5", "--threads", "1", "--no-progress"],
    "text_synonyms": [],
    "box_to_mask_train": [],
    "alp_curation": [],
    "nms_speed": ["--runs", "15", "--out", "bench/results/nms_speed.json"],
    "coco_scale": ["--runs", "3", "--out", "bench/results/coco_scale.json"],
    "step_speed": ["--old", "0d8adc8", "--new", "WORKTREE", "--rounds", "5", "--steps", "3",
                   "--out", "bench/results/step_speed.json"],
    "peer_speed": ["--rounds", "2", "--out", "bench/results/peer_speed.json"],
    "maskx_speed": [],
    "maskx_experiments": [],  # about an hour on 2 cores
    "alp_experiments": ["--iters", "2000"],  # about 2 hours on 2 cores (the 6000-iteration rows: see BENCHMARKS.md)
}

#: run with the peer venv's python (torchvision; `make peer`) when it exists: nms_speed then adds
#: torchvision's column, peer_speed needs it and is skipped without it
PEER_PYTHON = ROOT / ".venv-peer" / "bin" / "python"
PEER_BENCHES = {"nms_speed", "peer_speed"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only", nargs="*", choices=sorted(BENCHES), default=None)
    args = ap.parse_args()
    for name, extra in BENCHES.items():
        if args.only and name not in args.only:
            continue
        python = sys.executable
        if name in PEER_BENCHES and PEER_PYTHON.exists():
            python = str(PEER_PYTHON)
        elif name == "peer_speed":
            print(f"== {name}: skipped (no {PEER_PYTHON}; run `make peer` first)", flush=True)
            continue
        print(f"== {name}", flush=True)
        subprocess.run([python, str(ROOT / "bench" / f"{name}.py"), *extra], check=True, cwd=ROOT)
    subprocess.run([sys.executable, str(ROOT / "bench" / "report.py")], check=True, cwd=ROOT)


if __name__ == "__main__":
    main()
