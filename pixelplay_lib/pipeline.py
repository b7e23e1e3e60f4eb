"""The input pipeline: decoded-image cache, views, batches in a resumable order.

The baseline decoded every full-size JPEG every epoch on the main process, and the GPU
waited. Here each image is decoded once (JPEG draft mode: DCT-scaled, a fraction of the
work), resized to a short side a little above `image_size` and stored in one flat uint8
memmap file. Epochs then only crop, flip and rotate small arrays in worker processes.
The cache is keyed by the file list, sizes, mtimes and the stored size: any change rebuilds.
Decoding once also finds the unreadable files before training starts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset

from .data import load_rgb
from .transforms import augment, center_view, sample_params, sample_rng

log = logging.getLogger("pixelplay")

CACHE_FORMAT = 1
CACHE_SCALE = 1.15  # stored short side = image_size x 1.15: crops keep their resolution
MAX_ASPECT = 4 / 3  # longer sides are centre-cropped to 4:3 (few photos are wider)


class UnreadableImage(OSError):
    """An image that failed to decode when the cache was built (the message says why)."""


class FileImages:
    """Decodes from disk on every access (cache off; the baseline's way)."""

    def __init__(self, paths: Sequence[Path], min_side: int | None = None):
        self.paths = list(paths)
        self.min_side = min_side
        self.errors: dict[int, str] = {}  # none known up front: get() raises per call

    def __len__(self) -> int:
        return len(self.paths)

    def get(self, i: int) -> np.ndarray:
        return np.asarray(load_rgb(self.paths[i], self.min_side))


class DecodedCache:
    """Images stored once as uint8 HxWx3 arrays in one memmap file (opened lazily per
    process, so DataLoader workers share the page cache instead of copies)."""

    def __init__(self, folder: Path):
        self.folder = folder
        meta = json.loads((folder / "meta.json").read_text())
        index = np.load(folder / "index.npz")
        self.offsets, self.heights, self.widths = index["offsets"], index["h"], index["w"]
        self.errors = {int(k): v for k, v in meta["errors"].items()}
        self.paths = [Path(p) for p in meta["paths"]]
        self._pixels: np.memmap | None = None

    def __len__(self) -> int:
        return len(self.offsets)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pixels": None}

    def get(self, i: int) -> np.ndarray:
        if i in self.errors:
            raise UnreadableImage(self.errors[i])
        if self._pixels is None:
            self._pixels = np.memmap(self.folder / "pixels.u8", dtype=np.uint8, mode="c")
        h, w, o = int(self.heights[i]), int(self.widths[i]), int(self.offsets[i])
        return self._pixels[o:o + h * w * 3].reshape(h, w, 3)


def cache_key(paths: Sequence[Path], side: int) -> str:
    digest = hashlib.sha1(f"{CACHE_FORMAT}:{side}:{MAX_ASPECT}".encode())
    for p in paths:
        st = p.stat() if p.exists() else None
        digest.update(f"{p}|{st.st_size if st else -1}|{st.st_mtime_ns if st else -1}\n".encode())
    return digest.hexdigest()[:20]


def stored_size(width: int, height: int, side: int) -> tuple[int, int]:
    """(w, h) once the short side is `side` and the long side at most side x MAX_ASPECT."""
    scale = side / min(width, height)
    long_max = int(round(side * MAX_ASPECT))
    w, h = round(width * scale), round(height * scale)
    return (min(w, long_max), side) if w >= h else (side, min(h, long_max))


def header_size(path: Path) -> tuple[int, int]:
    """Upright (w, h) from the header alone (EXIF orientations 5-8 swap the sides)."""
    with Image.open(path) as img:
        w, h = img.size
        if img.getexif().get(0x0112, 1) in (5, 6, 7, 8):
            w, h = h, w
    return w, h


_worker_pixels: dict[str, np.memmap] = {}


def _decode_into(args: tuple[int, str, str, int, int, int, int]) -> tuple[int, str | None]:
    i, path, pixels_path, offset, w, h, side = args
    try:
        img = load_rgb(path, min_side=side)
        img = ImageOps.fit(img, (w, h), method=Image.BILINEAR)
        if pixels_path not in _worker_pixels:
            _worker_pixels[pixels_path] = np.memmap(pixels_path, dtype=np.uint8, mode="r+")
        _worker_pixels[pixels_path][offset:offset + w * h * 3] = np.asarray(img).reshape(-1)
        return i, None
    except Exception as e:  # any decoder error: report and skip this file
        return i, f"{type(e).__name__}: {e}"


def build_cache(paths: Sequence[Path], side: int, cache_root: Path, workers: int,
                desc: str = "decoding images") -> DecodedCache:
    """Decode every image once into cache_root/<key>/ (reused while the sources are unchanged).

    Built in a temporary folder and renamed into place: an interrupted build leaves no
    half-written cache behind.
    """
    from tqdm.auto import tqdm

    paths = [Path(p) for p in paths]
    folder = cache_root / f"{side}px-{cache_key(paths, side)}"
    if (folder / "meta.json").is_file():
        return DecodedCache(folder)
    cache_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=cache_root))
    errors: dict[int, str] = {}
    sizes = np.zeros((len(paths), 2), dtype=np.int64)
    for i, p in enumerate(paths):
        try:
            sizes[i] = stored_size(*header_size(p), side)
        except Exception as e:
            errors[i] = f"{type(e).__name__}: {e}"
    nbytes = sizes[:, 0] * sizes[:, 1] * 3
    offsets = np.concatenate([[0], np.cumsum(nbytes)[:-1]]).astype(np.int64)
    pixels_path = tmp / "pixels.u8"
    with open(pixels_path, "wb") as f:
        f.truncate(max(int(nbytes.sum()), 1))
    jobs = [(i, str(p), str(pixels_path), int(offsets[i]), int(sizes[i, 0]), int(sizes[i, 1]),
             side) for i, p in enumerate(paths) if i not in errors]
    if workers > 1 and len(jobs) > 64:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            results = list(tqdm(pool.imap_unordered(_decode_into, jobs, chunksize=16),
                                total=len(jobs), desc=desc, leave=False))
    else:
        results = [_decode_into(j) for j in tqdm(jobs, desc=desc, leave=False)]
    _worker_pixels.pop(str(pixels_path), None)
    errors.update({i: err for i, err in results if err})
    np.savez(tmp / "index.npz", offsets=offsets, h=sizes[:, 1], w=sizes[:, 0])
    meta = {"format": CACHE_FORMAT, "side": side, "paths": [str(p) for p in paths],
            "errors": {str(i): e for i, e in sorted(errors.items())}}
    (tmp / "meta.json").write_text(json.dumps(meta))
    try:
        os.replace(tmp, folder)
    except OSError:  # another process built it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    return DecodedCache(folder)


