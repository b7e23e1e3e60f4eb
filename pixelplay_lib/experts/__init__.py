"""The experts of a run: networks -> per-image arrays -> fusion experts -> one decision.

Five experts can vote (config field `experts`; `auto` = every one this run can build):
  resnet      the fine-tuned network's votes (seen classes)           model.py, train.py
  attributes  ridge regression from its features to class attributes  attributes.py
  imagenet    the untouched pretrained network's own 1000-way head     imagenet.py
  text        image-text zero-shot over all classes                    imagetext.py
  probe       logistic regression on image-text embeddings (seen)     fusion.py

`fit` (end of train) computes each expert's inputs on the training images (what fitted
experts learn from) and on the validation images (the protocol's pool), lets fusion.protocol
choose weights and gamma, and saves fusion.pt / fusion.json plus expert_train.npz (the
training-side arrays: predict refits the probe and the attribute model from them without
touching a training image). `decide` (predict) computes the same inputs on the test images
and applies the fusion; `score_special` does it on the Special-Package's labelled photos.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import checkpoint as ckpt
from ..config import Config
from ..data import Challenge, DataError, load_class_attributes
from ..inference import ViewPlan, classifier_forward, open_images, prepare, run_images
from ..model import Net, WeightsUnavailable
from ..pipeline import resolve_workers
from ..runtime import Runtime
from . import fusion, imagenet, imagetext

log = logging.getLogger("pixelplay")

TRAIN_ARRAYS = "expert_train.npz"
DEFAULT_VL_MODEL = Config.vl_model
# What the fused model is made of besides its weights: predict takes these from training.
VL_FIELDS = ("vl_model", "vl_flip", "prompts", "synonyms")


@dataclass
class Sources:
    """What the chosen experts run on. `config`: the training config (image size, arch,
    weights, votes); text: (n_classes, d) class text embeddings; attributes: (n_classes,
    a) class attributes; scale: the image-text model's logit scale."""

    names: list[str]
    config: Config
    net: Net | None = None
    pretrained: torch.nn.Module | None = None
    itm: imagetext.ImageTextModel | None = None
    text: np.ndarray | None = None
    scale: float = 100.0
    attributes: np.ndarray | None = None


def wanted(cfg: Config) -> set[str]:
    """The experts the config asks for (auto = all five, each only if available)."""
    spec = cfg.experts.strip()
    return set(fusion.EXPERT_NAMES) if spec == "auto" else {
        n.strip() for n in spec.split(",") if n.strip()}


def needs_network(cfg: Config) -> bool:
    """Whether train must fine-tune the ResNet (the resnet or attributes expert is asked)."""
    return bool(wanted(cfg) & {"resnet", "attributes"})


def open_sources(cfg: Config, trained: Config, ch: Challenge, rt: Runtime, net: Net | None
                 ) -> Sources:
    """Load what the asked experts need. With experts=auto an expert that cannot be built
    is left out with a warning saying why and how to enable it; one named explicitly raises
    (fusion.parse_experts). trained: the config the run was trained with."""
    asked, auto = wanted(cfg), cfg.experts.strip() == "auto"
    # eval mode (BatchNorm's running statistics) on the runtime's device: a network loaded
    # from model.pt comes back in training mode
    src = Sources([], trained, net=prepare(net, rt) if net is not None else None)
    available = []
    if net is not None:
        available.append("resnet")
    if net is not None and "attributes" in asked:
        try:
            src.attributes = load_class_attributes(ch.root, ch.classes)[0]
            available.append("attributes")
        except DataError as e:
            _skip(auto, "attributes", e)
    if "imagenet" in asked:
        try:
            src.pretrained = prepare(imagenet.load_imagenet_network(
                trained.arch, trained.weights, cfg.input_root), rt)
            available.append("imagenet")
        except (ValueError, WeightsUnavailable) as e:
            _skip(auto, "imagenet", e)
    if asked & {"text", "probe"} and (cfg.vl_model or not auto):
        try:
            src.itm = imagetext.load_model(cfg.vl_model, cfg.input_root, rt.device,
                                           rt.amp_dtype)
            src.text = imagetext.class_text_embeddings(src.itm, ch.classes, cfg.prompts,
                                                       cfg.synonyms, rt.device)
            src.scale = src.itm.logit_scale
            available += ["text", "probe"]
        except (imagetext.ModelNotFound, ValueError) as e:
            # Offline, the default hub model is simply not there; a model the user named is
            # a choice, and a typo in it must not quietly drop the best expert.
            _skip(auto and cfg.vl_model == DEFAULT_VL_MODEL, "text, probe", e)
    src.names = fusion.parse_experts(cfg.experts, available)
    log.info("experts: %s", ", ".join(src.names))
    return src


