"""Benchmark: synthetic-world generation speed (images / s) with 1 and 2 worker processes.

Three timings per worker count, each on a fresh output folder:
    * ``scene``: :func:`generate_image` only (pixels + all supervision, in memory; 1 process);
    * ``images``: :func:`generate_records` (scene + PNG encode + write);
    * ``dataset``: :func:`generate_dataset` (images + COCO instances, captions, narratives, panoptic).

    .venv/bin/python bench/synth_speed.py                  # 100 images of 256 x 256
    .venv/bin/python bench/synth_speed.py --images 300 --workers 1 2

Writes bench/results/synth_speed.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omniseg.data.synth.generate import generate_dataset, generate_records  # noqa: E402
from omniseg.data.synth.world import SynthConfig, generate_image  # noqa: E402
from omniseg.utils.atomic import atomic_write_json  # noqa: E402


def _timed(fn, *args, **kwargs) -> float:
    t0 = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "synth_speed.json"))
    args = ap.parse_args(argv)
    cfg = SynthConfig(seed=args.seed, num_images=args.images, image_size=args.size)

    rows = []
    cpu0 = time.process_time()
    scene_s = _timed(lambda: [generate_image(cfg, i) for i in range(cfg.num_images)])
    cpu_ms = 1000 * (time.process_time() - cpu0) / cfg.num_images
    rows.append({"stage": "scene", "workers": 1, "seconds": scene_s, "images_per_s": cfg.num_images / scene_s})
    for w in args.workers:
        with tempfile.TemporaryDirectory() as tmp:
            s = _timed(generate_records, cfg, Path(tmp) / "images", workers=w, progress=False)
            rows.append({"stage": "images", "workers": w, "seconds": s, "images_per_s": cfg.num_images / s})
        with tempfile.TemporaryDirectory() as tmp:
            s = _timed(generate_dataset, cfg, tmp, workers=w, progress=False)
            rows.append({"stage": "dataset", "workers": w, "seconds": s, "images_per_s": cfg.num_images / s})
    # resumed re-run: everything already on disk
    with tempfile.TemporaryDirectory() as tmp:
        generate_dataset(cfg, tmp, workers=1, progress=False)
        s = _timed(generate_dataset, cfg, tmp, workers=1, progress=False)
        rows.append({"stage": "dataset (re-run)", "workers": 1, "seconds": s, "images_per_s": cfg.num_images / s})

    result = {
        "benchmark": "synth_speed",
        "images": cfg.num_images,
        "image_size": cfg.image_size,
        "cpu_count": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
        "scene_cpu_ms_per_image": cpu_ms,
        "python": platform.python_version(),
        "rows": rows,
    }
    atomic_write_json(args.out, result, indent=2)
    print(f"synthetic world, {cfg.num_images} images of {cfg.image_size}x{cfg.image_size}, {os.cpu_count()} CPUs "
          f"(load {result['load_average_1min']:.1f}); scene CPU time {cpu_ms:.1f} ms/image")
    print("| stage | workers | seconds | images/s |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['stage']} | {r['workers']} | {r['seconds']:.2f} | {r['images_per_s']:.1f} |")
    return result


if __name__ == "__main__":
    main()
