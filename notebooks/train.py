# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Pixel Play'25: train
#
# Trains (or resumes) the model with `pixelplay_lib.train.train`, then shows the loss and
# accuracy curves, the validation confusion matrix, per-class accuracy and the zero-shot
# protocol. Model, checkpoints, metrics and figures stay in `output_dir` (on Kaggle: the
# kernel's output, which the infer kernel attaches). A run stopped by the time limit
# resumes from its newest checkpoint when run again (earlier outputs under `input_root`
# count too).

# %% [markdown]
# Make `pixelplay_lib` importable. On Kaggle it comes from the dataset `<user>/pixelplay-lib`
# (published by `make push-lib`): its wheel is imported straight from the zip, or a folder
# holding `pixelplay_lib/` is used. Locally the package installed in the venv is used.

# %%
# ruff: noqa: E402 (the imports of later cells need this cell first)
import sys
from pathlib import Path

_inputs = Path("/kaggle/input")
_libs = [p for d in range(1, 5) for p in sorted(_inputs.glob("*/" * d + "pixelplay-*.whl"))]
_libs += [p.parent.parent for d in range(1, 5)
          for p in sorted(_inputs.glob("*/" * d + "pixelplay_lib/__init__.py"))]
if _libs:  # the wheel first (a zip on sys.path), else a folder holding pixelplay_lib/
    sys.path.insert(0, str(_libs[0]))
try:
    import pixelplay_lib
except ImportError:
    raise ImportError("pixelplay_lib not found. On Kaggle: Add Input -> the dataset "
                      "<user>/pixelplay-lib (publish it with `make push-lib`). Locally: "
                      "`make venv`.") from None
print("pixelplay_lib", pixelplay_lib.__version__, "from", pixelplay_lib.__file__)

# %% tags=["parameters"]
preset = ""  # empty: the baseline recipe (ResNet101, ImageNet weights); demo: small CPU one
data_root = ""  # a folder holding the challenge somewhere below; empty: search input_root
input_root = "/kaggle/input"  # data, pretrained weights, earlier runs' checkpoints
output_dir = "/kaggle/working"  # model, checkpoints, metrics.jsonl, figures
# None: the value of the preset (or the Config default); see pixelplay_lib/config.py
arch = None
weights = None
trainable = None
image_size = None
batch_size = None
epochs = None
lr = None
momentum = None
weight_decay = None
milestones = None
val_fraction = None
seed = None
num_workers = None
devices = None
amp = None
resume = None
time_limit = None
checkpoint_every_minutes = None
zero_shot = None
zs_gamma = None

# %%
import json

from pixelplay_lib import report
from pixelplay_lib.config import make_config
from pixelplay_lib.distributed import launch_train

cfg = make_config(preset,
    data_root=data_root, input_root=input_root, output_dir=output_dir, arch=arch,
    weights=weights, trainable=trainable, image_size=image_size, batch_size=batch_size,
    epochs=epochs, lr=lr, momentum=momentum, weight_decay=weight_decay, milestones=milestones,
    val_fraction=val_fraction, seed=seed, num_workers=num_workers, devices=devices, amp=amp,
    resume=resume, time_limit=time_limit, checkpoint_every_minutes=checkpoint_every_minutes,
    zero_shot=zero_shot, zs_gamma=zs_gamma)
print(json.dumps(cfg.to_dict(), indent=1))

# %% [markdown]
# ## Training

# %%
summary = launch_train(cfg)  # one process per GPU when several are visible (T4 x2)
done = summary["status"] == "done"
print(json.dumps(summary, indent=1, default=str))
if not done:
    print("Training stopped early: run this notebook again (same output_dir, or this "
          "kernel's output attached as an input) to resume. Figures below need a model.")

# %% [markdown]
# ## Loss and accuracy per epoch

# %%
metrics = report.read_metrics(cfg.output_dir)
print(metrics.to_string(index=False))
report.show(report.plot_curves(metrics), cfg.output_dir, "curves")

# %% [markdown]
# ## Validation: confusion matrix and per-class accuracy
# The final model on its validation split, one central view per image, argmax over the
# seen classes.

# %%
if done and cfg.val_fraction > 0:
    val = report.validation_report(cfg)
    print(f"validation accuracy {val['accuracy']:.4f} on {val['images']} images")
    val["per_class"].to_csv(f"{cfg.output_dir}/val_per_class.csv", index=False)
    report.show(report.plot_confusion(val["confusion"], val["classes"]), cfg.output_dir,
                "confusion")
    report.show(report.plot_per_class_accuracy(val["per_class"], "validation accuracy"),
                cfg.output_dir, "val_per_class")

# %% [markdown]
# ## Zero-shot protocol
# Seen classes take turns playing unseen (leave-classes-out folds): u = their accuracy,
# s = the other seen classes' accuracy, H = harmonic mean, against the calibration offset
# gamma. The gamma with the best expected test accuracy (0.8 s + 0.2 u: a fifth of the
# classes are unseen) is used for the 10 truly unseen classes at prediction time.

# %%
zs = report.read_zeroshot(cfg.output_dir)
if zs and zs.get("untuned"):
    print("zero-shot head fitted with untuned defaults (no validation images to tune on)")
elif zs:
    print(f"u {zs['u']:.3f}  s {zs['s']:.3f}  H {zs['H']:.3f}  expected accuracy "
          f"{zs['acc']:.3f} at gamma {zs['gamma']} (gamma 0: u {zs['gamma0']['u']:.3f} "
          f"s {zs['gamma0']['s']:.3f} H {zs['gamma0']['H']:.3f}; never unseen: accuracy "
          f"{zs['never_unseen']['acc']:.3f}); attributes: {zs.get('attributes')}")
    report.show(report.plot_zeroshot(zs), cfg.output_dir, "zeroshot")
else:
    print("no zeroshot.json: zero_shot was off, no class lacks training images, or the "
          "run has not finished")
