"""Experts and the one decision rule that fuses them (generalised calibrated stacking).

Expert convention. An expert scores the images of one pool (validation images in the
protocol, test images at prediction time) with `scores(fit_classes)`: a float64 array
(n_images, n_classes) of LOG-probabilities. `fit_classes` are the seen classes whose labels
the expert may use (the protocol passes each fold's seen classes, prediction all of them).
An expert that covers only some classes fills the other columns itself with a documented
neutral value: closed-world seen experts (ResNet, probe) use log(1/K), K = the classes they
scored, i.e. "no opinion". `covers` is None when every class gets a real score.

Decision rule (Chao et al. 2016, generalised to several experts):
    fused[i, c] = sum_e w_e * scores_e[i, c] - gamma * [c is seen];  prediction = argmax
over the candidate classes (protocol: the 40 seen classes; test: all 50).

Weights and gamma are chosen by the leave-classes-out protocol on training data: the seen
classes are cut into folds, each fold hides one group (its classes play unseen, fitted
experts are refit without them), and the held-out images of all seen classes are classified
among the seen classes. u = mean per-class accuracy on the hidden group, s = on the rest;
the objective is the expected test accuracy (1 - p) s + p u, p = share of unseen classes.
Weights: coordinate ascent over WEIGHT_GRID (0 reachable: a useless expert gets 0; ties go
to the smaller weight); gamma: swept exactly (per image the decision flips at one gamma).

Transductive refinement: soft k-means on class prototypes in the image-embedding space over
the unlabelled pool, started from the fused posteriors; it adds a score term with its own
weight, kept only when the protocol (pool = validation images) shows a gain.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from . import attributes

log = logging.getLogger("pixelplay")

WEIGHT_GRID = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
# Temperature of the attribute expert: its cosines lie in [-1, 1]; x10 gives the best class
# odds of e^(10 x gap), the range a CLIP-style logit scale gives its cosine gaps.
ATTRIBUTE_TEMPERATURE = 10.0
# Probe regulariser: lam x ||W - W_text||^2 beside a mean cross-entropy. With unit-norm rows
# and a logit scale near 100, 1.0 lets a row move about 0.1 from the text row on ~150 images
# per class, enough to fix confusions, not enough to forget the text classifier.
PROBE_LAM = 1.0
PROBE_STEPS = 50  # LBFGS iterations; converged on every fixture tried (loss change < 1e-6)
TRANSDUCTIVE_STEPS = 5
TRANSDUCTIVE_PRIOR = 1.0  # the text prototype counts as this many images of its class
MAX_ROUNDS = 4  # coordinate-ascent sweeps; it stops earlier when nothing changes


class Expert(Protocol):
    """What the fusion needs of an expert (see the module docstring)."""

    name: str
    covers: set[int] | None

    def scores(self, fit_classes: list[int]) -> np.ndarray: ...


def log_softmax(x: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax of (n, k) scores, float64."""
    return torch.log_softmax(torch.as_tensor(x, dtype=torch.float64), dim=1).numpy()


def closed_world(logits: np.ndarray, fit_classes: Sequence[int], n_classes: int) -> np.ndarray:
    """(n, n_classes) log-probs: log-softmax over fit_classes' columns of `logits`, the
    neutral log(1/K) (K = len(fit_classes)) in every other column."""
    fit = list(fit_classes)
    out = np.full((logits.shape[0], n_classes), -math.log(len(fit)))
    out[:, fit] = log_softmax(logits[:, fit])
    return out


