"""Rows d and e of the benchmark: the vision-language path (imported by bench/bench.py).

  d  protocol + fusion on cached embeddings (CPU seconds). SYNTHETIC arrays of the
     challenge's size go through experts.build_experts and fusion.fit_fusion exactly as
     experts.fit calls them: the text, probe, resnet and attribute experts, transductive auto.
  e  image-embedding throughput of an image-text model built from a config written here,
     with RANDOM weights (nothing is downloaded), through imagetext.image_embeddings (the
     decoded-image cache, run_images views with the mirror, AMP, fp16 weights on a GPU as
     experts.open_sources loads them). On CUDA the default vl_model's architecture
     (google/siglip2-so400m-patch16-256 is a fixed-resolution SigLIP 2 checkpoint:
     transformers loads it as SiglipModel, so SiglipConfig with the So400m/16 vision dims at
     256 px is the real architecture) and the winner's openai/clip-vit-large-patch14; on a
     CPU a tiny SigLIP of the same family, so that the row exists (its figures say nothing
     about the real model).
"""

from __future__ import annotations

import gc
import math
import tempfile
import time
import types
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pixelplay_lib import experts as experts_mod
from pixelplay_lib.config import make_config
from pixelplay_lib.data import bundled_attributes, fill_missing
from pixelplay_lib.experts import fusion, imagetext
from pixelplay_lib.inference import open_images
from pixelplay_lib.runtime import Runtime

# ------------------------------------------------------------------ (d) protocol + fusion

N_CLASSES, N_SEEN = 50, 40
FEATURE_DIM = 2048  # ResNet-101 pooled features
PROTOCOL_SCALE = 100.0  # the logit scale the text / probe experts use (fusion's default)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@dataclass
class SyntheticVL:
    """Challenge-sized synthetic expert inputs (see synthetic_vl)."""

    text: np.ndarray  # (50, dim) class text embeddings, unit rows
    attributes: np.ndarray  # (50, 85) AwA2 class attributes (bundled table)
    seen: list[int]  # the 40 seen classes
    train: dict[str, np.ndarray]  # "vl" (m, dim), "features" (m, 2048), "labels" (m,)
    val: dict[str, np.ndarray]  # "vl", "features", "logits" (n, 1 + votes, 50), "labels"


def synthetic_vl(n_train: int, n_val: int, dim: int, votes: int, seed: int) -> SyntheticVL:
    """Synthetic arrays shaped like the challenge's: 40 seen of 50 classes, image-text
    embeddings of width `dim`, ResNet logits of 1 + votes views and 2048-d features.

    Class structure comes from the real AwA2 attribute table, so similar animals are close
    in every space (the experts confuse the same pairs the real ones would). Image
    embeddings = a shared offset (the image-text modality gap) + the class's text direction
    + a visual-only class direction (what the probe can learn beyond the text) + noise;
    features are linear in the class attributes (what the attribute expert can use) plus a
    class-specific part; logits favour the true class, its look-alikes, then the rest
    (unseen columns low: the network never trained them). Coefficients were tuned so that
    the experts alone land near real figures (seed 0: text zero-shot 0.89 over the 50
    classes, the ResNet's mean vote 0.95 over the seen ones).
    """
    rng = np.random.default_rng(seed)
    attrs = fill_missing(bundled_attributes()[2])[:N_CLASSES]
    centred = _unit(attrs - attrs.mean(0))
    similar = centred @ centred.T  # (50, 50) class similarity in [-1, 1]
    text, visual = (_unit(0.9 * _unit(centred @ rng.normal(size=(attrs.shape[1], dim)))
                          + 0.44 * _unit(rng.normal(size=(N_CLASSES, dim)))) for _ in range(2))
    gap = _unit(rng.normal(size=dim))
    seen = sorted(int(c) for c in rng.choice(N_CLASSES, N_SEEN, replace=False))
    share = rng.uniform(0.4, 1.6, N_SEEN)  # AwA2's classes are unbalanced
    mix = rng.normal(size=(attrs.shape[1], FEATURE_DIM)) / math.sqrt(attrs.shape[1])
    own = rng.normal(size=(N_CLASSES, FEATURE_DIM))

    def draw(n: int) -> dict[str, np.ndarray]:
        labels = rng.choice(seen, n, p=share / share.sum())
        noise = rng.normal(size=(n, dim)) / math.sqrt(dim)
        vl = _unit(gap + 0.16 * text[labels] + 0.16 * visual[labels] + noise)
        feats = np.maximum(0.0, centred[labels] @ mix + own[labels]
                           + rng.normal(size=(n, FEATURE_DIM)))
        return {"vl": vl.astype(np.float32), "features": feats.astype(np.float32),
                "labels": labels}

    train, val = draw(n_train), draw(n_val)
    y = val["labels"]
    base = 2.5 * np.eye(N_CLASSES)[y] + 2.0 * similar[y] + rng.normal(size=(len(y), N_CLASSES))
    base[:, [c for c in range(N_CLASSES) if c not in seen]] -= 4.0
    val["logits"] = (base[:, None, :] + 0.8 * rng.normal(size=(len(y), 1 + votes, N_CLASSES))
                     ).astype(np.float32)
    return SyntheticVL(text, attrs, seen, train, val)


