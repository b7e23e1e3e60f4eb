"""What the notebooks compute and show as tables: data statistics, validation predictions,
prediction summaries. No matplotlib here (figures are in plots.py), so everything in this
module runs and is tested without the notebook extras.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .config import Config, config_from_saved
from .data import (
    Challenge,
    DataError,
    UnsupportedImageFile,
    load_challenge,
    load_rgb,
    open_image,
    split_train_val,
)
from .inference import ViewPlan, classifier_forward, load_trained, open_images, prepare, run_images
from .pipeline import header_size, resolve_workers
from .runtime import make_runtime


# --------------------------------------------------------------------------- run outputs
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


def read_fusion(output_dir: str | Path, name: str = "fusion") -> dict[str, Any] | None:
    """A fusion report: fusion.json (train: the protocol's provisional choice) or
    <name>.fusion.json (predict / fuse: as chosen on the test pool for submission <name>);
    None when there is none."""
    path = Path(output_dir) / (f"{name}.json" if name == "fusion" else f"{name}.fusion.json")
    return json.loads(path.read_text()) if path.is_file() else None


def fusion_table(report: dict[str, Any]) -> pd.DataFrame:
    """The leave-classes-out protocol: one row per expert alone (at its own best gamma),
    then the fusion, the fusion at gamma 0 and never predicting unseen; columns u, s, H,
    acc (expected accuracy (1 - p) s + p u), gamma. The weights are fusion_weights'."""
    proto = report.get("protocol", {})
    rows = {f"{name} alone": r for name, r in proto.get("experts", {}).items()}
    if proto:
        rows.update({"fused": proto["fusion"], "fused, gamma 0": proto["gamma0"],
                     "fused, never unseen": proto["never_unseen"]})
    return pd.DataFrame.from_dict(rows, orient="index").reindex(
        columns=["u", "s", "H", "acc", "gamma"])


def fusion_weights(report: dict[str, Any]) -> str:
    """The weights and gamma in force (the test pool's choice once made), as one line."""
    weights = ", ".join(f"{n} {w:g}" for n, w in zip(report["names"], report["weights"],
                                                      strict=True))
    return (f"weights {weights}; gamma {report['gamma']:+.3f}; transductive weight "
            f"{report.get('transductive_weight', 0):g}")


def fold_names(report: dict[str, Any], classes: list[str]) -> list[str]:
    """The protocol's folds as class names, one line per fold."""
    folds = report.get("protocol", {}).get("folds", [])
    return [f"fold {k + 1}: " + ", ".join(classes[c] for c in group)
            for k, group in enumerate(folds)]


def test_pool_table(report: dict[str, Any]) -> pd.DataFrame | None:
    """The test pool's estimates (experts/testpool.py): one row per candidate rule (each
    expert alone, text at gamma 0, the fusion): estimated accuracy, its seen and unseen
    parts, gamma, share of test images predicted unseen, and which rule was chosen. None
    before a test pool was seen (train's fusion.json)."""
    test = report.get("test_pool", {})
    if "candidates" not in test:
        return None
    frame = pd.DataFrame.from_dict(test["candidates"], orient="index")
    frame["chosen"] = frame.index == test["chosen"]["name"]
    return frame[["acc", "seen", "unseen", "gamma", "predicted_unseen_share", "chosen"]]


def read_special(output_dir: str | Path, name: str = "submission") -> pd.DataFrame | None:
    """<name>.special.csv: accuracy of every expert and the fusion (as chosen for
    submission <name>; "fusion": train's provisional rule) on the Special-Package's
    labelled photos, rows overall, seen, unseen, per class; None when there is none."""
    path = Path(output_dir) / f"{name}.special.csv"
    return pd.read_csv(path, index_col=0) if path.is_file() else None


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
    """Per image: width, height (px, upright, from the header), format, mode, and the error
    of a full decode with data.load_rgb ("" when it decodes). A file Pillow cannot open gets
    what its content is as its format ("HEIC/HEIF container (ftyp heic)", "HTML page": see
    data.describe_content). Decoding runs in threads (PIL releases the GIL); JPEG draft
    mode at `min_side` keeps it cheap."""

    def one(path: Path) -> dict[str, Any]:
        row: dict[str, Any] = {"path": str(path), "file": path.name, "width": np.nan,
                               "height": np.nan, "format": "", "mode": "", "error": ""}
        try:
            with open_image(path) as img:
                row.update(format=img.format or "", mode=img.mode)
            width, height = header_size(path)
            row.update(width=width, height=height)
            load_rgb(path, min_side=min_side)
        except UnsupportedImageFile as e:
            row.update(format=e.found, error=f"{type(e).__name__}: {e}")
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
    """The test images as predict lists them (data.Challenge.test_files, nested test/test/
    included); [] instead of an error when there is none."""
    try:
        return ch.test_files()
    except DataError:
        return []


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
    """Confusion matrix (seen x seen, counts) and per-class accuracy of a trained model on
    its validation split.

    The split, image size and seed come from the model's own config (so it is the split it
    was validated on); paths, workers and devices from `cfg`. Predictions are the argmax of
    the network over the seen classes (what predict votes among), one central view each.
    Raises ValueError when the model was trained without a validation split.
    """
    net, saved = load_trained(Path(model_path or Path(cfg.output_dir) / "model.pt"))
    trained = config_from_saved(saved["config"])
    ch = load_challenge(cfg.data_root, cfg.input_root)
    rt = make_runtime(cfg)
    _, val_idx = split_train_val(ch.train_samples, trained.val_fraction, trained.seed)
    if not val_idx:
        raise ValueError("the model was trained with val_fraction=0: no validation split")
    # Every training image, as train opened them: the decoded cache of the run is reused.
    images = open_images([p for p, _ in ch.train_samples], trained.image_size, cfg,
                         "decoding train images")
    out = run_images(classifier_forward(prepare(net, rt)), images, val_idx,
                     ViewPlan(trained.image_size, seed=trained.seed), rt,
                     batch_images=cfg.batch_size * 2, workers=resolve_workers(cfg.num_workers),
                     keep={"logits": "first"}, labels=[label for _, label in ch.train_samples])
    seen = list(saved["seen"])
    pred = np.asarray(seen)[out["logits"][:, seen].argmax(1)]
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


def prediction_items(frame: pd.DataFrame, test_files: list[Path], unseen: list[str],
                     n: int = 24, seed: int = 0) -> list[tuple[Path, str]]:
    """`n` random (test image, caption) pairs of a submission frame; unseen classes get a *.
    test_files: the listed test images (Challenge.test_files), matched by file name."""
    where = {p.name: p for p in test_files}
    rows = frame.sample(min(n, len(frame)), random_state=seed).sort_values("image_id")
    return [(where[name], f"{name}\n{label}{' *' if label in unseen else ''}")
            for name, label in zip(rows["image_id"], rows["class"], strict=True)]
