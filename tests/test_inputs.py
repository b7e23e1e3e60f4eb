"""Real-world inputs (issue 12): nothing is lost silently and every message names the cause.

Each kind is tested with at least two instances: file names the listing must not drop,
text files in the encodings editors write, class folders one level deeper, names that are
not valid UTF-8, values in the spellings users type, lenient decoding of test images.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli, tiny_config
from PIL import Image

from pixelplay_lib.config import make_config
from pixelplay_lib.data import DataError, load_challenge, read_classes, read_text_file
from pixelplay_lib.pipeline import build_cache
from pixelplay_lib.predict import write_submission

# Real AwA2 names (the bundled attribute table knows them).
CLASSES = ["antelope", "grizzly+bear", "killer+whale", "beaver", "dalmatian"]
NON_UTF8 = b"caf\x82_zz.jpg"  # a Windows (cp437/cp850) zip name unpacked on Linux


@pytest.fixture
def logs(caplog):
    """The pixelplay logger's records (it does not propagate once set up)."""
    logger = logging.getLogger("pixelplay")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="pixelplay")
    yield caplog
    logger.removeHandler(caplog.handler)


def jpeg(path: Path | bytes, color=(200, 30, 30), size=(40, 32)) -> None:
    """A small valid JPEG at `path` (a bytes path for names that are not valid UTF-8)."""
    with open(path, "wb") as f:
        Image.new("RGB", size, color).save(f, format="JPEG")


def layout(root: Path, n_per_class: int = 4) -> Path:
    """The challenge layout: classes.txt (numbered), train/<class>/ for the first three
    classes, test/ with four ordinary images."""
    root.mkdir(parents=True)
    (root / "classes.txt").write_text("".join(f"{i + 1}\t{c}\n" for i, c in enumerate(CLASSES)))
    for k, name in enumerate(CLASSES[:3]):
        (root / "train" / name).mkdir(parents=True)
        for j in range(n_per_class):
            jpeg(root / "train" / name / f"{j:03d}.jpg", (60 * k, 200 - 50 * k, 40 * j))
    (root / "test").mkdir()
    for j in range(4):
        jpeg(root / "test" / f"{j + 1:05d}.jpg", (50 * j, 80, 120))
    return root


