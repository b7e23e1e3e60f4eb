"""Image-text (vision-language) models: loading, class text embeddings, image embeddings.

Any model that `transformers` loads with AutoModel + AutoProcessor and that has
`get_image_features` / `get_text_features` works: CLIP, SigLIP, SigLIP 2, MetaCLIP. The
weights are found in this order (`resolve_source`): `vl_model` as a local folder; a folder
under `input_root` holding that model (a Kaggle Model or dataset attached to the kernel:
matched by the hub id's name or by config.json's `_name_or_path`); the Hugging Face cache;
the Hugging Face hub (only after a 3-second reachability check, so an offline machine fails
in seconds). A value that looks like a path (`looks_like_path`) is never sent to the hub: a
missing one fails at once naming its nearest existing parent. A local folder is checked
before loading (`check_model_folder`: config, weights, processor, tokenizer; a
save_pretrained copy uploaded without its processor files is transformers #25804).
transformers 4.x returns the features as tensors, 5.x as output objects whose
`.pooler_output` is the projected embedding: `as_embedding` accepts both.

Embeddings that come out NaN / inf (fp16 overflow: openai/CLIP #222, SigLIP on a T4) never
reach a decision: each such batch is recomputed with a float32 copy of the tower, and one
still not finite stops the run naming the model and the files or prompts.

Image embeddings go through inference.run_images (the decoded-image cache, batches, AMP,
optional mirrored view averaged) and are stored in output_dir/embeddings/, keyed by the
model, the file list (sizes, mtimes) and the views, so reruns and the infer kernel reuse
them (`find_cached` also looks below input_root, where a train kernel's output is mounted).
Each file also records the image processor (class and settings) and the transformers version
it was computed with: fast and slow processors give other pixels (transformers #34785,
#39591), so a cache from another environment is recomputed, with a log line saying so.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import os
import re
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import Config
from ..locate import find_files, hub_reachable, walk_inputs
from ..pipeline import resolve_workers

log = logging.getLogger("pixelplay")

EMBEDDING_FORMAT = 2  # bump when the stored embeddings change meaning (2: environment kept)
MAX_WALK_DEPTH = 7  # /kaggle/input/<slug>/transformers/<variation>/<version>/ is depth 4
TEXT_BATCH = 256


class ModelNotFound(RuntimeError):
    """No weights for the requested image-text model; the message says where we looked."""


class NotImageTextModel(ValueError):
    """The model loads but has no get_image_features / get_text_features."""


class IncompleteModelFolder(ValueError):
    """A local model folder lacks files transformers needs (check_model_folder)."""


class NonFiniteEmbeddings(ValueError):
    """Embeddings still NaN / inf after the float32 recomputation."""


@dataclass
class ImageTextModel:
    """A loaded image-text model: the transformers model and processor, where they came
    from, and the facts the experts need."""

    model: Any
    processor: Any
    name: str  # the requested vl_model (identity of the embeddings cache)
    source: str  # the folder or hub id actually loaded
    # float32 towers ("image", "text") for batches that overflow: built on first need only
    float32: dict[str, torch.nn.Module] = field(default_factory=dict, repr=False)

    @property
    def model_type(self) -> str:
        return str(getattr(self.model.config, "model_type", ""))

    @property
    def sigmoid(self) -> bool:
        """SigLIP family: trained on lowercased text padded to the full length."""
        return "siglip" in self.model_type

    @property
    def logit_scale(self) -> float:
        """The model's learned softmax/sigmoid scale (exp of its logit_scale parameter)."""
        scale = getattr(self.model, "logit_scale", None)
        return float(scale.detach().float().exp().reshape(-1)[0]) if scale is not None else 100.0

    def view_settings(self) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
        """(view side in px, mean, std) from the processor: the crop size when it crops,
        else the resize size (SigLIP squashes to a square; the central crop is used here)."""
        ip = self.processor.image_processor
        size = ip.crop_size if getattr(ip, "do_center_crop", False) else ip.size
        side = _get(size, "height") or _get(size, "shortest_edge")
        if not side:
            raise ValueError(f"{self.source}: cannot tell the image size from its processor "
                             f"(size={size!r})")
        return int(side), tuple(ip.image_mean), tuple(ip.image_std)

    def float32_tower(self, kind: str) -> torch.nn.Module:
        """The "image" or "text" tower (_Tower) in float32, built on first
        call and kept: the model itself when its weights are float32 already, else a float32
        copy of that tower alone (the model stays as loaded: fp16 halves its memory)."""
        if kind not in self.float32:
            tower = _Tower(self.model, kind)
            if any(p.dtype != torch.float32 for p in tower.parameters()):
                tower = copy.deepcopy(tower).float()
            self.float32[kind] = tower.eval()
        return self.float32[kind]

    def environment(self) -> dict[str, str]:
        """What else decides the image embeddings besides the weights: the image processor's
        class and settings (as a digest) and the transformers version."""
        import transformers

        ip = self.processor.image_processor
        settings = ip.to_json_string() if hasattr(ip, "to_json_string") else repr(ip)
        return {"processor": type(ip).__name__,
                "settings": hashlib.sha1(settings.encode()).hexdigest()[:16],
                "transformers": str(transformers.__version__)}