@dataclass
class TimedExpert:
    """An expert whose `scores` calls are timed (the protocol sees the same name, covers
    and scores): which expert's fitting the protocol's time goes to."""

    inner: Any
    seconds: float = 0.0
    calls: int = 0

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def covers(self) -> set[int] | None:
        return self.inner.covers

    def scores(self, fit_classes: list[int]) -> np.ndarray:
        t = time.perf_counter()
        out = self.inner.scores(fit_classes)
        self.seconds += time.perf_counter() - t
        self.calls += 1
        return out


def bench_protocol(n_train: int, n_val: int, dim: int, votes: int, folds: int, seed: int
                   ) -> dict[str, Any]:
    """Row d: seconds of experts.build_experts + fusion.fit_fusion on synthetic arrays.

    Returns wall seconds, the chosen weights / gamma / transductive weight, each expert's
    share of the time (its scores calls, i.e. its refits on every fold) and the protocol's
    (synthetic) table."""
    t = time.perf_counter()
    data = synthetic_vl(n_train, n_val, dim, votes, seed)
    gen_s = time.perf_counter() - t
    names = ["resnet", "attributes", "text", "probe"]  # fusion.EXPERT_NAMES order
    with tempfile.TemporaryDirectory(prefix="pixelplay-bench-fusion-") as out:
        cfg = make_config(output_dir=out, zs_folds=folds, seed=seed, transductive="auto")
        src = experts_mod.Sources(names, cfg, text=data.text, scale=PROTOCOL_SCALE,
                                  attributes=data.attributes)
        classes = [f"class{c}" for c in range(N_CLASSES)]
        t, cpu = time.perf_counter(), time.process_time()
        built = experts_mod.build_experts(src, data.val, data.train, classes)
        timed = [TimedExpert(e) for e in built]
        state = fusion.fit_fusion(cfg, timed, data.val["labels"], data.seen, N_CLASSES,
                                  data.val["vl"], data.text, PROTOCOL_SCALE)
        wall, cpu = time.perf_counter() - t, time.process_time() - cpu
    report = state.report
    return {"seconds": wall, "cpu_seconds": cpu, "threads": torch.get_num_threads(),
            "synthetic": True, "generate_s": gen_s,
            "sizes": {"train": n_train, "val": n_val, "dim": dim, "feature_dim": FEATURE_DIM,
                      "classes": N_CLASSES, "seen": N_SEEN, "votes": votes, "folds": folds},
            "weights": dict(zip(state.names, state.weights, strict=True)),
            "gamma": state.gamma, "transductive_weight": state.transductive_weight,
            "transductive_kept": bool(report.get("transductive", {}).get("kept")),
            "expert_seconds": {e.name: e.seconds for e in timed},
            "expert_calls": {e.name: e.calls for e in timed},
            "alone_acc": {n: r["acc"] for n, r in report["experts"].items()},
            "fused": report["fusion"],
            "with_transductive": report.get("transductive", {}).get("with"),
            "table": fusion.report_lines(state)}


# ------------------------------------------------------------------ (e) embedding throughput

# Vision towers (transformers config fields). The text towers are tiny: image_embeddings
# runs only vision_model (+ visual_projection), so their size changes nothing measured.
SIGLIP_SO400M_256 = {"hidden_size": 1152, "num_hidden_layers": 27, "num_attention_heads": 16,
                     "intermediate_size": 4304, "patch_size": 16, "image_size": 256}
CLIP_VIT_L14_224 = {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                    "intermediate_size": 4096, "patch_size": 14, "image_size": 224}
SIGLIP_TINY_256 = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                   "intermediate_size": 256, "patch_size": 16, "image_size": 256}
TINY_TEXT = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
             "intermediate_size": 64, "vocab_size": 128, "max_position_embeddings": 16,
             "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
