"""Find the challenge on disk, read its classes, samples and attributes, split, load images.

Facts this module relies on (README, "The data"): the challenge root holds `classes.txt`
(50 AwA2 names, possibly numbered and with stray spaces), `train/<class>/*.jpg` for the
seen classes and a flat `test/`. Kaggle has mounted competitions at different depths over
the years, so the root is found by searching, never by one hard-coded path.
"""

from __future__ import annotations

import logging
import os
import random
from collections import defaultdict
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

log = logging.getLogger("pixelplay")

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
SEARCH_DEPTH = 6
# Truncated JPEGs must fail loudly (and be skipped), not decode as half-grey pictures.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class DataError(RuntimeError):
    """The data is not where or what it should be; the message names the path."""


@dataclass
class Challenge:
    root: Path
    classes: list[str]  # index = position in classes.txt
    train_samples: list[tuple[Path, int]]  # (image, class index), seen classes only
    seen: list[int] = field(default_factory=list)  # class indices with a train folder
    unseen: list[int] = field(default_factory=list)  # listed in classes.txt, no folder

    @property
    def test_dir(self) -> Path:
        return self.root / "test"

    def test_files(self) -> list[Path]:
        """The test images, sorted by name. Stops with a clear message if test/ is missing."""
        if not self.test_dir.is_dir():
            raise DataError(f"no test folder: {self.test_dir} does not exist")
        folder = self.test_dir
        files = sorted(p for p in folder.iterdir() if is_image_file(p))
        subdirs = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
        if not files and len(subdirs) == 1:  # some re-uploads nest it: test/test/*.jpg
            folder = subdirs[0]
            files = sorted(p for p in folder.iterdir() if is_image_file(p))
        if not files:
            raise DataError(f"the test folder {folder} holds no image files")
        return files

    def sample_submission(self) -> Path | None:
        """A sample_submission.csv shipped beside the data (its header and order win)."""
        for folder in (self.root, self.root.parent, self.root.parent.parent):
            candidate = folder / "sample_submission.csv"
            if candidate.is_file():
                return candidate
        return None


def is_image_file(path: Path) -> bool:
    """By name only: hidden files, Thumbs.db and other non-images are ignored."""
    return (path.is_file() and not path.name.startswith(".")
            and path.suffix.lower() in IMAGE_SUFFIXES)


def find_challenge_root(data_root: str | Path = "", input_root: str | Path = "/kaggle/input"
                        ) -> Path:
    """The folder below `data_root` (or `input_root`) holding classes.txt and train/."""
    start = Path(data_root or input_root)
    if not start.is_dir():
        hint = "" if data_root else " (not on Kaggle? pass --data-root)"
        raise DataError(f"data folder {start} does not exist{hint}")
    found = []
    base_depth = len(start.parts)
    for folder, subdirs, files in os.walk(start, followlinks=True):
        here = Path(folder)
        if "classes.txt" in files and (here / "train").is_dir():
            found.append(here)
            subdirs[:] = []  # no need to look inside a challenge root
        elif len(here.parts) - base_depth >= SEARCH_DEPTH:
            subdirs[:] = []
        else:
            # Don't descend into image folders: they can hold thousands of files.
            subdirs[:] = sorted(d for d in subdirs if d not in ("train", "test"))
    if not found:
        raise DataError(f"no challenge found under {start}: looked for a folder holding "
                        f"classes.txt and train/ (up to {SEARCH_DEPTH} levels deep)")
    if len(found) > 1:
        listing = "\n  ".join(str(p) for p in found)
        raise DataError(f"several challenge folders under {start}; pass one as data_root:\n"
                        f"  {listing}")
    return found[0]


def read_classes(path: Path) -> list[str]:
    """classes.txt: one name a line, optionally numbered (`     1\\tantelope`)."""
    if not path.is_file():
        raise DataError(f"missing class list: {path}")
    names = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split()
        if not parts:
            continue
        if len(parts) >= 2 and parts[0].isdigit():
            parts = parts[1:]
        names.append(" ".join(parts))
    if not names:
        raise DataError(f"class list {path} is empty")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DataError(f"class list {path} repeats: {', '.join(duplicates)}")
    return names


