"""RoIAlign and NMS throughput (CPU by default).

Realistic sizes: 512 RoIs pooled to 256 x 7 x 7 from P2..P5 of an 800 x 800 image, and NMS over
5,000 boxes. RoIAlign runs both torch paths side by side ("torch": sparse embedding_bag path,
"torch_reference": the earlier crop/matmul path) and torchvision's op where it loads. Reports the
median of several runs, writes bench/results/ops_speed.json and prints a markdown table.

    .venv/bin/python bench/ops_speed.py            # full sizes
    .venv/bin/python bench/ops_speed.py --quick    # tiny sizes, for a smoke test
    .venv/bin/python bench/ops_speed.py --threads 1 --ops roi_align --num-images 2 --image 512 \
        --num-rois 2000 --out /tmp/detector_like.json   # the detector's predict case
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

from omniseg.ops.nms import batched_nms, nms
from omniseg.ops.roi_align import multilevel_roi_align, torchvision_ops
from omniseg.utils.atomic import atomic_write_json

RESULTS = Path(__file__).resolve().parent / "results" / "ops_speed.json"


def _median_time(fn: Callable[[], object], runs: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _random_boxes(n: int, image: int, min_size: float, max_size: float, g: torch.Generator) -> torch.Tensor:
    # log-uniform sizes so every FPN level gets RoIs
    size = torch.exp(torch.empty(n, 2).uniform_(torch.log(torch.tensor(min_size)).item(),
                                                torch.log(torch.tensor(max_size)).item(), generator=g))
    xy = torch.rand(n, 2, generator=g) * (image - size)
    return torch.cat([xy, xy + size], dim=1)


def run(
    image: int, channels: int, num_rois: int, num_boxes: int, runs: int, device: str, progress: bool,
    num_images: int = 1, ops: str = "",
) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    strides = (4, 8, 16, 32)
    feats = [torch.randn(num_images, channels, image // s, image // s, generator=g).to(device) for s in strides]
    boxes = _random_boxes(num_rois, image, 16, image * 0.9, g)
    batch = torch.randint(0, num_images, (num_rois, 1), generator=g).float()
    rois = torch.cat([batch, boxes], dim=1).to(device)
    nms_boxes = _random_boxes(num_boxes, image, 8, image / 3, g).to(device)
    scores = torch.rand(num_boxes, generator=g).to(device)
    classes = torch.randint(0, 80, (num_boxes,), generator=g).to(device)
    impls = ["torch", "torch_reference"] + (["torchvision"] if torchvision_ops() is not None else [])

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    cases: list[tuple[str, str, int, Callable[[], object]]] = []
    for impl in impls:
        def pool(impl: str = impl) -> None:
            multilevel_roi_align(feats, rois, 7, strides, sampling_ratio=0, aligned=True, impl=impl)
            sync()

        def pool_bwd(impl: str = impl) -> None:
            f = [x.detach().requires_grad_() for x in feats]
            multilevel_roi_align(f, rois, 7, strides, sampling_ratio=0, aligned=True, impl=impl).sum().backward()
            sync()

        def run_nms(impl: str = impl) -> None:
            nms(nms_boxes, scores, 0.5, impl=impl)
            sync()

        def run_bnms(impl: str = impl) -> None:
            batched_nms(nms_boxes, scores, classes, 0.5, impl=impl)
            sync()

        cases += [
            ("roi_align P2-P5 fwd", impl, num_rois, pool),
            ("roi_align P2-P5 fwd+bwd", impl, num_rois, pool_bwd),
        ]
        if impl != "torch_reference":  # NMS has no reference variant
            cases += [
                ("nms iou 0.5", impl, num_boxes, run_nms),
                ("batched_nms 80 classes", impl, num_boxes, run_bnms),
            ]
    cases = [c for c in cases if ops in c[0]]
    rows = []
    for name, impl, n, fn in tqdm(cases, desc="ops_speed", disable=not progress):
        with torch.set_grad_enabled("bwd" in name):
            sec = _median_time(fn, runs)
        rows.append({"op": name, "impl": impl, "items": n, "median_ms": round(sec * 1000, 2),
                     "items_per_s": round(n / sec, 1)})
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave default)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--ops", default="", help="only cases whose name contains this (e.g. roi_align)")
    p.add_argument("--image", type=int, default=0, help="image side (0: default for the mode)")
    p.add_argument("--num-images", type=int, default=1, help="images per batch (FPN maps N x C x H x W)")
    p.add_argument("--num-rois", type=int, default=0, help="RoIs (0: default for the mode)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = dict(image=128, channels=16, num_rois=32, num_boxes=200) if args.quick else dict(
        image=800, channels=256, num_rois=512, num_boxes=5000)
    sizes["image"] = args.image or sizes["image"]
    sizes["num_rois"] = args.num_rois or sizes["num_rois"]
    sizes["num_images"] = args.num_images
    load_before = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    rows = run(**sizes, runs=args.runs, device=args.device, progress=sys.stderr.isatty() and not args.no_progress,
               ops=args.ops)
    result = {
        "sizes": sizes,
        "runs": args.runs,
        "device": args.device,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "load_average_1_5_15_before": load_before,
        "machine": platform.machine(),
        "processor": platform.processor(),
        "results": rows,
    }
    atomic_write_json(args.out, result, indent=2)
    print(f"sizes: {sizes}, device {args.device}, {torch.get_num_threads()} threads, median of {args.runs}, "
          f"load average before {load_before}, after {result['load_average_1_5_15']}\n")
    print("| op | impl | items | median ms | items/s |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['op']} | {r['impl']} | {r['items']} | {r['median_ms']} | {r['items_per_s']} |")
    print(f"\nwritten {args.out}")


if __name__ == "__main__":
    main()
