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
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset

from .data import lenient_pillow, load_rgb, open_image
from .progress import bar as progress_bar
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
    lenient: Pillow's pixel limit is lifted (data.lenient_pillow). Raises
    data.UnsupportedImageFile for content Pillow cannot open (HEIC, a web page, ...)."""
    with lenient_pillow() if lenient else contextlib.nullcontext(), open_image(path) as img:
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
            results = list(progress_bar(pool.imap_unordered(_decode_into, jobs, chunksize=16),
                                        desc, total=len(jobs)))
    else:
        results = [_decode_into(j) for j in progress_bar(jobs, desc)]
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

    def item_bytes(self) -> int:
        """Bytes of one item's views (uint8): what a loader worker passes through shared
        memory per image."""
        n_views = 1 if self.mode == "train" else 1 + int(self.flip) + self.votes
        return n_views * 3 * self.size * self.size

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
    """Views items -> (uint8 views stacked, labels, indices, [(index, error)]).

    In a loader worker every tensor of the batch is put in shared memory here, so that when
    /dev/shm is full the error is raised here and reaches the main process. (A tensor left
    in ordinary memory, even a 128-byte label vector, is moved there later by the queue's
    feeder thread, which only prints such an error and drops the batch: the main process
    then waits for it forever. tests/test_shm.py reproduces both.) The views are stacked by
    torch's default_collate, which in a worker writes them straight into shared memory."""
    good = [it for it in items if it[0] is not None]
    failed = [(it[2], it[3]) for it in items if it[3] is not None]
    if not good:
        views = torch.empty(0, dtype=torch.uint8)
        labels, indices = torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
    else:
        views = torch.utils.data.default_collate([it[0] for it in good])
        labels = torch.tensor([it[1] for it in good])
        indices = torch.tensor([it[2] for it in good])
    if torch.utils.data.get_worker_info() is not None:  # no-op for views stacked there
        views, labels, indices = (t.share_memory_() for t in (views, labels, indices))
    return views, labels, indices, failed


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
    """The training loader: `workers` persistent processes (fewer when shared memory is
    short: worker_settings)."""
    settings = worker_settings(dataset, batch_sampler, workers)
    return DataLoader(dataset, batch_sampler=batch_sampler, collate_fn=collate, pin_memory=pin,
                      persistent_workers=settings["num_workers"] > 0, **settings)


def resolve_workers(requested: int) -> int:
    if requested >= 0:
        return requested
    return min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
               else os.cpu_count() or 1)


# -- shared memory: DataLoader workers hand every batch to the main process through POSIX
# shared memory, i.e. files in /dev/shm on Linux. Docker gives a container 64 MB there by
# default; a loader that needs more dies mid-epoch with "Bus error" or "unable to allocate
# shared memory" (pytorch issue 5040, Kaggle docker-python issue 377). torch's other sharing
# strategy, "file_system", allocates in the same /dev/shm (shm_open), so it does not help:
# fewer workers (or prefetched batches) is the fix that needs no new room.
SHM_DIR_ENV = "PIXELPLAY_SHM_DIR"  # another folder to check instead of /dev/shm (tests)
PREFETCH = 4  # batches each worker prepares ahead
SHM_MARGIN = 2.0  # room for the batch in use, allocation rounding and other users (NCCL)
_shm_warned: set[str] = set()


def shm_dir() -> Path | None:
    """The folder whose free space bounds the loaders: $PIXELPLAY_SHM_DIR, else /dev/shm on
    Linux; None elsewhere (macOS keeps POSIX shared memory outside the file system)."""
    override = os.environ.get(SHM_DIR_ENV)
    if override:
        return Path(override)
    return Path("/dev/shm") if sys.platform.startswith("linux") else None


def shm_free_bytes(folder: Path) -> int | None:
    """Free bytes in `folder` (a tmpfs: its size limit minus what is stored); None when the
    folder does not exist."""
    try:
        return shutil.disk_usage(folder).free
    except FileNotFoundError:
        return None


