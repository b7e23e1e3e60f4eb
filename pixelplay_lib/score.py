"""Score a submission against an answer key: overall, seen-class and unseen-class accuracy."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .data import load_challenge


def score_submission(submission: str | Path, answers: str | Path, data_root: str = "",
                     input_root: str = "/kaggle/input") -> dict[str, float | int]:
    sub = pd.read_csv(submission, dtype=str)
    key = pd.read_csv(answers, dtype=str)
    sub.columns, key.columns = ["image_id", "pred"], ["image_id", "truth"]
    merged = key.merge(sub, on="image_id", how="left")
    if merged["pred"].isna().any():
        missing = merged.loc[merged["pred"].isna(), "image_id"].iloc[0]
        raise ValueError(f"{submission} has no row for {missing} (and maybe others)")
    correct = merged["pred"].str.strip() == merged["truth"].str.strip()
    result: dict[str, float | int] = {"images": len(merged), "accuracy": float(correct.mean())}
    if data_root or Path(input_root).is_dir():  # on Kaggle, data_root "" searches the inputs
        ch = load_challenge(data_root, input_root)
        unseen = {ch.classes[i] for i in ch.unseen}
        is_unseen = merged["truth"].str.strip().isin(unseen)
        result.update(seen_images=int((~is_unseen).sum()), unseen_images=int(is_unseen.sum()),
                      seen_accuracy=float(correct[~is_unseen].mean()),
                      unseen_accuracy=float(correct[is_unseen].mean()))
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}
