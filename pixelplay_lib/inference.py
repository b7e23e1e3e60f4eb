"""One way to run a model over images: decoded images -> views -> batches -> forward -> numpy.

Every job that runs a network over images goes through `run_images`: test-time voting
(predict), the features and logits the zero-shot / fusion experts are fitted on, the
validation report, image-text embeddings and the benchmark. A caller says which views it
wants (`ViewPlan`: the central view, its mirror, augmented votes), what the network returns
(`forward`, a dict of tensors) and which views of each output it keeps (`keep`): predict
keeps the logits of every vote but the features of the central view only, so nothing
bigger than needed is gathered or pickled across processes.

Under torchrun (several processes), `run_images(..., shard=True)` gives each process a
strided share of the images and gathers the results, in the caller's order, on every rank.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from . import checkpoint as ckpt
from . import distributed
from .config import Config, config_from_saved
from .model import Net, build_model
from .pipeline import (
    DecodedCache,
    FileImages,
    Views,
    build_cache,
    collate,
    resolve_workers,
    worker_settings,
)
from .runtime import Runtime
from .transforms import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger("pixelplay")

Forward = Callable[[torch.Tensor], dict[str, torch.Tensor]]
CACHE_SCALE = 1.15  # cached short side = view size x 1.15: random crops keep their resolution


@dataclass(frozen=True)
class ViewPlan:
    """The views of each image, in this order: central square, its mirror (flip), votes.

    size: view side in px; mean / std: the network's input normalisation (0..1 scale);
    votes are the training augmentation (crop scale_min..1, flip, rotation in degrees),
    seeded per (seed, image, vote) so they do not depend on batching or workers.
    """

    size: int
    votes: int = 0
    flip: bool = False
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    seed: int = 0
    scale_min: float = 0.7
    rotation: float = 30.0
    fast_augment: bool = True

    @property
    def n_views(self) -> int:
        return 1 + int(self.flip) + self.votes


def cache_root(cfg: Config) -> Path:
    """Where decoded images are cached: cfg.cache_dir, else output_dir/cache; on Kaggle a
    temporary folder, so the cache never lands in the kernel's (downloaded) output."""
    if cfg.cache_dir:
        return Path(cfg.cache_dir)
    if os.environ.get("KAGGLE_KERNEL_RUN_TYPE"):
        return Path(tempfile.gettempdir()) / "pixelplay-cache"
    return Path(cfg.output_dir) / "cache"


def open_images(paths: Sequence[Path], size: int, cfg: Config, desc: str,
                lenient: bool = False) -> FileImages | DecodedCache:
    """The images behind views of `size` px: the decoded uint8 cache (cfg.cache, built once
    and reused while the files are unchanged) or plain files decoded on every access.
    lenient: a file failing strict decoding gets a second, lenient try (test images:
    a partial picture predicts better than a blank one); recorded in `.lenient`."""
    if not cfg.cache:
        return FileImages(paths, lenient)
    side = int(round(size * CACHE_SCALE))
    return build_cache(paths, side, cache_root(cfg), resolve_workers(cfg.num_workers), desc,
                       lenient)


def load_trained(path: Path) -> tuple[Net | None, dict[str, Any]]:
    """A run saved by train (model.pt / model_best.pt): the fine-tuned network (None when
    the run trained none: image-text experts only) and the saved dict (config, classes,
    seen, unseen, history). Self-contained: no weights download.

    Raises FileNotFoundError (with what to do) when there is no such file."""
    if not path.is_file():
        newest = ckpt.list_checkpoints(path.parent)
        if newest:
            raise FileNotFoundError(
                f"no trained model at {path}: training in {path.parent} stopped before its "
                f"end (newest checkpoint {newest[0].name}); run the same train command again "
                "to finish it (it resumes), then predict")
        raise FileNotFoundError(f"no trained model at {path} (train first, or pass model_path)")
    saved = ckpt.load_file(path)
    if saved.get("state_dict") is None:
        return None, saved
    trained = config_from_saved(saved["config"])
    net = build_model(trained.arch, len(saved["classes"]), "none", trained.trainable,
                      n_attributes=saved.get("n_attributes", 0))
    net.load_state_dict(saved["state_dict"])
    return net, saved


