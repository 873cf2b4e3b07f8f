"""OmniSeg's Mask R-CNN vs torchvision's ``maskrcnn_resnet50_fpn``, side by side in one run (issue 11).

Both sides: ResNet-50-FPN, 256 FPN channels, trainable BatchNorm everywhere (torchvision's own
choice without pretrained weights), random init (``weights=None, weights_backbone=None``: no
downloads), the synthetic world's 256 px images, batch 4, one torch thread, and OmniSeg's
``configs/maskx_voc_like.yaml`` RoI budgets set on torchvision too: anchors, per-level pre-NMS /
per-image post-NMS proposal counts, RPN and RoI sample sizes, detections per image, NMS
thresholds, RoIAlign sampling ratio (OmniSeg's 0 = adaptive; ``--torchvision-sampling-ratio 2`` gives
torchvision its own, cheaper default), and ``min_size = max_size = 256`` (no resizing). OmniSeg runs its plain
Mask R-CNN (class-specific mask head, no fused MLP, 4 x 256 mask convs without norm, as torchvision).

Each measurement is a separate subprocess; the two sides alternate over ``--rounds`` (ABBA order),
so load from other processes hits both alike. A child builds its model (seed 0), trains
``--warmup`` + ``--steps`` steps of AdamW on the same batches and then runs single-image inference
on ``--images`` images. Reported: the median training-step and inference times per side, their
ratios OmniSeg / torchvision (< 1: OmniSeg faster), and the median of the per-round ratios; also
the training step's process CPU time (``train_cpu_s_per_step``), which waiting for a core on a
loaded machine does not inflate (the wall-clock figures are the headline on a quiet machine).

Inference scores with ``--score-threshold`` (default 0: a randomly initialised classifier scores
every class near 1/C, under the usual 0.05, so no box would reach the mask head); each side then
returns its full ``detections_per_image`` and the mask head does the same work on both sides.

The torchvision side needs the peer venv (``make peer``, bench/peer/README.md); both sides run
in it by default (the same torch build; omniseg is imported from the repo), or pass
``--omniseg-python .venv/bin/python`` for the OmniSeg side.

    .venv-peer/bin/python bench/peer_speed.py [--rounds 4] [--steps 4] [--images 6] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIG = ROOT / "configs" / "maskx_voc_like.yaml"
#: the standard-width plain Mask R-CNN (torchvision's architecture) in the Mask^X recipe's terms
OVERRIDES = ["model.builder=maskx_rcnn_r50_fpn", "model.width=64", "model.fpn_channels=256", "model.fc_dim=1024",
             "model.norm=BN", "model.freeze_at=0", "model.mask_head=class-specific", "model.fused_mlp=false",
             "model.mask_conv_dim=256", "model.mask_norm=none", "data.oracle=true", "data.flip=false"]


def _setup(args: argparse.Namespace):
    """Config, the thing categories and the training batches (identical on both sides)."""
    import torch

    from omniseg.data.batch import collate
    from omniseg.engine.config import load_config
    from omniseg.recipes.maskx_rcnn import MaskXExperiment, train_dataset

    torch.set_num_threads(args.threads)
    n = args.warmup + args.steps
    cfg = load_config(MaskXExperiment, CONFIG, [*OVERRIDES, f"data.train_num_images={4 * n}",
                                                f"data.image_size={args.image_size}",
                                                f"model.score_threshold={args.score_threshold}"])
    ds = train_dataset(cfg.data, progress=False)
    batches = [collate([ds[4 * i + k] for k in range(4)]) for i in range(n)]
    return cfg, ds.rs.categories, batches


def _omniseg(args: argparse.Namespace) -> dict:
    import torch

    from omniseg.recipes.contract import pad_images
    from omniseg.recipes.maskx_rcnn import build_model

    cfg, categories, batches = _setup(args)
    torch.manual_seed(0)
    model = build_model(cfg.model, categories)

    def step(b) -> None:
        loss = sum(v for k, v in model(b).items() if k.startswith("loss"))
        opt.zero_grad()
        loss.backward()
        opt.step()

    def infer(image) -> int:
        batch, sizes = pad_images(image)
        return len(model.predict(batch, sizes)[0].scores)

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    return _time(args, model, batches, step, infer, {})


def _torchvision(args: argparse.Namespace) -> dict:
    """torchvision's Mask R-CNN with OmniSeg's budgets (read from the same resolved config)."""
    import torch
    import torchvision
    from torchvision.models.detection import maskrcnn_resnet50_fpn
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops import MultiScaleRoIAlign

    from omniseg.modeling.roi_box_head import BoxHeadConfig
    from omniseg.modeling.roi_mask_head import MaskHeadConfig
    from omniseg.modeling.rpn import RPNConfig

    cfg, categories, batches = _setup(args)
    m = cfg.model
    rpn, box, mask = RPNConfig(), BoxHeadConfig(), MaskHeadConfig()
    things = sorted(c.id for c in categories if c.isthing)

    def sr(omniseg_ratio: int) -> int:
        return omniseg_ratio if args.torchvision_sampling_ratio < 0 else args.torchvision_sampling_ratio

    torch.manual_seed(0)
    model = maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=len(things) + 1,
        min_size=args.image_size, max_size=args.image_size,
        rpn_anchor_generator=AnchorGenerator(tuple((int(s),) for s in m.anchor_sizes), ((0.5, 1.0, 2.0),) * 5),
        rpn_pre_nms_top_n_train=m.rpn_pre_nms_topk_train, rpn_pre_nms_top_n_test=m.rpn_pre_nms_topk_test,
        rpn_post_nms_top_n_train=m.rpn_post_nms_topk_train, rpn_post_nms_top_n_test=m.rpn_post_nms_topk_test,
        rpn_nms_thresh=rpn.nms_threshold, rpn_batch_size_per_image=rpn.batch_size_per_image,
        rpn_positive_fraction=rpn.positive_fraction, rpn_fg_iou_thresh=rpn.positive_iou,
        rpn_bg_iou_thresh=rpn.negative_iou,
        box_roi_pool=MultiScaleRoIAlign(["0", "1", "2", "3"], box.pooler_resolution, sr(box.sampling_ratio)),
        mask_roi_pool=MultiScaleRoIAlign(["0", "1", "2", "3"], mask.pooler_resolution, sr(mask.sampling_ratio)),
        box_batch_size_per_image=m.roi_batch_size_per_image, box_positive_fraction=box.positive_fraction,
        box_fg_iou_thresh=box.fg_iou, box_bg_iou_thresh=box.fg_iou, box_detections_per_img=m.detections_per_image,
        box_score_thresh=m.score_threshold, box_nms_thresh=m.nms_threshold)
    index = {c: i + 1 for i, c in enumerate(things)}

    def convert(b) -> tuple[list, list]:
        images, targets = [], []
        for img, (h, w), t in zip(b.images, b.image_sizes, b.targets):
            keep = t.has_box & t.has_mask & t.is_thing & ~t.is_crowd
            images.append(img[:, :h, :w].float() / 255)
            targets.append({"boxes": t.boxes[keep], "masks": t.masks[keep][:, :h, :w],
                            "labels": torch.tensor([index[int(c)] for c in t.category_ids[keep]], dtype=torch.long)})
        return images, targets

    converted = {id(b): convert(b) for b in batches}  # input conversion is not timed

    def step(b) -> None:
        images, targets = converted[id(b)]
        loss = sum(model(images, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()

    def infer(image) -> int:
        return len(model([image])[0]["scores"])

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    out = _time(args, model, batches, step, infer, {"torchvision": torchvision.__version__},
                to_input=lambda img, hw: img[:, :hw[0], :hw[1]].float() / 255)
    return out


def _time(args, model, batches, step, infer, extra: dict, to_input=None) -> dict:
    """Train on every batch (the first ``--warmup`` untimed), then single-image inference."""
    import torch

    model.train()
    times, cpu = [], []
    for i, b in enumerate(batches):
        t0, c0 = time.perf_counter(), time.process_time()
        step(b)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    model.eval()
    images = [(img, hw) for b in batches for img, hw in zip(b.images, b.image_sizes)][: args.images + 1]
    lat, dets = [], []
    for k, (img, hw) in enumerate(images):
        x = to_input(img, hw) if to_input else img[:, :hw[0], :hw[1]]
        t0 = time.perf_counter()
        with torch.no_grad():
            dets.append(infer(x))
        if k > 0:  # the first image warms up
            lat.append(time.perf_counter() - t0)
    return {"train_s_per_step": times, "train_cpu_s_per_step": cpu, "inference_s_per_image": lat,
            "detections": dets[1:],
            "params_M": sum(p.numel() for p in model.parameters()) / 1e6, "torch": torch.__version__, **extra}


def _child(side: str, args: argparse.Namespace, python: str) -> dict:
    cmd = [python, __file__, "--child", side, "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--images", str(args.images), "--threads", str(args.threads), "--image-size", str(args.image_size),
           "--score-threshold", str(args.score_threshold),
           "--torchvision-sampling-ratio", str(args.torchvision_sampling_ratio)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if res.returncode != 0:
        raise SystemExit(f"{side} child failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def compare(args: argparse.Namespace) -> dict:
    """``--rounds`` rounds of one child per side, in ABBA order; medians and ratios."""
    runs: dict[str, list[dict]] = {"omniseg": [], "torchvision": []}
    python = {"omniseg": args.omniseg_python, "torchvision": args.torchvision_python}
    for r in range(args.rounds):
        order = ["omniseg", "torchvision"] if r % 2 == 0 else ["torchvision", "omniseg"]
        for side in order:
            runs[side].append(_child(side, args, python[side]))
            print(f"round {r} {side}: step {statistics.median(runs[side][-1]['train_s_per_step']):.3f} s "
                  f"(CPU {statistics.median(runs[side][-1]['train_cpu_s_per_step']):.3f} s), "
                  f"inference {statistics.median(runs[side][-1]['inference_s_per_image']):.3f} s",
                  file=sys.stderr, flush=True)
    out: dict = {}
    for key in ("train_s_per_step", "train_cpu_s_per_step", "inference_s_per_image"):
        med = {s: statistics.median([t for run in runs[s] for t in run[key]]) for s in runs}
        per_round = [statistics.median(a[key]) / statistics.median(b[key])
                     for a, b in zip(runs["omniseg"], runs["torchvision"])]
        out[key] = {**med, "ratio_omniseg_over_torchvision": med["omniseg"] / med["torchvision"],
                    "per_round_ratios": per_round, "median_per_round_ratio": statistics.median(per_round)}
    return {
        "benchmark": "peer_speed", "command": "python bench/peer_speed.py " + " ".join(sys.argv[1:]),
        "what": "OmniSeg Mask R-CNN vs torchvision maskrcnn_resnet50_fpn: R50-FPN 256 ch, trainable BN, random "
                f"init, batch 4, {args.image_size} px, {args.threads} thread(s), OmniSeg's RoI budgets on both",
        "rounds": args.rounds, "steps_per_round": args.steps, "images_per_round": args.images,
        "score_threshold": args.score_threshold, "torchvision_sampling_ratio": args.torchvision_sampling_ratio,
        **out,
        "detections_per_image": {s: statistics.median([d for run in runs[s] for d in run["detections"]]) for s in runs},
        "params_M": {s: runs[s][0]["params_M"] for s in runs},
        "versions": {"torch": {s: runs[s][0]["torch"] for s in runs},
                     "torchvision": runs["torchvision"][0]["torchvision"]},
        "machine": f"{platform.machine()}, {os.cpu_count()} cores", "load_average_1min": os.getloadavg()[0],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4, help="child pairs (ABBA order)")
    ap.add_argument("--steps", type=int, default=4, help="timed training steps per child")
    ap.add_argument("--warmup", type=int, default=2, help="untimed training steps per child")
    ap.add_argument("--images", type=int, default=6, help="timed single-image inferences per child")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--score-threshold", type=float, default=0.0)
    ap.add_argument("--torchvision-sampling-ratio", type=int, default=-1,
                    help="RoIAlign samples per bin on torchvision's side (-1: OmniSeg's, 0 = adaptive; "
                         "torchvision's own default is 2, less work than adaptive)")
    ap.add_argument("--omniseg-python", default=sys.executable)
    ap.add_argument("--torchvision-python", default=sys.executable)
    ap.add_argument("--child", choices=["omniseg", "torchvision"], help=argparse.SUPPRESS)
    ap.add_argument("--out", default="", help="also write the JSON here")
    args = ap.parse_args()
    if args.child:
        print(json.dumps((_omniseg if args.child == "omniseg" else _torchvision)(args)))
        return
    result = compare(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        from omniseg.utils.atomic import atomic_write_json

        atomic_write_json(args.out, result, indent=2)


if __name__ == "__main__":
    main()