def _get(size: Any, key: str) -> Any:
    # processors keep sizes as dicts (transformers 4.x) or SizeDict objects (5.x)
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)


def as_embedding(output: Any) -> torch.Tensor:
    """get_*_features output -> (n, d) tensor: transformers 4.x returns the tensor, 5.x a
    BaseModelOutputWithPooling whose pooler_output is the projected embedding."""
    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if pooled is None:
        raise TypeError(f"unexpected feature output {type(output).__name__}: neither a tensor "
                        "nor an object with pooler_output")
    return pooled


# ---------------------------------------------------------------- finding the weights


def _tokens(text: str) -> list[str]:
    return [t for t in re.split(r"[^a-z0-9]+", text.lower()) if t]


def _is_subsequence(needle: list[str], hay: list[str]) -> bool:
    it = iter(hay)
    return all(tok in it for tok in needle)


def find_under(root: str | Path, model_id: str) -> Path | None:
    """A folder below root with a config.json that holds model_id: its `_name_or_path` is
    model_id (best), or the id's name part appears, token by token, in the folder's path
    relative to root (Kaggle Models: <slug>/transformers/<variation>/<version>). The bounded
    walk of locate.walk_inputs; the shortest matching path wins."""
    root = Path(root)
    name = _tokens(model_id.split("/")[-1])
    exact, by_name = [], []
    for folder, files in walk_inputs(root, MAX_WALK_DEPTH):
        if "config.json" not in files:
            continue
        try:
            declared = json.loads((folder / "config.json").read_text()).get(
                "_name_or_path", "")
        except (OSError, ValueError):
            continue
        if declared == model_id:
            exact.append(folder)
        elif name and _is_subsequence(name, _tokens(str(folder.relative_to(root)))):
            by_name.append(folder)
    found = sorted(exact, key=lambda p: len(str(p))) or sorted(by_name, key=lambda p: len(str(p)))
    return found[0] if found else None



def looks_like_path(value: str) -> bool:
    """Whether vl_model is meant as a folder, not a hub id (`org/name`): absolute, starting
    with ./ ../ ~ or a drive letter, holding a backslash, naming /kaggle/, or with more than
    one `/`. Such a value that does not exist is a missing folder, never a hub lookup (the
    hub client would answer HFValidationError)."""
    v = value.strip()
    return (Path(v).is_absolute() or v.startswith(("./", "../", "~", ".\\", "..\\"))
            or "\\" in v or "/kaggle/" in f"/{v}" or v.count("/") > 1
            or re.match(r"[A-Za-z]:[\\/]", v) is not None)


