"""The fusion chosen on the test images themselves: weights, offset and an honest estimate.

The leave-classes-out protocol (fusion.protocol) can only imitate the unseen classes with
seen ones, and the imitation is biased: a hidden group loses its nearest rivals with it, the
fine-tuned network has seen the hidden classes, the image-text model may be worse on the
real unseen ten than on the seen forty. Its offset came out too low and its estimate too
high on simulated embeddings (issue "Fusion you can trust"). But the test images are given,
unlabelled, and they hold the real unseen classes. This module uses them, with the
held-out images of the seen classes (labelled, never trained on) as the reference:

1. pi, the share of test images from unseen classes, by mixture proportion estimation.
   The held-out images are a sample of the test pool's seen part. Score every image by
   t = best seen minus best unseen fused score; in the most seen-like bin (t above a
   threshold) almost no unseen image lies, so there the test mass over the held-out mass
   is 1 - pi ("best bin estimation": Garg, Wu, Smola, Balakrishnan, Lipton, NeurIPS 2021,
   "Mixture Proportion Estimation and PU Learning: A Modern Approach"). The held-out images
   are weighted so that every seen class counts the same (class_weights says why).
2. For weights w and offset gamma the test accuracy is estimated as
       acc(w, gamma) = (1 - pi) s(gamma) + C_test(gamma) - (1 - pi) C_held(gamma)
   s: weighted accuracy on the held-out images (measured: they are labelled);
   C(gamma): a pool's mean of [predicted unseen] x the confidence of that unseen class
   (softmax over the unseen classes of the scores before the transductive term). The test
   pool's sum minus the expected share of its seen images leaves the expected number of
   unseen images predicted right. That confidence is the one unmeasured part: the estimate
   is optimistic when the image-text model confidently swaps two unseen classes.
3. gamma maximises the estimate (an exact sweep: per image the decision flips at its t);
   weights by coordinate ascent over fusion.WEIGHT_GRID; the transductive term is kept only
   when it raises the estimate by more than the noise.
4. Guards, each the same test: a challenger replaces the rule in place only when its
   estimate is higher by more than twice the standard error of their paired difference on
   the held-out images, at pi and at pi +- pi's own standard error. The test pool's fusion
   challenges the protocol's; the best single expert (text alone is only the first
   place's rule, gamma 0: an offset the estimate chose for it lost up to 0.8 point) and
   then the fusion challenge the first place's rule, which also asks for ANCHOR_MARGIN:
   the estimate's own bias.
Everything here works on score arrays (n_images, n_classes) of log-probabilities; it knows
nothing of networks or images.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

BBE_DELTA = 0.01  # confidence of the best-bin choice: 0.01 halves the largest errors of 0.1
BOOTSTRAP = 100  # resamples of the held-out images for the estimate's interval
GUARD_SE = 2.0  # a challenger must beat the rule it would replace by this many standard errors
# ... and the first place's rule (text alone, gamma 0) by this much at least: the estimate's
# bias, which no standard error sees. On 70 random simulated regimes (simulate.random_regime)
# an estimated gain under 1.2 points over that rule was realised as -1.1 to +0.6 points (6
# losses); every one above 1.5 points was a real gain. With the margin and every seen class
# weighted equally: one loss in 74 runs, 0.17 point (random-48; `python bench/bench.py --only
# d --sim-regimes "" --sim-random 60`; README "Accuracy").
ANCHOR = "text, gamma 0"
ANCHOR_MARGIN = 0.015
# Fewer test images than this: the protocol decides. Below it the estimates are noise: on a
# 200-image demo pool the test pool's choice scored 6 points under the protocol's.
MIN_TEST = 500

# A term added to the fused scores: (weights, gamma) -> (held-out term, test term).
TermFn = Callable[[Sequence[float], float], tuple[np.ndarray, np.ndarray]]


def seen_gap(fused: np.ndarray, seen: Sequence[int], unseen: Sequence[int]) -> np.ndarray:
    """(n,) best seen-class score minus best unseen-class score: an image is predicted
    unseen exactly when the offset gamma exceeds it."""
    return fused[:, list(seen)].max(1) - fused[:, list(unseen)].max(1)


def unseen_confidence(plain: np.ndarray, fused: np.ndarray, unseen: Sequence[int],
                      temperature: float = 1.0) -> np.ndarray:
    """(n,) softmax over the unseen columns of temperature x `plain` (the weighted mean of
    the log-probabilities of the experts that score unseen classes, without the transductive
    term), taken at the unseen class `fused` would predict."""
    cols = list(unseen)
    probs = torch.softmax(torch.as_tensor(temperature * plain[:, cols], dtype=torch.float64),
                          1).numpy()
    return probs[np.arange(len(plain)), fused[:, cols].argmax(1)]


def calibrate_groups(hidden: np.ndarray, labels: np.ndarray) -> float:
    """Temperature that makes softmax(temperature x scores) calibrated for choosing among
    classes never learnt: hidden (n, n_classes) holds each held-out image's scores from the
    protocol's fold where its class was hidden (fitted experts refit without it), in that
    group's columns (NaN elsewhere); its label is one of them. Temperature scaling (Guo,
    Pleiss, Sun, Weinberger, ICML 2017, "On Calibration of Modern Neural Networks")."""
    finite = np.isfinite(hidden)
    # -1e4, not -inf: a masked column must not put inf x 0 = NaN into the gradient
    z = torch.as_tensor(np.where(finite, hidden, -1e4), dtype=torch.float64)
    ok = torch.as_tensor(finite[np.arange(len(labels)), labels])
    return fit_temperature(z[ok], torch.as_tensor(labels)[ok])


def fit_temperature(z: torch.Tensor, target: torch.Tensor) -> float:
    """argmin_T NLL(softmax(T z), target) by LBFGS on log T (z: (n, k) scores)."""
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], max_iter=50, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z * log_t.exp(), target)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp())


def seen_share(t_held: np.ndarray, w_held: np.ndarray, t_test: np.ndarray,
               delta: float = BBE_DELTA) -> tuple[float, float]:
    """Share of the test pool drawn like the held-out images (the seen part), in [0, 1],
    and its standard error.

    t_*: seen-ness scores (seen_gap); w_held: weights of the held-out images. Best bin
    estimation (Garg et al. 2021): over thresholds c, the test mass above c divided by the
    held-out mass above c, at the c that minimises that ratio plus its deviation bound. The
    standard error is the delta method's for that ratio of two binomial shares (the test
    pool's, the held-out images' at their effective sample size)."""
    order = np.argsort(t_held)
    held, cum = t_held[order], np.concatenate([[0.0], np.cumsum(w_held[order])])
    cum /= cum[-1]
    cuts = np.unique(np.concatenate([t_held, t_test]))
    q_held = 1.0 - cum[np.searchsorted(held, cuts, "left")]
    q_test = 1.0 - np.searchsorted(np.sort(t_test), cuts, "left") / len(t_test)
    n_held = 1.0 / np.sum((w_held / w_held.sum()) ** 2)  # effective sample size
    bound = (np.sqrt(np.log(4 / delta) / (2 * n_held))
             + np.sqrt(np.log(4 / delta) / (2 * len(t_test))))
    with np.errstate(divide="ignore", invalid="ignore"):
        objective = np.where(q_held > 0, (q_test + 1.01 * bound) / q_held, np.inf)
    k = int(np.argmin(objective))
    ratio = q_test[k] / q_held[k]
    rel_var = ((1 - q_test[k]) / max(len(t_test) * q_test[k], 1e-12)
               + (1 - q_held[k]) / max(n_held * q_held[k], 1e-12))
    return float(min(1.0, ratio)), float(ratio * np.sqrt(rel_var))


@dataclass
class Sweep:
    """One fused score over every offset where a decision flips: per gamma the held-out
    accuracy s, the held-out share predicted unseen f, the test share predicted unseen q,
    and the confidence sums C_held / C_test of point 2 above. gammas[k] lies between
    cuts[k - 1] and cuts[k] (the sorted distinct seen gaps t where decisions flip)."""

    gammas: np.ndarray
    s: np.ndarray
    f: np.ndarray
    q: np.ndarray
    c_held: np.ndarray
    c_test: np.ndarray
    cuts: np.ndarray

    def index(self, gamma: float) -> int:
        """The k whose decisions are those of this exact gamma (t < gamma: unseen)."""
        return int(np.searchsorted(self.cuts, gamma, "left"))

    def estimate(self, pi: float) -> np.ndarray:
        """Estimated test accuracy at every gamma for unseen share pi."""
        return (1 - pi) * self.s + np.maximum(self.c_test - (1 - pi) * self.c_held, 0.0)

    def best(self, pi: float) -> int:
        """Index of the best estimate; on a plateau, its middle."""
        est = self.estimate(pi)
        top = np.flatnonzero(est >= est.max() - 1e-12)
        return int(top[len(top) // 2])


@dataclass
class Pools:
    """The two pools' arrays for one choice: per expert (n, n_classes) log-probabilities on
    the held-out images (labelled: `labels`) and on the test images."""

    names: list[str]
    held: list[np.ndarray]
    test: list[np.ndarray]
    labels: np.ndarray
    seen: list[int]
    unseen: list[int]
    weights: np.ndarray = field(default_factory=lambda: np.zeros(0))  # per held-out image
    temperatures: dict[tuple, float] = field(default_factory=dict)  # per open-expert weights
    # per expert: the held-out images' scores from the fold where their class was hidden
    # (fusion.hidden_scores; None for closed experts or when unknown)
    hidden: list[np.ndarray | None] = field(default_factory=list)

    def temperature(self, w: Sequence[float]) -> float:
        """The temperature of the open experts' weighted mean under weights w (cached: it
        depends on their relative weights only). 1 when they are all fixed experts (text,
        ImageNet: their confidence is their own, as on seen classes); with a fitted one
        (the attribute model: its confidence on the classes it learnt says nothing of the
        others) calibrate_groups on the protocol's hidden-class scores."""
        use = [(e, wi) for e, wi in enumerate(w) if wi and self.is_open(e)]
        hidden = [self.hidden[e] if e < len(self.hidden) else None for e, _ in use]
        known = [h for h in hidden if h is not None]
        if not known:
            return 1.0
        total = sum(wi for _, wi in use)
        key = tuple((e, round(wi / total, 6)) for e, wi in use)
        if key not in self.temperatures:
            mask = np.isfinite(known[0])  # fixed experts: their scores, in the same groups
            mean = sum(wi * (h if h is not None else np.where(mask, self.held[e], np.nan))
                       for (e, wi), h in zip(use, hidden, strict=True)) / total
            self.temperatures[key] = calibrate_groups(mean, self.labels)
        return self.temperatures[key]

    def is_open(self, e: int) -> bool:
        """Whether expert e scores unseen classes (a closed-world expert's unseen columns
        all hold the same neutral value)."""
        return bool(np.ptp(self.test[e][:, self.unseen]) > 0)

    def open_mean(self, w: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        """Weighted mean of the experts that score unseen classes (not closed-world: their
        unseen columns are not constant), on both pools: what the confidence within the
        unseen classes is read from, whatever the scale of the weights."""
        use = [e for e, wi in enumerate(w) if wi and self.is_open(e)]
        if not use:
            return np.zeros_like(self.held[0]), np.zeros_like(self.test[0])
        total = sum(w[e] for e in use)
        return (sum(w[e] * self.held[e] for e in use) / total,
                sum(w[e] * self.test[e] for e in use) / total)

    def fused(self, w: Sequence[float], extra: tuple[np.ndarray, np.ndarray] | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
        held = sum(wi * s for wi, s in zip(w, self.held, strict=True) if wi)
        test = sum(wi * s for wi, s in zip(w, self.test, strict=True) if wi)
        if extra is not None:
            held, test = held + extra[0], test + extra[1]
        return held, test


def sweep(pools: Pools, w: Sequence[float], extra: tuple[np.ndarray, np.ndarray] | None = None
          ) -> Sweep:
    """The exact gamma sweep of the fused rule with weights w (+ an extra term)."""
    held, test = pools.fused(w, extra)
    plain_h, plain_t = pools.open_mean(w)
    seen, unseen = pools.seen, pools.unseen
    t_h, t_t = seen_gap(held, seen, unseen), seen_gap(test, seen, unseen)
    right = np.asarray(seen)[held[:, seen].argmax(1)] == pools.labels
    tau = pools.temperature(w)
    conf_h = unseen_confidence(plain_h, held, unseen, tau)
    conf_t = unseen_confidence(plain_t, test, unseen, tau)
    cuts = np.unique(np.concatenate([t_h, t_t]))
    gammas = np.concatenate([[cuts[0] - 1.0], (cuts[1:] + cuts[:-1]) / 2, [cuts[-1] + 1.0]])
    w_h = pools.weights / pools.weights.sum()

    def below(t: np.ndarray, values: np.ndarray) -> np.ndarray:
        # per gamma: the sum of `values` over the images with t < gamma (predicted unseen)
        order = np.argsort(t)
        cum = np.concatenate([[0.0], np.cumsum(values[order])])
        return cum[np.searchsorted(t[order], gammas, "left")]

    s = (w_h * right).sum() - below(t_h, w_h * right)
    return Sweep(gammas, s, below(t_h, w_h), below(t_t, np.ones(len(t_t))) / len(t_t),
                 below(t_h, w_h * conf_h), below(t_t, conf_t) / len(t_t), cuts)


def class_weights(labels: np.ndarray, seen: Sequence[int]) -> np.ndarray:
    """Per held-out image: 1 / (number of seen classes x its class's held-out count), i.e.
    every seen class weighs the same, as in a test pool balanced over classes. The test
    pool's own class mix is not used: read from the rule's predictions, it under-weighted
    exactly the classes the rule loses to unseen predictions, and on an independent
    simulation (balanced test pools, 20 runs) the estimate came out 1.85 points high on
    average (up to 5.3); with equal weights 1.06. The cost is on a test pool as imbalanced
    as training: one of 14 bundled runs 4.3 points low (bench/results.md, row d)."""
    counts = np.bincount(labels, minlength=max(seen) + 1).astype(np.float64)
    target = np.zeros_like(counts)
    target[list(seen)] = 1.0
    target[counts == 0] = 0.0
    return (target / target.sum())[labels] / np.maximum(counts[labels], 1)


def detector_share(pools: Pools, w: Sequence[float]) -> tuple[float, float]:
    """pi-hat, the unseen share of the test pool (1 - seen_share) with weights w, and its
    standard error."""
    held, test = pools.fused(w)
    share, se = seen_share(seen_gap(held, pools.seen, pools.unseen), pools.weights,
                           seen_gap(test, pools.seen, pools.unseen))
    return 1.0 - share, se


def paired_se(pools: Pools, sweep_a: Sweep, k_a: int, sweep_b: Sweep, k_b: int,
              w_a: Sequence[float], w_b: Sequence[float], pi: float,
              extra_a: tuple[np.ndarray, np.ndarray] | None = None) -> float:
    """Standard error of estimate(a) - estimate(b): the paired difference of the two rules
    on the held-out images, whose mean stands for the same difference on the test pool's
    seen images, another sample of (1 - pi) x n_test images: both samples' noise counts."""
    def correct(w, gamma, extra):
        held = pools.fused(w, extra)[0].copy()
        held[:, pools.seen] -= gamma
        return (held.argmax(1) == pools.labels).astype(np.float64)

    d = correct(w_a, sweep_a.gammas[k_a], extra_a) - correct(w_b, sweep_b.gammas[k_b], None)
    p = pools.weights / pools.weights.sum()
    mean = (p * d).sum()
    var_held = (p ** 2 * (d - mean) ** 2).sum() * len(d) / max(len(d) - 1, 1)
    var_test = (p * (d - mean) ** 2).sum() / max((1 - pi) * len(pools.test[0]), 1.0)
    return float((1 - pi) * np.sqrt(var_held + var_test))


def coordinate_ascent(pools: Pools, pi: float, grid: Sequence[float], rounds: int,
                      start: Sequence[float]) -> tuple[list[float], Sweep]:
    """Weights maximising the best estimate: one weight at a time over `grid` (a smaller
    weight wins ties, so an expert that does not help stays at 0)."""
    weights = [float(w) for w in start]
    current = sweep(pools, weights)
    score = current.estimate(pi).max()
    anchor = int(np.argmax(weights))
    for _ in range(rounds):
        changed = False
        for e in range(len(weights)):
            for w in grid:
                trial = [*weights[:e], float(w), *weights[e + 1:]]
                if w == weights[e] or not any(trial) or (e == anchor and not w):
                    continue
                c = sweep(pools, trial)
                gain = c.estimate(pi).max() - score
                if gain > 1e-9 or (e != anchor and abs(gain) <= 1e-9 and w < weights[e]):
                    weights, current, score, changed = trial, c, c.estimate(pi).max(), True
        if not changed:
            break
    return weights, current


def bootstrap_interval(pools: Pools, w: Sequence[float], gamma: float,
                       extra: tuple[np.ndarray, np.ndarray] | None, seed: int = 0
                       ) -> tuple[float, float, float]:
    """90% interval of the estimate at (w, gamma): held-out images resampled within each
    class, pi re-estimated on each resample; the resamples' 5-50 and 50-95 percentile
    spreads are laid around the estimate itself (resampling duplicates images, which biases
    each resample's best-bin estimate; the spread is what it tells)."""
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(pools.labels == c) for c in np.unique(pools.labels)]
    values = []
    for _ in range(BOOTSTRAP):
        rows = np.concatenate([rng.choice(r, len(r)) for r in by_class])
        sub = Pools(pools.names, [h[rows] for h in pools.held], pools.test,
                    pools.labels[rows], pools.seen, pools.unseen, pools.weights[rows],
                    pools.temperatures, pools.hidden)
        sub_extra = None if extra is None else (extra[0][rows], extra[1])
        pi = detector_share(sub, w)[0]
        sw = sweep(sub, w, sub_extra)
        k = sw.index(gamma)
        values.append(sw.estimate(pi)[k])
    return float(np.percentile(values, 5)), float(np.percentile(values, 50)), \
        float(np.percentile(values, 95))


def describe(sw: Sweep, k: int, pi: float) -> dict[str, float]:
    """The figures of one candidate at sweep index k: estimated acc, its seen and unseen
    parts, the offset and the share of test images it predicts unseen."""
    est = float(sw.estimate(pi)[k])
    unseen_right = float(max(sw.c_test[k] - (1 - pi) * sw.c_held[k], 0.0))
    return {"acc": est, "seen": float(sw.s[k]), "unseen": unseen_right / pi if pi else 0.0,
            "gamma": float(sw.gammas[k]), "predicted_unseen_share": float(sw.q[k])}


def choose(pools: Pools, start: Sequence[float], grid: Sequence[float], rounds: int,
           term: TermFn | None = None, term_mode: str = "auto",
           term_grid: Sequence[float] = (0.5, 1.0, 2.0),
           start_gamma: float | None = None) -> dict[str, Any]:
    """Weights, gamma and the transductive term's weight for the test pool (points 1-4).

    pools: held-out and test scores (pools.weights is set here); start / start_gamma: the
    protocol's weights and gamma, the starting point and a candidate of their own: the test
    pool's fused rule replaces the protocol's only when its estimate is higher beyond the
    noise (on a small test pool the protocol's may well stay); term: the transductive term
    for (weights, gamma), or None; term_mode auto (kept when it gains beyond the noise) |
    on | off. Returns {"weights", "gamma", "term_weight", "choice" ("fused", "protocol" or
    an expert's name), "report": the figures fusion.json shows}. Raises ValueError on too
    few test images."""
    n = len(pools.names)
    if len(pools.test[0]) < MIN_TEST:
        raise ValueError(f"{len(pools.test[0])} test images: too few to estimate the unseen "
                         f"share (need {MIN_TEST}); use the protocol's gamma")
    ones = [1.0] * n
    pools.weights = class_weights(pools.labels, pools.seen)
    pi, pi_se = detector_share(pools, ones)

    weights, fused_sweep = coordinate_ascent(pools, pi, grid, rounds, start)
    k = fused_sweep.best(pi)
    # name -> (weights, sweep, index k, gamma): the optimised ones use the sweep's gamma
    # (mid-way between two flips), the protocol's and the first place's their own exactly.
    candidates = {"fused": (weights, fused_sweep, k, float(fused_sweep.gammas[k]))}
    if start_gamma is not None:
        sw = sweep(pools, start)
        candidates["protocol"] = (list(start), sw, sw.index(start_gamma), float(start_gamma))
    for e, name in enumerate(pools.names):
        if name == "text":  # text alone is the first place's rule, below, with no offset
            continue
        alone = list(np.eye(n)[e])
        sw = sweep(pools, alone)
        # a closed-world expert alone never recognises an unseen class: no offset helps it
        kk = sw.best(pi) if pools.is_open(e) else 0
        candidates[name] = (alone, sw, kk, float(sw.gammas[kk]))
    if "text" in pools.names:  # the first place's rule: text alone, no offset
        alone = list(np.eye(n)[pools.names.index("text")])
        sw = sweep(pools, alone)
        candidates["text, gamma 0"] = (alone, sw, sw.index(0.0), 0.0)
    report: dict[str, Any] = {
        "method": "test pool: best-bin mixture estimate of the unseen share, offset and "
                  "weights maximising the estimated accuracy (experts/testpool.py)",
        "unseen_share": {"estimate": pi, "se": pi_se}, "candidates": {}}
    for name, (w, sw, kk, g) in candidates.items():
        report["candidates"][name] = {**describe(sw, kk, pi), "gamma": g,
                                      "weights": list(map(float, w))}

    # Guards, one test each: the test pool's fusion over the protocol's; the best single
    # candidate over the first place's rule; the fusion over the single one left.
    fused = "fused"
    if "protocol" in candidates:
        report["over_protocol"] = _guard(pools, candidates, "fused", "protocol", pi, pi_se)
        fused = report["over_protocol"]["chosen"]
    singles = [c for c in candidates if c not in ("fused", "protocol")]
    best_single = max(singles, key=lambda c: candidates[c][1].estimate(pi)[candidates[c][2]])
    if ANCHOR in candidates and best_single != ANCHOR:
        report["over_text_gamma0"] = _guard(pools, candidates, best_single, ANCHOR, pi, pi_se)
        best_single = report["over_text_gamma0"]["chosen"]
    report["guard"] = _guard(pools, candidates, fused, best_single, pi, pi_se)
    choice = report["guard"]["chosen"] if n > 1 else best_single
    chosen_w, chosen_sweep, chosen_k, chosen_gamma = candidates[choice]
    result = {"weights": list(map(float, chosen_w)), "gamma": chosen_gamma,
              "term_weight": 0.0, "choice": choice}
    extra = None
    if term is not None and term_mode != "off":
        extra = _choose_term(pools, result, chosen_sweep, chosen_k, pi, term, term_mode,
                             term_grid, report)
    final = sweep(pools, result["weights"], _scaled(extra, result["term_weight"]))
    kf = final.index(result["gamma"])
    lo, mid, hi = bootstrap_interval(pools, result["weights"], result["gamma"],
                                     _scaled(extra, result["term_weight"]))
    est = float(final.estimate(pi)[kf])
    report["chosen"] = {**describe(final, kf, pi), "gamma": result["gamma"],
                        "name": result["choice"],
                        "interval": (est - (mid - lo), est + (hi - mid))}
    report["unseen_share"]["predicted"] = float(final.q[kf])
    prior = int(np.argmin(np.abs(final.q - pi)))
    report["gamma"] = {"test_pool": result["gamma"], "prior_match": float(final.gammas[prior])}
    result["report"] = report
    return result


def _guard(pools: Pools, candidates: dict[str, tuple], a: str, b: str, pi: float,
           pi_se: float) -> dict[str, Any]:
    """Whether candidate a replaces b: its estimated gain must exceed GUARD_SE paired
    standard errors (and ANCHOR_MARGIN when b is the first place's rule) at pi and at
    pi +- one standard error of pi (the gain moves with the unseen share: a share estimated
    high favours a larger offset). The figures and the winner ("chosen"), as fusion.json
    reports them."""
    wa, sa, ka, _ = candidates[a]
    wb, sb, kb, _ = candidates[b]
    se = paired_se(pools, sa, ka, sb, kb, wa, wb, pi)
    gains = [float(sa.estimate(p)[ka] - sb.estimate(p)[kb])
             for p in (pi, max(pi - pi_se, 0.0), min(pi + pi_se, 1.0))]
    needed = max(GUARD_SE * se, ANCHOR_MARGIN if b == ANCHOR else 0.0)
    return {"candidate": a, "incumbent": b, "gain": gains[0], "gain_worst": min(gains),
            "se": se, "needed": needed, "chosen": a if min(gains) > needed else b}


def _scaled(extra: tuple[np.ndarray, np.ndarray] | None, w: float
            ) -> tuple[np.ndarray, np.ndarray] | None:
    return None if extra is None or not w else (w * extra[0], w * extra[1])


def _choose_term(pools: Pools, result: dict[str, Any], base: Sweep, k: int, pi: float,
                 term: TermFn, mode: str, grid: Sequence[float], report: dict[str, Any]
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The transductive term's weight (and the re-swept gamma): kept when its estimate
    beats the chosen rule's by more than GUARD_SE standard errors (auto) or always (on).
    The term starts from the offset the test pool chose, as prediction does."""
    extra = term(result["weights"], result["gamma"])
    base_est = float(base.estimate(pi)[k])
    best_w, best_sw, best_k = 0.0, base, k
    for w in grid:
        sw = sweep(pools, result["weights"], _scaled(extra, w))
        kk = sw.best(pi)
        if sw.estimate(pi)[kk] > best_sw.estimate(pi)[best_k] + 1e-9:
            best_w, best_sw, best_k = w, sw, kk
    gain = float(best_sw.estimate(pi)[best_k]) - base_est
    se = paired_se(pools, best_sw, best_k, base, k, result["weights"], result["weights"], pi,
                   _scaled(extra, best_w)) if best_w else 0.0
    kept = best_w > 0 and (mode == "on" or gain > GUARD_SE * se)
    report["transductive"] = {"weight": best_w, "gain": gain, "se": se, "mode": mode,
                              "kept": kept}
    if kept:
        result["term_weight"] = best_w
        result["gamma"] = float(best_sw.gammas[best_k])
    return extra
