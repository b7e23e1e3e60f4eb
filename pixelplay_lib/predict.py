"""Test-time voting, the zero-shot step and the submission file.

Voting as in the baseline: each test image goes through the training augmentation
`tta_votes` times; `hard` takes the most frequent argmax (ties: highest mean probability),
`soft` the highest mean probability. Unlike the baseline (batch size 1, seven sequential
passes), all views of a batch go through the network in one pass. Each image also gets one
central view, whose features feed the zero-shot step.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from . import checkpoint as ckpt
from . import distributed
from .config import Config, config_from_saved
from .data import DataError, load_challenge
from .model import build_model
from .pipeline import EpochBatches, Views, make_loader, open_images, resolve_workers
from .runtime import Runtime, make_runtime, setup_logging
from .train import cache_root, run_views
from .zeroshot import ZeroShotHead

log = logging.getLogger("pixelplay")

def vote(logits: np.ndarray, mode: str, allowed: list[int]) -> np.ndarray:
    """logits: images x votes x classes -> class index per image, among `allowed` classes."""
    masked = np.full_like(logits, -np.inf)
    masked[..., allowed] = logits[..., allowed]
    probs = torch.softmax(torch.from_numpy(masked), -1).numpy()
    mean_prob = probs.mean(1)
    if mode == "soft":
        return mean_prob.argmax(1)
    counts = np.zeros_like(mean_prob)
    winners = masked.argmax(-1)  # images x votes
    for v in range(winners.shape[1]):
        counts[np.arange(len(counts)), winners[:, v]] += 1
    return (counts + mean_prob * 1e-3).argmax(1)  # mean_prob < 1 only breaks ties


def load_model(path: Path) -> tuple[Any, dict[str, Any]]:
    if not path.is_file():
        raise FileNotFoundError(f"no trained model at {path} (train first, or pass model_path)")
    saved = ckpt.load_file(path)
    cfg = config_from_saved(saved["config"])
    net = build_model(cfg.arch, len(saved["classes"]), "none", cfg.trainable,
                      n_attributes=saved.get("n_attributes", 0))
    net.load_state_dict(saved["state_dict"])
    return net, saved


def predict(cfg: Config) -> pd.DataFrame | None:
    """Predict every test image, write output_dir/submission.csv, return the frame.

    Launched on several processes (torchrun), each votes on a shard of the test images and
    rank 0 gathers them into the one submission (the other ranks return None).
    """
    setup_logging()
    rank, world, local_rank = distributed.setup(cfg)
    try:
        return _predict(cfg, make_runtime(cfg, rank, world, local_rank))
    finally:
        distributed.teardown()


def _predict(cfg: Config, rt: Runtime) -> pd.DataFrame | None:
    out = Path(cfg.output_dir)
    net, saved = load_model(Path(cfg.model_path or out / "model.pt"))
    trained = config_from_saved(saved["config"])
    net.to(rt.device).eval()
    if rt.channels_last:
        net.to(memory_format=torch.channels_last)

    ch = load_challenge(cfg.data_root, cfg.input_root)
    if ch.classes != saved["classes"]:
        raise DataError(f"{ch.root / 'classes.txt'} differs from the classes the model was "
                        "trained on")
    files = ch.test_files()
    workers = resolve_workers(cfg.num_workers)
    images = distributed.main_process_first(rt.is_main, lambda: open_images(
        files, trained.image_size, cfg.cache, cache_root(cfg), workers, "decoding test images"))
    views = Views(images, [0] * len(files), trained.image_size, "votes", cfg.seed,
                  trained.crop_scale_min, trained.rotation, votes=cfg.tta_votes,
                  keep_failed=True, fast_augment=trained.fast_augment)
    batch = max(1, cfg.batch_size * 4 // (cfg.tta_votes + 1))  # images per pass, all views
    shard = range(rt.rank, len(files), rt.world)
    loader = make_loader(views, EpochBatches(shard, batch, cfg.seed), workers,
                         rt.device.type == "cuda")
    parts = distributed.gather_objects(run_views(net, loader, rt))
    if not rt.is_main:
        return None
    index = np.concatenate([p["index"] for p in parts])
    order = np.argsort(index)
    if not np.array_equal(index[order], np.arange(len(files))):
        raise RuntimeError("the gathered predictions do not cover every test image once")
    logits = np.concatenate([p["logits"] for p in parts])[order]
    feats = np.concatenate([p["features"] for p in parts])[order]
    failed = {int(i): e for p in parts for i, e in p["failed"]}
    for i, err in failed.items():
        log.warning("test image %s could not be decoded (%s): predicted from a blank image",
                    files[i].name, err)

    pred = vote(logits[:, 1:], cfg.vote, saved["seen"])
    head_state = saved.get("zero_shot")
    use_zs = cfg.zero_shot == "on" or (cfg.zero_shot == "auto" and saved["unseen"])
    if use_zs and head_state is None:
        if cfg.zero_shot == "on":
            raise RuntimeError("zero_shot=on but the model has no zero-shot head (it was "
                               "trained with zero_shot=off)")
        log.warning("the model has no zero-shot head: unseen classes cannot be predicted")
        use_zs = False
    if use_zs:
        head = ZeroShotHead.from_state(head_state)
        if cfg.zs_gamma != "auto":
            head.gamma = float(cfg.zs_gamma)
        pred = head.predict(feats[:, 0], pred)
    names = [saved["classes"][c] for c in pred]
    frame = pd.DataFrame({"image_id": [f.name for f in files], "class": names})
    path = write_submission(frame, files, saved["classes"], out / "submission.csv",
                            ch.sample_submission())
    n_unseen = int(np.isin(pred, saved["unseen"]).sum())
    summary = {"test_images": len(files), "undecodable": {files[i].name: e
                                                          for i, e in failed.items()},
               "predicted_unseen": n_unseen, "zero_shot": bool(use_zs), "vote": cfg.vote,
               "tta_votes": cfg.tta_votes, "submission": str(path)}
    ckpt.atomic_write_text(out / "predict_summary.json", json.dumps(summary, indent=2) + "\n")
    log.info("wrote %s: %d rows, %d predicted as unseen classes%s", path, len(frame), n_unseen,
             f", {len(failed)} undecodable" if failed else "")
    return frame


def write_submission(frame: pd.DataFrame, test_files: list[Path], classes: list[str],
                     path: Path, sample: Path | None = None) -> Path:
    """Check the frame is complete and valid, then write it atomically.

    One row per test file, no duplicates, every label a class of classes.txt. When the
    competition ships a sample_submission.csv, its header and row order are used.
    """
    if list(frame.columns[:2]) != ["image_id", "class"]:
        raise ValueError(f"submission needs columns image_id,class; got {list(frame.columns)}")
    ids = frame["image_id"].astype(str)
    expected = {f.name for f in test_files}
    problems = []
    dup = sorted(ids[ids.duplicated()].unique())
    if dup:
        problems.append(f"{len(dup)} duplicated image_id (e.g. {dup[0]})")
    missing = sorted(expected - set(ids))
    if missing:
        problems.append(f"{len(missing)} test images without a row (e.g. {missing[0]})")
    extra = sorted(set(ids) - expected)
    if extra:
        problems.append(f"{len(extra)} rows for unknown images (e.g. {extra[0]})")
    unknown = sorted(set(frame["class"].astype(str)) - set(classes))
    if unknown:
        problems.append(f"labels not in classes.txt: {', '.join(unknown[:5])}")
    if frame["class"].isna().any():
        problems.append("empty labels")
    if problems:
        raise ValueError("refusing to write an invalid submission: " + "; ".join(problems))
    frame = frame[["image_id", "class"]].assign(image_id=ids)
    if sample is not None:
        template = pd.read_csv(sample, dtype=str)
        id_col, label_col = template.columns[:2]
        if set(template[id_col]) == expected:
            frame = frame.set_index("image_id").loc[template[id_col]].reset_index()
            frame.columns = [id_col, label_col]
        else:
            log.warning("%s does not list the same images as test/: its order is ignored",
                        sample)
    else:
        frame = frame.sort_values("image_id", kind="stable")
    ckpt.atomic_write_text(path, frame.to_csv(index=False))
    return path
