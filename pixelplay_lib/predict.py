"""The submission: the fused decision of the experts, or the baseline's votes.

With a fusion (train writes fusion.pt when classes.txt lists classes without training
images), every expert scores every test image and the fused decision rule picks the class
(experts/). Without one (zero_shot=off, or a model trained without), voting as in the
baseline: each test image goes through the training augmentation `tta_votes` times;
`hard` takes the most frequent argmax (ties: highest mean probability), `soft` the highest
mean probability, among the seen classes only. Unlike the baseline (batch size 1, seven
sequential passes), all views of a batch go through the network in one pass.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import checkpoint as ckpt
from . import distributed, experts
from .config import Config, config_from_saved
from .data import DataError, load_challenge
from .inference import ViewPlan, classifier_forward, load_trained, open_images, prepare, run_images
from .pipeline import resolve_workers
from .runtime import Runtime, make_runtime, setup_logging

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
    model_path = Path(cfg.model_path or out / "model.pt")
    net, saved = load_trained(model_path)
    trained = config_from_saved(saved["config"])
    ch = load_challenge(cfg.data_root, cfg.input_root)
    if ch.classes != saved["classes"]:
        raise DataError(f"{ch.root / 'classes.txt'} differs from the classes the model was "
                        "trained on")
    files = ch.test_files()
    fused = cfg.zero_shot != "off" and (model_path.parent / "fusion.pt").is_file()
    if cfg.zero_shot == "on" and not fused:
        raise FileNotFoundError(f"zero_shot=on but {model_path.parent} holds no fusion.pt "
                                "(train with zero_shot auto/on writes it)")
    if net is None and not fused:
        raise FileNotFoundError(f"{model_path} holds no network and there is no fusion.pt "
                                "beside it: nothing to predict with")
    if fused:
        if not rt.is_main:  # the fusion runs in one process (the image-text model spreads
            return None     # over the GPUs itself); the other ranks have nothing to do
        fitted = experts.load_fitted(cfg, rt, ch, model_path.parent, trained, net)
        pred, _, pool = fitted.predict(cfg, rt, files, "test images")
        failed, lenient = dict(pool["failed"]), pool["lenient"]
    else:  # the baseline's way: votes among the seen classes, no unseen class ever
        pred, failed, lenient = vote_only(cfg, rt, net, trained, files, saved["seen"])
        if pred is None:
            return None
    for i, err in failed.items():
        log.warning("test image %s could not be decoded (%s): predicted without it",
                    files[i].name, err)
    classes = saved["classes"]
    frame = pd.DataFrame({"image_id": [f.name for f in files],
                          "class": [classes[c] for c in pred]})
    path = write_submission(frame, files, classes, out / "submission.csv",
                            ch.sample_submission())
    n_unseen = int(np.isin(pred, saved["unseen"]).sum())
    summary = {"test_images": len(files),
               "undecodable": {files[i].name: e for i, e in failed.items()},
               # strict decoding failed, the lenient try worked: predicted from the partial
               # picture (truncated, over Pillow's pixel limit)
               "decoded_leniently": {files[i].name: e for i, e in lenient.items()},
               "predicted_unseen": n_unseen,
               "predicted_unseen_share": round(n_unseen / max(len(files), 1), 4),
               "fusion": fused, "vote": cfg.vote, "tta_votes": cfg.tta_votes,
               "submission": str(path)}
    if fused:
        summary["special_package"] = experts.score_special(cfg, rt, ch, fitted)
    ckpt.atomic_write_text(out / "predict_summary.json",
                           json.dumps(summary, indent=2, default=str) + "\n")
    log.info("wrote %s: %d rows, %d predicted as unseen classes (%.1f%%; about 20%% expected "
             "on the challenge's test set)%s", path, len(frame), n_unseen,
             100 * summary["predicted_unseen_share"],
             f", {len(failed)} undecodable" if failed else "")
    return frame


def vote_only(cfg: Config, rt: Runtime, net, trained: Config, files: list[Path],
              seen: list[int]) -> tuple[np.ndarray | None, dict[int, str], dict[int, str]]:
    """Test-time voting among the seen classes, sharded over processes under torchrun:
    (class per test image or None on ranks other than 0, undecodable, decoded leniently)."""
    prepare(net, rt)
    images = distributed.main_process_first(rt.is_main, lambda: open_images(
        files, trained.image_size, cfg, "decoding test images", lenient=True))
    plan = ViewPlan(trained.image_size, votes=cfg.tta_votes, seed=cfg.seed,
                    scale_min=trained.crop_scale_min, rotation=trained.rotation,
                    fast_augment=trained.fast_augment)
    result = run_images(classifier_forward(net), images, range(len(files)), plan, rt,
                        batch_images=max(1, cfg.batch_size * 4 // plan.n_views),
                        workers=resolve_workers(cfg.num_workers), keep={"logits": "all"},
                        keep_failed=True, shard=True)
    if not rt.is_main:
        return None, {}, {}
    if not np.array_equal(result["index"], np.arange(len(files))):
        raise RuntimeError("the predictions do not cover every test image once")
    return (vote(result["logits"][:, 1:], cfg.vote, seen), dict(result["failed"]),
            dict(getattr(images, "lenient", {})))


def by_number(names: set[str]) -> dict[str, str]:
    """{"1": "00001.jpg", ...} when every stem is a number (sample ids written without the
    zero padding); {} when the stems are not all numbers or two share a number."""
    stems = {name: Path(name).stem for name in names}
    if not all(stem.isdigit() for stem in stems.values()):
        return {}
    table = {str(int(stem)): name for name, stem in stems.items()}
    return table if len(table) == len(names) else {}


def write_submission(frame: pd.DataFrame, test_files: list[Path], classes: list[str],
                     path: Path, sample: Path | None = None) -> Path:
    """Check the frame is complete and valid, then write it atomically.

    One row per test file, no duplicates, every label a class of classes.txt. When the
    competition ships a sample_submission.csv, its header and row order are used; its ids
    may lack the extension (`00001` for test/00001.jpg) or the zero padding (`1`): rows
    match by stem or by number and the file then carries the sample's ids.

    File names that are not valid UTF-8 (a Windows zip unpacked on Linux) arrive as
    surrogate-escaped str; the CSV is encoded with surrogateescape so such an id is written
    as its bytes on disk (what the scorer's copy of the name holds), not replaced or dropped.
    Raises ValueError naming what is wrong with an incomplete or invalid frame.
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
        template = pd.read_csv(sample, dtype=str, encoding_errors="surrogateescape")
        id_col, label_col = template.columns[:2]
        by_stem = {Path(name).stem: name for name in expected}
        if not set(template[id_col]) & (expected | set(by_stem)):
            by_stem = by_number(expected)  # ids `1` for test/00001.jpg
        if set(template[id_col]) == expected:
            frame = frame.set_index("image_id").loc[template[id_col]].reset_index()
            frame.columns = [id_col, label_col]
        elif len(by_stem) == len(expected) and set(template[id_col]) == set(by_stem):
            labels = frame.set_index("image_id")["class"]
            frame = pd.DataFrame({id_col: template[id_col],
                                  label_col: labels.loc[template[id_col].map(by_stem)].values})
        else:
            odd = sorted(set(template[id_col]) - expected - set(by_stem))[:3]
            log.warning("%s does not list the same images as test/ (e.g. %s; test/ has %s): "
                        "its ids and order are ignored, the submission uses the file names",
                        sample, ", ".join(odd) or "fewer rows", sorted(expected)[0])
    else:
        frame = frame.sort_values("image_id", kind="stable")
    ckpt.atomic_write_bytes(path, frame.to_csv(index=False).encode("utf-8", "surrogateescape"))
    return path
