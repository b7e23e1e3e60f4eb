"""The experts of a run: networks -> per-image arrays -> fusion experts -> one decision.

Five experts can vote (config field `experts`; `auto` = every one this run can build):
  resnet      the fine-tuned network's votes (seen classes)           model.py, train.py
  attributes  ridge regression from its features to class attributes  attributes.py
  imagenet    the untouched pretrained network's own 1000-way head     imagenet.py
  text        image-text zero-shot over all classes                    imagetext.py
  probe       logistic regression on image-text embeddings (seen)     fusion.py

`fit` (end of train) computes each expert's inputs on the training images (what fitted
experts learn from) and on the validation images (held out: the protocol's pool), saves them
as arrays (experts/arrays.py: the contract `fuse` reads), lets the leave-classes-out
protocol choose provisional weights and gamma, and saves fusion.pt / fusion.json. `Fitted.
predict` (predict) computes the same inputs on the test images, saves them too, and lets the
fusion choose its weights and gamma on the test pool (experts/testpool.py) before deciding;
`score_special` applies that choice to the Special-Package's labelled photos.
"""

from __future__ import annotations

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
from . import arrays, fusion, imagenet, imagetext

log = logging.getLogger("pixelplay")

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
    for index, outputs in parts:
        row = {int(i): r for r, i in enumerate(index)}
        take = [row[i] for i in common]
        result.update({k: v[take] for k, v in outputs.items()})
    return result


def network_forward(net: Net | None, pretrained: torch.nn.Module | None):
    """One pass of both networks on the same views: (forward, keep) for run_images. When
    they begin with the same frozen, bit-identical modules (trainable=layer4,fc on ImageNet
    weights: conv1..layer3), those run once per view for both
    (imagenet.shared_trunk_forward); otherwise each network runs its own forward."""
    keep = {"logits": "all", "features": "first"} if net is not None else {}
    if pretrained is not None:
        keep.update(imagenet.KEEP)
    shared = (imagenet.shared_trunk_forward(net, pretrained)
              if net is not None and pretrained is not None else None)
    if shared is not None:
        return shared, keep
    forwards = ([classifier_forward(net)] if net is not None else []) + (
        [imagenet.imagenet_forward(pretrained)] if pretrained is not None else [])

    def forward(x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: t for f in forwards for name, t in f(x).items()}

    return forward, keep


def to_pool(raw: dict[str, Any], ids: list[str], labels: np.ndarray | None,
            classes: list[str], keep: tuple[str, ...] = tuple(arrays.INPUTS)) -> arrays.Pool:
    """pool_arrays' output -> the expert inputs of arrays.Pool (see arrays.py): mean-vote
    log-probabilities, features, the ImageNet head on the classes, image-text embeddings;
    only the inputs named in `keep`."""
    inputs: dict[str, np.ndarray] = {}
    n = len(raw["index"])
    if not n:  # nothing held out (a tiny dataset): empty inputs of the right width
        raw = {**raw, **{k: np.zeros((0, 1, len(classes))) for k in ("logits",) if k in raw}}
        if imagenet.OUTPUT in raw:
            raw[imagenet.OUTPUT] = np.zeros((0, 1, imagenet.N_IMAGENET))
    if "logits" in raw and "resnet" in keep:
        inputs["resnet"] = mean_vote_logits(raw["logits"])
    if "features" in raw and "features" in keep:
        inputs["features"] = raw["features"]
    if imagenet.OUTPUT in raw and "imagenet" in keep:
        inputs["imagenet"] = imagenet.make_expert(raw[imagenet.OUTPUT], classes).log_probs
    if "vl" in raw and "vl" in keep:
        inputs["vl"] = raw["vl"]
    return arrays.Pool(np.asarray(ids, dtype=str), np.full(n, -1) if labels is None
                       else np.asarray(labels), inputs)


