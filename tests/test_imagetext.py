"""The image-text model path: loading (folder, fake Kaggle input, errors), class text
embeddings, image embeddings and their cache. Tiny random-weight models, offline."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config
from tiny_models import save_tiny

from pixelplay_lib.experts import imagetext
from pixelplay_lib.runtime import make_runtime

pytest.importorskip("transformers")  # the `vl` extra (imagetext imports it lazily)

CLASSES = ["killer+whale", "zebra", "polar+bear"]


@pytest.fixture(scope="module", params=["clip", "siglip"])
def tiny(request, tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp(f"tiny-{request.param}"), request.param)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("clip"), "clip")


class TensorFeatures(torch.nn.Module):
    """Simulates transformers 4.x, where get_image_features / get_text_features return the
    embedding tensor itself (5.x, installed here, returns BaseModelOutputWithPooling)."""

    def __init__(self, model):
        super().__init__()
        self.inner = model
        self.config = model.config
        self.logit_scale = model.logit_scale

    def get_image_features(self, **kw):
        return self.inner.get_image_features(**kw).pooler_output

    def get_text_features(self, **kw):
        return self.inner.get_text_features(**kw).pooler_output


def test_loads_by_path_and_embeds_class_texts(tiny: Path) -> None:
    itm = imagetext.load_model(str(tiny))
    assert itm.source == str(tiny)
    emb = imagetext.class_text_embeddings(itm, CLASSES)
    assert emb.shape[0] == 3 and emb.shape[1] in (16, 32)  # CLIP projects to 16
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)
    assert not np.allclose(emb[0], emb[1])  # different names, different rows
    side, mean, std = itm.view_settings()
    assert side == 32 and len(mean) == 3 and len(std) == 3
    assert itm.logit_scale > 0


def test_both_feature_conventions_give_the_same_embeddings(tiny: Path) -> None:
    itm = imagetext.load_model(str(tiny))
    as_tensor = imagetext.ImageTextModel(TensorFeatures(itm.model), itm.processor, itm.name,
                                         itm.source)
    v5 = imagetext.class_text_embeddings(itm, CLASSES)
    v4 = imagetext.class_text_embeddings(as_tensor, CLASSES)
    np.testing.assert_allclose(v4, v5, atol=1e-6)
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        np.testing.assert_allclose(imagetext._Tower(as_tensor.model)(x).numpy(),
                                   imagetext._Tower(itm.model)(x).numpy(), atol=1e-6)


def test_found_under_a_kaggle_models_mount(tiny_clip: Path, tmp_path: Path) -> None:
    mount = tmp_path / "input" / "tiny-clip-demo" / "transformers" / "default" / "1"
    shutil.copytree(tiny_clip, mount)
    (tmp_path / "input" / "other" / "transformers" / "x" / "1").mkdir(parents=True)
    itm = imagetext.load_model("someone/tiny-clip-demo", input_root=str(tmp_path / "input"),
                               dtype=torch.float16)
    assert itm.source == str(mount)
    assert next(itm.model.parameters()).dtype == torch.float16


def test_found_by_name_or_path_in_a_dataset(tiny_clip: Path, tmp_path: Path) -> None:
    folder = tmp_path / "input" / "datasets" / "me" / "weights" / "snapshot"
    shutil.copytree(tiny_clip, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "_name_or_path": "org/m-7"}))
    assert imagetext.find_under(tmp_path / "input", "org/m-7") == folder


def test_weights_not_found_offline_fail_fast(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    started = time.monotonic()
    with pytest.raises(imagetext.ModelNotFound) as err:
        imagetext.load_model("nobody/no-such-clip", input_root=str(tmp_path))
    assert time.monotonic() - started < 20
    message = str(err.value)
    assert "input_root" in message and "Add Input" in message
    assert "download nobody/no-such-clip --local-dir ./models/no-such-clip" in message


def test_not_an_image_text_model(tmp_path: Path) -> None:
    from transformers import ViTConfig, ViTModel

    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=32, image_size=32, patch_size=8)).save_pretrained(
        tmp_path / "vit")
    with pytest.raises(imagetext.NotImageTextModel, match="vit.*not an image-text model"):
        imagetext.load_model(str(tmp_path / "vit"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(imagetext.IncompleteModelFolder, match="not a transformers model folder"):
        imagetext.load_model(str(tmp_path / "empty"))


def test_prompts_with_synonyms_and_templates(tmp_path: Path) -> None:
    templates = imagetext.read_templates()
    assert templates[0] == "a photo of a {}." and len(templates) >= 10
    prompts = imagetext.class_prompts(CLASSES, templates, imagetext.read_synonyms())
    assert "a photo of a killer whale." in prompts[0] and "a photo of a orca." in prompts[0]
    assert len(prompts[1]) == len(templates)  # zebra: no synonym
    assert imagetext.read_synonyms("none") == {}
    assert imagetext.read_synonyms(str(tmp_path / "missing.tsv")) == {}
    bad = tmp_path / "t.txt"
    bad.write_text("a photo of a thing\n")
    with pytest.raises(ValueError, match="t.txt"):
        imagetext.read_templates(str(bad))


def test_image_embeddings_are_cached(tiny_clip: Path, demo_root: Path, tmp_path: Path) -> None:
    cfg = tiny_config(demo_root, tmp_path / "out", vl_model=str(tiny_clip), vl_batch_size=8)
    itm = imagetext.load_model(cfg.vl_model)
    calls = []
    itm.model.vision_model.register_forward_hook(
        lambda module, args, kwargs, out: calls.append(kwargs["pixel_values"].shape[0]),
        with_kwargs=True)
    paths = sorted((demo_root / "test").iterdir())[:12]
    rt = make_runtime(cfg)
    first = imagetext.image_embeddings(itm, paths, cfg, rt)
    assert sum(calls) == 2 * len(first["index"])  # central view + mirror
    assert first["emb"].shape[0] + len(first["failed"]) == len(paths)
    np.testing.assert_allclose(np.linalg.norm(first["emb"], axis=1), 1.0, atol=1e-5)
    calls.clear()
    again = imagetext.image_embeddings(itm, paths, cfg, rt)
    assert calls == []  # no second forward pass
    np.testing.assert_array_equal(again["emb"], first["emb"])
    # the infer kernel: its own output_dir is empty, the train run is mounted below input_root
    # (an older session's <slug>/, and today's notebooks/<owner>/<kernel>/)
    for k, mounted in enumerate(["train-kernel", "notebooks/someone/pixelplay-train"]):
        inputs = tmp_path / f"input{k}"
        shutil.copytree(tmp_path / "out" / "embeddings", inputs / mounted / "embeddings")
        infer_cfg = tiny_config(demo_root, tmp_path / f"infer{k}", vl_model=str(tiny_clip),
                                vl_batch_size=8, input_root=str(inputs))
        imagetext.image_embeddings(itm, paths, infer_cfg, rt)
        assert calls == [], mounted


def test_embedding_key_takes_file_names_that_are_not_utf8(tmp_path):
    """A Windows zip unpacked on Linux gives names with raw bytes (surrogate-escaped str):
    the cache key must hash them, not crash, and tell them apart."""
    from pixelplay_lib.inference import ViewPlan

    odd = tmp_path / os.fsdecode(b"caf\x82_zz.jpg")
    odd.write_bytes(b"x")
    plain = tmp_path / "cafe_zz.jpg"
    plain.write_bytes(b"x")
    plan = ViewPlan(32)
    assert imagetext.embedding_key("m", [odd], plan) != imagetext.embedding_key("m", [plain],
                                                                                plan)


def test_predict_refuses_another_image_text_model_than_train_used():
    from pixelplay_lib.config import Config
    from pixelplay_lib.experts import Sources, check_same_text

    text = np.eye(3)
    src = Sources([], Config(), text=text)
    check_same_text(src, text + 1e-4, "org/a")  # the same model (fp16 noise)
    with pytest.raises(ValueError, match="other class embeddings.*org/a"):
        check_same_text(src, np.roll(text, 1, axis=0), "org/a")


# --------------------------------------------------------------------------- robustness


def pixelplay_log(caplog) -> pytest.LogCaptureFixture:
    """caplog receiving the project's logger (setup_logging turns its propagation off)."""
    import logging

    logger = logging.getLogger("pixelplay")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="pixelplay")
    return caplog


