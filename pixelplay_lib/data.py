"""Find the challenge on disk, read its classes, samples and attributes, split, load images.

Facts this module relies on (README, "The data"): the challenge root holds `classes.txt`
(50 AwA2 names, possibly numbered and with stray spaces), `train/<class>/*.jpg` for the
seen classes and a flat `test/`. Kaggle has mounted competitions at different depths over
the years, so the root is found by searching, never by one hard-coded path.

Real-world inputs: every regular file that is not OS litter (`is_junk`, the one rule) is
data, whatever its name or extension, at any depth below a class folder; text files are
read through `read_text_file` (BOMs, UTF-16, Windows-1252, CRLF). File names that are not
valid UTF-8 stay surrogate-escaped `str` (Python's file-system encoding) end to end.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import random
from collections import defaultdict
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import PIL
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError, features

log = logging.getLogger("pixelplay")

# Only used to say which files have an unusual name: every file is decoded by content.
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jfif", ".jpe", ".png", ".bmp", ".gif", ".webp", ".tif",
                  ".tiff", ".mpo"}
# Litter that operating systems and tools leave beside data (never images): compared in
# lower case. Names starting with "." (".DS_Store", macOS "._x" resource forks, editors'
# swap files) are junk too.
JUNK_FILES = {"thumbs.db", "desktop.ini", "ehthumbs.db"}
JUNK_FOLDERS = {"__macosx", ".ipynb_checkpoints", "$recycle.bin", "@eadir"}
SEARCH_DEPTH = 6
# (byte-order mark, codec), longest first: the UTF-32 LE mark starts with the UTF-16 LE one.
TEXT_BOMS = ((b"\xff\xfe\x00\x00", "utf-32-le"), (b"\x00\x00\xfe\xff", "utf-32-be"),
             (b"\xef\xbb\xbf", "utf-8"), (b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be"))
# Truncated JPEGs must fail loudly (and be skipped), not decode as half-grey pictures.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class DataError(RuntimeError):
    """The data is not where or what it should be; the message names the path."""


@dataclass
class Challenge:
    root: Path
    classes: list[str]  # index = position in classes.txt
    train_samples: list[tuple[Path, int]]  # (file, class index): every data file of a class
    seen: list[int] = field(default_factory=list)  # class indices with training files
    unseen: list[int] = field(default_factory=list)  # listed in classes.txt, no training file
    unseen_reasons: dict[int, str] = field(default_factory=dict)  # unseen class -> why
    ignored: dict[Path, str] = field(default_factory=dict)  # train/ data files not used -> why

    @property
    def test_dir(self) -> Path:
        return self.root / "test"

    def test_files(self) -> list[Path]:
        """Every regular, non-junk file of test/ (or of test/test/ when test/ holds only that
        folder), sorted by name. Each one is a test image whatever its extension (decoded by
        content; an undecodable one still gets its submission row).

        Raises DataError naming the folder when test/ is missing or holds no file.
        """
        if not self.test_dir.is_dir():
            raise DataError(f"no test folder: {self.test_dir} does not exist")
        folder = self.test_dir
        files, subdirs = list_folder(folder)
        if not files and len(subdirs) == 1:  # some re-uploads nest it: test/test/*.jpg
            folder = subdirs[0]
            files, subdirs = list_folder(folder)
        if not files:
            raise DataError(f"the test folder {folder} holds no files")
        if subdirs:
            log.warning("test folder %s: subfolder(s) %s ignored (test images are the files "
                        "directly in it)", folder, ", ".join(d.name for d in subdirs))
        unusual = [p.name for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
        if unusual:
            log.info("%d test file(s) without an image extension, decoded by content: %s",
                     len(unusual), ", ".join(unusual[:10]) + (" ..." if len(unusual) > 10
                                                               else ""))
        return files

    def sample_submission(self) -> Path | None:
        """A sample_submission.csv shipped beside the data (its header and order win)."""
        for folder in (self.root, self.root.parent, self.root.parent.parent):
            candidate = folder / "sample_submission.csv"
            if candidate.is_file():
                return candidate
        return None

    def classes_without_readable_files(self, unreadable: Collection[Path]) -> dict[int, str]:
        """Seen classes all of whose training files are in `unreadable` (they train on
        nothing, so they are effectively unseen): class index -> reason. Logs a warning per
        class. Call it once the unreadable files are known (after decoding)."""
        bad = set(unreadable)
        files: dict[int, list[Path]] = defaultdict(list)
        for path, label in self.train_samples:
            files[label].append(path)
        lost = {label: f"its {len(paths)} file(s) in train/ are all unreadable"
                for label, paths in files.items() if all(p in bad for p in paths)}
        for label, reason in sorted(lost.items()):
            log.warning("class %s has no training images: %s", self.classes[label], reason)
        return lost


def is_junk(path: Path) -> bool:
    """True for operating-system and tool litter that is never data, file or folder: names
    starting with "." (.DS_Store, macOS "._x" resource forks), Thumbs.db, desktop.ini, and
    the folders __MACOSX/ and .ipynb_checkpoints/ (the one junk rule of the project)."""
    name = path.name.lower()
    return name.startswith(".") or name in JUNK_FILES or name in JUNK_FOLDERS


def is_data_file(path: Path) -> bool:
    """A regular file (or a link to one) that is not junk: a candidate image, whatever its
    extension (`.jfif`, `.JPG_large`, none); decoding decides whether it is one."""
    return path.is_file() and not is_junk(path)


def list_folder(folder: Path) -> tuple[list[Path], list[Path]]:
    """(data files, non-junk subfolders) directly inside `folder`, each sorted by name.
    Sockets, pipes and broken links are neither."""
    entries = sorted(folder.iterdir())
    return ([p for p in entries if is_data_file(p)],
            [p for p in entries if p.is_dir() and not is_junk(p)])


def walk_data_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """(data files at any depth below `folder`, the non-junk subfolders that hold some),
    sorted; junk folders (__MACOSX/, .ipynb_checkpoints/, hidden) are not entered."""
    files, nested = [], []
    for here, subdirs, names in os.walk(folder):
        subdirs[:] = sorted(d for d in subdirs if not is_junk(Path(d)))
        found = [Path(here) / n for n in names if is_data_file(Path(here) / n)]
        if found and Path(here) != folder:
            nested.append(Path(here))
        files += found
    return sorted(files), sorted(nested)


def read_text_file(path: Path) -> str:
    """The text of a small text file (classes.txt, predicates.txt, predicate matrices,
    labels.txt-style lists) as editors save it, with "\\n" line ends and no byte-order mark.

    Accepted: UTF-8 with or without BOM, UTF-16 LE/BE and UTF-32 with BOM (Windows Notepad's
    "Unicode"), Windows-1252 (old "ANSI" saves) as fallback; CRLF and CR line ends.
    Raises DataError naming the file when it is missing or cannot be decoded (binary, or
    UTF-16 without a BOM), with the encoding to save it in (UTF-8).
    """
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}") from e
    fix = "save it as UTF-8 (e.g. Notepad: Save as -> Encoding: UTF-8) and run again"
    codec = next((c for bom, c in TEXT_BOMS if data.startswith(bom)), None)
    if codec:
        try:
            text = data.decode(codec).lstrip("\ufeff")
        except UnicodeDecodeError as e:
            raise DataError(f"{path} starts with a {codec} byte-order mark but is not valid "
                            f"{codec} ({e.reason} at byte {e.start}); {fix}") from e
    elif b"\x00" in data:
        raise DataError(f"{path} holds NUL bytes: UTF-16 without a byte-order mark, or not a "
                        f"text file; {fix}")
    else:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            try:
                text = data.decode("cp1252")
            except UnicodeDecodeError as e:
                raise DataError(f"{path} is neither UTF-8 nor Windows-1252 text (byte "
                                f"0x{data[e.start]:02x} at {e.start}); {fix}") from e
            log.info("%s is not UTF-8: read as Windows-1252", path)
    return text.replace("\r\n", "\n").replace("\r", "\n")


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
    """classes.txt: one name a line, optionally numbered (`     1\\tantelope`, `1. antelope`),
    in any encoding read_text_file accepts. Names come back exactly: BOM, numbering, stray
    and non-breaking spaces removed. Raises DataError (naming the file) when it is missing,
    undecodable, empty or repeats a name."""
    if not path.is_file():
        raise DataError(f"missing class list: {path}")
    names = []
    for line in read_text_file(path).splitlines():
        # str.split() also splits on non-breaking and other Unicode spaces; a BOM in the
        # middle (two files pasted together) is no letter either.
        parts = line.replace("\ufeff", "").split()
        if len(parts) >= 2 and parts[0].rstrip(".):").isdigit():
            parts = parts[1:]
        if parts:
            names.append(" ".join(parts))
    if not names:
        raise DataError(f"class list {path} is empty")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DataError(f"class list {path} repeats: {', '.join(duplicates)}")
    return names


def load_challenge(data_root: str | Path = "", input_root: str | Path = "/kaggle/input"
                   ) -> Challenge:
    """The challenge found below data_root (or input_root): classes, training files by class
    (every data file at any depth below train/<class>/), seen / unseen classes.

    Logs nested class folders, files of train/ outside any class folder (Challenge.ignored)
    and why each unseen class has no training files. Raises DataError naming the folder or
    file when the layout is wrong (no train folder, a folder that is no listed class, ...).
    """
    root = find_challenge_root(data_root, input_root)
    classes = read_classes(root / "classes.txt")
    index = {canonical(name): i for i, name in enumerate(classes)}
    train_dir = root / "train"
    loose, folders = list_folder(train_dir)
    strangers = [p for p in folders if canonical(p.name) not in index]
    if strangers:
        raise DataError(f"train folder {strangers[0]} is not a class listed in "
                        f"{root / 'classes.txt'}" + (f" (and {len(strangers) - 1} more)"
                                                     if len(strangers) > 1 else ""))
    ignored = {p: "not inside a class folder of train/" for p in loose}
    for path in loose:
        log.warning("%s is not inside a class folder of train/: not used", path)
    samples = []
    found: dict[int, Path] = {}
    for folder in folders:
        label = index[canonical(folder.name)]
        files, nested = walk_data_files(folder)
        if nested:
            log.info("class %s: %d file(s) in nested folder(s) %s count for it", classes[label],
                     sum(1 for f in files if f.parent != folder),
                     ", ".join(str(d.relative_to(train_dir)) for d in nested))
        found[label] = folder
        samples += [(p, label) for p in files]
    if not samples:
        raise DataError(f"no training images under {train_dir}")
    seen = sorted({label for _, label in samples})
    reasons = {i: (f"its folder {found[i]} holds no data files" if i in found
                   else f"train/ has no folder {classes[i]}")
               for i in range(len(classes)) if i not in seen}
    if reasons:
        log.info("%d unseen class(es), without training images (zero-shot classes): "
                 "%s", len(reasons), "; ".join(f"{classes[i]}: {r}" for i, r in reasons.items()))
    return Challenge(root, classes, samples, seen, sorted(reasons), reasons, ignored)


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


def load_rgb(path: str | Path, min_side: int | None = None, lenient: bool = False
             ) -> Image.Image:
    """Open any image (format found from its content, not its name: AVIF or PNG behind a
    `.jpg` name decodes) as upright 8-bit RGB. Raises UnsupportedImageFile for content Pillow
    cannot open (HEIC, JPEG XL, a web page, an empty file: the message says which, and the
    fix), Pillow's own errors for damaged images.

    With `min_side`, JPEGs are decoded at a reduced DCT scale (draft mode) that still keeps
    the short side >= min_side: a 4x smaller decode costs about a tenth of the time.
    `lenient`: the second try for a test image that failed strict decoding: a truncated file
    decodes as far as its data goes and Pillow's decompression-bomb pixel limit is lifted
    for this file (draft mode keeps the decode small). Not thread-safe (Pillow globals).
    """
    if not lenient:
        return _load_rgb(path, min_side)
    with lenient_pillow():
        return _load_rgb(path, min_side)


@contextlib.contextmanager
def lenient_pillow() -> Iterator[None]:
    """Pillow accepts truncated files and images over its pixel limit inside the block."""
    saved = ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS
    ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS = True, None
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS = saved


class UnsupportedImageFile(UnidentifiedImageError):
    """A data file Pillow cannot open as an image (an OSError, like Pillow's own error).

    `found`: what its first bytes are ("HEIC/HEIF container (ftyp heic)", "HTML page", ...);
    the message names the file, that, and what to do.
    """

    def __init__(self, path: str | Path, found: str, advice: str):
        super().__init__(f"{path}: {found}: {advice}")
        self.path, self.found, self.advice = path, found, advice


HEAD_BYTES = 4096  # enough for an ISO-BMFF ftyp box and the opening tags of a web page
CONVERT = "convert it to JPEG or PNG ({tool}) or remove it"
# ISO-BMFF (HEIF / AVIF / MP4) brands, from the ftyp box: HEVC-coded HEIF is Apple's HEIC.
HEIC_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"}
AVIF_BRANDS = {b"avif", b"avis"}
HEIF_FIX = ("Pillow cannot decode HEIC (iPhone photos); " + CONVERT.format(
    tool="`heif-convert in.heic out.jpg` from libheif, or the Python package pillow-heif"))
JXL_FIX = f"Pillow cannot decode JPEG XL; {CONVERT.format(tool='`djxl in.jxl out.png`, libjxl')}"
REDOWNLOAD = "download the image again (or remove the file)"
# (first bytes, what the file is, what to do): formats Pillow does not open, by signature.
SIGNATURES = (
    (b"\xff\x0a", "JPEG XL (codestream)", JXL_FIX),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEG XL (container)", JXL_FIX),
    (b"%PDF-", "PDF document", "not an image file: export the photo from it "
     "(`pdftoppm -png in.pdf out`) or remove it"),
    (b"PK\x03\x04", "ZIP archive", "not an image file: unpack it and use the images inside"),
    (b"\x1f\x8b", "gzip archive", "not an image file: unpack it (`gunzip`)"),
)


def describe_content(head: bytes) -> tuple[str, str]:
    """(what a file is, what to do) from its first bytes, for a file Pillow could not open.

    Checked in order: empty / zero-filled, an ISO-BMFF ftyp box (HEIC, AVIF, video), the
    SIGNATURES table, then text (an HTML page, SVG, XML, JSON: a failed download saved under
    an image's name). Anything else: "unknown content" with its first bytes in hex.
    """
    if not head:
        return "empty file (0 bytes)", f"the copy or download did not complete; {REDOWNLOAD}"
    if not head.strip(b"\x00"):
        return "only zero bytes", f"the copy or download did not complete; {REDOWNLOAD}"
    if head[4:8] == b"ftyp":
        return _describe_ftyp(head)
    for magic, found, advice in SIGNATURES:
        if head.startswith(magic):
            return found, advice
    text = _describe_text(head)
    if text:
        return text
    return (f"unknown content (first bytes {head[:8].hex(' ')})",
            "not a format Pillow knows: check the file with an image viewer, convert or remove it")


def _describe_ftyp(head: bytes) -> tuple[str, str]:
    """An ISO base media file (ISO/IEC 14496-12): major brand at bytes 8-12, compatible
    brands from 16 to the end of the ftyp box."""
    major = head[8:12]
    size = int.from_bytes(head[:4], "big")
    brands = {major} | {head[i:i + 4] for i in range(16, min(size, len(head)) - 3, 4)}
    label = f"ftyp {major.decode('latin-1').strip()}"
    if brands & HEIC_BRANDS:
        return f"HEIC/HEIF container ({label})", HEIF_FIX
    if brands & AVIF_BRANDS:
        if features.check("avif"):  # Pillow's AVIF plugin tried and failed
            return f"AVIF ({label})", ("Pillow's AVIF decoder could not read it (damaged?); "
                                       + CONVERT.format(tool="`avifdec in.avif out.png`"))
        return f"AVIF ({label})", (f"this Pillow ({PIL.__version__}) was built without AVIF "
                                   "support (PIL.features.check('avif') is False; Pillow 11.2 "
                                   "and later wheels include it): upgrade Pillow, or "
                                   + CONVERT.format(tool="`avifdec in.avif out.png`"))
    if major == b"jxl ":
        return f"JPEG XL ({label})", JXL_FIX
    if brands & {b"mif1", b"msf1"}:
        return f"HEIF container ({label})", HEIF_FIX
    return f"video or other ISO media file ({label})", ("not a photo: extract a frame "
                                                        "(`ffmpeg -i in.mp4 -frames:v 1 "
                                                        "out.jpg`) or remove it")


def _describe_text(head: bytes) -> tuple[str, str] | None:
    """Web pages and other text saved under an image's name, or None for binary data."""
    try:
        text = head.decode("utf-8").lstrip("\ufeff \t\r\n").lower()
    except UnicodeDecodeError as e:
        if e.start < len(head) - 3:  # not just a character cut at the end of the head
            return None
        text = head[:e.start].decode("utf-8").lstrip("\ufeff \t\r\n").lower()
    if any(c < " " and c not in "\t\r\n\f" for c in text):  # control bytes: binary data
        return None
    if text.startswith(("<!doctype html", "<html")) or "<html" in text or "<body" in text:
        return "HTML page", ("a web page saved under an image's name (a failed, blocked or "
                             f"expired download); {REDOWNLOAD}")
    if "<svg" in text:
        return "SVG drawing", CONVERT.format(tool="`rsvg-convert -o out.png in.svg`")
    if text.startswith("<?xml"):
        return "XML text", f"not an image; {REDOWNLOAD}"
    if text.startswith(("{", "[")):
        return "JSON text", f"not an image (an error answer from a server?); {REDOWNLOAD}"
    return "text file", f"not an image; {REDOWNLOAD}"


def open_image(path: str | Path) -> Image.Image:
    """Image.open (format from the content, never the name). A file Pillow cannot identify
    raises UnsupportedImageFile saying what its first bytes are (HEIC, HTML page, empty,
    ...; describe_content) and what to do, where Pillow's message only says "cannot
    identify". Other Pillow errors (truncated data, pixel limit) pass unchanged."""
    try:
        return Image.open(path)
    except UnidentifiedImageError as e:
        with open(path, "rb") as f:
            head = f.read(HEAD_BYTES)
        raise UnsupportedImageFile(path, *describe_content(head)) from e


def _load_rgb(path: str | Path, min_side: int | None) -> Image.Image:
    with open_image(path) as img:
        if min_side and img.format in ("JPEG", "MPO"):
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
                matrix = np.loadtxt(io.StringIO(read_text_file(path)), dtype=np.float64,
                                    ndmin=2)
            except ValueError as e:
                raise DataError(f"attribute file {path} is not a numeric matrix: {e}") from e
            if matrix.shape[0] != len(classes):
                raise DataError(f"attribute file {path} has {matrix.shape[0]} rows; "
                                f"classes.txt lists {len(classes)} classes")
            return fill_missing(matrix), str(path)
    names, _, matrix = bundled_attributes()
    table = dict(zip(names, matrix, strict=True))
    missing = [c for c in classes if c not in table]
    if missing:
        raise DataError(f"no attributes for class(es) {', '.join(missing)}: {root} has no "
                        "predicate-matrix-*.txt and the bundled AwA2 table does not know them")
    return fill_missing(np.stack([table[c] for c in classes])), "bundled AwA2 table"


def bundled_attributes() -> tuple[list[str], list[str], np.ndarray]:
    """The AwA2 table shipped in resources/ (provenance: resources/PROVENANCE.md): class
    names in AwA2 order, the 85 attribute names, and the 50 x 85 matrix (strengths 0..100,
    -1 = missing). Read through importlib.resources, so it works from a wheel's zip too."""
    text = resources.files("pixelplay_lib").joinpath("resources/awa2_class_attributes.csv")
    header, *rows = (line.split(",") for line in text.read_text(encoding="utf-8").splitlines()
                     if line.strip())
    names = [r[0].strip() for r in rows]
    return names, header[1:], np.array([[float(v) for v in r[1:]] for r in rows])


def fill_missing(matrix: np.ndarray) -> np.ndarray:
    matrix = matrix.astype(np.float64).copy()
    missing = matrix < 0
    for j in range(matrix.shape[1]):
        known = matrix[~missing[:, j], j]
        matrix[missing[:, j], j] = known.mean() if known.size else 0.0
    return matrix
