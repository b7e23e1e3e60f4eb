"""The CUDA preflight: a GPU this torch build has no kernels for stops the run at once.

No GPU here: the decision is tested as a pure function of (name, capability, arch list), and
make_runtime with torch.cuda's answers replaced by a P100's and a T4's.
"""

from __future__ import annotations

import pytest
import torch

from pixelplay_lib import runtime
from pixelplay_lib.config import make_config

# torch 2.10 + cu128, as in Kaggle's default image (2026): no Pascal.
CU128 = ["sm_70", "sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"]


@pytest.mark.parametrize("capability, arch_list", [
    ((7, 5), CU128),                     # T4: its own cubin
    ((8, 9), ["sm_80", "sm_86"]),        # L4: sm_86 cubin runs on 8.9 (same major, older)
    ((6, 0), ["sm_50", "compute_50"]),   # PTX older than the GPU is compiled by the driver
    ((9, 0), ["sm_80", "sm_90a"]),       # sm_90a is exactly 9.0
    ((6, 0), []),                        # a build that lists nothing: not second-guessed
])
def test_supported_gpus_pass(capability: tuple[int, int], arch_list: list[str]) -> None:
    assert runtime.cuda_arch_problem("GPU", capability, arch_list) is None


@pytest.mark.parametrize("capability, arch_list", [
    ((6, 0), CU128),                     # P100 on Kaggle's default image (kaggle-cli #1151)
    ((8, 0), ["sm_86", "sm_90"]),        # sm_86 does not run on 8.0 (newer minor)
    ((8, 6), ["sm_90a", "compute_90"]),  # PTX newer than the GPU, arch-specific cubin
])
def test_unsupported_gpus_are_named_with_the_fix(capability: tuple[int, int],
                                                 arch_list: list[str]) -> None:
    text = runtime.cuda_arch_problem("Tesla P100-PCIE-16GB", capability, arch_list, "2.10.0")
    assert text is not None
    major, minor = capability
    for part in ("Tesla P100-PCIE-16GB", f"{major}.{minor}", " ".join(arch_list), "2.10.0",
                 "ACCELERATOR=NvidiaTeslaT4", "DOCKER_IMAGE=", "PIN=original", "devices=cpu"):
        assert part in text


def fake_gpu(monkeypatch: pytest.MonkeyPatch, name: str, capability: tuple[int, int]) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: list(CU128))
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)


def test_make_runtime_stops_on_a_p100_instead_of_falling_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    fake_gpu(monkeypatch, "Tesla P100-PCIE-16GB", (6, 0))
    with pytest.raises(runtime.UnsupportedGPU, match="Tesla P100-PCIE-16GB"):
        runtime.make_runtime(make_config(amp="off", channels_last="off"))
    # devices=cpu is the explicit way to run on the CPU anyway
    assert runtime.make_runtime(make_config(devices="cpu")).device.type == "cpu"


def test_make_runtime_accepts_a_t4(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_gpu(monkeypatch, "Tesla T4", (7, 5))
    rt = runtime.make_runtime(make_config(amp="auto", channels_last="auto"))
    assert rt.device == torch.device("cuda:0")
    assert rt.amp_dtype == torch.float16 and rt.channels_last  # T4: fp16 + scaler, NHWC


def test_a_kaggle_session_without_gpu_stops_instead_of_running_on_cpu(monkeypatch):
    """A kernel given no GPU must not grind through the recipe on its CPU without a word;
    devices=cpu is the way to do it on purpose."""
    from pixelplay_lib.config import make_config
    from pixelplay_lib.runtime import UnsupportedGPU, make_runtime

    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UnsupportedGPU, match="no GPU.*ACCELERATOR=NvidiaTeslaT4.*devices=cpu"):
        make_runtime(make_config())
    assert make_runtime(make_config(devices="cpu")).device.type == "cpu"
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE")
    assert make_runtime(make_config()).device.type == "cpu"  # elsewhere: CPU is the machine
