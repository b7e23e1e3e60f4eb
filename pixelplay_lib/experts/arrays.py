"""The arrays a run saves, and the one array-level API of the fusion: `fit` and `apply`.

Everything the fusion needs fits in small arrays, so the fusion can be refit and reapplied
on a CPU in seconds from a Kaggle kernel's downloaded output (`python -m pixelplay_lib
fuse --run-dir DIR`), without an image or a network. train, predict, `fuse` and the
benchmark all go through `fit` / `apply`.

The contract (ARRAYS_FORMAT; README "The saved arrays"): a folder `<output_dir>/arrays/`
  run.json       {"format": "pixelplay-arrays", "version": 1, "classes": [...], "seen":
                  [...], "unseen": [...], "scale": logit scale, "vl_model": id or null}
  classes.npz    text (n_classes, d) float32 L2-normalised class text embeddings;
                 attributes (n_classes, a) float64 class attributes (each when available)
  <pool>.npz     one per pool: train (fitted experts learn from it), val (held-out images
                 of seen classes: the protocol and the test-pool choice measure on it),
                 test, special (the Special-Package's labelled photos). Keys:
                   ids (n,) str        file names (test: the submission's image ids)
                   labels (n,) int64   class indices, -1 where unknown (test)
                   vl (n, d) float32   image-text embeddings (central view + mirror)
                   resnet (n, C) float32     fine-tuned network: log of the mean vote
                   features (n, f) float16   its pooled features (the attribute model)
                   imagenet (n, C) float32   ImageNet head mapped onto the classes
                 each expert input only when the run had that expert.
`load` checks the format, the version and every shape, and names the file, the key and the
fix on a mismatch.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import fusion, imagenet

FORMAT, VERSION = "pixelplay-arrays", 1
FOLDER = "arrays"
POOLS = ("train", "val", "test", "special")
INPUTS = {"vl": ("text", "probe"), "resnet": ("resnet",), "features": ("attributes",),
          "imagenet": ("imagenet",)}
DTYPES = {"vl": np.float32, "resnet": np.float32, "features": np.float16,
          "imagenet": np.float32}


class ArraysError(ValueError):
    """Saved arrays that are missing, of another format or inconsistent (message: the file,
    the key and the fix)."""


@dataclass
class Pool:
    """One pool's arrays: ids (n,), labels (n,) (-1 unknown) and expert inputs (see the
    module docstring)."""

    ids: np.ndarray
    labels: np.ndarray
    inputs: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class RunArrays:
    """A run's arrays: the classes, the class-level arrays and the pools."""

    classes: list[str]
    seen: list[int]
    unseen: list[int]
    scale: float = 100.0
    vl_model: str | None = None
    text: np.ndarray | None = None
    attributes: np.ndarray | None = None
    pools: dict[str, Pool] = field(default_factory=dict)

    def available(self) -> list[str]:
        """The experts these arrays can build (fusion.EXPERT_NAMES order): an input in the
        val pool, and for the fitted experts (probe, attributes) in the train pool too."""
        val, train = self.pools.get("val"), self.pools.get("train")
        if val is None or train is None:
            return []
        names = {n for k, users in INPUTS.items() if k in val.inputs for n in users}
        fitted = {"probe": "vl", "attributes": "features"}
        names -= {n for n, k in fitted.items() if k not in train.inputs}
        if self.text is None:
            names -= {"text", "probe"}
        if self.attributes is None:
            names.discard("attributes")
        return [n for n in fusion.EXPERT_NAMES if n in names]


# ---------------------------------------------------------------- saving and loading


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def save_run(run: RunArrays, out: str | Path) -> Path:
    """run.json and classes.npz into out/arrays/ (atomic writes); returns the folder."""
    from ..checkpoint import atomic_write_bytes, atomic_write_text

    folder = Path(out) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "version": VERSION, "classes": run.classes,
            "seen": [int(c) for c in run.seen], "unseen": [int(c) for c in run.unseen],
            "scale": float(run.scale), "vl_model": run.vl_model}
    atomic_write_text(folder / "run.json", json.dumps(meta, indent=1) + "\n")
    extra = {k: v for k, v in (("text", run.text), ("attributes", run.attributes))
             if v is not None}
    atomic_write_bytes(folder / "classes.npz", _npz_bytes(
        {k: np.asarray(v, np.float32 if k == "text" else np.float64) for k, v in extra.items()}))
    return folder


def save_pool(out: str | Path, name: str, pool: Pool) -> Path:
    """out/arrays/<name>.npz (atomic). Raises ArraysError for an unknown pool name."""
    from ..checkpoint import atomic_write_bytes

    if name not in POOLS:
        raise ArraysError(f"pool {name!r}: one of {', '.join(POOLS)}")
    arrays = {"ids": np.asarray([str(i) for i in pool.ids], dtype=str),
              "labels": np.asarray(pool.labels, np.int64),
              **{k: np.asarray(v, DTYPES[k]) for k, v in pool.inputs.items()}}
    path = Path(out) / FOLDER / f"{name}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, _npz_bytes(arrays))
    return path