def open_images(paths: Sequence[Path], image_size: int, use_cache: bool, cache_root: Path,
                workers: int, desc: str) -> FileImages | DecodedCache:
    if use_cache:
        return build_cache(paths, int(round(image_size * CACHE_SCALE)), cache_root, workers,
                           desc)
    return FileImages(paths)


class Views(Dataset):
    """Item (index, epoch) -> (uint8 views, label, index, error).

    mode "train": one augmented view seeded by (seed, epoch, index).
    mode "eval": the central view.
    mode "votes": the central view followed by `votes` augmented views (the test-time votes).
    An unreadable image gives views=None (training skips it) or, with keep_failed, black
    views so that a test image still gets its row. fast_augment: the uint8 resize + one-gather
    flip/rotate of transforms.augment (False: the torchvision tensor ops).
    """

    def __init__(self, images: FileImages | DecodedCache, labels: Sequence[int], size: int,
                 mode: str, seed: int, scale_min: float = 0.7, rotation: float = 30.0,
                 votes: int = 0, keep_failed: bool = False, fast_augment: bool = True):
        self.images, self.labels, self.size, self.mode = images, list(labels), size, mode
        self.seed, self.scale_min, self.rotation = seed, scale_min, rotation
        self.votes, self.keep_failed, self.fast = votes, keep_failed, fast_augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: tuple[int, int]):
        i, epoch = key
        try:
            img = torch.from_numpy(np.ascontiguousarray(self.images.get(i))).permute(2, 0, 1)
            error = None
        except Exception as e:
            error = str(e) if isinstance(e, UnreadableImage) else f"{type(e).__name__}: {e}"
            if not self.keep_failed:
                return None, self.labels[i], i, error
            img = torch.zeros(3, self.size, self.size, dtype=torch.uint8)
        if self.mode == "train":
            views = self._augmented(img, i, epoch, 0)
        elif self.mode == "eval":
            views = center_view(img, self.size, self.fast)
        else:
            views = torch.stack([center_view(img, self.size, self.fast)]
                                + [self._augmented(img, i, -1, v) for v in range(self.votes)])
        return views, self.labels[i], i, error

    def _augmented(self, img: torch.Tensor, i: int, epoch: int, vote: int) -> torch.Tensor:
        rng = sample_rng(self.seed, epoch, i, vote)
        p = sample_params(rng, img.shape[1], img.shape[2], self.scale_min, self.rotation)
        return augment(img, p, self.size, self.fast)


