from __future__ import annotations

import json
import random

import numpy as np
import pytest
import safetensors.torch
import torch
from torch import nn

import omniseg.engine.checkpoint as ckpt
from omniseg.engine.checkpoint import (
    CheckpointError,
    capture_rng_state,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_weights,
    load_weights_into,
    optimizer_state_join,
    optimizer_state_split,
    restore_rng_state,
    save_checkpoint,
)
from omniseg.engine.config import TrainConfig
from omniseg.engine.ema import ModelEMA
from omniseg.engine.optim import build_optimizer, build_scheduler


def make(seed: int = 0, optimizer: str = "adamw"):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 5), nn.LayerNorm(5), nn.Linear(5, 2))
    cfg = TrainConfig(optimizer=optimizer, lr=0.05, max_iter=20, warmup_iters=3)
    opt = build_optimizer(model, cfg)
    return model, opt, build_scheduler(opt, cfg)


def train_steps(model, opt, sched, n: int, seed: int = 1, ema: ModelEMA | None = None) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        loss = model(torch.randn(4, 3, generator=g)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if ema is not None:
            ema.update(model)


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_optimizer_state_split_join_continues_identically(kind):
    model, opt, sched = make(optimizer=kind)
    train_steps(model, opt, sched, 3)
    tensors, rest = optimizer_state_split(opt.state_dict())
    json.dumps(rest)  # the non-tensor part must be JSON-able
    assert tensors and all(isinstance(t, torch.Tensor) for t in tensors.values())
    blob = safetensors.torch.save({k: v.contiguous() for k, v in tensors.items()})
    restored = optimizer_state_join(safetensors.torch.load(blob), json.loads(json.dumps(rest)))
    model2, opt2, sched2 = make(seed=5, optimizer=kind)
    model2.load_state_dict(model.state_dict())
    opt2.load_state_dict(restored)
    sched2.load_state_dict(sched.state_dict())
    train_steps(model, opt, sched, 2, seed=9)
    train_steps(model2, opt2, sched2, 2, seed=9)
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)


def test_save_load_round_trip(tmp_path):
    model, opt, sched = make()
    ema = ModelEMA(model, decay=0.9)
    train_steps(model, opt, sched, 4, ema=ema)
    rng = capture_rng_state()
    path = save_checkpoint(
        tmp_path,
        4,
        model=model,
        optimizer=opt,
        scheduler=sched,
        ema=ema,
        data_state={"pos": 17},
        rng_states=[rng],
        config={"train": {"lr": 0.05}},
        extra={"epoch": 2},
    )
    assert path == tmp_path / "step_00000004"
    assert sorted(p.name for p in path.iterdir()) == [
        "config.json",
        "ema.safetensors",
        "model.safetensors",
        "optimizer.safetensors",
        "state.json",
    ]
    assert (tmp_path / "latest").read_text().strip() == "step_00000004"
    assert not list(tmp_path.glob(".tmp-*"))
    model2, opt2, sched2 = make(seed=3)
    ema2 = ModelEMA(model2, decay=0.9)
    state = load_checkpoint(tmp_path, model=model2, optimizer=opt2, scheduler=sched2, ema=ema2)
    assert state["step"] == 4 and state["data"] == {"pos": 17} and state["extra"] == {"epoch": 2}
    assert state["rng"] == [json.loads(json.dumps(rng))]
    assert json.loads((path / "config.json").read_text()) == {"train": {"lr": 0.05}}
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(ema.state_dict().values(), ema2.state_dict().values()):
        assert torch.equal(a, b)
    assert ema2.num_updates == 4 and sched2.state_dict() == {"iter": 4}
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    assert load_weights(path / "model.safetensors").keys() == model.state_dict().keys()
    assert load_weights(tmp_path).keys() == model.state_dict().keys()


def test_keep_last_and_latest_pointer_fallback(tmp_path):
    model, _, _ = make()
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step, model=model, keep=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [3, 4]
    assert latest_checkpoint(tmp_path) == tmp_path / "step_00000004"
    (tmp_path / "latest").write_text("step_00000099\n")  # pointer to a folder that is gone
    assert latest_checkpoint(tmp_path) == tmp_path / "step_00000004"
    (tmp_path / "latest").unlink()
    assert latest_checkpoint(tmp_path) == tmp_path / "step_00000004"
    assert latest_checkpoint(tmp_path / "nothing") is None


def test_crash_during_save_leaves_previous_checkpoint(tmp_path, monkeypatch):
    model, opt, sched = make()
    save_checkpoint(tmp_path, 1, model=model, optimizer=opt, scheduler=sched)
    real = ckpt.atomic_write_json

    def dying(path, obj, indent=None):
        if path.name == "state.json":
            raise KeyboardInterrupt("killed while writing")
        real(path, obj, indent)

    monkeypatch.setattr(ckpt, "atomic_write_json", dying)
    with torch.no_grad():
        model[0].weight.add_(1)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 2, model=model, optimizer=opt, scheduler=sched)
    assert latest_checkpoint(tmp_path) == tmp_path / "step_00000001"
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1]
    assert not list(tmp_path.glob(".tmp-*"))
    # a temp folder left by a hard kill (no cleanup ran) is ignored, then swept by the next save
    (tmp_path / ".tmp-step_00000002-abc").mkdir()
    (tmp_path / ".tmp-step_00000002-abc" / "model.safetensors").write_bytes(b"torn")
    assert latest_checkpoint(tmp_path) == tmp_path / "step_00000001"
    monkeypatch.setattr(ckpt, "atomic_write_json", real)
    save_checkpoint(tmp_path, 2, model=model)
    assert not list(tmp_path.glob(".tmp-*"))
    assert latest_checkpoint(tmp_path) == tmp_path / "step_00000002"