@pytest.fixture
def project_log(caplog):
    import logging

    yield pixelplay_log(caplog)
    logging.getLogger("pixelplay").removeHandler(caplog.handler)


def _drop(folder: Path, *names: str) -> None:
    for name in names:
        (folder / name).unlink()


def _sharded(folder: Path) -> None:
    """The weights as a two-shard index whose second shard never arrived."""
    (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))


@pytest.mark.parametrize("damage, missing", [
    (lambda f: _drop(f, "processor_config.json"), ["preprocessor_config.json or "
                                                   "processor_config.json"]),
    (lambda f: _drop(f, "tokenizer.json", "tokenizer_config.json"),
     ["tokenizer.json (or vocab.json + merges.txt", "tokenizer_config.json"]),
    (lambda f: (f / "model.safetensors").rename(f / "model.bin"),
     ["weights: model.safetensors or pytorch_model.bin", "found model.bin"]),
    (_sharded, ["weight shards listed in model.safetensors.index.json: "
                "model-00002-of-00002.safetensors"]),
    (lambda f: (f / "model.safetensors").rename(f / "tf_model.h5"),
     ["weights in TensorFlow/Flax format: re-save with PyTorch"]),
])
def test_incomplete_model_folder_is_named_before_loading(tiny_clip: Path, tmp_path: Path,
                                                         damage, missing) -> None:
    """A save_pretrained copy uploaded without its processor / tokenizer files or with its
    weights under another name (transformers #25804): every missing item in one message,
    with how to save the folder complete, before any weight is read."""
    folder = Path(shutil.copytree(tiny_clip, tmp_path / "copy"))
    assert imagetext.check_model_folder(folder) == []
    damage(folder)
    found = "; ".join(imagetext.check_model_folder(folder))
    assert all(m in found for m in missing), found
    with pytest.raises(imagetext.IncompleteModelFolder) as err:
        imagetext.load_model(str(folder))
    message = str(err.value)
    assert str(folder) in message and all(m in message for m in missing)
    assert "save_pretrained(DIR)" in message and "AutoProcessor" in message
    assert "Kaggle dataset" in message


