"""Special-Package: the competition's few labelled real photos, as an evaluation set.

Beside `vlg-dataset/` the competition ships `Special-Package/Special-Package/` holding
`final_examples/` (images) and `labels.txt`. They are the only labelled photos a user has
besides the training images, and the only real-photo check of the unseen classes before
submitting: every expert and the fusion are scored on them (`score_table`). Never used for
training.

Nothing here stops a run: when the package is absent or its labels cannot be read,
`load_special_package` returns None and one line saying so.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .data import DataError, canonical, is_data_file, read_text_file
from .locate import walk_inputs

log = logging.getLogger("pixelplay")

IMAGE_FOLDER = "final+examples"  # canonical name of the images folder
LABEL_FILES = ("labels.txt", "labels.csv")
# Below each searched folder; /kaggle/input/competitions/<slug>/Special-Package/
# Special-Package/final_examples is 5 levels below input_root.
SEARCH_DEPTH = 6
HEADER_WORDS = {"image", "image+id", "image+name", "id", "file", "filename", "file+name",
                "img", "path", "name", "class", "label", "labels", "category", "species",
                "class+name", "target"}
TEXT_SUFFIXES = {".txt", ".csv", ".tsv", ".json", ".md"}
MAX_SHOWN = 5  # problem lines quoted in the summary


@dataclass
class SpecialPackage:
    """The understood part of the package: files[i] is labelled labels[i] (class index in
    classes.txt order). `problems` holds one entry per line not understood ("line 7:
    'x.jpg walrus2': unknown class 'walrus2'"), `unlabelled` the images without a line."""

    images_dir: Path
    labels_file: Path
    files: list[Path]
    labels: np.ndarray
    problems: list[str] = field(default_factory=list)
    unlabelled: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self, classes: list[str], unseen: list[int]) -> str:
        """One paragraph: how many images were matched, which classes (seen / unseen), and
        the first lines not understood with their line numbers."""
        present = sorted({int(c) for c in self.labels})
        seen_names = [classes[c] for c in present if c not in unseen]
        unseen_names = [classes[c] for c in present if c in unseen]
        n_unseen = int(np.isin(self.labels, unseen).sum())
        text = (f"Special-Package: {len(self.files)} labelled images from {self.labels_file} "
                f"({len(self.files) - n_unseen} of seen classes, {n_unseen} of unseen); "
                f"{len(seen_names)} seen classes ({', '.join(seen_names) or '-'}), "
                f"{len(unseen_names)} unseen ({', '.join(unseen_names) or '-'}).")
        for note in self.notes:
            text += f" {note}."
        if self.problems:
            shown = "; ".join(self.problems[:MAX_SHOWN])
            more = f" (and {len(self.problems) - MAX_SHOWN} more)" \
                if len(self.problems) > MAX_SHOWN else ""
            text += f" {len(self.problems)} line(s) not understood: {shown}{more}."
        if self.unlabelled:
            text += (f" {len(self.unlabelled)} image(s) in {self.images_dir} have no label "
                     f"line (e.g. {self.unlabelled[0].name}): not scored.")
        return text


def find_special_package(challenge_root: Path, input_root: str | Path = ""
                         ) -> tuple[Path, Path] | None:
    """(images folder, labels file) of the package, or None.

    Searched: the challenge root's parent and grandparent (the package sits beside
    `vlg-dataset/`), then `input_root`, each up to SEARCH_DEPTH levels, never inside the
    challenge root itself. The images folder is one named `final_examples` (any case or
    word separator); the labels file is `labels.txt` (or `labels.csv`) in that folder, its
    parent or its grandparent. The nearest match wins.
    """
    root = Path(challenge_root).resolve()
    bases = [root.parent, root.parent.parent] + ([Path(input_root)] if input_root else [])
    for base in bases:
        for folder, _ in walk_inputs(base, SEARCH_DEPTH):
            if folder.resolve() == root or root in folder.resolve().parents:
                continue
            if canonical(folder.name) != IMAGE_FOLDER:
                continue
            labels = _labels_file_near(folder)
            if labels is not None:
                return folder, labels
    return None


