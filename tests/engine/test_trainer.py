from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from omniseg.engine.checkpoint import CheckpointError, latest_checkpoint, list_checkpoints, load_weights
from omniseg.engine.config import ConfigError, TrainConfig
from omniseg.engine.logging import read_metric_log
from omniseg.engine.optim import build_optimizer, build_scheduler
from omniseg.engine.trainer import (
    NonFiniteLossError,
    Trainer,
    move_to_device,
    resolve_device,
    seed_everything,
    total_loss,
)

HERE = Path(__file__).parent
REPO = HERE.parent.parent
_spec = importlib.util.spec_from_file_location("omniseg_engine_tests_tiny_run", HERE / "tiny_run.py")
tiny_run = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = tiny_run  # dataclasses look the module up while decorating
_spec.loader.exec_module(tiny_run)


@pytest.fixture(autouse=True)
def _restore_determinism():
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


def make_trainer(tmp_path, data=None, model=None, **overrides) -> Trainer:
    cfg = TrainConfig(
        output_dir=str(tmp_path), max_iter=20, lr=0.05, log_period=1, checkpoint_period=0, progress=False
    )
    for k, v in overrides.items():
        setattr(cfg, k, v)
    seed_everything(0)
    model = model or tiny_run.TinyModel(dropout=0.0)
    opt = build_optimizer(model, cfg)
    return Trainer(model, opt, build_scheduler(opt, cfg), data or tiny_run.RandomBatches(0), cfg)


def test_total_loss_sums_only_loss_terms():
    losses = {"loss_a": torch.tensor(1.5), "loss_b": torch.tensor([0.25, 0.25]), "acc": torch.tensor(100.0)}
    assert total_loss(losses).item() == 2.0
    with pytest.raises(ValueError, match="no loss terms"):
        total_loss({"acc": torch.tensor(1.0)})


def test_training_reduces_loss_and_logs_every_step(tmp_path):
    trainer = make_trainer(tmp_path, max_iter=40, warmup_iters=5)
    result = trainer.train()
    assert result["step"] == 40
    log = read_metric_log(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in log] == list(range(1, 41))
    for r in log:
        assert r["loss"] == pytest.approx(r["loss_mse"] + r["loss_l1"], rel=1e-6)  # "max_err" not summed
        assert "max_err" in r and r["eta_s"] >= 0
    first = sum(r["loss"] for r in log[:5]) / 5
    last = sum(r["loss"] for r in log[-5:]) / 5
    assert last < 0.5 * first, (first, last)
    assert log[0]["lr"] == pytest.approx(0.05 * 0.001)  # warm-up starts at warmup_factor
    assert (tmp_path / "config.yaml").exists()


class NaNAt(nn.Module):
    """Linear regression whose "loss_b" term becomes NaN from update ``bad_step`` on."""

    def __init__(self, bad_step: int):
        super().__init__()
        self.lin, self.bad_step, self.calls = nn.Linear(4, 1), bad_step, 0

    def forward(self, batch):
        self.calls += 1
        err = self.lin(batch["x"]).squeeze(-1) - batch["y"]
        b = err.abs().mean() * (float("nan") if self.calls >= self.bad_step else 1.0)
        return {"loss_a": (err**2).mean(), "loss_b": b}


def test_nan_loss_stops_with_step_and_term_and_no_checkpoint(tmp_path):
    trainer = make_trainer(tmp_path, model=NaNAt(bad_step=3), checkpoint_period=1)
    with pytest.raises(NonFiniteLossError, match=r"step 3 .*loss_b=nan") as info:
        trainer.train()
    message = str(info.value)
    assert "loss_a=" not in message  # only the non-finite terms are named
    assert "step_00000002" in message  # and where the last good checkpoint is
    assert "\n" not in message and message.endswith("set train.clip_grad_norm (e.g. 1.0)")  # one line, a hint
    assert [s for s, _ in list_checkpoints(tmp_path / "checkpoints")] == [1, 2]
    assert latest_checkpoint(tmp_path / "checkpoints").name == "step_00000002"
    assert all(torch.isfinite(v).all() for v in load_weights(tmp_path / "checkpoints").values())


def test_nan_loss_before_any_checkpoint_says_so(tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"step 1 .*loss_b=nan.*no checkpoint written yet.*train\.lr"):
        make_trainer(tmp_path, model=NaNAt(bad_step=1)).train()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("spec", ["cuda", "cuda:0"])
