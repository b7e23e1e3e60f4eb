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
from . import distributed, experts, preflight
from .config import Config, config_from_saved, warn_ignored_by_predict
from .data import DataError, load_challenge
from .experts import fusion
from .inference import ViewPlan, classifier_forward, load_trained, open_images, prepare, run_images
from .pipeline import resolve_workers
from .runtime import Runtime, make_runtime, setup_logging
from .submission import write_submission

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
    preflight.check_main(cfg, "predict")  # seconds: every cheap check before any real work
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
    if rt.is_main:
        warn_ignored_by_predict(cfg, trained)  # model-changing flags: the trained values win
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
    state = None
    if fused:
        if not rt.is_main:  # the fusion runs in one process (the image-text model spreads
            return None     # over the GPUs itself); the other ranks have nothing to do
        fitted = experts.load_fitted(cfg, rt, ch, model_path.parent, trained, net)
        pred, _, pool = fitted.predict(cfg, rt, files, "test images", "test", choose=True)
        failed, lenient, state = dict(pool["failed"]), pool["lenient"], fitted.state
        for line in fusion.report_lines(state):
            log.info(line)
    else:  # the baseline's way: votes among the seen classes, no unseen class ever
        pred, failed, lenient = vote_only(cfg, rt, net, trained, files, saved["seen"])
        if pred is None:
            return None
    for i, err in failed.items():
        log.warning("test image %s could not be decoded (%s): predicted without it",
                    files[i].name, err)
    summary = {"undecodable": {files[i].name: e for i, e in failed.items()},
               # strict decoding failed, the lenient try worked: predicted from the partial
               # picture (truncated, over Pillow's pixel limit)
               "decoded_leniently": {files[i].name: e for i, e in lenient.items()},
               "fusion": fused, "vote": cfg.vote, "tta_votes": cfg.tta_votes}
    frame = write_outputs(out, cfg.name, pred, [f.name for f in files], saved["classes"],
                          saved["unseen"], summary, state, ch.sample_submission())
    if fused:  # the Special-Package scores of exactly this submission's rule
        summary["special_package"] = experts.score_special(cfg, rt, ch, fitted, cfg.name)
        ckpt.atomic_write_text(out / f"{cfg.name}.summary.json",
                               json.dumps(summary, indent=2, default=str) + "\n")
    return frame


def write_outputs(out: Path, name: str, pred: np.ndarray, ids: list[str], classes: list[str],
                  unseen: list[int], summary: dict, state: fusion.FusionState | None,
                  sample: Path | None = None) -> pd.DataFrame:
    """The submission `<name>.csv` (checked, with its `<name>.check.json`), the fusion as
    chosen for it (`<name>.fusion.json` / `.pt`) and `<name>.summary.json`; returns the
    frame. Every file of one prediction shares the stem, so figures stay beside the
    submission they describe. summary is updated in place."""
    frame = pd.DataFrame({"image_id": ids, "class": [classes[c] for c in pred]})
    path = write_submission(frame, [Path(i) for i in ids], classes, out / f"{name}.csv",
                            sample)
    if state is not None:
        fusion.save_fusion(state, out, f"{name}.fusion")
    n_unseen = int(np.isin(pred, unseen).sum())
    summary.update(test_images=len(ids), predicted_unseen=n_unseen,
                   predicted_unseen_share=round(n_unseen / max(len(ids), 1), 4),
                   submission=str(path))
    if state is not None and "candidates" in state.report.get("test_pool", {}):
        test = state.report["test_pool"]
        summary["estimate"] = {"accuracy": test["chosen"]["acc"],
                               "interval": test["chosen"]["interval"],
                               "unseen_share": test["unseen_share"]["estimate"],
                               "rule": test["chosen"]["name"]}
    ckpt.atomic_write_text(out / f"{name}.summary.json",
                           json.dumps(summary, indent=2, default=str) + "\n")
    estimate = summary.get("estimate")
    log.info("wrote %s: %d rows, %d predicted as unseen classes (%.1f%%)%s", path, len(frame),
             n_unseen, 100 * summary["predicted_unseen_share"],
             f"; estimated accuracy {estimate['accuracy']:.3f} (90% interval "
             f"{estimate['interval'][0]:.3f}-{estimate['interval'][1]:.3f}), estimated unseen "
             f"share {estimate['unseen_share']:.3f}" if estimate else "")
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
