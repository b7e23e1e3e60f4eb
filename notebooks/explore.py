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
# # Pixel Play'25: explore the data
#
# Class counts (seen vs unseen), sample images per class, image sizes, unreadable files and
# the test set. Tables come from `pixelplay_lib.analysis`, figures from `pixelplay_lib.plots`;
# this notebook only calls them.
# Figures are shown here and saved under `<output_dir>/figures/`.

# %% [markdown]
# Make `pixelplay_lib` importable. On Kaggle it comes from the dataset `<user>/pixelplay-lib`
# (published by `make push-lib`): its wheel is imported straight from the zip, or a folder
# holding `pixelplay_lib/` is used. Locally the package installed in the venv is used.

# %%
# ruff: noqa: E402 (the imports of later cells need this cell first)
import os
import sys
from pathlib import Path


def _find_pixelplay(root: Path, depth: int = 5) -> list[Path]:
    """pixelplay-*.whl files, then folders holding pixelplay_lib/, up to `depth` levels below
    root: datasets/<owner>/<slug>/ (today), <slug>/ (older sessions), notebooks/<owner>/<kernel>/.
    Never walks the challenge's image folders (train/ and test/ beside classes.txt)."""
    wheels, folders = [], []
    for folder, subdirs, files in os.walk(root, followlinks=True):
        here = Path(folder)
        wheels += [here / f for f in files if f.startswith("pixelplay-") and f.endswith(".whl")]
        if (here / "pixelplay_lib" / "__init__.py").is_file():
            folders.append(here)
        skip = {"pixelplay_lib"} | ({"train", "test"} if "classes.txt" in files else set())
        deep = len(here.relative_to(root).parts) >= depth
        subdirs[:] = [] if deep else sorted(d for d in subdirs if d not in skip)
    return sorted(wheels) + sorted(folders)


# PIXELPLAY_INPUT_ROOT: where Kaggle's inputs are (tests point it at a fake root).
_inputs = Path(os.environ.get("PIXELPLAY_INPUT_ROOT") or "/kaggle/input")
_libs = _find_pixelplay(_inputs) if _inputs.is_dir() else []
if _libs:  # the wheel first (a zip on sys.path: pure Python, no pip), else a folder
    sys.path.insert(0, str(_libs[0]))
    if len(_libs) > 1:
        print("several copies of pixelplay found, using the first:", *_libs, sep="\n  ")
try:
    import pixelplay_lib
except ImportError:
    raise ImportError("pixelplay_lib not found. On Kaggle: Add Input -> the dataset "
                      "<user>/pixelplay-lib (publish it with `make push-lib`). Locally: "
                      "`make venv`.") from None
print("pixelplay_lib", pixelplay_lib.__version__, "from", pixelplay_lib.__file__)

# %% tags=["parameters"]
data_root = ""  # a folder holding the challenge somewhere below; empty: search input_root
input_root = "/kaggle/input"
output_dir = "/kaggle/working"  # figures go to output_dir/figures
samples_per_class = 2  # images per class in the sample grid
seed = 0
num_workers = 8  # threads decoding images for the size / unreadable-file report
_declared = set(dir())  # the names above: a papermill parameter not among them stops the run

# %%
import pixelplay_lib.config  # (binds no new name: the check below sees only parameters)

pixelplay_lib.config.check_parameters(globals(), _declared)

import pandas as pd
from IPython.display import display

from pixelplay_lib import analysis, plots
from pixelplay_lib.data import load_challenge

pd.set_option("display.width", 120)
ch = load_challenge(data_root, input_root)
print(f"challenge root: {ch.root}")

# %% [markdown]
# ## Classes: seen vs unseen, imbalance

# %%
counts = analysis.class_counts(ch)
print(analysis.count_summary(counts))
plots.show(plots.plot_class_counts(counts), output_dir, "class_counts")

# %% [markdown]
# ## What `loss_balance=logit_adjust` corrects
# The images per class that training sees (the training split, after the stratified
# validation split of `val_fraction`), and the offset logit adjustment adds to each class's
# logit in the training loss: log(prior) (Menon et al. 2021, tau = 1; an unseen class gets
# the mean). The rarer a class, the more negative its offset, so the raw logits that predict
# are pushed up for it. Off by default (the seed notebook's recipe): train with
# `-p loss_balance logit_adjust` (CLI: `--loss-balance logit_adjust`).

# %%
import numpy as np

from pixelplay_lib.config import Config
from pixelplay_lib.data import split_train_val
from pixelplay_lib.train import logit_adjustment

train_idx, _ = split_train_val(ch.train_samples, Config.val_fraction, seed)
train_counts = np.bincount([ch.train_samples[i][1] for i in train_idx],
                           minlength=len(ch.classes))
balance = counts.assign(images=train_counts, offset=logit_adjustment(train_counts).numpy())
print(analysis.count_summary(balance))
ordered = balance[balance["seen"]].sort_values("images")  # the rarest and the most frequent
display(pd.concat([ordered.head(3), ordered.tail(3)]).drop_duplicates("class").round(3))
plots.show(plots.plot_class_counts(balance, "training split: images per class (what "
                                            "logit adjustment corrects)"),
           output_dir, "train_split_counts")

# %% [markdown]
# ## Samples per class

# %%
samples = analysis.pick_samples(ch, samples_per_class, seed)
plots.show(plots.plot_image_grid(samples, cols=10), output_dir, "samples")

# %% [markdown]
# ## Image sizes and unreadable files
# Every image is decoded once with `load_rgb` (the loader training uses); failures are
# listed with what the file really is (`format`: e.g. a HEIC photo or a web page saved as
# `.jpg`) and the fix in `error`. Training skips them (listed in `summary.json`); a test
# file keeps its submission row and is listed under `undecodable` in `predict_summary.json`.

# %%
train_stats = analysis.image_stats([p for p, _ in ch.train_samples], num_workers)
test_stats = analysis.image_stats(analysis.list_test_images(ch), num_workers)
for name, stats in (("train", train_stats), ("test", test_stats)):
    print(name, analysis.size_summary(stats))
plots.show(plots.plot_image_sizes({"train": train_stats, "test": test_stats}), output_dir,
           "image_sizes")

# %%
bad = pd.concat([analysis.unreadable(train_stats).assign(split="train"),
                 analysis.unreadable(test_stats).assign(split="test")], ignore_index=True)
print(f"{len(bad)} unreadable file(s)")
display(bad)

# %% [markdown]
# ## Test set

# %%
test_files = analysis.list_test_images(ch)
print(f"{len(test_files)} test images in {ch.test_dir} "
      f"({test_files[0].name if test_files else '-'} ... "
      f"{test_files[-1].name if test_files else '-'})")
plots.show(plots.plot_image_grid([(p, p.name) for p in test_files[:20]], cols=10), output_dir,
           "test_samples")
