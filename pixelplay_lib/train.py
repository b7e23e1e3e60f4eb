"""Training: the baseline recipe (cross-entropy, SGD + MultiStepLR), resumable at any step.

Everything the rest of a run depends on is in the checkpoint or is a pure function of the
config: the data order of an epoch comes from (seed, epoch), each sample's augmentation
from (seed, epoch, sample). So a run killed at any moment and resumed from its newest
checkpoint ends bit-identical (on CPU) to one that never stopped.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import checkpoint as ckpt
from . import distributed, experts, preflight
from .config import Config, fingerprint
from .data import Challenge, load_challenge, load_class_attributes, split_train_val
from .inference import ViewPlan, classifier_forward, open_images, run_images
from .model import Net, build_model
from .pipeline import EpochBatches, Views, make_loader, resolve_workers, worker_out_of_shm
from .progress import bar as progress_bar
from .runtime import Runtime, make_runtime, setup_logging

log = logging.getLogger("pixelplay")


class ConfigMismatch(RuntimeError):
    pass


class StopFlag:
    """Asks training to stop at its next step, with a checkpoint: SIGTERM (Kaggle stopping a
    session, `kill`), SIGINT (Ctrl-C, Jupyter's Interrupt, torchrun or spawn passing one on)
    or the time limit. A second SIGINT stops at once (KeyboardInterrupt), losing the steps
    since the newest checkpoint. The handler only records: the training loop reports it
    (writing to a stream from inside a handler can collide with a write in progress)."""

    def __init__(self, time_limit_s: float):
        self.deadline = time.monotonic() + time_limit_s if time_limit_s > 0 else float("inf")
        self.reason = ""
        self.interrupts = 0  # SIGINTs received
        self.reported = False

    def __call__(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT:
            self.interrupts += 1
            if self.interrupts > 1:
                raise KeyboardInterrupt
        self.reason = self.reason or signal.Signals(signum).name

    def should_stop(self) -> bool:
        if not self.reason and time.monotonic() >= self.deadline:
            self.reason = "time limit"
        if self.reason and not self.reported:
            self.reported = True
            log.warning("%s: saving a checkpoint and stopping%s", self.reason,
                        "; Ctrl-C again stops at once (losing the steps since the newest "
                        "checkpoint)" if self.interrupts else "")
        return bool(self.reason)

    @contextlib.contextmanager
    def handling_signals(self) -> Iterator[None]:
        """This flag as the SIGTERM and SIGINT handler inside the block, the previous ones
        after it. Python installs handlers in the main thread only (a notebook kernel runs
        cells there; spawned and torchrun processes run training there): in another
        thread only the time limit stops training."""
        if threading.current_thread() is not threading.main_thread():
            log.info("training outside the main thread: SIGTERM / Ctrl-C are not caught")
            yield
            return
        previous = {s: signal.signal(s, self) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, handler in previous.items():  # None: set outside Python; default then
                signal.signal(s, handler if handler is not None else signal.SIG_DFL)


@dataclass
class Progress:
    """Where a run is; saved in every checkpoint. loss_sum / count: the partial epoch."""

    epoch: int = 0  # epochs done
    step: int = 0  # steps done in the current epoch
    loss_sum: float = 0.0
    count: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per epoch
    best_val: float = -1.0
    unreadable: dict[str, str] = field(default_factory=dict)  # path -> reason


def data_fingerprint(ch: Challenge, indices: list[int]) -> str:
    names = "\n".join(f"{ch.train_samples[i][0].relative_to(ch.root)}" for i in indices)
    return hashlib.sha1(names.encode("utf-8", "surrogateescape")).hexdigest()[:16]


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


def restore_scaler(scaler: torch.amp.GradScaler, state: dict[str, Any]) -> None:
    """Load a grad-scaler state saved on other hardware. A scaler saved disabled (CPU, bf16,
    amp=off) has an empty state: an enabled one (fp16 on a T4) then starts at its initial
    scale, which it re-tunes within a few steps; a disabled one ignores any state."""
    if scaler.is_enabled() and state:
        scaler.load_state_dict(state)
    elif scaler.is_enabled():
        log.info("the checkpoint ran without fp16 loss scaling: the grad scaler starts fresh")


def find_resume(cfg: Config) -> tuple[dict[str, Any], Path] | None:
    """The checkpoint to resume from: resume=PATH, else (auto) the newest valid one in
    output_dir itself, else the newest below input_root (where a Kaggle kernel's previous
    output lands). Sub-folders of output_dir are other runs: never looked at."""
    if cfg.resume == "never":
        return None
    if cfg.resume != "auto":
        path = Path(cfg.resume)
        if not path.is_file():
            raise FileNotFoundError(f"resume={path}: no such checkpoint")
        return ckpt.load_file(path), path
    return (ckpt.load_newest(ckpt.list_checkpoints(cfg.output_dir))
            or ckpt.load_newest(ckpt.list_checkpoints(cfg.input_root, recursive=True)))


def check_fingerprint(cfg: Config, saved: dict[str, Any], path: Path) -> None:
    now = fingerprint(cfg)
    diff = [k for k in now if k in saved and saved[k] != now[k]]
    if diff:
        changes = ", ".join(f"{k}: {saved[k]!r} -> {now[k]!r}" for k in diff)
        raise ConfigMismatch(
            f"checkpoint {path} was trained with another config ({changes}). To continue it, "
            "use the old values. To start fresh: resume=never (`-p resume never`, "
            "`--resume never`); on Kaggle also push without the previous output attached "
            "(`make push-kernel RESUME_FROM=`).")


def step_seed(seed: int, epoch: int, step: int, rank: int) -> int:
    """The torch seed of one training step (dropout, stochastic depth): a pure function of
    where the run is, so no random-generator state needs saving for an exact resume."""
    return int(np.random.default_rng([seed & 0xFFFFFFFF, epoch, step, rank]).integers(2**62))


def train(cfg: Config) -> dict[str, Any]:
    """Train (or resume) into cfg.output_dir, then fit the fusion of the experts; returns
    the run summary (also written to summary.json)."""
    setup_logging()
    preflight.check_main(cfg, "train")  # seconds: every cheap check before any real work
    started = time.monotonic()
    rank, world, local_rank = distributed.setup(cfg)
    try:
        rt = make_runtime(cfg, rank, world, local_rank)
        if not experts.needs_network(cfg):  # image-text experts only: nothing to fine-tune
            return fit_experts(cfg, rt, None, started) if rt.is_main else {"status": "done"}
        run = Run(cfg, rt)
        return run.fit() or fit_experts(cfg, rt, run, started)
    finally:
        distributed.teardown()


def fit_experts(cfg: Config, rt: Runtime, run: Run | None, started: float) -> dict[str, Any]:
    """After the network (if any): model.pt, the fusion of the experts (when there are
    classes to recognise without training images), summary.json. Rank 0 only."""
    if run is not None and not rt.is_main:
        return {"status": "done", "rank": rt.rank}
    if run is None:
        ch = load_challenge(cfg.data_root, cfg.input_root)
        Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
        cfg.write_json(Path(cfg.output_dir) / "config.json")
        train_idx, val_idx = split_train_val(ch.train_samples, cfg.val_fraction, cfg.seed)
        summary: dict[str, Any] = {"status": "done", "epochs": 0, "train_images":
                                   len(train_idx), "val_images": len(val_idx)}
    else:
        ch, train_idx, val_idx = run.ch, run.train_idx, run.val_idx
        summary = run.finish()
    net = run.net if run is not None else None
    if cfg.zero_shot == "on" or (cfg.zero_shot == "auto" and ch.unseen):
        fitted = experts.fit(cfg, rt, ch, train_idx, val_idx, net)
        state = fitted.state
        summary["fusion"] = {"experts": dict(zip(state.names, state.weights, strict=True)),
                             "gamma": state.gamma,
                             **state.report.get("protocol", {}).get("fusion", {})}
        # the protocol's provisional rule (predict chooses again on the test pool): its
        # scores go beside fusion.json as fusion.special.csv, not beside a submission
        summary["special_package"] = experts.score_special(cfg, rt, ch, fitted, "fusion")
    elif net is None:
        raise ValueError("nothing to predict with: the experts chosen train no network and "
                         "zero_shot=off leaves no fusion; use experts=auto or zero_shot=auto")
    # model.pt last: it marks a complete run (predict and the infer kernel look for it)
    save_model(Path(cfg.output_dir) / "model.pt", net, cfg, ch,
               run.progress.history if run is not None else [])
    if run is not None:
        run.keep_final_checkpoint()
    summary["seconds"] = time.monotonic() - started
    ckpt.atomic_write_text(Path(cfg.output_dir) / "summary.json",
                           json.dumps(summary, indent=2, ensure_ascii=True, default=str) + "\n")
    return summary


def launch_train(cfg: Config) -> dict[str, Any]:
    """The notebooks' way: train in this process, or spawn one process per device."""
    world = distributed.world_size_for(cfg.devices)
    if world <= 1 or distributed.in_launched_process():
        return train(cfg)
    preflight.check(cfg, "train")  # before spawning: one message, not one per process
    distributed.spawn(train, cfg, world)
    summary = Path(cfg.output_dir) / "summary.json"
    return json.loads(summary.read_text()) if summary.is_file() else {"status": "stopped"}


class Run:
    """One training run; its state is the attributes set up in __init__ plus `progress`."""

    def __init__(self, cfg: Config, rt: Runtime):
        self.cfg, self.rt, self.out = cfg, rt, Path(cfg.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.ch = load_challenge(cfg.data_root, cfg.input_root)
        if rt.is_main:
            cfg.write_json(self.out / "config.json")
        if cfg.batch_size % rt.world:
            raise ValueError(f"batch_size={cfg.batch_size} (the global batch) must divide "
                             f"into {rt.world} devices")
        self.workers = resolve_workers(cfg.num_workers)
        self._setup_data()
        self._setup_zero_shot()
        self._setup_model()
        self.progress = Progress()
        self._resume()
        self.last_save = time.monotonic()

    def _setup_data(self) -> None:
        cfg, ch, rt = self.cfg, self.ch, self.rt
        train_idx, val_idx = split_train_val(ch.train_samples, cfg.val_fraction, cfg.seed)
        self.images = distributed.main_process_first(rt.is_main, lambda: open_images(
            [p for p, _ in ch.train_samples], cfg.image_size, cfg, "decoding train images"))
        self.skipped = dict(self.images.errors)  # unreadable files found by the cache
        self.train_idx = [i for i in train_idx if i not in self.skipped]
        self.val_idx = [i for i in val_idx if i not in self.skipped]
        self.labels = [label for _, label in ch.train_samples]
        log.info("challenge %s: %d classes (%d seen, %d unseen), %d train + %d validation "
                 "images, %d unreadable%s", ch.root, len(ch.classes), len(ch.seen),
                 len(ch.unseen), len(self.train_idx), len(self.val_idx), len(self.skipped),
                 f"; {rt.world} processes, {cfg.batch_size // rt.world} images each per step"
                 if rt.world > 1 else "")
        views = Views(self.images, self.labels, cfg.image_size, "train", cfg.seed,
                      cfg.crop_scale_min, cfg.rotation, fast_augment=cfg.fast_augment)
        self.sampler = EpochBatches(self.train_idx, cfg.batch_size, cfg.seed, rt.rank, rt.world)
        self.loader = make_loader(views, self.sampler, self.workers, rt.device.type == "cuda")
        self.eval_plan = ViewPlan(cfg.image_size, seed=cfg.seed, fast_augment=cfg.fast_augment)

    def _setup_zero_shot(self) -> None:
        """Attributes are read before training: a missing or wrong file fails in seconds."""
        cfg, ch = self.cfg, self.ch
        self.zero_shot = cfg.zero_shot == "on" or (cfg.zero_shot == "auto" and bool(ch.unseen))
        self.attributes, self.attr_source, self.attr_targets = None, "", None
        if self.zero_shot:
            self.attributes, self.attr_source = load_class_attributes(ch.root, ch.classes)
            if cfg.attr_loss > 0:
                self.attr_targets = attribute_targets(self.attributes).to(self.rt.device)

    def _setup_model(self) -> None:
        cfg, rt = self.cfg, self.rt
        n_attributes = 0 if self.attr_targets is None else self.attr_targets.shape[1]
        torch.manual_seed(cfg.seed)  # random-init weights (weights=none) are part of the config
        net = build_model(cfg.arch, len(self.ch.classes), cfg.weights, cfg.trainable,
                          cfg.input_root, n_attributes)
        net.to(rt.device)
        if rt.channels_last:
            net.to(memory_format=torch.channels_last)
        self.model = distributed.wrap(net, rt.device, rt.world)
        # (SyncBatchNorm may have replaced layers: the wrapped module is the net now)
        self.net = self.model.module if self.model is not net else net
        params = [p for p in self.net.parameters() if p.requires_grad]
        self.opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                                   weight_decay=cfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.MultiStepLR(self.opt, list(cfg.milestones),
                                                          cfg.lr_gamma)
        self.scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.amp_dtype == torch.float16)
        self.data_id = data_fingerprint(self.ch, self.train_idx)
        self.logit_offset = None  # loss_balance=logit_adjust: log class priors (train_step)
        if cfg.loss_balance == "logit_adjust":
            counts = np.bincount([self.labels[i] for i in self.train_idx],
                                 minlength=len(self.ch.classes))
            self.logit_offset = logit_adjustment(counts).to(rt.device)
            seen = counts[counts > 0]
            log.info("loss_balance=logit_adjust: training logits + log(class prior) of %d "
                     "images; %d classes with images, %d to %d each (ratio %.1f)",
                     counts.sum(), len(seen), seen.min(), seen.max(), seen.max() / seen.min())

    def _resume(self) -> None:
        """Continue from a checkpoint; one found elsewhere (an earlier Kaggle version's
        output) is re-saved into output_dir at once, with its model_best.pt, so this run's
        own output can always continue the chain, even if it dies before its first save."""
        found = find_resume(self.cfg)
        if not found:
            return
        saved, path = found
        check_fingerprint(self.cfg, saved["fingerprint"], path)
        if saved["data"] != self.data_id:
            raise ConfigMismatch(
                f"checkpoint {path} was trained on another set of images than the "
                f"{len(self.train_idx)} training images of {self.ch.root} now (files added, "
                "removed or renamed, or another data_root). To continue it, train on the same "
                "images. To start fresh: resume=never (`-p resume never`, `--resume never`); "
                "on Kaggle also push without the previous output attached "
                "(`make push-kernel RESUME_FROM=`).")
        load_model_state(self.net, saved["model"])
        self.opt.load_state_dict(saved["optimizer"])
        self.sched.load_state_dict(saved["scheduler"])
        restore_scaler(self.scaler, saved["scaler"])
        self.progress = Progress(**saved["progress"])
        if not self.rt.is_main:  # the saved sums are global: one rank carries them on
            self.progress.loss_sum, self.progress.count = 0.0, 0
        log.info("resumed from %s (epoch %d, step %d)", path, self.progress.epoch,
                 self.progress.step)
        if path.parent.resolve() != self.out.resolve():
            best = path.parent / "model_best.pt"
            if self.rt.is_main and best.is_file() and not (self.out / best.name).exists():
                shutil.copy2(best, self.out / best.name)
            self.save()

    def save(self) -> Path | None:
        """All ranks call it (the loss sums are gathered); rank 0 writes a checkpoint."""
        p, rt = self.progress, self.rt
        total = distributed.sum_across([p.loss_sum, p.count], rt.device)
        if not rt.is_main:
            p.loss_sum, p.count = 0.0, 0
            return None
        p.loss_sum, p.count = total[0], int(total[1])
        payload = {"fingerprint": fingerprint(self.cfg), "data": self.data_id,
                   "model": model_state(self.net), "optimizer": self.opt.state_dict(),
                   "scheduler": self.sched.state_dict(), "scaler": self.scaler.state_dict(),
                   "progress": asdict(p), "classes": self.ch.classes}
        self.last_save = time.monotonic()
        return ckpt.save_checkpoint(self.out, payload, p.epoch, p.step)

    def checkpoint_due(self) -> bool:
        every, minutes = self.cfg.checkpoint_every_steps, self.cfg.checkpoint_every_minutes
        return bool((every and (self.progress.step + 1) % every == 0) or (
            minutes and time.monotonic() - self.last_save > minutes * 60))

    def fit(self) -> dict[str, Any] | None:
        """The epochs still to run. Returns a summary when stopped early, else None."""
        stop = StopFlag(self.cfg.time_limit * 60)
        with stop.handling_signals():
            while self.progress.epoch < self.cfg.epochs:
                if not self.train_epoch_or_fall_back(stop):
                    path = self.save()
                    log.info("stopped by %s at epoch %d step %d; checkpoint %s. Run the same "
                             "command again (same output_dir) to continue.", stop.reason,
                             self.progress.epoch + 1, self.progress.step, path)
                    return self.stopped(stop.reason, path)
                self.end_epoch()
                if distributed.sum_across([stop.should_stop()], self.rt.device)[0]:
                    log.info("stopped by %s after epoch %d (its checkpoint is written). Run "
                             "the same command again (same output_dir) to continue.",
                             stop.reason or "another process's stop", self.progress.epoch)
                    return self.stopped(stop.reason, None)
        return None

    def train_epoch_or_fall_back(self, stop: StopFlag) -> bool:
        """train_epoch; when a loader worker runs out of shared memory mid-epoch (more used
        by others since pipeline.worker_settings checked), the epoch goes on from the step it
        reached with images loaded in this process. Exact: a step's batch is a function of
        (seed, epoch, step), and the failed fetch trained nothing."""
        while True:
            try:
                return self.train_epoch(stop)
            except RuntimeError as e:
                if self.workers == 0 or not worker_out_of_shm(e):
                    raise
                log.warning("WARNING: a DataLoader worker ran out of shared memory at epoch %d "
                            "step %d (%s): going on with images loaded in the main process "
                            "(num_workers=0, slower). Fix: more shared memory (docker run "
                            "--shm-size=2g) or fewer --num-workers.", self.progress.epoch + 1,
                            self.progress.step, str(e).strip().splitlines()[-1])
            self.workers = 0
            self.loader = make_loader(self.loader.dataset, self.sampler, 0,
                                      self.loader.pin_memory)
            gc.collect()  # the failed loader's workers end now: a cycle through the error held it

    def train_epoch(self, stop: StopFlag) -> bool:
        """The recipe's steps for the rest of one epoch; False when asked to stop."""
        cfg, rt, p = self.cfg, self.rt, self.progress
        self.sampler.epoch, self.sampler.start = p.epoch, p.step
        self.net.train()
        bar = progress_bar(self.loader, f"epoch {p.epoch + 1}/{cfg.epochs}",
                           self.sampler.batches_per_epoch(), initial=p.step, enabled=rt.is_main)
        for x, y, _, bad in bar:
            # cache=False: files fail here, once an epoch each (skipped, never retried)
            p.unreadable.update({str(self.ch.train_samples[i][0]): e for i, e in bad})
            # One collective per step agrees on the global batch size, stop and save.
            n, stopping, due = distributed.sum_across(
                [len(y), stop.should_stop(), self.checkpoint_due()], rt.device)
            if n:
                torch.manual_seed(step_seed(cfg.seed, p.epoch, p.step, rt.rank))
                loss = train_step(self.model, self.opt, self.scaler, rt, x, y,
                                  self.attr_targets, cfg.attr_loss,
                                  loss_scale=rt.world * len(y) / n,
                                  logit_offset=self.logit_offset)
                p.loss_sum += loss * len(y)
                p.count += len(y)
                bar.set_postfix(loss=f"{loss:.4f}")
            p.step += 1
            if stopping:
                stop.reason = stop.reason or "another process's stop"
                bar.close()
                return False
            if due:
                self.save()
        bar.close()
        return True

    def end_epoch(self) -> None:
        """LR step, validation and the history record (rank 0), then a checkpoint."""
        p, rt = self.progress, self.rt
        lr = self.opt.param_groups[0]["lr"]
        self.sched.step()
        p.loss_sum, p.count = distributed.sum_across([p.loss_sum, p.count], rt.device)
        if rt.is_main:  # the others wait in save()
            metrics = self.evaluate() if self.val_idx else {}
            record = {"epoch": p.epoch + 1, "lr": lr, "train_loss": p.loss_sum / max(p.count, 1),
                      "train_images": int(p.count), **metrics}
            p.history.append(record)
            log.info("epoch %d: train loss %.4f, val acc %s", record["epoch"],
                     record["train_loss"], f"{record.get('val_acc', float('nan')):.4f}")
            write_history(self.out, p.history)
            if record.get("val_acc", -1) > p.best_val:
                p.best_val = record["val_acc"]
                save_model(self.out / "model_best.pt", self.net, self.cfg, self.ch, p.history)
        p.epoch, p.step, p.loss_sum, p.count = p.epoch + 1, 0, 0.0, 0
        self.save()

    def run(self, indices: list[int], keep: dict[str, str]) -> dict[str, Any]:
        """The network's outputs on the central views of training images `indices`."""
        self.net.eval()
        return run_images(classifier_forward(self.net), self.images, indices, self.eval_plan,
                          self.rt, batch_images=self.cfg.batch_size * 2,
                          workers=self.workers, keep=keep, labels=self.labels)

    def evaluate(self) -> dict[str, Any]:
        """Validation loss, accuracy and per-class accuracy (unreadable files reported)."""
        out = self.run(self.val_idx, {"logits": "first"})
        self.progress.unreadable.update(
            {str(self.ch.train_samples[i][0]): e for i, e in out["failed"]})
        logits, labels = torch.from_numpy(out["logits"]), torch.from_numpy(out["labels"])
        pred = logits.argmax(1)
        per_class = {self.ch.classes[c]: round(float((pred[labels == c] == c).float().mean()), 6)
                     for c in sorted(set(labels.tolist()))}
        return {"val_loss": float(nn.functional.cross_entropy(logits, labels)),
                "val_acc": float((pred == labels).float().mean()), "val_per_class": per_class}

    def stopped(self, reason: str, path: Path | None) -> dict[str, Any]:
        summary = {"status": "stopped", "reason": reason,
                   "checkpoint": str(path) if path else None}
        if self.rt.is_main:
            ckpt.atomic_write_text(self.out / "summary.json", json.dumps(summary, indent=2) + "\n")
        return summary

    def keep_final_checkpoint(self) -> None:
        """Once model.pt is written (rank 0): only the newest checkpoint stays, which is all a
        longer run (a larger `epochs`, same output_dir) resumes from; a Kaggle kernel's
        output, downloaded and attached to the next version, stays small."""
        kept, deleted, freed = ckpt.keep_only_newest(self.out)
        if deleted:
            log.info("run finished: kept %s (to train more epochs later, run again with a "
                     "larger epochs); deleted %d older checkpoint(s), %.1f MB", kept.name,
                     len(deleted), freed / 2**20)

    def finish(self) -> dict[str, Any]:
        """After the last epoch (rank 0): metrics and the list of files not trained on."""
        ch, p = self.ch, self.progress
        write_history(self.out, p.history)
        unreadable = {**{str(ch.train_samples[i][0]): e for i, e in self.skipped.items()},
                      **p.unreadable}
        if unreadable:
            log.info("skipped %d unreadable training images (listed in summary.json):",
                     len(unreadable))
            for path, err in sorted(unreadable.items())[:20]:
                log.info("  %s: %s", path, err)
        lost = ch.classes_without_readable_files([Path(p) for p in unreadable])
        if lost:
            log.warning("no readable training image, so nothing learnt, for class(es) %s: "
                        "replace their files (summary.json lists them)",
                        ", ".join(ch.classes[c] for c in lost))
        return {"status": "done", "epochs": p.epoch, "train_images": len(self.train_idx),
                "val_images": len(self.val_idx), "unreadable": unreadable,
                "ignored": {str(path): why for path, why in ch.ignored.items()},
                "val_acc": p.history[-1].get("val_acc") if p.history else None}


def train_step(model: nn.Module, opt, scaler, rt: Runtime, x: torch.Tensor, y: torch.Tensor,
               attr_targets: torch.Tensor | None = None, attr_weight: float = 0.0,
               loss_scale: float = 1.0, logit_offset: torch.Tensor | None = None) -> float:
    """One SGD step on cross-entropy (+ attr_weight x attribute BCE when targets are given).
    `model` may be DDP-wrapped; loss_scale makes the average over processes the global mean.
    logit_offset: (n_classes,) added to the logits inside the cross-entropy only (the
    logit-adjusted loss, see logit_adjustment); predictions use the raw logits.
    Returns the cross-entropy alone, so the loss curve means the same with or without the
    attribute term."""
    y = y.to(rt.device)
    with rt.autocast():
        logits, _, attr = model(rt.to_device(x), extras=True)
        if logit_offset is not None:
            logits = logits.float() + logit_offset
        loss = ce = nn.functional.cross_entropy(logits, y)
        if attr_targets is not None and attr_weight:
            loss = ce + attr_weight * nn.functional.binary_cross_entropy_with_logits(
                attr.float(), attr_targets[y])
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss * loss_scale).backward()
    scaler.step(opt)
    scaler.update()
    return float(ce.detach())