def _skip(quietly: bool, what: str, error: Exception) -> None:
    if not quietly:
        raise error
    log.warning("expert(s) %s left out: %s", what, error)


def pool_arrays(src: Sources, cfg: Config, rt: Runtime, paths: list[Path],
                indices: list[int], votes: int, keep_failed: bool, desc: str,
                imagenet: bool = True) -> dict[str, Any]:
    """Every array the experts need for the images paths[indices].

    Returns {"index": (n,) the indices that have every array, "logits": (n, 1 + votes,
    n_classes) fine-tuned network logits (central view, then votes), "features": (n, f) its
    central-view features, "imagenet_logits": (n, 1 + votes, 1000) (when `imagenet`),
    "vl": (n, d) image-text embeddings, "failed": [(index, error)], "lenient": {index:
    strict error} (decoded by the lenient second try, keep_failed only)}: the arrays of the
    chosen experts only. Decoded images and embeddings are cached for the whole `paths`
    list, so the pools of one list share them. keep_failed: an undecodable image keeps its
    row (blank views, a zero embedding: no opinion) so that a test image is still predicted.
    """
    parts: list[tuple[np.ndarray, dict[str, np.ndarray]]] = []
    failed: dict[int, str] = {}
    lenient: dict[int, str] = {}
    pretrained = src.pretrained if imagenet else None
    if src.net is not None or pretrained is not None:
        forward, keep = network_forward(src.net, pretrained)
        t = src.config
        plan = ViewPlan(t.image_size, votes=votes, seed=cfg.seed, scale_min=t.crop_scale_min,
                        rotation=t.rotation, fast_augment=t.fast_augment)
        images = open_images(paths, t.image_size, cfg, f"decoding {desc}", keep_failed)
        out = run_images(forward, images, indices, plan, rt,
                         batch_images=max(1, cfg.batch_size * 4 // plan.n_views),
                         workers=resolve_workers(cfg.num_workers), keep=keep,
                         keep_failed=keep_failed)
        failed.update({int(i): e for i, e in out["failed"]})
        lenient.update(getattr(images, "lenient", {}))
        parts.append((out["index"], {k: out[k] for k in keep}))
    if src.itm is not None:
        emb = imagetext.image_embeddings(src.itm, paths, cfg, rt, f"embedding {desc}",
                                         lenient=keep_failed)
        failed.update({int(i): e for i, e in emb["failed"] if int(i) in set(indices)})
        full = np.zeros((len(paths), emb["emb"].shape[1]), np.float32)
        full[np.asarray(emb["index"], dtype=int)] = emb["emb"]
        ok = set(np.asarray(emb["index"]).tolist())
        kept = [i for i in indices if keep_failed or i in ok]
        parts.append((np.asarray(kept, dtype=int), {"vl": full[kept]}))
    common = [int(i) for i in indices]
    for index, _ in parts:
        present = set(index.tolist())
        common = [i for i in common if i in present]
    result: dict[str, Any] = {"index": np.asarray(common, dtype=int),
                              "failed": sorted(failed.items()), "lenient": lenient}
    for index, arrays in parts:
        row = {int(i): r for r, i in enumerate(index)}
        take = [row[i] for i in common]
        result.update({k: v[take] for k, v in arrays.items()})
    return result


def network_forward(net: Net | None, pretrained: torch.nn.Module | None):
    """One pass of both networks on the same views: (forward, keep) for run_images."""
    forwards = ([classifier_forward(net)] if net is not None else []) + (
        [imagenet.imagenet_forward(pretrained)] if pretrained is not None else [])
    keep = {"logits": "all", "features": "first"} if net is not None else {}
    if pretrained is not None:
        keep.update(imagenet.KEEP)

    def forward(x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: t for f in forwards for name, t in f(x).items()}

    return forward, keep


def build_experts(src: Sources, pool: dict[str, Any], train: dict[str, Any],
                  classes: list[str]) -> list[fusion.Expert]:
    """The fusion experts of `src.names` scoring `pool`; fitted ones learn from `train`
    (arrays of labelled seen-class images, with "labels")."""
    experts: list[fusion.Expert] = []
    for name in src.names:
        if name == "resnet":
            experts.append(fusion.LogitExpert(mean_vote_logits(pool["logits"])))
        elif name == "attributes":
            experts.append(fusion.AttributeExpert(pool["features"], train["features"],
                                                  train["labels"], src.attributes))
        elif name == "imagenet":
            experts.append(imagenet.make_expert(pool[imagenet.OUTPUT], classes))
    experts += fusion.vision_language_experts(
        src.names, pool.get("vl"), src.text, src.scale, train.get("vl"), train.get("labels"))
    return experts


def mean_vote_logits(logits: np.ndarray) -> np.ndarray:
    """(n, views, classes) logits -> (n, classes) log of the mean probability over views
    (soft voting, which the fusion needs: a score per class, not one winner)."""
    t = torch.as_tensor(logits, dtype=torch.float64)
    return torch.log(torch.softmax(t, -1).mean(1)).numpy()


@dataclass
class Fitted:
    """A fitted fusion with its experts' sources and the labelled arrays the fitted experts
    learn from: `predict` classifies any list of images."""

    state: fusion.FusionState
    src: Sources
    train: dict[str, np.ndarray]
    classes: list[str]

    def predict(self, cfg: Config, rt: Runtime, paths: list[Path], desc: str,
                keep_failed: bool = True
                ) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, Any]]:
        """(fused class indices (n,), each expert's own argmax (n,), the pool's arrays)."""
        pool = pool_arrays(self.src, cfg, rt, paths, list(range(len(paths))), cfg.tta_votes,
                           keep_failed, desc)
        experts = build_experts(self.src, pool, self.train, self.classes)
        pred = fusion.apply_fusion(self.state, experts, pool.get("vl"), self.src.text)
        alone = {e.name: e.scores(list(self.state.seen)).argmax(1) for e in experts}
        return pred, alone, pool


