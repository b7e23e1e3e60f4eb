"""What the notebooks show: data statistics, training curves, validation errors, predictions.

The notebooks (notebooks/explore.py, train.py, infer.py) stay thin: parameters, calls into
train/predict and into the functions here. Functions come in two kinds: plain analysis
(tables and arrays, no matplotlib) and `plot_*` functions that return a matplotlib Figure.
`save_figure` writes a figure as PNG under output_dir/figures/. matplotlib is an optional
dependency (the "notebooks" extra), so it is imported inside the plotting functions only.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from PIL import Image

from .config import Config, config_from_saved
from .data import Challenge, is_image_file, load_challenge, load_rgb, split_train_val

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger("pixelplay")

FIGURES = "figures"
SEEN_COLOUR, UNSEEN_COLOUR = "#4c72b0", "#dd8452"


# --------------------------------------------------------------------------- parameters
# --------------------------------------------------------------------------- files
def find_model(model_path: str = "", output_dir: str | Path = "",
               input_root: str | Path = "/kaggle/input") -> Path:
    """The model to predict with: `model_path` if given, else output_dir/model.pt, else the
    newest model.pt below `input_root` (on Kaggle: the train kernel's output attached as an
    input). Raises FileNotFoundError saying what to attach."""
    if model_path:
        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(f"model_path={path}: no such file")
        return path
    if output_dir and (Path(output_dir) / "model.pt").is_file():
        return Path(output_dir) / "model.pt"
    found = []
    root = Path(input_root)
    if root.is_dir():
        for folder, subdirs, files in os.walk(root, followlinks=True):
            if "model.pt" in files:
                found.append(Path(folder) / "model.pt")
            # A challenge's image folders hold thousands of files and never a model.
            skip = {"train", "test"} if "classes.txt" in files else set()
            subdirs[:] = sorted(d for d in subdirs if d not in skip | {"cache"})
    if not found:
        raise FileNotFoundError(
            f"no model.pt in {output_dir or '(no output_dir)'} nor below {root}. On Kaggle, "
            "attach the train kernel's output (`make push-kernel NB=infer` attaches "
            "<user>/pixelplay-train); locally, pass model_path or train into output_dir.")
    found.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    if len(found) > 1:
        log.info("several models below %s; using the newest, %s (others: %s)", root, found[0],
                 ", ".join(map(str, found[1:])))
    return found[0]


def find_answers(challenge_root: str | Path) -> Path | None:
    """An answer_key.csv in the challenge root or up to two folders above (the demo data
    keeps it outside the competition folder); None when there is none (the real data)."""
    root = Path(challenge_root)
    for folder in (root, root.parent, root.parent.parent):
        if (folder / "answer_key.csv").is_file():
            return folder / "answer_key.csv"
    return None


def read_metrics(output_dir: str | Path) -> pd.DataFrame:
    """metrics.jsonl (one row per epoch) as a frame; the per-class dict column is dropped."""
    path = Path(output_dir) / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return pd.DataFrame([{k: v for k, v in r.items() if k != "val_per_class"} for r in rows])


def read_zeroshot(output_dir: str | Path) -> dict[str, Any] | None:
    """The zero-shot protocol report (zeroshot.json), or None when zero-shot was off."""
    path = Path(output_dir) / "zeroshot.json"
    return json.loads(path.read_text()) if path.is_file() else None


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


# --------------------------------------------------------------------------- data
def class_counts(ch: Challenge) -> pd.DataFrame:
    """One row per class of classes.txt: name, training images, seen (has a train folder)."""
    counts = Counter(label for _, label in ch.train_samples)
    seen = set(ch.seen)
    return pd.DataFrame({"class": ch.classes,
                         "images": [counts.get(i, 0) for i in range(len(ch.classes))],
                         "seen": [i in seen for i in range(len(ch.classes))]})


def count_summary(counts: pd.DataFrame) -> dict[str, Any]:
    """Seen / unseen class numbers and the imbalance of the seen classes."""
    seen = counts[counts["seen"]]["images"]
    return {"classes": len(counts), "seen_classes": int(len(seen)),
            "unseen_classes": int((~counts["seen"]).sum()),
            "unseen": counts[~counts["seen"]]["class"].tolist(),
            "train_images": int(seen.sum()), "min": int(seen.min()), "median": float(seen.median()),
            "max": int(seen.max()), "imbalance": round(float(seen.max() / max(seen.min(), 1)), 2)}


def image_stats(paths: list[Path], workers: int = 8, min_side: int = 64) -> pd.DataFrame:
    """Per image: width, height (upright, from the header), format, mode, and the error of a
    full decode with data.load_rgb ("" when it decodes). Decoding runs in threads (PIL
    releases the GIL); JPEG draft mode at `min_side` keeps it cheap."""

    def one(path: Path) -> dict[str, Any]:
        row: dict[str, Any] = {"path": str(path), "file": path.name, "width": np.nan,
                               "height": np.nan, "format": "", "mode": "", "error": ""}
        try:
            with Image.open(path) as img:
                w, h = img.size
                if img.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # EXIF rotation by 90
                    w, h = h, w
                row.update(width=w, height=h, format=img.format or "", mode=img.mode)
            load_rgb(path, min_side=min_side)
        except Exception as e:  # any decoder error is what this report is for
            row["error"] = f"{type(e).__name__}: {e}"
        return row

    with ThreadPoolExecutor(max(1, workers)) as pool:
        rows = list(pool.map(one, paths))
    frame = pd.DataFrame(rows, columns=["path", "file", "width", "height", "format", "mode",
                                        "error"])
    frame["aspect"] = frame["width"] / frame["height"]
    return frame


def size_summary(stats: pd.DataFrame) -> dict[str, Any]:
    """Counts, size quantiles, formats and modes of an image_stats frame."""
    ok = stats[stats["error"] == ""]
    q = [0.0, 0.5, 1.0]

    def quantiles(col: str) -> list[float]:
        return [round(float(v), 2) for v in ok[col].quantile(q)] if len(ok) else []

    return {"images": len(stats), "unreadable": int((stats["error"] != "").sum()),
            "width_min_median_max": quantiles("width"),
            "height_min_median_max": quantiles("height"),
            "aspect_min_median_max": quantiles("aspect"),
            "formats": dict(Counter(stats["format"])), "modes": dict(Counter(stats["mode"]))}


def unreadable(stats: pd.DataFrame) -> pd.DataFrame:
    """The rows of an image_stats frame whose full decode failed."""
    return stats.loc[stats["error"] != "", ["path", "format", "mode", "error"]].reset_index(
        drop=True)


def list_test_images(ch: Challenge) -> list[Path]:
    """The test images (sorted), without raising when test/ is missing: [] then."""
    if not ch.test_dir.is_dir():
        return []
    return sorted(p for p in ch.test_dir.iterdir() if is_image_file(p))


def pick_samples(ch: Challenge, per_class: int = 2, seed: int = 0) -> list[tuple[Path, str]]:
    """`per_class` random training images of every seen class: (path, class name)."""
    by_class: dict[int, list[Path]] = {}
    for path, label in ch.train_samples:
        by_class.setdefault(label, []).append(path)
    rng = random.Random(seed)
    picked = []
    for label in sorted(by_class):
        paths = by_class[label]
        picked += [(p, ch.classes[label]) for p in rng.sample(paths, min(per_class, len(paths)))]
    return picked


# --------------------------------------------------------------------------- validation
def validation_report(cfg: Config, model_path: str | Path = "") -> dict[str, Any]:
    """Confusion matrix and per-class accuracy of a trained model on its validation split.

    The split, image size and seed come from the model's own config (so it is the split it
    was validated on); paths, workers and devices from `cfg`. Predictions are the argmax of
    the network over the seen classes (what predict votes among), one central view each.
    """
    import torch

    from .pipeline import EpochBatches, Views, make_loader, open_images, resolve_workers
    from .predict import load_model
    from .runtime import make_runtime
    from .train import cache_root, run_views

    net, saved = load_model(Path(model_path or Path(cfg.output_dir) / "model.pt"))
    trained = config_from_saved(saved["config"])
    ch = load_challenge(cfg.data_root, cfg.input_root)
    rt = make_runtime(cfg)
    net.to(rt.device).eval()
    if rt.channels_last:
        net.to(memory_format=torch.channels_last)
    _, val_idx = split_train_val(ch.train_samples, trained.val_fraction, trained.seed)
    if not val_idx:
        raise ValueError("the model was trained with val_fraction=0: no validation split")
    workers = resolve_workers(cfg.num_workers)
    # Every training image, as train opened them: the decoded cache of the run is reused.
    images = open_images([p for p, _ in ch.train_samples], trained.image_size, cfg.cache,
                         cache_root(cfg), workers, "decoding train images")
    views = Views(images, [label for _, label in ch.train_samples], trained.image_size, "eval",
                  trained.seed)
    loader = make_loader(views, EpochBatches(val_idx, cfg.batch_size * 2, trained.seed),
                         workers, rt.device.type == "cuda")
    out = run_views(net, loader, rt)  # unreadable images are left out by the loader
    seen = list(saved["seen"])
    logits = out["logits"][:, seen]
    pred = np.asarray(seen)[logits.argmax(1)]
    truth = out["labels"]
    position = {c: j for j, c in enumerate(seen)}
    confusion = np.zeros((len(seen), len(seen)), dtype=np.int64)
    for t, p in zip(truth, pred, strict=True):
        confusion[position[int(t)], position[int(p)]] += 1
    totals = confusion.sum(1)
    per_class = pd.DataFrame({"class": [saved["classes"][c] for c in seen], "images": totals,
                              "accuracy": np.where(totals > 0, np.diag(confusion)
                                                   / np.maximum(totals, 1), np.nan)})
    return {"classes": per_class["class"].tolist(), "confusion": confusion,
            "per_class": per_class, "accuracy": float((pred == truth).mean()),
            "images": int(len(truth)), "unreadable": len(out["failed"])}


# --------------------------------------------------------------------------- predictions
def prediction_counts(frame: pd.DataFrame, classes: list[str], unseen: list[str]
                      ) -> pd.DataFrame:
    """How many test images each class of classes.txt received, and whether it is unseen."""
    counts, unseen_set = Counter(frame["class"]), set(unseen)
    return pd.DataFrame({"class": classes, "images": [counts.get(c, 0) for c in classes],
                         "seen": [c not in unseen_set for c in classes]})


def prediction_summary(counts: pd.DataFrame) -> dict[str, Any]:
    total = int(counts["images"].sum())
    n_unseen = int(counts.loc[~counts["seen"], "images"].sum())
    return {"test_images": total, "predicted_seen": total - n_unseen,
            "predicted_unseen": n_unseen,
            "unseen_fraction": round(n_unseen / total, 4) if total else 0.0,
            "classes_predicted": int((counts["images"] > 0).sum()),
            "unseen_classes_predicted": int(((counts["images"] > 0) & ~counts["seen"]).sum())}


def per_class_test_accuracy(submission: pd.DataFrame, answers: str | Path,
                            unseen: list[str]) -> pd.DataFrame:
    """Accuracy per true class of a submission against an answer key (image_id,class)."""
    key = pd.read_csv(answers, dtype=str)
    key.columns = ["image_id", "truth"]
    key["truth"] = key["truth"].str.strip()
    merged = key.merge(submission.rename(columns={"class": "pred"}), on="image_id", how="left")
    merged["correct"] = merged["pred"].str.strip() == merged["truth"]
    table = merged.groupby("truth")["correct"].agg(["size", "mean"]).reset_index()
    table.columns = ["class", "images", "accuracy"]
    table["seen"] = ~table["class"].isin(set(unseen))
    return table.sort_values(["seen", "accuracy"]).reset_index(drop=True)


# --------------------------------------------------------------------------- plots
def _plt():
    import matplotlib.pyplot as plt

    return plt


def plot_class_counts(counts: pd.DataFrame, title: str = "training images per class") -> Figure:
    """Bar chart of counts (class, images, seen), seen and unseen classes coloured apart."""
    plt = _plt()
    order = counts.sort_values(["seen", "images"], ascending=[False, False])
    fig, ax = plt.subplots(figsize=(max(8, 0.22 * len(order)), 4))
    colours = [SEEN_COLOUR if s else UNSEEN_COLOUR for s in order["seen"]]
    ax.bar(range(len(order)), order["images"], color=colours)
    ax.set_xticks(range(len(order)), order["class"], rotation=90, fontsize=7)
    ax.set_ylabel("images")
    ax.set_title(title)
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=SEEN_COLOUR, label="seen"),
                       Patch(color=UNSEEN_COLOUR, label="unseen")])
    fig.tight_layout()
    return fig


def plot_image_grid(items: list[tuple[str | Path, str]], cols: int = 8, thumb: int = 96,
                    title: str = "") -> Figure:
    """Thumbnails of (image, caption); an unreadable image shows its error instead."""
    plt = _plt()
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
    plt = _plt()
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
    plt = _plt()
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
    plt = _plt()
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
    plt = _plt()
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


def plot_zeroshot(report: dict[str, Any]) -> Figure:
    """The leave-classes-out protocol: u, s, H against gamma, and the chosen gamma."""
    plt = _plt()
    curve = pd.DataFrame(report["curve"])
    fig, (ax, ax_bar) = plt.subplots(1, 2, figsize=(11, 3.5),
                                     gridspec_kw={"width_ratios": [2, 1]})
    for col, label in (("u", "u (pseudo-unseen)"), ("s", "s (seen)"), ("H", "H (harmonic)")):
        ax.plot(curve["gamma"], curve[col], label=label)
    ax.axvline(report["gamma"], color="grey", ls="--", label=f"chosen gamma {report['gamma']}")
    ax.set_xlabel("gamma (offset subtracted from seen-class scores)")
    ax.set_ylabel("accuracy (mean over folds)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    names = ["u", "s", "H", "acc"]
    x = np.arange(4)
    ax_bar.bar(x - 0.2, [report["gamma0"][n] for n in names], 0.4, label="gamma 0")
    ax_bar.bar(x + 0.2, [report[n] for n in names], 0.4, label=f"gamma {report['gamma']}")
    ax_bar.set_xticks(x, names)
    ax_bar.set_ylim(0, 1)
    ax_bar.legend(fontsize=7)
    ax_bar.set_title(f"lambda {report.get('lam')}, {len(report.get('folds', []))} folds",
                     fontsize=8)
    fig.tight_layout()
    return fig


def prediction_items(frame: pd.DataFrame, test_dir: str | Path, unseen: list[str],
                     n: int = 24, seed: int = 0) -> list[tuple[Path, str]]:
    """`n` random (test image, caption) pairs of a submission frame; unseen classes get a *."""
    rows = frame.sample(min(n, len(frame)), random_state=seed).sort_values("image_id")
    return [(Path(test_dir) / name, f"{name}\n{label}{' *' if label in unseen else ''}")
            for name, label in zip(rows["image_id"], rows["class"], strict=True)]