def harmonic(u: float, s: float) -> float:
    """H, the harmonic mean of unseen and seen accuracy (the GZSL literature's summary)."""
    return 0.0 if u + s == 0 else 2 * u * s / (u + s)


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float64)."""
    x = np.asarray(x, dtype=np.float64)
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)


# ---------------------------------------------------------------- experts


@dataclass
class TextExpert:
    """Zero-shot image-text expert: log_softmax(scale x cos(image, class text)), all classes.

    images: (n, d) image embeddings of the pool; text: (n_classes, d) class embeddings;
    scale: the model's logit scale (CLIP 100; SigLIP's own; its bias cancels in a softmax).
    """

    images: np.ndarray
    text: np.ndarray
    scale: float
    name: str = "text"
    covers: set[int] | None = None

    def scores(self, fit_classes: list[int]) -> np.ndarray:
        # Fixed expert: it never saw a label, fit_classes does not matter.
        return log_softmax(self.scale * l2_normalise(self.images) @ l2_normalise(self.text).T)


@dataclass
class LogitExpert:
    """A closed-world classifier given its logits on the pool (n, n_classes), e.g. the
    fine-tuned ResNet's mean vote logits: log-softmax over fit_classes, neutral elsewhere."""

    logits: np.ndarray
    name: str = "resnet"
    covers: set[int] | None = field(default=None)

    def scores(self, fit_classes: list[int]) -> np.ndarray:
        return closed_world(self.logits, fit_classes, self.logits.shape[1])


