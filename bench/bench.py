"""Speed, baseline vs project, side by side, on the same generated photo-like JPEGs.

    make bench                                    # CPU, a few minutes
    make bench BENCH_ARGS="--device cuda ..."     # see bench/gpu.sh

Rows (images per second, higher is better):
  a  training input pipeline. Baseline: PIL full-size decode + torchvision PIL transforms
     (RandomResizedCrop(300, (0.7, 1)), flip, RandomRotation(30), ToTensor, Normalize) in a
     DataLoader with num_workers=0. Project: decoded uint8 cache (built once, its cost reported
     apart) + Views(mode="train") + EpochBatches + make_loader with the default workers, uint8
     batches normalised on the run device. Steady state: epochs after the first.
  b  training steps, batches already in memory. Baseline: torchvision resnet101, frozen
     parameters with requires_grad=False, every BatchNorm in train mode, fp32. Project: Net
     (frozen stem under no_grad, frozen BatchNorm in eval), train.train_step with the
     runtime's AMP and channels-last ("auto": off on CPU).
  c  test-time voting with 7 votes, from the JPEG files to the voted class. Baseline: batch
     size 1, 7 sequential passes per image, full-size decode. Project: test cache build +
     ViewPlan(votes=7) (central view + 7 votes) + all views of a batch in one pass
     (inference.run_images) + predict.vote.
  f  the experts' network pass (views/s): the fine-tuned network (trainable=layer4,fc) and
     the pretrained ImageNet network over the same views. Baseline: two forwards, as before.
     Project: experts.network_forward, whose frozen, bit-identical trunk (conv1..layer3 of a
     ResNet) runs once per view for both (imagenet.shared_trunk_forward). Random weights
     shared by the two, as ImageNet weights would be; small views (--trunk-size), a few
     batches; FLOPs per view of each way counted with FlopCounterMode.
On a GPU also: the matmul rate (bf16/fp16), the FLOPs of one training image (counted with
FlopCounterMode) and training at % of the compute-bound rate.

Vision-language path (bench/bench_vl.py; no baseline: the notebook had none):
  d  protocol + fusion on cached embeddings, seconds: SYNTHETIC challenge-sized arrays (5,100
     training / 880 validation images of the 40 seen classes, d=1152 image-text embeddings,
     ResNet logits of 1 + 7 views, 2048-d features) through experts.build_experts and
     fusion.fit_fusion as experts.fit calls them (text, probe, resnet, attributes;
     transductive auto). Runs on the CPU also in a GPU run (the protocol is CPU code).
  e  image-embedding throughput, RANDOM weights from a config in code (nothing downloaded):
     the model alone, the decoded-cache build, imagetext.image_embeddings (views + mirror,
     AMP), FLOPs per image (FlopCounterMode), the compute-bound rate, peak GPU memory and
     10,000-image projections. CUDA: SigLIP 2 So400m/16 @256 (the default vl_model's
     architecture) and CLIP ViT-L/14 @224; CPU: a tiny SigLIP, labelled as such.

Writes a table to stdout, JSON to bench/results/bench-<device>.json (or --json) and, with
--markdown PATH, a Markdown report (table + JSON) that can be committed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torchvision
import torchvision.transforms as T
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pixelplay_lib.config import Config, make_config
from pixelplay_lib.data import load_challenge
from pixelplay_lib.demo import write_demo_dataset
from pixelplay_lib.inference import ViewPlan, classifier_forward, open_images, run_images
from pixelplay_lib.model import build_model
from pixelplay_lib.pipeline import EpochBatches, Views, make_loader, resolve_workers
from pixelplay_lib.runtime import make_runtime
from pixelplay_lib.transforms import IMAGENET_MEAN, IMAGENET_STD

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_vl beside this script
import bench_vl  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NUM_CLASSES = 50


def cache_config(folder: Path, workers: int):
    """A config whose decoded-image cache lives in `folder`, built with `workers` processes."""
    return make_config(cache_dir=str(folder), num_workers=workers)


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ device and timing
def device_info(device: torch.device) -> dict:
    cpu = platform.processor() or "cpu"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = {"kind": device.type, "cpu": cpu, "cpu_cores": cores, "torch": torch.__version__,
            "torchvision": torchvision.__version__, "python": platform.python_version()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["capability"] = list(torch.cuda.get_device_capability(device))
        info["name"] = info["gpu"]
    else:
        info["name"] = f"{cpu} ({cores} cores)"
    return info


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def cpu_seconds(pids: list[int]) -> float | None:
    """User + system CPU seconds of these processes (all their threads), from /proc."""
    total = 0
    try:
        for pid in pids:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None
    return total / os.sysconf("SC_CLK_TCK")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def cudnn_benchmark(flag: bool):
    """The baseline notebook never set cudnn.benchmark; make_runtime turns it on."""
    old = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = flag
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = old


# ------------------------------------------------------------------ data
def bench_data(args) -> Path:
    """Generated photo-like JPEGs in the competition layout, cached between runs."""
    name = (f"w{args.width[0]}-{args.width[1]}-tpc{args.train_per_class}"
            f"-test{args.test_images}-s{args.seed}")
    out = Path(args.data_dir or Path(tempfile.gettempdir()) / "pixelplay-bench") / name
    done = out / ".complete"
    if not done.is_file():
        say(f"generating JPEGs into {out} (once; reused by later runs)")
        shutil.rmtree(out, ignore_errors=True)
        write_demo_dataset(out, train_per_class=args.train_per_class, n_test=args.test_images,
                           width=tuple(args.width), seed=args.seed, odd_files=False)
        done.write_text("ok\n")
    return out


def baseline_transform(size: int) -> T.Compose:
    return T.Compose([T.RandomResizedCrop(size, scale=(0.7, 1.0)), T.RandomHorizontalFlip(),
                      T.RandomRotation(30), T.ToTensor(),
                      T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


class BaselineImages(Dataset):
    """The notebook's dataset: open the full-size file, convert, transform, every epoch."""

    def __init__(self, samples, transform):
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i):
        path, label = self.samples[i]
        return self.transform(Image.open(path).convert("RGB")), label


