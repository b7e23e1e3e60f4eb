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
from matplotlib.patches import Patch

from .data import load_rgb

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
    """Bar chart of counts (class, images, seen), seen and unseen classes coloured apart."""
    order = counts.sort_values(["seen", "images"], ascending=[False, False])
    fig, ax = plt.subplots(figsize=(max(8, 0.22 * len(order)), 4))
    colours = [SEEN_COLOUR if s else UNSEEN_COLOUR for s in order["seen"]]
    ax.bar(range(len(order)), order["images"], color=colours)
    ax.set_xticks(range(len(order)), order["class"], rotation=90, fontsize=7)
    ax.set_ylabel("images")
    ax.set_title(title)
    ax.legend(handles=[Patch(color=SEEN_COLOUR, label="seen"),
                       Patch(color=UNSEEN_COLOUR, label="unseen")])
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
            ax.text(0.5, 0.5, f"unreadable\n{type(e).__name__}", ha="center", va="center",
                    fontsize=6, color="red")
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
    """Train / validation loss and validation accuracy per epoch (from read_metrics)."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 3.5))
    ax_loss.plot(metrics["epoch"], metrics["train_loss"], "o-", label="train")
    if "val_loss" in metrics:
        ax_loss.plot(metrics["epoch"], metrics["val_loss"], "o-", label="validation")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy")
    ax_loss.legend()
    if "val_acc" in metrics:
        ax_acc.plot(metrics["epoch"], metrics["val_acc"], "o-", color="green")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("validation accuracy")
    ax_acc.set_ylim(0, 1)
    for ax in (ax_loss, ax_acc):
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
    """The leave-classes-out protocol of the fusion: u, s, H against gamma with the chosen
    gamma (left), and the expected accuracy of each expert alone vs fused (right).
    report: fusion.json; table: analysis.fusion_table(report)."""
    curve = pd.DataFrame(report["curve"])
    fig, (ax, ax_bar) = plt.subplots(1, 2, figsize=(12, 3.8),
                                     gridspec_kw={"width_ratios": [3, 2]})
    for col, label in (("u", "u (pseudo-unseen)"), ("s", "s (seen)"), ("H", "H (harmonic)")):
        ax.plot(curve["gamma"], curve[col], label=label)
    gamma = report["gamma"]
    ax.axvline(gamma, color="grey", ls="--", label=f"chosen gamma {gamma:.2f}")
    ax.set_xlabel("gamma (offset subtracted from seen-class scores)")
    ax.set_ylabel("accuracy (mean over folds)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    ax_bar.barh(range(len(table)), table["acc"], color=[
        UNSEEN_COLOUR if name.startswith("fused") else SEEN_COLOUR for name in table.index])
    ax_bar.set_yticks(range(len(table)), table.index, fontsize=7)
    ax_bar.invert_yaxis()
    ax_bar.set_xlim(0, 1)
    ax_bar.set_xlabel("expected accuracy 0.8 s + 0.2 u")
    ax_bar.set_title(f"{len(report.get('folds', []))} folds", fontsize=8)
    fig.tight_layout()
    return fig


def plot_special(table: pd.DataFrame) -> Figure:
    """Accuracy of every expert and the fusion on the Special-Package photos: overall, seen
    and unseen (table: analysis.read_special)."""
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
    ax.set_title("Special-Package (real photos, never trained on)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
