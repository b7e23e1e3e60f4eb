"""The notebooks: every .py / .ipynb pair agrees, each has one `parameters` cell of Config
field names, and explore -> train -> infer run end to end under papermill on CPU against a
small demo dataset (about a minute in all)."""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jupytext
import pandas as pd
import pytest
from conftest import HANG
from PIL import Image

from pixelplay_lib.config import Config
from pixelplay_lib.demo import write_demo_dataset

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
NAMES = ("explore", "train", "infer", "quick")
# Parameters that are not Config fields (each notebook's own knobs).
EXTRA_PARAMETERS = {"preset", "answers", "n_show", "samples_per_class"}
# The notebooks that build a Config take every field as a parameter.
CONFIG_NOTEBOOKS = ("train", "infer", "quick")
CONFIG_FIELDS = {f.name for f in dataclasses.fields(Config)}


def load_sync_tool():
    """tools/sync_notebooks.py as a module: its pair checks are the ones `make sync` runs."""
    spec = importlib.util.spec_from_file_location("sync_notebooks",
                                                  REPO / "tools" / "sync_notebooks.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cells(path: Path) -> list[tuple[str, str, list[str]]]:
    nb = jupytext.read(path)
    return [(c.cell_type, c.source.strip(), sorted(c.metadata.get("tags", [])))
            for c in nb.cells]


def parameters_cell(path: Path) -> str:
    tagged = [c for c in jupytext.read(path).cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: {len(tagged)} cells tagged parameters (want one)"
    return tagged[0].source


@pytest.mark.parametrize("name", NAMES)
def test_pair_in_sync(name: str) -> None:
    py, ipynb = NOTEBOOKS / f"{name}.py", NOTEBOOKS / f"{name}.ipynb"
    assert py.is_file() and ipynb.is_file(), f"missing half of the {name} pair: run make sync"
    tool = load_sync_tool()
    problem = tool.pair_problem(py)  # what `make sync` would refuse, with its fix
    assert problem is None, problem
    assert tool.declared_pairing(ipynb) is None, f"{ipynb.name} declares a pairing: make sync"
    assert cells(py) == cells(ipynb), f"{py.name} and {ipynb.name} differ: run `make sync`"
    meta = json.loads(ipynb.read_text())["metadata"]
    assert meta["kernelspec"]["name"] == "python3"  # papermill (and Kaggle) need a kernel
    outputs = [c for c in json.loads(ipynb.read_text())["cells"] if c.get("outputs")]
    assert not outputs, f"{ipynb.name} carries outputs: commit it cleared (make sync does)"


@pytest.mark.parametrize("name", NAMES)
def test_parameters_are_config_fields(name: str) -> None:
    tree = ast.parse(parameters_cell(NOTEBOOKS / f"{name}.py"))
    # `_declared` (the names at the cell's end, for the unknown-parameter check) is no
    # parameter; it must be the cell's last statement, after every parameter.
    assert ast.unparse(tree.body[-1]) == "_declared = set(dir())", f"{name}: last line"
    body = tree.body[:-1]
    names = {t.id for node in body if isinstance(node, ast.Assign) for t in node.targets
             if isinstance(t, ast.Name)}
    assert {"data_root", "output_dir"} <= names
    unknown = names - CONFIG_FIELDS - EXTRA_PARAMETERS
    assert not unknown, f"{name}: parameters that are no Config field: {sorted(unknown)}"
    if name in CONFIG_NOTEBOOKS:
        missing = CONFIG_FIELDS - names
        assert not missing, (f"{name}.py: add `{' = None`, `'.join(sorted(missing))} = None` "
                             "to its parameters cell (every Config field is a parameter)")
    # Kaggle-ready defaults: the notebooks run there unchanged.
    values = {t.id: ast.literal_eval(node.value) for node in body
              if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)}
    assert values["output_dir"] == "/kaggle/working" and values["data_root"] == ""


# --------------------------------------------------------------------------- helpers
def test_config_fixes_papermill_type_guesses() -> None:
    from pixelplay_lib.config import PRESETS, make_config

    # What `-p devices 1 -p milestones 16 -p zs_gamma 0.3 -p cache false -p lr 1` passes.
    cfg = make_config("demo", devices=1, milestones=16, zs_gamma=0.3, cache="false", lr=1,
                      epochs=None)
    assert (cfg.devices, cfg.milestones, cfg.zs_gamma, cfg.cache) == ("1", (16,), "0.3", False)
    assert isinstance(cfg.lr, float)
    assert cfg.epochs == PRESETS["demo"]["epochs"]  # None = the preset's value


# --------------------------------------------------------------------------- execution
@pytest.fixture(scope="module")
def nb_demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("nb-demo")
    write_demo_dataset(out, train_per_class=8, n_test=40, width=(40, 64))
    return out


def execute(notebook: str, out_dir: Path, **parameters) -> dict:
    import papermill

    # The kernelspec "python3" of the venv runs `python`, which jupyter_client maps to
    # sys.executable: the notebook sees the same interpreter (and package) as the test.
    path = out_dir / f"{notebook}.ipynb"
    papermill.execute_notebook(str(NOTEBOOKS / f"{notebook}.ipynb"), str(path),
                               parameters=parameters, kernel_name="python3",
                               cwd=str(NOTEBOOKS), progress_bar=False)
    return json.loads(path.read_text())


def assert_pngs(folder: Path, names: list[str]) -> None:
    for name in names:
        path = folder / "figures" / f"{name}.png"
        assert path.is_file() and path.stat().st_size > 0, f"missing figure {path}"
        with Image.open(path) as img:
            assert img.format == "PNG" and min(img.size) > 50


def test_notebooks_run_end_to_end(nb_demo: Path, tmp_path: Path) -> None:
    """explore -> train (ResNet + attributes + a tiny local image-text model, fused) ->
    infer (the model found below input_root, as on Kaggle), with every figure."""
    from tiny_models import save_tiny

    data_root = str(nb_demo)
    inputs = tmp_path / "inputs"  # plays /kaggle/input: the train "kernel output" lands here
    train_dir = inputs / "pixelplay-train"
    tiny = save_tiny(tmp_path / "tiny-clip", "clip")
    common = dict(data_root=data_root, num_workers=0, tta_votes=2)

    # explore
    explore_dir = tmp_path / "explore"
    execute("explore", tmp_path, output_dir=str(explore_dir), input_root=str(inputs),
            data_root=data_root, num_workers=0)
    assert_pngs(explore_dir, ["class_counts", "samples", "image_sizes", "test_samples"])

    # train
    nb = execute("train", tmp_path, preset="demo", output_dir=str(train_dir),
                 input_root=str(inputs), image_size=32, epochs=1, vl_model=str(tiny), **common)
    text = json.dumps(nb["cells"])
    assert "validation accuracy" in text
    rows = [json.loads(line) for line in (train_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["epoch"] == 1 and 0 <= rows[0]["val_acc"] <= 1
    config = json.loads((train_dir / "config.json").read_text())
    assert config["image_size"] == 32 and config["arch"] == "resnet18"  # preset + override
    assert (train_dir / "model.pt").is_file()
    fused = json.loads((train_dir / "fusion.json").read_text())["protocol"]
    assert set(fused["experts"]) == {"resnet", "attributes", "text", "probe"}
    assert {"u", "s", "H", "acc", "gamma"} <= set(fused["fusion"]) and fused["curve"]
    assert "fused" in text and "probe alone" in text  # the protocol's table was printed
    assert "fold 1: " in text  # folds by class name
    assert_pngs(train_dir, ["curves", "confusion", "val_per_class", "fusion",
                            "special_package"])
    per_class = pd.read_csv(train_dir / "val_per_class.csv")
    assert len(per_class) == 40 and per_class["accuracy"].between(0, 1).all()

    # infer, as on Kaggle: its own output folder, the model found below input_root
    infer_dir = tmp_path / "infer"
    nb = execute("infer", tmp_path, output_dir=str(infer_dir), input_root=str(inputs),
                 **common)
    sub = pd.read_csv(infer_dir / "submission.csv", dtype=str)
    test_dir = nb_demo / "vlg-dataset" / "vlg-dataset" / "test"
    test_files = sorted(p.name for p in test_dir.iterdir()
                        if p.suffix == ".jpg" and not p.name.startswith("."))
    assert list(sub.columns) == ["image_id", "class"]
    assert sorted(sub["image_id"]) == test_files
    summary = json.loads((infer_dir / "submission.summary.json").read_text())
    assert summary["tta_votes"] == 2 and summary["fusion"] is True
    assert summary["special_package"]["overall"]["images"] == 10  # the demo's package
    assert_pngs(infer_dir, ["test_predictions", "prediction_counts", "test_per_class",
                            "special_package"])
    assert (infer_dir / "submission.special.csv").is_file()
    text = json.dumps(nb["cells"])
    assert "seen_accuracy" in text and "unseen_accuracy" in text  # answer key found
    assert "predicted as classes without training images" in text  # the sanity line


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory) -> Path:
    """Enough test images for the test-pool choice (testpool.MIN_TEST)."""
    out = tmp_path_factory.mktemp("quick-demo")
    write_demo_dataset(out, train_per_class=8, n_test=520, width=(40, 48), seed=3)
    return out


def test_quick_notebook_writes_a_complete_submission(quick_demo: Path, tmp_path: Path) -> None:
    """The one-kernel recipe with a tiny local image-text model: no network trained, the
    fusion chosen on the test pool, a complete submission and the files beside it."""
    from tiny_models import save_tiny

    tiny = save_tiny(tmp_path / "tiny-clip", "clip")
    out = tmp_path / "quick"
    nb_demo = quick_demo
    nb = execute("quick", tmp_path, data_root=str(nb_demo), output_dir=str(out),
                 input_root=str(tmp_path / "none"), experts="text,probe", vl_model=str(tiny),
                 num_workers=0, name="quick")
    sub = pd.read_csv(out / "quick.csv", dtype=str)
    test_dir = nb_demo / "vlg-dataset" / "vlg-dataset" / "test"
    assert sorted(sub["image_id"]) == sorted(p.name for p in test_dir.iterdir()
                                             if p.suffix == ".jpg" and not p.name.startswith("."))
    assert not (out / "metrics.jsonl").exists()  # nothing was fine-tuned
    for suffix in (".summary.json", ".fusion.json", ".special.csv", ".check.json"):
        assert (out / f"quick{suffix}").is_file(), suffix
    assert (out / "arrays" / "test.npz").is_file()  # `fuse` can refit from the output
    text = json.dumps(nb["cells"])
    assert "text, gamma 0" in text  # the test pool's candidate table was printed
    assert_pngs(out, ["fusion_test_pool", "special_package", "prediction_counts"])


def test_notebook_failure_names_the_cell(nb_demo: Path, tmp_path: Path) -> None:
    """A bad parameter stops the run with the library's message (no silent half-run)."""
    import papermill

    with pytest.raises(papermill.PapermillExecutionError, match="unknown preset"):
        execute("train", tmp_path, preset="nope", data_root=str(nb_demo),
                output_dir=str(tmp_path / "out"))


def test_kernel_is_this_interpreter() -> None:
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec("python3")
    assert spec.argv[0] in ("python", "python3", sys.executable), spec.argv


# --------------------------------------------------------------------------- parameters
def test_notebook_config_takes_declared_fields_and_refuses_unknown_names() -> None:
    from pixelplay_lib.config import check_parameters, notebook_config

    declared = {"preset", "lr_gamma", "milestones", "epochs", "answers", "sys"}
    namespace = {"preset": "demo", "lr_gamma": 0.5, "milestones": "[3, 4]", "epochs": None,
                 "answers": "", "sys": sys, "_hidden": 1}
    check_parameters(namespace, declared)  # nothing undeclared
    cfg = notebook_config(namespace, declared, epochs=2)
    assert (cfg.lr_gamma, cfg.milestones, cfg.epochs, cfg.arch) == (0.5, (3, 4), 2, "resnet18")
    for typo in ("lr_gamm", "milestone"):
        with pytest.raises(ValueError, match=f"unknown notebook parameter.*{typo}") as info:
            check_parameters({**namespace, typo: 1}, declared)
        assert "lr_gamma" in str(info.value) and "sys" not in str(info.value)


def test_papermill_unknown_parameter_stops_the_notebook(tmp_path: Path) -> None:
    import papermill

    for name, typo in (("train", "lr_gamm"), ("infer", "tta_vote")):
        with pytest.raises(papermill.PapermillExecutionError, match=typo):
            execute(name, tmp_path, **{typo: 0.5, "data_root": str(tmp_path / "none")})


def test_papermill_values_reach_the_config(tmp_path: Path) -> None:
    """`-p milestones "[16, 21]"` and the fields the train notebook used to lack (lr_gamma,
    zs_folds) reach the Config; the run then stops on the missing data, after printing it."""
    import papermill

    with pytest.raises(papermill.PapermillExecutionError, match="does not exist"):
        execute("train", tmp_path, milestones="[16, 21]", lr_gamma=0.5, zs_folds=3,
                data_root=str(tmp_path / "none"), output_dir=str(tmp_path / "out"))
    cells_out = json.loads((tmp_path / "train.ipynb").read_text())["cells"]
    texts = ["".join(o.get("text", "")) for c in cells_out for o in c.get("outputs", [])]
    printed = json.loads(next(t for t in texts if '"milestones"' in t))  # the config cell's
    assert (printed["milestones"], printed["lr_gamma"], printed["zs_folds"]) == ([16, 21], 0.5,
                                                                                3)


# --------------------------------------------------------------------------- sync
def sync(*paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "tools" / "sync_notebooks.py"),
                           *map(str, paths)], capture_output=True, text=True, timeout=HANG)