# ------------------------------------------------------------------ (a) input pipeline
def epochs_until(run_epoch, first_epochs: int, min_epochs: int, min_seconds: float,
                 max_epochs: int) -> tuple[list[float], list[int], list[float | None]]:
    """Run epochs; the first `first_epochs` are warm-up, then at least `min_epochs` timed
    epochs and at least `min_seconds` of timed work."""
    times, counts, cpus = [], [], []
    e = 0
    while True:
        t, n, c = run_epoch(e)
        times.append(t)
        counts.append(n)
        cpus.append(c)
        e += 1
        timed = times[first_epochs:]
        if e >= max_epochs or (len(timed) >= min_epochs and sum(timed) >= min_seconds):
            return times, counts, cpus


def bench_pipeline(args, ch, rt, workers: int, cache_dir: Path) -> dict:
    samples = ch.train_samples
    paths = [p for p, _ in samples]
    labels = [label for _, label in samples]
    size, bs = args.image_size, args.batch_size

    # baseline: main-process loading, full decode, PIL transforms
    torch.manual_seed(args.seed)
    loader = DataLoader(BaselineImages(samples, baseline_transform(size)), batch_size=bs,
                        shuffle=True, num_workers=0)

    def baseline_epoch(e: int) -> tuple[float, int, float | None]:
        n = 0
        c = cpu_seconds([os.getpid()])
        t = time.perf_counter()
        for x, _ in loader:
            x = x.to(rt.device)
            n += len(x)
        sync(rt.device)
        t = time.perf_counter() - t
        c2 = cpu_seconds([os.getpid()])
        return t, n, None if c is None or c2 is None else c2 - c

    say(f"(a) baseline pipeline: {len(samples)} images/epoch, num_workers=0")
    b_times, b_counts, b_cpu = epochs_until(baseline_epoch, 1, 1, 0.0, args.baseline_epochs)

    # project: cache build, then views in worker processes
    say(f"(a) project: building the decoded cache ({workers} workers)")
    t = time.perf_counter()
    images = open_images(paths, size, cache_config(cache_dir, workers), "bench cache")
    build_s = time.perf_counter() - t
    t = time.perf_counter()
    open_images(paths, size, cache_config(cache_dir, workers), "bench cache")  # reuse: key check
    reuse_s = time.perf_counter() - t
    views = Views(images, labels, size, "train", args.seed, 0.7, 30.0,
                  fast_augment=not args.slow_augment)
    sampler = EpochBatches(range(len(samples)), bs, args.seed)
    loader = make_loader(views, sampler, workers, rt.device.type == "cuda")

    def project_epoch(e: int) -> tuple[float, int, float | None]:
        sampler.epoch, sampler.start = e, 0
        n = 0
        it = iter(loader)  # persistent workers: the same processes every epoch
        pids = [os.getpid()] + [w.pid for w in getattr(it, "_workers", [])]
        c = cpu_seconds(pids)
        t = time.perf_counter()
        for x, _, _, _ in it:
            x = rt.to_device(x)
            n += len(x)
        sync(rt.device)
        t = time.perf_counter() - t
        c2 = cpu_seconds(pids)
        return t, n, None if c is None or c2 is None else c2 - c

    say(f"(a) project pipeline: {workers} workers")
    p_times, p_counts, p_cpu = epochs_until(project_epoch, 1, 2, args.min_seconds, 200)

    def rate(times, counts):
        return sum(counts[1:]) / sum(times[1:])

    def cpu_ms(cpus, counts):  # CPU time per image, every process of the pipeline
        return None if None in cpus[1:] else 1e3 * sum(cpus[1:]) / sum(counts[1:])

    base, proj = rate(b_times, b_counts), rate(p_times, p_counts)
    return {"baseline": {"img_s": base, "epoch_s": b_times, "images_per_epoch": b_counts[0],
                         "num_workers": 0, "measured": "epochs 2.." + str(len(b_times)),
                         "cpu_ms_per_image": cpu_ms(b_cpu, b_counts)},
            "project": {"img_s": proj, "epoch_s": p_times, "images_per_epoch": p_counts[0],
                        "cpu_ms_per_image": cpu_ms(p_cpu, p_counts),
                        "num_workers": workers, "measured": "epochs 2.." + str(len(p_times)),
                        "first_epoch_img_s": p_counts[0] / p_times[0],
                        "fast_augment": not args.slow_augment,
                        "cache_build_s": build_s, "cache_build_img_s": len(paths) / build_s,
                        "cache_reuse_s": reuse_s},
            "ratio": proj / base}


