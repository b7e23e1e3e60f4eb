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
from . import distributed
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
    if not logits:  # nothing to run (an empty split, or only unreadable files)
        return {"logits": np.zeros((0, 0)), "features": np.zeros((0, 0)),
                "labels": np.zeros(0, np.int64), "index": np.zeros(0, np.int64),
                "failed": failed}
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
    rank, world, local_rank = distributed.setup(cfg)
    try:
        return _train(cfg, make_runtime(cfg, rank, world, local_rank), started)
    finally:
        distributed.teardown()


def _train(cfg: Config, rt: Runtime, started: float) -> dict[str, Any]:
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    ch = load_challenge(cfg.data_root, cfg.input_root)
    if rt.is_main:
        cfg.write_json(out / "config.json")
    if cfg.batch_size % rt.world:
        raise ValueError(f"batch_size={cfg.batch_size} (the global batch) must divide into "
                         f"{rt.world} devices")
    workers = resolve_workers(cfg.num_workers)

    train_idx, val_idx = split_train_val(ch.train_samples, cfg.val_fraction, cfg.seed)
    paths = [p for p, _ in ch.train_samples]
    images = distributed.main_process_first(rt.is_main, lambda: open_images(
        paths, cfg.image_size, cfg.cache, cache_root(cfg), workers, "decoding train images"))
    skipped = dict(images.errors)  # unreadable files found while building the cache
    train_idx = [i for i in train_idx if i not in skipped]
    val_idx = [i for i in val_idx if i not in skipped]
    labels = [label for _, label in ch.train_samples]
    log.info("challenge %s: %d classes (%d seen, %d unseen), %d train + %d validation images, "
             "%d unreadable%s", ch.root, len(ch.classes), len(ch.seen), len(ch.unseen),
             len(train_idx), len(val_idx), len(skipped),
             f"; {rt.world} processes, {cfg.batch_size // rt.world} images each per step"
             if rt.world > 1 else "")

    zs_wanted = cfg.zero_shot == "on" or (cfg.zero_shot == "auto" and bool(ch.unseen))
    attributes = attr_targets = None
    if zs_wanted:  # read first: a missing or wrong attribute file fails before training
        attributes, attr_source = load_class_attributes(ch.root, ch.classes)
        if cfg.attr_loss > 0:
            attr_targets = attribute_targets(attributes).to(rt.device)
    n_attributes = 0 if attr_targets is None else attr_targets.shape[1]

    torch.manual_seed(cfg.seed)  # random-init weights (weights=none) are part of the config
    net = build_model(cfg.arch, len(ch.classes), cfg.weights, cfg.trainable, cfg.input_root,
                      n_attributes)
    net.to(rt.device)
    if rt.channels_last:
        net.to(memory_format=torch.channels_last)
    model = distributed.wrap(net, rt.device, rt.world)
    net = model.module if model is not net else net  # (SyncBatchNorm may have replaced layers)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(cfg.milestones), cfg.lr_gamma)
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.amp_dtype == torch.float16)

    state = {"epoch": 0, "step": 0, "loss_sum": 0.0, "count": 0, "history": [],
             "best_val": -1.0, "unreadable": {}}
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
        if not rt.is_main:  # the saved sums are global: one rank carries them on
            state.update(loss_sum=0.0, count=0)
        log.info("resumed from %s (epoch %d, step %d)", path, state["epoch"], state["step"])

    def save() -> Path | None:
        """All ranks call it (the loss sums are gathered); rank 0 writes."""
        total = distributed.sum_across([state["loss_sum"], state["count"]], rt.device)
        if not rt.is_main:
            state.update(loss_sum=0.0, count=0)
            return None
        state.update(loss_sum=total[0], count=int(total[1]))
        payload = {"fingerprint": fingerprint(cfg), "data": data_id, "model": model_state(net),
                   "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                   "scaler": scaler.state_dict(), "rng": ckpt.rng_states(), "state": state,
                   "classes": ch.classes}
        return ckpt.save_checkpoint(out, payload, state["epoch"], state["step"])

    train_views = Views(images, labels, cfg.image_size, "train", cfg.seed, cfg.crop_scale_min,
                        cfg.rotation, fast_augment=cfg.fast_augment)
    sampler = EpochBatches(train_idx, cfg.batch_size, cfg.seed, rt.rank, rt.world)
    train_loader = make_loader(train_views, sampler, workers, rt.device.type == "cuda")
    eval_views = Views(images, labels, cfg.image_size, "eval", cfg.seed,
                       fast_augment=cfg.fast_augment)
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
                # cache=False: files fail here, once an epoch each (skipped, never retried)
                state["unreadable"].update({str(ch.train_samples[i][0]): e for i, e in bad})
                every = cfg.checkpoint_every_steps
                due = (every and (state["step"] + 1) % every == 0) or (
                    cfg.checkpoint_every_minutes
                    and time.monotonic() - last_save > cfg.checkpoint_every_minutes * 60)
                # One collective per step agrees on the global batch size, stop and save.
                n, stopping, due = distributed.sum_across(
                    [len(y), stop.should_stop(), bool(due)], rt.device)
                if n:
                    loss = train_step(model, opt, scaler, rt, x, y, attr_targets,
                                      cfg.attr_loss, loss_scale=rt.world * len(y) / n)
                    state["loss_sum"] += loss * len(y)
                    state["count"] += len(y)
                    bar.set_postfix(loss=f"{loss:.4f}")
                state["step"] += 1
                if due and not stopping:
                    save()
                    last_save = time.monotonic()
                if stopping:
                    stop.reason = stop.reason or "another process's stop"
                    path = save()
                    log.info("stopped by %s at epoch %d step %d; checkpoint %s. Run the same "
                             "command again (same output_dir) to continue.", stop.reason,
                             state["epoch"] + 1, state["step"], path)
                    return stopped_summary(out, stop.reason, path, rt)
            bar.close()
            lr = opt.param_groups[0]["lr"]
            sched.step()
            total = distributed.sum_across([state["loss_sum"], state["count"]], rt.device)
            state.update(loss_sum=total[0], count=int(total[1]))
            if rt.is_main:  # rank 0 validates and writes; the others wait in save()
                end_epoch(net, val_loader, rt, ch, cfg, state, lr, bool(val_idx))
            state.update(epoch=state["epoch"] + 1, step=0, loss_sum=0.0, count=0)
            save()
            last_save = time.monotonic()
            if distributed.sum_across([stop.should_stop()], rt.device)[0]:
                log.info("stopped by %s after epoch %d; run again to continue.",
                         stop.reason or "another process's stop", state["epoch"])
                return stopped_summary(out, stop.reason, None, rt)
    finally:
        signal.signal(signal.SIGTERM, previous_handler)

    if not rt.is_main:
        return {"status": "done", "rank": rt.rank}
    head = None
    if zs_wanted:
        head = fit_zero_shot(net, cfg, ch, images, labels, train_idx, val_idx, rt, workers,
                             attributes, attr_source)
    save_model(out / "model.pt", net, cfg, ch, head, state["history"])
    write_history(out, state["history"])
    unreadable = {**{str(ch.train_samples[i][0]): e for i, e in skipped.items()},
                  **state["unreadable"]}
    summary = {"status": "done", "epochs": state["epoch"], "seconds": time.monotonic() - started,
               "train_images": len(train_idx), "val_images": len(val_idx),
               "unreadable": unreadable,
               "val_acc": state["history"][-1].get("val_acc") if state["history"] else None,
               "zero_shot": head.report if head else None}
    ckpt.atomic_write_text(out / "summary.json", json.dumps(
        {k: v for k, v in summary.items() if k != "zero_shot"}, indent=2) + "\n")
    if unreadable:
        log.info("skipped %d unreadable training images (listed in summary.json):",
                 len(unreadable))
        for path, err in sorted(unreadable.items())[:20]:
            log.info("  %s: %s", path, err)
    return summary


