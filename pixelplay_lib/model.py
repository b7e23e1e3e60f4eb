"""Backbone, head, freeze policy and weights.

`Net` is a torchvision classifier whose last Linear is split off as `head`, so the pooled
features the zero-shot step needs come out of the same forward pass as the logits.
Two defects of the baseline are fixed here: BatchNorm layers of frozen blocks stay in eval
mode whatever `.train()` says (their running statistics used to drift), and the frozen
stem runs without autograd (no activations kept for blocks that never train).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torchvision
from torch import nn

from .locate import find_weights_file

log = logging.getLogger("pixelplay")

HEAD_NAMES = {"fc", "head", "classifier"}


class WeightsUnavailable(RuntimeError):
    pass


class Net(nn.Module):
    """body -> pooled features -> head (class logits); optionally -> attr_head (attribute
    logits, an auxiliary target that keeps the features describing colours, patterns and
    shapes, which the unseen classes share with the seen ones)."""

    def __init__(self, body: nn.Module, head: nn.Linear, attr_head: nn.Linear | None = None):
        super().__init__()
        self.body, self.head, self.attr_head = body, head, attr_head
        self._stem: list[str] = []  # leading children of a sequential body that never train

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if not self._stem:
            return self.body(x)
        with torch.no_grad():
            for name in self._stem:
                x = getattr(self.body, name)(x)
        for name, child in self.body.named_children():
            if name not in self._stem:
                x = child(x)
        return torch.flatten(x, 1)

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
    try:
        tv = torchvision.models.get_model(arch, weights=None)
    except ValueError as e:
        known = ", ".join(torchvision.models.list_models(torchvision.models)[:12])
        raise ValueError(f"unknown arch {arch!r} (torchvision classifiers, e.g. {known}, ...)"
                         ) from e
    if weights != "none":
        tv.load_state_dict(load_weights(arch, weights, input_root))
    body, in_features = split_head(tv)
    attr_head = nn.Linear(in_features, n_attributes) if n_attributes else None
    net = Net(body, nn.Linear(in_features, num_classes), attr_head)
    set_trainable(net, trainable)
    return net


def split_head(tv: nn.Module) -> tuple[nn.Module, int]:
    """Replace the model's final Linear by Identity; return (body, its in_features)."""
    for name in ("fc", "classifier", "head", "heads"):
        module = getattr(tv, name, None)
        if isinstance(module, nn.Linear):
            setattr(tv, name, nn.Identity())
            return tv, module.in_features
        if isinstance(module, nn.Sequential) and isinstance(module[-1], nn.Linear):
            in_features = module[-1].in_features
            module[-1] = nn.Identity()
            return tv, in_features
    raise ValueError(f"{type(tv).__name__}: no final Linear layer found to replace")


def set_trainable(net: Net, spec: str) -> None:
    """`spec`: "all", or a comma list of body blocks (parameter-name prefixes, e.g. "layer4")
    plus "fc"/"head"/"classifier" for the new head. Everything else is frozen."""
    tokens = [t.strip() for t in spec.split(",") if t.strip()]
    everything = "all" in tokens
    head = everything or bool(HEAD_NAMES & set(tokens))
    blocks = [t for t in tokens if t not in HEAD_NAMES and t != "all"]
    matched = set()
    for name, p in net.body.named_parameters():
        hit = [b for b in blocks if name == b or name.startswith(b + ".")]
        matched.update(hit)
        p.requires_grad_(everything or bool(hit))
    heads = [net.head] + ([net.attr_head] if net.attr_head is not None else [])
    for p in (p for h in heads for p in h.parameters()):
        p.requires_grad_(head)
    unknown = [b for b in blocks if b not in matched]
    if unknown:
        top = sorted({n.split(".")[0] for n, _ in net.body.named_parameters()})
        raise ValueError(f"trainable={spec!r}: no block named {', '.join(unknown)} "
                         f"(blocks: {', '.join(top)}, or fc / all)")
    net._stem = frozen_stem(net.body)


def frozen_stem(body: nn.Module) -> list[str]:
    """Names of the leading children that are entirely frozen, for ResNet-style bodies whose
    forward is their children in order (other architectures run whole, with autograd)."""
    if not isinstance(body, torchvision.models.ResNet):
        return []
    stem = []
    for name, child in body.named_children():
        if any(p.requires_grad for p in child.parameters()):
            break
        stem.append(name)
    return stem if len(stem) < len(list(body.children())) else []


def load_weights(arch: str, weights: str, input_root: str) -> dict[str, torch.Tensor]:
    """ImageNet weights (from torchvision, or a copy of its file found under input_root),
    or a state dict at a path."""
    if weights != "imagenet":
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"weights file {path} not found (weights= imagenet, none "
                                    "or a path to a .pth state dict)")
        state = torch.load(path, map_location="cpu", weights_only=True)
        for key in ("state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
        return state
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
