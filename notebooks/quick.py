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
# # Pixel Play'25: the quick recipe, one kernel
#
# The first place's idea made stronger, in one short kernel and no network training: an
# image-text model (SigLIP 2 So400m by default; `-p vl_model openai/clip-vit-large-patch14`
# for the winner's CLIP) scores every class zero-shot, a linear probe on its image
# embeddings learns the 40 seen classes, the pretrained ImageNet head adds its opinion, and
# the fusion's weights and offset are chosen on the test images themselves, with an
# estimate of the accuracy. Writes `output_dir/<name>.csv` and every figure beside it;
# `make push-kernel NB=quick` runs it on Kaggle (`P='-p ...'` changes any parameter).

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
input_root = "/kaggle/input"  # the data and any attached weights (internet off)
output_dir = "/kaggle/working"  # <name>.csv, its files, arrays/ (for `fuse`), figures
experts = "imagenet,text,probe"  # no resnet / attributes: nothing is fine-tuned
vl_model = "google/siglip2-so400m-patch16-256"  # hub id, or an attached save_pretrained folder
transductive = "off"  # on / auto: the soft k-means term on the test images (README)
name = "submission"  # the submission's file stem
overwrite = False  # replace an existing <name>.csv
answers = ""  # an answer key (image_id,class); empty: answer_key.csv beside the data, if any
model_path = None  # (predict reads the run this notebook fits, in output_dir)
# Every other Config field (pixelplay_lib/config.py); None: the Config default.
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
vl_batch_size = None
vl_flip = None
prompts = None
synonyms = None
tta_votes = None
vote = None
zero_shot = None
zs_gamma = None
zs_folds = None
attr_loss = None
loss_balance = None
_declared = set(dir())  # the names above: a papermill parameter not among them stops the run

# %%
import pixelplay_lib.config  # (binds no new name: the check below sees only parameters)

pixelplay_lib.config.check_parameters(globals(), _declared)
cfg = pixelplay_lib.config.notebook_config(globals(), _declared)

import json
from pathlib import Path

import pixelplay_lib.preflight
from pixelplay_lib import analysis, plots
from pixelplay_lib.data import load_challenge
from pixelplay_lib.predict import predict
from pixelplay_lib.score import score_submission
from pixelplay_lib.train import launch_train

print(json.dumps(cfg.to_dict(), indent=1))
# Every cheap check at once (experts, data, the image-text model, ImageNet weights, output
# folder, GPU): a mistake stops here in seconds, before any image is embedded.
pixelplay_lib.preflight.check(cfg, "train")

# %% [markdown]
# ## Fit: embed the training images, the protocol's provisional fusion

# %%
summary = launch_train(cfg)  # no network to train: the experts' inputs and the protocol
print(json.dumps(summary.get("fusion", {}), indent=1))

# %% [markdown]
# ## Predict: embed the test images, choose the fusion on them, write the submission

# %%
frame = predict(cfg)
ch = load_challenge(cfg.data_root, cfg.input_root)
unseen = [ch.classes[i] for i in ch.unseen]
result = json.loads((Path(cfg.output_dir) / f"{cfg.name}.summary.json").read_text())
print(json.dumps({k: v for k, v in result.items() if k != "special_package"}, indent=1))

# %% [markdown]
# ## The fusion as chosen on the test pool
# Estimated accuracy of each candidate rule (each expert alone, text at gamma 0 as the
# first place did, the fusion) and of the chosen one with its 90% interval.

# %%
fusion_report = analysis.read_fusion(cfg.output_dir, cfg.name)
test_table = analysis.test_pool_table(fusion_report) if fusion_report else None
if test_table is not None:
    print(test_table.round(3).to_string())
    print(analysis.fusion_weights(fusion_report))
    plots.show(plots.plot_fusion(fusion_report, analysis.fusion_table(fusion_report)),
               cfg.output_dir, "fusion_test_pool")
else:
    print("no test-pool choice: too few test images or no class without training images")

# %% [markdown]
# ## Special-Package: every expert and this submission's rule on labelled photos

# %%
special = analysis.read_special(cfg.output_dir, cfg.name)
if special is not None:
    print(special.round(3).to_string())
    plots.show(plots.plot_special(special), cfg.output_dir, "special_package")
else:
    print("no Special-Package scores (no package found: see the log above)")

# %% [markdown]
# ## Predicted classes, and the accuracy against an answer key when there is one

# %%
counts = analysis.prediction_counts(frame, ch.classes, unseen)
print(analysis.prediction_summary(counts))
plots.show(plots.plot_class_counts(counts, "predicted test images per class"),
           cfg.output_dir, "prediction_counts")
key = answers or analysis.find_answers(ch.root)
if key:
    scores = score_submission(Path(cfg.output_dir) / f"{cfg.name}.csv", key, str(ch.root))
    print(f"answer key {key}: {json.dumps(scores)}")
else:
    print(f"no answer key (the real test labels are hidden): submit {cfg.name}.csv to score")
