"""The notebooks' figures: each `plot_*` takes a table or array from analysis.py (or a
report JSON) and returns a matplotlib Figure; `show` saves it as PNG under
output_dir/figures/ and leaves it for the notebook to display. matplotlib is an optional
dependency (the "notebooks" extra): this is the only module that imports it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .data import UnsupportedImageFile, load_rgb

FIGURES = "figures"
SEEN_COLOUR, UNSEEN_COLOUR = "#4c72b0", "#dd8452"


def save_figure(fig: Figure, output_dir: str | Path, name: str, dpi: int = 100) -> Path:
    """Write `fig` as output_dir/figures/<name>.png; returns the path."""
    folder = Path(output_dir) / FIGURES
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


def show(fig: Figure, output_dir: str | Path, name: str) -> None:
    """Save `fig` under output_dir/figures/ and leave it open: a notebook shows it inline at
    the end of the cell (the inline backend then closes it)."""
    print(f"figure: {save_figure(fig, output_dir, name)}")


def plot_class_counts(counts: pd.DataFrame, title: str = "training images per class") -> Figure:
    """Bar chart of counts (class, images, seen), seen and unseen classes coloured apart.

    A class with 0 images has no bar to colour (the unseen classes of the training counts):
    it is a marker on the axis instead. The legend is made from what is drawn, so it lists
    exactly the kinds present ("seen class", "unseen class, 0 images", ...); the names of
    unseen classes are in their colour too.
    """
    order = counts.sort_values(["seen", "images"], ascending=[False, False])
    order = order.reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(max(8, 0.22 * len(order)), 4))
    for seen, colour, kind in ((True, SEEN_COLOUR, "seen"), (False, UNSEEN_COLOUR, "unseen")):
        group = order[order["seen"] == seen]
        bars, empty = group[group["images"] > 0], group[group["images"] == 0]
        if len(bars):
            ax.bar(bars.index, bars["images"], color=colour, label=f"{kind} class")
        if len(empty):
            ax.plot(empty.index, np.zeros(len(empty)), "^", color=colour, markersize=7,
                    clip_on=False, linestyle="none", label=f"{kind} class, 0 images")
    ax.set_xticks(range(len(order)), order["class"], rotation=90, fontsize=7)
    for label, seen in zip(ax.get_xticklabels(), order["seen"], strict=True):
        label.set_color("black" if seen else UNSEEN_COLOUR)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("images")
    ax.set_title(title)
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(*zip(*sorted(zip(handles, labels, strict=True), key=lambda hl: hl[1]),
                   strict=True))  # "seen class" first
    fig.tight_layout()
    return fig


def plot_image_grid(items: list[tuple[str | Path, str]], cols: int = 8, thumb: int = 96,
                    title: str = "") -> Figure:
    """Thumbnails of (image, caption); an unreadable image shows its error instead."""
    rows = max(1, -(-len(items) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.5, rows * 1.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (path, caption) in zip(axes.flat, items, strict=False):
        try:
            img = load_rgb(path, min_side=thumb)
            img.thumbnail((thumb, thumb))
            ax.imshow(img)
        except Exception as e:
            what = e.found if isinstance(e, UnsupportedImageFile) else type(e).__name__
            ax.text(0.5, 0.5, f"unreadable\n{what}", ha="center", va="center", fontsize=6,
                    color="red", wrap=True)
        ax.set_title(str(caption), fontsize=6)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_image_sizes(stats: dict[str, pd.DataFrame]) -> Figure:
    """Histograms of width, height and aspect ratio; `stats` maps a label (train, test) to an
    image_stats frame."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    for ax, col in zip(axes, ("width", "height", "aspect"), strict=True):
        for label, frame in stats.items():
            values = frame[col].dropna()
            if len(values):
                ax.hist(values, bins=30, alpha=0.6, label=f"{label} ({len(values)})")
        ax.set_xlabel(col + (" (w/h)" if col == "aspect" else " (px)"))
        ax.legend(fontsize=7)
    axes[0].set_ylabel("images")
    fig.tight_layout()
    return fig