def mean_vote_logits(logits: np.ndarray) -> np.ndarray:
    """(n, views, classes) logits -> (n, classes) log of the mean probability over views
    (soft voting, which the fusion needs: a score per class, not one winner)."""
    t = torch.as_tensor(logits, dtype=torch.float64)
    return torch.log(torch.softmax(t, -1).mean(1)).numpy()


def policy(cfg: Config) -> str:
    """Who chooses weights and gamma at prediction: zs_gamma auto = the test pool,
    protocol = the leave-classes-out protocol (or a number: fixed, see load_fitted)."""
    return "test" if cfg.zs_gamma == "auto" else "protocol"


@dataclass
class Fitted:
    """A fitted fusion with its experts' sources and the run's arrays: `predict` classifies
    any list of images (and adds them to the arrays as a pool)."""

    state: fusion.FusionState
    src: Sources
    run: arrays.RunArrays
    output_dir: Path

    def predict(self, cfg: Config, rt: Runtime, paths: list[Path], desc: str,
                pool_name: str, choose: bool, labels: np.ndarray | None = None
                ) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, Any]]:
        """(fused class indices (n,), each expert's own argmax (n,), the raw pool arrays)
        for `paths` (every image gets a row); the pool is saved as arrays/<pool_name>.npz.
        choose: the fusion chooses weights and gamma on these images (the test pool)."""
        raw = pool_arrays(self.src, cfg, rt, paths, list(range(len(paths))), cfg.tta_votes,
                          True, desc)
        pool = to_pool(raw, [p.name for p in paths], labels, self.run.classes)
        self.run.pools[pool_name] = pool
        arrays.save_pool(self.output_dir, pool_name, pool)
        pred, alone = arrays.apply(self.state, self.run, pool_name, choose)
        return pred, alone, raw


def fit(cfg: Config, rt: Runtime, ch: Challenge, train_idx: list[int], val_idx: list[int],
        net: Net | None) -> Fitted:
    """Train side: the experts' inputs on the training images (central views; fitted
    experts learn from them) and on the validation images (votes, as predict will), saved
    as arrays/; the protocol's provisional fusion, saved as fusion.pt / fusion.json."""
    src = open_sources(cfg, cfg, ch, rt, net)
    paths = [p for p, _ in ch.train_samples]
    labels = np.array([label for _, label in ch.train_samples])
    common = dict(src=src, cfg=cfg, rt=rt, paths=paths, keep_failed=False)
    train = pool_arrays(indices=train_idx, votes=0, desc="training images", imagenet=False,
                        **common)
    val = pool_arrays(indices=val_idx, votes=cfg.tta_votes, desc="validation images",
                      **common)
    out = Path(cfg.output_dir)
    run = arrays.RunArrays(ch.classes, list(ch.seen), list(ch.unseen), src.scale,
                           src.itm.name if src.itm else None, src.text, src.attributes)
    names = {k: [str(paths[i].relative_to(ch.root)) for i in raw["index"]]
             for k, raw in (("train", train), ("val", val))}
    run.pools["train"] = to_pool(train, names["train"], labels[train["index"]], ch.classes,
                                 keep=("features", "vl"))
    run.pools["val"] = to_pool(val, names["val"], labels[val["index"]], ch.classes)
    arrays.save_run(run, out)
    for name in ("train", "val"):
        arrays.save_pool(out, name, run.pools[name])
    if len(run.pools["val"]) and len(ch.seen) >= 2:
        state = arrays.fit(run, src.names, cfg.zs_folds, cfg.seed, cfg.transductive,
                           policy(cfg))
    else:  # nothing held out to tune on: every expert at weight 1, no offset
        log.warning("fusion: no validation images or fewer than 2 seen classes; every "
                    "expert weighs 1, gamma 0 (untuned)")
        state = fusion.FusionState(src.names, [1.0] * len(src.names), 0.0, list(ch.seen),
                                   len(ch.classes), scale=src.scale, report={"untuned": True},
                                   policy="protocol")
    fusion.save_fusion(state, out)
    for line in fusion.report_lines(state):
        log.info(line)
    return Fitted(state, src, run, out)


