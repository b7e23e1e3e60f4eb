"""The one configuration dataclass.

Every field is at once a CLI flag (`--data-root`), a papermill parameter of the notebooks
(`data_root`) and a key of the `config.json` written next to the outputs. Defaults are the
baseline recipe of the original ResNet101 notebook (see README, "Baseline").
"""

from __future__ import annotations

import json
import logging
import typing
from collections.abc import Collection
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

log = logging.getLogger("pixelplay")


@dataclass
class Config:
    # -- where things are
    data_root: str = ""  # a folder holding the challenge somewhere below; "" = input_root
    output_dir: str = "outputs"  # model, checkpoints, metrics, figures, submission
    input_root: str = "/kaggle/input"  # searched for the data and for earlier runs' checkpoints
    cache_dir: str = ""  # decoded-image cache; "" = output_dir/cache (a temp dir on Kaggle)
    # -- model
    arch: str = "resnet101"  # a torchvision classifier name, or timm:<name> (needs timm)
    weights: str = "imagenet"  # imagenet | none | path/to/state_dict.pth
    trainable: str = "layer4,fc"  # last:N (last N stages + head) | all | blocks: layer4,fc
    # -- images and augmentation (baseline: RandomResizedCrop(300, 0.7-1), flip, rotate 30)
    image_size: int = 300
    crop_scale_min: float = 0.7
    rotation: float = 30.0
    cache: bool = True  # decode every image once into a resized uint8 cache
    fast_augment: bool = True  # uint8 resize + one-gather flip/rotate (False: torchvision ops)
    # -- optimisation (baseline: SGD 0.001, MultiStepLR [16, 21] x0.9, 25 epochs of 16)
    batch_size: int = 16  # the GLOBAL batch, split over all devices (must divide evenly)
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
    # -- experts and fusion (vision-language path; README "Accuracy")
    experts: str = "auto"  # comma list of resnet, attributes, imagenet, text, probe; auto = all
    vl_model: str = "google/siglip2-so400m-patch16-256"  # image-text model: hub id | folder | ""
    vl_batch_size: int = 64  # images per forward pass of the image-text model
    vl_flip: bool = True  # average the embedding of each image and its mirror
    prompts: str = ""  # prompt templates file, one per line with {}; "" = bundled
    synonyms: str = ""  # class synonyms file (name<TAB>synonym); "" = bundled, "none" = names
    transductive: str = "off"  # test-pool term: auto (kept when it gains beyond noise) | on | off
    # -- prediction
    tta_votes: int = 7  # augmented views per test image
    vote: str = "hard"  # hard (majority of argmax, the baseline) | soft (mean probability)
    zero_shot: str = "auto"  # auto (on when classes.txt lists classes with no train folder)
    zs_gamma: str = "auto"  # offset, weights: auto (chosen on the test pool) | protocol | a number
    zs_folds: int = 4  # leave-classes-out folds used to tune the zero-shot step
    attr_loss: float = 1.0  # weight of the auxiliary attribute loss when zero-shot is on
    loss_balance: str = "none"  # none | logit_adjust (class-prior offsets on training logits)
    model_path: str = ""  # model to predict with; "" = output_dir/model.pt
    name: str = "submission"  # the submission's file stem: <name>.csv and its files beside it
    overwrite: bool = False  # replace an existing <name>.csv (and its files) instead of stopping

    def __post_init__(self) -> None:
        coerce_types(self)
        problems = []
        if self.image_size < 16:
            problems.append(f"image_size={self.image_size} (need >= 16)")
        if self.batch_size < 1:
            problems.append(f"batch_size={self.batch_size} (need >= 1)")
        if not 0 <= self.val_fraction < 1:
            problems.append(f"val_fraction={self.val_fraction} (need 0 <= x < 1)")
        if self.vl_batch_size < 1:
            problems.append(f"vl_batch_size={self.vl_batch_size} (need >= 1)")
        if self.tta_votes < 1:
            problems.append(f"tta_votes={self.tta_votes} (need >= 1)")
        choices = {"vote": ("hard", "soft"), "zero_shot": ("auto", "on", "off"),
                   "amp": ("auto", "off", "fp16", "bf16"), "channels_last": ("auto", "on", "off"),
                   "transductive": ("auto", "on", "off"), "loss_balance": LOSS_BALANCE}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                problems.append(f"{name}={getattr(self, name)!r} (one of {', '.join(allowed)})")
        if self.zs_gamma not in ("auto", "protocol"):
            try:
                float(self.zs_gamma)
            except ValueError:
                problems.append(f"zs_gamma={self.zs_gamma!r} (auto, protocol or a number)")
        try:
            parse_last(self.trainable)
        except ValueError as e:
            problems.append(str(e))
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
                 "lr_gamma", "seed", "cache", "fast_augment", "zero_shot", "attr_loss",
                 "loss_balance")

