"""The notebooks' figures say what the data says: asserted on the matplotlib objects.

Class counts: every legend entry is an artist drawn on the chart (classes with 0 images,
the unseen ones of the training counts, are markers, not invisible bars). Loss curves: log
scale, whole-epoch ticks. Special-Package: the title counts the labelled images and does
not claim they are real photos (the demo's are drawings).
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display in tests

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402
from matplotlib.container import BarContainer  # noqa: E402

from pixelplay_lib import plots  # noqa: E402
from pixelplay_lib.special import score_table  # noqa: E402

CLASSES = ["antelope", "grizzly+bear", "killer+whale", "beaver", "dalmatian", "moose"]


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def artist_colour(artist) -> str:
    """The face colour of a bar group, or the colour of a marker line, as hex."""
    if isinstance(artist, BarContainer):
        return to_hex(artist.patches[0].get_facecolor())
    return to_hex(artist.get_color())


COUNTS = {  # (images per class of CLASSES, seen per class, expected legend)
    "training counts": ([30, 12, 7, 0, 0, 0], [True, True, True, False, False, False],
                        ["seen class", "unseen class, 0 images"]),
    "predicted counts": ([30, 0, 7, 4, 9, 0], [True, True, True, False, False, False],
                         ["seen class", "seen class, 0 images", "unseen class",
                          "unseen class, 0 images"]),
}


@pytest.mark.parametrize("kind", list(COUNTS))
def test_class_count_legend_lists_exactly_what_is_drawn(kind: str) -> None:
    images, seen, expected = COUNTS[kind]
    counts = pd.DataFrame({"class": CLASSES, "images": images, "seen": seen})
    ax = plots.plot_class_counts(counts).axes[0]
    handles, labels = ax.get_legend_handles_labels()
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == expected == sorted(labels)
    for handle, label in zip(handles, labels, strict=True):
        assert handle in ax.containers or handle in ax.lines, label  # drawn, not a proxy
        colour = plots.UNSEEN_COLOUR if label.startswith("unseen") else plots.SEEN_COLOUR
        assert artist_colour(handle) == colour, label
        if isinstance(handle, BarContainer):
            assert all(p.get_height() > 0 for p in handle.patches), label
    # Every class is drawn once, where its tick is: a bar or a marker at 0.
    ticks = {t.get_text(): x for t, x in zip(ax.get_xticklabels(), ax.get_xticks(),
                                            strict=True)}
    drawn = {}
    for bars in ax.containers:
        drawn.update({round(p.get_x() + p.get_width() / 2): p.get_height()
                      for p in bars.patches})
    for line in ax.lines:
        drawn.update({round(x): y for x, y in zip(*line.get_data(), strict=True)})
    assert {name: drawn[ticks[name]] for name in CLASSES} == dict(zip(CLASSES, images,
                                                                      strict=True))


@pytest.mark.parametrize("epochs", [1, 3, 25])
def test_loss_curve_is_log_scale_with_whole_epoch_ticks(epochs: int) -> None:
    metrics = pd.DataFrame({"epoch": np.arange(1, epochs + 1),
                            "train_loss": np.geomspace(3.9, 0.004, epochs),
                            "val_loss": np.geomspace(3.5, 0.2, epochs),
                            "val_acc": np.linspace(0.1, 0.95, epochs)})
    fig = plots.plot_curves(metrics)
    ax_loss, ax_acc = fig.axes
    assert ax_loss.get_yscale() == "log" and ax_acc.get_yscale() == "linear"
    for ax in (ax_loss, ax_acc):
        lo, hi = ax.get_xlim()
        shown = [x for x in ax.get_xticks() if lo <= x <= hi]
        assert shown and all(float(x).is_integer() for x in shown), shown
        assert 1 <= min(shown) and max(shown) <= epochs  # no epoch 0, none after the last
        assert ax.get_xlabel() == "epoch"


@pytest.mark.parametrize("n", [10, 137])
def test_special_package_title_counts_labelled_images(n: int) -> None:
    rng = np.random.default_rng(n)
    truth = rng.integers(0, len(CLASSES), n)
    table = score_table({"resnet": rng.integers(0, len(CLASSES), n), "fused": truth},
                        truth, CLASSES, unseen=[3, 4, 5])
    ax = plots.plot_special(table).axes[0]
    assert ax.get_title() == f"Special-Package: {n} labelled images, never trained on"
    assert "real" not in ax.get_title()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["resnet", "fused"]