CLIP_PROJECTION = 768  # openai/clip-vit-large-patch14's embedding width
T4_FP16_TFLOPS = 65.0  # NVIDIA's T4 datasheet peak (fp16 tensor cores, 70 W)


@dataclass(frozen=True)
class TowerSpec:
    """One image-text architecture of row e: family "siglip" | "clip", vision dims."""

    label: str
    family: str
    vision: dict

    @property
    def side(self) -> int:
        return int(self.vision["image_size"])


SPECS = {"siglip-so400m": TowerSpec("SigLIP 2 So400m/16 @256 (default vl_model's architecture)",
                                    "siglip", SIGLIP_SO400M_256),
         "clip-vit-l14": TowerSpec("CLIP ViT-L/14 @224 (the winner's openai/clip-vit-large-"
                                   "patch14)", "clip", CLIP_VIT_L14_224),
         "siglip-tiny": TowerSpec("tiny SigLIP @256 (hidden 64, 2 layers; CPU stand-in, not "
                                  "the real model's speed)", "siglip", SIGLIP_TINY_256)}


def _model_config(spec: TowerSpec):
    from transformers import CLIPConfig, SiglipConfig

    if spec.family == "siglip":
        return SiglipConfig(text_config=TINY_TEXT, vision_config=spec.vision)
    return CLIPConfig(text_config=TINY_TEXT, vision_config=spec.vision,
                      projection_dim=CLIP_PROJECTION)


def _processor(spec: TowerSpec):
    """The image half of the checkpoint's processor (only image_processor is used)."""
    from transformers import CLIPImageProcessor, SiglipImageProcessor

    if spec.family == "siglip":  # SigLIP squashes to the square, mean = std = 0.5
        ip = SiglipImageProcessor(size={"height": spec.side, "width": spec.side})
    else:  # CLIP: shortest edge then centre crop, CLIP's mean / std (the class defaults)
        ip = CLIPImageProcessor(size={"shortest_edge": spec.side},
                                crop_size={"height": spec.side, "width": spec.side})
    return types.SimpleNamespace(image_processor=ip)


def random_image_text(spec: TowerSpec, rt: Runtime) -> imagetext.ImageTextModel:
    """The architecture with random weights, built on rt.device (no CPU init of 400M
    parameters), fp16 when the runtime uses AMP (as experts.open_sources loads it)."""
    from transformers import AutoModel

    torch.manual_seed(0)
    with torch.device(rt.device):
        model = AutoModel.from_config(_model_config(spec))
    if rt.amp_dtype is not None:
        model.half()
    model.eval()
    return imagetext.ImageTextModel(model, _processor(spec), f"random:{spec.family}",
                                    "config in bench/bench_vl.py")


def view_flops(spec: TowerSpec) -> float:
    """FLOPs of one view through the vision tower (2 per multiply-add), counted by
    FlopCounterMode on the meta device (no memory, no arithmetic) with eager attention: the
    counter has no formula for every fused attention kernel; the FLOPs are the same."""
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import AutoModel

    with torch.device("meta"):
        model = AutoModel.from_config(_model_config(spec), attn_implementation="eager")
        x = torch.zeros(1, 3, spec.side, spec.side)
    tower = imagetext._VisionTower(model).eval()
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        tower(x)
    return float(counter.get_total_flops())


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _reset_peak(dev: torch.device) -> None:
    if dev.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)