def prepare(net: torch.nn.Module, rt: Runtime) -> torch.nn.Module:
    """The network on the runtime's device, in eval mode, channels-last where it pays."""
    net.to(rt.device).eval()
    if rt.channels_last:
        net.to(memory_format=torch.channels_last)
    return net


def classifier_forward(net: Net) -> Forward:
    """Forward of a trained Net: class logits and pooled features."""

    def forward(x: torch.Tensor) -> dict[str, torch.Tensor]:
        logits, features = net.forward_both(x)
        return {"logits": logits, "features": features}

    return forward


def _batches(positions: Sequence[int], indices: Sequence[int], batch: int
             ) -> list[list[tuple[int, int]]]:
    # Views items are (image index, epoch); epoch -1 marks test-time views.
    chosen = [int(indices[p]) for p in positions]
    return [[(i, -1) for i in chosen[k:k + batch]] for k in range(0, len(chosen), batch)]


def run_images(forward: Forward, images: FileImages | DecodedCache, indices: Sequence[int],
               plan: ViewPlan, rt: Runtime, *, batch_images: int, workers: int,
               keep: dict[str, str], labels: Sequence[int] | None = None,
               keep_failed: bool = False, shard: bool = False) -> dict[str, Any]:
    """Run `forward` over the views of images[indices]; all views of a batch in one pass.

    forward: float batch (batch_images x n_views, 3, size, size), normalised with plan.mean
      / plan.std, on rt.device -> dict of tensors whose first dimension is that batch.
    keep: output name -> "all" (kept as n x n_views x ...), "first" (the central view only,
      n x ...) or "mean" (mean over the views, n x ...); outputs not named are dropped.
    labels: per image of `images` (default zeros). keep_failed: an undecodable image gets
      black views (so a test image still gets its row); otherwise it is left out.
    shard: under torchrun, each process runs every world-th image and the parts are gathered.
    Returns {name: float32 array, "index": image indices (in the order of `indices`, failed
      ones left out unless keep_failed), "labels", "failed": [(index, error), ...]}.
    """
    labels = [0] * len(images) if labels is None else list(labels)
    views = Views(images, labels, plan.size, "test", plan.seed, plan.scale_min, plan.rotation,
                  votes=plan.votes, flip=plan.flip, keep_failed=keep_failed,
                  fast_augment=plan.fast_augment)
    positions = range(len(indices))
    if shard and rt.world > 1:
        positions = range(rt.rank, len(indices), rt.world)
    batches = _batches(positions, indices, batch_images)
    loader = DataLoader(views, batch_sampler=batches, collate_fn=collate,
                        pin_memory=rt.device.type == "cuda",
                        **worker_settings(views, batches, workers))  # fewer when /dev/shm is short
    mean = torch.tensor(plan.mean, device=rt.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(plan.std, device=rt.device).view(1, 3, 1, 1) * 255
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in keep}
    index, kept_labels, failed = [], [], []
    with torch.inference_mode():
        for x, y, idx, bad in loader:
            failed += bad
            if not len(x):
                continue
            n, v = x.shape[0], x.shape[1]
            out = forward(rt.to_device(x.flatten(0, 1), mean, std))
            for name, how in keep.items():
                t = out[name].float().reshape(n, v, *out[name].shape[1:])
                t = {"all": t, "first": t[:, 0], "mean": t.mean(1)}[how]
                parts[name].append(t.cpu())
            index.append(idx)
            kept_labels.append(y)
    result = {name: torch.cat(ts).numpy() if ts else np.zeros((0,), np.float32)
              for name, ts in parts.items()}
    result.update(index=torch.cat(index).numpy() if index else np.zeros(0, np.int64),
                  labels=torch.cat(kept_labels).numpy() if kept_labels
                  else np.zeros(0, np.int64), failed=failed)
    if shard and rt.world > 1:
        result = _merge(distributed.gather_objects(result), indices)
    return result


def _merge(parts: list[dict[str, Any]], indices: Sequence[int]) -> dict[str, Any]:
    """Shards gathered from every process -> one result in the order of `indices`."""
    where = {int(i): p for p, i in enumerate(indices)}
    index = np.concatenate([p["index"] for p in parts])
    order = np.argsort([where[int(i)] for i in index], kind="stable")
    merged = {name: np.concatenate([p[name] for p in parts])[order]
              for name in parts[0] if name not in ("index", "failed")}
    merged.update(index=index[order], failed=[f for p in parts for f in p["failed"]])
    return merged