def missing_folder_message(value: str, shown: int = 8) -> str:
    """vl_model names a folder that does not exist: the nearest existing parent and its
    first `shown` entries, so a wrong version number or variation is seen at once."""
    path = Path(value.strip()).expanduser()
    parent = next((p for p in [*path.parents] if p.is_dir()), Path("."))
    try:
        entries = sorted(os.listdir(parent))
    except OSError as e:
        entries = [f"(unreadable: {e.strerror})"]
    listing = ", ".join(entries[:shown]) + (f", ... ({len(entries)} in all)"
                                            if len(entries) > shown else "")
    return (f"vl_model={value!r}: no such folder (a path is never looked up on the Hugging "
            f"Face hub). Nearest existing folder: {parent.absolute()}, holding: "
            f"{listing or 'nothing'}. Fix: pass --vl-model (papermill: -p vl_model) the "
            "folder that holds config.json (a save_pretrained copy; on Kaggle, `find "
            "/kaggle/input -name config.json` lists the attached ones).")


def download_hint(model_id: str, folder: str, search_path: str | None = None) -> str:
    """How to download model_id into folder with what is installed: `hf download` (the
    command of huggingface_hub >= 1.0), else the older `huggingface-cli download`, else the
    Python call. search_path: where to look for the commands (default: PATH, then the
    folder of this Python, where a virtual environment not activated keeps them)."""
    if search_path is None:
        search_path = os.pathsep.join([os.environ.get("PATH", ""),
                                       str(Path(sys.executable).parent)])
    for name in ("hf", "huggingface-cli"):
        found = shutil.which(name, path=search_path)
        if found:
            on_path = shutil.which(name) == found
            return f"`{name if on_path else found} download {model_id} --local-dir {folder}`"
    return (f"`python -c \"import huggingface_hub; huggingface_hub.snapshot_download("
            f"'{model_id}', local_dir='{folder}')\"`")


def not_found_message(model_id: str, input_root: str) -> str:
    folder = "./models/" + model_id.split("/")[-1]
    return (f"image-text model {model_id!r} not found. Searched: a local folder of that name; "
            f"folders below input_root={input_root!r} whose config.json or path names it; the "
            "Hugging Face cache; the hub (not reachable: internet off?). Fix: on Kaggle, Add "
            "Input -> Models -> the model (Transformers variation), or `make push-kernel "
            "MODELS=<owner>/<model>/transformers/<variation>`, or turn the kernel's internet "
            f"on; locally, {download_hint(model_id, folder)} and pass --vl-model {folder} "
            "(any folder holding a save_pretrained copy: config.json + weights + processor).")


def resolve_source(model_id: str, input_root: str) -> tuple[str, bool]:
    """(what to pass to from_pretrained, local_files_only) for model_id. Loads nothing:
    preflight uses it to tell whether the model is obtainable.

    Order: an existing folder; a folder below input_root holding it; the HF cache; the hub.
    Raises ModelNotFound with the searched places and the fix when none works, at once (no
    hub lookup) for a path-like value that does not exist."""
    if not model_id:
        raise ModelNotFound("the text / probe experts need an image-text model but vl_model is "
                            "empty: pass --vl-model (papermill: -p vl_model) a hub id or a "
                            "folder, or leave text and probe out of `experts`")
    if Path(model_id).expanduser().is_dir():
        return str(Path(model_id).expanduser()), True
    if looks_like_path(model_id):
        raise ModelNotFound(missing_folder_message(model_id))
    found = find_under(input_root, model_id) if input_root else None
    if found is not None:
        return str(found), True
    from huggingface_hub import try_to_load_from_cache

    try:
        if isinstance(try_to_load_from_cache(model_id, "config.json"), str):
            return model_id, True
    except ValueError:  # not a valid hub id (HFValidationError)
        raise ModelNotFound(not_found_message(model_id, input_root)) from None
    if "/" in model_id.strip("/") and hub_reachable():
        return model_id, False
    raise ModelNotFound(not_found_message(model_id, input_root))


# What a save_pretrained folder of an image-text model holds (transformers 4.x and 5.x).
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
OTHER_FRAMEWORKS = ("tf_model.h5", "flax_model.msgpack")
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
WEIGHT_LIKE = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack")