def plan_workers(workers: int, batch_bytes: int, free: int | None, where: Path
                 ) -> tuple[int, int | None, str]:
    """(workers, prefetch_factor, warning) for a loader whose batches are `batch_bytes` when
    `free` bytes of shared memory are left in `where` (None: the folder is missing).

    A loader holds up to workers x prefetch batches in shared memory; with SHM_MARGIN that is
    its need. When it does not fit, prefetch drops to 2, then workers drop to what fits
    (0: loading in the main process, which needs no shared memory). The warning ("" when
    nothing changes) names the free space, the need and the fixes."""
    if workers <= 0:
        return 0, None, ""
    if free is None:
        return 0, None, (
            f"{where} does not exist: DataLoader workers need POSIX shared memory there, so "
            f"images load in the main process (num_workers=0 instead of {workers}; slower). "
            "Fix: mount a tmpfs on /dev/shm (docker: --shm-size=2g or --ipc=host), or set "
            "num_workers=0 (--num-workers 0) to silence this.")
    per_batch = max(batch_bytes, 1) * SHM_MARGIN
    if workers * PREFETCH * per_batch <= free:
        return workers, PREFETCH, ""
    fit = int(free // (2 * per_batch))
    chosen, prefetch = (workers, 2) if fit >= workers else (fit, 2 if fit else None)
    mb = 1 / 2**20
    return chosen, prefetch, (
        f"only {free * mb:.1f} MB free in {where} (shared memory), but {workers} DataLoader "
        f"workers x {PREFETCH} batches of {batch_bytes * mb:.1f} MB need about "
        f"{workers * PREFETCH * per_batch * mb:.1f} MB: using {chosen} worker(s)"
        + (f" with {prefetch} batches each" if chosen else ", loading in the main process")
        + " so that training cannot die mid-epoch (slower). Fix: give the container more "
        "shared memory (docker run --shm-size=2g, or --ipc=host), or set fewer workers "
        "(--num-workers / -p num_workers) to silence this.")


def worker_settings(dataset: Views, batches, workers: int) -> dict:
    """DataLoader keyword arguments (num_workers, prefetch_factor, worker_init_fn) for
    `workers` processes loading `batches` (lists of items) of `dataset`, cut down to what the
    free shared memory holds (plan_workers; warned once per process and message)."""
    if workers <= 0:
        return {"num_workers": 0, "prefetch_factor": None, "worker_init_fn": None}
    where = shm_dir()
    if where is None:
        chosen, prefetch, warning = workers, PREFETCH, ""
    else:
        largest = max((len(b) for b in batches), default=0)
        chosen, prefetch, warning = plan_workers(workers, largest * dataset.item_bytes(),
                                                 shm_free_bytes(where), where)
    key = f"{where}:{workers}:{chosen}:{prefetch}"
    if warning and key not in _shm_warned:
        _shm_warned.add(key)
        log.warning("WARNING: %s", warning)
    return {"num_workers": chosen, "prefetch_factor": prefetch,
            "worker_init_fn": _own_process_group if chosen else None}


def _own_process_group(worker_id: int) -> None:
    """In each loader worker: leave the trainer's process group. A terminal's Ctrl-C
    (SIGINT) and Jupyter's shutdown (jupyter_client's killpg), `kill -- -PGID` or a job
    runner (SIGTERM) signal every process of the group; a worker dying of it would end the
    epoch that training means to finish with a checkpoint (train.StopFlag) with "DataLoader
    worker ... killed by signal" instead. Out of the group a worker hears only its own
    process: the DataLoader stops it when done, multiprocessing's terminate() at exit, and
    torch's watchdog ends it within 5 s of a trainer killed outright. (Ignoring the first
    SIGTERM instead, as the previous release did, swallowed that terminate(): a process
    exiting with a live worker, after an error say, waited for it forever.)"""
    os.setpgid(0, 0)


def worker_out_of_shm(error: BaseException) -> bool:
    """Whether a DataLoader error is a worker that ran out of shared memory ("unable to
    allocate shared memory", "killed by signal: Bus error ... out of shared memory")."""
    text = str(error)
    return isinstance(error, RuntimeError) and ("shared memory" in text or "Bus error" in text)
