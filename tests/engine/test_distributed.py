from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch

from omniseg.engine.distributed import (
    all_gather_object,
    any_rank_true,
    barrier,
    broadcast_object,
    get_rank,
    get_world_size,
    init_distributed,
    is_main_process,
    reduce_mean,
    shard_indices,
    wrap_ddp,
)
from omniseg.engine.logging import read_metric_log
from omniseg.engine.trainer import total_loss

HERE = Path(__file__).parent
REPO = HERE.parent.parent
_spec = importlib.util.spec_from_file_location("omniseg_engine_tests_tiny_run", HERE / "tiny_run.py")
tiny_run = sys.modules.get(_spec.name) or importlib.util.module_from_spec(_spec)
if _spec.name not in sys.modules:
    sys.modules[_spec.name] = tiny_run
    _spec.loader.exec_module(tiny_run)


def reference_shards(n: int, world: int) -> list[list[int]]:
    shards: list[list[int]] = [[] for _ in range(world)]
    for i in range(n):
        shards[i % world].append(i)  # deal like cards
    return shards


@pytest.mark.parametrize(("n", "world"), [(0, 1), (1, 2), (7, 3), (8, 2), (5, 8)])
def test_shard_indices_disjoint_and_covering(n, world):
    shards = [shard_indices(n, r, world) for r in range(world)]
    assert shards == reference_shards(n, world)
    flat = sorted(i for s in shards for i in s)
    assert flat == list(range(n))


def test_shard_indices_hand_values_and_errors():
    assert shard_indices(7, 1, 3) == [1, 4]
    with pytest.raises(ValueError, match="rank"):
        shard_indices(4, 2, 2)
    with pytest.raises(ValueError, match="n must be"):
        shard_indices(-1, 0, 1)


def test_single_process_fallbacks(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_distributed() is False
    assert (get_rank(), get_world_size(), is_main_process()) == (0, 1, True)
    assert all_gather_object({"a": 1}) == [{"a": 1}]
    assert broadcast_object(5) == 5 and any_rank_true(True) and not any_rank_true(False)
    assert reduce_mean({"loss": 2.0}) == {"loss": 2.0}
    barrier()
    model = torch.nn.Linear(2, 2)
    assert wrap_ddp(model, torch.device("cpu")) is model
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(RuntimeError, match="RANK is not set"):
        init_distributed()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo(tmp_path):
    """Two ranks launched like torchrun (env:// rendezvous), gloo on CPU."""
    port = free_port()
    procs = []
    for rank in range(2):
        env = dict(
            os.environ,
            PYTHONPATH=str(REPO),
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE="2",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            OMP_NUM_THREADS="1",
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, str(HERE / "ddp_worker.py"), str(tmp_path)],
                env=env,
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
        )
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=90)[0].decode())
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], "\n".join(outputs)

    # gradients: DDP on two halves == one process on the whole batch
    torch.manual_seed(0)
    model = tiny_run.TinyModel(dropout=0.0)
    batch = tiny_run.make_batch(3, 0, batch_size=8)
    total_loss(model(batch)).backward()
    g0 = safetensors.torch.load_file(str(tmp_path / "grads_rank0.safetensors"))
    g1 = safetensors.torch.load_file(str(tmp_path / "grads_rank1.safetensors"))
    for name, p in model.named_parameters():
        assert torch.equal(g0[name], g1[name]), name  # all-reduced: identical on both ranks
        torch.testing.assert_close(g0[name], p.grad, rtol=1e-5, atol=1e-6, msg=name)

    # gathered predictions: every rank sees both ranks' lists, in rank order
    expected = [[{"image_id": i, "rank": r} for i in shard_indices(8, r, 2)] for r in range(2)]
    for r in range(2):
        assert json.loads((tmp_path / f"gathered_rank{r}.json").read_text()) == expected

    # trainer: weights in sync, one log and one set of checkpoints written by rank 0
    p0 = safetensors.torch.load_file(str(tmp_path / "params_rank0.safetensors"))
    p1 = safetensors.torch.load_file(str(tmp_path / "params_rank1.safetensors"))
    assert all(torch.equal(p0[k], p1[k]) for k in p0)
    log = read_metric_log(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3, 4]
    evals = [r for r in log if "eval/n_images" in r]
    assert len(evals) == 1 and evals[0]["eval/n_images"] == 8  # both ranks' shards gathered
    final = tiny_run.TinyModel(dropout=0.0)
    final.load_state_dict(p0)
    final.eval()
    with torch.no_grad():
        mse = [float(final(tiny_run.make_batch(7, i, batch_size=2))["loss_mse"]) for i in range(8)]
    assert evals[0]["eval/mse"] == pytest.approx(sum(mse) / 8, rel=1e-5)
    state = json.loads((tmp_path / "run" / "checkpoints" / "step_00000004" / "state.json").read_text())
    assert len(state["rng"]) == 2 and state["rng"][0] != state["rng"][1]  # per-rank RNG kept
    assert state["extra"]["data_states"] == [{"pos": 4}, {"pos": 4}] and state["extra"]["world_size"] == 2

    # a NaN on rank 1 stops both ranks at the same step
    n0 = json.loads((tmp_path / "nan_rank0.json").read_text())
    n1 = json.loads((tmp_path / "nan_rank1.json").read_text())
    assert "step 2 (rank 1): loss_l1=inf" in n1["message"] and n1["step"] == 1
    assert "step 2 (rank 0): on another rank" in n0["message"] and n0["step"] == 1
