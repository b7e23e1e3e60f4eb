"""pixelplay_lib.submission: the sidecar write_submission leaves beside a submission, and
check_submission / expected_from, which `make submit` runs before anything is uploaded."""

from __future__ import annotations

import codecs
import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from pixelplay_lib.data import load_challenge
from pixelplay_lib.submission import (
    CHECK_FORMAT,
    HEADER,
    SubmissionError,
    check_submission,
    expected_from,
    read_check,
    write_submission,
)

CLASSES = ["antelope", "blue+whale", "fox", "zebra"]
IDS = [f"{i:05d}.jpg" for i in range(1, 9)]


def csv_text(rows: list[str], header: str = "image_id,class") -> str:
    return "\n".join([header, *rows]) + "\n"


def good_rows() -> list[str]:
    return [f"{i},{CLASSES[n % 4]}" for n, i in enumerate(IDS)]


def check(tmp_path: Path, content: str | bytes, ids: list[str] = IDS) -> list[str]:
    path = tmp_path / "submission.csv"
    if isinstance(content, str):
        content = content.encode()
    path.write_bytes(content)
    return check_submission(path, ids, CLASSES)


def challenge(root: Path, n_test: int = 3) -> Path:
    """A challenge folder as load_challenge finds it (file contents do not matter here)."""
    (root / "train" / "fox").mkdir(parents=True)
    (root / "train" / "fox" / "a.jpg").write_bytes(b"x")
    (root / "test").mkdir()
    for i in range(1, n_test + 1):
        (root / "test" / f"{i:05d}.jpg").write_bytes(b"x")
    (root / "classes.txt").write_text("".join(f"{i + 1}\t{c}\n" for i, c in enumerate(CLASSES)))
    return root


# --------------------------------------------------------------------------- sidecar
def test_write_submission_leaves_a_sidecar_the_file_passes(tmp_path: Path) -> None:
    files = [tmp_path / name for name in reversed(IDS)]
    frame = pd.DataFrame({"image_id": [f.name for f in files], "class": "fox"})
    path = write_submission(frame, files, CLASSES, tmp_path / "run" / "sub.csv")
    side = json.loads((tmp_path / "run" / "sub.check.json").read_text())
    assert side == {"format": CHECK_FORMAT, "header": list(HEADER), "ids": IDS,
                    "classes": CLASSES}
    expected = expected_from(path)
    assert (expected.ids, expected.classes, expected.header) == (IDS, CLASSES, HEADER)
    assert check_submission(path, expected.ids, expected.classes, expected.header) == []


def test_sidecar_holds_the_sample_submissions_ids_and_header(tmp_path: Path) -> None:
    files = [tmp_path / f"{i:05d}.jpg" for i in (1, 2, 3)]
    sample = tmp_path / "sample_submission.csv"
    sample.write_text("id,label\n3,x\n1,x\n2,x\n")  # ids by number, in the sample's order
    frame = pd.DataFrame({"image_id": [f.name for f in files], "class": ["fox", "zebra", "fox"]})
    path = write_submission(frame, files, CLASSES, tmp_path / "sub.csv", sample)
    expected = read_check(tmp_path / "sub.check.json")
    assert (expected.header, expected.ids) == (("id", "label"), ["3", "1", "2"])
    assert path.read_text() == "id,label\n3,fox\n1,fox\n2,zebra\n"
    assert check_submission(path, expected.ids, expected.classes, expected.header) == []
    assert check_submission(path, expected.ids, expected.classes)[0].startswith(
        "line 1: the header is 'id,label', expected 'image_id,class'")


def test_non_utf8_ids_round_trip_through_the_sidecar(tmp_path: Path) -> None:
    name = os.fsdecode(b"\xff\xfeodd.jpg")  # surrogate-escaped, as listed from a Windows zip
    files = [tmp_path / name, tmp_path / "00001.jpg"]
    frame = pd.DataFrame({"image_id": [f.name for f in files], "class": ["fox", "zebra"]})
    path = write_submission(frame, files, CLASSES, tmp_path / "sub.csv")
    assert b"\xff\xfeodd.jpg,fox" in path.read_bytes().splitlines()
    expected = expected_from(path)
    assert name in expected.ids
    assert check_submission(path, expected.ids, expected.classes) == []
    # ... and a problem naming such an id prints (no surrogates in the message)
    problems = check_submission(path, ["00001.jpg"], CLASSES)
    assert "'\\xff\\xfeodd.jpg' (line 3)" in " ".join(problems)  # sorted after 00001
    " ".join(problems).encode("utf-8")