def load_fitted(cfg: Config, rt: Runtime, ch: Challenge, run_dir: Path, trained: Config,
                net: Net | None) -> Fitted:
    """Predict side: the fusion train fitted in run_dir (fusion.pt, arrays/), with the
    sources of its experts loaded again. cfg.zs_gamma: auto = choose on the test pool,
    protocol = keep the protocol's choice, a number = that gamma (and the protocol's
    weights); cfg.transductive sets the term's mode for the test-pool choice."""
    state = fusion.load_fusion(run_dir)
    state.policy = policy(cfg) if state.heldout is not None else "protocol"
    state.transductive = cfg.transductive
    if cfg.zs_gamma not in ("auto", "protocol"):
        state.gamma = float(cfg.zs_gamma)
    used = [n for n, w in zip(state.names, state.weights, strict=True)
            if w or state.policy == "test"]
    # The image-text model and prompts are part of the fitted model (like image_size): the
    # training run's, unless predict names another model explicitly (then checked below).
    vl = {k: getattr(trained, k) for k in VL_FIELDS}
    if cfg.vl_model != DEFAULT_VL_MODEL:
        vl["vl_model"] = cfg.vl_model
    src = open_sources(Config(**{**cfg.to_dict(), **vl, "experts": ",".join(used)}), trained,
                       ch, rt, net)
    run = arrays.load(run_dir)
    check_same_text(src, run.text, trained.vl_model)
    return Fitted(state, src, run, Path(cfg.output_dir))


def check_same_text(src: Sources, saved_text: np.ndarray | None, trained_model: str) -> None:
    """The class text embeddings predict computes must be those train fitted with: another
    image-text model (or other prompts) would feed the probe embeddings of another space.
    Raises ValueError naming both models and the fix."""
    if src.text is None or saved_text is None:
        return
    same = saved_text.shape == src.text.shape and float(
        (saved_text * src.text).sum(1).min()) > 0.99  # fp16 vs fp32 text towers agree
    if not same:
        raise ValueError(
            f"the image-text model used now ({src.itm.name if src.itm else '?'}) gives other "
            f"class embeddings than the one the fusion was fitted with ({trained_model}): "
            "predict with the training run's --vl-model / --prompts / --synonyms, or train "
            "again with the new model")


def score_special(cfg: Config, rt: Runtime, ch: Challenge, fitted: Fitted, name: str
                  ) -> dict[str, Any] | None:
    """Every expert and the fusion (as chosen for the submission `name`) on the
    Special-Package's labelled photos (never trained on): writes <name>.special.csv beside
    the submission, logs the table, returns it as a dict (rows overall / seen / unseen / per
    class), or None when the package is absent or unreadable (the log says why)."""
    from ..special import load_special_package

    package, message = load_special_package(ch.root, ch.classes, cfg.input_root)
    if package is None:
        log.info(message)
        return None
    log.info(package.summary(ch.classes, ch.unseen))
    pred, alone, _ = fitted.predict(cfg, rt, package.files, "Special-Package images",
                                    "special", choose=False,
                                    labels=np.asarray(package.labels))
    table = table_for(pred, alone, package.labels, ch.classes, ch.unseen)
    return write_special(table, Path(cfg.output_dir), name)


def table_for(pred: np.ndarray, alone: dict[str, np.ndarray], labels, classes: list[str],
              unseen: list[int]):
    """The Special-Package score table (special.score_table) of a decision and its experts."""
    from ..special import score_table

    return score_table({**alone, "fusion": pred}, labels, classes, unseen)


def write_special(table, out: Path, name: str) -> dict[str, Any]:
    """<name>.special.csv (atomic) and the log table; returns the table as a dict."""
    ckpt.atomic_write_text(out / f"{name}.special.csv", table.to_csv(index_label="images of"))
    log.info("Special-Package accuracy of %s (labelled images, never trained on):\n%s", name,
             table.loc[["overall", "seen", "unseen"]].round(3).to_string())
    return json.loads(table.round(4).to_json(orient="index"))