@pytest.mark.parametrize("value, existing, entries", [
    ("{tmp}/kaggle/input/siglip2/transformers/default/1", "kaggle/input/siglip2",
     ["keras", "README.md"]),
    ("./models/clip", ".", ["data", "notes.txt"]),
    ("weights/siglip2/v1", "weights", ["siglip2-old"]),
])
def test_a_path_that_does_not_exist_is_never_a_hub_id(tmp_path: Path, monkeypatch, value,
                                                      existing, entries) -> None:
    monkeypatch.chdir(tmp_path)
    parent = tmp_path / existing
    for name in entries:
        (parent / name).mkdir(parents=True) if "." not in name else (parent / name).touch()
    value = value.format(tmp=tmp_path)
    assert imagetext.looks_like_path(value)
    started = time.monotonic()
    with pytest.raises(imagetext.ModelNotFound) as err:
        imagetext.load_model(value, input_root=str(tmp_path))
    assert time.monotonic() - started < 5  # no hub round trip
    message = str(err.value)
    assert f"vl_model={value!r}: no such folder" in message
    assert "never looked up on the Hugging Face hub" in message
    assert f"Nearest existing folder: {parent.resolve()}, holding: " \
           f"{', '.join(sorted(entries))}" in message


@pytest.mark.parametrize("value", ["google/siglip2-so400m-patch16-256", "clip-base"])
def test_hub_ids_are_not_paths(value: str) -> None:
    assert not imagetext.looks_like_path(value)