@dataclass
class ProbeExpert:
    """Seen-class probe: multinomial logistic regression on image embeddings, started from
    and pulled toward the text classifier (minimise CE(scale x W x + b) + lam ||W - W_text||^2
    with LBFGS), refit on the training images of fit_classes only.

    pool: (n, d) embeddings of the images to score; train / train_labels: (m, d) embeddings
    and class indices of labelled training images; text: (n_classes, d); scale: logit scale.
    """

    pool: np.ndarray
    train: np.ndarray
    train_labels: np.ndarray
    text: np.ndarray
    scale: float
    lam: float = PROBE_LAM
    name: str = "probe"
    covers: set[int] | None = None

    def fit(self, fit_classes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(W (k, d), b (k,)) for fit_classes, in that order."""
        rows = np.isin(self.train_labels, fit_classes)
        if not rows.any():
            raise ValueError(f"probe: no training image of classes {fit_classes}")
        remap = {c: k for k, c in enumerate(fit_classes)}
        # float32 with the logit scale folded into x once: half the time of float64 for the
        # same fit (LBFGS evaluates the loss ~100 times per fold)
        x = torch.as_tensor(self.scale * l2_normalise(self.train[rows]), dtype=torch.float32)
        y = torch.as_tensor([remap[int(c)] for c in self.train_labels[rows]])
        w0 = torch.as_tensor(l2_normalise(self.text)[fit_classes], dtype=torch.float32)
        w = w0.clone().requires_grad_(True)
        b = torch.zeros(len(fit_classes), requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=PROBE_STEPS, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(x @ w.T + b, y)
            loss = loss + self.lam * ((w - w0) ** 2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        return w.detach().double(), b.detach().double()

    def scores(self, fit_classes: list[int]) -> np.ndarray:
        w, b = self.fit(list(fit_classes))
        logits = np.zeros((self.pool.shape[0], self.text.shape[0]))
        pool = torch.as_tensor(l2_normalise(self.pool))
        logits[:, fit_classes] = (self.scale * pool @ w.T + b).numpy()
        return closed_world(logits, fit_classes, self.text.shape[0])


@dataclass
class AttributeExpert:
    """The attribute model (attributes.py's ridge regression onto class attributes), refit on
    fit_classes: log_softmax(ATTRIBUTE_TEMPERATURE x cos(xW, a_c)) over every class.

    pool / train: (n, f) / (m, f) network features; attributes: (n_classes, a)."""

    pool: np.ndarray
    train: np.ndarray
    train_labels: np.ndarray
    attributes: np.ndarray
    lam: float = 1.0
    temperature: float = ATTRIBUTE_TEMPERATURE
    name: str = "attributes"
    covers: set[int] | None = None

    def scores(self, fit_classes: list[int]) -> np.ndarray:
        emb = attributes.class_embeddings(self.attributes)
        mean = self.train.mean(0)
        rows = np.isin(self.train_labels, fit_classes)
        w = attributes.fit_regression(attributes.prepare(self.train[rows], mean),
                                    self.train_labels[rows], emb, self.lam)
        compat = attributes.compatibility(attributes.prepare(self.pool, mean), w, emb)
        return log_softmax(self.temperature * compat)


# ---------------------------------------------------------------- decision rule


def fuse(scores: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """sum_e w_e x scores_e: (n, n_classes)."""
    total = np.zeros_like(scores[0])
    for s, w in zip(scores, weights, strict=True):
        if w:
            total += w * s
    return total


def decide(fused: np.ndarray, seen: Sequence[int], gamma: float,
           candidates: Sequence[int] | None = None) -> np.ndarray:
    """argmax over candidates (default all) of fused - gamma x [seen]: (n,) class indices."""
    calibrated = fused.astype(np.float64, copy=True)
    calibrated[:, list(seen)] -= gamma
    if candidates is not None:
        mask = np.ones(fused.shape[1], bool)
        mask[list(candidates)] = False
        calibrated[:, mask] = -np.inf
    return calibrated.argmax(1)


# ---------------------------------------------------------------- transductive refinement


def refine(fused: np.ndarray, pool: np.ndarray, text: np.ndarray, candidates: Sequence[int],
           scale: float, steps: int = TRANSDUCTIVE_STEPS,
           prior: float = TRANSDUCTIVE_PRIOR) -> np.ndarray:
    """Transductive score term (n, n_classes): soft k-means over the pool's embeddings.

    Starts from the posteriors softmax(fused) over candidates (fused already calibrated:
    gamma applied); each step recomputes the class prototypes as posterior-weighted means
    of the pool's embeddings plus the class's text row (moved across the image-text
    modality gap by the difference of the two means) counted as `prior` images, then the
    term log_softmax(scale x cos(x, prototype)) and the posteriors of fused + term.
    Columns outside candidates stay 0 (those classes are never predicted).
    """
    cand = list(candidates)
    x = l2_normalise(pool)
    t = l2_normalise(text)[cand]
    anchor = l2_normalise(t + (x.mean(0) - t.mean(0)))  # text rows in image space
    term = np.zeros_like(fused)
    post = torch.softmax(torch.as_tensor(fused[:, cand]), dim=1).numpy()
    for _ in range(steps):
        protos = l2_normalise(post.T @ x + prior * anchor)
        term[:, cand] = log_softmax(scale * x @ protos.T)
        post = torch.softmax(torch.as_tensor(fused[:, cand] + term[:, cand]), dim=1).numpy()
    return term


# ---------------------------------------------------------------- protocol


@dataclass
class Fold:
    """One leave-classes-out fold: the experts' scores on the pool, restricted to the seen
    classes (the candidates), and which of them play unseen."""

    scores: list[np.ndarray]  # per expert (n, n_seen) log-probs, columns = `classes`
    classes: list[int]  # the seen classes (candidates), column order
    hidden: list[int]  # pseudo-unseen group (class indices)
    labels: np.ndarray  # (n,) class indices


def make_folds(seen: Sequence[int], folds: int, seed: int) -> list[list[int]]:
    """The seen classes in `folds` random groups (at least 2, at most one per class)."""
    order = np.random.default_rng(seed).permutation(list(seen))
    n_groups = min(max(2, folds), len(seen))
    return [sorted(int(c) for c in g) for g in np.array_split(order, n_groups)]


def fold_scores(experts: Sequence[Expert], labels: np.ndarray, seen: Sequence[int],
                groups: list[list[int]]) -> list[Fold]:
    """Every expert's scores for every fold (fitted experts refit without the group)."""
    seen = [int(c) for c in seen]
    out = []
    for group in groups:
        fit = [c for c in seen if c not in group]
        scores = [np.asarray(e.scores(fit), dtype=np.float64)[:, seen] for e in experts]
        out.append(Fold(scores, seen, group, np.asarray(labels)))
    return out


@dataclass
class Curve:
    """u, s, acc as functions of gamma (arrays over `gammas`), averaged over folds."""

    gammas: np.ndarray
    u: np.ndarray
    s: np.ndarray
    acc: np.ndarray

    def at(self, k: int) -> dict[str, float]:
        u, s = float(self.u[k]), float(self.s[k])
        return {"gamma": float(self.gammas[k]), "u": u, "s": s,
                "H": harmonic(u, s), "acc": float(self.acc[k])}

    def best(self) -> int:
        """Index of the best acc; on a plateau, its middle (the most robust gamma)."""
        top = np.flatnonzero(self.acc >= self.acc.max() - 1e-12)
        return int(top[len(top) // 2])


def _thresholds(fused: np.ndarray, fold: Fold) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image: the gamma above which a hidden class wins (t), and whether the best
    fold-seen / best hidden class is the true one."""
    hidden = np.isin(fold.classes, fold.hidden)
    cols = np.asarray(fold.classes)
    seen_part = np.where(hidden, -np.inf, fused)
    hid_part = np.where(hidden, fused, -np.inf)
    t = seen_part.max(1) - hid_part.max(1)
    return t, cols[seen_part.argmax(1)] == fold.labels, cols[hid_part.argmax(1)] == fold.labels


def sweep(folds: list[Fold], weights: Sequence[float], unseen_share: float,
          extra: list[np.ndarray] | None = None) -> Curve:
    """Exact gamma sweep of the fused rule: u, s, acc for every gamma where a decision
    flips (midpoints of the per-image thresholds), averaged over folds. `extra`: per fold
    an (n, n_seen) term added to the fused scores (the transductive term)."""
    parts = []
    for k, fold in enumerate(folds):
        fused = fuse(fold.scores, weights)
        if extra is not None:
            fused = fused + extra[k]
        parts.append(_thresholds(fused, fold))
    t_all = np.sort(np.concatenate([p[0] for p in parts]))
    t_all = t_all[np.isfinite(t_all)]
    inner = (t_all[1:] + t_all[:-1]) / 2 if len(t_all) > 1 else np.zeros(0)
    lo, hi = (t_all[0], t_all[-1]) if len(t_all) else (0.0, 0.0)
    gammas = np.unique(np.concatenate([[lo - 1.0], inner, [hi + 1.0]]))
    u_sum, s_sum = np.zeros(len(gammas)), np.zeros(len(gammas))
    for fold, (t, seen_ok, hid_ok) in zip(folds, parts, strict=True):
        u_sum += _class_mean(fold, fold.hidden, hid_ok, t, gammas, hidden=True)
        fit = [c for c in fold.classes if c not in fold.hidden]
        s_sum += _class_mean(fold, fit, seen_ok, t, gammas, hidden=False)
    u, s = u_sum / len(folds), s_sum / len(folds)
    return Curve(gammas, u, s, (1 - unseen_share) * s + unseen_share * u)


def _class_mean(fold: Fold, classes: list[int], ok: np.ndarray, t: np.ndarray,
                gammas: np.ndarray, hidden: bool) -> np.ndarray:
    """Mean per-class accuracy over the `classes` that have images, at every gamma (0 when
    none has).

    A hidden-class image is right when its best hidden class is true and gamma > t; a
    fold-seen image when its best seen class is true and gamma <= t."""
    total, counted = np.zeros(len(gammas)), 0
    for c in classes:
        mine = fold.labels == c
        if not mine.any():
            continue
        counted += 1
        tc = np.sort(t[mine & ok])
        below = np.searchsorted(tc, gammas, side="left")  # images with t < gamma
        total += (below if hidden else len(tc) - below) / mine.sum()
    return total / max(counted, 1)


def select_weights(folds: list[Fold], names: list[str], unseen_share: float,
                   tol: float) -> tuple[list[float], Curve]:
    """Coordinate ascent over WEIGHT_GRID, starting from the best single expert at 1.

    A change is kept only when it raises the best acc by more than tol (smaller weights win
    ties, so an expert that does not help stays at 0). Returns (weights, their Curve)."""
    alone = [sweep(folds, np.eye(len(names))[e], unseen_share) for e in range(len(names))]
    # The anchor (best alone) fixes the scale: the rule is invariant to scaling all weights
    # and gamma together, so only the others' weights shrink on ties.
    anchor = int(np.argmax([c.acc.max() for c in alone]))
    weights = list(np.eye(len(names))[anchor])
    curve = sweep(folds, weights, unseen_share)
    for _ in range(MAX_ROUNDS):
        changed = False
        for e in range(len(names)):
            for w in WEIGHT_GRID:
                if w == weights[e]:
                    continue
                trial = [*weights[:e], w, *weights[e + 1:]]
                if not any(trial):
                    continue
                c = sweep(folds, trial, unseen_share)
                gain = c.acc.max() - curve.acc.max()
                if gain > tol or (e != anchor and abs(gain) <= tol and w < weights[e]):
                    weights, curve, changed = trial, c, True
        if not changed:
            break
    return [float(w) for w in weights], curve


# ---------------------------------------------------------------- fitting and applying


@dataclass
class FusionState:
    """What prediction needs: expert names and weights, gamma, the transductive term's
    weight (0 = off) and the protocol's report. Saved with torch.save as plain types."""

    names: list[str]
    weights: list[float]
    gamma: float
    seen: list[int]
    n_classes: int
    transductive_weight: float = 0.0
    scale: float = 100.0
    report: dict[str, Any] = field(default_factory=dict)

    def to_state(self) -> dict[str, Any]:
        return {"names": list(self.names), "weights": [float(w) for w in self.weights],
                "gamma": float(self.gamma), "seen": [int(c) for c in self.seen],
                "n_classes": int(self.n_classes),
                "transductive_weight": float(self.transductive_weight),
                "scale": float(self.scale), "report": json.loads(json.dumps(self.report))}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> FusionState:
        return cls(**state)


def protocol(experts: Sequence[Expert], labels: np.ndarray, seen: Sequence[int],
             n_classes: int, folds: int = 4, seed: int = 0, transductive: str = "auto",
             pool: np.ndarray | None = None, text: np.ndarray | None = None,
             scale: float = 100.0) -> FusionState:
    """Choose weights, gamma (and the transductive term) by leave-classes-out.

    experts: scoring the validation images (labels: (n,) their classes, all seen).
    pool / text: (n, d) image embeddings of those images and (n_classes, d) class text
    embeddings, needed for the transductive term (else it is off). transductive: auto
    (kept when it raises acc) | on | off. Raises ValueError on an empty expert list.
    """
    if not experts:
        raise ValueError("fusion: no expert to fuse (config field experts; see README)")
    names = [e.name for e in experts]
    labels = np.asarray(labels)
    unseen_share = 1 - len(seen) / n_classes
    groups = make_folds(seen, folds, seed)
    fs = fold_scores(experts, labels, seen, groups)
    tol = 0.5 / max(len(labels), 1)  # a gain under half an image is noise
    weights, curve = select_weights(fs, names, unseen_share, tol)
    k = curve.best()
    report: dict[str, Any] = {
        "folds": groups, "unseen_share": unseen_share, "experts": {},
        "weights": dict(zip(names, weights, strict=True)), "fusion": curve.at(k),
        "gamma0": curve.at(int(np.argmin(np.abs(curve.gammas)))),
        "never_unseen": curve.at(0),
        "curve": [curve.at(i) for i in range(0, len(curve.gammas),
                                             max(1, len(curve.gammas) // 200))]}
    for e, name in enumerate(names):
        alone = sweep(fs, np.eye(len(names))[e], unseen_share)
        report["experts"][name] = alone.at(alone.best())
    state = FusionState(names, weights, float(curve.gammas[k]), [int(c) for c in seen],
                        n_classes, 0.0, scale, report)
    if transductive != "off" and pool is not None and text is not None:
        _fit_transductive(state, fs, pool, text, transductive, tol)
    return state


def _fit_transductive(state: FusionState, fs: list[Fold], pool: np.ndarray, text: np.ndarray,
                      mode: str, tol: float) -> None:
    """Protocol run of the transductive term (pool = validation images): its weight from
    WEIGHT_GRID and a re-swept gamma; kept when it gains (auto) or always (on)."""
    base = state.report["fusion"]["acc"]
    unseen_share = state.report["unseen_share"]
    terms = []
    for fold in fs:
        fused = fuse(fold.scores, state.weights)
        full = np.zeros((len(fold.labels), state.n_classes))
        full[:, fold.classes] = fused
        full[:, [c for c in fold.classes if c not in fold.hidden]] -= state.gamma
        terms.append(refine(full, pool, text, fold.classes, state.scale)[:, fold.classes])
    best_w, best_curve = 0.0, None
    for w in WEIGHT_GRID[1:]:
        c = sweep(fs, state.weights, unseen_share, [w * t for t in terms])
        if best_curve is None or c.acc.max() > best_curve.acc.max() + tol:
            best_w, best_curve = w, c
    k = best_curve.best()
    with_term = best_curve.at(k)
    state.report["transductive"] = {"weight": best_w, "with": with_term, "without": base,
                                    "mode": mode}
    if mode == "on" or with_term["acc"] > base + tol:
        state.transductive_weight = best_w
        state.gamma = float(best_curve.gammas[k])
        state.report["transductive"]["kept"] = True
    else:
        state.report["transductive"]["kept"] = False


def apply_fusion(state: FusionState, experts: Sequence[Expert],
                 pool: np.ndarray | None = None, text: np.ndarray | None = None) -> np.ndarray:
    """Class indices (n,) for the images the experts score (test: all classes candidates).

    experts: the same names as state.names, scoring the test images and fitted on every
    seen class; pool / text: test image embeddings and class text embeddings, required
    when state.transductive_weight > 0. Raises ValueError when an expert is missing."""
    by_name = {e.name: e for e in experts}
    missing = [n for n, w in zip(state.names, state.weights, strict=True)
               if w and n not in by_name]
    if missing:
        raise ValueError(f"fusion was fitted with experts {missing} that are not given now; "
                         "run predict with the same `experts` as train (or retrain)")
    scores = [by_name[n].scores(state.seen) if w else None
              for n, w in zip(state.names, state.weights, strict=True)]
    used = [(s, w) for s, w in zip(scores, state.weights, strict=True) if s is not None]
    fused = fuse([s for s, _ in used], [w for _, w in used])
    if state.transductive_weight:
        if pool is None or text is None:
            raise ValueError("fusion uses the transductive term: pass the test embeddings "
                             "(pool) and class text embeddings (text)")
        calibrated = fused.copy()
        calibrated[:, state.seen] -= state.gamma
        fused = fused + state.transductive_weight * refine(
            calibrated, pool, text, range(state.n_classes), state.scale)
    return decide(fused, state.seen, state.gamma)


EXPERT_NAMES = ("resnet", "attributes", "imagenet", "text", "probe")


def parse_experts(spec: str, available: Sequence[str]) -> list[str]:
    """The experts to fuse: config field `experts` ("auto" = every available one, else a
    comma list of EXPERT_NAMES) intersected with what this run can build, in EXPERT_NAMES
    order. Raises ValueError naming the field for unknown or unavailable names, and when
    nothing is left."""
    if spec.strip() == "auto":
        chosen = [n for n in EXPERT_NAMES if n in available]
    else:
        asked = [n.strip() for n in spec.split(",") if n.strip()]
        unknown = [n for n in asked if n not in EXPERT_NAMES]
        if unknown:
            raise ValueError(f"experts={spec!r}: unknown {unknown}; use auto or a comma list "
                             f"of {', '.join(EXPERT_NAMES)}")
        absent = [n for n in asked if n not in available]
        if absent:
            raise ValueError(f"experts={spec!r}: {absent} not available in this run (available: "
                             f"{', '.join(available) or 'none'}); resnet / attributes need a "
                             "trained model.pt, text / probe a vl_model")
        chosen = [n for n in EXPERT_NAMES if n in asked]
    if not chosen:
        raise ValueError(f"experts={spec!r}: no expert available; set vl_model or train a "
                         "ResNet first")
    return chosen


def vision_language_experts(names: Sequence[str], pool: np.ndarray, text: np.ndarray,
                            scale: float, train: np.ndarray | None = None,
                            train_labels: np.ndarray | None = None) -> list[Expert]:
    """The text and probe experts (those of `names`) scoring `pool` (n, d) image embeddings;
    the probe fits on train (m, d) / train_labels (m,) (training images of seen classes)."""
    experts: list[Expert] = []
    if "text" in names:
        experts.append(TextExpert(pool, text, scale))
    if "probe" in names:
        if train is None or train_labels is None:
            raise ValueError("the probe expert needs training-image embeddings and labels")
        experts.append(ProbeExpert(pool, train, train_labels, text, scale))
    return experts


def fit_fusion(cfg: Any, experts: Sequence[Expert], labels: np.ndarray, seen: Sequence[int],
               n_classes: int, pool: np.ndarray | None = None,
               text: np.ndarray | None = None, scale: float = 100.0) -> FusionState:
    """Run the protocol with the config's zs_folds, seed and transductive setting, save
    output_dir/fusion.pt + fusion.json, log the table, and return the state.

    experts score the VALIDATION images (labels: their classes); fitted experts are given
    training images only. pool / text: validation image embeddings and class text
    embeddings (for the transductive term; None = off)."""
    state = protocol(experts, labels, seen, n_classes, cfg.zs_folds, cfg.seed,
                     cfg.transductive, pool, text, scale)
    save_fusion(state, cfg.output_dir)
    for line in report_lines(state):
        log.info(line)
    return state


def report_lines(state: FusionState) -> list[str]:
    """The protocol's table: u, s, H, acc per expert alone, fused, gamma 0, never unseen,
    with / without the transductive term."""
    rows = [(f"{n} alone", r) for n, r in state.report["experts"].items()]
    rows += [("fused", state.report["fusion"]), ("fused, gamma 0", state.report["gamma0"]),
             ("fused, never unseen", state.report["never_unseen"])]
    if "transductive" in state.report:
        rows.append(("fused + transductive", state.report["transductive"]["with"]))
    lines = ["leave-classes-out protocol      u      s      H    acc   gamma"]
    lines += [f"{name:28s} {r['u']:.3f}  {r['s']:.3f}  {r['H']:.3f}  {r['acc']:.3f}  "
              f"{r['gamma']:+.2f}" for name, r in rows]
    weights = ", ".join(f"{n} {w:g}" for n, w in zip(state.names, state.weights, strict=True))
    lines.append(f"weights: {weights}; transductive weight {state.transductive_weight:g}")
    return lines


def save_fusion(state: FusionState, output_dir: str | Path) -> None:
    """output_dir/fusion.pt (torch.save of plain types, weights_only loadable) and the
    human-readable report output_dir/fusion.json."""
    from ..checkpoint import atomic_torch_save, atomic_write_text

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(state.to_state(), out / "fusion.pt")
    report = {"names": state.names, "weights": state.weights, "gamma": state.gamma,
              "transductive_weight": state.transductive_weight, **state.report}
    atomic_write_text(out / "fusion.json", json.dumps(report, indent=2) + "\n")


def load_fusion(output_dir: str | Path) -> FusionState:
    """The state save_fusion wrote. Raises FileNotFoundError naming the file and the fix."""
    path = Path(output_dir) / "fusion.pt"
    if not path.is_file():
        raise FileNotFoundError(f"no fusion at {path}: run train with the vision-language "
                                "experts first (it writes fusion.pt)")
    return FusionState.from_state(torch.load(path, weights_only=True))
