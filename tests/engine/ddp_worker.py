"""One rank of the 2-process gloo test (launched by test_distributed.py the way torchrun would).

``RANK=r WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=p python ddp_worker.py OUT_DIR``
writes per-rank results under OUT_DIR for the test to compare.
"""

from __future__ import annotations

import sys
from pathlib import Path

import safetensors.torch
import tiny_run  # next to this script
import torch

from omniseg.engine.config import TrainConfig
from omniseg.engine.distributed import (
    all_gather_object,
    barrier,
    destroy_distributed,
    get_rank,
    get_world_size,
    init_distributed,
    is_main_process,
    shard_indices,
    wrap_ddp,
)
from omniseg.engine.optim import build_optimizer, build_scheduler
from omniseg.engine.trainer import NonFiniteLossError, Trainer, seed_everything, total_loss
from omniseg.utils.atomic import atomic_write_bytes, atomic_write_json


class NaNOnRank1(tiny_run.TinyModel):
    def forward(self, batch):
        out = super().forward(batch)
        self.calls = getattr(self, "calls", 0) + 1
        if get_rank() == 1 and self.calls == 2:
            out["loss_l1"] = out["loss_l1"] * float("inf")
        return out


def main(out: Path) -> None:
    assert init_distributed(backend="gloo", timeout_s=60)
    rank, world = get_rank(), get_world_size()
    assert world == 2 and is_main_process() == (rank == 0)

    # 1) DDP gradients on this rank's half of one global batch
    torch.manual_seed(0)
    model = tiny_run.TinyModel(dropout=0.0)
    ddp = wrap_ddp(model, torch.device("cpu"))
    batch = tiny_run.make_batch(3, 0, batch_size=8)
    idx = shard_indices(8, rank, world)
    total_loss(ddp({k: v[idx] for k, v in batch.items()})).backward()
    grads = {n: p.grad.contiguous() for n, p in model.named_parameters()}
    atomic_write_bytes(out / f"grads_rank{rank}.safetensors", safetensors.torch.save(grads))

    # 2) evaluation-style gather of per-rank predictions
    preds = [{"image_id": i, "rank": rank} for i in idx]
    gathered = all_gather_object(preds)
    atomic_write_json(out / f"gathered_rank{rank}.json", gathered)

    # 3) a short Trainer run: rank-0-only logging and checkpoints, ranks stay in sync
    cfg = TrainConfig(
        output_dir=str(out / "run"), max_iter=4, checkpoint_period=2, log_period=1, progress=False, lr=0.05
    )
    seed_everything(rank, deterministic=True)
    model = tiny_run.TinyModel()
    opt = build_optimizer(model, cfg)

    def eval_fn(m: torch.nn.Module) -> dict[str, float]:
        # each rank scores its shard of 8 "images"; predictions are gathered on every rank
        local = [
            (i, float(m(tiny_run.make_batch(7, i, batch_size=2))["loss_mse"]))
            for i in shard_indices(8, rank, 2)
        ]
        merged = sorted(p for part in all_gather_object(local) for p in part)
        return {"n_images": len(merged), "mse": sum(v for _, v in merged) / len(merged)}

    data = tiny_run.RandomBatches(seed=10 + rank)
    trainer = Trainer(model, opt, build_scheduler(opt, cfg), data, cfg, eval_fn=eval_fn)
    trainer.train()
    params = {n: p.detach().contiguous() for n, p in model.named_parameters()}
    atomic_write_bytes(out / f"params_rank{rank}.safetensors", safetensors.torch.save(params))

    # 4) a non-finite loss on rank 1 only stops both ranks (no hang in backward)
    cfg2 = TrainConfig(output_dir=str(out / "nan"), max_iter=4, checkpoint_period=0, progress=False)
    model = NaNOnRank1()
    opt = build_optimizer(model, cfg2)
    trainer = Trainer(model, opt, build_scheduler(opt, cfg2), tiny_run.RandomBatches(seed=rank), cfg2)
    try:
        trainer.train()
        message = "no error"
    except NonFiniteLossError as e:
        message = str(e)
    atomic_write_json(out / f"nan_rank{rank}.json", {"message": message, "step": trainer.step})
    barrier()
    destroy_distributed()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