def test_resaving_a_step_replaces_it(tmp_path):
    model, _, _ = make()
    save_checkpoint(tmp_path, 5, model=model)
    with torch.no_grad():
        model[0].bias.fill_(3.0)
    save_checkpoint(tmp_path, 5, model=model)
    assert torch.equal(load_weights(tmp_path)["0.bias"], torch.full((5,), 3.0))


def test_load_errors_name_the_path(tmp_path):
    model, opt, _ = make()
    with pytest.raises(CheckpointError, match=str(tmp_path)):
        load_checkpoint(tmp_path, model=model)
    save_checkpoint(tmp_path, 1, model=model)
    with pytest.raises(CheckpointError, match="has no optimizer state"):
        load_checkpoint(tmp_path, model=model, optimizer=opt)
    other = nn.Linear(3, 2)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: does not match the model"):
        load_checkpoint(tmp_path, model=other)
    (tmp_path / "step_00000001" / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match=r"model\.safetensors: cannot read checkpoint"):
        load_checkpoint(tmp_path, model=model)
    (tmp_path / "step_00000001" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model\.safetensors: missing \(incomplete"):
        load_checkpoint(tmp_path, model=model)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: missing \(incomplete"):
        load_weights(tmp_path)


def test_rng_state_round_trip():
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.randn()  # leaves a cached gaussian in the NumPy state
    state = json.loads(json.dumps(capture_rng_state()))  # through JSON, as on disk
    first = (random.random(), np.random.randn(3).tolist(), torch.rand(3).tolist())
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    restore_rng_state(state)
    assert (random.random(), np.random.randn(3).tolist(), torch.rand(3).tolist()) == first


def test_load_weights_from_foreign_pth(tmp_path):
    sd = nn.Linear(2, 3).state_dict()
    torch.save({"model": sd, "epoch": 3}, tmp_path / "w.pth")
    got = load_weights(tmp_path / "w.pth")
    assert got.keys() == sd.keys() and all(torch.equal(got[k], sd[k]) for k in sd)
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, tmp_path / "ddp.pt")
    assert load_weights(tmp_path / "ddp.pt").keys() == sd.keys()  # nesting and DDP prefix undone
    torch.save({"a": [1, 2]}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"bad\.pth: no tensors found"):
        load_weights(tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"missing\.pth: checkpoint file not found"):
        load_weights(tmp_path / "missing.pth")
    (tmp_path / "w.npz").write_bytes(b"x")
    with pytest.raises(CheckpointError, match=r"w\.npz: unknown checkpoint type"):
        load_weights(tmp_path / "w.npz")


def test_one_checkpoint_error_and_one_reader():
    """Training checkpoints and pretrained weights share the error class and the file reader."""
    from omniseg.modeling import weights
    from omniseg.utils import weights_io

    assert CheckpointError is weights.CheckpointError is weights_io.CheckpointError
    assert issubclass(CheckpointError, RuntimeError) and issubclass(CheckpointError, ValueError)
    assert ckpt.read_weights_file is weights.read_weights_file is weights_io.read_weights_file


def test_weights_of_another_model_name_the_first_mismatched_tensor(tmp_path):
    model, _, _ = make()
    save_checkpoint(tmp_path, 1, model=model)
    wider = nn.Sequential(nn.Linear(3, 7), nn.LayerNorm(7), nn.Linear(7, 2))
    weights = tmp_path / "step_00000001" / "model.safetensors"
    for load in (lambda: load_checkpoint(tmp_path, model=wider), lambda: load_weights_into(wider, weights)):
        with pytest.raises(CheckpointError, match=r"step_00000001/model\.safetensors: does not match the model: "
                                                  r"0\.weight is \(5, 3\) in the file but \(7, 3\) in the model"):
            load()
    renamed = nn.Sequential(nn.Linear(3, 5), nn.LayerNorm(5), nn.Linear(5, 2), nn.Linear(2, 2))
    with pytest.raises(CheckpointError, match=r"step_00000001/model\.safetensors: .*: 2 model tensors missing \(first: 3\.weight\)"):
        load_weights_into(renamed, tmp_path)
    load_weights_into(model, tmp_path)  # the right model loads


@pytest.mark.parametrize("content", [b'{"step": 1, "optim', b"\xff\xfe", b"[1, 2]", b'{"step": "1"}'])
def test_damaged_state_json_is_a_checkpoint_error(tmp_path, content):
    model, _, _ = make()
    step = save_checkpoint(tmp_path, 1, model=model)
    (step / "state.json").write_bytes(content)
    with pytest.raises(CheckpointError, match=r"step_00000001/state\.json: damaged checkpoint state"):
        load_checkpoint(tmp_path, model=model)


def test_damaged_latest_pointer_falls_back_to_the_newest_folder(tmp_path):
    model, _, _ = make()
    save_checkpoint(tmp_path, 1, model=model)
    save_checkpoint(tmp_path, 2, model=model)
    (tmp_path / "latest").write_bytes(b"\xff\x00")
    assert latest_checkpoint(tmp_path).name == "step_00000002"
