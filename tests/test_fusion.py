"""Fusion of experts: the protocol picks the weights and gamma it should, the fused decision
beats each expert alone, a know-nothing expert gets weight 0, the probe / attribute /
transductive pieces, and the saved state. Stand-in experts of known quality, seconds."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from pixelplay_lib.experts import fusion

N_CLASSES, N_SEEN, PER_CLASS = 20, 16, 20
SEEN = list(range(N_SEEN))


def labels_of(per_class: int = PER_CLASS, classes: list[int] = SEEN) -> np.ndarray:
    return np.repeat(classes, per_class)


@dataclass
class StandIn:
    """An expert of known quality: logits = margin x onehot(label) + gaussian noise.

    closed: a closed-world seen expert (scores fit_classes only, neutral elsewhere);
    seen_bias: added to the fit classes' logits (the seen-class bias of a real model)."""

    labels: np.ndarray
    margin: float
    seed: int
    name: str
    closed: bool = False
    seen_bias: float = 0.0
    covers: set[int] | None = None

    def scores(self, fit_classes: list[int]) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        logits = rng.normal(size=(len(self.labels), N_CLASSES))
        logits[np.arange(len(self.labels)), self.labels] += self.margin
        if self.closed:
            return fusion.closed_world(logits, fit_classes, N_CLASSES)
        logits[:, fit_classes] += self.seen_bias
        return fusion.log_softmax(logits)


def test_closed_world_fills_neutral_columns() -> None:
    out = fusion.closed_world(np.zeros((2, 5)) + [[0, 5, 0, 0, 0]], [0, 1], 5)
    np.testing.assert_allclose(np.exp(out[:, :2]).sum(1), 1.0)
    np.testing.assert_allclose(out[:, 2:], np.log(1 / 2))
    assert out[0, 1] > out[0, 0]


def test_gamma_undoes_a_known_seen_bias() -> None:
    y = labels_of()
    biased = StandIn(y, margin=3.0, seed=1, name="biased", seen_bias=2.0)
    state = fusion.protocol([biased], y, SEEN, N_CLASSES, folds=4, seed=0)
    assert state.weights == [1.0]
    assert 1.2 < state.gamma < 2.8  # calibrated stacking removes the +2 on seen classes
    report = state.report
    assert report["fusion"]["acc"] > report["never_unseen"]["acc"] + 0.1
    assert report["fusion"]["acc"] > report["gamma0"]["acc"]


def test_fusion_beats_each_expert_and_ignores_a_random_one() -> None:
    y = labels_of()
    seen_expert = StandIn(y, margin=4.0, seed=2, name="resnet", closed=True)
    text_expert = StandIn(y, margin=2.0, seed=3, name="text")
    rand = StandIn(y, margin=0.0, seed=4, name="random")
    pair = fusion.protocol([seen_expert, text_expert], y, SEEN, N_CLASSES)
    alone = pair.report["experts"]
    assert pair.report["fusion"]["acc"] > max(a["acc"] for a in alone.values()) + 0.03
    assert alone["resnet"]["u"] < 0.2  # blind to the hidden classes on its own
    triple = fusion.protocol([seen_expert, text_expert, rand], y, SEEN, N_CLASSES)
    assert triple.report["weights"]["random"] == 0.0
    assert triple.report["fusion"]["acc"] >= pair.report["fusion"]["acc"] - 1e-9
    # on fresh images of the same experts' quality, the fitted rule still wins
    y_test = np.repeat(range(N_CLASSES), 30)
    test_experts = [StandIn(y_test, 4.0, 12, "resnet", closed=True),
                    StandIn(y_test, 2.0, 13, "text"), StandIn(y_test, 0.0, 14, "random")]
    pred = fusion.apply_fusion(triple, test_experts)
    text_only = test_experts[1].scores(SEEN).argmax(1)
    assert (pred == y_test).mean() > (text_only == y_test).mean() + 0.05


def per_class_accuracy(pred: np.ndarray, truth: np.ndarray, classes: list[int]) -> float:
    """Mean over `classes` of each class's accuracy, computed directly."""
    accs = [float((pred[truth == c] == c).mean()) for c in classes if (truth == c).any()]
    return float(np.mean(accs)) if accs else float("nan")