# --------------------------------------------------------------------------- check_submission
def test_a_complete_file_has_no_problem(tmp_path: Path) -> None:
    assert check(tmp_path, csv_text(good_rows())) == []
    assert check(tmp_path, csv_text(good_rows()[::-1]) + "\n\n") == []  # order, blank lines
    quoted = '"00001.jpg","fox"\r\n' + "".join(f"{r}\r\n" for r in good_rows()[1:])
    assert check(tmp_path, "image_id,class\r\n" + quoted) == []  # as Excel / pandas quote


@pytest.mark.parametrize("header, shown", [
    ("id,label", "'id,label'"),
    ("image_id;class", "'image_id;class'"),
    ("Image_ID,Class", "'Image_ID,Class'"),
])
def test_wrong_header(tmp_path: Path, header: str, shown: str) -> None:
    problems = check(tmp_path, csv_text(good_rows(), header))
    assert problems[0] == f"line 1: the header is {shown}, expected 'image_id,class'"


@pytest.mark.parametrize("rows, messages", [
    (good_rows()[:3], ["3 rows, expected 8 (one per test image)",
                       "5 test image(s) without a row: '00004.jpg', '00005.jpg', '00006.jpg', "
                       "'00007.jpg', '00008.jpg'"]),
    ([], ["0 rows, expected 8 (one per test image)",
          "8 test image(s) without a row: '00001.jpg', '00002.jpg', '00003.jpg', '00004.jpg', "
          "'00005.jpg' ... and 3 more"]),
])
def test_short_files(tmp_path: Path, rows: list[str], messages: list[str]) -> None:
    assert check(tmp_path, csv_text(rows)) == messages


def test_an_empty_file(tmp_path: Path) -> None:
    assert check(tmp_path, "") == ["submission.csv is empty: it needs the header "
                                   "image_id,class and 8 rows"]


@pytest.mark.parametrize("rows, message", [
    ([*good_rows(), "00009.jpg,fox"], "1 image_id(s) that are no test image: '00009.jpg' "
                                      "(line 10)"),
    ([*good_rows()[:-1], "00008,fox"], "1 image_id(s) that are no test image: '00008' "
                                       "(line 9)"),
])
def test_unknown_ids_are_named_with_their_lines(tmp_path: Path, rows: list[str],
                                                message: str) -> None:
    assert message in check(tmp_path, csv_text(rows))


@pytest.mark.parametrize("rows, message", [
    ([*good_rows(), good_rows()[0]], "'00001.jpg' (lines 2, 10)"),
    ([*good_rows()[:2], good_rows()[1], good_rows()[1], *good_rows()[3:]],
     "'00002.jpg' (lines 3, 4, 5)"),
])
def test_duplicated_ids_are_named_with_their_lines(tmp_path: Path, rows: list[str],
                                                   message: str) -> None:
    problems = check(tmp_path, csv_text(rows))
    assert f"1 image_id(s) on several rows: {message}" in problems


@pytest.mark.parametrize("label, shown", [
    ("Fox", "'Fox'"),
    ("blue whale", "'blue whale'"),
    ("fox ", "'fox '"),  # a trailing space is another label for the scorer
    ("12", "'12'"),  # a class index instead of its name
])
def test_labels_not_among_the_classes(tmp_path: Path, label: str, shown: str) -> None:
    rows = good_rows()
    rows[2], rows[4] = f"{IDS[2]},{label}", f"{IDS[4]},{label}"
    (problem,) = check(tmp_path, csv_text(rows))
    assert problem.startswith(f"2 row(s) with a label that is not a class: {shown} "
                              "(lines 4, 6)")
    assert "antelope, blue+whale, fox" in problem


@pytest.mark.parametrize("row, lines", [
    (f"{IDS[0]},", "line 2"),
    (f"{IDS[0]},  ", "line 2"),
])
def test_empty_labels(tmp_path: Path, row: str, lines: str) -> None:
    assert check(tmp_path, csv_text([row, *good_rows()[1:]])) == [
        f"1 row(s) without a label: {lines}"]


