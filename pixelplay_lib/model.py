"""Network, freeze policy, weights.

`Net` is a torchvision or timm classifier (`backbones.py`) whose last Linear is split off
as `head`, so the pooled features the zero-shot step needs come out of the same forward pass
as the logits.

The freeze policy (`trainable`, set_trainable) is one rule for every backbone: "all";
"last:N", the last N stages of the body (backbones.stages_of: ResNet layer1..4, EfficientNet
feature stages, ConvNeXt / Swin stages, RegNet blocks, ViT encoder layers, timm's own
grouping) plus the head; or, as before, a comma list of blocks ("layer4,fc"). Two defects of
the baseline are fixed for every family: BatchNorm layers of frozen blocks stay in eval mode
whatever `.train()` says (their running statistics used to drift), and the frozen prefix
(everything before the first stage that trains) runs under no_grad, autograd resuming at
that stage's first module.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torchvision
from torch import nn
from torch.utils.hooks import RemovableHandle

from . import backbones
from .backbones import WeightsUnavailable
from .config import parse_last
from .locate import find_weights_file

log = logging.getLogger("pixelplay")

HEAD_NAMES = {"fc", "head", "classifier"}


class Net(nn.Module):
    """body -> pooled features -> head (class logits); optionally -> attr_head (attribute
    logits, an auxiliary target that keeps the features describing colours, patterns and
    shapes, which the unseen classes share with the seen ones)."""

    def __init__(self, body: nn.Module, head: nn.Linear, attr_head: nn.Linear | None = None):
        super().__init__()
        self.body, self.head, self.attr_head = body, head, attr_head
        # Set by set_trainable: whether the whole body is frozen (only the heads train), and
        # the hook that ends the frozen prefix at the first trainable stage.
        self._frozen_body = False
        self._prefix_end: RemovableHandle | None = None
        self._grad_after_prefix: bool | None = None  # grad mode to resume, during features()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, in_features) pooled features of a (batch, 3, H, W) float batch. The frozen
        prefix runs under no_grad: no autograd bookkeeping for blocks that never train."""
        if self._frozen_body:
            with torch.no_grad():
                return self.body(x)
        if self._prefix_end is None:
            return self.body(x)
        self._grad_after_prefix = torch.is_grad_enabled()
        try:
            with torch.no_grad():  # until _resume_autograd, at the first trainable stage
                return self.body(x)
        finally:
            self._grad_after_prefix = None

    def _resume_autograd(self, module: nn.Module, args: tuple) -> None:
        # forward pre-hook of the first trainable stage; inert when the body is called
        # directly rather than through features()
        if self._grad_after_prefix is not None:
            torch.set_grad_enabled(self._grad_after_prefix)

    def forward(self, x: torch.Tensor, extras: bool = False):
        """Logits; with extras, (logits, features, attribute logits or None). One method, so
        that DistributedDataParallel sees every trainable parameter used in its forward."""
        f = self.features(x)
        if not extras:
            return self.head(f)
        return self.head(f), f, self.attr_head(f) if self.attr_head is not None else None

    def forward_both(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, f, _ = self(x, extras=True)
        return logits, f

    def train(self, mode: bool = True) -> Net:
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                if not any(p.requires_grad for p in m.parameters()):
                    m.eval()
        return self


def build_model(arch: str, num_classes: int, weights: str = "none", trainable: str = "all",
                input_root: str = "/kaggle/input", n_attributes: int = 0) -> Net:
    """A Net for `arch` (a torchvision classifier name, or "timm:<name>"), starting from
    `weights` (none | imagenet | a state-dict file), with the freeze policy `trainable`.
    Raises ValueError (unknown arch or block, timm missing), FileNotFoundError,
    WeightsUnavailable."""
    if backbones.is_timm(arch):
        classifier = backbones.timm_classifier(arch, weights, input_root)
    else:
        classifier = torchvision_classifier(arch, weights, input_root)
    body, in_features = backbones.split_head(classifier)
    attr_head = nn.Linear(in_features, n_attributes) if n_attributes else None
    net = Net(body, nn.Linear(in_features, num_classes), attr_head)
    set_trainable(net, trainable)
    return net


def torchvision_classifier(arch: str, weights: str, input_root: str) -> nn.Module:
    """torchvision's classifier `arch` with its own head, random or loaded (load_weights)."""
    try:
        tv = torchvision.models.get_model(arch, weights=None)
    except ValueError as e:
        known = ", ".join(torchvision.models.list_models(torchvision.models)[:12])
        raise ValueError(f"unknown arch {arch!r} (torchvision classifiers, e.g. {known}, ...; "
                         f"timm models as {backbones.TIMM_PREFIX}<name>)") from e
    if weights != "none":
        tv.load_state_dict(load_weights(arch, weights, input_root))
    return tv


def trainable_parameters(body: nn.Module, spec: str) -> tuple[set[str], bool]:
    """(names of the body parameters that train, whether the head trains) for `spec`:
    "all"; "last:N" (the last N stages and the head; backbones.stages_of); or a comma list
    of blocks (parameter-name prefixes, e.g. "layer4") with "fc"/"head"/"classifier" for
    the head. Raises ValueError naming the blocks or stages there are."""
    names = [n for n, _ in body.named_parameters()]
    last = parse_last(spec)
    if last is not None:
        stages = backbones.stages_of(body)
        if stages is None:
            raise ValueError(f"trainable={spec!r}: no stage table for {type(body).__name__} "
                             f"(last:N knows {backbones.KNOWN_FAMILIES}); name its blocks "
                             f"instead ({', '.join(_top_blocks(names))}, or fc / all)")
        if last > len(stages.stages):
            raise ValueError(f"trainable={spec!r}: {stages.source} has {len(stages.stages)} "
                             f"stages ({', '.join(stages.entries)}): use last:0 to "
                             f"last:{len(stages.stages)}, or all")
        chosen = stages.stages[len(stages.stages) - last:] if last else ()
        return {n for stage in chosen for n in stage}, True
    tokens = [t.strip() for t in spec.split(",") if t.strip()]
    if "all" in tokens:
        return set(names), True
    blocks = [t for t in tokens if t not in HEAD_NAMES]
    chosen = {n for n in names if any(n == b or n.startswith(b + ".") for b in blocks)}
    unknown = [b for b in blocks if not any(n == b or n.startswith(b + ".") for n in names)]
    if unknown:
        raise ValueError(f"trainable={spec!r}: no block named {', '.join(unknown)} "
                         f"(blocks: {', '.join(_top_blocks(names))}, or fc / all / last:N)")
    return chosen, bool(HEAD_NAMES & set(tokens))


def _top_blocks(names: list[str]) -> list[str]:
    return sorted({n.split(".")[0] for n in names})


def set_trainable(net: Net, spec: str) -> None:
    """Apply the freeze policy `spec` (trainable_parameters) to net: requires_grad of every
    parameter, and where the frozen part is a prefix, the no_grad forward up to the first
    stage that trains (a forward pre-hook on that stage's first module)."""
    chosen, head = trainable_parameters(net.body, spec)
    for name, p in net.body.named_parameters():
        p.requires_grad_(name in chosen)
    heads = [net.head] + ([net.attr_head] if net.attr_head is not None else [])
    for p in (p for h in heads for p in h.parameters()):
        p.requires_grad_(head)
    if net._prefix_end is not None:
        net._prefix_end.remove()
        net._prefix_end = None
    net._frozen_body = not chosen
    entry = prefix_end(net.body, chosen)
    if entry is not None:
        net._prefix_end = net.body.get_submodule(entry).register_forward_pre_hook(
            net._resume_autograd)


def trainable_problems(arch: str, trainable: str) -> list[str]:
    """The freeze policy's error for `arch` (e.g. last:9 of a 4-stage ResNet, a block it
    lacks), for preflight: the network is built without weights, on the meta device (no
    memory, a fraction of a second) or, for families whose initialisation needs real
    tensors (RegNet), on the CPU. An arch that cannot be built is not reported here
    (preflight's weights check names it)."""

    def body() -> nn.Module:
        return backbones.split_head(
            backbones.timm_classifier(arch, "none", "") if backbones.is_timm(arch)
            else torchvision.models.get_model(arch, weights=None))[0]

    try:
        try:
            with torch.device("meta"):
                built = body()
        except (NotImplementedError, RuntimeError):  # "Cannot copy out of meta tensor"
            built = body()
    except Exception:  # unknown arch, timm missing: reported by the weights check
        return []
    try:
        trainable_parameters(built, trainable)
    except ValueError as e:
        return [str(e)]
    return []


def prefix_end(body: nn.Module, chosen: set[str]) -> str | None:
    """The module starting the first stage (in forward order) that holds a trainable
    parameter, when every parameter before it is frozen; None when the stem trains, nothing
    in the body trains, or the family has no stage table (autograd then tracks frozen blocks
    as it would anyway: nothing, for lack of inputs that require grad)."""
    stages = backbones.stages_of(body) if chosen else None
    if stages is None or chosen & set(stages.stem):
        return None
    for stage, entry in zip(stages.stages, stages.entries, strict=True):
        if chosen & set(stage):
            # a BatchNorm entry could be replaced by SyncBatchNorm, losing the hook
            bn = isinstance(body.get_submodule(entry), nn.modules.batchnorm._BatchNorm)
            return None if bn else entry
    return None


def load_weights(arch: str, weights: str, input_root: str) -> dict[str, torch.Tensor]:
    """ImageNet weights of torchvision's `arch` (from torchvision, or a copy of its file
    found under input_root), or a state dict at a path (.pth / .safetensors)."""
    if weights != "imagenet":
        return backbones.read_state_dict(Path(weights))
    enum = torchvision.models.get_model_weights(arch).DEFAULT
    filename = enum.url.rsplit("/", 1)[-1]
    attached = find_weights_file(filename, input_root)  # any mount layout, bounded walk
    if attached:
        log.info("using attached ImageNet weights %s", attached)
        return torch.load(attached, map_location="cpu", weights_only=True)
    try:
        return enum.get_state_dict(progress=False)
    except Exception as e:  # URLError, socket and SSL errors, HTTP errors...
        raise WeightsUnavailable(
            f"cannot download the ImageNet weights for {arch} ({filename}): "
            f"{type(e).__name__}: {e}\n"
            f"On Kaggle: switch the notebook's Internet on, or attach a dataset holding "
            f"{filename} (found up to 6 folders below {input_root}, e.g. in "
            f"datasets/<owner>/<slug>/). Elsewhere: put the file in "
            f"~/.cache/torch/hub/checkpoints/, or pass weights=/path/to/{filename}, "
            f"or weights=none to train from scratch.") from e
