"""Experts and the one decision rule that fuses them (generalised calibrated stacking).

Expert convention. An expert scores the images of one pool (held-out images in the
protocol, test images at prediction time) with `scores(fit_classes)`: a float64 array
(n_images, n_classes) of LOG-probabilities. `fit_classes` are the seen classes whose labels
the expert may use (the protocol passes each fold's seen classes, prediction all of them).
A closed-world expert (`closed = True`: the fine-tuned network, the probe) scores only the
classes it knows and puts the neutral log(1/K) in every other column, "no opinion".

Decision rule (Chao et al. 2016, "An empirical study and analysis of generalized zero-shot
learning for object recognition in the wild", generalised to several experts):
    fused[i, c] = sum_e w_e * scores_e[i, c] - gamma * [c is seen];  prediction = argmax
over the candidate classes (protocol: the seen classes; test: all of them).

Two ways choose w and gamma:
- the leave-classes-out protocol (`protocol`, at the end of training, no test image yet):
  the seen classes are cut into folds, each fold hides one group (its classes play
  unseen, fitted experts are refit without them) and the held-out images of all seen
  classes are classified among the seen classes. u = mean per-class accuracy on the
  hidden group, s = on the rest, objective (1 - p) s + p u. Groups are anti-clustered (a
  hidden class keeps its nearest rivals seen, as the real unseen ones do) and the neutral
  value is log(1/K) with the K of prediction time, not of the fold. Its estimate stays
  optimistic: the fine-tuned network has seen the hidden classes, and the text model may be
  worse on the real unseen ten than on seen ones.
- the test pool (`apply_fusion`, default `policy="test"`): testpool.choose estimates the
  share of unseen images in the test pool and the accuracy of every candidate rule from
  the held-out images kept by the protocol, and picks weights and gamma there; the protocol's
  choice is the starting point and the fallback (too few test images, `policy="protocol"`).

Transductive term (optional, config field `transductive`): soft k-means on class
prototypes in the image-embedding space over the unlabelled test (and held-out) images,
started from the fused posteriors; a score term with its own weight.
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
# The probe's bias is pulled to 0 as well: unregularised, it learnt the training set's class
# frequencies (up to 5x apart), a seen-class prior the test images need not share.
PROBE_BIAS_LAM = 0.1
PROBE_STEPS = 50  # LBFGS iterations; converged on every fixture tried (loss change < 1e-6)
TRANSDUCTIVE_STEPS = 5
TRANSDUCTIVE_GRID = (0.25, 0.5, 1.0, 2.0)
TRANSDUCTIVE_PRIOR = 1.0  # the text prototype counts as this many images of its class
MAX_ROUNDS = 4  # coordinate-ascent sweeps; it stops earlier when nothing changes
POLICIES = ("test", "protocol")  # who chooses weights and gamma (see the module docstring)


class Expert(Protocol):
    """What the fusion needs of an expert (see the module docstring)."""

    name: str
    covers: set[int] | None
    # closed: bool (optional) -- True for closed-world experts (neutral outside fit_classes)

    def scores(self, fit_classes: list[int]) -> np.ndarray: ...


def log_softmax(x: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax of (n, k) scores, float64."""
    return torch.log_softmax(torch.as_tensor(x, dtype=torch.float64), dim=1).numpy()


def closed_world(logits: np.ndarray, fit_classes: Sequence[int], n_classes: int,
                 neutral_k: int | None = None) -> np.ndarray:
    """(n, n_classes) log-probs: log-softmax over fit_classes' columns of `logits`, the
    neutral log(1/K) in every other column (K = neutral_k, default len(fit_classes))."""
    fit = list(fit_classes)
    out = np.full((logits.shape[0], n_classes), -math.log(neutral_k or len(fit)))
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
    closed: bool = True

    def scores(self, fit_classes: list[int]) -> np.ndarray:
        return closed_world(self.logits, fit_classes, self.logits.shape[1])