# What `predict` takes from its own config (flags, papermill parameters). Everything that
# defines the model (RESULT_FIELDS, the experts, the image-text model's prompts) comes from
# the trained run's model.pt / fusion.pt; `vl_model` applies when it names another model
# (its class text embeddings are checked against the fitted ones).
PREDICT_FIELDS = ("data_root", "output_dir", "input_root", "model_path", "cache", "cache_dir",
                  "devices", "num_workers", "amp", "channels_last", "batch_size",
                  "vl_batch_size", "vl_model", "tta_votes", "vote", "seed", "zero_shot",
                  "zs_gamma", "transductive", "name", "overwrite")
# Given to predict with another value than the trained one: ignored, with a warning.
MODEL_FIELDS = tuple(f for f in RESULT_FIELDS if f not in PREDICT_FIELDS) + (
    "experts", "vl_flip", "prompts", "synonyms", "zs_folds")

# `--preset demo`: a small CPU-friendly recipe for the generated demo data (no pretrained
# weights exist for it, so the whole network trains, with momentum and a faster schedule).
PRESETS: dict[str, dict[str, Any]] = {
    "baseline": {},
    "demo": dict(arch="resnet18", weights="none", trainable="all", image_size=64, batch_size=32,
                 epochs=20, lr=0.05, momentum=0.9, weight_decay=5e-4, milestones=(14, 18),
                 lr_gamma=0.1, crop_scale_min=0.6, rotation=15.0, vl_model=""),
}


# loss_balance: "logit_adjust" adds log(class prior) to the training logits (Menon et al.
# 2021, "Long-tail learning via logit adjustment", tau = 1): train.logit_adjustment.
LOSS_BALANCE = ("none", "logit_adjust")
LAST = "last:"


def parse_last(trainable: str) -> int | None:
    """N of a `trainable` value "last:N" (the last N stages plus the head; spaces allowed),
    None for any other value (all, a comma list of blocks). Raises ValueError naming the
    field for "last:" without a whole number >= 0, or combined with other blocks."""
    text = trainable.replace(" ", "")
    if LAST not in text:
        return None
    number = text.removeprefix(LAST)
    if not text.startswith(LAST) or not number.isdigit():
        raise ValueError(f"trainable={trainable!r}: last:N takes a whole number >= 0 and "
                         "stands alone (e.g. last:2: the last 2 stages and the head), or use "
                         "all or a comma list of blocks such as layer4,fc")
    return int(number)


INT_TUPLE_FORMS = "16,21 or 16 21 or [16, 21] or (16, 21) or one integer"


def parse_int_tuple(value: Any) -> tuple[int, ...]:
    """A tuple of ints from the spellings users type (CLI, papermill `-p`, JSON):
    `16,21`, `16 21`, `[16, 21]`, `(16, 21)`, `16`, a list/tuple, an int. Raises ValueError
    (without the field name: coerce_types adds it) for anything else."""
    if isinstance(value, bool):
        raise ValueError("not a list of integers")
    if isinstance(value, int | float):
        value = [value]
    elif isinstance(value, str):
        value = value.strip().removeprefix("[").removeprefix("(")
        value = value.removesuffix("]").removesuffix(")")
        value = [v for v in value.replace(",", " ").split()]
    elif not isinstance(value, list | tuple):
        raise ValueError(f"not a list of integers ({type(value).__name__})")
    return tuple(parse_int(v) for v in value)