def plot_curves(metrics: pd.DataFrame) -> Figure:
    """Train / validation loss (log scale: it falls by orders of magnitude, and the late
    epochs matter) and validation accuracy per epoch (from read_metrics); epoch ticks are
    whole numbers."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 3.5))
    ax_loss.plot(metrics["epoch"], metrics["train_loss"], "o-", label="train")
    if "val_loss" in metrics:
        ax_loss.plot(metrics["epoch"], metrics["val_loss"], "o-", label="validation")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy (log scale)")
    ax_loss.set_yscale("log")
    ax_loss.legend()
    if "val_acc" in metrics:
        ax_acc.plot(metrics["epoch"], metrics["val_acc"], "o-", color="green")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("validation accuracy")
    ax_acc.set_ylim(0, 1)
    for ax in (ax_loss, ax_acc):
        ax.set_xlim(metrics["epoch"].min() - 0.5, metrics["epoch"].max() + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_confusion(confusion: np.ndarray, classes: list[str], normalise: bool = True) -> Figure:
    """Confusion matrix (rows: true class, columns: predicted), row-normalised by default."""
    matrix = confusion.astype(float)
    if normalise:
        matrix = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    size = max(5, 0.22 * len(classes))
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1 if normalise else None)
    ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=6)
    ax.set_yticks(range(len(classes)), classes, fontsize=6)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("validation confusion matrix" + (" (row-normalised)" if normalise else ""))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return fig


def plot_per_class_accuracy(per_class: pd.DataFrame, title: str = "accuracy per class"
                            ) -> Figure:
    """Horizontal bars of (class, accuracy[, seen]), worst first."""
    table = per_class.sort_values("accuracy", ascending=False)
    fig, ax = plt.subplots(figsize=(6, max(3, 0.18 * len(table))))
    seen = table["seen"] if "seen" in table else [True] * len(table)
    colours = [SEEN_COLOUR if s else UNSEEN_COLOUR for s in seen]
    ax.barh(range(len(table)), table["accuracy"].fillna(0), color=colours)
    ax.set_yticks(range(len(table)), table["class"], fontsize=6)
    ax.set_xlim(0, 1)
    ax.set_xlabel("accuracy")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_fusion(report: dict[str, Any], table: pd.DataFrame) -> Figure:
    """The fusion: the leave-classes-out protocol's u, s, H against gamma with its gamma
    (left), and the estimated accuracy of each candidate rule (right): on the test pool
    with its 90% interval for the chosen one when predict / fuse chose there, else the
    protocol's expected accuracy. report: a fusion.json; table: analysis.fusion_table."""
    proto = report.get("protocol", {})
    fig, (ax, ax_bar) = plt.subplots(1, 2, figsize=(12, 3.8),
                                     gridspec_kw={"width_ratios": [3, 2]})
    if proto:
        curve = pd.DataFrame(proto["curve"])
        for col, label in (("u", "u (pseudo-unseen)"), ("s", "s (seen)"), ("H", "H (harmonic)")):
            ax.plot(curve["gamma"], curve[col], label=label)
        gamma = proto["fusion"]["gamma"]
        ax.axvline(gamma, color="grey", ls="--", label=f"protocol gamma {gamma:.2f}")
    test = report.get("test_pool", {})
    if "candidates" in test:
        ax.axvline(report["gamma"], color="black", ls=":",
                   label=f"test-pool gamma {report['gamma']:.2f}")
        names = list(test["candidates"])
        acc = [test["candidates"][n]["acc"] for n in names]
        colours = [UNSEEN_COLOUR if n == test["chosen"]["name"] else SEEN_COLOUR for n in names]
        ax_bar.barh(range(len(names)), acc, color=colours)
        lo, hi = test["chosen"]["interval"]
        k = names.index(test["chosen"]["name"])
        ax_bar.errorbar([acc[k]], [k], xerr=[[max(acc[k] - lo, 0)], [max(hi - acc[k], 0)]],
                        color="black", capsize=3)
        ax_bar.set_xlabel("estimated test accuracy (test pool; chosen rule coloured)")
        ax_bar.set_title(f"unseen share estimated {test['unseen_share']['estimate']:.1%}",
                         fontsize=8)
    else:
        names, acc = list(table.index), list(table["acc"])
        ax_bar.barh(range(len(names)), acc, color=[
            UNSEEN_COLOUR if n.startswith("fused") else SEEN_COLOUR for n in names])
        ax_bar.set_xlabel("protocol's expected accuracy 0.8 s + 0.2 u")
        ax_bar.set_title(f"{len(proto.get('folds', []))} folds", fontsize=8)
    ax_bar.set_yticks(range(len(names)), names, fontsize=7)
    ax_bar.invert_yaxis()
    ax_bar.set_xlim(min(acc + [0.5]) - 0.05, 1)
    ax.set_xlabel("gamma (offset subtracted from seen-class scores)")
    ax.set_ylabel("accuracy (mean over folds)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
def plot_special(table: pd.DataFrame) -> Figure:
    """Accuracy of every expert and the fusion on the Special-Package photos: overall, seen
    and unseen (table: analysis.read_special). The title says what the table knows: how many
    labelled photos (the demo data's package holds drawings, the competition's photos)."""
    rows = table.loc[["overall", "seen", "unseen"]]
    experts = [c for c in rows.columns if c != "images"]
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(experts)), 3.5))
    x = np.arange(len(experts))
    for k, (name, row) in enumerate(rows.iterrows()):
        ax.bar(x + (k - 1) * 0.27, row[experts].fillna(0), 0.27,
               label=f"{name} ({int(row['images'])} images)")
    ax.set_xticks(x, experts)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(f"Special-Package: {int(rows.loc['overall', 'images'])} labelled images, "
                 "never trained on")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