def test_cuda_device_without_cuda_is_a_config_error(spec):
    with pytest.raises(ConfigError, match=rf"train\.device: '{spec}', but CUDA is not available"):
        resolve_device(spec)


def test_unknown_device_is_a_config_error():
    with pytest.raises(ConfigError, match=r"train\.device: 'gpu' is not a device"):
        resolve_device("gpu")
    assert resolve_device("cpu") == torch.device("cpu")


def test_gradient_clipping_matches_manual_update(tmp_path):
    model = nn.Linear(4, 1)
    trainer = make_trainer(
        tmp_path, model=model, clip_grad_norm=0.01, momentum=0.0, weight_decay=0.0, schedule="constant"
    )
    batch = tiny_run.make_batch(0, 0)
    ref = nn.Linear(4, 1)
    ref.load_state_dict(model.state_dict())

    class Wrap(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, b):
            return {"loss": ((self.m(b["x"]).squeeze(-1) - b["y"]) ** 2).mean()}

    trainer.model = Wrap(model)
    values = trainer.run_step(batch)
    loss = ((ref(batch["x"]).squeeze(-1) - batch["y"]) ** 2).mean()
    grads = torch.autograd.grad(loss, list(ref.parameters()))
    norm = torch.sqrt(sum((g**2).sum() for g in grads))
    assert values["grad_norm"] == pytest.approx(norm.item(), rel=1e-5)
    scale = min(1.0, 0.01 / (norm.item() + 1e-6))
    for p_new, p_old, g in zip(model.parameters(), ref.parameters(), grads):
        torch.testing.assert_close(p_new, p_old - 0.05 * g * scale)


class DtypeProbe(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 1)
        self.seen: list[torch.dtype] = []

    def forward(self, batch):
        out = self.lin(batch["x"])
        self.seen.append(out.dtype)
        return {"loss": ((out.float().squeeze(-1) - batch["y"]) ** 2).mean()}


def test_bf16_autocast_on_cpu_and_fp16_refused(tmp_path):
    probe = DtypeProbe()
    trainer = make_trainer(tmp_path, model=probe, amp="bf16", max_iter=3)
    trainer.train()
    assert probe.seen == [torch.bfloat16] * 3
    assert probe.lin.weight.dtype == torch.float32  # master weights stay fp32
    with pytest.raises(ValueError, match="fp16.*CUDA"):
        make_trainer(tmp_path, amp="fp16")


def test_eval_callback_periodic_and_on_ema(tmp_path):
    calls = []

    def eval_fn(m):
        calls.append(m)
        assert not m.training
        return {"mae": 1.0}

    trainer = make_trainer(tmp_path, max_iter=10, eval_period=4, ema_decay=0.9, eval_ema=True)
    trainer.eval_fn = eval_fn
    result = trainer.train()
    assert len(calls) == 3 and all(m is trainer.ema.module for m in calls)  # steps 4, 8, end
    assert result["eval"] == {"mae": 1.0}
    evals = [r for r in read_metric_log(tmp_path / "metrics.jsonl") if "eval/mae" in r]
    assert [r["step"] for r in evals] == [4, 8, 10]
    assert trainer.model.training  # back in train mode


class FiniteData:
    def __init__(self, n: int):
        self.n, self.epochs = n, []

    def set_epoch(self, e: int) -> None:
        self.epochs.append(e)

    def __iter__(self):
        return (tiny_run.make_batch(1, i) for i in range(self.n))


def test_finite_data_is_reiterated_with_epochs(tmp_path):
    data = FiniteData(3)
    make_trainer(tmp_path, data=data, max_iter=7).train()
    assert data.epochs == [0, 1, 2]
    with pytest.raises(RuntimeError, match="no batches"):
        make_trainer(tmp_path, data=FiniteData(0), max_iter=1).train()


def test_move_to_device_nested():
    class Box:
        def __init__(self):
            self.moved_to = None

        def to(self, device):
            self.moved_to = device
            return self

    batch = {"a": torch.ones(2), "b": [torch.zeros(1), ("x", Box())], "c": 3}
    out = move_to_device(batch, torch.device("cpu"))
    assert torch.equal(out["a"], torch.ones(2)) and out["c"] == 3 and out["b"][1][0] == "x"
    assert out["b"][1][1].moved_to == torch.device("cpu") and isinstance(out["b"][1], tuple)