def _labels_file_near(images_dir: Path) -> Path | None:
    for folder in (images_dir, images_dir.parent, images_dir.parent.parent):
        names = {p.name.lower(): p for p in folder.iterdir() if p.is_file()}
        for wanted in LABEL_FILES:
            if wanted in names:
                return names[wanted]
    return None


def load_special_package(challenge_root: Path, classes: list[str], input_root: str | Path = ""
                         ) -> tuple[SpecialPackage | None, str]:
    """Find and parse the package: (package or None, a one-paragraph report for the log,
    the notebooks and `score`). None when it is absent, unreadable or no line could be
    understood; the report then says which and where. Never raises for bad files."""
    found = find_special_package(challenge_root, input_root)
    if found is None:
        return None, (f"Special-Package: not found (looked for final_examples/ with a "
                      f"labels.txt beside {challenge_root}"
                      f"{' and under ' + str(input_root) if input_root else ''}); "
                      "no real-photo check.")
    images_dir, labels_file = found
    try:
        text = read_text_file(labels_file)
    except DataError as e:
        return None, f"Special-Package: {e}; not scored."
    images = [p for p in sorted(images_dir.iterdir())
              if is_data_file(p) and p.suffix.lower() not in TEXT_SUFFIXES]
    package = parse_labels(text, images, classes, images_dir, labels_file)
    if not package.files:
        reason = "; ".join(package.problems[:MAX_SHOWN]) or "it holds no label lines"
        return None, (f"Special-Package: no line of {labels_file} could be understood "
                      f"({reason}); expected lines like '00001.jpg<TAB>antelope'. Not scored.")
    return package, ""


def parse_labels(text: str, images: list[Path], classes: list[str], images_dir: Path,
                 labels_file: Path) -> SpecialPackage:
    """Read `text` (labels.txt, already decoded) against the image files and class names.

    Accepted per line: `<image> <class>` separated by a tab, a comma (CSV, quotes allowed),
    a semicolon or spaces; an optional leading row number (`1<TAB>00001.jpg<TAB>antelope`);
    images by file name, by name without extension or by number (`1` = `00001.jpg`); classes
    by name in any case or word separator (`Blue Whale`), or by number = line of
    classes.txt, when the numbering is unambiguous (a 0 present and no len(classes): from
    0; len(classes) present and no 0: from 1). A header row and `#` comments are skipped.
    Lines naming an unknown image or class, or repeating an image with another class, go to
    `problems` with their line number.
    """
    image_keys = _image_keys(images)
    class_index = {canonical(name): i for i, name in enumerate(classes)}
    entries: list[tuple[int, str, Path, str]] = []  # line number, line, image, class field
    problems: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = _split(line.strip())
        if not fields or fields[0].startswith("#"):
            continue
        if not entries and not problems and _is_header(fields):
            continue
        picked = _pick_image(fields, image_keys)
        if picked is None:
            problems.append(f"line {number}: {line.strip()!r}: no image "
                            f"{fields[0]!r} in {images_dir.name}/")
            continue
        image, label = picked
        if not label:
            problems.append(f"line {number}: {line.strip()!r}: no class after the image")
            continue
        entries.append((number, line.strip(), image, label))
    base, note = _number_base(
        [e[3] for e in entries if canonical(e[3]) not in class_index], len(classes))
    labelled: dict[Path, int] = {}
    for number, line, image, label in entries:
        cls = class_index.get(canonical(label))
        if cls is None and label.isdigit() and base is not None:
            cls = int(label) - base if 0 <= int(label) - base < len(classes) else None
        if cls is None:
            why = " (numbered classes are ambiguous here)" if label.isdigit() else ""
            problems.append(f"line {number}: {line!r}: unknown class {label!r}{why}")
        elif labelled.get(image, cls) != cls:
            problems.append(f"line {number}: {line!r}: {image.name} was labelled "
                            f"{classes[labelled[image]]} on an earlier line (kept)")
        else:
            labelled[image] = cls
    files = sorted(labelled)
    problems.sort(key=lambda p: int(p.split(":")[0].split()[1]))  # in file order
    return SpecialPackage(images_dir, labels_file, files,
                          np.array([labelled[f] for f in files], dtype=np.int64), problems,
                          [p for p in images if p not in labelled], [note] if note else [])


