"""Where the work runs: device, mixed precision, channels-last, and one shared logger."""

from __future__ import annotations

import contextlib
import logging
import sys
from dataclasses import dataclass

import torch

from .config import Config

log = logging.getLogger("pixelplay")


def setup_logging() -> None:
    if not log.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


@dataclass
class Runtime:
    device: torch.device
    amp_dtype: torch.dtype | None  # None = full fp32
    channels_last: bool
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def to_device(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 batch -> normalised float on the device (the copy overlaps with compute)."""
        from .transforms import normalize

        x = normalize(batch.to(self.device, non_blocking=True))
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def make_runtime(cfg: Config, rank: int = 0, world: int = 1, local_rank: int = 0) -> Runtime:
    if rank:  # one voice: the other processes only speak up with warnings
        log.setLevel(logging.WARNING)
    use_cuda = torch.cuda.is_available() and cfg.devices != "cpu"
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    amp_dtype = None
    if use_cuda and cfg.amp != "off":
        major, _ = torch.cuda.get_device_capability(device)
        # bf16 needs Ampere or newer; P100 and T4 get fp16 with a grad scaler.
        if cfg.amp == "bf16" or (cfg.amp == "auto" and major >= 8):
            amp_dtype = torch.bfloat16
        else:
            amp_dtype = torch.float16
    channels_last = False
    if use_cuda and cfg.channels_last != "off":
        # Tensor cores (Volta and newer) prefer NHWC; on a P100 it only costs conversions.
        capability = torch.cuda.get_device_capability(device)[0]
        channels_last = cfg.channels_last == "on" or capability >= 7
    if use_cuda:
        torch.backends.cudnn.benchmark = True
    return Runtime(device, amp_dtype, channels_last, rank, world)