def load_challenge(data_root: str | Path = "", input_root: str | Path = "/kaggle/input"
                   ) -> Challenge:
    root = find_challenge_root(data_root, input_root)
    classes = read_classes(root / "classes.txt")
    index = {canonical(name): i for i, name in enumerate(classes)}
    train_dir = root / "train"
    folders = sorted(p for p in train_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    strangers = [p for p in folders if canonical(p.name) not in index]
    if strangers:
        raise DataError(f"train folder {strangers[0]} is not a class listed in "
                        f"{root / 'classes.txt'}" + (f" (and {len(strangers) - 1} more)"
                                                     if len(strangers) > 1 else ""))
    samples = []
    seen = set()
    for folder in folders:
        label = index[canonical(folder.name)]
        images = sorted(p for p in folder.iterdir() if is_image_file(p))
        if images:
            seen.add(label)
        samples += [(p, label) for p in images]
    if not samples:
        raise DataError(f"no training images under {train_dir}")
    seen_list = sorted(seen)
    unseen = [i for i in range(len(classes)) if i not in seen]
    return Challenge(root, classes, samples, seen_list, unseen)


def canonical(name: str) -> str:
    """Folder and class names match whatever their case and word separator
    (`Blue Whale`, `blue_whale` and `blue+whale` are one class)."""
    return "+".join(name.strip().lower().replace("_", " ").replace("+", " ").split())


def split_train_val(samples: list[tuple[Path, int]], val_fraction: float, seed: int
                    ) -> tuple[list[int], list[int]]:
    """Stratified, seeded split into train / validation indices of `samples`.

    Each class keeps round(n * val_fraction) images for validation (at least one when it has
    two or more), so no class is missing from either side and the two never overlap.
    """
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, (_, label) in enumerate(samples):
        by_class[label].append(i)
    rng = random.Random(seed)
    train, val = [], []
    for label in sorted(by_class):
        idx = sorted(by_class[label], key=lambda i: str(samples[i][0]))
        rng.shuffle(idx)
        n_val = round(len(idx) * val_fraction)
        if val_fraction > 0 and len(idx) >= 2:
            n_val = min(max(n_val, 1), len(idx) - 1)
        val += idx[:n_val]
        train += idx[n_val:]
    return sorted(train), sorted(val)


def load_rgb(path: str | Path, min_side: int | None = None) -> Image.Image:
    """Open any image as upright 8-bit RGB; raises on unreadable files.

    With `min_side`, JPEGs are decoded at a reduced DCT scale (draft mode) that still keeps
    the short side >= min_side: a 4x smaller decode costs about a tenth of the time.
    """
    with Image.open(path) as img:
        if min_side and img.format == "JPEG":
            w, h = img.size
            scale = min_side / min(w, h)
            if scale < 1:
                img.draft("RGB", (int(w * scale) + 1, int(h * scale) + 1))
        img.load()
        img = ImageOps.exif_transpose(img)
        return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit and float greyscale: rescale to 8 bits (convert("L") would clip at 255).
        a = np.asarray(img, dtype=np.float32)
        top = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        a = np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        img = Image.fromarray(a, "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    return img.convert("RGB") if img.mode != "RGB" else img


def load_class_attributes(root: Path, classes: list[str]) -> tuple[np.ndarray, str]:
    """(classes x attributes) matrix in classes.txt order and where it came from.

    The competition's own predicate-matrix-continuous.txt (else -binary.txt) wins; without
    one, the AwA2 matrix bundled with the package is used, looked up by class name.
    Missing entries (-1) become the attribute's mean over the classes that have it.
    """
    for name in ("predicate-matrix-continuous.txt", "predicate-matrix-binary.txt"):
        path = root / name
        if path.is_file():
            try:
                matrix = np.loadtxt(path, dtype=np.float64, ndmin=2)
            except ValueError as e:
                raise DataError(f"attribute file {path} is not a numeric matrix: {e}") from e
            if matrix.shape[0] != len(classes):
                raise DataError(f"attribute file {path} has {matrix.shape[0]} rows; "
                                f"classes.txt lists {len(classes)} classes")
            return fill_missing(matrix), str(path)
    table = bundled_attributes()
    missing = [c for c in classes if c not in table]
    if missing:
        raise DataError(f"no attributes for class(es) {', '.join(missing)}: {root} has no "
                        "predicate-matrix-*.txt and the bundled AwA2 table does not know them")
    return fill_missing(np.stack([table[c] for c in classes])), "bundled AwA2 table"


def bundled_attributes() -> dict[str, np.ndarray]:
    text = resources.files("pixelplay_lib").joinpath("resources/awa2_class_attributes.csv")
    lines = text.read_text(encoding="utf-8").splitlines()[1:]
    table = {}
    for line in lines:
        name, *values = line.split(",")
        table[name.strip()] = np.array([float(v) for v in values])
    return table


def fill_missing(matrix: np.ndarray) -> np.ndarray:
    matrix = matrix.astype(np.float64).copy()
    missing = matrix < 0
    for j in range(matrix.shape[1]):
        known = matrix[~missing[:, j], j]
        matrix[missing[:, j], j] = known.mean() if known.size else 0.0
    return matrix