@dataclass
class ProbeExpert:
    """Seen-class probe (a linear probe): multinomial logistic regression on image
    embeddings, started from and pulled toward the text classifier, refit on the training
    images of fit_classes only. Minimises, with LBFGS,
        class-balanced CE(scale x W x + b) + lam ||W - W_text||^2 + PROBE_BIAS_LAM ||b||^2
    (each class weighs the same in the loss, whatever its number of images: the training
    set's imbalance is not a prior of the test set).

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
    closed: bool = True

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
        counts = torch.bincount(y, minlength=len(fit_classes)).float()
        balance = counts.sum() / (len(fit_classes) * counts.clamp(min=1))
        w0 = torch.as_tensor(l2_normalise(self.text)[fit_classes], dtype=torch.float32)
        w = w0.clone().requires_grad_(True)
        b = torch.zeros(len(fit_classes), requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=PROBE_STEPS, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(x @ w.T + b, y, weight=balance)
            loss = loss + self.lam * ((w - w0) ** 2).sum() + PROBE_BIAS_LAM * (b ** 2).sum()
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
    fitted: bool = True  # learns from fit_classes' images (the protocol refits it)

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


# ---------------------------------------------------------------- transductive term


def prototypes(calibrated: np.ndarray, pool: np.ndarray, text: np.ndarray,
               candidates: Sequence[int], scale: float, steps: int = TRANSDUCTIVE_STEPS,
               prior: float = TRANSDUCTIVE_PRIOR) -> np.ndarray:
    """Class prototypes (n_classes, d) by soft k-means over the unlabelled images `pool`
    (n, d), started from the posteriors softmax(calibrated) over candidates (calibrated:
    fused scores with gamma applied). Each step: prototypes = posterior-weighted means of
    the pool plus the class's text row (moved across the image-text modality gap by the
    difference of the two means) counted as `prior` images; posteriors of calibrated +
    term. Rows outside candidates stay 0."""
    cand = list(candidates)
    x = l2_normalise(pool)
    t = l2_normalise(text)[cand]
    anchor = l2_normalise(t + (x.mean(0) - t.mean(0)))  # text rows in image space
    post = torch.softmax(torch.as_tensor(calibrated[:, cand]), dim=1).numpy()
    protos = np.zeros((text.shape[0], x.shape[1]))
    for _ in range(steps):
        protos[cand] = l2_normalise(post.T @ x + prior * anchor)
        term = transductive_term(x, protos, cand, scale)
        post = torch.softmax(torch.as_tensor(calibrated[:, cand] + term[:, cand]),
                             dim=1).numpy()
    return protos


def transductive_term(embeddings: np.ndarray, protos: np.ndarray, candidates: Sequence[int],
                      scale: float) -> np.ndarray:
    """(n, n_classes) log_softmax(scale x cos(x, prototype)) over candidates, 0 elsewhere."""
    cand = list(candidates)
    term = np.zeros((embeddings.shape[0], protos.shape[0]))
    term[:, cand] = log_softmax(scale * l2_normalise(embeddings) @ l2_normalise(protos[cand]).T)
    return term


def refine(fused: np.ndarray, pool: np.ndarray, text: np.ndarray, candidates: Sequence[int],
           scale: float) -> np.ndarray:
    """The transductive term of the pool's own images (fused already calibrated)."""
    return transductive_term(pool, prototypes(fused, pool, text, candidates, scale),
                             candidates, scale)


# ---------------------------------------------------------------- protocol


@dataclass
class Fold:
    """One leave-classes-out fold: the experts' scores on the pool, restricted to the seen
    classes (the candidates), and which of them play unseen."""

    scores: list[np.ndarray]  # per expert (n, n_seen) log-probs, columns = `classes`
    classes: list[int]  # the seen classes (candidates), column order
    hidden: list[int]  # pseudo-unseen group (class indices)
    labels: np.ndarray  # (n,) class indices


def make_folds(seen: Sequence[int], folds: int, seed: int,
               similarity: np.ndarray | None = None) -> list[list[int]]:
    """The seen classes in `folds` groups (at least 2, at most one per class).

    similarity: (n_classes, n_classes), e.g. cosines of the class text embeddings. Given,
    the groups are anti-clustered: classes are placed one by one (random order) into the
    group, among those with room, whose most similar member is least similar to it, so a
    hidden class keeps its nearest rivals among the seen ones, as the real unseen classes
    do (rhinoceros keeps hippopotamus and elephant). Without it, random groups."""
    order = [int(c) for c in np.random.default_rng(seed).permutation(list(seen))]
    n_groups = min(max(2, folds), len(order))
    if similarity is None:
        return [sorted(int(c) for c in g) for g in np.array_split(order, n_groups)]
    sizes = [len(g) for g in np.array_split(order, n_groups)]
    groups: list[list[int]] = [[] for _ in range(n_groups)]
    for c in order:
        room = [g for g in range(n_groups) if len(groups[g]) < sizes[g]]
        worst = [max((similarity[c, m] for m in groups[g]), default=-np.inf) for g in room]
        groups[room[int(np.argmin(worst))]].append(c)
    return [sorted(g) for g in groups]


