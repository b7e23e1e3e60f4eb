"""Simulated image-text embeddings of the challenge, for checking the fusion without photos.

No real embedding can be computed on the development machine (no weights, no photos), so
the fusion is checked on a simulation built to have the properties that make the real
problem hard (issue "Fusion you can trust"), not isotropic noise:

- class structure from the AwA2 attributes: a class's mean direction mixes a random
  projection of its 85 attribute strengths with its own random direction, so attribute
  neighbours (rhinoceros, hippopotamus, elephant) are near each other in the image space;
- 2-4 sub-modes per class (poses, backgrounds), images scattered around them;
- a modality gap: image and text embeddings each carry their own offset vector, as in
  CLIP (Liang et al. 2022, "Mind the Gap");
- text errors toward attribute neighbours: a class's text embedding is pulled toward its
  nearest neighbour's class direction by a per-class amount (the `text_error` of a regime,
  larger for unseen classes when they are "harder");
- 60-300 training images per seen class (imbalanced), a 15% validation split, 3,000 test
  images with a given unseen share;
- optionally a fine-tuned network expert: closed-world logits over the seen classes from
  its own noisy view of each image, confident on seen classes (~98%) and confidently wrong
  on unseen ones (it never saw them, and its softmax has nowhere else to go).

`simulate(regime, seed)` returns a `Simulation`: the arrays a run would save (embeddings,
labels, class text embeddings, logit scale, network logits) plus the answer key of the test
images. Every figure derived from it is synthetic.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..data import bundled_attributes, fill_missing
from .arrays import Pool, RunArrays

# The ten classes of the real challenge without training images (challenge.md).
UNSEEN = ("chimpanzee", "collie", "fox", "gorilla", "horse", "moose", "rabbit", "rhinoceros",
          "sheep", "squirrel")


@dataclass(frozen=True)
class Regime:
    """One simulated world. text_error: (seen, unseen) mean pull of a class's text
    embedding toward its nearest attribute neighbour (0 = exact; 0.5 = halfway);
    network: whether a fine-tuned network expert exists; unseen_share: of the test images."""

    name: str
    text_error: tuple[float, float] = (0.25, 0.25)
    image_noise: float = 2.0  # spread of images around their sub-mode
    ambiguous: float = 0.04  # share of images that mix in a neighbour class's sub-mode
    network: bool = True
    unseen_share: float = 0.2
    test_like_train: bool = False  # seen test classes as imbalanced as training (else even)
    dim: int = 768


REGIMES = {r.name: r for r in (
    Regime("balanced"),
    Regime("text-at-ceiling", text_error=(0.08, 0.08)),
    Regime("unseen-harder", text_error=(0.2, 0.42)),
    Regime("unseen-easier", text_error=(0.35, 0.12)),
    Regime("no-network", network=False),
    Regime("few-unseen", unseen_share=0.13),
    Regime("test-like-train", test_like_train=True),
)}


@dataclass
class Simulation:
    """Arrays as a run saves them (see experts.arrays), plus the hidden answers.

    train / val / test: (n, dim) float32 L2-normalised image embeddings; *_labels: (n,)
    class indices (test_labels is the answer key); text: (50, dim) class text embeddings;
    scale: logit scale; network_*: (n, 50) closed-world logits of a network trained on the
    seen classes (None when the regime has none; unseen columns hold -inf-like zeros that
    the expert never reads)."""

    classes: list[str]
    seen: list[int]
    unseen: list[int]
    train: np.ndarray
    train_labels: np.ndarray
    val: np.ndarray
    val_labels: np.ndarray
    test: np.ndarray
    test_labels: np.ndarray
    text: np.ndarray
    scale: float
    network_val: np.ndarray | None = None
    network_test: np.ndarray | None = None
    info: dict = field(default_factory=dict)

    def to_arrays(self) -> RunArrays:
        """The arrays a run would save (experts.arrays), test labels left out (-1)."""
        def pool(name: str, x: np.ndarray, labels: np.ndarray, net: np.ndarray | None) -> Pool:
            inputs = {"vl": x} if net is None else {"vl": x, "resnet": net}
            return Pool(np.array([f"{name}{i:05d}.jpg" for i in range(len(x))]), labels, inputs)

        run = RunArrays(self.classes, self.seen, self.unseen, self.scale, "simulated",
                        self.text.astype(np.float64))
        run.pools = {"train": pool("train", self.train, self.train_labels, None),
                     "val": pool("val", self.val, self.val_labels, self.network_val),
                     "test": pool("test", self.test, np.full(len(self.test), -1),
                                  self.network_test)}
        return run


def random_regime(i: int) -> Regime:
    """Regime "random-<i>": every parameter drawn at random (deterministic in i), so the
    fusion is also checked on worlds it was not tuned on: text errors 0.05-0.4 (seen) and
    0.05-0.5 (unseen), image noise 1.5-2.6, ambiguous images 0-10%, a network expert in 60%
    of them, unseen share 10-30%, seen test classes as imbalanced as training in 30%, and
    d = 512, 768 or 1152."""
    g = np.random.default_rng([99, i])
    return Regime(f"random-{i}",
                  text_error=(float(g.uniform(0.05, 0.4)), float(g.uniform(0.05, 0.5))),
                  image_noise=float(g.uniform(1.5, 2.6)), ambiguous=float(g.uniform(0, 0.1)),
                  network=bool(g.random() < 0.6), unseen_share=float(g.uniform(0.1, 0.3)),
                  test_like_train=bool(g.random() < 0.3), dim=int(g.choice([512, 768, 1152])))


def regime_named(name: str) -> Regime:
    """A regime of REGIMES, or "random-<i>" (random_regime). Raises KeyError naming both."""
    number = name.removeprefix("random-")
    if number != name and number.isdigit():
        return random_regime(int(number))
    if name not in REGIMES:
        raise KeyError(f"unknown regime {name!r}: one of {', '.join(REGIMES)}, or random-<i>")
    return REGIMES[name]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / (np.linalg.norm(x, axis=-1, keepdims=True) + 1e-12)


def simulate(regime: Regime | str = "balanced", seed: int = 0, n_test: int = 3000
             ) -> Simulation:
    """One simulated challenge (see the module docstring). Deterministic in (regime, seed)."""
    r = regime_named(regime) if isinstance(regime, str) else regime
    rng = np.random.default_rng(seed)
    classes, _, table = bundled_attributes()
    n, d = len(classes), r.dim
    unseen = sorted(classes.index(c) for c in UNSEEN)
    seen = [c for c in range(n) if c not in unseen]
    # class directions: attributes through a random projection + an idiosyncratic part
    a = fill_missing(table)
    a = (a - a.mean(0)) / (a.std(0) + 1e-8)
    semantic = _unit(a @ rng.normal(size=(a.shape[1], d)))
    mean = _unit(0.75 * semantic + 0.66 * _unit(rng.normal(size=(n, d))))
    modes = [_unit(mean[c] + 0.55 * _unit(rng.normal(size=(rng.integers(2, 5), d))))
             for c in range(n)]
    gap_image, gap_text = _unit(rng.normal(size=(2, d)))
    sim = semantic @ semantic.T
    np.fill_diagonal(sim, -np.inf)
    neighbour = sim.argmax(1)

    def images(labels: np.ndarray) -> np.ndarray:
        out = np.empty((len(labels), d))
        for c in np.unique(labels):
            rows = np.flatnonzero(labels == c)
            out[rows] = modes[c][rng.integers(len(modes[c]), size=len(rows))]
        # ambiguous photos (two animals, a cow that looks like an ox): part neighbour
        odd = np.flatnonzero(rng.random(len(labels)) < r.ambiguous)
        other = [modes[c][rng.integers(len(modes[c]))] for c in neighbour[labels[odd]]]
        mix = rng.uniform(0.3, 0.6, size=(len(odd), 1))
        out[odd] = (1 - mix) * out[odd] + mix * np.asarray(other).reshape(len(odd), d)
        return out + r.image_noise * rng.normal(size=out.shape) / np.sqrt(d)

    # text: pulled toward the nearest attribute neighbour by a per-class amount
    pull = np.array([r.text_error[c in unseen] for c in range(n)])
    pull = np.clip(pull * rng.gamma(4.0, 0.25, size=n), 0, 0.6)
    text = (1 - pull)[:, None] * mean + pull[:, None] * mean[neighbour]
    text = _unit(_unit(text + 0.35 * _unit(rng.normal(size=(n, d)))) + 1.2 * gap_text)

    per_class = rng.integers(60, 301, size=len(seen))
    labels = np.repeat(seen, per_class)
    n_unseen = int(round(r.unseen_share * n_test))
    seen_p = per_class / per_class.sum() if r.test_like_train else None
    test_labels = np.concatenate([rng.choice(seen, n_test - n_unseen, p=seen_p),
                                  rng.choice(unseen, n_unseen)])
    rng.shuffle(test_labels)
    raw = images(labels)
    raw_test = images(test_labels)
    embed = lambda x: _unit(_unit(x) + 1.2 * gap_image).astype(np.float32)  # noqa: E731
    is_val = np.zeros(len(labels), bool)
    for c in seen:  # the project's split: 15% of each class held out
        rows = np.flatnonzero(labels == c)
        is_val[rng.choice(rows, max(1, int(round(0.15 * len(rows)))), replace=False)] = True
    sim_out = Simulation(classes, seen, unseen, embed(raw[~is_val]), labels[~is_val],
                         embed(raw[is_val]), labels[is_val], embed(raw_test), test_labels,
                         _unit(text).astype(np.float32), 100.0,
                         info={"regime": r.name, "seed": seed, "text_pull": pull.tolist()})
    if r.network:
        sim_out.network_val, sim_out.network_test = _network(
            raw[~is_val], labels[~is_val], raw[is_val], raw_test, seen, n, rng)
    return sim_out


def _network(train: np.ndarray, labels: np.ndarray, val: np.ndarray, test: np.ndarray,
             seen: list[int], n: int, rng: np.random.Generator
             ) -> tuple[np.ndarray, np.ndarray]:
    """Closed-world logits (n_images, n) of a network fine-tuned on the seen classes: its
    own noisy view of each image, a nearest-class-mean head with a large scale (fine-tuned
    networks are overconfident, on unseen images too). Unseen columns are 0 (unused)."""
    d = train.shape[1]
    view = lambda x: _unit(x + 0.9 * rng.normal(size=x.shape) / np.sqrt(d))  # noqa: E731
    means = _unit(np.stack([view(train[labels == c]).mean(0) for c in seen]))
    out = []
    for x in (val, test):
        logits = np.zeros((len(x), n))
        logits[:, seen] = 150.0 * view(x) @ means.T
        out.append(logits.astype(np.float32))
    return out[0], out[1]
