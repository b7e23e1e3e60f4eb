"""The submission file: write it, and check a file against what the competition expects.

The competition wants one CSV row per test image, `image_id,class` (README, "The data"),
every label one of the 50 names of classes.txt. `write_submission` writes such a file
(the order and ids of a shipped sample_submission.csv win) and beside it, for `X.csv`, the
sidecar `X.check.json`:

    {"format": "pixelplay-submission-check/1", "header": ["image_id", "class"],
     "ids": [the ids in file order], "classes": [the labels of classes.txt]}

i.e. what the kernel that wrote it saw (its test folder, sample submission and class
list). `check_submission` compares any file with such an expectation, from the sidecar or
rebuilt from the competition folder (`expected_from`), and lists what is wrong by line,
so that a file is checked before it costs one of the day's submissions (`make submit`).

Ids that are not valid UTF-8 (file names from a Windows zip) are surrogate-escaped `str`
throughout: written and read with the `surrogateescape` error handler, so the bytes on
disk are those of the test file's name.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import logging
from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

log = logging.getLogger("pixelplay")

HEADER = ("image_id", "class")
CHECK_FORMAT = "pixelplay-submission-check/1"
SHOW = 5  # items named in one message, the rest counted
# Byte-order marks of encodings a CSV must not be in (Excel's "Unicode text" saves).
WIDE_BOMS = (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE, codecs.BOM_UTF16_LE,
             codecs.BOM_UTF16_BE)


class SubmissionError(ValueError):
    """Nothing to check a submission against, or an unreadable sidecar; names the file."""


@dataclass
class Rows:
    """The rows a submission has: its header, the id of each row in file order, and the
    test file (name) each row stands for."""

    header: tuple[str, ...]
    ids: list[str]
    names: list[str]


@dataclass
class Expected:
    """What a submission must hold, and where that was learnt (for messages)."""

    header: tuple[str, ...]
    ids: list[str]
    classes: list[str]
    source: str


# --------------------------------------------------------------------------- writing
# What one prediction writes beside its submission `<name>.csv` (predict.write_outputs).
OUTPUT_SUFFIXES = (".csv", ".check.json", ".summary.json", ".fusion.json", ".fusion.pt",
                   ".special.csv")


def name_problem(out: str | Path, name: str, overwrite: bool) -> str | None:
    """Why predict / fuse must not write the submission `name` into `out` (a file of that
    name exists and overwrite is off; the name is not a plain file stem), or None."""
    if not name or name != Path(name).name or name.startswith("."):
        return f"name={name!r}: give a plain file stem such as submission or clip-probe"
    existing = [p for p in (Path(out) / f"{name}{ext}" for ext in OUTPUT_SUFFIXES)
                if p.exists()]
    if existing and not overwrite:
        return (f"name: {existing[0]} exists (a previous prediction). Fix: another name "
                "(--name, papermill -p name) keeps both, or overwrite=true (--overwrite true) "
                "replaces it")
    return None


def by_number(names: set[str]) -> dict[str, str]:
    """{"1": "00001.jpg", ...} when every stem is a number (sample ids written without the
    zero padding); {} when the stems are not all numbers or two share a number."""
    stems = {name: Path(name).stem for name in names}
    if not all(stem.isdigit() for stem in stems.values()):
        return {}
    table = {str(int(stem)): name for name, stem in stems.items()}
    return table if len(table) == len(names) else {}


def submission_rows(names: Collection[str], sample: Path | None = None) -> Rows:
    """The rows of the submission for the test files `names`: sorted by name under the
    header image_id,class; with a sample_submission.csv, its header and row order, its ids
    matched to the files by name, by stem (`00001` for 00001.jpg) or by number (`1`).

    A sample that lists other images is ignored, with a warning naming some of them.
    """
    expected = set(names)
    if sample is None:
        return Rows(HEADER, sorted(expected), sorted(expected))
    template = pd.read_csv(sample, dtype=str, encoding_errors="surrogateescape")
    header = tuple(template.columns[:2])
    sample_ids = list(template[header[0]])
    by_stem = {Path(name).stem: name for name in expected}
    if not set(sample_ids) & (expected | set(by_stem)):
        by_stem = by_number(expected)  # ids `1` for test/00001.jpg
    if set(sample_ids) == expected:
        return Rows(header, sample_ids, sample_ids)
    if len(by_stem) == len(expected) and set(sample_ids) == set(by_stem):
        return Rows(header, sample_ids, [by_stem[i] for i in sample_ids])
    odd = sorted(set(sample_ids) - expected - set(by_stem))[:3]
    log.warning("%s does not list the same images as test/ (e.g. %s; test/ has %s): its ids "
                "and order are ignored, the submission uses the file names", sample,
                ", ".join(odd) or "fewer rows", min(expected))
    return Rows(HEADER, sorted(expected), sorted(expected))


def write_submission(frame: pd.DataFrame, test_files: list[Path], classes: list[str],
                     path: Path, sample: Path | None = None) -> Path:
    """Check the frame is complete and valid, then write it and its sidecar atomically.

    One row per test file, no duplicates, every label a class of classes.txt. When the
    competition ships a sample_submission.csv, its header and row order are used; its ids
    may lack the extension (`00001` for test/00001.jpg) or the zero padding (`1`): rows
    match by stem or by number and the file then carries the sample's ids
    (`submission_rows`). Beside `X.csv` goes `X.check.json` (module docstring), what
    `check_submission` checks a file against later.

    File names that are not valid UTF-8 (a Windows zip unpacked on Linux) arrive as
    surrogate-escaped str; the CSV is encoded with surrogateescape so such an id is written
    as its bytes on disk (what the scorer's copy of the name holds), not replaced or dropped.
    Raises ValueError naming what is wrong with an incomplete or invalid frame.
    """
    from .checkpoint import atomic_write_bytes, atomic_write_text  # (imports torch)

    if list(frame.columns[:2]) != list(HEADER):
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
    rows = submission_rows(expected, sample)
    labels = pd.Series(frame["class"].values, index=ids)
    out = pd.DataFrame({rows.header[0]: rows.ids, rows.header[1]: labels.loc[rows.names].values})
    atomic_write_bytes(path, out.to_csv(index=False).encode("utf-8", "surrogateescape"))
    check = {"format": CHECK_FORMAT, "header": list(rows.header), "ids": rows.ids,
             "classes": list(classes)}
    # json escapes the surrogates of non-UTF-8 ids (\udcxx) and reads them back as they were
    atomic_write_text(check_path(path), json.dumps(check, indent=1) + "\n")
    return path


# --------------------------------------------------------------------------- checking
def check_path(path: Path) -> Path:
    """The sidecar of a submission: X.csv -> X.check.json."""
    return Path(path).with_suffix(".check.json")


def read_check(path: Path) -> Expected:
    """The expectation in a sidecar written by write_submission. Raises SubmissionError
    naming the file when it is unreadable or not in CHECK_FORMAT."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SubmissionError(f"cannot read {path}: {e}") from None
    fields = ("header", "ids", "classes")
    if not (isinstance(data, dict) and data.get("format") == CHECK_FORMAT
            and all(isinstance(data.get(k), list) for k in fields)
            and all(isinstance(v, str) for k in fields for v in data[k])):
        raise SubmissionError(f"{path} is not a {CHECK_FORMAT} file (format, and header, ids, "
                              "classes as lists of text): the one predict writes beside the "
                              "submission; give the competition folder instead")
    return Expected(tuple(data["header"]), data["ids"], data["classes"], str(path))


def expected_from(path: Path, data_root: str | Path = "") -> Expected:
    """What the submission `path` must hold: from the competition folder `data_root` when
    given (classes.txt and the test files found by load_challenge; a sample_submission.csv
    beside them dictates the ids as in write_submission), else from the sidecar beside the
    file. Raises SubmissionError saying how to provide one when there is neither, or
    naming the folder or sidecar that cannot be read."""
    from .data import DataError, load_challenge

    if str(data_root):
        try:
            ch = load_challenge(data_root)
            rows = submission_rows([f.name for f in ch.test_files()], ch.sample_submission())
        except (DataError, OSError) as e:
            raise SubmissionError(f"competition folder {data_root}: {e}") from None
        return Expected(rows.header, rows.ids, ch.classes, f"the competition folder {ch.root}")
    sidecar = check_path(path)
    if sidecar.is_file():
        return read_check(sidecar)
    raise SubmissionError(
        f"nothing to check {path} against: keep {sidecar.name} (written beside it by "
        "predict) next to it, or give the competition folder (classes.txt, test/: the "
        "competition's data, unzipped)")


def show(text: str) -> str:
    """`text` quoted for a message: invalid UTF-8 bytes (surrogate-escaped) as \\xNN, so
    that printing never fails and spaces around a value stay visible."""
    return "'" + text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace") + "'"


def few(items: Sequence[str], n: int = SHOW) -> str:
    """The first n items, comma-separated, then how many more."""
    more = f" ... and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def lines_of(numbers: Sequence[int]) -> str:
    return ("line " if len(numbers) == 1 else "lines ") + few([str(n) for n in numbers])


def decode(data: bytes, name: str) -> tuple[str | None, list[str]]:
    """(text or None when unreadable, problems) of a CSV's bytes, as the writer encodes
    them: UTF-8 with invalid bytes surrogate-escaped. A UTF-8 byte-order mark is a problem
    (the first column would be named '\\ufeffimage_id'), skipped to check the rest."""
    if data.startswith(WIDE_BOMS) or b"\x00" in data:
        return None, [f"{name} is UTF-16/UTF-32 text or binary (NUL bytes), not a UTF-8 CSV: "
                      "save it as CSV UTF-8 (or write it with pixelplay's predict)"]
    if data.startswith(codecs.BOM_UTF8):
        return (data[len(codecs.BOM_UTF8):].decode("utf-8", "surrogateescape"),
                [f"{name} starts with a UTF-8 byte-order mark (as Excel's 'CSV UTF-8' "
                 "saves): save it without one"])
    return data.decode("utf-8", "surrogateescape"), []


def check_submission(path: Path, ids: Sequence[str], classes: Collection[str],
                     header: Sequence[str] = HEADER) -> list[str]:
    """What is wrong with the submission CSV `path` (empty: nothing), each problem naming
    its rows: the header (line 1) other than `header`; rows without exactly its fields; a
    row count other than len(ids); ids of `ids` without a row (the first few named); ids
    not in `ids` or on several rows (with their line numbers); labels not in `classes` or
    empty (with their line numbers). Row order is not checked (the scorer joins by id).
    Blank lines are skipped, as pandas does. Line numbers count from 1 = the header."""
    name = Path(path).name
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        return [f"cannot read {path}: {e}"]
    text, problems = decode(data, name)
    if text is None:
        return problems
    reader = csv.reader(io.StringIO(text, newline=""))
    first = next(reader, None)
    if first is None:
        return [*problems, f"{name} is empty: it needs the header {','.join(header)} and "
                           f"{len(ids)} rows"]
    if tuple(first) != tuple(header):
        problems.append(f"line 1: the header is {show(','.join(first))}, expected "
                        f"{show(','.join(header))}")
    rows: dict[str, list[int]] = defaultdict(list)  # id -> its lines
    bad_labels: dict[str, list[int]] = defaultdict(list)
    empty, ragged = [], []
    known = set(classes)
    for row in reader:
        if not row:
            continue
        line = reader.line_num
        if len(row) != len(header):
            ragged.append(line)
        rows[row[0]].append(line)
        label = row[1] if len(row) > 1 else ""
        if not label.strip():
            empty.append(line)
        elif label not in known:
            bad_labels[label].append(line)
    problems += row_problems(rows, ids, header)
    if ragged:
        problems.append(f"{len(ragged)} row(s) without exactly {len(header)} fields "
                        f"({','.join(header)}): {lines_of(ragged)}")
    if bad_labels:
        n = sum(map(len, bad_labels.values()))
        problems.append(f"{n} row(s) with a label that is not a class: " + few(
            [f"{show(label)} ({lines_of(found)})" for label, found in bad_labels.items()])
            + f" (the classes: {few(sorted(known), 3)})")
    if empty:
        problems.append(f"{len(empty)} row(s) without a label: {lines_of(empty)}")
    return problems


def row_problems(rows: dict[str, list[int]], ids: Sequence[str],
                 header: Sequence[str]) -> list[str]:
    """Row count, missing, unknown and duplicated ids; rows: id -> the lines it is on."""
    problems = []
    n_rows = sum(map(len, rows.values()))
    if n_rows != len(ids):
        problems.append(f"{n_rows} rows, expected {len(ids)} (one per test image)")
    expected = set(ids)
    missing = [show(i) for i in ids if i not in rows]
    if missing:
        problems.append(f"{len(missing)} test image(s) without a row: {few(missing)}")
    unknown = [f"{show(i)} ({lines_of(found)})" for i, found in rows.items()
               if i not in expected]
    if unknown:
        problems.append(f"{len(unknown)} {header[0]}(s) that are no test image: {few(unknown)}")
    repeated = [f"{show(i)} ({lines_of(found)})" for i, found in rows.items()
                if len(found) > 1]
    if repeated:
        problems.append(f"{len(repeated)} {header[0]}(s) on several rows: {few(repeated)}")
    return problems
