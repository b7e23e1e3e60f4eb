"""Data-parallel training with torch.distributed: one process per GPU (Kaggle's T4 x2).

Semantics (README, "Several GPUs"): `batch_size` is the *global* batch. Each of N processes
takes a consecutive 1/N slice of every global batch; DistributedDataParallel averages the
gradients, and the loss is scaled so that the average is the mean over the global batch.
The optimisation is therefore the single-device one whatever N is, up to float summation
order (and BatchNorm: trainable BatchNorm layers are made SyncBatchNorm on GPUs, so their
statistics are global batch statistics too). That is also what makes a checkpoint written by
a 2-GPU run resumable on one device and the reverse.

Launch: the CLI re-runs itself under torchrun (`python -m torch.distributed.run`); notebooks
call `train.launch_train(cfg)`, which spawns them (`spawn`). Only rank 0 writes files.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from .config import Config

T = TypeVar("T")


def world_size_for(devices: str) -> int:
    """auto: every visible GPU; cpu: one process; N: N processes (on CPU: gloo, for tests)."""
    if devices == "cpu":
        return 1
    if devices == "auto":
        return max(1, torch.cuda.device_count())
    try:
        return max(1, int(devices))
    except ValueError:
        raise ValueError(f"devices={devices!r}: auto, cpu or a number") from None


def in_launched_process() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(cfg: Config) -> tuple[int, int, int]:
    """(rank, world, local_rank); joins the process group when launched with several."""
    if not in_launched_process():
        return 0, 1, 0
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    use_cuda = torch.cuda.is_available() and cfg.devices != "cpu"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return rank, world, local_rank


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def main_process_first(is_main: bool, make: Callable[[], T]) -> T:
    """Rank 0 runs make() first (say, decodes the image cache), then the others (reuse it)."""
    if not is_main:
        barrier()
    result = make()
    if is_main:
        barrier()
    return result


def wrap(net: nn.Module, device: torch.device, world: int) -> nn.Module:
    """DDP over the trainable parameters only (frozen ones have no gradient to sync)."""
    if world <= 1:
        return net
    if device.type == "cuda":
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    # Frozen BatchNorm buffers never change and are identical on every rank: no broadcast.
    return nn.parallel.DistributedDataParallel(
        net, device_ids=[device.index] if device.type == "cuda" else None,
        broadcast_buffers=False)


def sum_across(values: list[float], device: torch.device) -> list[float]:
    """Sum small numbers over all processes (one collective)."""
    if not dist.is_initialized():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def gather_objects(obj: Any) -> list[Any]:
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def torchrun_command(world: int, argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={world}", "-m", "pixelplay_lib", *argv]


def relaunch_with_torchrun(world: int, argv: list[str]) -> int:
    """The CLI's way: the same command, once per device, under torchrun."""
    return subprocess.run(torchrun_command(world, argv), check=False).returncode


def _spawned(local_rank: int, fn: Callable[[Config], Any], cfg: Config, world: int,
             port: int) -> None:
    os.environ.update(RANK=str(local_rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    fn(cfg)


def spawn(fn: Callable[[Config], Any], cfg: Config, world: int) -> None:
    """Run fn(cfg) in `world` new processes (ranks 0..world-1) and wait for them: the way
    from a notebook, where torchrun cannot relaunch the kernel. `fn` must be importable
    (a module-level function), as torch.multiprocessing pickles it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_spawned, args=(fn, cfg, world, port), nprocs=world, join=True)
