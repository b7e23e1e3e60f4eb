"""Rows d and e of the benchmark: the vision-language path (imported by bench/bench.py).

  d  the fusion on saved arrays (CPU seconds, and accuracy on a SIMULATION): the simulated
     challenge of experts/simulate.py (3,000 test images, CLIP-like embeddings, a network
     expert) goes through experts.arrays.fit and .apply exactly as train / predict / fuse
     call them; per regime: seconds, fused vs text-only vs the test-optimal gamma, and the
     estimate's error.
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
import time
import types
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pixelplay_lib.config import make_config
from pixelplay_lib.experts import arrays, fusion, imagetext, simulate, testpool
from pixelplay_lib.inference import open_images
from pixelplay_lib.runtime import Runtime

# ------------------------------------------------------------------ (d) protocol + fusion

def best_gamma_accuracy(state: fusion.FusionState, run: Any, truth: np.ndarray) -> float:
    """Test accuracy of the chosen weights at the test-optimal gamma (every flip point)."""
    experts = arrays.build_experts(run, "test", state.names)
    scores = {e.name: e.scores(run.seen) for e in experts}
    fused = fusion.fuse([scores[n] for n, w in zip(state.names, state.weights, strict=True)
                         if w], [w for w in state.weights if w])
    t = testpool.seen_gap(fused, run.seen, run.unseen)
    cuts = np.unique(np.concatenate([t - 1e-7, t + 1e-7]))
    return max(float((fusion.decide(fused, run.seen, g) == truth).mean()) for g in cuts[::2])


def bench_protocol(regimes: list[str], seeds: int, random: int = 0) -> dict[str, Any]:
    """Row d: arrays.fit + arrays.apply on the simulated challenge, per regime and seed
    (and `random` regimes random-<i>, seed i): wall / CPU seconds, the accuracy of the fused
    rule, of text alone at gamma 0 (the first place's rule), of the chosen weights at the
    test-optimal gamma, and the estimate."""
    runs = []
    worlds = [(r, s) for r in regimes if r for s in range(seeds)]
    for regime, seed in worlds + [(f"random-{i}", i) for i in range(random)]:
        sim = simulate.simulate(regime, seed)
        run = sim.to_arrays()
        t, cpu = time.perf_counter(), time.process_time()
        state = arrays.fit(run, run.available())
        pred, alone = arrays.apply(state, run, "test")
        wall, cpu = time.perf_counter() - t, time.process_time() - cpu
        truth = sim.test_labels
        chosen = state.report["test_pool"]["chosen"]
        runs.append({"regime": regime, "seed": seed, "seconds": wall, "cpu_seconds": cpu,
                     "fused": float((pred == truth).mean()),
                     "text_only": float((alone["text"] == truth).mean()),
                     "best_gamma": best_gamma_accuracy(state, run, truth),
                     "estimate": chosen["acc"], "interval": list(chosen["interval"]),
                     "rule": chosen["name"], "protocol_estimate":
                     state.report["protocol"]["fusion"]["acc"]})
    return {"synthetic": True, "threads": torch.get_num_threads(), "runs": runs,
            "sizes": {"test": 3000, "dim": 768, "classes": 50, "seen": 40}}


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
        runs = d["runs"]
        gain = min(r["fused"] - r["text_only"] for r in runs)
        gap = np.mean([r["best_gamma"] - r["fused"] for r in runs])
        err = np.mean([abs(r["estimate"] - r["fused"]) for r in runs])
        lines.append(f"| d | fusion on saved arrays (SIMULATION, {len(runs)} runs, 3,000 test "
                     f"images each; CPU) | **{np.median([r['seconds'] for r in runs]):.1f} s** "
                     f"median per fit + apply; fused - text-only: min {100 * gain:+.2f} pt; "
                     f"gap to the test-optimal gamma {100 * gap:.2f} pt; estimate error "
                     f"{100 * err:.2f} pt (means) |")
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
        for r in d["runs"]:
            out.append(f"(d) {r['regime']} seed {r['seed']}: fused {r['fused']:.4f} "
                       f"({r['rule']}), text-only {r['text_only']:.4f}, chosen weights at the "
                       f"test-optimal gamma {r['best_gamma']:.4f}; estimate {r['estimate']:.4f} "
                       f"(90% interval {r['interval'][0]:.4f}-{r['interval'][1]:.4f}; the "
                       f"protocol alone said {r['protocol_estimate']:.4f}); "
                       f"{r['seconds']:.1f} s wall, {r['cpu_seconds']:.1f} CPU-s. SYNTHETIC.")
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