def parse_int(value: Any) -> int:
    """An int from 16, 16.0, "16" or "16.0"; ValueError for 16.5, "x", True."""
    if isinstance(value, bool):
        raise ValueError("a boolean is no integer")
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            value = float(value)  # "16.0", "1e3"; raises for anything else
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(f"{value!r} is not a whole number")
    return int(value)


def parse_bool(value: Any) -> bool:
    if isinstance(value, str):
        text = value.strip().lower()
        if text not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            raise ValueError(f"expected true/false, got {value!r}")
        return text in ("1", "true", "yes", "on")
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if not isinstance(value, bool):
        raise ValueError(f"expected true/false, got {value!r}")
    return value


def parse_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("a boolean is no number")
    return float(value)


# Per declared type: the parser and the forms it accepts (for error messages).
PARSERS: dict[Any, tuple[Any, str]] = {
    bool: (parse_bool, "true/false, yes/no, on/off or 1/0"),
    int: (parse_int, "an integer, e.g. 16"),
    float: (parse_float, "a number, e.g. 0.5 or 1e-3"),
    str: (str, "text"),
    tuple[int, ...]: (parse_int_tuple, INT_TUPLE_FORMS),
}


def coerce_value(name: str, value: Any) -> Any:
    """`value` given for Config field `name`, converted to the field's declared type.
    papermill's `-p` and JSON guess types (`-p devices 1` is an int, `-p milestones 16` an
    int, `-p cache false` a string, `-p milestones "[16, 21]"` a string or a list).
    Raises ValueError naming the field, the value and the accepted forms."""
    kind = typing.get_type_hints(Config)[name]
    # A field of a type without a parser here is taken as given (checked where it is used).
    parse, forms = PARSERS.get(kind, (lambda v: v, ""))
    try:
        return parse(value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}={value!r} is not valid ({e}); accepted: {forms}") from None


def coerce_types(cfg: Config) -> None:
    """Give every field its declared type (coerce_value); raises ValueError naming the
    field on the first value that cannot be converted."""
    for f in fields(cfg):
        setattr(cfg, f.name, coerce_value(f.name, getattr(cfg, f.name)))