# ------------------------------------------------------------------ (b) training steps
def baseline_model(arch: str) -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, weights=None)
    model.fc = nn.Linear(model.fc.in_features, NUM_CLASSES)
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(("layer4.", "fc.")))
    return model


def bench_steps(args, rt, batch_u8: torch.Tensor, batch_f32: torch.Tensor,
                labels: torch.Tensor) -> dict:
    from pixelplay_lib.train import train_step

    dev = rt.device
    warm = 1 if dev.type == "cpu" else 5
    out = {}

    # baseline: fp32, model.train() (frozen BN in train mode), float batch copied each step
    model = baseline_model(args.arch).to(dev).train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.001)

    def base_step():
        x, y = batch_f32.to(dev), labels.to(dev)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    say(f"(b) baseline steps: {args.steps} timed after {warm} warm-up")
    with cudnn_benchmark(False):
        out["baseline"] = time_steps(base_step, warm, args.steps, len(labels), dev)

    torch.manual_seed(0)
    net = build_model(args.arch, NUM_CLASSES, "none", "layer4,fc").to(dev)
    if rt.channels_last:
        net.to(memory_format=torch.channels_last)
    net.train()
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.001)
    scaler = torch.amp.GradScaler(dev.type, enabled=rt.amp_dtype == torch.float16)
    x_u8 = batch_u8.pin_memory() if dev.type == "cuda" else batch_u8

    say(f"(b) project steps: amp={rt.amp_dtype}, channels_last={rt.channels_last}")
    out["project"] = time_steps(lambda: train_step(net, opt, scaler, rt, x_u8, labels), warm,
                                args.steps, len(labels), dev)
    out["project"].update(amp=str(rt.amp_dtype).replace("torch.", "") if rt.amp_dtype
                          else "off", channels_last=rt.channels_last)
    out["ratio"] = out["project"]["img_s"] / out["baseline"]["img_s"]
    return out, net


def time_steps(step, warm: int, steps: int, batch: int, dev: torch.device) -> dict:
    for _ in range(warm):
        step()
    sync(dev)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync(dev)
    seconds = time.perf_counter() - t
    return {"img_s": steps * batch / seconds, "step_s": seconds / steps, "steps": steps,
            "batch": batch}