def _peak_gib(dev: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(dev) / 2 ** 30 if dev.type == "cuda" else None


def model_rate(itm: imagetext.ImageTextModel, rt: Runtime, batch_images: int, n_views: int,
               steps: int, warm: int) -> float:
    """Images per second of the vision tower alone: `steps` passes of batch_images x n_views
    uint8 views already in memory (normalised on the device, AMP), after `warm` passes."""
    side, mean, std = itm.view_settings()
    tower = imagetext._VisionTower(itm.model).to(rt.device).eval()
    x = torch.randint(0, 256, (batch_images * n_views, 3, side, side), dtype=torch.uint8)
    if rt.device.type == "cuda":
        x = x.pin_memory()
    m = torch.tensor(mean, device=rt.device).view(1, 3, 1, 1) * 255
    s = torch.tensor(std, device=rt.device).view(1, 3, 1, 1) * 255

    def step() -> None:
        with rt.autocast():
            tower(rt.to_device(x, m, s))

    with torch.inference_mode():
        for _ in range(warm):
            step()
        _sync(rt.device)
        t = time.perf_counter()
        for _ in range(steps):
            step()
        _sync(rt.device)
    return steps * batch_images / (time.perf_counter() - t)


def bench_embeddings(key: str, paths: list[Path], rt: Runtime, workers: int,
                     batch_images: int, steps: int, matmul_tflops: float, work: Path
                     ) -> dict[str, Any]:
    """Row e for one architecture (SPECS[key]): model-only rate, decoded-cache build, and
    imagetext.image_embeddings over `paths` (cache already built: views + forward), with
    FLOPs, the compute-bound rate at `matmul_tflops`, peak GPU memory and projections for
    10,000 images."""
    spec = SPECS[key]
    dev = rt.device
    flip = make_config().vl_flip  # the default: each image and its mirror
    n_views = 1 + int(flip)
    flops = view_flops(spec) * n_views
    _reset_peak(dev)
    itm = random_image_text(spec, rt)
    warm = 3 if dev.type == "cuda" else 1
    model_img_s = model_rate(itm, rt, batch_images, n_views, steps, warm)
    model_peak = _peak_gib(dev)

    cfg = make_config(output_dir=str(work / key / "out"), cache_dir=str(work / key / "cache"),
                      num_workers=workers, vl_batch_size=batch_images, vl_flip=flip)
    side = itm.view_settings()[0]
    t = time.perf_counter()
    open_images(paths, side, cfg, f"bench {key} cache")
    decode_s = time.perf_counter() - t
    _reset_peak(dev)
    t = time.perf_counter()
    out = imagetext.image_embeddings(itm, paths, cfg, rt, f"bench {key} embeddings")
    _sync(dev)
    embed_s = time.perf_counter() - t
    peak = _peak_gib(dev)
    again = replace(cfg, output_dir=str(work / key / "out2"))  # a second run, warm kernels
    t = time.perf_counter()
    imagetext.image_embeddings(itm, paths, again, rt, f"bench {key} embeddings (again)")
    _sync(dev)
    embed2_s = time.perf_counter() - t
    n = len(paths)
    embed_img_s = n / min(embed_s, embed2_s)
    bound = matmul_tflops * 1e12 / flops
    decode_img_s = n / decode_s
    per_core_decode = decode_img_s / max(workers, 1)
    e2e_img_s = n / (decode_s + min(embed_s, embed2_s))
    fraction = model_img_s / bound
    t4 = 2 * T4_FP16_TFLOPS * 1e12 * fraction / flops  # img/s of T4 x2 at its peak
    del itm, out
    _reset_peak(dev)
    return {"label": spec.label, "family": spec.family, "vision": spec.vision,
            "random_weights": True, "images": n, "views_per_image": n_views,
            "batch_images": batch_images, "workers": workers,
            "weights_dtype": "fp16" if rt.amp_dtype is not None else "fp32",
            "amp": str(rt.amp_dtype).replace("torch.", "") if rt.amp_dtype else "off",
            "gflop_per_view": flops / n_views / 1e9, "gflop_per_image": flops / 1e9,
            "matmul_tflops": matmul_tflops, "compute_bound_img_s": bound,
            "model_img_s": model_img_s, "model_pct_of_bound": 100 * fraction,
            "model_steps": steps, "decode_s": decode_s, "decode_img_s": decode_img_s,
            "embed_s": embed_s, "embed_again_s": embed2_s, "embed_img_s": embed_img_s,
            "end_to_end_img_s": e2e_img_s,
            "peak_gib_model_only": model_peak, "peak_gib_embeddings": peak,
            "projected_10k_s": {
                "this_device_end_to_end": 1e4 / e2e_img_s,
                "this_device_model_only": 1e4 / model_img_s,
                "two_devices_model_only": 1e4 / (2 * model_img_s),
                "t4x2_model_only_at_peak": 1e4 / t4,
                "t4x2_decode_4_cores": 1e4 / (4 * per_core_decode)}}


# ------------------------------------------------------------------ report


def _num(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 100 else f"{v:,.0f}"


def table(res: dict) -> str:
    """Markdown table of rows d and e ("" when neither ran)."""
    lines = []
    d = res.get("d")
    if d:
        z = d["sizes"]
        weights = ", ".join(f"{n} {w:g}" for n, w in d["weights"].items())
        kept = "kept" if d["transductive_kept"] else "not kept"
        lines.append(f"| d | protocol + fusion on cached embeddings (SYNTHETIC arrays: "
                     f"{z['train']:,} train / {z['val']} val, d={z['dim']}; CPU) | "
                     f"**{d['seconds']:.1f} s**; weights {weights}; gamma {d['gamma']:.2f}; "
                     f"transductive weight {d['transductive_weight']:g} ({kept}) |")
    for key, e in (res.get("e") or {}).items():
        if not isinstance(e, dict):
            continue
        if "error" in e:
            lines.append(f"| e | image embeddings, {key} | FAILED: {e['error'][:200]} |")
            continue
        peak = (f"; peak GPU memory {e['peak_gib_embeddings']:.2f} GiB"
                if e["peak_gib_embeddings"] is not None else "")
        lines.append(f"| e | image embeddings, {e['label']}, random weights, "
                     f"{res['device']['kind'].upper()} | **{_num(e['end_to_end_img_s'])} img/s** "
                     f"end to end (decode {_num(e['decode_img_s'])}, embed "
                     f"{_num(e['embed_img_s'])}); model alone {_num(e['model_img_s'])} img/s = "
                     f"{e['model_pct_of_bound']:.0f}% of the compute-bound "
                     f"{_num(e['compute_bound_img_s'])}{peak}; 10,000 images: "
                     f"{_num(e['projected_10k_s']['this_device_end_to_end'])} s |")
    if not lines:
        return ""
    return "\n".join(["| row | what | result |", "|---|---|---|", *lines])


def notes(res: dict) -> list[str]:
    """One line per fact behind rows d and e."""
    out = []
    d = res.get("d")
    if d:
        spent = ", ".join(f"{n} {s:.1f} s ({d['expert_calls'][n]} refits)"
                          for n, s in sorted(d["expert_seconds"].items(), key=lambda x: -x[1]))
        rest = d["seconds"] - sum(d["expert_seconds"].values())
        fused = d["with_transductive"] if d["transductive_kept"] else d["fused"]
        out.append(f"(d) {d['cpu_seconds']:.1f} CPU seconds (all {d['threads']} torch threads) "
                   f"in {d['seconds']:.1f} s wall: compare them on a shared machine. "
                   "SYNTHETIC data (bench_vl.synthetic_vl: AwA2 class structure, "
                   f"generated in {d['generate_s']:.1f} s, not timed). Time by expert (fold "
                   f"refits): {spent}; weight search, gamma sweep and transductive term "
                   f"{rest:.1f} s. Protocol accuracy on the synthetic data (not a real "
                   f"figure): text alone {d['alone_acc']['text']:.3f}, fused "
                   f"{fused['acc']:.3f}.")
    for key, e in (res.get("e") or {}).items():
        if not isinstance(e, dict) or "error" in e:
            continue
        p = e["projected_10k_s"]
        out.append(f"(e) {key}: {e['images']} generated JPEGs, {e['views_per_image']} views "
                   f"per image (vl_flip), {e['batch_images']} images per pass, "
                   f"{e['workers']} decode/loader workers, weights {e['weights_dtype']}, "
                   f"AMP {e['amp']}. FLOPs counted: {_num(e['gflop_per_view'])} GFLOP per "
                   f"view, {_num(e['gflop_per_image'])} per image; matmul "
                   f"{e['matmul_tflops']:.3g} "
                   f"TFLOP/s ({res['e']['matmul_dtype']}). Embedding pass (cache built) "
                   f"{e['embed_s']:.2f} s, again {e['embed_again_s']:.2f} s; decoded-cache "
                   f"build {e['decode_s']:.2f} s. 10,000 images, projected: this device "
                   f"{_num(p['this_device_end_to_end'])} s end to end, model alone "
                   f"{_num(p['this_device_model_only'])} s (two such devices "
                   f"{_num(p['two_devices_model_only'])} s).")
        if res["device"]["kind"] == "cuda":  # a tiny CPU model says nothing about a T4
            out.append(f"(e) {key}, T4 x2 projection (not measured): the model alone at the "
                       f"T4's {T4_FP16_TFLOPS:g} TFLOP/s fp16 peak x the fraction of the "
                       f"compute-bound rate reached here: "
                       f"{_num(p['t4x2_model_only_at_peak'])} s for 10,000 images (a "
                       "power-limited T4 sustaining half its peak doubles it), plus JPEG "
                       "decoding on Kaggle's 4 cores at this machine's per-core rate: "
                       f"{_num(p['t4x2_decode_4_cores'])} s.")
    return out