def end_epoch(net: Net, val_loader, rt: Runtime, ch: Challenge, cfg: Config,
              state: dict[str, Any], lr: float, validate: bool) -> None:
    """Validation, the history record, metrics.jsonl and model_best.pt (rank 0)."""
    metrics = evaluate(net, val_loader, rt, ch.classes) if validate else {}
    views = metrics.pop("_views", {"failed": []})
    state["unreadable"].update({str(ch.train_samples[i][0]): e for i, e in views["failed"]})
    record = {"epoch": state["epoch"] + 1, "lr": lr,
              "train_loss": state["loss_sum"] / max(state["count"], 1),
              "train_images": state["count"], **metrics}
    state["history"].append(record)
    log.info("epoch %d: train loss %.4f, val acc %s", record["epoch"], record["train_loss"],
             f"{record.get('val_acc', float('nan')):.4f}")
    out = Path(cfg.output_dir)
    write_history(out, state["history"])
    if record.get("val_acc", -1) > state["best_val"]:
        state["best_val"] = record["val_acc"]
        save_model(out / "model_best.pt", net, cfg, ch, None, state["history"])


def stopped_summary(out: Path, reason: str, path: Path | None, rt: Runtime) -> dict[str, Any]:
    summary = {"status": "stopped", "reason": reason, "checkpoint": str(path) if path else None}
    if rt.is_main:
        ckpt.atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def train_step(model: nn.Module, opt, scaler, rt: Runtime, x: torch.Tensor, y: torch.Tensor,
               attr_targets: torch.Tensor | None = None, attr_weight: float = 0.0,
               loss_scale: float = 1.0) -> float:
    """One SGD step on cross-entropy (+ attr_weight x attribute BCE when targets are given).
    `model` may be DDP-wrapped; loss_scale makes the average over processes the global mean.
    Returns the cross-entropy alone, so the loss curve means the same with or without."""
    y = y.to(rt.device)
    with rt.autocast():
        logits, _, attr = model(rt.to_device(x), extras=True)
        loss = ce = nn.functional.cross_entropy(logits, y)
        if attr_targets is not None and attr_weight:
            loss = ce + attr_weight * nn.functional.binary_cross_entropy_with_logits(
                attr.float(), attr_targets[y])
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss * loss_scale).backward()
    scaler.step(opt)
    scaler.update()
    return float(ce.detach())


