"""The prepared GPU run's dry run (bench/gpu/run.py --dry-run): the same code at tiny size on CPU
writes a JSON with every section, and every row trains and is scored.

The full dry run starts five training processes (two after the Mask^X detector) and takes about a
minute of CPU time, so it is marked slow (``make test-slow``); the checks and throughput parts run
in the default suite."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def dry_run(tmp_path: Path, *extra: str) -> tuple[dict, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("OUT", None)
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu" / "run.py"), "--dry-run", "--out", str(tmp_path),
                          "--runs", str(tmp_path / "runs"), *extra], capture_output=True, text=True, env=env,
                         timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads((tmp_path / "gpu_run_dry.json").read_text()), res.stdout


def test_dry_run_checks_and_throughput(tmp_path):
    r, out = dry_run(tmp_path, "--parts", "cuda_path,throughput_mask_rcnn_r50_fpn,throughput_vit_b_crop")
    assert r["cuda_path"]["amp_bf16"]["ok"] and r["cuda_path"]["channels_last"]["ok"]
    assert r["cuda_path"]["torchvision_dispatch"]["auto_impl"] in ("torch", "torchvision")
    for part in ("throughput_mask_rcnn_r50_fpn", "throughput_vit_b_crop"):
        t = r[part]
        assert "error" not in t, t.get("traceback")
        assert t["images_per_s"] > 0 and t["flops_per_step"] > 0 and t["mfu"] is None  # no bf16 peak on CPU
    assert "rows_training" not in r and "GPU run (dry)" in out


@pytest.mark.slow
def test_dry_run_writes_every_section(tmp_path):
    r, out = dry_run(tmp_path)
    for part in ("cuda_path", "throughput_mask_rcnn_r50_fpn", "throughput_vit_b_crop", "rows_training",
                 "maskx_rows", "alp_rows"):
        assert part in r and "error" not in r[part], (part, r.get(part, {}).get("traceback"))
    assert r["cuda_path"]["amp_bf16"]["ok"] and r["cuda_path"]["channels_last"]["ok"]
    for part in ("throughput_mask_rcnn_r50_fpn", "throughput_vit_b_crop"):
        t = r[part]
        assert t["images_per_s"] > 0 and t["flops_per_step"] > 0 and t["mfu"] is None  # no bf16 peak on CPU
    runs = {**r["maskx_rows"]["runs"], **r["alp_rows"]["runs"]}
    assert set(runs) == {"detector", "voc_a__b_class_agnostic", "oracle", "fcos_mo_alp", "mrcnn_alp"}
    assert all(s["status"] == "done" for s in runs.values()), runs
    assert len(r["maskx_rows"]["rows"]) == 3 and len(r["alp_rows"]["rows"]) == 2
    assert r["total_wall_s"] < r["budget_s"]
    assert "GPU run (dry)" in out