def fit(cfg: Config, rt: Runtime, ch: Challenge, train_idx: list[int], val_idx: list[int],
        net: Net | None) -> Fitted:
    """Train side: the experts score the validation images (votes, as predict will), the
    fitted ones learn from the training images (central views), the protocol chooses the
    fusion; fusion.pt / fusion.json and expert_train.npz (every labelled image's arrays,
    for the final fits) are written to output_dir."""
    src = open_sources(cfg, cfg, ch, rt, net)
    paths = [p for p, _ in ch.train_samples]
    labels = np.array([label for _, label in ch.train_samples])
    common = dict(src=src, cfg=cfg, rt=rt, paths=paths, keep_failed=False)
    train = pool_arrays(indices=train_idx, votes=0, desc="training images", imagenet=False,
                        **common)
    val = pool_arrays(indices=val_idx, votes=cfg.tta_votes, desc="validation images",
                      **common)
    train["labels"], val["labels"] = labels[train["index"]], labels[val["index"]]
    if len(val["labels"]) and len(ch.seen) >= 2:
        experts = build_experts(src, val, train, ch.classes)
        state = fusion.fit_fusion(cfg, experts, val["labels"], ch.seen, len(ch.classes),
                                  val.get("vl"), src.text, src.scale)
    else:  # nothing held out to tune on: every expert at weight 1, no offset
        log.warning("fusion: no validation images or fewer than 2 seen classes; every "
                    "expert weighs 1, gamma 0 (untuned)")
        state = fusion.FusionState(src.names, [1.0] * len(src.names), 0.0, list(ch.seen),
                                   len(ch.classes), scale=src.scale, report={"untuned": True})
        fusion.save_fusion(state, cfg.output_dir)
    # The final fits learn from every labelled image: training + validation.
    arrays = {k: np.concatenate([a for a in (train[k], val[k]) if len(a)] or [train[k]])
              for k in ("features", "vl", "labels") if k in train}
    if src.text is not None:  # lets predict check that it embeds with the same model
        arrays["text"] = src.text
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    ckpt.atomic_write_bytes(Path(cfg.output_dir) / TRAIN_ARRAYS, buffer.getvalue())
    return Fitted(state, src, arrays, ch.classes)