def collate(items: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list]:
    good = [it for it in items if it[0] is not None]
    failed = [(it[2], it[3]) for it in items if it[3] is not None]
    if not good:
        return torch.empty(0, dtype=torch.uint8), torch.empty(0, dtype=torch.long), \
            torch.empty(0, dtype=torch.long), failed
    return (torch.stack([it[0] for it in good]), torch.tensor([it[1] for it in good]),
            torch.tensor([it[2] for it in good]), failed)


def epoch_order(n: int, epoch: int, seed: int) -> np.ndarray:
    """The shuffled sample order of one epoch: a pure function of (n, epoch, seed)."""
    return np.random.default_rng([seed & 0xFFFFFFFF, 1_000_003, epoch]).permutation(n)


class EpochBatches(torch.utils.data.Sampler):
    """Batches of (index, epoch) for one epoch, starting at batch `start`.

    The order is a pure function of (seed, epoch), so resuming at (epoch, start) replays
    exactly the batches an uninterrupted run would have seen. With world > 1, each global
    batch is cut into near-equal consecutive slices, one per rank: the union of the ranks'
    batches is the single-process batch. (A last batch smaller than world, which would leave
    a rank empty, is dropped in that case only.)
    """

    def __init__(self, indices: Sequence[int], global_batch: int, seed: int, rank: int = 0,
                 world: int = 1):
        self.indices = np.asarray(indices)
        self.global_batch, self.seed, self.rank, self.world = global_batch, seed, rank, world
        self.epoch, self.start = 0, 0

    def batches_per_epoch(self) -> int:
        return -(-len(self.indices) // self.global_batch)

    def __len__(self) -> int:
        return self.batches_per_epoch() - self.start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = self.indices[epoch_order(len(self.indices), self.epoch, self.seed)]
        for b in range(self.start, self.batches_per_epoch()):
            batch = order[b * self.global_batch:(b + 1) * self.global_batch]
            if len(batch) < self.world:  # a rank would get nothing: DDP needs every rank
                break
            mine = np.array_split(batch, self.world)[self.rank]  # consecutive, near-equal
            yield [(int(i), self.epoch) for i in mine]


def make_loader(dataset: Views, batch_sampler, workers: int, pin: bool) -> DataLoader:
    return DataLoader(dataset, batch_sampler=batch_sampler, num_workers=workers,
                      collate_fn=collate, pin_memory=pin, persistent_workers=workers > 0,
                      prefetch_factor=4 if workers > 0 else None)


def resolve_workers(requested: int) -> int:
    if requested >= 0:
        return requested
    return min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
               else os.cpu_count() or 1)