# ------------------------------------------------------------------ (c) voting
def bench_votes(args, ch, rt, net, workers: int, cache_dir: Path) -> dict:
    from pixelplay_lib.predict import vote

    files = ch.test_files()
    dev, size, votes = rt.device, args.image_size, args.votes
    seen = list(range(NUM_CLASSES))

    # baseline: batch size 1, `votes` sequential passes per image
    model = baseline_model(args.arch).to(dev).eval()
    tf = baseline_transform(size)
    with torch.no_grad(), cudnn_benchmark(False):
        model(torch.zeros(1, 3, size, size, device=dev))  # warm-up (kernels, allocator)
        sync(dev)
        say(f"(c) baseline voting: {len(files)} images x {votes} passes of batch 1")
        t = time.perf_counter()
        base_pred = []
        for path in files:
            img = Image.open(path).convert("RGB")
            preds = [int(model(tf(img).unsqueeze(0).to(dev)).argmax(1)) for _ in range(votes)]
            base_pred.append(Counter(preds).most_common(1)[0][0])
        sync(dev)
        base_s = time.perf_counter() - t

    # project: cache + all views of a batch in one pass
    net.eval()
    per_pass = max(1, args.batch_size * 4 // (votes + 1))  # as predict.py
    with torch.no_grad(), rt.autocast():  # warm-up at the batch shape (cudnn autotune)
        net(rt.to_device(torch.zeros(per_pass * (votes + 1), 3, size, size,
                                     dtype=torch.uint8)))
    sync(dev)
    say(f"(c) project voting: {len(files)} images, {per_pass} images x {votes + 1} views "
        "per pass")
    t = time.perf_counter()
    images = open_images(files, size, cache_config(cache_dir, workers), "bench test cache")
    build_s = time.perf_counter() - t
    plan = ViewPlan(size, votes=votes, seed=args.seed, fast_augment=not args.slow_augment)
    result = run_images(classifier_forward(net), images, range(len(files)), plan, rt,
                        batch_images=per_pass, workers=workers, keep={"logits": "all"},
                        keep_failed=True)
    pred = vote(result["logits"][:, 1:], "hard", seen)
    sync(dev)
    proj_s = time.perf_counter() - t
    n = len(files)
    return {"baseline": {"img_s": n / base_s, "seconds": base_s, "passes_per_image": votes,
                         "batch": 1},
            "project": {"img_s": n / proj_s, "seconds": proj_s, "views_per_image": votes + 1,
                        "images_per_pass": per_pass, "cache_build_s": build_s,
                        "predictions": len(pred)},
            "test_images": n, "votes": votes, "ratio": (n / proj_s) / (n / base_s)}


# ------------------------------------------------------------------ (f) shared trunk
def bench_shared_trunk(args, rt) -> dict:
    """Two forwards (fine-tuned Net + pretrained classifier) vs the shared-trunk forward of
    experts.network_forward, on random views: views/s of each, their ratio, FLOPs per view."""
    from torch.utils.flop_counter import FlopCounterMode

    from pixelplay_lib.experts import network_forward
    from pixelplay_lib.experts.imagenet import imagenet_forward

    dev = rt.device
    size = args.trunk_size or (112 if dev.type == "cpu" else args.image_size)
    batches = args.trunk_batches or (3 if dev.type == "cpu" else 20)
    torch.manual_seed(0)
    pretrained = torchvision.models.get_model(args.arch, weights=None)
    net = build_model(args.arch, NUM_CLASSES, "none", "layer4,fc")
    net.body.load_state_dict(pretrained.state_dict(), strict=False)  # its head aside
    for model in (net, pretrained):
        model.to(dev).eval()
        if rt.channels_last:
            model.to(memory_format=torch.channels_last)
    shared, _ = network_forward(net, pretrained)
    separate = [classifier_forward(net), imagenet_forward(pretrained)]

    def two(x):
        return {k: v for f in separate for k, v in f(x).items()}

    n = args.batch_size * 2
    x = rt.to_device(torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8))
    out = {}
    with torch.inference_mode(), rt.autocast():
        a, b = two(x), shared(x)
        diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
        for name, forward in (("baseline", two), ("project", shared)):
            with FlopCounterMode(display=False) as fc:
                forward(x[:1])
            out[name] = {"gflop_per_view": fc.get_total_flops() / 2 / 1e9}
        say(f"(f) {args.arch} at {size} px: two forwards vs shared trunk, {batches} batches "
            f"of {n} views each, interleaved")
        for _ in range(2):  # interleaved halves: load changes hit both alike
            for name, forward in (("baseline", two), ("project", shared)):
                forward(x)  # warm-up
                sync(dev)
                t = time.perf_counter()
                for _ in range(batches):
                    forward(x)
                sync(dev)
                out[name]["seconds"] = out[name].get("seconds", 0.0) + time.perf_counter() - t
    for name in ("baseline", "project"):
        out[name]["img_s"] = 2 * batches * n / out[name]["seconds"]
    return {**out, "ratio": out["project"]["img_s"] / out["baseline"]["img_s"],
            "flop_ratio": out["baseline"]["gflop_per_view"] / out["project"]["gflop_per_view"],
            "max_abs_diff": diff, "size": size, "views_per_batch": n, "batches": 2 * batches}