def make_config(preset: str = "", **overrides: Any) -> Config:
    """Defaults, then the preset's values, then explicit overrides (None = not given)."""
    if preset not in PRESETS and preset:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    known = {f.name for f in fields(Config)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown config field(s): {', '.join(unknown)}")
    values = {**PRESETS.get(preset, {}), **{k: v for k, v in overrides.items() if v is not None}}
    cfg = Config(**values)
    cfg._given = frozenset(values)  # not a field: which values were chosen (given_fields)
    warn_frozen_random(cfg)
    return cfg


def given_fields(cfg: Config) -> frozenset[str] | None:
    """The fields make_config was given a value for (explicitly or by the preset); None for
    a config built otherwise (from a saved dict, or Config(...) directly)."""
    return getattr(cfg, "_given", None)


def warn_frozen_random(cfg: Config) -> None:
    """Warn when blocks stay frozen at random initialisation (weights=none, trainable not
    "all"): the head then learns on frozen random features (20% where the whole network
    trained from scratch reached 85%). A warning, not an error: a deliberate probe of random
    features stays possible, and saved configs of such runs still load."""
    blocks = {t.strip() for t in cfg.trainable.split(",")}
    if cfg.weights == "none" and "all" not in blocks:
        log.warning("WARNING: weights=none with trainable=%r: the frozen blocks keep their "
                    "RANDOM initial weights and only %s learns. Train the whole network with "
                    "--trainable all (papermill: -p trainable all), or use pretrained weights "
                    "(--weights imagenet or a .pth file).", cfg.trainable, cfg.trainable)


def config_from_saved(saved: dict[str, Any], **overrides: Any) -> Config:
    """A config read back from a model or config.json, with overrides on top."""
    known = {f.name for f in fields(Config)}
    values = {k: v for k, v in saved.items() if k in known}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Config(**values)


def field_help() -> dict[str, str]:
    """Each field's comment in the Config source (`name: type = default  # comment`): the
    CLI's --help text, so that the dataclass stays the one place a field is described."""
    import inspect
    import re

    found = {}
    for line in inspect.getsource(Config).splitlines():
        m = re.match(r"\s+(\w+): [^=]+=.*?#\s*(.+)$", line)
        if m:
            found[m.group(1)] = m.group(2).strip()
    return found


def fingerprint(cfg: Config) -> dict[str, Any]:
    return {name: cfg.to_dict()[name] for name in RESULT_FIELDS}


def check_parameters(namespace: dict[str, Any], declared: Collection[str]) -> None:
    """Stop a notebook run that was given a parameter its parameters cell does not declare.

    namespace: the notebook's globals() right after papermill's injected-parameters cell
    (call this first thing in the next cell); declared: the names defined when the
    parameters cell ended (its last line is `_declared = set(dir())`). papermill only logs
    "Passed unknown parameter" and runs on with the default, so a typo (`-p lr_gamm 0.5`)
    would be lost. Raises ValueError naming the unknown parameter(s) and the known ones.
    """
    unknown = sorted(n for n in namespace if n not in declared and not n.startswith("_"))
    if unknown:
        import difflib

        known = sorted(n for n in declared if n in _parameter_names(namespace, declared))
        hints = [f"{n} (did you mean {close[0]}?)" if (close := difflib.get_close_matches(
            n, known, n=1)) else n for n in unknown]
        raise ValueError(f"unknown notebook parameter(s): {', '.join(hints)}. This "
                         f"notebook's parameters: {', '.join(known)}")


def _parameter_names(namespace: dict[str, Any], declared: Collection[str]) -> set[str]:
    # The parameters cell's names: plain values (not modules, functions or classes).
    return {n for n in declared if not n.startswith("_") and n not in ("In", "Out")
            and n in namespace
            and isinstance(namespace[n], str | int | float | bool | list | tuple | type(None))}


def notebook_config(namespace: dict[str, Any], declared: Collection[str], **overrides: Any
                    ) -> Config:
    """The Config of a notebook run: every declared parameter that is a Config field and not
    None (None: the preset's value, else the default) on top of the `preset` parameter (if
    declared), then `overrides`. Generic: a Config field added later needs only its line in
    the parameters cell (tests/test_notebooks.py fails while one is missing).
    Raises ValueError for unknown presets and values that cannot be converted."""
    known = {f.name for f in fields(Config)}
    values = {n: namespace[n] for n in declared if n in known and n in namespace}
    return make_config(namespace.get("preset", "") or "", **{**values, **overrides})


def warn_ignored_by_predict(cfg: Config, trained: Config) -> list[str]:
    """Warn (log) about each model-defining field (MODEL_FIELDS) given to predict with
    another value than the run was trained with: predict uses the trained value. "Given":
    make_config's explicit values and preset (given_fields); for a config built otherwise,
    any value off the default. Returns the warnings."""
    given = given_fields(cfg)
    now, then, default = cfg.to_dict(), trained.to_dict(), Config().to_dict()
    warnings = []
    for name in MODEL_FIELDS:
        chosen = name in given if given is not None else now[name] != default[name]
        if chosen and now[name] != then[name]:
            warnings.append(
                f"{name}={_shown(now[name])} (--{name.replace('_', '-')}) ignored: the model was "
                f"trained with {name}={_shown(then[name])} (predict takes the model's settings "
                "from its model.pt)")
    for text in warnings:
        log.warning("WARNING: %s", text)
    return warnings


def _shown(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
