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
# Loads the trained model, votes over augmented views of every test image, lets the
# zero-shot step pick the classes that have no training images, and writes
# `output_dir/submission.csv`. On Kaggle the model comes from the train kernel's output,
# attached as an input (`make push-kernel NB=infer` attaches `<user>/pixelplay-train`).
# With an answer key (the demo data has one) it also prints seen / unseen / overall accuracy.

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
input_root = "/kaggle/input"  # data, and the train kernel's output with model.pt
output_dir = "/kaggle/working"  # submission.csv, predict_summary.json, figures
model_path = ""  # empty: output_dir/model.pt, else the newest model.pt below input_root
# None: the Config default (tta_votes 7, vote hard, zero_shot auto, zs_gamma auto)
tta_votes = None
vote = None
zero_shot = None
zs_gamma = None
batch_size = None
num_workers = None
devices = None
amp = None
seed = None
answers = ""  # an answer key (image_id,class); empty: answer_key.csv beside the data, if any
n_show = 24  # test images shown with their predicted labels

# %%
import json
from pathlib import Path

from pixelplay_lib import report
from pixelplay_lib.config import make_config
from pixelplay_lib.data import load_challenge
from pixelplay_lib.predict import predict
from pixelplay_lib.score import score_submission

model = report.find_model(model_path, output_dir, input_root)
print(f"model: {model}")
cfg = make_config(
    data_root=data_root, input_root=input_root, output_dir=output_dir, model_path=str(model),
    tta_votes=tta_votes, vote=vote, zero_shot=zero_shot, zs_gamma=zs_gamma,
    batch_size=batch_size, num_workers=num_workers, devices=devices, amp=amp, seed=seed)

# %% [markdown]
# ## Predict

# %%
frame = predict(cfg)
ch = load_challenge(cfg.data_root, cfg.input_root)
unseen = [ch.classes[i] for i in ch.unseen]
print(json.loads((Path(cfg.output_dir) / "predict_summary.json").read_text()))
frame.head()

# %% [markdown]
# ## Some test images and their predicted labels (* = a class without training images)

# %%
items = report.prediction_items(frame, ch.test_dir, unseen, n_show, cfg.seed)
report.show(report.plot_image_grid(items, cols=8), cfg.output_dir, "test_predictions")

# %% [markdown]
# ## Class distribution of the predictions
# About one test image in five belongs to an unseen class in the real test set.

# %%
counts = report.prediction_counts(frame, ch.classes, unseen)
print(report.prediction_summary(counts))
report.show(report.plot_class_counts(counts, "predicted test images per class"),
            cfg.output_dir, "prediction_counts")

# %% [markdown]
# ## Accuracy against an answer key (when there is one)

# %%
key = answers or report.find_answers(ch.root)
if key:
    scores = score_submission(Path(cfg.output_dir) / "submission.csv", key, str(ch.root))
    print(f"answer key {key}: {json.dumps(scores)}")
    per_class = report.per_class_test_accuracy(frame, key, unseen)
    report.show(report.plot_per_class_accuracy(per_class, "test accuracy per true class"),
                cfg.output_dir, "test_per_class")
else:
    print("no answer key (the real test labels are hidden): submit submission.csv to score")
