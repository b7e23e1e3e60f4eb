"""The one configuration dataclass.

Every field is at once a CLI flag (`--data-root`), a papermill parameter of the notebooks
(`data_root`) and a key of the `config.json` written next to the outputs. Defaults are the
baseline recipe of the original ResNet101 notebook (see README, "Baseline").
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any


@dataclass
class Config:
    # -- where things are
    data_root: str = ""  # a folder holding the challenge somewhere below; "" = input_root
    output_dir: str = "outputs"  # model, checkpoints, metrics, figures, submission
    input_root: str = "/kaggle/input"  # searched for the data and for earlier runs' checkpoints
    cache_dir: str = ""  # decoded-image cache; "" = output_dir/cache (a temp dir on Kaggle)
    # -- model
    arch: str = "resnet101"  # any torchvision classifier name
    weights: str = "imagenet"  # imagenet | none | path/to/state_dict.pth
    trainable: str = "layer4,fc"  # comma list of blocks that train ("fc" = the head), or "all"
    # -- images and augmentation (baseline: RandomResizedCrop(300, 0.7-1), flip, rotate 30)
    image_size: int = 300
    crop_scale_min: float = 0.7
    rotation: float = 30.0
    cache: bool = True  # decode every image once into a resized uint8 cache
    fast_augment: bool = True  # uint8 resize + one-gather flip/rotate (False: torchvision ops)
    # -- optimisation (baseline: SGD 0.001, MultiStepLR [16, 21] x0.9, 25 epochs of 16)
    batch_size: int = 16  # per device; the global batch is batch_size x devices
    val_fraction: float = 0.15
    epochs: int = 25
    lr: float = 0.001
    momentum: float = 0.0
    weight_decay: float = 0.0
    milestones: tuple[int, ...] = (16, 21)
    lr_gamma: float = 0.9
    seed: int = 0
    # -- hardware
    num_workers: int = -1  # data-loading processes; -1 = one per CPU core, at most 8
    amp: str = "auto"  # auto (fp16/bf16 on GPU, off on CPU) | off | fp16 | bf16
    channels_last: str = "auto"  # auto (on for tensor-core GPUs) | on | off
    devices: str = "auto"  # auto (every visible GPU, data-parallel) | cpu | 1 | 2 ...
    # -- crash safety
    resume: str = "auto"  # auto (newest valid checkpoint) | never | path/to/ckpt.pt
    checkpoint_every_minutes: float = 10.0  # mid-epoch checkpoints; 0 = off
    checkpoint_every_steps: int = 0  # mid-epoch checkpoints every N steps; 0 = off
    time_limit: float = 690.0  # minutes; stop cleanly before it (Kaggle sessions: 12 h)
    # -- prediction
    tta_votes: int = 7  # augmented views per test image
    vote: str = "hard"  # hard (majority of argmax, the baseline) | soft (mean probability)
    zero_shot: str = "auto"  # auto (on when classes.txt lists classes with no train folder)
    zs_gamma: str = "auto"  # calibrated-stacking offset: auto (tuned by protocol) or a number
    zs_folds: int = 4  # leave-classes-out folds used to tune the zero-shot step
    attr_loss: float = 1.0  # weight of the auxiliary attribute loss when zero-shot is on
    model_path: str = ""  # model to predict with; "" = output_dir/model.pt

    def __post_init__(self) -> None:
        coerce_types(self)
        problems = []
        if self.image_size < 16:
            problems.append(f"image_size={self.image_size} (need >= 16)")
        if self.batch_size < 1:
            problems.append(f"batch_size={self.batch_size} (need >= 1)")
        if not 0 <= self.val_fraction < 1:
            problems.append(f"val_fraction={self.val_fraction} (need 0 <= x < 1)")
        if self.tta_votes < 1:
            problems.append(f"tta_votes={self.tta_votes} (need >= 1)")
        choices = {"vote": ("hard", "soft"), "zero_shot": ("auto", "on", "off"),
                   "amp": ("auto", "off", "fp16", "bf16"), "channels_last": ("auto", "on", "off")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                problems.append(f"{name}={getattr(self, name)!r} (one of {', '.join(allowed)})")
        if self.zs_gamma != "auto":
            try:
                float(self.zs_gamma)
            except ValueError:
                problems.append(f"zs_gamma={self.zs_gamma!r} (auto or a number)")
        if problems:
            raise ValueError("invalid config: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["milestones"] = list(self.milestones)
        return d

    def write_json(self, path: str | Path) -> None:
        from .checkpoint import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")


# Fields whose change gives another model. A checkpoint trained under different values is
# refused on resume. Paths, worker counts, time limits and prediction knobs are not here:
# they may change between Kaggle sessions without changing the result. `epochs` is not
# either: MultiStepLR does not depend on it, so a finished run can be extended.
RESULT_FIELDS = ("arch", "weights", "trainable", "image_size", "crop_scale_min", "rotation",
                 "batch_size", "val_fraction", "lr", "momentum", "weight_decay", "milestones",
                 "lr_gamma", "seed", "cache", "fast_augment", "zero_shot", "attr_loss")

# `--preset demo`: a small CPU-friendly recipe for the generated demo data (no pretrained
# weights exist for it, so the whole network trains, with momentum and a faster schedule).
PRESETS: dict[str, dict[str, Any]] = {
    "baseline": {},
    "demo": dict(arch="resnet18", weights="none", trainable="all", image_size=64, batch_size=32,
                 epochs=20, lr=0.05, momentum=0.9, weight_decay=5e-4, milestones=(14, 18),
                 lr_gamma=0.1, crop_scale_min=0.6, rotation=15.0),
}


def parse_int_tuple(value: Any) -> tuple[int, ...]:
    if isinstance(value, int | float):
        return (int(value),)
    if isinstance(value, str):
        value = [v for v in value.replace(" ", ",").split(",") if v]
    return tuple(int(v) for v in value)


def parse_bool(value: Any) -> bool:
    if isinstance(value, str):
        text = value.strip().lower()
        if text not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            raise ValueError(f"expected true/false, got {value!r}")
        return text in ("1", "true", "yes", "on")
    return bool(value)


def coerce_types(cfg: Config) -> None:
    """Give every field its declared type. papermill's `-p` and JSON guess types
    (`-p devices 1` is an int, `-p milestones 16` an int, `-p cache false` a string)."""
    hints = typing.get_type_hints(Config)
    for f in fields(cfg):
        value, kind = getattr(cfg, f.name), hints[f.name]
        if kind is bool:
            value = parse_bool(value)
        elif kind in (int, float, str):
            if kind is int and isinstance(value, float) and not value.is_integer():
                raise ValueError(f"{f.name}={value} is not an integer")
            value = kind(value)
        else:
            value = parse_int_tuple(value)
        setattr(cfg, f.name, value)


def make_config(preset: str = "", **overrides: Any) -> Config:
    """Defaults, then the preset's values, then explicit overrides (None = not given)."""
    if preset not in PRESETS and preset:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    known = {f.name for f in fields(Config)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown config field(s): {', '.join(unknown)}")
    values = {**PRESETS.get(preset, {}), **{k: v for k, v in overrides.items() if v is not None}}
    return Config(**values)


def config_from_saved(saved: dict[str, Any], **overrides: Any) -> Config:
    """A config read back from a model or config.json, with overrides on top."""
    known = {f.name for f in fields(Config)}
    values = {k: v for k, v in saved.items() if k in known}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Config(**values)


def fingerprint(cfg: Config) -> dict[str, Any]:
    return {name: cfg.to_dict()[name] for name in RESULT_FIELDS}


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(Config)]