def _split(line: str) -> list[str]:
    if not line:
        return []
    for sep in ("\t", ",", ";"):
        if sep in line:
            row = next(csv.reader([line], delimiter=sep))
            return [f.strip().strip("'\"") for f in row if f.strip()]
    return line.split()


def _is_header(fields: list[str]) -> bool:
    return any(canonical(f) in HEADER_WORDS for f in fields[:3]) and not any(
        f.isdigit() or "." in f for f in fields)


def _image_keys(images: list[Path]) -> dict[str, Path]:
    """Lookup keys of each image: name, name without extension, and its number (`1` for
    `00001.jpg`) unless two images share it."""
    keys: dict[str, Path] = {}
    numbers: dict[str, list[Path]] = {}
    for path in images:
        keys[path.name.lower()] = path
        keys.setdefault(path.stem.lower(), path)
        if path.stem.isdigit():
            numbers.setdefault(str(int(path.stem)), []).append(path)
    for number, paths in numbers.items():
        if len(paths) == 1:
            keys.setdefault(number, paths[0])
    return keys


def _lookup(token: str, keys: dict[str, Path]) -> Path | None:
    name = token.replace("\\", "/").rsplit("/", 1)[-1].lower()
    for key in (name, name.rsplit(".", 1)[0], str(int(name)) if name.isdigit() else None):
        if key is not None and key in keys:
            return keys[key]
    return None


def _pick_image(fields: list[str], keys: dict[str, Path]) -> tuple[Path, str] | None:
    """(image, class field) of a line: the image is its first field, or its second after a
    row number (`1<TAB>00001.jpg<TAB>antelope`); the class is everything after the image
    (spaces kept: `Blue Whale`)."""
    if len(fields) >= 3 and fields[0].isdigit() and _lookup(fields[1], keys) is not None:
        return _lookup(fields[1], keys), " ".join(fields[2:])
    image = _lookup(fields[0], keys)
    return None if image is None else (image, " ".join(fields[1:]))


def _number_base(labels: list[str], n_classes: int) -> tuple[int | None, str]:
    """Where class numbers count from, given the class fields that are not class names:
    (0 or 1, a note for the summary), or (None, why) when numbering is ambiguous."""
    numbers = {int(x) for x in labels if x.isdigit()}
    if not numbers:
        return None, ""
    if 0 in numbers and n_classes not in numbers:
        return 0, "classes given as numbers, read as 0-based positions in classes.txt"
    if n_classes in numbers and 0 not in numbers:
        return 1, "classes given as numbers, read as 1-based lines of classes.txt"
    return None, ("classes given as numbers, but neither 0 nor "
                  f"{n_classes} appears alone, so 0- and 1-based readings are both possible")


def score_table(experts: dict[str, np.ndarray], truth: np.ndarray, classes: list[str],
                unseen: list[int]) -> pd.DataFrame:
    """Accuracy of each expert and the fusion on labelled images.

    experts: name -> (n,) predicted class indices, or (n, n_classes) scores (argmax taken).
    truth: (n,) true class indices. Returns a frame indexed by "overall", "seen", "unseen"
    and each class present in `truth` (classes.txt order), with a column "images" (count)
    and one column per expert (accuracy over those images, NaN where there are none).
    Raises ValueError naming the expert whose row count differs from `truth`.
    """
    truth = np.asarray(truth)
    groups = {"overall": np.ones(len(truth), bool), "seen": ~np.isin(truth, unseen),
              "unseen": np.isin(truth, unseen)}
    groups.update({classes[c]: truth == c for c in sorted({int(t) for t in truth})})
    table = pd.DataFrame(index=list(groups))
    table["images"] = [int(mask.sum()) for mask in groups.values()]
    for name, values in experts.items():
        values = np.asarray(values)
        pred = values.argmax(1) if values.ndim == 2 else values
        if len(pred) != len(truth):
            raise ValueError(f"expert {name!r} has {len(pred)} rows for {len(truth)} "
                             "labelled images; score it on the same images in the same order")
        correct = pred == truth
        table[name] = [float(correct[mask].mean()) if mask.any() else np.nan
                       for mask in groups.values()]
    return table