def attribute_targets(attributes: np.ndarray) -> torch.Tensor:
    """Class attributes scaled to [0, 1] per attribute: soft targets for the attribute BCE."""
    lo, hi = attributes.min(0), attributes.max(0)
    return torch.from_numpy((attributes - lo) / np.maximum(hi - lo, 1e-8)).float()


def fit_zero_shot(net: Net, cfg: Config, ch: Challenge, images, labels, train_idx, val_idx,
                  rt: Runtime, workers: int, attributes: np.ndarray, source: str):
    """Features of every training image -> protocol -> the zero-shot head (zeroshot.py)."""
    views = Views(images, labels, cfg.image_size, "eval", cfg.seed,
                  fast_augment=cfg.fast_augment)

    def feats(idx: list[int]) -> dict[str, np.ndarray]:
        loader = make_loader(views, EpochBatches(idx, cfg.batch_size * 2, cfg.seed), workers,
                             rt.device.type == "cuda")
        return run_views(net, loader, rt)

    tr = feats(train_idx)
    if len(val_idx) and len(ch.seen) >= 2:
        va = feats(val_idx)
        report = leave_classes_out(tr["features"], tr["labels"], va["features"], va["labels"],
                                   va["logits"], attributes, ch.seen, cfg.zs_folds, cfg.seed)
    else:  # nothing held out to tune on: fixed, middle-of-the-road choices
        log.warning("zero-shot: no validation images or fewer than 2 seen classes; "
                    "using lam=1, gamma=0.1 untuned")
        va = {"features": tr["features"][:0], "labels": tr["labels"][:0]}
        report = {"lam": 1.0, "gamma": 0.1, "folds": [], "untuned": True}
    report["attributes"] = source
    gamma = None if cfg.zs_gamma == "auto" else float(cfg.zs_gamma)
    head = fit_head(np.concatenate([tr["features"], va["features"]]),
                    np.concatenate([tr["labels"], va["labels"]]), attributes, ch.seen, report,
                    gamma)
    ckpt.atomic_write_text(Path(cfg.output_dir) / "zeroshot.json",
                           json.dumps(report, indent=2) + "\n")
    if report.get("untuned"):
        return head
    log.info("zero-shot protocol (%d folds of pseudo-unseen classes): u %.3f s %.3f H %.3f "
             "expected accuracy %.3f at gamma %.2f; gamma 0: u %.3f s %.3f H %.3f; never "
             "unseen: accuracy %.3f", len(report["folds"]), report["u"], report["s"],
             report["H"], report["acc"], head.gamma, report["gamma0"]["u"],
             report["gamma0"]["s"], report["gamma0"]["H"], report["never_unseen"]["acc"])
    return head


def save_model(path: Path, net: Net, cfg: Config, ch: Challenge, head, history) -> None:
    """Everything predict needs, self-contained (no weights download at prediction time)."""
    n_attributes = net.attr_head.out_features if net.attr_head is not None else 0
    ckpt.atomic_torch_save({"config": cfg.to_dict(), "classes": ch.classes, "seen": ch.seen,
                            "n_attributes": n_attributes,
                            "unseen": ch.unseen, "state_dict": net.state_dict(),
                            "zero_shot": head.to_state() if head else None,
                            "history": history}, path)


def write_history(out: Path, history: list[dict]) -> None:
    ckpt.atomic_write_text(out / "metrics.jsonl",
                           "".join(json.dumps(r) + "\n" for r in history))


def progress(loader, desc: str, rt: Runtime):
    from tqdm.auto import tqdm

    return tqdm(loader, desc=desc, disable=not rt.is_main, leave=False, mininterval=2)