def check_model_folder(folder: str | Path) -> list[str]:
    """What a local model folder lacks for AutoModel + AutoProcessor, one item each ([] =
    complete): config.json; weights (model.safetensors, pytorch_model.bin, or a sharded
    *.index.json with every shard present; TensorFlow / Flax weights only, or weights under
    another name, are named); the image processor (preprocessor_config.json or
    processor_config.json); the tokenizer (tokenizer.json, vocab.json + merges.txt, a
    sentencepiece *.model or vocab.txt, plus tokenizer_config.json). Reads only names and
    the shard index, never the weights."""
    folder = Path(folder)
    names = {p.name for p in folder.iterdir() if p.is_file()} if folder.is_dir() else set()
    missing = [] if "config.json" in names else ["config.json (the model's configuration)"]
    missing += _weights_missing(folder, names)
    if not names & set(PROCESSOR_FILES):
        missing.append("preprocessor_config.json or processor_config.json (the image "
                       "processor)")
    has_vocab = ("tokenizer.json" in names or {"vocab.json", "merges.txt"} <= names
                 or "vocab.txt" in names or any(n.endswith(".model") for n in names))
    if not has_vocab:
        missing.append("tokenizer.json (or vocab.json + merges.txt, or a sentencepiece "
                       "*.model: the tokenizer)")
    if "tokenizer_config.json" not in names:
        missing.append("tokenizer_config.json (the tokenizer's settings)")
    return missing