def fold_scores(experts: Sequence[Expert], labels: np.ndarray, seen: Sequence[int],
                groups: list[list[int]]) -> list[Fold]:
    """Every expert's scores for every fold (fitted experts refit without the group).
    A closed-world expert's neutral value is log(1/K) with K = every seen class, as at
    prediction time: a confident image then has the gap log K between its class and the
    neutral columns in a fold as at test (with the fold's smaller K, the seen classes would
    gain log(K_test / K_fold) x the expert's weight at test, uncompensated)."""
    seen = [int(c) for c in seen]
    out = []
    for group in groups:
        fit = [c for c in seen if c not in group]
        scores = []
        for e in experts:
            s = np.asarray(e.scores(fit), dtype=np.float64)
            if getattr(e, "closed", False):
                s = s.copy()
                s[:, group] = -math.log(len(seen))
            scores.append(s[:, seen])
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


def sweep(folds: list[Fold], weights: Sequence[float], unseen_share: float) -> Curve:
    """Exact gamma sweep of the fused rule: u, s, acc for every gamma where a decision
    flips (midpoints of the per-image thresholds), averaged over folds."""
    parts = [_thresholds(fuse(fold.scores, weights), fold) for fold in folds]
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


# ---------------------------------------------------------------- the fitted fusion


@dataclass
class FusionState:
    """What prediction needs: expert names and weights, gamma, the transductive term's
    weight (0 = off) and prototypes, who chooses on the test pool (`policy`), the held-out
    images' expert scores the test-pool choice is measured against, and the report.
    Saved with torch.save as plain types and arrays (weights_only loadable)."""

    names: list[str]
    weights: list[float]
    gamma: float
    seen: list[int]
    n_classes: int
    transductive_weight: float = 0.0
    scale: float = 100.0
    report: dict[str, Any] = field(default_factory=dict)
    policy: str = "test"
    transductive: str = "off"  # the term's mode for the test-pool choice: auto | on | off
    # held-out images: {"labels": (n,), "scores": {name: (n, n_classes) float32},
    # "hidden": {name: (n, n_classes), see hidden_scores}, "embeddings": (n, d) or None}
    heldout: dict[str, Any] | None = None
    prototypes: np.ndarray | None = None  # (n_classes, d): the term's, once chosen

    def to_state(self) -> dict[str, Any]:
        held = None
        if self.heldout is not None:
            held = {"labels": torch.as_tensor(np.asarray(self.heldout["labels"])),
                    **{part: {n: torch.as_tensor(np.asarray(v, np.float32))
                              for n, v in self.heldout.get(part, {}).items()}
                       for part in ("scores", "hidden")}}
            if self.heldout.get("embeddings") is not None:
                held["embeddings"] = torch.as_tensor(
                    np.asarray(self.heldout["embeddings"], np.float32))
        return {"names": list(self.names), "weights": [float(w) for w in self.weights],
                "gamma": float(self.gamma), "seen": [int(c) for c in self.seen],
                "n_classes": int(self.n_classes),
                "transductive_weight": float(self.transductive_weight),
                "scale": float(self.scale), "report": json.loads(json.dumps(self.report)),
                "policy": self.policy, "transductive": self.transductive, "heldout": held,
                "prototypes": None if self.prototypes is None
                else torch.as_tensor(np.asarray(self.prototypes, np.float32))}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> FusionState:
        state = dict(state)
        held = state.get("heldout")
        if held is not None:
            state["heldout"] = {
                "labels": np.asarray(held["labels"]),
                **{part: {n: np.asarray(v, np.float64) for n, v in held.get(part, {}).items()}
                   for part in ("scores", "hidden")},
                "embeddings": np.asarray(held["embeddings"]) if "embeddings" in held else None}
        if state.get("prototypes") is not None:
            state["prototypes"] = np.asarray(state["prototypes"], np.float64)
        return cls(**state)


