"""The input pipeline: decoded-image cache, views, batches in a resumable order.

The baseline decoded every full-size JPEG every epoch on the main process, and the GPU
waited. Here each image is decoded once (JPEG draft mode: DCT-scaled, a fraction of the
work), resized to a short side a little above `image_size` and stored in one flat uint8
memmap file. Epochs then only crop, flip and rotate small arrays in worker processes.
The cache is keyed by the file list, sizes, mtimes and the stored size: any change rebuilds.
Decoding once also finds the unreadable files before training starts.
"""

from __future__ import annotations

import contextlib
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

from .data import lenient_pillow, load_rgb
from .transforms import augment, center_view, sample_params, sample_rng

log = logging.getLogger("pixelplay")

CACHE_FORMAT = 1
MAX_ASPECT = 4 / 3  # longer sides are centre-cropped to 4:3 (few photos are wider)


class UnreadableImage(OSError):
    """An image that failed to decode when the cache was built (the message says why)."""


class FileImages:
    """Decodes from disk on every access (cache off; the baseline's way).

    lenient: a file that fails strict decoding gets a lenient second try (data.load_rgb),
    logged as a warning; `self.lenient` records it only in the process that decoded it
    (DataLoader workers' records are lost: use the cache to have them listed).
    """

    def __init__(self, paths: Sequence[Path], lenient: bool = False):
        self.paths = list(paths)
        self.errors: dict[int, str] = {}  # none known up front: get() raises per call
        self.lenient_allowed = lenient
        self.lenient: dict[int, str] = {}  # index -> the strict error it got past

    def __len__(self) -> int:
        return len(self.paths)

    def get(self, i: int) -> np.ndarray:
        try:
            return np.array(load_rgb(self.paths[i]))
        except Exception as e:
            if not self.lenient_allowed:
                raise
            img = np.array(load_rgb(self.paths[i], lenient=True))
            self.lenient[i] = f"{type(e).__name__}: {e}"
            log.warning("%s decoded leniently (%s)", self.paths[i], self.lenient[i])
            return img


class DecodedCache:
    """Images stored once as uint8 HxWx3 arrays in one memmap file (opened lazily per
    process, so DataLoader workers share the page cache instead of copies)."""

    def __init__(self, folder: Path):
        self.folder = folder
        meta = json.loads((folder / "meta.json").read_text())
        index = np.load(folder / "index.npz")
        self.offsets, self.heights, self.widths = index["offsets"], index["h"], index["w"]
        self.errors = {int(k): v for k, v in meta["errors"].items()}
        # decoded by the lenient second try: index -> the strict error it got past
        self.lenient = {int(k): v for k, v in meta.get("lenient", {}).items()}
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


def cache_key(paths: Sequence[Path], side: int, lenient: bool = False) -> str:
    """Hex key of the file list (names, sizes, mtimes), the stored side and the decode mode.
    Names are hashed as their on-disk bytes (os.fsencode): names that are not valid UTF-8
    (surrogate-escaped str) hash like any other."""
    digest = hashlib.sha1(f"{CACHE_FORMAT}:{side}:{MAX_ASPECT}".encode()
                          + (b":lenient" if lenient else b""))
    for p in paths:
        st = p.stat() if p.exists() else None
        digest.update(os.fsencode(p)
                      + f"|{st.st_size if st else -1}|{st.st_mtime_ns if st else -1}\n".encode())
    return digest.hexdigest()[:20]


def stored_size(width: int, height: int, side: int) -> tuple[int, int]:
    """(w, h) once the short side is `side` and the long side at most side x MAX_ASPECT."""
    scale = side / min(width, height)
    long_max = int(round(side * MAX_ASPECT))
    w, h = round(width * scale), round(height * scale)
    return (min(w, long_max), side) if w >= h else (side, min(h, long_max))


def header_size(path: Path, lenient: bool = False) -> tuple[int, int]:
    """Upright (w, h) from the header alone (EXIF orientations 5-8 swap the sides).
    lenient: Pillow's pixel limit is lifted (data.lenient_pillow)."""
    with lenient_pillow() if lenient else contextlib.nullcontext(), Image.open(path) as img:
        w, h = img.size
        if img.getexif().get(0x0112, 1) in (5, 6, 7, 8):
            w, h = h, w
    return w, h


_worker_pixels: dict[str, np.memmap] = {}


def _decode_into(args: tuple[int, str, str, int, int, int, int, bool, str | None]
                 ) -> tuple[int, str | None, str | None]:
    """Decode one image into the memmap -> (index, error or None, lenient note or None).
    lenient: a strict failure gets a lenient second try; `note` given: the strict header
    read already failed (that error), so decode leniently straight away."""
    i, path, pixels_path, offset, w, h, side, lenient, note = args
    try:
        try:
            img = load_rgb(path, min_side=side, lenient=note is not None)
        except Exception as e:
            if note is not None or not lenient:
                raise
            note = f"{type(e).__name__}: {e}"
            img = load_rgb(path, min_side=side, lenient=True)
        img = ImageOps.fit(img, (w, h), method=Image.BILINEAR)
        if pixels_path not in _worker_pixels:
            _worker_pixels[pixels_path] = np.memmap(pixels_path, dtype=np.uint8, mode="r+")
        _worker_pixels[pixels_path][offset:offset + w * h * 3] = np.asarray(img).reshape(-1)
        return i, None, note
    except Exception as e:  # any decoder error: report and skip this file
        return i, f"{type(e).__name__}: {e}", None