def _weights_missing(folder: Path, names: set[str]) -> list[str]:
    if names & set(WEIGHT_FILES):
        return []
    for index in sorted(names & set(WEIGHT_INDEXES)):
        try:
            shards = set(json.loads((folder / index).read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, AttributeError) as e:
            return [f"a readable {index} ({type(e).__name__}: {e})"]
        absent = sorted(shards - names)
        if not absent:
            return []
        return [f"weight shards listed in {index}: {', '.join(absent[:4])}"
                + (f" ({len(absent)} of {len(shards)})" if len(absent) > 4 else "")]
    other = sorted(names & set(OTHER_FRAMEWORKS))
    if other:
        return [f"PyTorch weights (model.safetensors): only {', '.join(other)} here, weights "
                "in TensorFlow/Flax format: re-save with PyTorch"]
    stray = sorted(n for n in names if n.endswith(WEIGHT_LIKE))
    return ["weights: model.safetensors or pytorch_model.bin (or a sharded *.index.json)"
            + (f"; found {', '.join(stray[:3])}, a name transformers does not load" if stray
               else "")]


def incomplete_message(folder: str | Path, missing: list[str]) -> str:
    """One message naming every missing item of `folder` and how to save it complete."""
    folder = Path(folder)
    what = ("is not a transformers model folder" if missing[0].startswith("config.json")
            else "is an incomplete model folder")
    return (f"{folder} {what}: missing {'; '.join(missing)}. Save it complete where the "
            "model loads (internet on): `from transformers import AutoModel, AutoProcessor; "
            "AutoModel.from_pretrained(ID).save_pretrained(DIR); "
            "AutoProcessor.from_pretrained(ID).save_pretrained(DIR)`, then upload the whole "
            "folder as a Kaggle dataset (`kaggle datasets create -p DIR`) and attach it.")


def image_text_problem(folder: str | Path) -> str | None:
    """Why the model in `folder` is not an image-text model, judged from config.json alone
    (no transformers import, no weights): image-text configs (CLIP, SigLIP, MetaCLIP,
    ALIGN...) carry both a text_config and a vision_config. None when it may be one, or
    when config.json is absent or unreadable (check_model_folder / loading say why)."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if isinstance(config, dict) and not {"text_config", "vision_config"} <= set(config):
        return (f"{folder} ({config.get('model_type', 'unknown model_type')}) is not an "
                "image-text model: its config.json has no text_config / vision_config. Pass "
                "--vl-model a CLIP / SigLIP / MetaCLIP checkpoint, e.g. "
                "openai/clip-vit-large-patch14")
    return None


def check_local_folder(source: str) -> None:
    """Raise NotImageTextModel or IncompleteModelFolder (both ValueError) for a local
    folder that cannot give an image-text model; checks names and config.json only."""
    problem = image_text_problem(source)
    if problem:
        raise NotImageTextModel(problem)
    missing = check_model_folder(source)
    if missing:
        raise IncompleteModelFolder(incomplete_message(source, missing))


def load_model(model_id: str, input_root: str = "", device: torch.device | None = None,
               dtype: torch.dtype | None = None) -> ImageTextModel:
    """Load an image-text model and its processor (see resolve_source for the search).

    dtype: weights' dtype (fp16 on a T4 halves memory; None = as saved). Raises
    ModelNotFound (nothing found), NotImageTextModel (e.g. an image classifier),
    IncompleteModelFolder (a local folder lacking files: checked before any loading), or
    ValueError for a folder that is not a transformers model."""
    from transformers import AutoModel, AutoProcessor

    source, local_only = resolve_source(model_id, input_root)
    if Path(source).is_dir():
        check_local_folder(source)
    kwargs: dict[str, Any] = {"local_files_only": local_only}
    if dtype is not None:  # transformers renamed torch_dtype to dtype in 4.56
        kwargs["dtype" if _transformers_at_least("4.56") else "torch_dtype"] = dtype
    try:
        model = AutoModel.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as e:
        what = "is not a transformers model folder" if local_only else "could not be loaded"
        raise ValueError(f"{source} {what} ({e}); pass --vl-model a hub id or a folder "
                         "written by save_pretrained (config.json + weights + processor)") from e
    missing = [m for m in ("get_image_features", "get_text_features") if not hasattr(model, m)]
    if missing:
        raise NotImageTextModel(
            f"{source} ({type(model).__name__}) is not an image-text model: it has no "
            f"{' / '.join(missing)}. Pass --vl-model a CLIP / SigLIP / MetaCLIP checkpoint, "
            "e.g. openai/clip-vit-large-patch14")
    processor = AutoProcessor.from_pretrained(source, local_files_only=local_only)
    model.eval()
    if device is not None:
        model.to(device)
    return ImageTextModel(model, processor, model_id, source)


def _transformers_at_least(version: str) -> bool:
    import transformers
    from packaging.version import Version

    return Version(transformers.__version__) >= Version(version)


# ---------------------------------------------------------------- class text embeddings


def _resource(name: str) -> str:
    return resources.files("pixelplay_lib").joinpath("resources", name).read_text()


def _data_lines(text: str) -> list[str]:
    return [s.strip() for s in text.splitlines() if s.strip() and not s.lstrip().startswith("#")]


def read_templates(path: str = "") -> list[str]:
    """Prompt templates, one per line with `{}` for the class name ("" = bundled).
    Raises ValueError naming the file when a line has no `{}` or the file is empty."""
    text = Path(path).read_text() if path else _resource("prompt_templates.txt")
    where = path or "bundled prompt_templates.txt"
    lines = _data_lines(text)
    bad = [t for t in lines if "{}" not in t]
    if bad or not lines:
        raise ValueError(f"{where}: every template needs a {{}} for the class name "
                         f"(bad: {bad[:3]}) and at least one template is needed")
    return lines


def read_synonyms(path: str = "") -> dict[str, list[str]]:
    """Class name -> extra names, from a `name<TAB>synonym` file ("" = bundled, "none" =
    names only). A missing file means names alone (with a log line saying so)."""
    if path == "none":
        return {}
    if path and not Path(path).is_file():
        log.info(f"synonyms file {path} not found: class names alone")
        return {}
    text = Path(path).read_text() if path else _resource("synonyms.tsv")
    table: dict[str, list[str]] = {}
    for line in _data_lines(text):
        name, _, synonym = line.partition("\t")
        if synonym.strip():
            table.setdefault(_spaced(name), []).append(synonym.strip())
    return table


def _spaced(name: str) -> str:
    return " ".join(name.replace("+", " ").replace("_", " ").split()).lower()


def class_prompts(classes: Sequence[str], templates: Sequence[str],
                  synonyms: dict[str, list[str]]) -> list[list[str]]:
    """Per class every template filled with its name (`+` -> space) and each synonym."""
    out = []
    for c in classes:
        names = [_spaced(c), *synonyms.get(_spaced(c), [])]
        out.append([t.format(n) for n in names for t in templates])
    return out


def encode_texts(itm: ImageTextModel, texts: list[str], device: torch.device) -> torch.Tensor:
    """(len(texts), d) L2-normalised text embeddings (fp32, on the CPU).

    A batch with a NaN / inf embedding (fp16 overflow) is recomputed with the float32 text
    tower; raises NonFiniteEmbeddings naming the model and the prompts when it stays so."""
    if itm.sigmoid:  # SigLIP was trained on lowercased text padded to max_length
        texts = [t.lower() for t in texts]
        pad = {"padding": "max_length",
               "max_length": itm.model.config.text_config.max_position_embeddings}
    else:
        pad = {"padding": True}
    parts = []
    with torch.inference_mode():
        for k in range(0, len(texts), TEXT_BATCH):
            batch = itm.processor.tokenizer(texts[k:k + TEXT_BATCH], truncation=True,
                                            return_tensors="pt", **pad)
            batch = {n: v.to(device) for n, v in batch.items()
                     if n in ("input_ids", "attention_mask")}
            if itm.sigmoid:  # SigLIP's text tower takes no attention mask
                batch.pop("attention_mask", None)
            emb = as_embedding(itm.model.get_text_features(**batch)).float()
            if not torch.isfinite(emb).all():
                emb = _text_in_float32(itm, batch, texts[k:k + TEXT_BATCH])
            parts.append(emb.cpu())
    return torch.nn.functional.normalize(torch.cat(parts), dim=1)


def _text_in_float32(itm: ImageTextModel, batch: dict[str, torch.Tensor],
                     texts: list[str]) -> torch.Tensor:
    """One text batch again through the float32 tower; raises NonFiniteEmbeddings naming
    the prompts whose embedding is still NaN / inf."""
    log.warning("%s: non-finite text embeddings (float16 overflow?): recomputing %d prompts "
                "in float32", itm.name, len(texts))
    with torch.autocast(batch["input_ids"].device.type, enabled=False):
        emb = itm.float32_tower("text")(**batch).float()
    bad = [t for t, ok in zip(texts, torch.isfinite(emb).all(1).tolist(), strict=True)
           if not ok]
    if bad:
        raise NonFiniteEmbeddings(
            f"image-text model {itm.name} ({itm.source}) gives NaN / inf text embeddings even "
            f"in float32 for {len(bad)} prompt(s): {'; '.join(map(repr, bad[:5]))}. Its "
            "weights are likely damaged: download the model again, or pass --vl-model "
            "another one")
    return emb


def class_text_embeddings(itm: ImageTextModel, classes: Sequence[str], templates_path: str = "",
                          synonyms_path: str = "", device: torch.device | None = None
                          ) -> np.ndarray:
    """(n_classes, d) float64: per class the L2-normalised mean of its prompts' normalised
    embeddings (templates x names)."""
    device = device or torch.device("cpu")
    prompts = class_prompts(classes, read_templates(templates_path),
                            read_synonyms(synonyms_path))
    flat = [p for ps in prompts for p in ps]
    emb = encode_texts(itm, flat, device).double()
    counts = np.cumsum([0] + [len(ps) for ps in prompts])
    means = torch.stack([emb[a:b].mean(0) for a, b in zip(counts[:-1], counts[1:], strict=True)])
    return torch.nn.functional.normalize(means, dim=1).numpy()


# ---------------------------------------------------------------- image embeddings


def embedding_key(name: str, paths: Sequence[Path], plan: Any) -> str:
    """Digest of the model name, every file (path, size, mtime) and the view plan."""
    digest = hashlib.sha1(f"{EMBEDDING_FORMAT}|{name}|{plan!r}".encode())
    for p in paths:
        st = Path(p).stat() if Path(p).exists() else None
        # surrogateescape: a file name that is not valid UTF-8 keeps its own bytes
        digest.update(f"{p}|{st.st_size if st else -1}|{st.st_mtime_ns if st else -1}\n"
                      .encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:20]


def find_cached(key: str, output_dir: str, input_root: str) -> Path | None:
    """embeddings/<key>.npz in output_dir, else in an earlier run's output below input_root
    (a train kernel attached to the infer kernel, in any mount layout: locate's bounded
    walk); None when nowhere."""
    own = Path(output_dir) / "embeddings" / f"{key}.npz"
    if own.is_file():
        return own
    if not input_root:
        return None
    hits = [p for p in find_files(input_root, f"{key}.npz") if p.parent.name == "embeddings"]
    return hits[0] if hits else None


class _Tower(torch.nn.Module):
    """get_image_features ("image") or get_text_features ("text") as a module holding only
    that tower's weights (CLIP: vision_model + visual_projection / text_model +
    text_projection; SigLIP: the tower alone, whose head pools), so a copy per GPU or a
    float32 copy does not carry the other tower. Models without it are wrapped whole."""

    PARTS = {"image": ("vision_model", "visual_projection", "get_image_features"),
             "text": ("text_model", "text_projection", "get_text_features")}

    def __init__(self, model: Any, kind: str = "image"):
        super().__init__()
        tower, projection, self.method = self.PARTS[kind]
        self.tower = getattr(model, tower, None)
        self.projection = getattr(model, projection, None)
        self.whole = model if self.tower is None else None

    def forward(self, pixel_values: torch.Tensor | None = None, **inputs: torch.Tensor
                ) -> torch.Tensor:
        if pixel_values is not None:  # the image tower takes its batch positionally too
            inputs["pixel_values"] = pixel_values
        if self.whole is not None:
            return as_embedding(getattr(self.whole, self.method)(**inputs))
        pooled = self.tower(**inputs).pooler_output
        return pooled if self.projection is None else self.projection(pooled)


def spread_over_gpus(tower: torch.nn.Module, n_gpus: int):
    """A function running `tower` (on cuda:0) data-parallel over n_gpus GPUs: replicas are
    copied once (nn.DataParallel would re-broadcast the weights on every batch) and each
    batch is split, run in parallel threads and gathered on cuda:0. CUDA only; it has not
    run here (no GPU on the development machine)."""
    import copy

    from torch.nn.parallel import parallel_apply

    replicas = [tower] + [copy.deepcopy(tower).to(f"cuda:{k}") for k in range(1, n_gpus)]

    def forward(x: torch.Tensor) -> torch.Tensor:
        chunks = x.chunk(n_gpus)
        inputs = [(c.to(f"cuda:{k}", non_blocking=True),) for k, c in enumerate(chunks)]
        outs = parallel_apply(replicas[:len(chunks)], inputs)
        return torch.cat([o.to(x.device) for o in outs])

    return forward


def image_embeddings(itm: ImageTextModel, paths: Sequence[Path], cfg: Config, rt: Any,
                     desc: str = "image embeddings", lenient: bool = False) -> dict[str, Any]:
    """Embeddings of the images at `paths`, computed once and stored.

    Returns {"emb": (n_ok, d) float32 L2-normalised (central view, and its mirror averaged
    when cfg.vl_flip), "index": (n_ok,) positions in `paths`, "failed": [(position, error)]}
    (undecodable images are left out and listed; lenient: test images get a second,
    lenient decoding try first). Uses every visible GPU (spread_over_gpus). A stored file
    computed with another image processor or transformers version is recomputed. Raises
    NonFiniteEmbeddings naming the model and the files whose embedding stays NaN / inf
    after the float32 recomputation of their batch (nothing is stored then)."""
    from .. import inference
    from ..checkpoint import atomic_write_bytes

    side, mean, std = itm.view_settings()
    plan = inference.ViewPlan(size=side, flip=cfg.vl_flip, mean=mean, std=std)
    paths = [Path(p) for p in paths]
    key = embedding_key(itm.name + (":lenient" if lenient else ""), paths, plan)
    env = itm.environment()
    cached = load_cached(find_cached(key, cfg.output_dir, cfg.input_root), env, desc)
    if cached is not None:
        return cached
    out = inference.run_images(_embedding_forward(itm, rt, desc),
                               inference.open_images(paths, side, cfg, desc, lenient),
                               range(len(paths)), plan, rt, batch_images=cfg.vl_batch_size,
                               workers=resolve_workers(cfg.num_workers), keep={"emb": "mean"})
    emb = out["emb"].reshape(len(out["index"]), -1)
    bad = ~np.isfinite(emb).all(1)
    if bad.any():
        files = [str(paths[i]) for i in np.asarray(out["index"])[bad]]
        raise NonFiniteEmbeddings(
            f"image-text model {itm.name} ({itm.source}) gives NaN / inf embeddings even in "
            f"float32 for {len(files)} image(s): {', '.join(files[:5])}"
            + (", ..." if len(files) > 5 else "") + ". Its weights are likely damaged: "
            "download the model again, or pass --vl-model another one")
    emb = emb / (np.linalg.norm(emb, axis=1, keepdims=True) + 1e-12)
    failed = [(int(i), str(e)) for i, e in out["failed"]]
    target = Path(cfg.output_dir) / "embeddings" / f"{key}.npz"
    target.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, emb=emb.astype(np.float32), index=out["index"].astype(np.int64),
             failed=np.array(json.dumps(failed)), env=np.array(json.dumps(env, sort_keys=True)))
    atomic_write_bytes(target, buf.getvalue())
    return {"emb": emb.astype(np.float32), "index": out["index"], "failed": failed}


def load_cached(hit: Path | None, env: dict[str, str], desc: str) -> dict[str, Any] | None:
    """The stored embeddings at `hit`, or None when there is none or it was computed in
    another environment (image processor class or settings, transformers version: logged,
    then recomputed by the caller)."""
    if hit is None:
        return None
    with np.load(hit, allow_pickle=False) as z:
        stored = json.loads(str(z["env"])) if "env" in z.files else {}
        if stored != env:
            changed = ", ".join(f"{k} {stored.get(k, '?')} -> {v}" for k, v in env.items()
                                if stored.get(k) != v)
            log.info("%s: cached embeddings from another processor/transformers version: "
                     "recomputing (%s; %s)", desc, changed, hit)
            return None
        log.info(f"{desc}: reusing {hit}")
        return {"emb": z["emb"], "index": z["index"],
                "failed": [tuple(f) for f in json.loads(str(z["failed"]))]}


def _embedding_forward(itm: ImageTextModel, rt: Any, desc: str):
    """The forward for run_images: {"emb": (views, d)} from the vision tower under the
    runtime's autocast (on every visible GPU); a batch with a NaN / inf embedding (fp16
    overflow) is computed again by the float32 tower (on rt.device), without autocast."""
    tower = _Tower(itm.model, "image").to(rt.device).eval()
    if rt.device.type == "cuda" and torch.cuda.device_count() > 1:
        tower = spread_over_gpus(tower, torch.cuda.device_count())  # T4 x2: one process
    recomputed = [0]

    def forward(x: torch.Tensor) -> dict[str, torch.Tensor]:
        with rt.autocast():
            emb = tower(x)
        if torch.isfinite(emb).all():
            return {"emb": emb}
        recomputed[0] += 1
        if recomputed[0] == 1:
            log.warning("%s: %s gave non-finite embeddings (float16 overflow?): such batches "
                        "are recomputed in float32", desc, itm.name)
        with torch.autocast(rt.device.type, enabled=False):
            return {"emb": itm.float32_tower("image").to(rt.device)(x.float())}

    return forward
