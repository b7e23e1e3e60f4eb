"""Backbones: torchvision and timm classifiers, their stages in forward order, their weights.

Three things `model.py` (the freeze policy) and the experts (the shared trunk) need to
know about an architecture, kept here so that `model.py` stays about the `Net`:

* **Stages** (`stages_of`): the body's parameters grouped as stem, then stages in forward
  order (ResNet layer1..4, EfficientNet / MobileNet `features.1..`, ConvNeXt and Swin
  downsample + blocks, RegNet block1..4, ViT encoder layers; timm models through their own
  `group_matcher(coarse=True)`, the grouping timm uses for layer-wise learning-rate decay).
  `trainable=last:N` trains the last N stages plus the head.
* **Sequential form** (`sequential_form`): for CNNs whose forward is their modules called
  in order, the list of those modules, so that a frozen trunk can be run once and its output
  given to two networks (`shared_trunk`).
* **timm** (`--arch timm:<name>`): optional; building, head removal and the pretrained
  weights, found below input_root as the hub repo's files before any download.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from .locate import hub_reachable, walk_inputs

log = logging.getLogger("pixelplay")

TIMM_PREFIX = "timm:"
TIMM_INSTALL = "pip install timm (Kaggle's image has it)"
# What a timm repo on the Hugging Face hub holds (a snapshot, or the HF cache's layout).
TIMM_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class WeightsUnavailable(RuntimeError):
    """Pretrained weights asked for that can be neither found nor downloaded."""


# ------------------------------------------------------------------ timm
def is_timm(arch: str) -> bool:
    return arch.startswith(TIMM_PREFIX)


def timm_name(arch: str) -> str:
    """"timm:convnext_atto.d2_in1k" -> "convnext_atto.d2_in1k" (a name, optionally .tag)."""
    return arch[len(TIMM_PREFIX):].strip()


def import_timm(arch: str) -> Any:
    """The timm module; ValueError naming the arch and the install command when absent."""
    try:
        import timm
    except ImportError:
        raise ValueError(f"arch={arch!r} needs the timm package, which is not installed: "
                         f"{TIMM_INSTALL}; or use a torchvision arch (e.g. resnet101)"
                         ) from None
    return timm


def check_timm_name(arch: str) -> Any:
    """timm, after checking that it knows the model `arch` names (ValueError otherwise)."""
    timm = import_timm(arch)
    name = timm_name(arch)
    if not name or not timm.is_model(name):
        known = timm.list_models(f"*{name.split('.')[0][:8]}*")[:6] if name else []
        raise ValueError(f"arch={arch!r}: timm has no model {name!r}"
                         + (f" (e.g. {', '.join(known)})" if known else "")
                         + "; `python -c \"import timm; print(timm.list_models('convnext*'))\"` "
                         "lists them")
    return timm


def timm_classifier(arch: str, weights: str, input_root: str) -> nn.Module:
    """The timm model `arch` ("timm:<name>[.<tag>]") with its own classifier head.

    weights: "none" (random), "imagenet" (the name's default pretrained tag: a copy of the
    hub repo's weights below input_root first, then the Hugging Face cache, then a download),
    or a path to a state dict (.pth / .safetensors) of that model with its original head.
    Raises ValueError (timm absent, unknown name, unreadable file), FileNotFoundError,
    WeightsUnavailable (nothing found and the hub unreachable)."""
    timm = check_timm_name(arch)
    name = timm_name(arch)
    if weights == "none":
        return timm.create_model(name, pretrained=False)
    if weights != "imagenet":
        model = timm.create_model(name, pretrained=False)
        try:
            model.load_state_dict(read_state_dict(Path(weights)))
        except RuntimeError as e:  # missing / unexpected keys, other shapes
            raise ValueError(f"weights={weights!r} is not a state dict of {arch} with its "
                             f"original head (pass weights=imagenet or such a file): {e}"
                             ) from e
        return model
    cfg = timm.models.get_pretrained_cfg(name)
    local = find_timm_weights(cfg, input_root) or cached_timm_weights(cfg)
    if local is not None:
        log.info("using timm weights %s", local)
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(local)})
    if cfg is not None and cfg.hf_hub_id and not hub_reachable():
        raise WeightsUnavailable(timm_weights_message(arch, cfg, input_root, "not reachable"))
    try:
        return timm.create_model(name, pretrained=True)
    except Exception as e:  # hub and HTTP errors of several libraries
        raise WeightsUnavailable(timm_weights_message(arch, cfg, input_root,
                                                      f"{type(e).__name__}: {e}")) from e


def timm_repo(cfg: Any) -> str:
    """The hub repo's own name ("convnext_atto.d2_in1k" of timm/convnext_atto.d2_in1k)."""
    return (cfg.hf_hub_id or "").rsplit("/", 1)[-1] if cfg is not None else ""


def find_timm_weights(cfg: Any, input_root: str) -> Path | None:
    """The weights of timm's pretrained config `cfg` below input_root, in any mount layout
    (locate.walk_inputs): the hub repo's `model.safetensors` / `pytorch_model.bin` in a
    folder named after the repo (`convnext_atto.d2_in1k/`, or the HF cache's
    `models--timm--convnext_atto.d2_in1k/snapshots/<hash>/`), or the file of the model's
    original URL (`convnext_atto_d2-01bb0f51.pth`). None when there is none."""
    repo = timm_repo(cfg)
    url_file = (cfg.url or "").rsplit("/", 1)[-1] if cfg is not None else ""
    folders = {repo, f"models--timm--{repo}"} if repo else set()
    root = Path(input_root)
    for folder, files in walk_inputs(root):
        if url_file and url_file in files:
            return folder / url_file
        parts = set(folder.relative_to(root).parts) if folder != root else set()
        for weights_file in TIMM_WEIGHT_FILES:
            if folders & parts and weights_file in files:
                return folder / weights_file
    return None


def cached_timm_weights(cfg: Any) -> Path | None:
    """The hub repo's weights file in the Hugging Face cache, if it is there."""
    if cfg is None or not cfg.hf_hub_id:
        return None
    from huggingface_hub import try_to_load_from_cache

    for weights_file in TIMM_WEIGHT_FILES:
        hit = try_to_load_from_cache(cfg.hf_hub_id, weights_file)
        if isinstance(hit, str):
            return Path(hit)
    return None



def timm_weights_message(arch: str, cfg: Any, input_root: str, why: str) -> str:
    repo = timm_repo(cfg) or timm_name(arch)
    return (f"cannot get the pretrained weights of {arch} (hub repo timm/{repo}): "
            f"huggingface.co {why}. On Kaggle: switch the notebook's Internet on, or attach "
            f"a dataset holding the folder {repo}/ with the repo's model.safetensors (found up "
            f"to 6 folders below {input_root}). Elsewhere: download it once into the Hugging "
            f"Face cache, or pass weights=/path/to/model.safetensors, or weights=none.")


def timm_weights_problems(arch: str, weights: str, input_root: str,
                          online: Callable[[], bool] = hub_reachable) -> list[str]:
    """Preflight for a timm arch (no weights loaded): timm installed, the name known, the
    weights file existing or the pretrained weights findable / downloadable (`online`)."""
    try:
        timm = check_timm_name(arch)
    except ValueError as e:
        return [str(e)]
    if weights == "none":
        return []
    if weights != "imagenet":
        return [] if Path(weights).is_file() else [
            f"weights={weights!r}: no such file. Fix: imagenet, none, or the path of a "
            ".safetensors / .pth state dict"]
    cfg = timm.models.get_pretrained_cfg(timm_name(arch))
    if cfg is None:
        return [f"arch={arch!r}: timm has no pretrained weights for it. Fix: weights=none "
                "with trainable=all, or another model"]
    if find_timm_weights(cfg, input_root) or cached_timm_weights(cfg) or online():
        return []
    return [timm_weights_message(arch, cfg, input_root, "not reachable")]


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors or torch file (a "state_dict" / "model" entry of a
    training checkpoint is unwrapped). FileNotFoundError naming the file when missing."""
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} not found (weights= imagenet, none or a "
                                "path to a .pth / .safetensors state dict)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


# ------------------------------------------------------------------ the head
def is_timm_model(model: nn.Module) -> bool:
    return hasattr(model, "pretrained_cfg") and hasattr(model, "reset_classifier")


def classifier_outputs(model: nn.Module) -> int | None:
    """How many classes the model's own head has (timm: get_classifier; torchvision: the
    final Linear, see split_head); None when there is no Linear head."""
    if is_timm_model(model):
        head = model.get_classifier()
        return head.out_features if isinstance(head, nn.Linear) else None
    found = _final_linear(model)
    return found[2].out_features if found else None


def _final_linear(model: nn.Module) -> tuple[nn.Module, str, nn.Linear] | None:
    # (parent, attribute, the Linear) of a torchvision classifier's output layer
    for name in ("fc", "classifier", "head", "heads"):
        module = getattr(model, name, None)
        if isinstance(module, nn.Linear):
            return model, name, module
        if isinstance(module, nn.Sequential) and isinstance(module[-1], nn.Linear):
            return module, list(module._modules)[-1], module[-1]  # "1", or ViT's "head"
    return None


def split_head(model: nn.Module) -> tuple[nn.Module, int]:
    """Remove the classifier's final Linear (timm: reset_classifier(0)); return (body, the
    width of the pooled features it now returns). ValueError when there is no such layer."""
    if is_timm_model(model):
        model.reset_classifier(0)
        return model, getattr(model, "head_hidden_size", None) or model.num_features
    found = _final_linear(model)
    if found is None:
        raise ValueError(f"{type(model).__name__}: no final Linear layer found to replace")
    parent, attribute, linear = found
    setattr(parent, attribute, nn.Identity())
    return model, linear.in_features


# ------------------------------------------------------------------ stages
@dataclass(frozen=True)
class Stages:
    """The body's parameter names grouped in forward order. `stem`: before the first stage
    (never counted by last:N); `stages[i]`: stage i's parameter names (whatever follows the
    last stage, a final 1x1 conv or norm, belongs to it); `entries[i]`: the module whose
    forward starts stage i; `source`: where the grouping comes from (for messages)."""

    stem: tuple[str, ...]
    stages: tuple[tuple[str, ...], ...]
    entries: tuple[str, ...]
    source: str


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def from_prefixes(body: nn.Module, stem: list[str], stages: list[list[str]], source: str
                  ) -> Stages:
    """Stages of a torchvision body from module / parameter-name prefixes: a parameter
    under none of them comes after the last stage (a final conv or norm) and joins it."""
    groups: list[list[str]] = [[] for _ in stages]
    stem_names = []
    for name, _ in body.named_parameters():
        if any(_under(name, p) for p in stem):
            stem_names.append(name)
            continue
        hit = [i for i, prefixes in enumerate(stages) if any(_under(name, p) for p in prefixes)]
        groups[hit[0] if hit else -1].append(name)
    return Stages(tuple(stem_names), tuple(tuple(g) for g in groups),
                  tuple(prefixes[0] for prefixes in stages), source)


def torchvision_stages(body: nn.Module) -> Stages | None:
    """The stage table of the torchvision families (None for the others)."""
    tvm = torchvision.models
    kind = type(body).__name__
    if isinstance(body, tvm.ResNet):  # resnet*, resnext*, wide_resnet*
        return from_prefixes(body, ["conv1", "bn1"], [[f"layer{i}"] for i in range(1, 5)], kind)
    if isinstance(body, tvm.RegNet):
        blocks = [f"trunk_output.{n}" for n, _ in body.trunk_output.named_children()]
        return from_prefixes(body, ["stem"], [[b] for b in blocks], kind)
    if isinstance(body, tvm.EfficientNet | tvm.MobileNetV2 | tvm.MobileNetV3):
        # features: stem, the stages, then a 1x1 conv that joins the last stage
        n = len(body.features)
        return from_prefixes(body, ["features.0"], [[f"features.{i}"] for i in range(1, n - 1)],
                             kind)
    if isinstance(body, tvm.ConvNeXt | tvm.SwinTransformer):
        # features: stem, stage, then (downsampling, stage) pairs: a downsampling layer
        # opens the stage after it, as in timm's grouping
        n = len(body.features)
        pairs = [[f"features.{i}", f"features.{i + 1}"] for i in range(2, n - 1, 2)]
        return from_prefixes(body, ["features.0"], [["features.1"], *pairs], kind)
    if isinstance(body, tvm.VisionTransformer):
        layers = [f"encoder.layers.{n}" for n, _ in body.encoder.layers.named_children()]
        return from_prefixes(body, ["class_token", "conv_proj", "encoder.pos_embedding"],
                             [[layer] for layer in layers], kind)
    return None


def timm_stages(body: nn.Module) -> Stages | None:
    """Stages from timm's own grouping, `group_matcher(coarse=True)` (stem, then one group
    per stage, in forward order; what matches no pattern, the neck before the removed
    classifier, joins the last stage). None when the model has no dict matcher."""
    from timm.models._manipulate import group_with_matcher  # timm's grouping (0.9, 1.x)

    try:
        matcher = body.group_matcher(coarse=True)
    except (AttributeError, NotImplementedError):
        return None
    if not isinstance(matcher, dict) or not matcher:
        return None
    sentinel = "\x00unmatched"  # matches no pattern: it marks timm's group of leftovers
    named = [(n, n) for n, _ in body.named_parameters()] + [(sentinel, sentinel)]
    groups = [g for _, g in sorted(group_with_matcher(named, matcher).items())]
    leftover = next(g for g in groups if sentinel in g)
    groups = [g for g in groups if g and g is not leftover]
    stem = groups.pop(0) if next(iter(matcher)) == "stem" and groups else []
    if not groups:
        return None
    groups[-1] = groups[-1] + [n for n in leftover if n != sentinel]
    entries = tuple(_common_module(g) for g in groups)
    return Stages(tuple(stem), tuple(tuple(g) for g in groups), entries,
                  f"timm {type(body).__name__}.group_matcher")


def _common_module(names: list[str]) -> str:
    """The deepest module holding the parameters of `names` that are under the first one's
    top-level module ("stages.3" of stages.3.* + the head.norm.* joined to the last stage)."""
    top = names[0].split(".")[0]
    parts = [n.split(".")[:-1] for n in names if n.split(".")[0] == top]
    common = []
    for level in zip(*parts, strict=False):
        if len(set(level)) > 1:
            break
        common.append(level[0])
    return ".".join(common) or ".".join(parts[0])


def stages_of(body: nn.Module) -> Stages | None:
    """The body's stages (torchvision table or timm's grouping); None when unknown."""
    return timm_stages(body) if is_timm_model(body) else torchvision_stages(body)


KNOWN_FAMILIES = ("torchvision ResNet / ResNeXt / Wide ResNet, RegNet, EfficientNet (v1, v2), "
                  "MobileNet v2 / v3, ConvNeXt, Swin, ViT; timm models with a group_matcher")


# ------------------------------------------------------------------ shared trunk
@dataclass(frozen=True)
class SequentialForm:
    """A classifier whose forward is `tail(flatten(modules(x)))`: its `modules` called in
    order (stem, stages, pooling), torch.flatten(x, 1) when `flatten`, then the `tail`
    modules (the classifier; what is left of it in a headless body). Lets a frozen leading
    part of `modules` run once for two networks of the same family."""

    modules: tuple[str, ...]
    flatten: bool
    tail: tuple[str, ...]


def sequential_form(model: nn.Module) -> SequentialForm | None:
    """The form of the torchvision CNNs whose forward is their modules in order (ResNet,
    RegNet, EfficientNet, MobileNet v3, ConvNeXt, Swin); None for the others (ViT and timm
    models run their own forward)."""
    tvm = torchvision.models
    if isinstance(model, tvm.ResNet):
        stem = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
        return SequentialForm((*stem, "avgpool"), True, ("fc",))
    if isinstance(model, tvm.RegNet):
        blocks = [f"trunk_output.{n}" for n, _ in model.trunk_output.named_children()]
        return SequentialForm(("stem", *blocks, "avgpool"), True, ("fc",))
    features = [f"features.{i}" for i in range(len(getattr(model, "features", [])))]
    if isinstance(model, tvm.EfficientNet | tvm.MobileNetV3):
        return SequentialForm((*features, "avgpool"), True, ("classifier",))
    if isinstance(model, tvm.ConvNeXt):
        return SequentialForm((*features, "avgpool"), False, ("classifier",))
    if isinstance(model, tvm.SwinTransformer):
        return SequentialForm((*features, "norm", "permute", "avgpool", "flatten"), False,
                              ("head",))
    return None


def run_from(model: nn.Module, form: SequentialForm, x: torch.Tensor, start: int
             ) -> torch.Tensor:
    """The model's forward from `form.modules[start]` on, given that module's input x."""
    for name in form.modules[start:]:
        x = model.get_submodule(name)(x)
    if form.flatten:
        x = torch.flatten(x, 1)
    for name in form.tail:
        x = model.get_submodule(name)(x)
    return x


def run_until(model: nn.Module, form: SequentialForm, x: torch.Tensor, stop: int
              ) -> torch.Tensor:
    """The output of `form.modules[:stop]` (the trunk) on the network input x."""
    for name in form.modules[:stop]:
        x = model.get_submodule(name)(x)
    return x


def _same_module(a: nn.Module, b: nn.Module) -> bool:
    """Same type, eval mode, every parameter frozen in `a`, parameters and buffers equal."""
    if type(a) is not type(b) or a.training or b.training:
        return False
    if any(p.requires_grad for p in a.parameters()):
        return False
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        sa[k].device == sb[k].device and sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k])
        for k in sa)


def shared_trunk(body: nn.Module, pretrained: nn.Module) -> tuple[SequentialForm, int] | None:
    """(form, k) when the fine-tuned body and the pretrained classifier begin with the same
    k >= 1 modules: same family with a sequential form, and each of those modules frozen in
    `body`, in eval mode in both and bit-identical (parameters and buffers: both loaded from
    the same ImageNet weights, BatchNorm statistics never updated). Then modules[:k] can run
    once for both. None otherwise (the two networks run their own forwards). Compares the
    weights once: call it once per pass over images."""
    form = sequential_form(body)
    if form is None or type(body) is not type(pretrained) or sequential_form(pretrained) != form:
        return None
    k = 0
    for name in form.modules:
        if not _same_module(body.get_submodule(name), pretrained.get_submodule(name)):
            break
        k += 1
    return (form, k) if k else None