def protocol(experts: Sequence[Expert], labels: np.ndarray, seen: Sequence[int],
             n_classes: int, folds: int = 4, seed: int = 0, transductive: str = "off",
             pool: np.ndarray | None = None, text: np.ndarray | None = None,
             scale: float = 100.0, policy: str = "test") -> FusionState:
    """Choose weights and gamma by leave-classes-out; keep what the test-pool choice needs.

    experts: scoring the held-out (validation) images (labels: (n,) their classes, all
    seen); fitted experts are given training images only. pool / text: (n, d) image
    embeddings of those images and (n_classes, d) class text embeddings (text also orders
    the folds; pool feeds the transductive term). transductive: auto | on | off, the term's
    mode when apply_fusion chooses on the test pool; policy: "test" (apply_fusion chooses
    on the test pool) or "protocol" (the weights and gamma chosen here are final).
    Raises ValueError on an empty expert list or an unknown policy.
    """
    if not experts:
        raise ValueError("fusion: no expert to fuse (config field experts; see README)")
    if policy not in POLICIES:
        raise ValueError(f"fusion policy={policy!r}: one of {', '.join(POLICIES)}")
    names = [e.name for e in experts]
    labels = np.asarray(labels)
    unseen_share = 1 - len(seen) / n_classes
    similarity = None if text is None else l2_normalise(text) @ l2_normalise(text).T
    groups = make_folds(seen, folds, seed, similarity)
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
    heldout = {"labels": labels, "embeddings": pool,
               "scores": {e.name: np.asarray(e.scores(list(seen)), np.float32) for e in experts},
               "hidden": hidden_scores(experts, fs, n_classes)}
    return FusionState(names, weights, float(curve.gammas[k]), [int(c) for c in seen],
                       n_classes, 0.0, scale, {"protocol": report}, policy, transductive,
                       heldout)


def hidden_scores(experts: Sequence[Expert], folds: list[Fold], n_classes: int
                  ) -> dict[str, np.ndarray]:
    """Per fitted expert that scores unseen classes (the attribute model): (n, n_classes)
    float32, each held-out image's scores from the fold where its class was hidden (the
    expert refit without it), in its group's columns only (NaN elsewhere). What calibrates
    the confidence of choosing among classes it never learnt (testpool.calibrate_groups)."""
    out = {}
    for e, expert in enumerate(experts):
        if getattr(expert, "closed", False) or not getattr(expert, "fitted", False):
            continue
        table = np.full((len(folds[0].labels), n_classes), np.nan, np.float32)
        for fold in folds:
            rows = np.flatnonzero(np.isin(fold.labels, fold.hidden))
            cols = [fold.classes.index(c) for c in fold.hidden]
            table[np.ix_(rows, fold.hidden)] = fold.scores[e][np.ix_(rows, cols)]
        out[expert.name] = table
    return out


def apply_fusion(state: FusionState, experts: Sequence[Expert],
                 pool: np.ndarray | None = None, text: np.ndarray | None = None,
                 choose: bool = True) -> np.ndarray:
    """Class indices (n,) for the images the experts score (all classes candidates).

    experts: the same names as state.names, scoring these images and fitted on every seen
    class; pool / text: their image embeddings and the class text embeddings (needed for
    the transductive term). With choose (the test images) and state.policy "test", the
    weights, gamma and term are first chosen on these images (testpool.choose; the state
    is updated in place, its report gains "test_pool"); choose=False applies the state as
    it is (the Special-Package photos after the test pool chose).
    Raises ValueError when an expert the state uses is missing, or the term lacks pool/text.
    """
    by_name = {e.name: e for e in experts}
    missing = [n for n, w in zip(state.names, state.weights, strict=True)
               if (w or (choose and state.policy == "test")) and n not in by_name]
    if missing:
        raise ValueError(f"fusion was fitted with experts {missing} that are not given now; "
                         "run predict with the same `experts` as train (or retrain)")
    scores = {n: by_name[n].scores(state.seen) for n in state.names if n in by_name}
    if choose and state.policy == "test" and state.heldout is not None:
        _choose_on_test(state, scores, pool, text)
    fused = fuse([scores[n] for n, w in zip(state.names, state.weights, strict=True) if w],
                 [w for w in state.weights if w])
    if state.transductive_weight:
        if pool is None or state.prototypes is None:
            raise ValueError("fusion uses the transductive term: pass the images' embeddings "
                             "(pool) and class text embeddings (text)")
        fused = fused + state.transductive_weight * transductive_term(
            pool, state.prototypes, range(state.n_classes), state.scale)
    return decide(fused, state.seen, state.gamma)


