"""Finding the challenge, reading classes and samples, splitting, loading odd images."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixelplay_lib.data import (
    DataError,
    find_challenge_root,
    load_challenge,
    load_class_attributes,
    load_rgb,
    read_classes,
    split_train_val,
)


def make_layout(root: Path, classes: list[str], train: dict[str, int], n_test: int = 2) -> Path:
    root.mkdir(parents=True)
    (root / "classes.txt").write_text(
        "".join(f"{i + 1:6d}\t{c}\n" for i, c in enumerate(classes)))
    for name, n in train.items():
        (root / "train" / name).mkdir(parents=True)
        for k in range(n):
            Image.new("RGB", (8, 8), (k, 0, 0)).save(root / "train" / name / f"{k:05d}.jpg")
    (root / "test").mkdir()
    for k in range(n_test):
        Image.new("RGB", (8, 8)).save(root / "test" / f"{k + 1:05d}.jpg")
    return root


def test_class_order_follows_classes_txt(demo_root):
    ch = load_challenge(demo_root)
    listed = [line.split("\t", 1)[1].strip()
              for line in (demo_root / "classes.txt").read_text().splitlines()]
    assert ch.classes == listed and len(ch.classes) == 50
    assert "blue+whale" in ch.classes  # the trailing space is stripped
    for path, label in ch.train_samples:
        assert ch.classes[label] == path.parent.name


def test_seen_and_unseen_are_computed(demo_root):
    ch = load_challenge(demo_root)
    unseen = {ch.classes[i] for i in ch.unseen}
    assert unseen == {"chimpanzee", "collie", "fox", "gorilla", "horse", "moose", "rabbit",
                      "rhinoceros", "sheep", "squirrel"}
    assert len(ch.seen) == 40 and not set(ch.seen) & set(ch.unseen)


def test_non_image_files_are_ignored(demo_root):
    ch = load_challenge(demo_root)
    names = {p.name for p, _ in ch.train_samples} | {p.name for p in ch.test_files()}
    assert ".DS_Store" not in names and "Thumbs.db" not in names
    assert len(ch.test_files()) == 40


def test_root_is_found_by_searching_not_confused_by_the_extra_package(demo_dir, demo_root):
    assert find_challenge_root(demo_dir) == demo_root
    assert find_challenge_root("", input_root=demo_dir) == demo_root  # the Kaggle default


def test_several_roots_are_an_error_naming_them(tmp_path):
    make_layout(tmp_path / "a" / "x", ["cat", "dog"], {"cat": 1})
    make_layout(tmp_path / "b" / "y", ["cat", "dog"], {"cat": 1})
    with pytest.raises(DataError, match="several challenge folders"):
        find_challenge_root(tmp_path)


def test_missing_data_folder_names_the_path(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / "nowhere")):
        find_challenge_root(tmp_path / "nowhere")
    with pytest.raises(DataError, match="no challenge found"):
        find_challenge_root(tmp_path)


def test_train_folder_missing_from_classes_txt(tmp_path):
    root = make_layout(tmp_path / "c", ["cat", "dog"], {"cat": 1, "zebra": 1})
    with pytest.raises(DataError, match="zebra"):
        load_challenge(root)


def test_empty_dataset_and_missing_test(tmp_path):
    root = make_layout(tmp_path / "c", ["cat", "dog"], {"cat": 0})
    with pytest.raises(DataError, match="no training images"):
        load_challenge(root)
    root = make_layout(tmp_path / "d", ["cat", "dog"], {"cat": 2})
    shutil.rmtree(root / "test")
    ch = load_challenge(root)
    with pytest.raises(DataError, match=str(root / "test")):
        ch.test_files()


@pytest.mark.parametrize("text, expected", [
    ("     1\tantelope\n     2\tblue+whale \n", ["antelope", "blue+whale"]),
    ("antelope\n\nblue+whale\n", ["antelope", "blue+whale"]),
    ("1 antelope\r\n2 grizzly+bear\r\n", ["antelope", "grizzly+bear"]),
])
def test_read_classes_formats(tmp_path, text, expected):
    (tmp_path / "classes.txt").write_text(text)
    assert read_classes(tmp_path / "classes.txt") == expected


def test_split_is_stratified_deterministic_and_disjoint(demo_root):
    samples = load_challenge(demo_root).train_samples
    train, val = split_train_val(samples, 0.15, seed=3)
    assert not set(train) & set(val)
    assert sorted(train + val) == list(range(len(samples)))
    assert (train, val) == split_train_val(samples, 0.15, seed=3)
    assert (train, val) != split_train_val(samples, 0.15, seed=4)
    per_class = Counter(label for _, label in samples)
    val_per_class = Counter(samples[i][1] for i in val)
    for label, n in per_class.items():
        assert val_per_class[label] == max(1, round(n * 0.15))


def make_odd_image(path: Path, kind: str) -> None:
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[:, :15] = (200, 30, 30)  # left half red: orientation is checkable
    img = Image.fromarray(rgb)
    if kind == "L":
        img.convert("L").save(path, "JPEG")
    elif kind == "CMYK":
        img.convert("CMYK").save(path, "JPEG")
    elif kind == "P":
        img.convert("P").save(path, "PNG")
    elif kind == "RGBA":
        img.convert("RGBA").save(path, "PNG")
    elif kind == "I;16":
        Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(path, "PNG")
    elif kind == "png-as-jpg":
        img.save(path, "PNG")
    elif kind == "exif":
        exif = Image.Exif()
        exif[0x0112] = 6  # stored rotated: viewers turn it 90 degrees clockwise
        img.transpose(Image.Transpose.ROTATE_90).save(path, "JPEG", exif=exif)


@pytest.mark.parametrize("kind", ["L", "CMYK", "P", "RGBA", "I;16", "png-as-jpg", "exif"])
def test_load_rgb_any_mode(tmp_path, kind):
    path = tmp_path / "x.jpg"
    make_odd_image(path, kind)
    img = load_rgb(path)
    assert img.mode == "RGB" and img.size == (30, 20)
    a = np.asarray(img).astype(int)
    # the left half stays brighter than the right half (16-bit scaled, not clipped to white)
    assert a[:, :10].mean() > a[:, 20:].mean() + 20


def test_draft_decode_keeps_the_short_side(tmp_path):
    path = tmp_path / "big.jpg"
    Image.new("RGB", (1600, 1000), (10, 200, 10)).save(path)
    img = load_rgb(path, min_side=230)
    assert min(img.size) >= 230 and img.size[0] < 1600


def test_attributes_from_the_challenge_or_bundled(demo_root, tmp_path):
    ch = load_challenge(demo_root)
    matrix, source = load_class_attributes(ch.root, ch.classes)
    assert matrix.shape == (50, 85) and source.endswith("predicate-matrix-continuous.txt")
    assert (matrix >= 0).all()  # -1 (missing) filled in
    bundled, source = load_class_attributes(tmp_path, ch.classes)
    assert source == "bundled AwA2 table"
    np.testing.assert_allclose(bundled, matrix, atol=0.01)
    with pytest.raises(DataError, match="unicorn"):
        load_class_attributes(tmp_path, ch.classes + ["unicorn"])


def test_wrong_attribute_file_fails_clearly(tmp_path):
    (tmp_path / "predicate-matrix-continuous.txt").write_text("1 2 3\n4 5 6\n")
    with pytest.raises(DataError, match="2 rows"):
        load_class_attributes(tmp_path, ["a", "b", "c"])
    (tmp_path / "predicate-matrix-continuous.txt").write_text("1 2 x\n")
    with pytest.raises(DataError, match="not a numeric matrix"):
        load_class_attributes(tmp_path, ["a"])


def test_folder_names_match_classes_whatever_case_and_separator(tmp_path):
    root = make_layout(tmp_path / "c", ["antelope", "blue+whale"],
                       {"Blue Whale": 2, "ANTELOPE": 1})
    ch = load_challenge(root)
    assert {ch.classes[label] for _, label in ch.train_samples} == {"antelope", "blue+whale"}
    assert ch.unseen == []


def test_a_nested_test_folder_is_found(tmp_path):
    root = make_layout(tmp_path / "c", ["cat", "dog"], {"cat": 2}, n_test=0)
    (root / "test" / "test").mkdir()
    Image.new("RGB", (8, 8)).save(root / "test" / "test" / "00001.jpg")
    assert [p.name for p in load_challenge(root).test_files()] == ["00001.jpg"]
