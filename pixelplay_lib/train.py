"""Training: the baseline recipe (cross-entropy, SGD + MultiStepLR), resumable at any step.

Everything the rest of a run depends on is in the checkpoint or is a pure function of the
config: the data order of an epoch comes from (seed, epoch), each sample's augmentation
from (seed, epoch, sample). So a run killed at any moment and resumed from its newest
checkpoint ends bit-identical (on CPU) to one that never stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import checkpoint as ckpt
from .config import Config, fingerprint
from .data import Challenge, load_challenge, load_class_attributes, split_train_val
from .model import Net, build_model
from .pipeline import EpochBatches, Views, make_loader, open_images, resolve_workers
from .runtime import Runtime, make_runtime, setup_logging
from .zeroshot import fit_head, leave_classes_out

log = logging.getLogger("pixelplay")


class ConfigMismatch(RuntimeError):
    pass


class StopFlag:
    """Set by SIGTERM (Kaggle stopping a session, `kill`) or by the time limit."""

    def __init__(self, time_limit_s: float):
        self.deadline = time.monotonic() + time_limit_s if time_limit_s > 0 else float("inf")
        self.reason = ""

    def __call__(self, signum, frame) -> None:
        self.reason = "SIGTERM"

    def should_stop(self) -> bool:
        if not self.reason and time.monotonic() >= self.deadline:
            self.reason = "time limit"
        return bool(self.reason)


def cache_root(cfg: Config) -> Path:
    if cfg.cache_dir:
        return Path(cfg.cache_dir)
    import os
    import tempfile

    if os.environ.get("KAGGLE_KERNEL_RUN_TYPE"):  # keep the cache out of the kernel's output
        return Path(tempfile.gettempdir()) / "pixelplay-cache"
    return Path(cfg.output_dir) / "cache"


def data_fingerprint(ch: Challenge, indices: list[int]) -> str:
    names = "\n".join(f"{ch.train_samples[i][0].relative_to(ch.root)}" for i in indices)
    return hashlib.sha1(names.encode()).hexdigest()[:16]


def model_state(net: Net) -> dict[str, torch.Tensor]:
    """Trainable parameters and every buffer; frozen weights come back from `weights`."""
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    buffers = {n for n, _ in net.named_buffers()}
    return {k: v.detach().clone() for k, v in net.state_dict().items()
            if k in trainable or k in buffers}


def load_model_state(net: Net, state: dict[str, torch.Tensor]) -> None:
    missing, unexpected = net.load_state_dict(state, strict=False)
    frozen = {n for n, p in net.named_parameters() if not p.requires_grad}
    if unexpected or set(missing) - frozen:
        raise RuntimeError(f"checkpoint does not fit the model: missing "
                           f"{sorted(set(missing) - frozen)[:5]}, unexpected {unexpected[:5]}")


def find_resume(cfg: Config) -> tuple[dict[str, Any], Path] | None:
    if cfg.resume == "never":
        return None
    if cfg.resume != "auto":
        path = Path(cfg.resume)
        if not path.is_file():
            raise FileNotFoundError(f"resume={path}: no such checkpoint")
        return ckpt.load_file(path), path
    # Our own folder first, then earlier runs attached as inputs (a Kaggle kernel's
    # kernel_sources land under /kaggle/input); the newest progress wins.
    found = ckpt.load_newest([cfg.output_dir, cfg.input_root])
    return found


def check_fingerprint(cfg: Config, saved: dict[str, Any], path: Path) -> None:
    now = fingerprint(cfg)
    diff = [k for k in now if k in saved and saved[k] != now[k]]
    if diff:
        changes = ", ".join(f"{k}: {saved[k]!r} -> {now[k]!r}" for k in diff)
        raise ConfigMismatch(f"checkpoint {path} was trained with another config ({changes}). "
                             "Use another output_dir, resume=never, or the old values.")


def run_views(net: Net, loader, rt: Runtime) -> dict[str, np.ndarray]:
    """Logits and features of every view the loader yields (views stacked per image)."""
    net.eval()
    logits, feats, labels, index, failed = [], [], [], [], []
    with torch.no_grad():
        for x, y, idx, bad in loader:
            failed += bad
            if not len(x):
                continue
            shape = x.shape
            flat = x.reshape(-1, *shape[-3:])  # all votes of the batch in one pass
            with rt.autocast():
                out, f = net.forward_both(rt.to_device(flat))
            logits.append(out.float().reshape(*shape[:-3], -1).cpu())
            feats.append(f.float().reshape(*shape[:-3], -1).cpu())
            labels.append(y)
            index.append(idx)
    return {"logits": torch.cat(logits).numpy(), "features": torch.cat(feats).numpy(),
            "labels": torch.cat(labels).numpy(), "index": torch.cat(index).numpy(),
            "failed": failed}


def evaluate(net: Net, loader, rt: Runtime, classes: list[str]) -> dict[str, Any]:
    out = run_views(net, loader, rt)
    logits, labels = torch.from_numpy(out["logits"]), torch.from_numpy(out["labels"])
    pred = logits.argmax(1)
    per_class = {classes[c]: round(float((pred[labels == c] == c).float().mean()), 6)
                 for c in sorted(set(labels.tolist()))}
    return {"val_loss": float(nn.functional.cross_entropy(logits, labels)),
            "val_acc": float((pred == labels).float().mean()), "val_per_class": per_class,
            "_views": out}


def train(cfg: Config) -> dict[str, Any]:
    """Train (or resume) into cfg.output_dir; returns the run summary."""
    setup_logging()
    started = time.monotonic()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    rt = make_runtime(cfg)
    ch = load_challenge(cfg.data_root, cfg.input_root)
    cfg.write_json(out / "config.json")
    workers = resolve_workers(cfg.num_workers)

    train_idx, val_idx = split_train_val(ch.train_samples, cfg.val_fraction, cfg.seed)
    images = open_images([p for p, _ in ch.train_samples], cfg.image_size, cfg.cache,
                         cache_root(cfg), workers, "decoding train images")
    skipped = dict(images.errors)  # unreadable files found while building the cache
    train_idx = [i for i in train_idx if i not in skipped]
    val_idx = [i for i in val_idx if i not in skipped]
    labels = [label for _, label in ch.train_samples]
    log.info("challenge %s: %d classes (%d seen, %d unseen), %d train + %d validation images, "
             "%d unreadable", ch.root, len(ch.classes), len(ch.seen), len(ch.unseen),
             len(train_idx), len(val_idx), len(skipped))

    torch.manual_seed(cfg.seed)  # random-init weights (weights=none) are part of the config
    net = build_model(cfg.arch, len(ch.classes), cfg.weights, cfg.trainable, cfg.input_root)
    net.to(rt.device)
    if rt.channels_last:
        net.to(memory_format=torch.channels_last)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(cfg.milestones), cfg.lr_gamma)
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.amp_dtype == torch.float16)

    state = {"epoch": 0, "step": 0, "loss_sum": 0.0, "count": 0, "history": [],
             "best_val": -1.0, "skipped_batches": []}
    data_id = data_fingerprint(ch, train_idx)
    resumed = find_resume(cfg)
    if resumed:
        saved, path = resumed
        check_fingerprint(cfg, saved["fingerprint"], path)
        if saved["data"] != data_id:
            raise ConfigMismatch(f"checkpoint {path} was trained on another set of images")
        load_model_state(net, saved["model"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        scaler.load_state_dict(saved["scaler"])
        ckpt.restore_rng_states(saved["rng"])
        state = saved["state"]
        log.info("resumed from %s (epoch %d, step %d)", path, state["epoch"], state["step"])

    def save(reason: str) -> Path:
        payload = {"fingerprint": fingerprint(cfg), "data": data_id, "model": model_state(net),
                   "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                   "scaler": scaler.state_dict(), "rng": ckpt.rng_states(), "state": state,
                   "classes": ch.classes}
        return ckpt.save_checkpoint(out, payload, state["epoch"], state["step"])

    train_views = Views(images, labels, cfg.image_size, "train", cfg.seed, cfg.crop_scale_min,
                        cfg.rotation)
    sampler = EpochBatches(train_idx, cfg.batch_size, cfg.seed, rt.rank, rt.world)
    train_loader = make_loader(train_views, sampler, workers, rt.device.type == "cuda")
    eval_views = Views(images, labels, cfg.image_size, "eval", cfg.seed)
    val_loader = make_loader(eval_views, EpochBatches(val_idx, cfg.batch_size * 2, cfg.seed),
                             workers, rt.device.type == "cuda")

    stop = StopFlag(cfg.time_limit * 60)
    previous_handler = signal.signal(signal.SIGTERM, stop)
    last_save = time.monotonic()
    try:
        while state["epoch"] < cfg.epochs:
            sampler.epoch, sampler.start = state["epoch"], state["step"]
            net.train()
            bar = progress(train_loader, f"epoch {state['epoch'] + 1}/{cfg.epochs}", rt)
            for x, y, _, bad in bar:
                state["skipped_batches"] += [ch.train_samples[i][0].name for i, _ in bad]
                if len(x):
                    loss = train_step(net, opt, scaler, rt, x, y)
                    state["loss_sum"] += loss * len(y)
                    state["count"] += len(y)
                    bar.set_postfix(loss=f"{state['loss_sum'] / state['count']:.4f}")
                state["step"] += 1
                every = cfg.checkpoint_every_steps
                if (every and state["step"] % every == 0) or (
                        cfg.checkpoint_every_minutes
                        and time.monotonic() - last_save > cfg.checkpoint_every_minutes * 60):
                    save("interval")
                    last_save = time.monotonic()
                if stop.should_stop():
                    path = save(stop.reason)
                    log.info("stopped by %s at epoch %d step %d; checkpoint %s. Run the same "
                             "command again (same output_dir) to continue.", stop.reason,
                             state["epoch"] + 1, state["step"], path)
                    return {"status": "stopped", "reason": stop.reason, "checkpoint": str(path)}
            bar.close()
            lr = opt.param_groups[0]["lr"]
            sched.step()
            metrics = evaluate(net, val_loader, rt, ch.classes) if val_idx else {}
            metrics.pop("_views", None)
            record = {"epoch": state["epoch"] + 1, "lr": lr,
                      "train_loss": state["loss_sum"] / max(state["count"], 1),
                      "train_images": state["count"], **metrics}
            state["history"].append(record)
            state.update(epoch=state["epoch"] + 1, step=0, loss_sum=0.0, count=0)
            log.info("epoch %d: train loss %.4f, val acc %s", record["epoch"],
                     record["train_loss"], f"{record.get('val_acc', float('nan')):.4f}")
            write_history(out, state["history"])
            if record.get("val_acc", -1) > state["best_val"]:
                state["best_val"] = record["val_acc"]
                save_model(out / "model_best.pt", net, cfg, ch, None, state["history"])
            save("epoch")
            last_save = time.monotonic()
            if stop.should_stop():
                log.info("stopped by %s after epoch %d; run again to continue.", stop.reason,
                         state["epoch"])
                return {"status": "stopped", "reason": stop.reason}
    finally:
        signal.signal(signal.SIGTERM, previous_handler)

    head = None
    zs_wanted = cfg.zero_shot == "on" or (cfg.zero_shot == "auto" and ch.unseen)
    if zs_wanted:
        head = fit_zero_shot(net, cfg, ch, images, labels, train_idx, val_idx, rt, workers)
    save_model(out / "model.pt", net, cfg, ch, head, state["history"])
    write_history(out, state["history"])
    summary = {"status": "done", "epochs": state["epoch"], "seconds": time.monotonic() - started,
               "train_images": len(train_idx), "val_images": len(val_idx),
               "unreadable": {str(ch.train_samples[i][0]): e for i, e in skipped.items()},
               "val_acc": state["history"][-1].get("val_acc") if state["history"] else None,
               "zero_shot": head.report if head else None}
    ckpt.atomic_write_text(out / "summary.json", json.dumps(
        {k: v for k, v in summary.items() if k != "zero_shot"}, indent=2) + "\n")
    if skipped:
        log.info("skipped %d unreadable training images (listed in summary.json):", len(skipped))
        for i, err in sorted(skipped.items())[:20]:
            log.info("  %s: %s", ch.train_samples[i][0], err)
    return summary


def train_step(net: Net, opt, scaler, rt: Runtime, x: torch.Tensor, y: torch.Tensor) -> float:
    with rt.autocast():
        loss = nn.functional.cross_entropy(net(rt.to_device(x)), y.to(rt.device))
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    return float(loss.detach())


def fit_zero_shot(net: Net, cfg: Config, ch: Challenge, images, labels, train_idx, val_idx,
                  rt: Runtime, workers: int):
    """Features of every training image -> protocol -> the zero-shot head (zeroshot.py)."""
    attributes, source = load_class_attributes(ch.root, ch.classes)
    views = Views(images, labels, cfg.image_size, "eval", cfg.seed)

    def feats(idx: list[int]) -> dict[str, np.ndarray]:
        loader = make_loader(views, EpochBatches(idx, cfg.batch_size * 2, cfg.seed), workers,
                             rt.device.type == "cuda")
        return run_views(net, loader, rt)

    tr, va = feats(train_idx), feats(val_idx)
    report = leave_classes_out(tr["features"], tr["labels"], va["features"], va["labels"],
                               va["logits"], attributes, ch.seen, cfg.zs_folds, cfg.seed)
    report["attributes"] = source
    gamma = None if cfg.zs_gamma == "auto" else float(cfg.zs_gamma)
    head = fit_head(np.concatenate([tr["features"], va["features"]]),
                    np.concatenate([tr["labels"], va["labels"]]), attributes, ch.seen, report,
                    gamma)
    ckpt.atomic_write_text(Path(cfg.output_dir) / "zeroshot.json",
                           json.dumps(report, indent=2) + "\n")
    log.info("zero-shot protocol (%d folds of pseudo-unseen classes): u %.3f  s %.3f  H %.3f "
             "at gamma %.2f (gamma 0: u %.3f s %.3f H %.3f)", len(report["folds"]), report["u"],
             report["s"], report["H"], head.gamma, report["gamma0"]["u"], report["gamma0"]["s"],
             report["gamma0"]["H"])
    return head


def save_model(path: Path, net: Net, cfg: Config, ch: Challenge, head, history) -> None:
    """Everything predict needs, self-contained (no weights download at prediction time)."""
    ckpt.atomic_torch_save({"config": cfg.to_dict(), "classes": ch.classes, "seen": ch.seen,
                            "unseen": ch.unseen, "state_dict": net.state_dict(),
                            "zero_shot": head.to_state() if head else None,
                            "history": history}, path)


def write_history(out: Path, history: list[dict]) -> None:
    ckpt.atomic_write_text(out / "metrics.jsonl",
                           "".join(json.dumps(r) + "\n" for r in history))


def progress(loader, desc: str, rt: Runtime):
    from tqdm.auto import tqdm

    return tqdm(loader, desc=desc, disable=not rt.is_main, leave=False, mininterval=2)
