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
        np.testing.assert_allclose(imagetext._VisionTower(as_tensor.model)(x).numpy(),
                                   imagetext._VisionTower(itm.model)(x).numpy(), atol=1e-6)


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
    assert "input_root" in message and "Add Input" in message and "huggingface-cli" in message


def test_not_an_image_text_model(tmp_path: Path) -> None:
    from transformers import ViTConfig, ViTModel

    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=32, image_size=32, patch_size=8)).save_pretrained(
        tmp_path / "vit")
    with pytest.raises(imagetext.NotImageTextModel, match="not an image-text model"):
        imagetext.load_model(str(tmp_path / "vit"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a transformers model folder"):
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
    check_same_text(src, {"text": text + 1e-4}, "org/a")  # the same model (fp16 noise)
    with pytest.raises(ValueError, match="other class embeddings.*org/a"):
        check_same_text(src, {"text": np.roll(text, 1, axis=0)}, "org/a")