def test_sweep_matches_direct_decisions() -> None:
    y = labels_of(per_class=6)
    experts = [StandIn(y, 2.0, 5, "a", closed=True), StandIn(y, 1.0, 6, "b")]
    groups = fusion.make_folds(SEEN, 4, 0)
    folds = fusion.fold_scores(experts, y, SEEN, groups)
    curve = fusion.sweep(folds, [1.0, 0.5], unseen_share=0.2)
    for k in (0, len(curve.gammas) // 3, len(curve.gammas) // 2, len(curve.gammas) - 1):
        accs = []
        for fold, group in zip(folds, groups, strict=True):
            full = np.full((len(y), N_CLASSES), -1e9)
            full[:, SEEN] = fusion.fuse(fold.scores, [1.0, 0.5])
            fit = [c for c in SEEN if c not in group]
            pred = fusion.decide(full, fit, curve.gammas[k], SEEN)
            u, s = per_class_accuracy(pred, y, group), per_class_accuracy(pred, y, fit)
            accs.append(0.8 * s + 0.2 * u)
        assert curve.acc[k] == pytest.approx(np.mean(accs))


def clustered(n_per: int, d: int = 16, seed: int = 0, spread: float = 0.35):
    """Image embeddings in class clusters, text rows near the class means."""
    rng = np.random.default_rng(seed)
    means = fusion.l2_normalise(rng.normal(size=(N_CLASSES, d)))
    y = np.repeat(range(N_CLASSES), n_per)
    x = fusion.l2_normalise(means[y] + spread * rng.normal(size=(len(y), d)))
    text = fusion.l2_normalise(means + 0.6 * rng.normal(size=means.shape))
    return x, y, text, means


def test_probe_learns_seen_classes_and_stays_neutral_elsewhere() -> None:
    x, y, text, _ = clustered(20)
    train = np.isin(y, SEEN) & (np.arange(len(y)) % 2 == 0)
    pool = np.isin(y, SEEN) & ~train
    probe = fusion.ProbeExpert(x[pool], x[train], y[train], text, scale=30.0)
    fit = SEEN[:12]
    out = probe.scores(fit)
    np.testing.assert_allclose(out[:, 12:], np.log(1 / 12))
    text_scores = fusion.TextExpert(x[pool], text, 30.0).scores(fit)
    on_fit = np.isin(y[pool], fit)
    probe_acc = (out[on_fit][:, fit].argmax(1) == np.searchsorted(fit, y[pool][on_fit])).mean()
    text_acc = (text_scores[on_fit][:, fit].argmax(1)
                == np.searchsorted(fit, y[pool][on_fit])).mean()
    assert probe_acc > text_acc + 0.05


def test_attribute_expert_scores_unseen_classes() -> None:
    rng = np.random.default_rng(0)
    attributes = rng.uniform(0, 100, size=(N_CLASSES, 24))
    y = np.repeat(range(N_CLASSES), 15)
    features = attributes[y] @ rng.normal(size=(24, 32)) + 30 * rng.normal(size=(len(y), 32))
    train, pool = np.arange(len(y)) % 3 != 0, np.arange(len(y)) % 3 == 0
    expert = fusion.AttributeExpert(features[pool], features[train], y[train], attributes)
    out = expert.scores(SEEN)
    unseen_rows = ~np.isin(y[pool], SEEN)
    hidden = list(range(N_SEEN, N_CLASSES))
    pick = np.array(hidden)[out[unseen_rows][:, hidden].argmax(1)]
    assert (pick == y[pool][unseen_rows]).mean() > 0.5  # chance: 0.25


def test_transductive_refinement_sharpens_weak_posteriors() -> None:
    x, y, text, _ = clustered(25, spread=0.3, seed=1)
    rng = np.random.default_rng(2)
    weak = fusion.l2_normalise(x) @ text.T * 3 + rng.normal(scale=1.0, size=(len(y), N_CLASSES))
    term = fusion.refine(weak, x, text, range(N_CLASSES), scale=30.0)
    before = (weak.argmax(1) == y).mean()
    after = ((weak + term).argmax(1) == y).mean()
    assert after > before + 0.1


def test_transductive_kept_only_when_it_helps() -> None:
    x, y, text, _ = clustered(20, spread=0.3, seed=3)
    val = np.isin(y, SEEN)
    weak = fusion.TextExpert(x[val], text, scale=3.0)
    on = fusion.protocol([weak], y[val], SEEN, N_CLASSES, transductive="auto", pool=x[val],
                         text=text, scale=30.0)
    info = on.report["transductive"]
    assert info["kept"] and on.transductive_weight > 0
    assert info["with"]["acc"] > info["without"] + 0.05
    off = fusion.protocol([weak], y[val], SEEN, N_CLASSES, transductive="off", pool=x[val],
                          text=text)
    assert off.transductive_weight == 0 and "transductive" not in off.report


def test_state_round_trip_and_missing_expert(tmp_path) -> None:
    y = labels_of(per_class=5)
    state = fusion.protocol([StandIn(y, 3.0, 7, "text")], y, SEEN, N_CLASSES)
    fusion.save_fusion(state, tmp_path)
    loaded = fusion.load_fusion(tmp_path)
    assert loaded == state
    assert torch.load(tmp_path / "fusion.pt", weights_only=True)["names"] == ["text"]
    assert (tmp_path / "fusion.json").is_file()
    with pytest.raises(ValueError, match="same `experts`"):
        fusion.apply_fusion(loaded, [StandIn(y, 3.0, 7, "probe")])
    with pytest.raises(FileNotFoundError, match="fusion.pt"):
        fusion.load_fusion(tmp_path / "nowhere")


def test_fit_fusion_saves_the_report(tmp_path) -> None:
    import json

    from pixelplay_lib.config import make_config

    y = labels_of(per_class=5)
    cfg = make_config(output_dir=str(tmp_path), transductive="off")
    state = fusion.fit_fusion(cfg, [StandIn(y, 3.0, 8, "text", seen_bias=1.0)], y, SEEN,
                              N_CLASSES)
    report = json.loads((tmp_path / "fusion.json").read_text())
    assert report["gamma"] == state.gamma and set(report["experts"]) == {"text"}
    assert {"u", "s", "H", "acc"} <= set(report["never_unseen"])
    assert any(line.startswith("fused ") for line in fusion.report_lines(state))


def test_parse_experts_names_the_field() -> None:
    assert fusion.parse_experts("auto", ["probe", "text"]) == ["text", "probe"]
    assert fusion.parse_experts("probe, text", ["text", "probe", "resnet"]) == ["text", "probe"]
    with pytest.raises(ValueError, match="experts='resnet'.*not available"):
        fusion.parse_experts("resnet", ["text"])
    with pytest.raises(ValueError, match="unknown"):
        fusion.parse_experts("clip", ["text"])
    with pytest.raises(ValueError, match="no expert"):
        fusion.parse_experts("auto", [])