def logit_adjustment(counts: np.ndarray, tau: float = 1.0) -> torch.Tensor:
    """(n_classes,) float32 offsets tau * log(prior) for the logit-adjusted cross-entropy
    (Menon et al. 2021, "Long-tail learning via logit adjustment", ICLR; tau = 1): from
    the training images per class `counts` (n_classes,). Training on softmax(logits +
    offsets) leaves the raw logits estimating the class-balanced posterior, so rare classes
    are no longer out-voted by frequent ones at test time.

    A class without training images (unseen) gets the mean offset of the others: its logit
    is neither favoured nor handicapped, as with plain cross-entropy. A balanced training set
    gives one constant offset, which the softmax ignores: exactly plain cross-entropy."""
    counts = np.asarray(counts, dtype=np.float64)
    present = counts > 0
    if not present.any():
        raise ValueError("logit adjustment: no class has training images")
    log_prior = np.log(counts[present] / counts.sum())
    offsets = np.full(len(counts), log_prior.mean())
    offsets[present] = log_prior
    return torch.from_numpy(tau * offsets).float()


def attribute_targets(attributes: np.ndarray) -> torch.Tensor:
    """Class attributes scaled to [0, 1] per attribute: soft targets for the attribute BCE."""
    lo, hi = attributes.min(0), attributes.max(0)
    return torch.from_numpy((attributes - lo) / np.maximum(hi - lo, 1e-8)).float()


def save_model(path: Path, net: Net | None, cfg: Config, ch: Challenge, history) -> None:
    """Everything predict needs, self-contained (no weights download at prediction time):
    the fine-tuned network (None for a run of image-text experts only), config, classes."""
    n_attributes = net.attr_head.out_features if net is not None and net.attr_head else 0
    ckpt.atomic_torch_save({"config": cfg.to_dict(), "classes": ch.classes, "seen": ch.seen,
                            "unseen": ch.unseen, "n_attributes": n_attributes,
                            "state_dict": net.state_dict() if net is not None else None,
                            "history": history}, path)


def write_history(out: Path, history: list[dict]) -> None:
    ckpt.atomic_write_text(out / "metrics.jsonl",
                           "".join(json.dumps(r) + "\n" for r in history))
