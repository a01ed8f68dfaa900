"""DistributedDataParallel on the CPU: two gloo processes train the overfit model in step."""

from __future__ import annotations

import os
import socket

import torch
import torch.multiprocessing as mp

from cvloc.config import load_config
from cvloc.engine.builders import build_model
from cvloc.engine.distributed import cleanup, init_distributed
from cvloc.train import Trainer

WORLD_SIZE = 2


def overrides(out_dir):
    # 4 pairs, batch 2 per rank: one step per epoch; one validation pair per rank.
    return [f"train.out_dir={out_dir}", "train.epochs=2", "train.device=cpu"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD_SIZE),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    info = init_distributed("cpu")
    try:
        trainer = Trainer(load_config("overfit", overrides(out_dir)), info)
        initial = {k: v.clone() for k, v in trainer.unwrapped.state_dict().items()}
        result = trainer.fit()
        torch.save(initial, os.path.join(out_dir, f"initial{rank}.pt"))
        torch.save(result.model.state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        cleanup(info)


def test_two_gloo_ranks_end_with_identical_trained_weights(tmp_path):
    # Forked workers inherit the imported modules: much faster to start than spawned ones.
    mp.start_processes(
        _worker,
        args=(_free_port(), str(tmp_path)),
        nprocs=WORLD_SIZE,
        join=True,
        start_method="fork",
    )
    trained = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    initial = [torch.load(tmp_path / f"initial{r}.pt", weights_only=True) for r in (0, 1)]
    for key, value in trained[0].items():
        assert torch.equal(value, trained[1][key]), key
        assert torch.equal(initial[0][key], initial[1][key]), key
    params = dict(build_model(load_config("overfit").model).named_parameters())
    unchanged = [k for k in params if torch.equal(trained[0][k], initial[0][k])]
    assert not unchanged, unchanged
    # Only rank 0 writes checkpoints and TensorBoard events.
    assert (tmp_path / "last.pt").is_file()
    assert len(list((tmp_path / "tensorboard").iterdir())) == 1