def load(run_dir: str | Path) -> RunArrays:
    """The arrays saved in run_dir (or run_dir/arrays). Raises ArraysError naming the file,
    the key and the fix for a missing folder, another format or version, or shapes that do
    not agree with each other or with classes."""
    folder = Path(run_dir)
    if (folder / FOLDER / "run.json").is_file():
        folder = folder / FOLDER
    meta_path = folder / "run.json"
    if not meta_path.is_file():
        raise ArraysError(f"no {FOLDER}/run.json in {run_dir}: point --run-dir at a run's "
                          "output (train writes arrays/ there; a Kaggle kernel's output once "
                          "downloaded with `make kernel-output`)")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ArraysError(f"{meta_path}: format {meta.get('format')!r} version "
                          f"{meta.get('version')!r}, this pixelplay reads {FORMAT!r} version "
                          f"{VERSION}: rerun the kernel with this version of the library")
    run = RunArrays(list(meta["classes"]), list(meta["seen"]), list(meta["unseen"]),
                    float(meta["scale"]), meta.get("vl_model"))
    with np.load(folder / "classes.npz", allow_pickle=False) as z:
        run.text = z["text"].astype(np.float64) if "text" in z.files else None
        run.attributes = z["attributes"] if "attributes" in z.files else None
    for name in POOLS:
        path = folder / f"{name}.npz"
        if path.is_file():
            with np.load(path, allow_pickle=False) as z:
                run.pools[name] = Pool(z["ids"], z["labels"],
                                       {k: z[k] for k in INPUTS if k in z.files})
    check(run, folder)
    return run


def check(run: RunArrays, where: str | Path = "arrays") -> None:
    """Every shape against the others. Raises ArraysError naming the file and key."""
    n_classes = len(run.classes)
    problems = []
    for key, arr in (("text", run.text), ("attributes", run.attributes)):
        if arr is not None and arr.shape[0] != n_classes:
            problems.append(f"classes.npz {key}: {arr.shape[0]} rows for {n_classes} classes")
    for name, pool in run.pools.items():
        for key, arr in {"labels": pool.labels, **pool.inputs}.items():
            if len(arr) != len(pool.ids):
                problems.append(f"{name}.npz {key}: {len(arr)} rows for {len(pool.ids)} ids")
        for key in ("resnet", "imagenet"):
            if key in pool.inputs and pool.inputs[key].shape[1] != n_classes:
                problems.append(f"{name}.npz {key}: {pool.inputs[key].shape[1]} columns for "
                                f"{n_classes} classes")
        if "vl" in pool.inputs and run.text is not None \
                and pool.inputs["vl"].shape[1] != run.text.shape[1]:
            problems.append(f"{name}.npz vl: dimension {pool.inputs['vl'].shape[1]}, the "
                            f"class text embeddings {run.text.shape[1]} (another model?)")
        if len(pool.labels) and pool.labels.max(initial=-1) >= n_classes:
            problems.append(f"{name}.npz labels: class index {pool.labels.max()} >= "
                            f"{n_classes}")
    if problems:
        raise ArraysError(f"inconsistent arrays in {where}: " + "; ".join(problems)
                          + ". Save them again from one run (train, then predict).")


# ---------------------------------------------------------------- experts from arrays


def build_experts(run: RunArrays, pool_name: str, names: list[str]) -> list[fusion.Expert]:
    """The experts `names` scoring pool `pool_name`; fitted ones (probe, attributes) learn
    from the train pool. Raises ArraysError when an input is missing."""
    pool, train = run.pools.get(pool_name), run.pools.get("train")
    if pool is None or train is None:
        raise ArraysError(f"no {pool_name if pool is None else 'train'} pool in the arrays")
    missing = [n for n in names if n not in run.available()
               or not any(k in pool.inputs for k, users in INPUTS.items() if n in users)]
    if missing:
        raise ArraysError(f"experts {missing}: their inputs are not in {pool_name}.npz / "
                          "train.npz (the run did not have them); choose among "
                          f"{', '.join(run.available())}")
    out: list[fusion.Expert] = []
    for name in names:
        if name == "resnet":
            out.append(fusion.LogitExpert(pool.inputs["resnet"].astype(np.float64)))
        elif name == "attributes":
            out.append(fusion.AttributeExpert(
                pool.inputs["features"].astype(np.float32),
                train.inputs["features"].astype(np.float32), train.labels, run.attributes))
        elif name == "imagenet":
            covers = imagenet.covered_classes(run.classes)
            out.append(imagenet.ImageNetExpert(pool.inputs["imagenet"].astype(np.float64),
                                               covers))
    out += fusion.vision_language_experts(names, pool.inputs.get("vl"), run.text, run.scale,
                                          train.inputs.get("vl"), train.labels)
    return out


def fit(run: RunArrays, names: list[str], folds: int = 4, seed: int = 0,
        transductive: str = "off", policy: str = "test") -> fusion.FusionState:
    """The protocol on the val pool (experts fitted on the train pool): the fusion's
    provisional weights and gamma, plus the held-out scores the test pool's choice needs.
    Raises ArraysError without train / val pools."""
    val = run.pools.get("val")
    if val is None or not len(val) or len(run.seen) < 2:
        raise ArraysError("the fusion needs held-out images of at least 2 seen classes "
                          "(val pool): train with val_fraction > 0")
    experts = build_experts(run, "val", names)
    return fusion.protocol(experts, val.labels, run.seen, len(run.classes), folds, seed,
                           transductive, val.inputs.get("vl"), run.text, run.scale, policy)


def apply(state: fusion.FusionState, run: RunArrays, pool_name: str = "test",
          choose: bool = True) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(fused class indices (n,), each expert's own argmax (n,)) for a pool. choose: let
    the state choose weights and gamma on this pool (the test pool; see
    fusion.apply_fusion), else apply it as it is (the Special-Package)."""
    names = [n for n in state.names if n in run.available()]
    experts = build_experts(run, pool_name, names)
    pool = run.pools[pool_name].inputs.get("vl")
    pred = fusion.apply_fusion(state, experts, pool, run.text, choose=choose)
    alone = {e.name: e.scores(list(state.seen)).argmax(1) for e in experts}
    return pred, alone


def summary(run: RunArrays) -> dict[str, Any]:
    """Pools and their sizes and inputs, for logs and fusion.json."""
    return {name: {"images": len(p), "inputs": sorted(p.inputs)} for name, p in run.pools.items()}
