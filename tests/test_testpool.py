"""The fusion chosen on the test pool (experts/testpool.py), unit by unit, then end to end on
the simulated challenge (experts/simulate.py) against the thresholds of the issue "Fusion you
can trust": in every regime and seed the fused submission loses nothing to text-only
zero-shot (the first place's rule), its gamma is on average within 0.5 point of the
test-optimal gamma, and its estimate is on average within 1.5 points of what it scores."""

from __future__ import annotations

import numpy as np
import pytest

from pixelplay_lib.experts import arrays, fusion, simulate, testpool


@pytest.mark.parametrize("pi", [0.2, 0.13, 0.05])
def test_seen_share_recovers_the_mixture_proportion(pi: float) -> None:
    """Seen-ness scores: 900 held-out seen images N(3, 1); 3,000 test images, unseen share
    pi, unseen N(-1, 1.5): heavily overlapping, unlike the simulation's. Over 8 draws
    best-bin estimation is within 0.03 of pi on average (measured: 0.008-0.021) and never
    off by 0.1, knowing neither distribution's shape; what is left is the sampling noise
    of 900 held-out images (about 3% of the seen share at the best bin)."""
    errors = []
    for seed in range(8):
        rng = np.random.default_rng([seed, int(pi * 100)])
        held = rng.normal(3, 1, 900)
        n_unseen = int(3000 * pi)
        test = np.concatenate([rng.normal(3, 1, 3000 - n_unseen),
                               rng.normal(-1, 1.5, n_unseen)])
        errors.append(1 - testpool.seen_share(held, np.ones(len(held)), test)[0] - pi)
    assert np.mean(np.abs(errors)) < 0.03, errors
    assert max(np.abs(errors)) < 0.1, errors


def test_seen_share_weighs_held_out_classes_equally() -> None:
    """Two seen classes, one easy (high scores), one hard; held-out images 9:1, the test's
    seen part 1:1. Classes weighted equally the estimate is right; images equally it is not."""
    rng = np.random.default_rng(0)
    held = np.concatenate([rng.normal(4, 0.5, 900), rng.normal(1, 0.5, 100)])
    labels = np.array([0] * 900 + [1] * 100)
    test = np.concatenate([rng.normal(4, 0.5, 1200), rng.normal(1, 0.5, 1200),
                           rng.normal(-2, 0.5, 600)])
    weights = testpool.class_weights(labels, [0, 1])
    assert abs((1 - testpool.seen_share(held, weights, test)[0]) - 0.2) < 0.03
    assert abs((1 - testpool.seen_share(held, np.ones(1000), test)[0]) - 0.2) > 0.1


def small_pools(seed: int = 0) -> tuple[testpool.Pools, np.ndarray]:
    """Held-out and test scores of a text-like (all classes) and a closed expert."""
    rng = np.random.default_rng(seed)
    seen, unseen, n = list(range(8)), [8, 9], 10
    y_held = np.repeat(seen, 10)
    y_test = rng.choice(n, 600)

    def scores(y, margin, closed):
        logits = rng.normal(size=(len(y), n))
        logits[np.arange(len(y)), y] += margin
        return fusion.closed_world(logits, seen, n) if closed else fusion.log_softmax(logits)

    pools = testpool.Pools(["text", "resnet"], [scores(y_held, 2.5, False),
                                                scores(y_held, 4, True)],
                           [scores(y_test, 2.5, False), scores(y_test, 4, True)], y_held,
                           seen, unseen, testpool.class_weights(y_held, seen))
    return pools, y_test