@pytest.fixture
def nb_copy(tmp_path: Path) -> Path:
    """A copy of notebooks/ whose .ipynb files are older than their .py."""
    folder = tmp_path / "notebooks"
    shutil.copytree(NOTEBOOKS, folder)
    for name in NAMES:
        os.utime(folder / f"{name}.ipynb", (1e9, 1e9))
    return folder


def test_sync_writes_the_ipynb_from_the_py_only(nb_copy: Path) -> None:
    py = nb_copy / "train.py"
    assert sync(*(nb_copy / f"{n}.py" for n in NAMES)).returncode == 0  # pairs up to date
    py.write_text(py.read_text() + "\n# %%\nprint('edited in the py')\n")
    result = sync(*(nb_copy / f"{n}.py" for n in NAMES))
    assert result.returncode == 0, result.stderr
    assert "print('edited in the py')" in (nb_copy / "train.ipynb").read_text()
    assert cells(nb_copy / "train.ipynb") == cells(py)
    assert "wrote" not in result.stdout.replace(f"wrote {nb_copy / 'train.ipynb'}", "")


@pytest.mark.parametrize("name, ipynb_time", [("train", "newer"), ("infer", "older")])
def test_sync_stops_when_the_ipynb_has_its_own_edits(nb_copy: Path, name: str,
                                                     ipynb_time: str) -> None:
    """An .ipynb edited after `make sync` wrote it is never overwritten, whether it is newer
    than the edited .py or older; the message's fix (`rm` it) then works."""
    py, ipynb = nb_copy / f"{name}.py", nb_copy / f"{name}.ipynb"
    assert sync(py).returncode == 0  # written from the .py, with its cells' digest
    nb = jupytext.read(ipynb)
    nb.cells[-1].source += "\nprint('autosaved ipynb edit')"
    jupytext.write(nb, ipynb)
    py.write_text(py.read_text() + "\n# %%\nprint('py edit')\n")
    os.utime(py, (2e9, 2e9))
    seconds = 2e9 + (10 if ipynb_time == "newer" else -10)
    os.utime(ipynb, (seconds, seconds))
    before, ipynb_before = py.read_bytes(), ipynb.read_bytes()
    result = sync(py)
    assert result.returncode == 2
    assert f"{ipynb} has edits of its own" in result.stderr and f"rm {ipynb}" in result.stderr
    assert f"jupytext --to py:percent {ipynb}" in result.stderr
    assert py.read_bytes() == before  # the edit in the .py is never lost
    assert ipynb.read_bytes() == ipynb_before  # nor the one in the .ipynb
    ipynb.unlink()  # the message's "keep the .py"
    assert sync(py).returncode == 0 and "print('py edit')" in ipynb.read_text()


