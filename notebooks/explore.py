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
# the test set. Analysis code lives in `pixelplay_lib.report`; this notebook only calls it.
# Figures are shown here and saved under `<output_dir>/figures/`.

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
data_root = ""  # a folder holding the challenge somewhere below; empty: search input_root
input_root = "/kaggle/input"
output_dir = "/kaggle/working"  # figures go to output_dir/figures
samples_per_class = 2  # images per class in the sample grid
seed = 0
num_workers = 8  # threads decoding images for the size / unreadable-file report

# %%
import pandas as pd
from IPython.display import display

from pixelplay_lib import report
from pixelplay_lib.data import load_challenge

pd.set_option("display.width", 120)
ch = load_challenge(data_root, input_root)
print(f"challenge root: {ch.root}")

# %% [markdown]
# ## Classes: seen vs unseen, imbalance

# %%
counts = report.class_counts(ch)
print(report.count_summary(counts))
report.show(report.plot_class_counts(counts), output_dir, "class_counts")

# %% [markdown]
# ## Samples per class

# %%
samples = report.pick_samples(ch, samples_per_class, seed)
report.show(report.plot_image_grid(samples, cols=10), output_dir, "samples")

# %% [markdown]
# ## Image sizes and unreadable files
# Every image is decoded once with `load_rgb` (the loader training uses); failures are
# listed. Training and prediction skip / blank them, but it is good to know they exist.

# %%
train_stats = report.image_stats([p for p, _ in ch.train_samples], num_workers)
test_stats = report.image_stats(report.list_test_images(ch), num_workers)
for name, stats in (("train", train_stats), ("test", test_stats)):
    print(name, report.size_summary(stats))
report.show(report.plot_image_sizes({"train": train_stats, "test": test_stats}),
                   output_dir, "image_sizes")

# %%
bad = pd.concat([report.unreadable(train_stats).assign(split="train"),
                 report.unreadable(test_stats).assign(split="test")], ignore_index=True)
print(f"{len(bad)} unreadable file(s)")
display(bad)

# %% [markdown]
# ## Test set

# %%
test_files = report.list_test_images(ch)
print(f"{len(test_files)} test images in {ch.test_dir} "
      f"({test_files[0].name if test_files else '-'} ... "
      f"{test_files[-1].name if test_files else '-'})")
report.show(report.plot_image_grid([(p, p.name) for p in test_files[:20]], cols=10),
                   output_dir, "test_samples")
