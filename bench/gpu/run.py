"""The prepared GPU run (issue 11): CUDA-path checks, throughput / MFU, and the standard-width rows.

One command on a bare CUDA machine (bench/gpu/run.sh installs the carried wheels first), all within
``--budget-s`` (default 540 s = 9 min, installs excluded: run.sh subtracts them):

1. ``cuda_path``: bf16 autocast, channels_last and torchvision dispatch (``impl="auto"`` of
   omniseg.ops NMS / RoIAlign vs the pure-torch reference on the device, where torchvision imports).
2. ``throughput_mask_rcnn_r50_fpn``: training images/s of Mask R-CNN R50-FPN (FrozenBN, freeze_at 2:
   detectron2's standard recipe) at 800 px, bf16 autocast, channels_last; FLOPs of one step counted by
   ``torch.utils.flop_counter.FlopCounterMode``; MFU = FLOPs / step time / the GPU's dense bf16 peak.
3. ``throughput_vit_b_crop``: the same for a ViT-B crop model at 512 px (MAL-style box-to-mask: a box
   crop -> ViT-B/16 -> small deconv mask head, trained with MAL's multiple-instance projection loss,
   MAL Sec. 3.3) -- omniseg/modeling/backbones/vit.py.
4. ``maskx_rows``: Mask^X voc A->B transfer+MLP (the detector run's stage 2), class-agnostic, oracle
   at standard width (R50-FPN, 256 FPN channels, 1024-d heads) -- bench/maskx_experiments.py's jobs.
5. ``alp_rows``: ALP FCOS-MO (ALPs) and Mask R-CNN* (ALPs) at standard width --
   bench/alp_experiments.py's jobs, on ALPs curated by spaCy (carried: the device has no spaCy).

Every row is ``omniseg train <config> ...`` in its own process (several at once on the one GPU),
killed if it runs past its part's deadline (then reported as timed out). ``gpu_run.json`` is
rewritten after every part (into ``$OUT`` when set, else bench/results/) and a summary printed.

``--dry-run`` runs the same code at tiny size on CPU (tests/bench/test_gpu_run.py).
``--prepare`` (here, on CPU, before a device call) fills bench/gpu/carry/ (bench/gpu/README.md).

    bash bench/gpu/run.sh                        # on the GPU machine (carry bench/gpu/carry)
    .venv/bin/python bench/gpu/run.py --dry-run  # anywhere, < 30 s
    .venv/bin/python bench/gpu/run.py --prepare  # here, once, before the device call
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

CARRY = ROOT / "bench" / "gpu" / "carry"
#: dense bf16 tensor-core peak, FLOP/s, by a substring of the device name (vendor data sheets, SXM parts)
PEAK_BF16 = {"H200": 989.4e12, "H100": 989.4e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12}

#: sizes of the real run and of the CPU dry run
SIZES = {
    "gpu": dict(det_size=800, det_batch=8, det_warmup=3, det_steps=10, vit_size=512, vit_batch=32, vit_warmup=3,
                vit_steps=10, vit_dims=(768, 12, 12), stage1_iters=1000, stage2_iters=400, maskx_train=1000,
                maskx_val=100, alp_iters=1000, alp_train=600, alp_val=80, parallel=5, workers=2),
    "dry": dict(det_size=128, det_batch=2, det_warmup=1, det_steps=1, vit_size=64, vit_batch=2, vit_warmup=1,
                vit_steps=1, vit_dims=(64, 2, 2), stage1_iters=1, stage2_iters=1, maskx_train=4, maskx_val=2,
                alp_iters=1, alp_train=4, alp_val=2, parallel=5, workers=0),
}
#: model overrides: standard width on the GPU, tiny in the dry run
WIDTH = {
    "gpu": {"maskx": ["model.builder=maskx_rcnn_r50_fpn", "model.width=64", "model.fpn_channels=256",
                      "model.fc_dim=1024", "model.mask_conv_dim=256", "model.transfer_hidden_dim=1024",
                      "model.mlp_hidden_dim=1024"],
            "mask_rcnn_star": ["model.builder=mask_rcnn_star_r50_fpn", "model.width=64", "model.fpn_channels=256",
                               "model.fc_dim=1024", "model.mask_conv_dim=256"],
            "fcos_mo": ["model.backbone=resnet50_fpn_p3p7", "model.width=64", "model.fpn_channels=256",
                        "model.gn_groups=32", "model.mask_channels=128"]},
    "dry": {"maskx": ["model.width=8", "model.fpn_channels=16", "model.fc_dim=32", "model.mask_conv_dim=16",
                      "model.transfer_hidden_dim=32", "model.mlp_hidden_dim=32"],
            "mask_rcnn_star": ["model.width=8", "model.fpn_channels=16", "model.fc_dim=32", "model.mask_conv_dim=16"],
            "fcos_mo": ["model.width=8", "model.fpn_channels=16", "model.gn_groups=8", "model.mask_channels=16"]},
}
#: share of the budget each part may use (the rows run last and get the rest)
PART_SHARE = {"cuda_path": 0.06, "throughput_mask_rcnn_r50_fpn": 0.12, "throughput_vit_b_crop": 0.08}
SCORE_RESERVE = 0.12  # share kept for scoring the rows


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------ part 1


def cuda_path(device, dry: bool) -> dict:
    """bf16 autocast, channels_last and torchvision dispatch on ``device``."""
    import torch

    from omniseg.ops.nms import batched_nms, nms
    from omniseg.ops.roi_align import resolve_impl, roi_align, torchvision_ops

    out: dict = {"device": str(device), "torch": torch.__version__}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        out |= {"name": p.name, "capability": list(torch.cuda.get_device_capability(device)),
                "memory_GiB": p.total_memory / 2**30, "cuda": torch.version.cuda, "sms": p.multi_processor_count}
    try:
        import torchvision

        out["torchvision"] = torchvision.__version__
    except Exception as e:  # noqa: BLE001 -- any import failure means "not available"
        out["torchvision"] = f"not importable: {type(e).__name__}"
    torch.set_grad_enabled(False)
    g = torch.Generator().manual_seed(0)
    # bf16 autocast: conv / matmul run in bf16 and agree with fp32 to bf16 precision
    conv = torch.nn.Conv2d(16, 32, 3, padding=1).to(device)
    x = torch.randn(4, 16, 32, 32, generator=g).to(device)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        y16 = conv(x)
    y32 = conv(x)
    out["amp_bf16"] = {"dtype": str(y16.dtype), "max_rel_err": float((y16.float() - y32).abs().max() / y32.abs().max())}
    out["amp_bf16"]["ok"] = y16.dtype == torch.bfloat16 and out["amp_bf16"]["max_rel_err"] < 2e-2
    # channels_last: same result, output keeps the layout
    xc, convc = x.to(memory_format=torch.channels_last), conv.to(memory_format=torch.channels_last)
    yc = convc(xc)
    out["channels_last"] = {"max_abs_diff": float((yc - y32).abs().max()),
                            "output_channels_last": bool(yc.is_contiguous(memory_format=torch.channels_last))}
    out["channels_last"]["ok"] = out["channels_last"]["max_abs_diff"] < 1e-3
    # torchvision dispatch: what impl="auto" picks, and that it agrees with the reference on the device
    n = 200 if dry else 5000
    xy = torch.rand(n, 2, generator=g) * 500
    boxes = torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 100 + 1], 1).to(device)
    scores = torch.rand(n, generator=g).to(device)
    classes = torch.randint(0, 20, (n,), generator=g).to(device)
    disp: dict = {"auto_impl": resolve_impl("auto"), "torchvision_ops": torchvision_ops() is not None}
    if torchvision_ops() is not None:
        t = {}
        for impl in ("torch", "torchvision"):
            sync(device)
            t0 = time.perf_counter()
            keep = nms(boxes, scores, 0.5, impl=impl)
            bkeep = batched_nms(boxes, scores, classes, 0.5, impl=impl)
            sync(device)
            t[impl] = (time.perf_counter() - t0, keep.cpu(), bkeep.cpu())
        feat = torch.randn(2, 8, 64, 64, generator=g).to(device)
        rois = torch.cat([torch.randint(0, 2, (64, 1), generator=g).float(), torch.rand(64, 2, generator=g) * 200,
                          torch.rand(64, 2, generator=g) * 200 + 210], 1).to(device)
        a = roi_align(feat, rois, 7, 0.25, 2, True, impl="torch")
        b = roi_align(feat, rois, 7, 0.25, 2, True, impl="torchvision")
        disp |= {"nms_equal": bool(torch.equal(t["torch"][1], t["torchvision"][1])),
                 "batched_nms_equal": bool(torch.equal(t["torch"][2], t["torchvision"][2])),
                 "nms_s": {k: v[0] for k, v in t.items()}, "boxes": n,
                 "roi_align_max_abs_diff": float((a - b).abs().max())}
        disp["ok"] = disp["nms_equal"] and disp["batched_nms_equal"] and disp["roi_align_max_abs_diff"] < 1e-4
    out["torchvision_dispatch"] = disp
    torch.set_grad_enabled(True)
    return out


# ------------------------------------------------------------------------------------------ parts 2, 3


def peak_flops(device, override_tflops: float) -> float | None:
    import torch

    if override_tflops > 0:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def measure(device, step, batches: list, warmup: int, steps: int, images_per_step: int, peak: float | None,
            deadline: float) -> dict:
    """Warm-up, one FLOP-counted step, then timed steps (stopping early at ``deadline``)."""
    from torch.utils.flop_counter import FlopCounterMode

    for i in range(warmup):
        step(batches[i % len(batches)])
    sync(device)
    with FlopCounterMode(display=False) as fc:
        step(batches[0])
    flops = fc.get_total_flops()
    times = []
    for i in range(steps):
        if times and time.monotonic() > deadline:
            break
        sync(device)
        t0 = time.perf_counter()
        step(batches[i % len(batches)])
        sync(device)
        times.append(time.perf_counter() - t0)
    s = statistics.median(times)
    out = {"step_s_median": s, "steps_timed": len(times), "images_per_s": images_per_step / s,
           "flops_per_step": flops, "achieved_tflops": flops / s / 1e12,
           "peak_bf16_tflops": peak / 1e12 if peak else None, "mfu": flops / s / peak if peak else None}
    if device.type == "cuda":
        import torch

        out["max_memory_GiB"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def throughput_mask_rcnn(device, size: dict, peak: float | None, deadline: float, amp: bool) -> dict:
    """Mask R-CNN R50-FPN (standard width; tiny in the dry run) training throughput and MFU."""
    import torch

    from omniseg.data.batch import collate
    from omniseg.engine.config import load_config
    from omniseg.recipes.maskx_rcnn import MaskXExperiment, build_model, train_dataset

    dry = device.type != "cuda"
    b = size["det_batch"]
    over = ["model.builder=maskx_rcnn_r50_fpn", "model.mask_head=class-specific", "model.fused_mlp=false",
            "model.norm=FrozenBN", "model.freeze_at=2", "model.mask_norm=none", "data.oracle=true",
            f"data.image_size={size['det_size']}", f"data.train_num_images={2 * b}",
            "model.rpn_pre_nms_topk_train=2000", "model.rpn_post_nms_topk_train=1000",
            "model.roi_batch_size_per_image=512", "model.anchor_sizes=[32,64,128,256,512]"]
    over += (["model.width=8", "model.fpn_channels=16", "model.fc_dim=32", "model.mask_conv_dim=16"] if dry else
             ["model.width=64", "model.fpn_channels=256", "model.fc_dim=1024", "model.mask_conv_dim=256"])
    cfg = load_config(MaskXExperiment, ROOT / "configs" / "maskx_voc_like.yaml", over)
    ds = train_dataset(cfg.data, progress=False)
    batches = [collate([ds[b * i + k] for k in range(b)]).to(device) for i in range(2)]
    torch.manual_seed(0)
    model = build_model(cfg.model, ds.rs.categories).to(device).to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=device.type == "cuda")

    def step(batch) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = sum(v for k, v in model(batch).items() if k.startswith("loss"))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    out = measure(device, step, batches, size["det_warmup"], size["det_steps"], b, peak, deadline)
    return {"model": "Mask R-CNN R50-FPN (omniseg maskx_rcnn_r50_fpn, class-specific masks, FrozenBN)",
            "image_size": size["det_size"], "batch": b, "amp_bf16": amp, "channels_last": True,
            "params_M": sum(p.numel() for p in model.parameters()) / 1e6, **out}


class CropMaskModel:
    """ViT-B/16 on box crops + a deconv mask head (MAL-style box-to-mask; MAL Sec. 3.1-3.3)."""

    @staticmethod
    def build(size: int, dims: tuple[int, int, int]):
        import torch
        from torch import nn

        from omniseg.modeling.backbones.vit import VisionTransformer

        d, depth, heads = dims
        vit = VisionTransformer(img_size=size, patch_size=16, embed_dim=d, depth=depth, num_heads=heads)
        head = nn.Sequential(nn.Conv2d(d, 256, 3, padding=1), nn.GELU(), nn.ConvTranspose2d(256, 256, 2, 2), nn.GELU(),
                             nn.ConvTranspose2d(256, 128, 2, 2), nn.GELU(), nn.Conv2d(128, 1, 1))
        return torch.nn.Sequential(vit, head)

    @staticmethod
    def mil_loss(logits, box_masks):
        """MAL's multiple-instance loss: the max over each row / column of the mask is 1 inside the
        box and 0 outside (MAL Sec. 3.3 'Multiple Instance Learning Loss'), as BCE on the projections.

        Args:
            logits: B x 1 x H x W mask logits; box_masks: B x H x W {0, 1} box occupancy.
        """
        import torch.nn.functional as F

        p = logits[:, 0]
        loss = 0.0
        for dim in (1, 2):
            loss = loss + F.binary_cross_entropy_with_logits(p.amax(dim).float(), box_masks.amax(dim).float())
        return loss


def throughput_vit(device, size: dict, peak: float | None, deadline: float, amp: bool) -> dict:
    import torch
    import torch.nn.functional as F

    s, b = size["vit_size"], size["vit_batch"]
    torch.manual_seed(0)
    model = CropMaskModel.build(s, size["vit_dims"]).to(device).to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.9), fused=device.type == "cuda")
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(2):
        images = torch.randn(b, 3, s, s, generator=g)
        box = torch.zeros(b, s // 4, s // 4)
        for k in range(b):  # the crop holds its box with a random margin (MAL crops with padding)
            x0, y0 = torch.randint(0, s // 16, (2,), generator=g).tolist()
            box[k, y0: s // 4 - y0, x0: s // 4 - x0] = 1
        batches.append((images.to(device).to(memory_format=torch.channels_last), box.to(device)))

    def step(batch) -> None:
        images, box = batch
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(images)
        logits = F.interpolate(logits.float(), size=box.shape[-2:], mode="bilinear", align_corners=False)
        loss = CropMaskModel.mil_loss(logits, box)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    out = measure(device, step, batches, size["vit_warmup"], size["vit_steps"], b, peak, deadline)
    return {"model": f"ViT-B/16 crop model (D={size['vit_dims'][0]}, depth {size['vit_dims'][1]}) + deconv mask "
                     "head, MIL projection loss", "image_size": s, "batch": b, "amp_bf16": amp, "channels_last": True,
            "params_M": sum(p.numel() for p in model.parameters()) / 1e6, **out}


# ------------------------------------------------------------------------------------------ parts 4, 5


def run_jobs(todo: list[dict], command, parallel: int, deadline: float, env: dict) -> dict[str, dict]:
    """Run ``todo`` (a job's "after" names one that must finish first) ``parallel`` at a time; a job
    still running at ``deadline`` is killed. Returns name -> {status, wall_s, log_tail}."""
    status: dict[str, dict] = {}
    running: dict[str, tuple[subprocess.Popen, float, object]] = {}
    while len(status) < len(todo):
        for j in todo:
            if j["name"] in status or j["name"] in running:
                continue
            dep = j.get("after")
            if dep is not None and dep in status and status[dep]["status"] != "done":
                status[j["name"]] = {"status": f"skipped: {dep} {status[dep]['status']}"}
            elif (dep is None or dep in status) and len(running) < parallel:
                folder = Path(j["runs"]) / j["name"]
                folder.mkdir(parents=True, exist_ok=True)
                log = open(folder / "stdout.log", "w")  # noqa: SIM115 -- closed when the process ends
                print(f"[start] {j['name']}", flush=True)
                running[j["name"]] = (subprocess.Popen(command(j) + ["--overwrite"], stdout=log,
                                                       stderr=subprocess.STDOUT, env=env, cwd=ROOT),
                                      time.perf_counter(), log)
        time.sleep(0.2)
        for name, (proc, t0, log) in list(running.items()):
            if proc.poll() is None and time.monotonic() < deadline:
                continue
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
            del running[name]
            j = next(j for j in todo if j["name"] == name)
            folder = Path(j["runs"]) / name
            wall = time.perf_counter() - t0
            state = "done" if proc.returncode == 0 else ("timed out" if time.monotonic() >= deadline
                                                          else f"failed (exit {proc.returncode})")
            status[name] = {"status": state, "wall_s": wall}
            if state == "done":
                (folder / "wall_s.txt").write_text(f"{wall:.1f}")
            else:
                status[name]["log_tail"] = (folder / "stdout.log").read_text(errors="replace")[-2000:]
            print(f"[{state}] {name} in {wall:.0f} s", flush=True)
    return status


def train_env(threads: int) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
            "PYTHONPATH": os.pathsep.join(p for p in [str(ROOT), os.environ.get("PYTHONPATH", "")] if p)}


def maskx_jobs(mode: str, runs: Path, device: str, amp: str) -> tuple[list[dict], SimpleNamespace]:
    import maskx_experiments as mx

    sz = SIZES[mode]
    ns = SimpleNamespace(runs=str(runs), stage1_iters=sz["stage1_iters"], stage2_iters=sz["stage2_iters"],
                         e2e_iters=sz["stage2_iters"], val_images=sz["maskx_val"], train_images=sz["maskx_train"])
    keep = {"detector": "transfer+MLP (cls+box)", mx.slug("voc A->B class-agnostic"): "class-agnostic",
            "oracle": "oracle"}
    extra = WIDTH[mode]["maskx"] + [f"train.device={device}", f"train.amp={amp}",
                                    f"data.num_workers={sz['workers']}"] + (["data.image_size=64"] if mode == "dry" else [])
    todo = [{**j, "runs": str(runs), "row": keep[j["name"]], "overrides": j["overrides"] + extra,
             "config": str(mx.CONFIG)} for j in mx.jobs(ns) if j["name"] in keep]
    return todo, ns


def alp_prepare(mode: str, runs: Path) -> dict:
    """The training world (regenerated: deterministic) and its ALPs: carried (the device has no
    spaCy; checked against the world's narratives) or curated here."""
    sz = SIZES[mode]
    world, alps = runs / "world", runs / "alps"
    omni = [sys.executable, "-m", "omniseg.cli"]
    subprocess.run([*omni, "data", "synth", "--out", str(world), "--num-images", str(sz["alp_train"]), "--seed", "0",
                    "--image-size", "256", "--workers", str(min(8, os.cpu_count() or 1)), "--no-progress"],
                   check=True, cwd=ROOT, env=train_env(1), capture_output=True)
    digest = hashlib.sha256((world / "narratives.jsonl").read_bytes()).hexdigest()
    carried = CARRY / f"alps_{sz['alp_train']}"
    if (carried / "alps.jsonl").exists() and json.loads((carried / "source.json").read_text())["narratives_sha256"] == digest:
        alps.mkdir(parents=True, exist_ok=True)
        for f in ("alps.jsonl", "stats.json"):
            shutil.copy(carried / f, alps / f)
        return {"alps": "carried", "narratives_sha256": digest}
    subprocess.run([*omni, "curate", "alps", str(world / "narratives.jsonl"), "--images", str(world), "--out", str(alps),
                    "--workers", "2", "--no-progress"], check=True, cwd=ROOT, env=train_env(1), capture_output=True)
    return {"alps": "curated here", "narratives_sha256": digest}


def alp_jobs(mode: str, runs: Path, device: str, amp: str) -> tuple[list[dict], SimpleNamespace]:
    import alp_experiments as ax

    sz = SIZES[mode]
    ns = SimpleNamespace(runs=str(runs), iters=sz["alp_iters"], val_images=sz["alp_val"], only=None,
                         rows="fcos_mo_alp,mrcnn_alp", synonym_vocabularies=0)
    todo = []
    for j in ax.jobs(ns):
        extra = WIDTH[mode][j["model"]] + [f"train.device={device}", f"train.amp={amp}",
                                           f"data.num_workers={sz['workers']}", f"text.cache_dir={runs / 'text_cache'}"]
        todo.append({**j, "runs": str(runs), "after": None, "row": j["label"], "overrides": j["overrides"] + extra,
                     "config": str(ax.CONFIGS[j["model"]])})
    return todo, ns


def train_rows(mode: str, runs: Path, device: str, amp: str, deadline: float) -> tuple[dict, dict]:
    """Both tables' runs at once (the ALP world is made while the Mask^X detector trains)."""
    mjobs, mns = maskx_jobs(mode, runs / "maskx", device, amp)
    ajobs, ans = alp_jobs(mode, runs / "alp", device, amp)
    prep = alp_prepare(mode, runs / "alp")

    def command(j: dict) -> list[str]:
        return [sys.executable, "-m", "omniseg.cli", "train", j["config"], *j["overrides"],
                f"train.output_dir={Path(j['runs']) / j['name']}"]

    status = run_jobs(mjobs + ajobs, command, SIZES[mode]["parallel"], deadline, train_env(2))
    return ({"jobs": mjobs, "ns": mns, "status": status}, {"jobs": ajobs, "ns": ans, "status": status, "prepare": prep})


def score_maskx(done: dict[str, dict], ns: SimpleNamespace) -> list[dict]:
    """Mask / box AP on A and B from each run's saved validation predictions (bench/maskx_experiments.py's
    score without its given-box pass, which runs on CPU and would not fit the budget)."""
    import maskx_experiments as mx

    from omniseg.data.formats.coco import read_coco_results
    from omniseg.engine.config import load_config
    from omniseg.evaluation.instance import evaluate_instances
    from omniseg.recipes.data import open_source
    from omniseg.recipes.maskx_rcnn import MaskXExperiment, build_split

    d = load_config(MaskXExperiment, mx.CONFIG, [f"data.val_num_images={ns.val_images}"]).data
    gt, _ = open_source(d.val, d.val_num_images, d.val_seed, d.image_size, progress=False)
    sp = build_split(d, gt.categories)
    groups = {"A": sp.base_ids, "B": sp.novel_ids}
    rows = []
    for name, job in done.items():
        pred = read_coco_results(Path(ns.runs) / name / "val_predictions.json", gt, progress=False)
        m = evaluate_instances(gt, pred, iou_type="segm", groups=groups)
        b = evaluate_instances(gt, pred, iou_type="bbox", groups=groups)
        rows.append({"run": name, "split": "voc A->B", "variant": job["row"], "wall_s": job["wall_s"],
                     "mask_AP_A": m["A/AP"], "mask_AP_B": m["B/AP"], "mask_AP50_B": m["B/AP50"],
                     "box_AP_A": b["A/AP"], "box_AP_B": b["B/AP"]})
    return rows


def score_rows(kind: str, part: dict) -> dict:
    """Score the finished runs (the ALP rows with bench/alp_experiments.py's own scoring)."""
    import alp_experiments as ax

    done = {j["name"]: {**j, "wall_s": part["status"][j["name"]]["wall_s"]} for j in part["jobs"]
            if part["status"].get(j["name"], {}).get("status") == "done"}
    rows = []
    if done:
        rows = score_maskx(done, part["ns"]) if kind == "maskx" else ax.score(done, part["ns"])[0]
    return {"rows": rows, "runs": {j["name"]: {"row": j["row"], **part["status"].get(j["name"], {"status": "not run"}),
                                               "command": f"omniseg train {Path(j['config']).relative_to(ROOT)} "
                                               + " ".join(j["overrides"])} for j in part["jobs"]},
            **({"prepare": part["prepare"]} if "prepare" in part else {})}


# ------------------------------------------------------------------------------------------ driver


def guarded(result: dict, name: str, fn, out_file: Path) -> None:
    t0 = time.perf_counter()
    try:
        result[name] = fn()
    except Exception as e:  # noqa: BLE001 -- one part failing must not lose the others
        result[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
    result[name]["part_wall_s"] = time.perf_counter() - t0
    write(result, out_file)


def write(result: dict, out_file: Path) -> None:
    out_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str))
    tmp.replace(out_file)


def summary(r: dict) -> str:
    lines = [f"GPU run ({r['mode']}): {r.get('total_wall_s', 0):.0f} s of {r['budget_s']:.0f} s"]
    c = r.get("cuda_path", {})
    lines.append(f"  device {c.get('name', c.get('device'))}, torch {c.get('torch')}, torchvision {c.get('torchvision')}; "
                 f"bf16 ok {c.get('amp_bf16', {}).get('ok')}, channels_last ok {c.get('channels_last', {}).get('ok')}, "
                 f"dispatch {c.get('torchvision_dispatch', {}).get('auto_impl')} ok "
                 f"{c.get('torchvision_dispatch', {}).get('ok')}")
    for k in ("throughput_mask_rcnn_r50_fpn", "throughput_vit_b_crop"):
        t = r.get(k, {})
        mfu = f"{t['mfu']:.1%}" if t.get("mfu") is not None else "n/a"
        lines.append(f"  {k}: " + (f"{t['images_per_s']:.1f} img/s, {t['achieved_tflops']:.1f} TFLOP/s, MFU {mfu}"
                                   if "images_per_s" in t else t.get("error", "missing")))
    for k, cols in (("maskx_rows", ("mask_AP_A", "mask_AP_B")), ("alp_rows", ("mask_AP50_base", "mask_AP50_novel"))):
        part = r.get(k, {})
        for row in part.get("rows", []):
            lines.append(f"  {row.get('variant', row.get('row'))} [{row.get('split', '')}]: "
                         + ", ".join(f"{c} {row[c]:.3f}" for c in cols))
        for name, s in part.get("runs", {}).items():
            if s.get("status") != "done":
                lines.append(f"  {name}: {s.get('status')}")
        if "error" in part:
            lines.append(f"  {k}: {part['error']}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on CPU")
    ap.add_argument("--prepare", action="store_true", help="fill bench/gpu/carry/ here (bench/gpu/prepare.py)")
    ap.add_argument("--budget-s", type=float, default=540.0, help="wall-clock budget of the whole run")
    ap.add_argument("--out", default="", help="folder for gpu_run.json (default $OUT, else bench/results)")
    ap.add_argument("--runs", default="", help="folder for the training runs (default: a temporary folder)")
    ap.add_argument("--amp", choices=["bf16", "none"], default="bf16", help="autocast of the timed steps and rows")
    ap.add_argument("--peak-tflops", type=float, default=0.0, help="dense bf16 peak (default: from the device name)")
    ap.add_argument("--iters", default="", help="row iterations, e.g. stage1_iters=800,stage2_iters=300,alp_iters=800")
    ap.add_argument("--parts", default="cuda_path,throughput_mask_rcnn_r50_fpn,throughput_vit_b_crop,rows")
    args = ap.parse_args()
    if args.prepare:
        from prepare import prepare  # bench/gpu/prepare.py

        prepare(SIZES["gpu"]["alp_train"])
        return
    t_start, start = time.perf_counter(), time.monotonic()
    import tempfile

    import torch

    mode = "dry" if args.dry_run else "gpu"
    for item in filter(None, args.iters.split(",")):
        key, _, value = item.partition("=")
        if key not in ("stage1_iters", "stage2_iters", "alp_iters"):
            raise SystemExit(f"--iters: unknown key {key!r} (stage1_iters, stage2_iters, alp_iters)")
        SIZES[mode][key] = int(value)
    if mode == "gpu" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: use --dry-run for the CPU version")
    device = torch.device("cuda" if mode == "gpu" else "cpu")
    torch.set_num_threads(min(8, os.cpu_count() or 1) if mode == "gpu" else 1)
    out_dir = Path(args.out or os.environ.get("OUT") or ROOT / "bench" / "results")
    out_file = out_dir / ("gpu_run.json" if mode == "gpu" else "gpu_run_dry.json")
    runs = Path(args.runs or tempfile.mkdtemp(prefix="omniseg_gpu_runs_"))
    parts = args.parts.split(",")
    result: dict = {"benchmark": "gpu_run", "mode": mode, "budget_s": args.budget_s, "sizes": SIZES[mode],
                    "command": "bash bench/gpu/run.sh " + " ".join(sys.argv[1:]),
                    "machine": f"{platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}"}
    amp = args.amp == "bf16"
    peak = peak_flops(device, args.peak_tflops)
    share = 0.0
    for name, fn in (("cuda_path", lambda _: cuda_path(device, mode == "dry")),
                     ("throughput_mask_rcnn_r50_fpn", lambda d: throughput_mask_rcnn(device, SIZES[mode], peak, d, amp)),
                     ("throughput_vit_b_crop", lambda d: throughput_vit(device, SIZES[mode], peak, d, amp))):
        share += PART_SHARE[name]
        if name in parts:
            guarded(result, name, lambda fn=fn, d=start + share * args.budget_s: fn(d), out_file)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if "rows" in parts:
        rows_deadline = start + (1 - SCORE_RESERVE) * args.budget_s
        trained: dict = {}

        def train() -> dict:
            m, a = train_rows(mode, runs, str(device), args.amp, rows_deadline)
            trained.update(maskx=m, alp=a)
            return {"runs": str(runs)}

        guarded(result, "rows_training", train, out_file)
        for kind in ("maskx", "alp"):
            guarded(result, f"{kind}_rows", lambda kind=kind: score_rows(kind, trained[kind]) if kind in trained
                    else {"error": "training did not start"}, out_file)
    result["total_wall_s"] = time.perf_counter() - t_start
    write(result, out_file)
    print(summary(result))
    print(f"wrote {out_file}")


if __name__ == "__main__":
    main()