def test_make_sync_uses_the_py_as_the_source(nb_copy: Path) -> None:
    ipynb = nb_copy / "explore.ipynb"
    nb = jupytext.read(ipynb)
    nb.cells[-1].source += "\nprint('ipynb edit')"
    jupytext.write(nb, ipynb)
    py_before = (nb_copy / "explore.py").read_bytes()
    # -o: never rebuild the venv from inside a test
    result = subprocess.run(["make", "-s", "-o", ".venv/.installed-stamp", "sync",
                             f"NOTEBOOK_DIR={nb_copy}"], cwd=REPO, capture_output=True,
                            text=True, timeout=HANG)
    assert result.returncode != 0 and "explore.ipynb has edits of its own" in result.stderr
    assert (nb_copy / "explore.py").read_bytes() == py_before


# --------------------------------------------------------------------------- jupytext itself
def jupytext_sync(folder: Path, path: Path, global_config: Path) -> subprocess.CompletedProcess:
    """The real `jupytext --sync` as a user would run it in `folder`, with a global
    Jupytext configuration (XDG_CONFIG_HOME) that pairs every notebook: the worst case."""
    env = {**os.environ, "XDG_CONFIG_HOME": str(global_config)}
    return subprocess.run([sys.executable, "-m", "jupytext", "--sync", str(path)], cwd=folder,
                          capture_output=True, text=True, timeout=HANG, env=env)


