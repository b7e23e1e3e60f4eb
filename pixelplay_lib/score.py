"""Score a submission against an answer key (overall, seen-class and unseen-class accuracy),
and show the Special-Package scores predict wrote beside it (every expert and the fusion
on the competition's labelled photos: the only real-photo check before submitting)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .data import load_challenge


def score_submission(submission: str | Path, answers: str | Path, data_root: str = "",
                     input_root: str = "/kaggle/input") -> dict[str, float | int | str]:
    sub = pd.read_csv(submission, dtype=str)
    key = pd.read_csv(answers, dtype=str)
    sub.columns, key.columns = ["image_id", "pred"], ["image_id", "truth"]
    merged = key.merge(sub, on="image_id", how="left")
    if merged["pred"].isna().any():
        missing = merged.loc[merged["pred"].isna(), "image_id"].iloc[0]
        raise ValueError(f"{submission} has no row for {missing} (and maybe others)")
    correct = merged["pred"].str.strip() == merged["truth"].str.strip()
    result: dict[str, float | int | str] = {"images": len(merged),
                                            "accuracy": float(correct.mean())}
    if data_root or Path(input_root).is_dir():  # on Kaggle, data_root "" searches the inputs
        ch = load_challenge(data_root, input_root)
        unseen = {ch.classes[i] for i in ch.unseen}
        is_unseen = merged["truth"].str.strip().isin(unseen)
        result.update(seen_images=int((~is_unseen).sum()), unseen_images=int(is_unseen.sum()),
                      seen_accuracy=float(correct[~is_unseen].mean()),
                      unseen_accuracy=float(correct[is_unseen].mean()))
    else:
        result["note"] = "pass --data-root (the challenge) to split seen / unseen accuracy"
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}


def score(submission: str | Path, answers: str | Path = "", data_root: str = "",
          input_root: str = "/kaggle/input") -> dict[str, object]:
    """The `score` command: {"test": score_submission(...)} when an answer key is given,
    {"special_package": rows overall / seen / unseen / per class -> accuracy per expert}
    from <stem>.special.csv beside <stem>.csv (predict and fuse write it for exactly that
    submission's rule), and a "special_package_note" saying why when there is none (never
    another submission's scores). Raises FileNotFoundError for a missing submission."""
    if not Path(submission).is_file():
        raise FileNotFoundError(f"no submission at {submission}")
    result: dict[str, object] = {}
    if answers:
        result["test"] = score_submission(submission, answers, data_root, input_root)
    special = Path(submission).with_suffix(".special.csv")
    if special.is_file():
        table = pd.read_csv(special, index_col=0)
        result["special_package"] = json.loads(table.round(4).to_json(orient="index"))
    else:
        result["special_package_note"] = (
            f"no {special.name} beside {submission}: predict / fuse write it for their "
            "submission when it ran with a fusion and found the competition's "
            "Special-Package (labels.txt + images)")
    return result