def load_fitted(cfg: Config, rt: Runtime, ch: Challenge, run_dir: Path, trained: Config,
                net: Net | None) -> Fitted:
    """Predict side: the fusion train fitted in run_dir (fusion.pt, expert_train.npz), with
    the sources of its experts of non-zero weight loaded again. cfg.zs_gamma, when a
    number, overrides the fitted gamma."""
    state = fusion.load_fusion(run_dir)
    if cfg.zs_gamma != "auto":
        state.gamma = float(cfg.zs_gamma)
    used = [n for n, w in zip(state.names, state.weights, strict=True) if w]
    if state.transductive_weight and "text" not in used:
        used.append("text")  # the transductive term needs the image-text embeddings
    # The image-text model and prompts are part of the fitted model (like image_size): the
    # training run's, unless predict names another model explicitly (then checked below).
    vl = {k: getattr(trained, k) for k in VL_FIELDS}
    if cfg.vl_model != DEFAULT_VL_MODEL:
        vl["vl_model"] = cfg.vl_model
    src = open_sources(Config(**{**cfg.to_dict(), **vl, "experts": ",".join(used)}), trained,
                       ch, rt, net)
    path = run_dir / TRAIN_ARRAYS
    if not path.is_file():
        raise FileNotFoundError(f"no {path}: train writes it with fusion.pt; point "
                                "model_path / output_dir at the complete train run")
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    check_same_text(src, arrays, trained.vl_model)
    return Fitted(state, src, arrays, ch.classes)


def check_same_text(src: Sources, arrays: dict[str, np.ndarray], trained_model: str) -> None:
    """The class text embeddings predict computes must be those train fitted with: another
    image-text model (or other prompts) would feed the probe embeddings of another space.
    Raises ValueError naming both models and the fix."""
    if src.text is None or "text" not in arrays:
        return
    same = arrays["text"].shape == src.text.shape and float(
        (arrays["text"] * src.text).sum(1).min()) > 0.99  # fp16 vs fp32 text towers agree
    if not same:
        raise ValueError(
            f"the image-text model used now ({src.itm.name if src.itm else '?'}) gives other "
            f"class embeddings than the one the fusion was fitted with ({trained_model}): "
            "predict with the training run's --vl-model / --prompts / --synonyms, or train "
            "again with the new model")


def score_special(cfg: Config, rt: Runtime, ch: Challenge, fitted: Fitted
                  ) -> dict[str, Any] | None:
    """Every expert and the fusion on the Special-Package's labelled photos (never trained
    on): writes special_scores.csv to output_dir, logs the table, returns it as a dict
    (rows overall / seen / unseen / per class), or None when the package is absent or
    unreadable (the log says why)."""
    from ..special import load_special_package, score_table

    package, message = load_special_package(ch.root, ch.classes, cfg.input_root)
    if package is None:
        log.info(message)
        return None
    log.info(package.summary(ch.classes, ch.unseen))
    pred, alone, _ = fitted.predict(cfg, rt, package.files, "Special-Package images")
    table = score_table({**alone, "fusion": pred}, package.labels, ch.classes, ch.unseen)
    out = Path(cfg.output_dir)
    ckpt.atomic_write_text(out / "special_scores.csv", table.to_csv(index_label="images of"))
    log.info("Special-Package accuracy (labelled photos, never trained on):\n%s",
             table.loc[["overall", "seen", "unseen"]].round(3).to_string())
    return json.loads(table.round(4).to_json(orient="index"))
