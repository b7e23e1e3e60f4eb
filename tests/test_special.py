"""Special-Package: discovery beside the challenge, tolerant labels.txt, the score table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pixelplay_lib.data import load_challenge
from pixelplay_lib.special import find_special_package, load_special_package, score_table

CLASSES = ["antelope", "grizzly+bear", "blue+whale", "fox", "horse"]
UNSEEN = [3, 4]


def make_package(base: Path, labels: bytes | str, n_images: int = 4,
                 labels_where: str = "beside") -> Path:
    """A challenge root (classes.txt, train/, test/) and, beside it, the competition's
    Special-Package/Special-Package/final_examples/ with `labels`; returns the root."""
    root = base / "vlg-dataset" / "vlg-dataset"
    (root / "train" / "antelope").mkdir(parents=True)
    (root / "train" / "antelope" / "00001.jpg").write_bytes(b"x")
    (root / "test").mkdir()
    (root / "classes.txt").write_text("".join(f"{i}\t{c}\n" for i, c in enumerate(CLASSES, 1)))
    package = base / "Special-Package" / "Special-Package"
    images = package / "final_examples"
    images.mkdir(parents=True)
    for k in range(1, n_images + 1):
        (images / f"{k:05d}.jpg").write_bytes(b"jpeg")
    target = {"beside": package, "inside": images}[labels_where] / "labels.txt"
    if isinstance(labels, str):
        target.write_text(labels, newline="")
    else:
        target.write_bytes(labels)
    return root


def understood(package) -> list[tuple[str, str]]:
    return [(f.name, CLASSES[c]) for f, c in zip(package.files, package.labels, strict=True)]


EXPECTED = [("00001.jpg", "antelope"), ("00002.jpg", "blue+whale"), ("00003.jpg", "fox"),
            ("00004.jpg", "horse")]


@pytest.mark.parametrize("labels", [
    "00001.jpg\tantelope\n00002.jpg\tblue+whale\n00003.jpg\tfox\n00004.jpg\thorse\n",
    "image_id,class\n00001.jpg,antelope\n00002.jpg,Blue Whale\n00003.jpg,fox\n00004.jpg,Horse\n",
    "filename,label\r\n00001.jpg,antelope\r\n00002.jpg,\"blue whale\"\r\n00003.jpg,FOX\r\n"
    "00004.jpg,horse\r\n",
    "00001.jpg antelope\n00002.jpg Blue Whale\n00003.jpg fox\n00004.jpg horse\n",
    "1 antelope\n2 blue_whale\n3 fox\n4 horse\n",
    "00001 antelope\n00002 blue+whale\n00003 fox\n\n00004 horse\n",
    "1\t00001.jpg\tantelope\n2\t00002.jpg\tblue+whale\n3\t00003.jpg\tfox\n4\t00004.jpg\thorse\n",
    "00001.jpg;antelope\n00002.jpg;blue+whale\n00003.jpg;fox\n00004.jpg;horse\n",
    "00001.jpg\t1\n00002.jpg\t3\n00003.jpg\t4\n00004.jpg\t5\n",  # 1-based: 5 = last class
], ids=["tab", "csv-header-spaces", "crlf-quoted", "spaces", "numbers", "stems", "numbered-rows",
        "semicolon", "class-numbers"])
def test_labels_formats_are_all_understood(tmp_path, labels):
    root = make_package(tmp_path, labels)
    package, message = load_special_package(root, CLASSES)
    assert message == ""
    assert understood(package) == EXPECTED and package.problems == []


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16"])
def test_bom_and_utf16_files(tmp_path, encoding):
    text = "00001.jpg\tantelope\r\n00002.jpg\tblue+whale\r\n00003.jpg\tfox\r\n00004.jpg\thorse\r\n"
    root = make_package(tmp_path, text.encode(encoding), labels_where="inside")
    package, _ = load_special_package(root, CLASSES)
    assert understood(package) == EXPECTED
    assert package.unlabelled == []  # labels.txt inside final_examples/ is not an image


def test_problem_lines_are_reported_by_number_and_the_rest_kept(tmp_path):
    labels = ("00001.jpg\tantelope\n"
              "00002.jpg\twalrus2\n"        # line 2: unknown class
              "00009.jpg\tfox\n"            # line 3: no such image
              "00003.jpg\n"                 # line 4: no class
              "00001.jpg\tfox\n"            # line 5: contradicts line 1
              "00004.jpg\thorse\n")
    root = make_package(tmp_path, labels, n_images=5)
    package, _ = load_special_package(root, CLASSES)
    assert understood(package) == [("00001.jpg", "antelope"), ("00004.jpg", "horse")]
    assert [p.split(":")[0] for p in package.problems] == ["line 2", "line 3", "line 4",
                                                           "line 5"]
    assert "unknown class 'walrus2'" in package.problems[0]
    assert "no image '00009.jpg'" in package.problems[1]
    assert "labelled antelope on an earlier line" in package.problems[3]
    summary = package.summary(CLASSES, UNSEEN)
    assert "2 labelled images" in summary and "1 unseen (horse)" in summary
    assert "4 line(s) not understood: line 2" in summary
    assert "3 image(s)" in summary and "00002.jpg" in summary  # 2, 3, 5 have no usable line


def test_ambiguous_class_numbers_are_not_guessed(tmp_path):
    # 1..4 without 0 or 5: could count from 0 or from 1, so no line is understood
    root = make_package(tmp_path, "00001.jpg 1\n00002.jpg 2\n00003.jpg 3\n00004.jpg 4\n")
    package, message = load_special_package(root, CLASSES)
    assert package is None
    assert "no line of" in message and "numbered classes are ambiguous" in message
    assert "expected lines like" in message


def test_absent_package_and_unreadable_labels_give_a_line_not_a_crash(tmp_path):
    root = make_package(tmp_path / "a", "00001.jpg antelope\n")
    (root.parents[1] / "Special-Package" / "Special-Package" / "labels.txt").unlink()
    package, message = load_special_package(root, CLASSES)
    assert package is None and message.startswith("Special-Package: not found")
    root = make_package(tmp_path / "b", b"\x00\x01binary\x00junk")
    package, message = load_special_package(root, CLASSES)
    assert package is None and "NUL bytes" in message and "not scored" in message


def test_discovery_beside_the_root_and_under_input_root(tmp_path, demo_root):
    # the demo layout: vlg-dataset/{vlg-dataset, Special-Package/Special-Package}
    images, labels = find_special_package(demo_root)
    assert images.name == "final_examples" and labels.name == "labels.txt"
    assert demo_root not in images.parents
    ch = load_challenge(demo_root)
    package, message = load_special_package(demo_root, ch.classes)
    assert message == "" and len(package.files) == 10 and package.problems == []
    truth = dict(line.split("\t") for line in labels.read_text().splitlines())
    assert understood_names(package, ch.classes) == truth
    # elsewhere on Kaggle: under input_root, several levels away from the challenge
    root = make_package(tmp_path / "comp", "00001.jpg\tfox\n")
    moved = tmp_path / "inputs" / "datasets" / "someone" / "special"
    moved.parent.mkdir(parents=True)
    (tmp_path / "comp" / "Special-Package").rename(moved)
    assert find_special_package(root) is None
    images, _ = find_special_package(root, tmp_path / "inputs")
    assert images == moved / "Special-Package" / "final_examples"


def understood_names(package, classes) -> dict[str, str]:
    return {f.name: classes[c] for f, c in zip(package.files, package.labels, strict=True)}


def test_score_table_overall_seen_unseen_and_per_class():
    truth = np.array([0, 0, 2, 3, 4, 4])
    fused = np.array([0, 1, 2, 3, 4, 0])
    scores = np.eye(5)[[0, 0, 2, 0, 0, 0]]  # an expert given as scores: argmax taken
    table = score_table({"fusion": fused, "resnet": scores}, truth, CLASSES, UNSEEN)
    assert list(table.index) == ["overall", "seen", "unseen", "antelope", "blue+whale", "fox",
                                 "horse"]
    assert table["images"].tolist() == [6, 3, 3, 2, 1, 1, 2]
    assert table.loc["overall", "fusion"] == pytest.approx(4 / 6)
    assert table.loc["seen", "fusion"] == pytest.approx(2 / 3)
    assert table.loc["unseen", "fusion"] == pytest.approx(2 / 3)
    assert table.loc["horse", "fusion"] == 0.5 and table.loc["fox", "resnet"] == 0.0
    assert table.loc["seen", "resnet"] == 1.0
    with pytest.raises(ValueError, match="expert 'bad' has 2 rows for 6"):
        score_table({"bad": np.zeros(2)}, truth, CLASSES, UNSEEN)
