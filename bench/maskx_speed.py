"""Training throughput, peak memory and inference latency of Mask^X R-CNN on this machine (issue 4).

Each backbone runs in its own process (so peak RSS is its own): a few warm-up steps, then timed
training steps (batch 4, 256x256 synthetic images, the standard-width network), then timed
single-image inference. Medians are reported.

    python bench/maskx_speed.py [--backbones r18 r50] [--steps 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BUILDERS = {"r18": "maskx_rcnn_r18_fpn", "r50": "maskx_rcnn_r50_fpn"}


def measure(backbone: str, steps: int, threads: int) -> dict:
    """Runs inside the child process."""
    import torch

    from omniseg.data.batch import collate
    from omniseg.engine.config import load_config
    from omniseg.recipes.contract import pad_images
    from omniseg.recipes.maskx_rcnn import MaskXExperiment, build_model, train_dataset

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = load_config(MaskXExperiment, ROOT / "configs" / "maskx_voc_like.yaml", [
        f"model.builder={BUILDERS[backbone]}", "model.width=64", "model.fpn_channels=256", "model.fc_dim=1024",
        "model.mask_conv_dim=256", "model.transfer_hidden_dim=1024", "model.mlp_hidden_dim=1024",
        f"data.train_num_images={4 * (steps + 2)}", "data.flip=false"])
    ds = train_dataset(cfg.data, progress=False)
    model = build_model(cfg.model, ds.rs.categories)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    batches = [collate([ds[4 * i + k] for k in range(4)]) for i in range(steps + 2)]
    times = []
    for i, b in enumerate(batches):
        t0 = time.perf_counter()
        loss = sum(v for k, v in model(b).items() if k.startswith("loss"))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= 2:  # warm-up
            times.append(time.perf_counter() - t0)
    model.eval()
    lat = []
    for b in batches[: steps + 2]:
        image = b.images[0]
        t0 = time.perf_counter()
        with torch.no_grad():
            batch, sizes = pad_images(image)
            model.predict(batch, sizes)
        lat.append(time.perf_counter() - t0)
    step = statistics.median(times)
    return {
        "backbone": backbone, "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
        "train_s_per_step": step, "train_images_per_s": 4 / step,
        "inference_s_per_image": statistics.median(lat[2:]),
        "peak_rss_MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "threads": threads,
        "steps_timed": len(times),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbones", nargs="+", choices=sorted(BUILDERS), default=["r18", "r50"])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "maskx_speed.json"))
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.steps, args.threads)))
        return
    rows = []
    for bb in args.backbones:
        res = subprocess.run([sys.executable, __file__, "--child", bb, "--steps", str(args.steps),
                              "--threads", str(args.threads)], capture_output=True, text=True, check=True)
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    from omniseg.utils.atomic import atomic_write_json

    atomic_write_json(args.out, {
        "benchmark": "maskx_speed", "command": "python bench/maskx_speed.py " + " ".join(sys.argv[1:]),
        "image_size": 256, "batch_size": 4, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load_average_1min": os.getloadavg()[0], "rows": rows,
    }, indent=2)


if __name__ == "__main__":
    main()