class CrashingBatches(tiny_run.RandomBatches):
    def __init__(self, seed: int, crash_at: int):
        super().__init__(seed)
        self.crash_at = crash_at

    def __iter__(self):
        for batch in super().__iter__():
            if self.pos > self.crash_at:
                raise KeyboardInterrupt("simulated crash")
            yield batch


def run_losses(out: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_metric_log(out / "metrics.jsonl") if "loss" in r]


def test_resume_in_process_is_bitwise_equal_to_uninterrupted(tmp_path):
    common = [
        "train.max_iter=12",
        "train.checkpoint_period=3",
        "train.ema_decay=0.8",
        "train.optimizer=adamw",
    ]
    ref = tiny_run.build(tmp_path / "ref", common)
    ref.train()
    crashed = tiny_run.build(tmp_path / "run", common)
    crashed.data = CrashingBatches(0, crash_at=7)
    with pytest.raises(KeyboardInterrupt):
        crashed.train()
    assert latest_checkpoint(tmp_path / "run" / "checkpoints").name == "step_00000006"
    resumed = tiny_run.build(tmp_path / "run", common)
    torch.manual_seed(1234)  # disturb the RNG: resume must restore it
    assert resumed.resume()
    assert resumed.step == 6 and resumed.data.pos == 6
    resumed.train()
    assert run_losses(tmp_path / "run") == run_losses(tmp_path / "ref")  # steps 1..12 once, same values
    for k, v in ref.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    for k, v in ref.ema.state_dict().items():
        assert torch.equal(v, resumed.ema.state_dict()[k]), k


def test_kill_9_mid_run_then_resume(tmp_path):
    """A real crash: SIGKILL a training subprocess after its first checkpoint, resume it."""
    common = ["train.max_iter=30", "train.checkpoint_period=10", "train.ema_decay=0.9"]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "tiny_run.py"), str(run), "--sleep", "0.1", *common],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not (run / "checkpoints" / "latest").exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no checkpoint within 60 s"
            time.sleep(0.02)
        time.sleep(0.25)  # a few steps past the checkpoint
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL  # killed, not finished
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    killed_at = max(r["step"] for r in read_metric_log(run / "metrics.jsonl"))
    saved = int(latest_checkpoint(run / "checkpoints").name.split("_")[1])
    assert saved in (10, 20) and saved < 30 and killed_at < 30

    tiny_run.main([str(run), "--resume", *common])  # resume in this process
    tiny_run.main([str(tmp_path / "ref"), *common])  # uninterrupted reference
    resumed, ref = run_losses(run), run_losses(tmp_path / "ref")
    assert [s for s, _ in resumed] == list(range(1, 31))  # continuous: every step once
    assert resumed == ref  # deterministic mode: bitwise the same trajectory
    a, b = load_weights(run / "checkpoints"), load_weights(tmp_path / "ref" / "checkpoints")
    assert all(torch.equal(a[k], b[k]) for k in b)


class WithTeacher(nn.Module):
    """A model owning an EMA teacher used inside ``forward`` (MAL's teacher: the method contract).
    The teacher is a frozen copy updated from the student at the start of each training forward."""

    def __init__(self, decay: float = 0.5):
        super().__init__()
        torch.manual_seed(0)
        self.student = tiny_run.TinyModel(dropout=0.0)
        self.teacher = tiny_run.TinyModel(dropout=0.0)
        self.teacher.load_state_dict(self.student.state_dict())
        self.teacher.requires_grad_(False)
        self.decay = decay

    def forward(self, batch):
        if self.training:
            with torch.no_grad():
                for t, s in zip(self.teacher.parameters(), self.student.parameters()):
                    t.mul_(self.decay).add_(s, alpha=1 - self.decay)
        losses = self.student(batch)
        with torch.no_grad():
            target = self.teacher.fc2(torch.relu(self.teacher.fc1(batch["x"]))).squeeze(-1)
        pred = self.student.fc2(torch.relu(self.student.fc1(batch["x"]))).squeeze(-1)
        return {**losses, "loss_distill": ((pred - target) ** 2).mean()}


