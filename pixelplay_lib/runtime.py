"""Where the work runs: device, mixed precision, channels-last, and one shared logger."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from dataclasses import dataclass

import torch

from .config import Config

log = logging.getLogger("pixelplay")


class PrintableFormatter(logging.Formatter):
    """Messages as text any stream takes: a file name that is not valid UTF-8 (its bytes
    surrogate-escaped in the str, e.g. '\\udc82') is shown as `caf\\x82.jpg` instead of
    failing the write (stdout, Jupyter's stream) and losing the message."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def setup_logging() -> None:
    if not log.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(PrintableFormatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


class UnsupportedGPU(RuntimeError):
    """The visible GPU has no kernels in this torch build (raised before any work starts)."""


ARCH_FIX = ("Fix: on Kaggle push with a GPU this torch supports, `make push-kernel "
            "ACCELERATOR=NvidiaTeslaT4` (or NvidiaL4), or bring an image whose torch supports "
            "this GPU: `make push-kernel DOCKER_IMAGE=<image> PIN=original`. To run on the CPU "
            "on purpose, set devices=cpu.")


def _arch_entry(entry: str) -> tuple[str, int, str] | None:
    """'sm_86' -> ('sm', 86, ''), 'sm_90a' -> ('sm', 90, 'a'), 'compute_120' -> ('compute',
    120, ''); None for anything else."""
    m = re.fullmatch(r"(sm|compute)_(\d+)([a-z]?)", entry.strip())
    return (m.group(1), int(m.group(2)), m.group(3)) if m else None


def cuda_arch_problem(name: str, capability: tuple[int, int], arch_list: list[str],
                      torch_version: str = torch.__version__) -> str | None:
    """Why a GPU cannot run this torch build, or None when it can.

    name: the GPU's name; capability: (major, minor), e.g. (6, 0) for a P100; arch_list:
    `torch.cuda.get_arch_list()`. The GPU is usable when the list holds a cubin of its major
    version no newer than it (`sm_XY`, X = major, Y <= minor; an `sm_XYa` only for exactly
    X.Y) or PTX the driver can compile for it (`compute_XY` with XY <= capability). An empty
    list (a build that does not say) is taken as usable.
    """
    if not arch_list:
        return None
    major, minor = capability
    cc = 10 * major + minor
    for entry in filter(None, map(_arch_entry, arch_list)):
        kind, code, suffix = entry
        if kind == "compute" and code <= cc:
            return None
        if kind == "sm" and code // 10 == major and (code == cc or (not suffix and code <= cc)):
            return None
    return (f"GPU {name!r} has compute capability {major}.{minor} (sm_{cc}), but this torch "
            f"{torch_version} was built for {' '.join(arch_list)}: no kernel for sm_{cc} and no "
            f"PTX it could compile, so the first CUDA operation would fail with 'no kernel image "
            f"is available for execution on the device'. Stopped before any work started "
            f"(Kaggle's default image dropped Pascal/sm_60 GPUs such as the P100: kaggle-cli "
            f"issue 1151). {ARCH_FIX}")


def check_cuda_arch(device: torch.device) -> None:
    """Stop at once when `device` (a CUDA device) has no kernels in this torch build.

    Raises UnsupportedGPU with the GPU's name, capability, the build's architectures and the
    fix. Never falls back to the CPU: a 25-epoch recipe on a CPU would spend the session.
    """
    problem = cuda_arch_problem(torch.cuda.get_device_name(device),
                                torch.cuda.get_device_capability(device),
                                torch.cuda.get_arch_list())
    if problem:
        raise UnsupportedGPU(problem)


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

    def to_device(self, batch: torch.Tensor, mean: torch.Tensor | None = None,
                  std: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 batch -> normalised float on the device (the copy overlaps with compute).
        mean / std: per-channel, 0..255 scale, shaped (1, 3, 1, 1); default ImageNet's."""
        from .transforms import normalize

        x = normalize(batch.to(self.device, non_blocking=True), mean, std)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def make_runtime(cfg: Config, rank: int = 0, world: int = 1, local_rank: int = 0) -> Runtime:
    if rank:  # one voice: the other processes only speak up with warnings
        log.setLevel(logging.WARNING)
    use_cuda = torch.cuda.is_available() and cfg.devices != "cpu"
    if not use_cuda and cfg.devices != "cpu" and os.environ.get("KAGGLE_KERNEL_RUN_TYPE"):
        # A kernel pushed without a GPU (or given none) must not grind through the recipe on
        # its CPU for hours without a word.
        raise UnsupportedGPU(
            "this Kaggle session has no GPU (torch.cuda.is_available() is False): push the "
            "kernel with a GPU (`make push-kernel ACCELERATOR=NvidiaTeslaT4`, or Settings -> "
            "Accelerator in the editor), or set devices=cpu to run on the CPU on purpose")
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
        check_cuda_arch(device)
        torch.backends.cudnn.benchmark = True
    return Runtime(device, amp_dtype, channels_last, rank, world)
