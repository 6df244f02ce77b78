"""Data-parallel training: 2 processes under torchrun (gloo, CPU) against 1 process.

What "the same result" means: DDP averages the gradients of the processes' local
batches, and BatchNorm normalises each local batch on its own. One process that
accumulates the gradients of the same two half-batches (``--accum-steps 2``) computes
the same update, so after training the weights agree to float rounding. A single
process on the whole batch at once (BatchNorm over 2x the images) does not, which the
test also checks, so agreement is not an accident of tiny updates.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tdaf import create_model
from tdaf.engine.checkpoint import load_checkpoint
from tdaf.engine.config import TrainConfig
from tdaf.engine.trainer import Trainer, seed_everything

RUN = dict(model="resnet18_cifar", data="digits", input_size=8, train_subset=32, val_subset=16, batch_size=16,
           epochs=1, lr=0.05, lr_batch=16, seed=0, progress=False, tensorboard=False)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _params(path: Path) -> dict[str, torch.Tensor]:
    ckpt = load_checkpoint(path)
    state = ckpt["state_dict"]
    model = create_model(ckpt["model"]["name"], **ckpt["model"]["kwargs"])
    names = {n for n, _ in model.named_parameters()}
    return {k: v for k, v in state.items() if k in names}


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)




def test_two_processes_match_one_process_on_the_same_global_batch(tmp_path):
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in RUN.items() if k not in ("progress", "tensorboard")]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2",
           "--master-addr=127.0.0.1", f"--master-port={_free_port()}", "-m", "tdaf", "train", *flags,
           "--no-progress", "--no-tensorboard", "--threads=1", f"--out={tmp_path / 'ddp'}"]
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 processes x 1 micro-batches of 8 = global batch 16" in proc.stderr
    # only rank 0 writes: one log line per epoch, one set of files
    assert proc.stderr.count("epoch 1/1: train loss") == 1

    Trainer(TrainConfig.from_dict({**RUN, "accum_steps": 2, "out": str(tmp_path / "accum")})).fit()
    Trainer(TrainConfig.from_dict({**RUN, "out": str(tmp_path / "whole")})).fit()

    ddp, accum, whole = (_params(tmp_path / d / "last.pt") for d in ("ddp", "accum", "whole"))
    seed_everything(0)
    init = {k: v for k, v in create_model("resnet18_cifar", num_classes=10).state_dict().items() if k in ddp}
    moved = _max_diff(ddp, init)
    same = _max_diff(ddp, accum)
    different = _max_diff(ddp, whole)
    assert moved > 1e-2, moved
    assert same < 1e-5, same
    assert different > 100 * same and different > 1e-4, (same, different)
    # the evaluation is sharded over the two processes without double counting
    ddp_ckpt, accum_ckpt = load_checkpoint(tmp_path / "ddp" / "last.pt"), load_checkpoint(tmp_path / "accum" / "last.pt")
    assert ddp_ckpt["meta"]["metrics"]["images"] == 16
    assert ddp_ckpt["history"][-1]["train_loss"] == pytest.approx(accum_ckpt["history"][-1]["train_loss"], abs=1e-5)