def add_junk(folder: Path) -> None:
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (folder / "._00001.jpg").write_bytes(b"\x00\x05\x16\x07")  # macOS resource fork
    (folder / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (folder / "desktop.ini").write_text("[.ShellClassInfo]\n")
    for sub in ("__MACOSX", ".ipynb_checkpoints"):
        (folder / sub).mkdir()
        jpeg(folder / sub / "copy.jpg")


# --------------------------------------------------------------------------- 1. listing
def test_every_non_junk_file_is_listed_whatever_its_extension(tmp_path, logs):
    root = layout(tmp_path / "c")
    for folder in (root / "test", root / "train" / "antelope"):
        jpeg(folder / "zz_download.jfif")
        jpeg(folder / "photo.JPG_large")
        jpeg(folder / "no_extension")
        (folder / "notes.txt").write_text("not an image")
        add_junk(folder)
    (root / "train" / "stray.jpg").write_bytes(b"x")  # outside any class folder
    ch = load_challenge(root)
    test_names = [p.name for p in ch.test_files()]
    assert test_names == ["00001.jpg", "00002.jpg", "00003.jpg", "00004.jpg", "no_extension",
                          "notes.txt", "photo.JPG_large", "zz_download.jfif"]
    antelope = sorted(p.name for p, label in ch.train_samples if label == 0)
    assert antelope == ["000.jpg", "001.jpg", "002.jpg", "003.jpg", "no_extension",
                        "notes.txt", "photo.JPG_large", "zz_download.jfif"]
    assert ch.ignored == {root / "train" / "stray.jpg": "not inside a class folder of train/"}
    assert "stray.jpg" in logs.text and "no_extension" in logs.text


# --------------------------------------------------------------------------- 2. text files
@pytest.mark.parametrize("data, how", [
    ("\ufeff1\tantelope\r\n2\tgrizzly+bear\r\n".encode(), "UTF-8 with BOM, CRLF"),
    ("\ufeff1. antelope\n2. grizzly+bear \n".encode("utf-16-le"), "UTF-16 LE with BOM"),
    ("\ufeffantelope\r\ngrizzly+bear\r\n".encode("utf-16-be"), "UTF-16 BE with BOM"),
    ("antelope\u00a0\ngrizzly+bear\r".encode("cp1252"), "Windows-1252, CR"),
])
def test_class_lists_in_editor_encodings(tmp_path, data, how):
    (tmp_path / "classes.txt").write_bytes(data)
    assert read_classes(tmp_path / "classes.txt") == ["antelope", "grizzly+bear"], how


def test_a_bom_class_list_loads_with_exact_names(tmp_path):
    root = layout(tmp_path / "c")
    text = "".join(f"     {i + 1}\t{c}\r\n" for i, c in enumerate(CLASSES))
    (root / "classes.txt").write_bytes(b"\xef\xbb\xbf" + text.encode())
    ch = load_challenge(root)
    assert ch.classes == CLASSES and ch.seen == [0, 1, 2]


@pytest.mark.parametrize("data, cause", [
    ("antelope\n".encode("utf-16-le"), "NUL bytes"),  # UTF-16 without a BOM
    (b"\xff\xfe\x00\xd8", "utf-16-le"),  # a BOM, then an unpaired surrogate
    (b"antelope\x81\x8d\n", "neither UTF-8 nor Windows-1252"),
])
def test_undecodable_text_names_the_file_and_the_encoding_to_use(tmp_path, data, cause):
    path = tmp_path / "predicates.txt"
    path.write_bytes(data)
    with pytest.raises(DataError, match=cause) as info:
        read_text_file(path)
    assert str(path) in str(info.value) and "UTF-8" in str(info.value)


def test_attribute_matrix_in_utf16_is_read(tmp_path):
    from pixelplay_lib.data import load_class_attributes

    (tmp_path / "predicate-matrix-continuous.txt").write_bytes(
        "\ufeff1 2 3\r\n4 5 6\r\n".encode("utf-16-le"))
    matrix, _ = load_class_attributes(tmp_path, ["a", "b"])
    np.testing.assert_array_equal(matrix, [[1, 2, 3], [4, 5, 6]])


# --------------------------------------------------------------------------- 3. nesting
def test_nested_class_folders_count_for_their_class(tmp_path, logs):
    root = layout(tmp_path / "c", n_per_class=0)
    (root / "train" / "antelope" / "antelope").mkdir()
    (root / "train" / "grizzly+bear" / "a" / "b").mkdir(parents=True)
    for j in range(3):
        jpeg(root / "train" / "antelope" / "antelope" / f"{j}.jpg")
        jpeg(root / "train" / "grizzly+bear" / "a" / "b" / f"{j}.jpg")
    jpeg(root / "train" / "killer+whale" / "top.jpg")
    add_junk(root / "train" / "killer+whale")
    ch = load_challenge(root)
    assert ch.seen == [0, 1, 2]
    assert sum(1 for _, label in ch.train_samples if label == 0) == 3
    assert sum(1 for _, label in ch.train_samples if label == 2) == 1  # junk not counted
    assert "antelope/antelope" in logs.text and "grizzly+bear/a/b" in logs.text


def test_every_unseen_class_says_why(tmp_path, logs):
    root = layout(tmp_path / "c")
    (root / "train" / "beaver").mkdir()  # empty
    add_junk(root / "train" / "beaver")  # ... but for junk
    ch = load_challenge(root)
    assert ch.unseen == [3, 4]
    assert "holds no data files" in ch.unseen_reasons[3]
    assert "no folder dalmatian" in ch.unseen_reasons[4]
    assert "beaver" in logs.text and "dalmatian" in logs.text
    bad = [p for p, label in ch.train_samples if label == 1]
    assert ch.classes_without_readable_files(bad) == {1: "its 4 file(s) in train/ are all "
                                                      "unreadable"}
    assert "grizzly+bear has no training images" in logs.text


# --------------------------------------------------------------------------- 4. names
def test_non_utf8_names_go_through_listing_cache_and_csv(tmp_path, logs):
    root = layout(tmp_path / "c")
    for folder in (root / "test", root / "train" / "antelope"):
        jpeg(os.path.join(os.fsencode(folder), NON_UTF8))
        jpeg(os.path.join(os.fsencode(folder), b"\xe9t\xe9.jpg"))  # Latin-1 "été"
    ch = load_challenge(root)
    files = ch.test_files()
    assert os.fsdecode(NON_UTF8) in [p.name for p in files]
    cache = build_cache(files, 24, tmp_path / "cache", workers=0)
    assert not cache.errors and cache.paths == files  # meta.json round-trips the names
    frame = pd.DataFrame({"image_id": [p.name for p in files], "class": "antelope"})
    out = write_submission(frame, files, CLASSES, tmp_path / "submission.csv")
    lines = out.read_bytes().splitlines()
    assert len(lines) == 1 + len(files)
    assert NON_UTF8 + b",antelope" in lines and b"\xe9t\xe9.jpg,antelope" in lines


def test_cli_train_and_predict_on_awkward_inputs(tmp_path):
    """All kinds together through the CLI: BOM'd class list, a nested class folder, .jfif,
    no extension, a non-UTF-8 name, junk; the submission has a row per test file."""
    root = layout(tmp_path / "c")
    text = "".join(f"{i + 1}\t{c}\r\n" for i, c in enumerate(CLASSES))
    (root / "classes.txt").write_bytes(b"\xef\xbb\xbf" + text.encode())
    (root / "train" / "beaver" / "beaver").mkdir(parents=True)
    for j in range(3):
        jpeg(root / "train" / "beaver" / "beaver" / f"{j}.jpg", (0, 0, 90 * j))
    for folder in (root / "test", root / "train" / "antelope"):
        jpeg(folder / "zz_download.jfif")
        jpeg(folder / "no_extension")
        jpeg(os.path.join(os.fsencode(folder), NON_UTF8))
        add_junk(folder)
    out = tmp_path / "out"
    cfg = tiny_config(root, out, zero_shot="off", val_fraction=0.2)
    flags = [f"--{k.replace('_', '-')}={','.join(map(str, v)) if isinstance(v, tuple) else v}"
             for k, v in cfg.to_dict().items() if k in ("data_root", "output_dir", "arch",
                                                         "weights", "trainable", "image_size",
                                                         "epochs", "num_workers", "input_root",
                                                         "zero_shot", "val_fraction")]
    result = run_cli("train", *flags, "--milestones", "[5, 8]")
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_images"] + summary["val_images"] == 4 * 3 + 3 + 3
    assert not summary["unreadable"]
    result = run_cli("predict", *flags[:2], "--num-workers=0", "--tta-votes=1",
                     f"--input-root={cfg.input_root}")
    assert result.returncode == 0, result.stderr[-2000:]
    ids = [line.split(b",")[0] for line in (out / "submission.csv").read_bytes().splitlines()]
    expected = sorted(os.listdir(os.fsencode(root / "test")))
    expected = [n for n in expected if n in (b"00001.jpg", b"00002.jpg", b"00003.jpg",
                                             b"00004.jpg", b"zz_download.jfif",
                                             b"no_extension", NON_UTF8)]
    assert ids[0] == b"image_id" and sorted(ids[1:]) == sorted(expected) and len(ids) == 8


# --------------------------------------------------------------------------- 5. values
@pytest.mark.parametrize("value", ["[16, 21]", "(16, 21)", "16,21", "16 21", " 16, 21 ",
                                   [16, 21], (16.0, 21)])
def test_milestones_in_the_spellings_users_type(value):
    assert make_config(milestones=value).milestones == (16, 21)


@pytest.mark.parametrize("field, value, forms", [
    ("milestones", "[16, x]", "16,21 or 16 21"),
    ("epochs", "ten", "an integer"),
    ("epochs", 2.5, "an integer"),
    ("cache", "maybe", "true/false"),
    ("lr", "fast", "a number"),
])
def test_uncoercible_values_name_field_value_and_forms(field, value, forms):
    with pytest.raises(ValueError, match=forms) as info:
        make_config(**{field: value})
    assert f"{field}={value!r}" in str(info.value)


def test_cli_bad_value_is_an_error_line_with_exit_2():
    result = run_cli("train", "--milestones", "16;21", "--data-root", "/nonexistent")
    assert result.returncode == 2
    assert result.stderr.startswith("error: milestones='16;21'") and "[16, 21]" in result.stderr


def test_frozen_random_blocks_warn_with_the_flag_to_use(logs):
    make_config(weights="none", trainable="layer4,fc")
    assert "--trainable all" in logs.text
    logs.clear()
    make_config(weights="none", trainable="all")
    make_config(weights="imagenet", trainable="layer4,fc")
    assert "--trainable all" not in logs.text


# --------------------------------------------------------------------------- also
def test_sample_submission_ids_without_extension_match_by_stem(tmp_path):
    files = [tmp_path / "00002.jpg", tmp_path / "00001.jpeg"]
    sample = tmp_path / "sample_submission.csv"
    sample.write_text("id,label\n00002,x\n00001,x\n")
    frame = pd.DataFrame({"image_id": ["00001.jpeg", "00002.jpg"], "class": ["a", "b"]})
    write_submission(frame, files, ["a", "b"], tmp_path / "sub.csv", sample)
    assert (tmp_path / "sub.csv").read_text() == "id,label\n00002,b\n00001,a\n"


def test_test_images_failing_strict_decoding_are_decoded_leniently(tmp_path, monkeypatch):
    truncated, huge, broken = tmp_path / "t.jpg", tmp_path / "h.png", tmp_path / "b.jpg"
    noise = np.random.default_rng(0).integers(0, 60, (96, 128), dtype=np.uint8)
    red = np.stack([np.full_like(noise, 250), noise, noise], -1)
    Image.fromarray(red).save(truncated, quality=95)
    truncated.write_bytes(truncated.read_bytes()[:truncated.stat().st_size // 2])
    Image.new("RGB", (64, 64), (0, 250, 0)).save(huge)
    broken.write_bytes(b"\xff\xd8\xff not a jpeg")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 x 64 > 2 x limit: refused
    files = [truncated, huge, broken]
    strict = build_cache(files, 24, tmp_path / "strict", workers=0)
    assert sorted(strict.errors) == [0, 1, 2] and not strict.lenient
    lenient = build_cache(files, 24, tmp_path / "lenient", workers=0, lenient=True)
    assert sorted(lenient.lenient) == [0, 1] and sorted(lenient.errors) == [2]
    assert "DecompressionBomb" in lenient.lenient[1]
    assert lenient.get(0)[0, :, 0].mean() > 200  # the decoded part is red, not blank
    assert lenient.get(1)[..., 1].mean() > 200
    assert Image.MAX_IMAGE_PIXELS == 1000  # the lenient settings did not leak