def _choose_on_test(state: FusionState, scores: dict[str, np.ndarray],
                    pool: np.ndarray | None, text: np.ndarray | None) -> None:
    """testpool.choose on these (test) images; updates state in place. Too few images:
    the protocol's choice stays, with a line in the report saying why."""
    from . import testpool

    held = state.heldout
    n_test = len(next(iter(scores.values())))
    unseen = [c for c in range(state.n_classes) if c not in set(state.seen)]
    if n_test < testpool.MIN_TEST or not unseen:
        state.report["test_pool"] = {
            "skipped": f"{n_test} test images (the test-pool choice needs "
                       f"{testpool.MIN_TEST}), {len(unseen)} unseen classes: the protocol's "
                       "weights and gamma are used"}
        return
    pools = testpool.Pools(list(state.names), [held["scores"][n] for n in state.names],
                           [scores[n] for n in state.names], np.asarray(held["labels"]),
                           list(state.seen), unseen,
                           hidden=[held.get("hidden", {}).get(n) for n in state.names])
    term_fn = None
    if state.transductive != "off" and pool is not None and text is not None \
            and held.get("embeddings") is not None:
        both = np.concatenate([held["embeddings"], pool])
        cache: dict[str, np.ndarray] = {}

        def term_fn(weights, gamma):
            held_f, test_f = pools.fused(weights)
            calibrated = np.concatenate([held_f, test_f])
            calibrated[:, state.seen] -= gamma
            cache["protos"] = prototypes(calibrated, both, text, range(state.n_classes),
                                         state.scale)
            term = transductive_term(both, cache["protos"], range(state.n_classes),
                                     state.scale)
            return term[:len(held_f)], term[len(held_f):]

    choice = testpool.choose(pools, state.weights, WEIGHT_GRID, MAX_ROUNDS, term_fn,
                             state.transductive, TRANSDUCTIVE_GRID, state.gamma)
    choice["report"]["protocol_gamma"] = state.gamma
    state.weights, state.gamma = choice["weights"], choice["gamma"]
    state.transductive_weight = choice["term_weight"]
    state.prototypes = cache["protos"] if choice["term_weight"] else None
    state.report["test_pool"] = choice["report"]


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


def report_lines(state: FusionState) -> list[str]:
    """The fusion's tables: the leave-classes-out protocol (u, s, H, acc per expert alone,
    fused, gamma 0, never unseen) and, once chosen, the test pool's estimates."""
    lines = []
    proto = state.report.get("protocol")
    if proto:
        rows = [(f"{n} alone", r) for n, r in proto["experts"].items()]
        rows += [("fused", proto["fusion"]), ("fused, gamma 0", proto["gamma0"]),
                 ("fused, never unseen", proto["never_unseen"])]
        lines.append("leave-classes-out protocol      u      s      H    acc   gamma")
        lines += [f"{name:28s} {r['u']:.3f}  {r['s']:.3f}  {r['H']:.3f}  {r['acc']:.3f}  "
                  f"{r['gamma']:+.2f}" for name, r in rows]
    test = state.report.get("test_pool")
    if test and "candidates" in test:
        pi = test["unseen_share"]
        lines.append(f"test pool: unseen share estimated {pi['estimate']:.3f} (+-"
                     f"{pi['se']:.3f}), predicted {pi['predicted']:.3f}")
        lines.append("test-pool estimate              acc   seen  unseen  gamma  unseen%")
        for name, r in test["candidates"].items():
            lines.append(f"{name:28s} {r['acc']:.3f}  {r['seen']:.3f}  {r['unseen']:.3f}  "
                         f"{r['gamma']:+6.2f}  {100 * r['predicted_unseen_share']:5.1f}")
        c, guard = test["chosen"], test["guard"]
        lines.append(f"chosen: {c['name']} (estimate {c['acc']:.3f}, 90% interval "
                     f"{c['interval'][0]:.3f}-{c['interval'][1]:.3f}; {guard['candidate']} "
                     f"needed +{guard['needed']:.3f} over {guard['incumbent']}, had "
                     f"{guard['gain_worst']:+.3f} at worst)")
    elif test:
        lines.append(f"test pool: {test['skipped']}")
    weights = ", ".join(f"{n} {w:g}" for n, w in zip(state.names, state.weights, strict=True))
    lines.append(f"weights: {weights}; gamma {state.gamma:+.3f}; transductive weight "
                 f"{state.transductive_weight:g}")
    return lines


def save_fusion(state: FusionState, output_dir: str | Path, name: str = "fusion") -> None:
    """output_dir/<name>.pt (torch.save of plain types and tensors, weights_only
    loadable) and the human-readable report output_dir/<name>.json."""
    from ..checkpoint import atomic_torch_save, atomic_write_text

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(state.to_state(), out / f"{name}.pt")
    report = {"names": state.names, "weights": state.weights, "gamma": state.gamma,
              "transductive_weight": state.transductive_weight, "policy": state.policy,
              **state.report}
    atomic_write_text(out / f"{name}.json", json.dumps(report, indent=2) + "\n")


def load_fusion(output_dir: str | Path, name: str = "fusion") -> FusionState:
    """The state save_fusion wrote. Raises FileNotFoundError naming the file and the fix."""
    path = Path(output_dir) / f"{name}.pt"
    if not path.is_file():
        raise FileNotFoundError(f"no fusion at {path}: run train with the vision-language "
                                "experts first (it writes fusion.pt)")
    return FusionState.from_state(torch.load(path, weights_only=True))