def test_a_model_owning_an_ema_teacher_trains_checkpoints_and_resumes_exactly(tmp_path):
    whole = make_trainer(tmp_path / "a", model=WithTeacher(), max_iter=6, checkpoint_period=3, schedule="constant")
    assert all("teacher" not in n for n, p in whole.model.named_parameters() if p.requires_grad)
    n_opt = sum(len(g["params"]) for g in whole.optimizer.param_groups)
    assert n_opt == len(list(whole.model.student.parameters()))  # the teacher is not optimized
    before = {k: v.clone() for k, v in whole.model.teacher.state_dict().items()}
    whole.train()
    final = load_weights(tmp_path / "a" / "checkpoints")
    assert any(not torch.equal(final[f"teacher.{k}"], v) for k, v in before.items())  # it moved, via forward

    first = make_trainer(tmp_path / "b", model=WithTeacher(), max_iter=3, checkpoint_period=3, schedule="constant")
    first.train()
    resumed = make_trainer(tmp_path / "b", model=WithTeacher(), max_iter=6, checkpoint_period=3, schedule="constant")
    assert resumed.resume()
    resumed.train()
    again = load_weights(tmp_path / "b" / "checkpoints")
    assert set(again) == set(final)
    for k in final:
        assert torch.equal(again[k], final[k]), k


def _damage_model(step: Path) -> None:
    data = (step / "model.safetensors").read_bytes()
    (step / "model.safetensors").write_bytes(data[: len(data) // 2])  # truncated


def _damage_state(step: Path) -> None:
    (step / "state.json").write_text('{"step": 6, "optim')  # torn JSON


@pytest.mark.parametrize("damage", [_damage_model, _damage_state])
def test_resume_falls_back_from_a_damaged_latest_checkpoint(tmp_path, capsys, damage):
    common = ["train.max_iter=8", "train.checkpoint_period=3", "train.keep_checkpoints=3", "train.schedule=constant"]
    ref = tiny_run.build(tmp_path / "ref", common)
    ref.train()
    run = tmp_path / "run"
    tiny_run.build(run, ["train.max_iter=6", *common[1:]]).train()  # checkpoints at 3 and 6
    bad = latest_checkpoint(run / "checkpoints")
    assert bad.name == "step_00000006"
    damage(bad)
    resumed = tiny_run.build(run, common)
    assert resumed.resume()
    err = capsys.readouterr().err
    assert f"skipping damaged checkpoint {bad}" in err and "step_00000003" in err
    assert resumed.step == 3
    resumed.train()  # replays steps 4..8 exactly
    for k, v in ref.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    assert run_losses(run) == run_losses(tmp_path / "ref")


def test_resume_with_every_checkpoint_damaged_is_an_error(tmp_path):
    run = tmp_path / "run"
    tiny_run.build(run, ["train.max_iter=2", "train.checkpoint_period=1"]).train()
    for _, step in list_checkpoints(run / "checkpoints"):
        _damage_model(step)
    with pytest.raises(CheckpointError, match=r"step_00000001/model\.safetensors: cannot read checkpoint"):
        tiny_run.build(run, ["train.max_iter=2"]).resume()


def test_checkpoint_period_0_saves_only_the_final_step(tmp_path):
    make_trainer(tmp_path, max_iter=3, checkpoint_period=0).train()
    assert [s for s, _ in list_checkpoints(tmp_path / "checkpoints")] == [3]


def test_resume_into_another_model_is_a_mismatch_not_damage(tmp_path, capsys):
    from omniseg.engine.checkpoint import CheckpointMismatchError

    make_trainer(tmp_path, max_iter=4, checkpoint_period=2, keep_checkpoints=0).train()  # steps 2 and 4
    other = make_trainer(tmp_path, model=nn.Linear(3, 1))
    with pytest.raises(CheckpointMismatchError, match="step_00000004.*does not match the model"):
        other.resume()
    assert "skipping damaged checkpoint" not in capsys.readouterr().err  # no fallback to step 2


@pytest.mark.parametrize("native", [False, True])
def test_bf16_on_a_cpu_without_native_kernels_is_warned_once(tmp_path, monkeypatch, capsys, native):
    from omniseg.engine import precision

    monkeypatch.setattr(precision, "cpu_bf16_native", lambda: native)
    make_trainer(tmp_path, amp="bf16", max_iter=1)
    make_trainer(tmp_path / "fp32", amp="none", max_iter=1)
    warned = [ln for ln in capsys.readouterr().err.splitlines() if "native bf16" in ln]
    assert len(warned) == (0 if native else 1)
