"""Fail fast: every cheap check of a run, before anything expensive starts.

`check(cfg, "train" | "predict")` takes seconds: it reads names, small JSON files and the
data's folder listing, and knocks on the hub / download.pytorch.org for at most a few
seconds each; it never decodes an image, loads weights or runs a step. It raises one
PreflightError listing every problem found, one line each, naming the config field and the
fix, so that a Kaggle session does not spend minutes (decoding 6,000 images, loading a
1 GB model) before failing on a typo, then on the next one.

What it checks (README, "Troubleshooting"):
  experts      known names (a typo gets "did you mean ...?")
  vl_model     obtainable without loading it when text / probe need it (imagetext: a
               complete local folder, a folder below input_root, the HF cache, the hub);
               a path-like value that does not exist is a missing folder
  weights      ImageNet weights where the network or the imagenet expert needs them
               (the torch hub cache, a copy below input_root, or download.pytorch.org)
  data         the challenge found (data.load_challenge), its class attributes
  output_dir   creatable and writable (a probe file written and deleted); cache_dir too
  devices      a usable GPU (runtime.make_runtime / check_cuda_arch), batch divisibility
  model_path   predict: model.pt present (else the newest checkpoint is named)

Experts that `experts=auto` may leave out (the default image-text model offline, the
ImageNet head) are not required here either: open_sources leaves them out with a warning.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from . import backbones
from . import checkpoint as ckpt
from .config import Config, config_from_saved
from .data import DataError, load_challenge, load_class_attributes
from .experts import DEFAULT_VL_MODEL, fusion, imagetext
from .locate import find_weights_file
from .model import trainable_problems
from .submission import name_problem

log = logging.getLogger("pixelplay")

COMMANDS = ("train", "predict")
DOWNLOAD_HOST = ("download.pytorch.org", 443)
DOWNLOAD_TIMEOUT_S = 3.0
IMAGE_TEXT = {"text", "probe"}


class PreflightError(ValueError):
    """Every problem preflight found; `problems` holds them, one line each."""

    def __init__(self, command: str, problems: list[str]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{command}: {len(problems)} problem(s) found before starting "
                         f"(nothing was run):\n{lines}")


def check(cfg: Config, command: str) -> None:
    """Run every check of `command` ("train" or "predict") on cfg; log one line when all
    pass. Raises PreflightError listing every problem (ValueError for an unknown command)."""
    if command not in COMMANDS:
        raise ValueError(f"preflight command {command!r}: one of {', '.join(COMMANDS)}")
    started = time.monotonic()
    problems = train_problems(cfg) if command == "train" else predict_problems(cfg)
    problems += device_problems(cfg, command)
    problems += folder_problems("output_dir", cfg.output_dir)
    if cfg.cache and cfg.cache_dir:
        problems += folder_problems("cache_dir", cfg.cache_dir)
    problems = [" ".join(p.split()) for p in problems]  # one line each
    if problems:
        raise PreflightError(command, problems)
    log.info("preflight (%s): all checks passed in %.1f s", command,
             time.monotonic() - started)


def check_main(cfg: Config, command: str) -> None:
    """check() in the main process only (RANK 0 or unset): under torchrun or spawn the
    other processes wait for it in their process group, which its failed exit ends."""
    if int(os.environ.get("RANK", "0")) == 0:
        check(cfg, command)


# ---------------------------------------------------------------- per command


def train_problems(cfg: Config) -> list[str]:
    """Experts, the data, the image-text model and the ImageNet weights a training run
    needs."""
    problems, asked = expert_problems(cfg.experts)
    auto = cfg.experts.strip() == "auto"
    network = bool(asked & {"resnet", "attributes"})  # experts.needs_network
    problems += data_problems(cfg, attributes=network)
    if asked & IMAGE_TEXT and (not auto or cfg.vl_model not in ("", DEFAULT_VL_MODEL)):
        problems += vl_problems(cfg.vl_model, cfg.input_root)
    if "imagenet" in asked and not auto and cfg.weights == "none":
        problems.append("experts: imagenet needs the pretrained 1000-way head but "
                        "weights='none'. Fix: weights=imagenet (or a state dict with that "
                        "head), or leave imagenet out of experts")
    elif network or ("imagenet" in asked and not auto):
        problems += weights_problems(cfg.arch, cfg.weights, cfg.input_root)
    if network:
        problems += trainable_problems(cfg.arch, cfg.trainable)
    return problems


def predict_problems(cfg: Config) -> list[str]:
    """The trained model, the data, and the sources of the experts its fusion uses (from
    fusion.pt and the config.json beside model.pt: small files, no weights)."""
    model_path = Path(cfg.model_path or Path(cfg.output_dir) / "model.pt")
    problems = data_problems(cfg, attributes=False)
    taken = name_problem(cfg.output_dir, cfg.name, cfg.overwrite)
    problems += [taken] if taken else []
    if not model_path.is_file():
        return [*problems, missing_model_message(model_path)]
    trained = saved_config(model_path.parent)
    try:
        used = fused_experts(cfg, model_path.parent)
    except Exception as e:  # a damaged fusion.pt: torch.load raises many kinds
        return [*problems, f"model_path / output_dir: {model_path.parent / 'fusion.pt'} is "
                f"unreadable ({type(e).__name__}: {e}). Fix: train again into that folder"]
    if used & IMAGE_TEXT:
        model = cfg.vl_model if cfg.vl_model != DEFAULT_VL_MODEL or trained is None \
            else trained.vl_model
        problems += vl_problems(model, cfg.input_root)
    if "imagenet" in used and trained is not None:
        problems += weights_problems(trained.arch, trained.weights, cfg.input_root)
    return problems


def missing_model_message(path: Path) -> str:
    """What inference.load_trained says for a missing model file: the newest checkpoint
    beside it when training stopped early."""
    newest = ckpt.list_checkpoints(path.parent) if path.parent.is_dir() else []
    if newest:
        return (f"model_path / output_dir: no trained model at {path}: training in "
                f"{path.parent} stopped before its end (newest checkpoint {newest[0].name}). "
                "Fix: run the same train command again to finish it (it resumes), then "
                "predict")
    return (f"model_path / output_dir: no trained model at {path}. Fix: train into "
            "output_dir first, or pass model_path the model.pt of a finished run")


def saved_config(run_dir: Path) -> Config | None:
    """The training config train wrote beside its model (config.json), None if absent or
    unreadable (predict then reads it from model.pt itself)."""
    try:
        return config_from_saved(json.loads((run_dir / "config.json").read_text()))
    except (OSError, ValueError, TypeError):
        return None


def fused_experts(cfg: Config, run_dir: Path) -> set[str]:
    """The experts predict will load: every expert of run_dir's fusion when it chooses on
    the test pool (zs_gamma auto), else those of non-zero weight; none without a fusion or
    with zero_shot=off."""
    if cfg.zero_shot == "off" or not (run_dir / "fusion.pt").is_file():
        return set()
    state = fusion.load_fusion(run_dir)
    if cfg.zs_gamma == "auto" and state.heldout is not None:
        return set(state.names)
    return {n for n, w in zip(state.names, state.weights, strict=True) if w}


# ---------------------------------------------------------------- the checks


def expert_problems(spec: str) -> tuple[list[str], set[str]]:
    """(problems, the known expert names asked) for the config field `experts`."""
    if spec.strip() == "auto":
        return [], set(fusion.EXPERT_NAMES)
    asked = [n.strip() for n in spec.split(",") if n.strip()]
    problems = []
    for name in (n for n in asked if n not in fusion.EXPERT_NAMES):
        close = difflib.get_close_matches(name, fusion.EXPERT_NAMES, n=1)
        problems.append(f"experts={spec!r}: unknown expert {name!r}"
                        + (f" (did you mean {close[0]}?)" if close else "")
                        + f". Fix: auto, or a comma list of {', '.join(fusion.EXPERT_NAMES)}")
    if not asked:
        problems.append(f"experts={spec!r}: no expert named. Fix: auto, or a comma list of "
                        f"{', '.join(fusion.EXPERT_NAMES)}")
    return problems, set(asked) & set(fusion.EXPERT_NAMES)


def vl_problems(model_id: str, input_root: str) -> list[str]:
    """The image-text model is obtainable, found as imagetext.load_model would find it but
    without loading it; a local folder must be a complete image-text model folder."""
    try:
        source, _ = imagetext.resolve_source(model_id, input_root)
        if Path(source).is_dir():
            imagetext.check_local_folder(source)
    except (imagetext.ModelNotFound, ValueError) as e:
        return [str(e) if str(e).startswith("vl_model") else f"vl_model={model_id!r}: {e}"]
    return []


def weights_problems(arch: str, weights: str, input_root: str) -> list[str]:
    """The weights the network (or the ImageNet expert) starts from can be had: a
    state-dict file that exists, or torchvision's ImageNet file in the torch hub cache,
    below input_root (model.load_weights' lookup) or downloadable now."""
    import torchvision

    if backbones.is_timm(arch):  # timm installed, the name known, its hub weights findable
        return backbones.timm_weights_problems(arch, weights, input_root)
    known = torchvision.models.list_models(torchvision.models)
    if arch not in known:
        close = difflib.get_close_matches(arch, known, n=1)
        return [f"arch={arch!r}: not a torchvision classifier"
                + (f" (did you mean {close[0]}?)" if close else "")
                + f". Fix: e.g. {', '.join(known[:6])}, ..."]
    if weights == "none":
        return []
    if weights != "imagenet":
        return [] if Path(weights).is_file() else [
            f"weights={weights!r}: no such file. Fix: imagenet, none, or the path of a .pth "
            "state dict"]
    filename = torchvision.models.get_model_weights(arch).DEFAULT.url.rsplit("/", 1)[-1]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if cached.is_file() or find_weights_file(filename, input_root) or reachable(DOWNLOAD_HOST):
        return []
    return [f"weights='imagenet': {filename} ({arch}) is neither in {cached.parent} nor below "
            f"input_root={input_root!r}, and download.pytorch.org is not reachable. Fix: on "
            "Kaggle switch the notebook's Internet on, or attach a dataset holding "
            f"{filename}; elsewhere put the file in {cached.parent}, or pass "
            f"weights=/path/to/{filename}, or weights=none to train from scratch"]


def reachable(host: tuple[str, int], timeout: float = DOWNLOAD_TIMEOUT_S) -> bool:
    """True when `host` accepts a TCP connection within `timeout` seconds."""
    try:
        with socket.create_connection(host, timeout=timeout):
            return True
    except OSError:
        return False


def data_problems(cfg: Config, attributes: bool) -> list[str]:
    """The challenge is found and its layout is right (data.load_challenge: a folder
    listing, no image read); with `attributes`, the class attributes a zero-shot training
    run reads before its first step."""
    try:
        with _quiet():  # the run loads it again and logs what it finds then
            ch = load_challenge(cfg.data_root, cfg.input_root)
            zero_shot = cfg.zero_shot == "on" or (cfg.zero_shot == "auto" and ch.unseen)
            if attributes and zero_shot:
                load_class_attributes(ch.root, ch.classes)
    except DataError as e:
        return [f"data_root / input_root: {e}"]
    return []


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def folder_problems(field: str, folder: str) -> list[str]:
    """`folder` can be created and written: the missing part of its path is created, a
    probe file written and deleted, then what was created is removed again."""
    path = Path(folder).expanduser()
    created = [p for p in [path, *path.parents] if not p.exists()]
    probe = path / f".pixelplay-preflight-{os.getpid()}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        return [f"{field}={folder!r}: cannot create or write there ({e.strerror or e}: "
                f"{e.filename or path}). Fix: pass --{field.replace('_', '-')} (papermill: "
                f"-p {field}) a writable folder (on Kaggle, below /kaggle/working)"]
    finally:
        for p in created:  # deepest first
            with contextlib.suppress(OSError):
                p.rmdir()
    return []


def device_problems(cfg: Config, command: str) -> list[str]:
    """devices is a valid choice, the GPUs it uses have kernels in this torch build
    (runtime.make_runtime: check_cuda_arch, a Kaggle session without a GPU), and for
    training the global batch divides over the processes."""
    from . import distributed
    from .runtime import UnsupportedGPU, check_cuda_arch, make_runtime

    try:
        world = distributed.world_size_for(cfg.devices)
        make_runtime(cfg)
        if torch.cuda.is_available() and cfg.devices != "cpu":
            for k in range(1, min(world, torch.cuda.device_count())):
                check_cuda_arch(torch.device(f"cuda:{k}"))
    except (ValueError, UnsupportedGPU) as e:
        return [str(e) if str(e).startswith("devices") else f"devices={cfg.devices!r}: {e}"]
    if command == "train" and cfg.batch_size % world:
        return [f"batch_size={cfg.batch_size}: the global batch must divide into the "
                f"{world} devices. Fix: a multiple of {world}, or set devices"]
    return []
