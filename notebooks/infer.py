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
# # Pixel Play'25: predict the test set
#
# Loads the trained run, lets every expert score every test image (the network votes over
# augmented views), chooses the fusion's weights and offset on the test images themselves,
# and writes `output_dir/<name>.csv` with its files beside it (`.summary.json`,
# `.fusion.json`, `.special.csv`, `.check.json`). On Kaggle the model comes from the train
# kernel's output,
# attached as an input (`make push-kernel NB=infer` attaches `<user>/pixelplay-train`).
# With an answer key (the demo data has one) it also prints seen / unseen / overall accuracy.

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
input_root = "/kaggle/input"  # data, and the train kernel's output with model.pt
output_dir = "/kaggle/working"  # <name>.csv and its files beside it, figures
model_path = ""  # empty: output_dir/model.pt, else the newest model.pt below input_root
answers = ""  # an answer key (image_id,class); empty: answer_key.csv beside the data, if any
n_show = 24  # test images shown with their predicted labels
# Every Config field (pixelplay_lib/config.py; tests/test_notebooks.py checks none is missing).
# None: the Config default (tta_votes 7, vote hard, zero_shot auto, zs_gamma auto). The
# recipe fields (arch, image_size, ...) are read from the trained model, not from here.
cache_dir = None
arch = None
weights = None
trainable = None
image_size = None
crop_scale_min = None
rotation = None
cache = None
fast_augment = None
batch_size = None
val_fraction = None
epochs = None
lr = None
momentum = None
weight_decay = None
milestones = None
lr_gamma = None
seed = None
num_workers = None
amp = None
channels_last = None
devices = None
resume = None
checkpoint_every_minutes = None
checkpoint_every_steps = None
time_limit = None
experts = None
vl_model = None
vl_batch_size = None
vl_flip = None
prompts = None
synonyms = None
transductive = None
tta_votes = None
vote = None
zero_shot = None
zs_gamma = None
zs_folds = None
attr_loss = None
loss_balance = None
name = None  # the submission's file stem (default submission): variants never overwrite
overwrite = None
_declared = set(dir())  # the names above: a papermill parameter not among them stops the run

# %%
import pixelplay_lib.config  # (binds no new name: the check below sees only parameters)

pixelplay_lib.config.check_parameters(globals(), _declared)

import json
from pathlib import Path

import pixelplay_lib.preflight
from pixelplay_lib import analysis, plots
from pixelplay_lib.data import load_challenge
from pixelplay_lib.locate import find_model
from pixelplay_lib.predict import predict
from pixelplay_lib.score import score_submission

model = find_model(model_path, output_dir, input_root)
print(f"model: {model}")
cfg = pixelplay_lib.config.notebook_config(globals(), _declared, model_path=str(model))
# Every cheap check at once (data, the run's experts and models, output folder, GPU): a
# mistake stops here in seconds, all problems in one message, before any real work.
pixelplay_lib.preflight.check(cfg, "predict")

# %% [markdown]
# ## Predict

# %%
frame = predict(cfg)
ch = load_challenge(cfg.data_root, cfg.input_root)
unseen = [ch.classes[i] for i in ch.unseen]
summary = json.loads((Path(cfg.output_dir) / f"{cfg.name}.summary.json").read_text())
print(json.dumps({k: v for k, v in summary.items() if k != "special_package"}, indent=1))
print(f"sanity: {summary['predicted_unseen_share']:.1%} of the test images predicted as "
      "classes without training images (estimated share of such images: "
      f"{summary.get('estimate', {}).get('unseen_share', float('nan')):.1%})")
frame.head()

# %% [markdown]
# ## The fusion as chosen on the test pool
# The unseen share of the test images is estimated (best-bin mixture estimation against
# the held-out images of seen classes); every candidate rule (each expert alone, text at
# gamma 0 as the first place did, the fusion) gets an estimated accuracy, and the fusion is
# used only when it beats the best single rule beyond the noise (README, "Accuracy").

# %%
fusion_report = analysis.read_fusion(cfg.output_dir, cfg.name)
test_table = analysis.test_pool_table(fusion_report) if fusion_report else None
if test_table is not None:
    print(test_table.round(3).to_string())
    print(analysis.fusion_weights(fusion_report))
    plots.show(plots.plot_fusion(fusion_report, analysis.fusion_table(fusion_report)),
               cfg.output_dir, "fusion_test_pool")
else:
    print("no test-pool choice (votes only, zs_gamma set, or too few test images)")

# %% [markdown]
# ## Some test images and their predicted labels (* = a class without training images)

# %%
items = analysis.prediction_items(frame, ch.test_files(), unseen, n_show, cfg.seed)
plots.show(plots.plot_image_grid(items, cols=8), cfg.output_dir, "test_predictions")

# %% [markdown]
# ## Class distribution of the predictions
# About one test image in five belongs to an unseen class in the real test set.

# %%
counts = analysis.prediction_counts(frame, ch.classes, unseen)
print(analysis.prediction_summary(counts))
plots.show(plots.plot_class_counts(counts, "predicted test images per class"),
            cfg.output_dir, "prediction_counts")

# %% [markdown]
# ## Special-Package: every expert and the fusion on real labelled photos

# %%
special = analysis.read_special(cfg.output_dir, cfg.name)
if special is not None:
    print(special.round(3).to_string())
    plots.show(plots.plot_special(special), cfg.output_dir, "special_package")
else:
    print("no Special-Package scores (no package found, or predict ran without a fusion)")

# %% [markdown]
# ## Accuracy against an answer key (when there is one)

# %%
key = answers or analysis.find_answers(ch.root)
if key:
    scores = score_submission(Path(cfg.output_dir) / f"{cfg.name}.csv", key, str(ch.root))
    print(f"answer key {key}: {json.dumps(scores)}")
    per_class = analysis.per_class_test_accuracy(frame, key, unseen)
    plots.show(plots.plot_per_class_accuracy(per_class, "test accuracy per true class"),
                cfg.output_dir, "test_per_class")
else:
    print(f"no answer key (the real test labels are hidden): submit {cfg.name}.csv to score")