# ------------------------------------------------------------------ compute-bound rate
def matmul_rate(dev: torch.device, dtype: torch.dtype) -> float:
    """TFLOP/s of a large square matmul (2 n^3 FLOPs)."""
    n = 8192 if dev.type == "cuda" else 1024
    reps = 20 if dev.type == "cuda" else 5
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(dev)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(dev)
    return 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e12


def count_flops(arch: str, size: int) -> dict:
    """FLOPs of one training image (forward + backward, layer4,fc trainable) and one eval
    view, counted by FlopCounterMode on CPU (2 FLOPs per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    net = build_model(arch, NUM_CLASSES, "none", "layer4,fc").train()
    x = torch.randn(2, 3, size, size)
    with FlopCounterMode(display=False) as fc:
        nn.functional.cross_entropy(net(x), torch.tensor([0, 1])).backward()
    train = fc.get_total_flops() / 2
    net.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        net(x)
    return {"train_gflop_per_image": train / 1e9, "eval_gflop_per_view": fc.get_total_flops()
            / 2 / 1e9}


# ------------------------------------------------------------------ report
def fmt(v: float) -> str:
    """3 significant digits for small rates, one decimal otherwise."""
    return f"{v:.3g}" if abs(v) < 100 else f"{v:.1f}"


def table(res: dict) -> str:
    rows = [("a", "training input pipeline (img/s, steady state)", res.get("a")),
            ("b", f"training steps, {res['args']['arch']} batch {res['args']['batch_size']}",
             res.get("b")),
            ("c", f"prediction, {res['args']['votes']} votes (test img/s)", res.get("c")),
            ("f", f"experts' pass: fine-tuned + ImageNet {res['args']['arch']}, "
                  f"{res.get('f', {}).get('size')} px (views/s)", res.get("f"))]
    lines = ["| row | what | baseline img/s | project img/s | ratio |",
             "|---|---|---:|---:|---:|"]
    for key, what, r in rows:
        if r:
            lines.append(f"| {key} | {what} | {fmt(r['baseline']['img_s'])} | "
                         f"{fmt(r['project']['img_s'])} | {r['ratio']:.1f}x |")
    return "\n".join(lines) if len(lines) > 2 else ""


def notes(res: dict) -> list[str]:
    out = []
    a, b, c, g = res.get("a"), res.get("b"), res.get("c"), res.get("compute")
    if a:
        p = a["project"]
        out.append(f"(a) {a['baseline']['images_per_epoch']} images per epoch; baseline "
                   f"{a['baseline']['measured']}, project {p['measured']} (workers="
                   f"{p['num_workers']}; first epoch {p['first_epoch_img_s']:.0f} img/s). "
                   f"One-time cache build: {p['cache_build_s']:.1f} s "
                   f"({p['cache_build_img_s']:.0f} img/s); reuse check {p['cache_reuse_s']:.2f} s.")
        if p["cpu_ms_per_image"] and a["baseline"]["cpu_ms_per_image"]:
            out.append(f"(a) CPU time per image, all processes of the pipeline: baseline "
                       f"{a['baseline']['cpu_ms_per_image']:.1f} ms, project "
                       f"{p['cpu_ms_per_image']:.2f} ms ("
                       f"{a['baseline']['cpu_ms_per_image'] / p['cpu_ms_per_image']:.1f}x less); "
                       f"load average before/after the run: {res['load_average_before'][0]:.1f}"
                       f"/{res['load_average_after'][0]:.1f}.")
    if b:
        out.append(f"(b) {b['project']['steps']} timed steps each; project amp="
                   f"{b['project']['amp']}, channels_last={b['project']['channels_last']}.")
    if c:
        out.append(f"(c) {c['test_images']} test images; baseline {c['votes']} passes of batch "
                   f"1 per image; project {c['project']['views_per_image']} views per image "
                   f"(central + {c['votes']} votes), {c['project']['images_per_pass']} images "
                   f"per pass, test-cache build included ({c['project']['cache_build_s']:.1f} s).")
    f = res.get("f")
    if f:
        out.append(f"(f) {f['batches']} timed batches of {f['views_per_batch']} views; baseline "
                   f"two forwards ({f['baseline']['gflop_per_view']:.2f} GFLOP/view), project "
                   f"the shared trunk ({f['project']['gflop_per_view']:.2f} GFLOP/view, "
                   f"{f['flop_ratio']:.2f}x fewer); outputs equal within "
                   f"{f['max_abs_diff']:.1e}.")
    if g:
        rates = ", ".join(f"{k} {fmt(v)}" for k, v in g["matmul_tflops"].items())
        out.append(f"Matmul TFLOP/s: {rates}. Training FLOPs counted: "
                   f"{g['train_gflop_per_image']:.1f} GFLOP/image (eval view "
                   f"{g['eval_gflop_per_view']:.1f}); compute-bound at {g['dtype']}: "
                   f"{fmt(g['compute_bound_img_s'])} img/s; project training at "
                   f"{g['project_pct_of_bound']:.1f}% of it (baseline "
                   f"{g['baseline_pct_of_bound']:.1f}%).")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--only", default="abcdef", help="rows to run, e.g. 'a' or 'bde'")
    ap.add_argument("--data-dir", default="", help="where generated JPEGs are kept "
                    "(default: $TMPDIR/pixelplay-bench)")
    ap.add_argument("--train-per-class", type=int, default=8,
                    help="~images per seen class (40 classes) for row a")
    ap.add_argument("--test-images", type=int, default=4, help="test images for row c")
    ap.add_argument("--width", type=int, nargs=2, default=(500, 1600),
                    help="image width range in px")
    ap.add_argument("--arch", default="resnet101")
    ap.add_argument("--image-size", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=0, help="timed steps in b (0: 2 CPU, 30 GPU)")
    ap.add_argument("--votes", type=int, default=7)
    ap.add_argument("--trunk-size", type=int, default=0, help="f: view size in px (0: 112 on "
                    "CPU, --image-size on GPU)")
    ap.add_argument("--trunk-batches", type=int, default=0, help="f: timed batches per way "
                    "and half (0: 3 CPU, 20 GPU)")
    ap.add_argument("--workers", type=int, default=-1, help="project loader workers "
                    "(-1: the config default, one per core up to 8)")
    ap.add_argument("--baseline-epochs", type=int, default=2)
    ap.add_argument("--min-seconds", type=float, default=3.0,
                    help="least timed steady-state seconds of the project pipeline in a")
    ap.add_argument("--amp", default="auto", choices=("auto", "off", "fp16", "bf16"))
    ap.add_argument("--channels-last", default="auto", choices=("auto", "on", "off"))
    ap.add_argument("--slow-augment", action="store_true",
                    help="project views with the torchvision tensor ops (fast_augment=False)")
    ap.add_argument("--sim-regimes", default="balanced,unseen-harder,text-at-ceiling",
                    help="d: regimes of experts/simulate.py (comma list)")
    ap.add_argument("--sim-seeds", type=int, default=1, help="d: seeds per regime")
    ap.add_argument("--sim-random", type=int, default=0,
                    help="d: also regimes random-0 .. random-<N-1> (simulate.random_regime), "
                         "one seed each")
    ap.add_argument("--vl-models", default="auto", help="e: comma list of "
                    f"{', '.join(bench_vl.SPECS)} (auto: CUDA siglip-so400m,clip-vit-l14; "
                    "CPU siglip-tiny)")
    ap.add_argument("--vl-images", type=int, default=0, help="e: images embedded (0: every "
                    "generated JPEG, train + test)")
    ap.add_argument("--vl-batch-size", type=int, default=make_config().vl_batch_size,
                    help="e: images per pass (config vl_batch_size)")
    ap.add_argument("--vl-steps", type=int, default=0, help="e: timed passes of the model "
                    "alone (0: 2 CPU, 20 GPU)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default="", help="default bench/results/bench-<device>.json")
    ap.add_argument("--markdown", default="", help="also write a Markdown report here")
    ap.add_argument("--from-json", default="", help="only print (and --markdown) the report "
                    "of an earlier run's JSON; measures nothing")
    args = ap.parse_args(argv)
    if args.from_json:
        res = json.loads(Path(args.from_json).read_text())
        report(res, args.markdown)
        return 0

    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no GPU")
    # Random weights on purpose (speed, not accuracy): Config directly, without make_config's
    # warning about frozen random blocks.
    cfg = Config(arch=args.arch, weights="none", trainable="layer4,fc",
                 image_size=args.image_size, batch_size=args.batch_size,
                 num_workers=args.workers, amp=args.amp, channels_last=args.channels_last,
                 devices="cpu" if args.device == "cpu" else "auto")
    rt = make_runtime(cfg)
    dev = rt.device
    args.steps = args.steps or (2 if dev.type == "cpu" else 30)
    workers = resolve_workers(args.workers)
    info = device_info(dev)
    say(f"device: {info['name']}; torch {torch.__version__}")
    res: dict = {"device": info, "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
                 "args": vars(args) | {"width": list(args.width)},
                 "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                 "load_average_before": list(os.getloadavg())}

    root = bench_data(args)
    ch = load_challenge(root)
    sizes = [Image.open(p).size for p, _ in ch.train_samples]
    res["data"] = {"root": str(ch.root), "train_images": len(ch.train_samples),
                   "test_images": len(ch.test_files()),
                   "mean_size": [round(float(np.mean([s[0] for s in sizes]))),
                                 round(float(np.mean([s[1] for s in sizes])))],
                   "mean_file_kb": round(float(np.mean([p.stat().st_size
                                                        for p, _ in ch.train_samples])) / 1024)}
    work = Path(tempfile.mkdtemp(prefix="pixelplay-bench-cache-"))
    try:
        if "a" in args.only:
            res["a"] = bench_pipeline(args, ch, rt, workers, work / "train")
        net = None
        if "b" in args.only or "c" in args.only:
            # one batch of real images: baseline float views and project uint8 views
            samples = ch.train_samples[:args.batch_size]
            tf = baseline_transform(args.image_size)
            batch_f32 = torch.stack([tf(Image.open(p).convert("RGB")) for p, _ in samples])
            images = open_images([p for p, _ in samples], args.image_size,
                                 cache_config(work / "batch", 0), "bench batch")
            views = Views(images, [0] * len(samples), args.image_size, "train", args.seed)
            batch_u8 = torch.stack([views[(i, 0)][0] for i in range(len(samples))])
            labels = torch.arange(len(samples)) % NUM_CLASSES
        if "b" in args.only:
            res["b"], net = bench_steps(args, rt, batch_u8, batch_f32, labels)
            res["compute"] = compute_bound(args, rt, res["b"])
        if "c" in args.only:
            if net is None:
                torch.manual_seed(0)
                net = build_model(args.arch, NUM_CLASSES, "none", "layer4,fc").to(dev)
                if rt.channels_last:
                    net.to(memory_format=torch.channels_last)
            res["c"] = bench_votes(args, ch, rt, net, workers, work / "test")
        net = None  # free the ResNet: row e reports its own peak GPU memory
        if "f" in args.only:
            res["f"] = bench_shared_trunk(args, rt)
        if "d" in args.only:
            say(f"(d) fusion on the simulated challenge's arrays: {args.sim_regimes}")
            res["d"] = bench_vl.bench_protocol(args.sim_regimes.split(","), args.sim_seeds,
                                               args.sim_random)
        if "e" in args.only:
            res["e"] = bench_embedding_rows(args, ch, rt, workers, res, work / "vl")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    res["load_average_after"] = list(os.getloadavg())
    path = Path(args.json or REPO / "bench" / "results" / f"bench-{slug(info['name'])}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=2) + "\n")
    report(res, args.markdown)
    print(f"JSON: {path}")
    return 0


def report(res: dict, markdown_path: str) -> None:
    text = "\n\n".join(t for t in (table(res), bench_vl.table(res)) if t)
    print(f"\n{res['device']['name']}, torch {res['device']['torch']}; "
          f"command: {res['command']}\n")
    print(text)
    for line in notes(res) + bench_vl.notes(res):
        print("  " + line)
    print()
    if markdown_path:
        md = Path(markdown_path)
        md.parent.mkdir(parents=True, exist_ok=True)
        md.write_text(markdown(res, text))
        print(f"Markdown: {md}")


def bench_embedding_rows(args, ch, rt, workers: int, res: dict, work: Path) -> dict:
    """Row e for every architecture of --vl-models, on the generated JPEGs."""
    dev = rt.device
    keys = ("siglip-so400m,clip-vit-l14" if dev.type == "cuda" else "siglip-tiny"
            ) if args.vl_models == "auto" else args.vl_models
    unknown = [k for k in keys.split(",") if k not in bench_vl.SPECS]
    if unknown:
        raise SystemExit(f"--vl-models: unknown {unknown}; choose from {list(bench_vl.SPECS)}")
    paths = [p for p, _ in ch.train_samples] + list(ch.test_files())
    paths = paths[:args.vl_images] if args.vl_images else paths
    dtype = ("bf16" if rt.amp_dtype == torch.bfloat16 else "fp16") if rt.amp_dtype else "fp32"
    rates = res.get("compute", {}).get("matmul_tflops", {})
    if dtype not in rates:
        say(f"(e) matmul rate at {dtype}")
        rates = {**rates, dtype: matmul_rate(dev, rt.amp_dtype or torch.float32)}
    steps = args.vl_steps or (2 if dev.type == "cpu" else 20)
    out = {"matmul_dtype": dtype}
    for key in keys.split(","):
        say(f"(e) {key}: {len(paths)} images, {args.vl_batch_size} per pass, random weights")
        try:
            out[key] = bench_vl.bench_embeddings(key, paths, rt, workers, args.vl_batch_size,
                                                 steps, rates[dtype], work)
        except RuntimeError as e:  # e.g. CUDA out of memory: keep the other rows' results
            say(f"(e) {key} FAILED: {type(e).__name__}: {e}")
            out[key] = {"error": f"{type(e).__name__}: {e}"}
    return out


def compute_bound(args, rt, b: dict) -> dict:
    dev = rt.device
    say("matmul rate and FLOP count")
    rates = {"fp32": matmul_rate(dev, torch.float32)}
    if dev.type == "cuda":
        rates |= {"bf16": matmul_rate(dev, torch.bfloat16),
                  "fp16": matmul_rate(dev, torch.float16)}
    flops = count_flops(args.arch, args.image_size)
    dtype = str(rt.amp_dtype).replace("torch.", "").replace("bfloat16", "bf16").replace(
        "float16", "fp16") if rt.amp_dtype else "fp32"
    bound = rates[dtype] * 1e12 / (flops["train_gflop_per_image"] * 1e9)
    return {"matmul_tflops": rates, **flops, "dtype": dtype, "compute_bound_img_s": bound,
            "project_pct_of_bound": 100 * b["project"]["img_s"] / bound,
            "baseline_pct_of_bound": 100 * b["baseline"]["img_s"] / bound}


def markdown(res: dict, text: str) -> str:
    lines = [f"# Benchmark: baseline vs project ({res['device']['name']})", "",
             f"Run {res['date']}, torch {res['device']['torch']}, torchvision "
             f"{res['device']['torchvision']}. Command: `{res['command']}` "
             "(`make bench BENCH_ARGS=...`).", "",
             f"Data: {res['data']['train_images']} train / {res['data']['test_images']} test "
             f"generated photo-like JPEGs, mean {res['data']['mean_size'][0]}x"
             f"{res['data']['mean_size'][1]} px, {res['data']['mean_file_kb']} KB.", "",
             text, ""]
    lines += [f"- {line}" for line in notes(res) + bench_vl.notes(res)]
    lines += ["", "```json", json.dumps(res, indent=2), "```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