def build_cache(paths: Sequence[Path], side: int, cache_root: Path, workers: int,
                desc: str = "decoding images", lenient: bool = False) -> DecodedCache:
    """Decode every image once into cache_root/<key>/ (reused while the sources are unchanged).

    Built in a temporary folder and renamed into place: an interrupted build leaves no
    half-written cache behind. Files that fail are in `.errors` (index -> reason).
    lenient (test images): a file failing strict decoding (truncated, over Pillow's pixel
    limit) gets a lenient second try; those that pass are listed in `.lenient` and logged.
    Training keeps the default (strict): a half-decoded picture is no training example.
    """
    from tqdm.auto import tqdm

    paths = [Path(p) for p in paths]
    folder = cache_root / f"{side}px-{cache_key(paths, side, lenient)}"
    if (folder / "meta.json").is_file():
        return DecodedCache(folder)
    cache_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=cache_root))
    errors: dict[int, str] = {}
    header_errors: dict[int, str] = {}  # strict header failures a lenient read got past
    sizes = np.zeros((len(paths), 2), dtype=np.int64)
    for i, p in enumerate(paths):
        try:
            sizes[i] = stored_size(*header_size(p), side)
        except Exception as e:
            errors[i] = f"{type(e).__name__}: {e}"
            if lenient:  # when this fails too, the strict error above is the one reported
                with contextlib.suppress(Exception):
                    sizes[i] = stored_size(*header_size(p, lenient=True), side)
                    header_errors[i] = errors.pop(i)
    nbytes = sizes[:, 0] * sizes[:, 1] * 3
    offsets = np.concatenate([[0], np.cumsum(nbytes)[:-1]]).astype(np.int64)
    pixels_path = tmp / "pixels.u8"
    with open(pixels_path, "wb") as f:
        f.truncate(max(int(nbytes.sum()), 1))
    jobs = [(i, str(p), str(pixels_path), int(offsets[i]), int(sizes[i, 0]), int(sizes[i, 1]),
             side, lenient, header_errors.get(i)) for i, p in enumerate(paths) if i not in errors]
    if workers > 1 and len(jobs) > 64:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            results = list(tqdm(pool.imap_unordered(_decode_into, jobs, chunksize=16),
                                total=len(jobs), desc=desc, leave=False))
    else:
        results = [_decode_into(j) for j in tqdm(jobs, desc=desc, leave=False)]
    _worker_pixels.pop(str(pixels_path), None)
    errors.update({i: err for i, err, _ in results if err})
    decoded_leniently = {i: note for i, err, note in results if note and not err}
    for i, note in sorted(decoded_leniently.items()):
        log.warning("%s failed strict decoding (%s): decoded leniently", paths[i], note)
    np.savez(tmp / "index.npz", offsets=offsets, h=sizes[:, 1], w=sizes[:, 0])
    # json.dumps escapes surrogate-escaped names (not valid UTF-8) as \udcXX: they load back
    # as the same str, i.e. the same bytes on disk.
    meta = {"format": CACHE_FORMAT, "side": side, "paths": [str(p) for p in paths],
            "errors": {str(i): e for i, e in sorted(errors.items())},
            "lenient": {str(i): e for i, e in sorted(decoded_leniently.items())}}
    (tmp / "meta.json").write_text(json.dumps(meta))
    try:
        os.replace(tmp, folder)
    except OSError:  # another process built it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    return DecodedCache(folder)


class Views(Dataset):
    """Item (index, epoch) -> (uint8 views, label, index, error).

    mode "train": one augmented view (3 x size x size) seeded by (seed, epoch, index).
    mode "test": a stack of views (n_views x 3 x size x size): the central square, its
    mirror when `flip`, then `votes` augmented views (the test-time votes, epoch -1).
    An unreadable image gives views=None (left out) or, with keep_failed, black views so
    that a test image still gets its row. fast_augment: the uint8 resize + one-gather
    flip/rotate of transforms.augment (False: the torchvision tensor ops).
    """

    def __init__(self, images: FileImages | DecodedCache, labels: Sequence[int], size: int,
                 mode: str, seed: int, scale_min: float = 0.7, rotation: float = 30.0,
                 votes: int = 0, flip: bool = False, keep_failed: bool = False,
                 fast_augment: bool = True):
        self.images, self.labels, self.size, self.mode = images, list(labels), size, mode
        self.seed, self.scale_min, self.rotation = seed, scale_min, rotation
        self.votes, self.flip, self.keep_failed, self.fast = votes, flip, keep_failed, fast_augment

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
            return self._augmented(img, i, epoch, 0), self.labels[i], i, error
        center = center_view(img, self.size, self.fast)
        views = [center] + ([center.flip(-1)] if self.flip else [])
        views += [self._augmented(img, i, -1, v) for v in range(self.votes)]
        return torch.stack(views), self.labels[i], i, error

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