@pytest.mark.parametrize("row", [f"{IDS[0]},fox,0.93", f"{IDS[0]}"])
def test_rows_without_two_fields(tmp_path: Path, row: str) -> None:
    problems = check(tmp_path, csv_text([row, *good_rows()[1:]]))
    assert "1 row(s) without exactly 2 fields (image_id,class): line 2" in problems


# --------------------------------------------------------------------------- encodings
def test_a_utf8_byte_order_mark_is_named_and_the_rows_still_checked(tmp_path: Path) -> None:
    problems = check(tmp_path, codecs.BOM_UTF8 + csv_text(good_rows()[:-1]).encode())
    assert problems[0] == ("submission.csv starts with a UTF-8 byte-order mark (as Excel's "
                           "'CSV UTF-8' saves): save it without one")
    assert "7 rows, expected 8 (one per test image)" in problems
    assert not [p for p in problems if "header" in p]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le"])
def test_utf16_files_are_refused_with_the_fix(tmp_path: Path, encoding: str) -> None:
    (problem,) = check(tmp_path, csv_text(good_rows()).encode(encoding))
    assert "not a UTF-8 CSV" in problem and "save it as CSV UTF-8" in problem


def test_invalid_utf8_labels_are_shown_as_bytes(tmp_path: Path) -> None:
    rows = good_rows()
    content = csv_text(rows[1:]).encode() + IDS[0].encode() + b",f\xf6x\n"  # Latin-1 o-umlaut
    (problem,) = check(tmp_path, content)
    assert "'f\\xf6x' (line 9)" in problem
    problem.encode("utf-8")  # printable


# --------------------------------------------------------------------------- expected_from
def test_expected_from_the_competition_folder(tmp_path: Path) -> None:
    root = challenge(tmp_path / "comp" / "vlg-dataset")
    sub = tmp_path / "sub.csv"
    (tmp_path / "sub.check.json").write_text(json.dumps(  # another test set: DATA wins
        {"format": CHECK_FORMAT, "header": list(HEADER), "ids": ["x.jpg"], "classes": ["x"]}))
    expected = expected_from(sub, tmp_path / "comp")
    assert expected.ids == ["00001.jpg", "00002.jpg", "00003.jpg"]
    assert expected.classes == CLASSES and expected.header == HEADER
    assert str(root) in expected.source


def test_expected_from_the_competition_folder_follows_its_sample(tmp_path: Path) -> None:
    root = challenge(tmp_path / "comp")
    (root / "sample_submission.csv").write_text("image_id,class\n2,x\n3,x\n1,x\n")
    ch = load_challenge(root)
    frame = pd.DataFrame({"image_id": [f.name for f in ch.test_files()], "class": "fox"})
    path = write_submission(frame, ch.test_files(), ch.classes, tmp_path / "sub.csv",
                            ch.sample_submission())
    expected = expected_from(path, root)
    assert expected.ids == ["2", "3", "1"]
    assert expected.ids == read_check(tmp_path / "sub.check.json").ids  # what the kernel saw
    assert check_submission(path, expected.ids, expected.classes, expected.header) == []


@pytest.mark.parametrize("data, message", [
    ("missing", "does not exist"),
    ("no-test", "no test folder"),
])
def test_expected_from_a_wrong_competition_folder(tmp_path: Path, data: str,
                                                  message: str) -> None:
    folder = tmp_path / data
    if data == "no-test":
        shutil.rmtree(challenge(folder) / "test")
    with pytest.raises(SubmissionError, match=message) as info:
        expected_from(tmp_path / "sub.csv", folder)
    assert str(info.value).startswith(f"competition folder {folder}")


def test_expected_from_nothing_says_how(tmp_path: Path) -> None:
    with pytest.raises(SubmissionError) as info:
        expected_from(tmp_path / "sub.csv")
    for hint in ("nothing to check", "keep sub.check.json", "competition folder"):
        assert hint in str(info.value)


@pytest.mark.parametrize("content", [
    "not json",
    json.dumps({"format": "something-else/1", "header": [], "ids": [], "classes": []}),
    json.dumps({"format": CHECK_FORMAT, "header": ["image_id", "class"], "ids": "00001.jpg",
                "classes": CLASSES}),
])
def test_unreadable_sidecars_are_named(tmp_path: Path, content: str) -> None:
    (tmp_path / "sub.check.json").write_text(content)
    with pytest.raises(SubmissionError, match="sub.check.json"):
        expected_from(tmp_path / "sub.csv")
