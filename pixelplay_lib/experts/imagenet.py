"""The ImageNet-transfer expert: the pretrained network's own 1000-way head, mapped onto
the challenge classes.

The recipe replaces the ImageNet head of its backbone; that head already recognises 8 of
the 10 classes without training images (chimpanzee, collie, fox, gorilla, horse, rabbit,
sheep, squirrel) and many seen ones. This module keeps the untouched pretrained network,
runs it on the same views as the votes (`imagenet_forward`, for `inference.run_images`) and
turns its 1000 probabilities into (n_images, n_classes) log-probabilities through the table
`resources/imagenet_to_class.tsv` (provenance and every borderline decision are in its
header). It follows the expert convention of `fusion.py` (design: name, covers, scores).

The head was trained on ImageNet, never on the challenge's images, so classes it covers can
play "unseen" in the leave-classes-out protocol honestly: its protocol u is a fair estimate
(up to whatever photos AwA2 and ImageNet happen to share, which cannot be ruled out).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn

from .. import backbones
from ..data import canonical
from ..inference import Forward
from ..model import Net, load_weights

log = logging.getLogger("pixelplay")

N_IMAGENET = 1000
TABLE = "resources/imagenet_to_class.tsv"
# Probabilities are floored before the log so that weighted sums of experts never meet
# -inf (log(1e-12) = -27.6: "impossible" for any practical weight).
PROB_FLOOR = 1e-12
OUTPUT = "imagenet_logits"
# run_images must keep every view's logits: votes are averaged in probability space here,
# and "mean" would average logits instead.
KEEP = {OUTPUT: "all"}


@dataclass(frozen=True)
class MappingRow:
    """One line of the table: an ImageNet-1k index, its torchvision name, and the challenge
    class(es) it stands for (several: its probability is split evenly between them)."""

    index: int
    imagenet_name: str
    classes: tuple[str, ...]


def read_mapping(path: str | Path | None = None) -> list[MappingRow]:
    """The mapping table (default: the bundled `resources/imagenet_to_class.tsv`).

    Lines `index<TAB>ImageNet name<TAB>class[|class...]`; `#` lines are comments.
    Raises ValueError naming the file and line when a line has another shape, an index
    outside 0..999 or an index listed twice.
    """
    if path is None:
        text = resources.files("pixelplay_lib").joinpath(TABLE).read_text(encoding="utf-8")
        where = TABLE
    else:
        text, where = Path(path).read_text(encoding="utf-8"), str(path)
    rows: list[MappingRow] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) != 3 or not parts[0].strip().isdigit() or not parts[2].strip():
            raise ValueError(f"{where} line {number}: {line!r} is not "
                             "'index<TAB>ImageNet name<TAB>class[|class]'")
        index = int(parts[0])
        if not 0 <= index < N_IMAGENET or any(r.index == index for r in rows):
            raise ValueError(f"{where} line {number}: index {index} is outside 0..999 or "
                             "listed twice; give each ImageNet index one line")
        classes = tuple(c.strip() for c in parts[2].split("|") if c.strip())
        rows.append(MappingRow(index, parts[1].strip(), classes))
    return rows


def mapping_matrix(rows: list[MappingRow], classes: list[str]) -> np.ndarray:
    """(1000, len(classes)) float64: row j spreads ImageNet class j's probability over the
    challenge classes it stands for (1/k each of k); rows of unmapped ImageNet classes, and
    of classes this `classes` list lacks (matched by `data.canonical`), stay zero."""
    position = {canonical(name): i for i, name in enumerate(classes)}
    matrix = np.zeros((N_IMAGENET, len(classes)))
    for row in rows:
        targets = [position[canonical(c)] for c in row.classes if canonical(c) in position]
        matrix[row.index, targets] = 1.0 / len(targets) if targets else 0.0
    return matrix


def view_probabilities(imagenet_logits: np.ndarray) -> np.ndarray:
    """ImageNet logits (n, 1000) or (n, views, 1000) -> (n, 1000) probabilities: softmax
    per view, then the mean over views (votes are averaged in probability space)."""
    logits = torch.as_tensor(np.asarray(imagenet_logits), dtype=torch.float64)
    if logits.shape[-1] != N_IMAGENET or logits.ndim not in (2, 3):
        raise ValueError(f"expected ImageNet logits of shape (n, 1000) or (n, views, 1000), "
                         f"got {tuple(logits.shape)}")
    probs = torch.softmax(logits, -1)
    return (probs.mean(1) if probs.ndim == 3 else probs).numpy()


def class_probabilities(imagenet_probs: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """(n, 1000) ImageNet probabilities -> (n, n_classes) challenge-class probabilities,
    each row summing to one.

    A covered class (one with ImageNet counterparts) gets the probability mass of its
    ImageNet classes. The leftover mass, on ImageNet classes that stand for no challenge
    class, is spread evenly over the uncovered classes. Why: an image the head puts on none
    of the mapped classes is evidence for the classes ImageNet does not know (moose,
    rhinoceros, ...), so the expert has a real opinion there ("one of those, I cannot tell
    which") and the other experts choose among them; a fixed neutral value would instead
    let a covered class win on a sliver of mass. When every class is covered, the covered
    masses are renormalised to sum to one.
    """
    mass = imagenet_probs @ matrix
    uncovered = matrix.sum(0) == 0
    if not uncovered.any():
        return mass / np.maximum(mass.sum(1, keepdims=True), PROB_FLOOR)
    leftover = np.clip(1.0 - mass.sum(1), 0.0, None)
    mass[:, uncovered] = (leftover / uncovered.sum())[:, None]
    return mass


@dataclass
class ImageNetExpert:
    """Fixed expert (fusion convention): the same scores whatever `fit_classes` says, since
    the ImageNet head never learnt from the challenge's labels.

    log_probs: (n_images, n_classes) float64 log-probabilities of the current pool's images.
    covers: the class indices with ImageNet counterparts (the others share the leftover).
    """

    log_probs: np.ndarray
    covers: set[int]
    name: str = "imagenet"
    details: dict = field(default_factory=dict)

    def scores(self, fit_classes: list[int]) -> np.ndarray:
        """(n_images, n_classes) log-probabilities; `fit_classes` is ignored (fixed expert)."""
        return self.log_probs


def covered_classes(classes: list[str], rows: list[MappingRow] | None = None) -> set[int]:
    """Indices of `classes` with an ImageNet counterpart in the table (default bundled)."""
    matrix = mapping_matrix(read_mapping() if rows is None else rows, classes)
    return {int(c) for c in np.flatnonzero(matrix.sum(0) > 0)}


def make_expert(imagenet_logits: np.ndarray, classes: list[str],
                rows: list[MappingRow] | None = None) -> ImageNetExpert:
    """The expert for images whose ImageNet logits are (n, 1000) or (n, views, 1000), for
    the challenge classes `classes` (classes.txt order); `rows` default to the bundled
    table. Raises ValueError when no class of `classes` has an ImageNet counterpart."""
    matrix = mapping_matrix(read_mapping() if rows is None else rows, classes)
    covers = {int(c) for c in np.flatnonzero(matrix.sum(0) > 0)}
    if not covers:
        raise ValueError("none of the classes has an ImageNet counterpart in "
                         f"{TABLE}: the ImageNet expert has nothing to say (leave it out "
                         "of `experts`)")
    probs = class_probabilities(view_probabilities(imagenet_logits), matrix)
    return ImageNetExpert(np.log(np.maximum(probs, PROB_FLOOR)), covers)


def final_layer(net: nn.Module) -> nn.Module | None:
    """The classifier's output layer: the last Linear registered in the module (torchvision
    registers the head after the body, aux classifiers before it), or for networks without
    one (SqueezeNet) the last Conv2d."""
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    if linears:
        return linears[-1]
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1] if convs else None


def output_size(net: nn.Module) -> int | None:
    """How many outputs the final layer has (None when there is no Linear / Conv2d)."""
    layer = final_layer(net)
    if isinstance(layer, nn.Linear):
        return layer.out_features
    return layer.out_channels if isinstance(layer, nn.Conv2d) else None


def load_imagenet_network(arch: str, weights: str, input_root: str = "/kaggle/input"
                          ) -> nn.Module:
    """The untouched pretrained classifier `arch` with its 1000-way ImageNet head, in eval
    mode: `weights` = "imagenet" (torchvision's file, an attached copy under input_root
    first, see model.load_weights; for "timm:<name>", backbones.timm_classifier) or a path to
    a state dict of that arch with its original head. Any backbone whose weights carry an
    ImageNet-1k head will do: the table maps ImageNet indices, the same in every library.

    Raises ValueError naming the arch or file: an arch that is not a torchvision ImageNet
    classifier (or a timm model timm does not know, timm missing), weights="none", or
    weights without a 1000-way head; model.WeightsUnavailable when the ImageNet file can be
    neither found nor downloaded.
    """
    if backbones.is_timm(arch):
        return timm_imagenet_network(arch, weights, input_root)
    known = torchvision.models.list_models(torchvision.models)
    if arch not in known:
        raise ValueError(f"arch={arch!r} is not a torchvision ImageNet classifier, so it has "
                         f"no ImageNet-1k head for the ImageNet expert (e.g. "
                         f"{', '.join(known[:6])}, ...); leave imagenet out of `experts`")
    if weights == "none":
        raise ValueError("weights='none': the ImageNet expert needs the pretrained head "
                         "(weights=imagenet, or a path to a state dict with the original "
                         "1000-way head); leave imagenet out of `experts` otherwise")
    net = torchvision.models.get_model(arch, weights=None)
    if output_size(net) != N_IMAGENET:
        raise ValueError(f"arch={arch!r}: its final layer has {output_size(net)} outputs, "
                         f"not ImageNet's {N_IMAGENET}; leave imagenet out of `experts`")
    state = load_weights(arch, weights, input_root)
    head = head_name(net) + ".weight"
    if head in state and state[head].shape[0] != N_IMAGENET:
        raise ValueError(f"weights={weights!r}: {head} has {state[head].shape[0]} outputs, "
                         f"not ImageNet's {N_IMAGENET}: the ImageNet expert needs the "
                         "untouched pretrained network (weights=imagenet, or a state dict "
                         "with the original head), not a fine-tuned one")
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"weights={weights!r} is not a state dict of {arch} with its "
                         f"ImageNet head (pass weights=imagenet or such a file): {e}") from e
    return net.eval()


def timm_imagenet_network(arch: str, weights: str, input_root: str) -> nn.Module:
    """load_imagenet_network for "timm:<name>": the pretrained tag's head must have 1000
    outputs (checked before loading; an in21k or in12k tag has more), and so must a state
    dict given as `weights`. Raises ValueError naming the arch / weights and the fix."""
    leave_out = "leave imagenet out of `experts`"
    if weights == "none":
        raise ValueError("weights='none': the ImageNet expert needs the pretrained head "
                         f"(weights=imagenet or a state dict with it); {leave_out} otherwise")
    timm = backbones.check_timm_name(arch)
    cfg = timm.models.get_pretrained_cfg(backbones.timm_name(arch))
    if weights == "imagenet" and cfg is not None and cfg.num_classes != N_IMAGENET:
        raise ValueError(f"arch={arch!r}: its pretrained head has {cfg.num_classes} classes, "
                         f"not ImageNet-1k's {N_IMAGENET}: pick a tag fine-tuned on "
                         f"ImageNet-1k (ending in in1k), or {leave_out}")
    net = backbones.timm_classifier(arch, weights, input_root)
    outputs = backbones.classifier_outputs(net)
    if outputs != N_IMAGENET:
        raise ValueError(f"arch={arch!r}, weights={weights!r}: its head has {outputs} "
                         f"outputs, not ImageNet-1k's {N_IMAGENET}: the ImageNet expert needs "
                         f"the untouched pretrained network; {leave_out} otherwise")
    return net.eval()


def head_name(net: nn.Module) -> str:
    """The module name of `final_layer(net)` ("fc", "classifier.1", "heads.head", ...)."""
    layer = final_layer(net)
    return next(name for name, m in net.named_modules() if m is layer)


def imagenet_forward(net: nn.Module) -> Forward:
    """Forward for `inference.run_images`: {"imagenet_logits": (batch, 1000)}. Use
    `keep=KEEP` (every view), then `make_expert`; to share a pass with the fine-tuned
    network, merge the two forwards' dicts."""

    def forward(x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {OUTPUT: net(x)}

    return forward


def shared_trunk_forward(net: Net, pretrained: nn.Module) -> Forward | None:
    """One forward for the fine-tuned `net` and the pretrained network when they begin with
    the same frozen, bit-identical modules (backbones.shared_trunk; e.g. trainable=layer4,fc
    on ImageNet weights: conv1..layer3): that trunk runs once per view and feeds both.
    Returns {"logits", "features" (the Net's, as inference.classifier_forward), OUTPUT}, or
    None when they share no trunk (then each runs its own forward)."""
    shared = backbones.shared_trunk(net.body, pretrained)
    if shared is None:
        return None
    form, k = shared
    log.info("ImageNet expert: %s..%s shared with the fine-tuned network (one pass per view)",
             form.modules[0], form.modules[k - 1])

    def forward(x: torch.Tensor) -> dict[str, torch.Tensor]:
        trunk = backbones.run_until(net.body, form, x, k)
        features = backbones.run_from(net.body, form, trunk, k)
        return {"logits": net.head(features), "features": features,
                OUTPUT: backbones.run_from(pretrained, form, trunk, k)}

    return forward