def py_edit_then_ipynb(nb_copy: Path, name: str, how: str) -> tuple[Path, Path]:
    """Edit the .py, then make its .ipynb newer: touched only (Jupyter autosave, git
    checkout) or with an edit of its own."""
    py, ipynb = nb_copy / f"{name}.py", nb_copy / f"{name}.ipynb"
    py.write_text(py.read_text() + "\n# %%\nprint('py edit')\n")
    os.utime(py, (2e9, 2e9))
    if how == "own edits":
        nb = jupytext.read(ipynb)
        nb.cells[-1].source += "\nprint('ipynb edit')"
        jupytext.write(nb, ipynb)
    os.utime(ipynb, (2e9 + 10, 2e9 + 10))
    return py, ipynb


@pytest.mark.parametrize("how", ["touched", "own edits"])
def test_jupytext_sync_cannot_lose_py_edits(nb_copy: Path, tmp_path: Path, how: str) -> None:
    """With the repository's jupytext.toml, the real `jupytext --sync` leaves an edited .py
    alone when the .ipynb is newer (with a pairing it rewrites the .py from the .ipynb:
    jupytext issues #63, #254); `make sync`'s tool then writes the .ipynb from the .py, or
    stops when the .ipynb has edits of its own."""
    shutil.copy(REPO / "jupytext.toml", tmp_path / "jupytext.toml")  # nb_copy's parent
    global_config = tmp_path / "xdg"
    (global_config / "jupytext").mkdir(parents=True)
    (global_config / "jupytext" / "jupytext.toml").write_text('formats = "ipynb,py:percent"\n')
    assert sync(nb_copy / "infer.py").returncode == 0  # as after any `make sync`
    py, ipynb = py_edit_then_ipynb(nb_copy, "infer", how)
    before = py.read_bytes()
    for target in (py, ipynb):
        result = jupytext_sync(tmp_path, target, global_config)
        assert result.returncode == 0 and "not a paired notebook" in result.stderr, result.stderr
        assert py.read_bytes() == before
    result = sync(py)
    assert py.read_bytes() == before
    if how == "touched":
        assert result.returncode == 0 and "print('py edit')" in ipynb.read_text()
    else:
        assert result.returncode == 2 and "has edits of its own" in result.stderr
    # The hazard the configuration avoids: the same pair, paired, loses the .py edit.
    paired = 'formats = "notebooks///ipynb,notebooks///py:percent"\n'  # the old jupytext.toml
    (tmp_path / "jupytext.toml").write_text(paired)
    py_edit_then_ipynb(nb_copy, "explore", how)
    result = jupytext_sync(tmp_path, nb_copy / "explore.py", global_config)
    assert result.returncode == 0 and "py edit" not in (nb_copy / "explore.py").read_text()


@pytest.mark.parametrize("name", ["explore", "train"])
def test_sync_refuses_a_pairing_declared_in_the_py(nb_copy: Path, name: str) -> None:
    py = nb_copy / f"{name}.py"
    header = "#   jupytext:\n"
    py.write_text(py.read_text().replace(header, header + "#     formats: ipynb,py:percent\n", 1))
    before = (nb_copy / f"{name}.ipynb").read_bytes()
    result = sync(py)
    assert result.returncode == 2
    assert f"{py} declares a Jupytext pairing" in result.stderr and "formats:" in result.stderr
    assert (nb_copy / f"{name}.ipynb").read_bytes() == before  # nothing written
