"""loss_balance=logit_adjust: logit-adjusted cross-entropy (Menon et al. 2021, tau = 1).

The evidence is a real small training run: train.train_step with the offsets of
train.logit_adjustment, on a deliberately imbalanced generated image set (6 classes, 200 down
to 6 training images each), scored by balanced accuracy (mean per-class accuracy) on 300
fresh test images of every class, against the same run with plain cross-entropy.

Measured while writing this test (seeds 0-4 of the same generator and training settings):
balanced accuracy 0.725-0.788 with plain cross-entropy, 0.821-0.897 with logit adjustment;
the margin was +0.096 at least, +0.109 on average; seed 0, the one run here, 0.763 -> 0.897
(+0.134), its two rarest classes (12 and 6 images) 0.69 / 0.22 -> 0.93 / 0.83. The test
asserts a margin of at least 0.05, about half of the smallest measured, so that it tests the
method, not the noise.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pixelplay_lib.config import RESULT_FIELDS, make_config
from pixelplay_lib.model import Net, set_trainable
from pixelplay_lib.runtime import Runtime
from pixelplay_lib.train import logit_adjustment, train_step

COUNTS = [200, 100, 50, 25, 12, 6]  # training images per class: imbalance 33x
CPU = Runtime(torch.device("cpu"), None, False)


def generated_images(seed: int):
    """16x16 RGB images: a blocky 4x4 colour pattern per class (means within +-20 grey
    levels of mid-grey, so classes overlap) plus pixel noise of sd 100. Returns train images
    (imbalanced, COUNTS) and labels, test images (300 per class) and labels."""
    g = np.random.default_rng(seed)
    means = g.uniform(108, 148, (len(COUNTS), 3, 4, 4))

    def draw(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
        pattern = np.kron(means[k], np.ones((4, 4)))
        return np.clip(pattern + 100 * rng.standard_normal((n, 3, 16, 16)), 0, 255
                       ).astype(np.uint8)

    train_rng, test_rng = np.random.default_rng([seed, 1]), np.random.default_rng([seed, 2])
    x_train = np.concatenate([draw(n, k, train_rng) for k, n in enumerate(COUNTS)])
    x_test = np.concatenate([draw(300, k, test_rng) for k in range(len(COUNTS))])
    return (torch.from_numpy(x_train), torch.from_numpy(np.repeat(np.arange(len(COUNTS)), COUNTS)),
            torch.from_numpy(x_test), np.repeat(np.arange(len(COUNTS)), 300))


def per_class_accuracy(adjusted: bool, seed: int = 0, epochs: int = 20) -> list[float]:
    """Train a Net (4x4 average pooling -> linear head) with SGD through train_step; return
    its test accuracy per class (raw logits: the adjustment is a training-time offset)."""
    x_train, y_train, x_test, y_test = generated_images(seed)
    torch.manual_seed(seed)
    net = Net(nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten()), nn.Linear(48, len(COUNTS)))
    set_trainable(net, "all")
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    offset = logit_adjustment(np.bincount(y_train.numpy())) if adjusted else None
    order_rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = torch.from_numpy(order_rng.permutation(len(y_train)))
        for start in range(0, len(order), 32):
            batch = order[start:start + 32]
            train_step(net, opt, scaler, CPU, x_train[batch], y_train[batch],
                       logit_offset=offset)
    with torch.no_grad():
        pred = net.eval()(CPU.to_device(x_test)).argmax(1).numpy()
    return [float((pred[y_test == k] == k).mean()) for k in range(len(COUNTS))]


def test_logit_adjustment_improves_balanced_accuracy_on_an_imbalanced_set():
    plain, adjusted = per_class_accuracy(False), per_class_accuracy(True)
    margin = np.mean(adjusted) - np.mean(plain)
    assert margin >= 0.05, (plain, adjusted)
    # where it comes from: the two rarest classes, which plain cross-entropy out-votes
    assert min(adjusted[-2:]) > max(plain[-2:]) + 0.1, (plain, adjusted)


def test_offsets_are_log_priors_and_unseen_classes_get_their_mean():
    offsets = logit_adjustment(np.array([30, 10, 0, 60]))
    expected = np.log([0.3, 0.1, 0.6])
    np.testing.assert_allclose(offsets.numpy()[[0, 1, 3]], expected, rtol=1e-6)
    assert offsets[2] == pytest.approx(expected.mean(), rel=1e-6)
    # balanced classes: one constant offset (softmax ignores it: plain cross-entropy)
    balanced = logit_adjustment(np.array([5, 5, 0, 5]))
    assert torch.allclose(balanced, balanced[0].expand(4))
    with pytest.raises(ValueError, match="no class has training images"):
        logit_adjustment(np.zeros(3))


@pytest.mark.parametrize("value", ["balanced", "Logit_Adjust"])
def test_loss_balance_is_checked_and_changes_the_result(value):
    assert make_config().loss_balance == "none"  # the seed notebook's recipe by default
    assert make_config(loss_balance="logit_adjust").loss_balance == "logit_adjust"
    with pytest.raises(ValueError, match=rf"loss_balance='{value}' \(one of none, "
                                         r"logit_adjust\)"):
        make_config(loss_balance=value)
    assert "loss_balance" in RESULT_FIELDS  # a checkpoint of the other setting is refused
