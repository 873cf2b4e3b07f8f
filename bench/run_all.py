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

#: Mask^X R-CNN at the standard width (ResNet + FPN 256, box head fc 1024, fused MLP), batch 4, no flip
MASKX_STANDARD = ["--threads", "2", "--steps", "6", "--infer", "6", "--train-images", "32",
                  "--set", "model.width=64", "--set", "model.fpn_channels=256", "--set", "model.fc_dim=1024",
                  "--set", "model.mask_conv_dim=256", "--set", "model.transfer_hidden_dim=1024",
                  "--set", "model.mlp_hidden_dim=1024", "--set", "data.batch_size=4", "--set", "data.flip=false"]

#: name -> extra arguments of bench/<name>.py, or (script, arguments) where one script runs several times
BENCHES: dict[str, list[str] | tuple[str, list[str]]] = {
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
    "recipe_speed_maskx_r18": ("recipe_speed", ["configs/maskx_voc_like.yaml", *MASKX_STANDARD,
                                                "--set", "model.builder=maskx_rcnn_r18_fpn",
                                                "--out", "bench/results/recipe_speed_maskx_r18.json"]),
    "recipe_speed_maskx_r50": ("recipe_speed", ["configs/maskx_voc_like.yaml", *MASKX_STANDARD,
                                                "--set", "model.builder=maskx_rcnn_r50_fpn",
                                                "--out", "bench/results/recipe_speed_maskx_r50.json"]),
    "recipe_speed_openseg": ("recipe_speed", ["configs/openseg_synth.yaml", "--threads", "1", "2", "--steps", "10",
                                              "--train-images", "64", "--out", "bench/results/recipe_speed_openseg.json"]),
    "recipe_speed_vloss": ("recipe_speed", ["configs/vloss_synth.yaml", "--threads", "1", "2", "--steps", "10",
                                            "--out", "bench/results/recipe_speed_vloss.json"]),
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
    for name, spec in BENCHES.items():
        if args.only and name not in args.only:
            continue
        script, extra = spec if isinstance(spec, tuple) else (name, spec)
        python = sys.executable
        if name in PEER_BENCHES and PEER_PYTHON.exists():
            python = str(PEER_PYTHON)
        elif name == "peer_speed":
            print(f"== {name}: skipped (no {PEER_PYTHON}; run `make peer` first)", flush=True)
            continue
        print(f"== {name}", flush=True)
        subprocess.run([python, str(ROOT / "bench" / f"{script}.py"), *extra], check=True, cwd=ROOT)
    subprocess.run([sys.executable, str(ROOT / "bench" / "report.py")], check=True, cwd=ROOT)


if __name__ == "__main__":
    main()