def test_sweep_matches_direct_decisions() -> None:
    pools, _ = small_pools()
    w = [1.0, 0.5]
    sw = testpool.sweep(pools, w)
    held, test = pools.fused(w)
    for k in (0, len(sw.gammas) // 4, len(sw.gammas) // 2, len(sw.gammas) - 1):
        g = sw.gammas[k]
        pred_h = fusion.decide(held, pools.seen, g)
        pred_t = fusion.decide(test, pools.seen, g)
        p = pools.weights / pools.weights.sum()
        assert sw.s[k] == pytest.approx((p * (pred_h == pools.labels)).sum())
        assert sw.f[k] == pytest.approx((p * np.isin(pred_h, pools.unseen)).sum())
        assert sw.q[k] == pytest.approx(np.isin(pred_t, pools.unseen).mean())


def test_guard_keeps_the_single_expert_when_another_adds_noise() -> None:
    """A pure-noise closed expert next to a good text expert: the fusion cannot beat text
    alone beyond the noise, so the chosen rule is text's (or the noise weighs 0)."""
    pools, y_test = small_pools(1)
    rng = np.random.default_rng(5)
    for part in (pools.held, pools.test):
        part[1] = fusion.closed_world(rng.normal(size=part[1].shape), pools.seen, 10)
    choice = testpool.choose(pools, [1.0, 1.0], fusion.WEIGHT_GRID, 4)
    assert choice["choice"] != "fused" or choice["weights"][1] == 0.0
    assert choice["report"]["guard"]["chosen"] == choice["choice"]


def test_too_few_test_images_leave_the_protocol_in_charge() -> None:
    pools, _ = small_pools()
    pools.test = [t[:10] for t in pools.test]
    with pytest.raises(ValueError, match="too few"):
        testpool.choose(pools, [1.0, 1.0], fusion.WEIGHT_GRID, 4)


# ---------------------------------------------------------------- the simulated challenge

REGIMES = ["balanced", "text-at-ceiling", "unseen-harder", "unseen-easier", "no-network",
           "few-unseen", "test-like-train"]
RESULTS: dict[tuple[str, int], dict[str, float]] = {}


def best_gamma_accuracy(state: fusion.FusionState, run: arrays.RunArrays,
                        truth: np.ndarray) -> float:
    """The test accuracy of the chosen weights at the test-optimal gamma (every gamma where
    a decision flips, tried against the answers)."""
    experts = arrays.build_experts(run, "test", state.names)
    scores = {e.name: e.scores(run.seen) for e in experts}
    fused = fusion.fuse([scores[n] for n, w in zip(state.names, state.weights, strict=True)
                         if w], [w for w in state.weights if w])
    t = testpool.seen_gap(fused, run.seen, run.unseen)
    cuts = np.unique(np.concatenate([t - 1e-7, t + 1e-7]))[::3]
    return max(float((fusion.decide(fused, run.seen, g) == truth).mean()) for g in cuts)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("regime", REGIMES)
def test_simulated_challenge_fused_never_loses_to_text_only(regime: str, seed: int) -> None:
    sim = simulate.simulate(regime, seed)
    run = sim.to_arrays()
    state = arrays.fit(run, run.available())
    pred, alone = arrays.apply(state, run, "test")
    truth = sim.test_labels
    acc, text_only = float((pred == truth).mean()), float((alone["text"] == truth).mean())
    chosen = state.report["test_pool"]["chosen"]
    RESULTS[(regime, seed)] = {"gap": best_gamma_accuracy(state, run, truth) - acc,
                               "error": chosen["acc"] - acc}
    assert acc >= text_only, (regime, seed, acc, text_only)
    lo, hi = chosen["interval"]
    assert lo <= chosen["acc"] <= hi + 1e-9
    share = state.report["test_pool"]["unseen_share"]["estimate"]
    # 0.06: test-like-train seed 1 (a test pool as imbalanced as training, held-out classes
    # counted equally) is 0.051 off; the other runs at most 0.04
    assert abs(share - np.isin(truth, sim.unseen).mean()) < 0.06


@pytest.mark.parametrize("i", [0, 16, 44])
def test_random_worlds_where_the_estimate_misled_the_choice(i: int) -> None:
    """simulate.random_regime worlds where an estimated gain of 0.6-1.2 points over the
    first place's rule (text alone at gamma 0) was realised as a loss of 0.2, 0.3 and 1.1
    points before the guard asked for ANCHOR_MARGIN over that rule: now nothing is lost."""
    sim = simulate.simulate(f"random-{i}", i)
    run = sim.to_arrays()
    state = arrays.fit(run, run.available())
    pred, alone = arrays.apply(state, run, "test")
    truth = sim.test_labels
    assert (pred == truth).mean() >= (alone["text"] == truth).mean()
    guard = state.report["test_pool"]["guard"]
    assert guard["needed"] >= testpool.ANCHOR_MARGIN or guard["incumbent"] != testpool.ANCHOR


def test_unknown_regime_names_the_choices() -> None:
    with pytest.raises(KeyError, match="one of balanced, .*random-<i>"):
        simulate.simulate("balance")


def test_simulated_challenge_gamma_and_estimate_on_average() -> None:
    """Over every regime and seed above: mean gap to the test-optimal gamma <= 0.5 point,
    mean absolute error of the estimate <= 1.5 points (measured here: 0.23 and 1.05)."""
    if len(RESULTS) < 2 * len(REGIMES):
        pytest.skip("run with the whole simulated-challenge parametrization")
    gaps = [r["gap"] for r in RESULTS.values()]
    errors = [abs(r["error"]) for r in RESULTS.values()]
    assert np.mean(gaps) <= 0.005, gaps
    assert np.mean(errors) <= 0.015, errors


def test_the_leave_classes_out_estimate_alone_was_optimistic() -> None:
    """Why the test pool decides: on the regime where the image-text model is worse on the
    real unseen classes, the protocol's own estimate overshoots the realised accuracy by
    several points; the test-pool estimate is closer."""
    sim = simulate.simulate("unseen-harder", 0)
    run = sim.to_arrays()
    state = arrays.fit(run, run.available())
    protocol_estimate = state.report["protocol"]["fusion"]["acc"]
    pred, _ = arrays.apply(state, run, "test")
    realised = float((pred == sim.test_labels).mean())
    test_estimate = state.report["test_pool"]["chosen"]["acc"]
    assert protocol_estimate - realised > 0.04
    assert abs(test_estimate - realised) < protocol_estimate - realised