def _executable(folder: Path, name: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("#!/bin/sh\n")
    (folder / name).chmod(0o755)


@pytest.mark.parametrize("installed, expected", [
    (["hf", "huggingface-cli"], "`hf download org/m --local-dir ./models/m`"),
    (["huggingface-cli"], "`huggingface-cli download org/m --local-dir ./models/m`"),
    ([], "huggingface_hub.snapshot_download('org/m', local_dir='./models/m')"),
])
def test_download_hint_names_the_installed_command(tmp_path: Path, monkeypatch, installed,
                                                   expected) -> None:
    """huggingface_hub >= 1.0 installs `hf`, older ones `huggingface-cli`; neither: the
    Python call. The command on PATH is named as typed; one found only beside this Python
    (a virtual environment not activated) by its full path."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in installed:
        _executable(bin_dir, name)
    monkeypatch.setenv("PATH", str(bin_dir))
    hint = imagetext.download_hint("org/m", "./models/m", str(bin_dir))
    assert expected in hint and ("python -c" in hint) == (not installed)
    if installed:
        monkeypatch.setenv("PATH", str(tmp_path / "elsewhere"))
        hint = imagetext.download_hint("org/m", "./models/m", str(bin_dir))
        assert hint == f"`{bin_dir / installed[0]} download org/m --local-dir ./models/m`"


def _scale_output(module: torch.nn.Module, factor: float):
    return module.register_forward_hook(lambda m, args, out: out * factor)


@pytest.mark.parametrize("factor, recovers", [(1e6, True), (1e39, False)])
def test_non_finite_image_embeddings_are_recomputed_in_float32(
        tiny_clip: Path, demo_root: Path, tmp_path: Path, project_log, factor, recovers) -> None:
    """fp16 overflow (openai/CLIP #222; SigLIP on a T4): a real one, made by scaling the
    pooled vision output past float16's 65504 on an fp16 model. 1e6 fits float32: the
    batch is recomputed by a float32 tower and the embeddings equal the float32 model's
    (the scale leaves the direction); 1e39 overflows float32 too: stop, naming the files."""
    cfg = tiny_config(demo_root, tmp_path / "out", vl_model=str(tiny_clip), vl_batch_size=4,
                      vl_flip=False)
    paths = [p for p in sorted((demo_root / "test").iterdir()) if p.suffix == ".jpg"][:6]
    rt = make_runtime(cfg)
    itm = imagetext.load_model(cfg.vl_model, dtype=torch.float16)
    _scale_output(itm.model.vision_model.post_layernorm, factor)
    if recovers:
        got = imagetext.image_embeddings(itm, paths, cfg, rt)
        assert np.isfinite(got["emb"]).all()
        assert next(itm.model.parameters()).dtype == torch.float16  # model kept as loaded
        assert next(itm.float32["image"].parameters()).dtype == torch.float32
        assert "text" not in itm.float32  # only the tower that needed it
        reference = imagetext.image_embeddings(
            imagetext.load_model(cfg.vl_model), paths,
            tiny_config(demo_root, tmp_path / "ref", vl_flip=False, vl_batch_size=4), rt)
        np.testing.assert_allclose(got["emb"], reference["emb"], atol=2e-3)
        assert "recomputed in float32" in project_log.text
    else:
        with pytest.raises(imagetext.NonFiniteEmbeddings) as err:
            imagetext.image_embeddings(itm, paths, cfg, rt)
        message = str(err.value)
        assert str(tiny_clip) in message and "even in float32" in message
        assert all(str(p) in message for p in paths[:5])
        assert not (tmp_path / "out" / "embeddings").exists()  # nothing stored


@pytest.mark.parametrize("factor, recovers", [(1e6, True), (1e39, False)])
def test_non_finite_text_embeddings_are_recomputed_in_float32(tiny_clip: Path, factor,
                                                              recovers) -> None:
    itm = imagetext.load_model(str(tiny_clip), dtype=torch.float16)
    _scale_output(itm.model.text_model.final_layer_norm, factor)
    if recovers:
        got = imagetext.class_text_embeddings(itm, CLASSES)
        assert np.isfinite(got).all() and "text" in itm.float32 and "image" not in itm.float32
        reference = imagetext.class_text_embeddings(imagetext.load_model(str(tiny_clip)),
                                                    CLASSES)
        np.testing.assert_allclose(got, reference, atol=2e-3)
    else:
        with pytest.raises(imagetext.NonFiniteEmbeddings) as err:
            imagetext.class_text_embeddings(itm, CLASSES)
        assert str(tiny_clip) in str(err.value)
        assert "'a photo of a killer whale.'" in str(err.value)


def _other_resample(itm) -> None:
    itm.processor.image_processor.resample = 2  # bilinear: other pixels, same view plan


def _other_transformers(monkeypatch) -> None:
    import transformers

    monkeypatch.setattr(transformers, "__version__", "4.99.0")


@pytest.mark.parametrize("change", ["processor", "transformers"])
def test_cached_embeddings_of_another_environment_are_recomputed(
        tiny_clip: Path, demo_root: Path, tmp_path: Path, monkeypatch, project_log,
        change) -> None:
    """Fast and slow image processors give other pixels (transformers #34785, #39591): a
    cache written with other processor settings or another transformers version is not
    reused; it is recomputed (and then reused in the new environment)."""
    cfg = tiny_config(demo_root, tmp_path / "out", vl_model=str(tiny_clip), vl_batch_size=8)
    itm = imagetext.load_model(cfg.vl_model)
    calls = []
    itm.model.vision_model.register_forward_hook(lambda m, a, out: calls.append(1))
    paths = sorted((demo_root / "test").iterdir())[:4]
    rt = make_runtime(cfg)
    imagetext.image_embeddings(itm, paths, cfg, rt)
    assert calls
    if change == "processor":
        _other_resample(itm)
    else:
        _other_transformers(monkeypatch)
    calls.clear()
    imagetext.image_embeddings(itm, paths, cfg, rt)
    assert calls, "a cache from another environment was reused"
    assert ("cached embeddings from another processor/transformers version: recomputing"
            in project_log.text)
    assert ("transformers 5" in project_log.text) == (change == "transformers")
    calls.clear()
    imagetext.image_embeddings(itm, paths, cfg, rt)
    assert calls == []  # the recomputed cache serves the new environment
