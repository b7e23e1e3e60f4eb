"""Real-world inputs (issue 12): nothing is lost silently and every message names the cause.

Each kind is tested with at least two instances: file names the listing must not drop,
text files in the encodings editors write, class folders one level deeper, names that are
not valid UTF-8, values in the spellings users type, lenient decoding of test images,
files that only look like images (HEIC, a web page, ... named .jpg; Pillow issue 2806).
"""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli, tiny_config
from PIL import Image, features

from pixelplay_lib.analysis import image_stats
from pixelplay_lib.config import make_config
from pixelplay_lib.data import (
    DataError,
    UnsupportedImageFile,
    load_challenge,
    load_rgb,
    read_classes,
    read_text_file,
)
from pixelplay_lib.pipeline import build_cache, header_size
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


# --------------------------------------------------------------------------- 6. odd files
def pillow_image(fmt: str, color=(10, 200, 30), size=(40, 32)) -> bytes:
    """A small image as this Pillow writes it in `fmt` (AVIF, WEBP, ...)."""
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format=fmt)
    return buffer.getvalue()


def iso_media(major: bytes, *compatible: bytes) -> bytes:
    """An ISO-BMFF file declaring (major, compatible) brands in its ftyp box, then the boxes
    of a real image file (Pillow's AVIF output): how a phone's HEIC begins (ftyp heic with
    mif1, heic; or ftyp mif1 with heic, which Pillow's AVIF plugin tries and refuses)."""
    avif = pillow_image("AVIF") if features.check("avif") else b"\x00\x00\x00\x08free"
    body = avif[int.from_bytes(avif[:4], "big"):] if avif[4:8] == b"ftyp" else avif
    box = b"ftyp" + major + b"\x00\x00\x00\x00" + b"".join(compatible)
    return (len(box) + 4).to_bytes(4, "big") + box + body


HTML_403 = (b"<!DOCTYPE html>\n<html><head><title>403 Forbidden</title></head>\n<body><h1>"
            b"Forbidden</h1><p>You don't have permission to access this resource.</p></body>"
            b"</html>\n")
# (content, what the message must call it, a word of the fix it must give)
AVIF_OR_JXL = ((iso_media(b"avif", b"avif", b"mif1", b"miaf") + b"\x00" * 64,
                "AVIF (ftyp avif)", "upgrade Pillow")
               if not features.check("avif") else  # this Pillow decodes AVIF: see below
               (b"\xff\x0a\xfa\x7f\x01\x90\x08\x06\x01\x00" + bytes(range(64)),
                "JPEG XL (codestream)", "djxl"))
UNDECODABLE = {
    "heic": (iso_media(b"heic", b"mif1", b"heic"), "HEIC/HEIF container (ftyp heic)",
             "heif-convert"),
    "heic-mif1": (iso_media(b"mif1", b"mif1", b"heic"), "HEIC/HEIF container (ftyp mif1)",
                  "pillow-heif"),
    "html": (HTML_403, "HTML page", "download the image again"),
    "avif-or-jxl": AVIF_OR_JXL,
    "empty": (b"", "empty file (0 bytes)", "download the image again"),
    "pdf": (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n",
            "PDF document", "pdftoppm"),
}


@pytest.mark.parametrize("kind", list(UNDECODABLE))
def test_files_pillow_cannot_open_say_what_they_are_and_the_fix(tmp_path, kind):
    content, found, fix = UNDECODABLE[kind]
    path = tmp_path / "00042.jpg"
    path.write_bytes(content)
    for read in (load_rgb, header_size):  # the decoder and the cache's header pass
        with pytest.raises(UnsupportedImageFile) as info:
            read(path)
        assert info.value.found == found
        assert str(info.value).startswith(f"{path}: {found}: ") and fix in str(info.value)
    row = image_stats([path], workers=1).iloc[0]  # what the explore notebook lists
    assert row["format"] == found and fix in row["error"]


@pytest.mark.parametrize("fmt", [
    pytest.param("AVIF", marks=pytest.mark.skipif(not features.check("avif"),
                                                  reason="this Pillow has no AVIF decoder")),
    "WEBP",
])
def test_other_formats_behind_a_jpg_name_decode_by_content(tmp_path, fmt):
    path = tmp_path / "00042.jpg"
    path.write_bytes(pillow_image(fmt, color=(10, 200, 30)))
    img = load_rgb(path)
    assert img.mode == "RGB" and img.size == (40, 32)
    assert np.abs(np.asarray(img, dtype=int) - (10, 200, 30)).max() < 16  # lossy, same colour
    cache = build_cache([path], 24, tmp_path / "cache", workers=0)
    assert not cache.errors and cache.get(0).shape == (24, 30, 3)


def test_cli_skips_odd_training_files_and_flags_odd_test_files(tmp_path):
    """Training files Pillow cannot open are skipped and listed in summary.json with what
    they are; test files keep their row and are listed under `undecodable` in
    submission.summary.json with the same reason; an AVIF named .jpg is just an image."""
    root = layout(tmp_path / "c")
    odd = {name: UNDECODABLE[name] for name in ("heic", "html", "avif-or-jxl")}
    decodable = pillow_image("AVIF" if features.check("avif") else "WEBP")
    for folder in (root / "train" / "antelope", root / "test"):
        for name, (content, _, _) in odd.items():
            (folder / f"odd-{name}.jpg").write_bytes(content)
        (folder / "photo-by-content.jpg").write_bytes(decodable)
    out = tmp_path / "out"
    flags = [f"--data-root={root}", f"--output-dir={out}", "--arch=resnet18", "--weights=none",
             "--trainable=all", "--image-size=32", "--epochs=1", "--num-workers=0",
             "--zero-shot=off", "--val-fraction=0.2", f"--input-root={tmp_path / 'none'}"]
    result = run_cli("train", *flags)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_images"] + summary["val_images"] == 4 * 3 + 1  # + the AVIF/WebP
    unreadable = summary["unreadable"]
    assert sorted(unreadable) == sorted(str(root / "train" / "antelope" / f"odd-{n}.jpg")
                                        for n in odd)
    for name, (_, found, fix) in odd.items():
        reason = unreadable[str(root / "train" / "antelope" / f"odd-{name}.jpg")]
        assert found in reason and fix in reason
    result = run_cli("predict", *flags[:2], "--num-workers=0", "--tta-votes=1",
                     f"--input-root={tmp_path / 'none'}")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = pd.read_csv(out / "submission.csv", dtype=str)
    assert len(rows) == 4 + len(odd) + 1 and "photo-by-content.jpg" in set(rows["image_id"])
    undecodable = json.loads((out / "submission.summary.json").read_text())["undecodable"]
    assert sorted(undecodable) == sorted(f"odd-{n}.jpg" for n in odd)
    for name, (_, found, fix) in odd.items():
        assert found in undecodable[f"odd-{name}.jpg"] and fix in undecodable[f"odd-{name}.jpg"]
