"""The Kaggle make targets, run offline with the real `kaggle` CLI against a fake API.

Each test runs ``make -C <repo> <target>`` with HOME, KAGGLE_CONFIG_DIR and TMPDIR in a
temporary directory, fake credentials, and the CLI's requests sent (through
``HTTP_PROXY``) to tests/kaggle_server.py on 127.0.0.1. Nothing leaves the machine,
and the user's real ~/.kaggle is never read. Whatever is refused locally (bad P=, a
submission with wrong rows, a lib dataset that is not ready) must send no request, or
none after the status check.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import HANG, load_kaggle_ops  # noqa: E402
from kaggle_server import (  # noqa: E402
    DATASET_STATUS,
    Answer,
    FakeKaggle,
    dataset_status,
    new_dataset_processed,
    new_version_failed,
    not_found,
)

REPO = Path(__file__).resolve().parents[1]
KAGGLE_EXE = Path(sys.executable).parent / "kaggle"
USER = "tester"
KEY = "s3cr3t-api-key-0123456789"
COMPETITION = "vlg-recruitment-24-challenge"
SAVE = "kernels.KernelsApiService/SaveKernel"
STATUS = "kernels.KernelsApiService/GetKernelSessionStatus"
UPLOAD = "competitions.CompetitionApiService/StartSubmissionUpload"
CREATE_SUBMISSION = "competitions.CompetitionApiService/CreateSubmission"
# The fake notebooks' parameters (their parameters cell, as in notebooks/*.py).
PARAMETERS = {"preset": '""', "data_root": '""', "epochs": "None", "lr_gamma": "None",
              "experts": "None", "vl_model": "None"}

pytestmark = [
    pytest.mark.skipif(not KAGGLE_EXE.exists(), reason="kaggle CLI not installed in this venv"),
    pytest.mark.skipif(shutil.which("make") is None, reason="make not installed"),
]


ops = load_kaggle_ops()


def notebook(name: str) -> dict:
    """A small notebook with outputs, like one saved after a local run."""
    return {
        "cells": [
            {"cell_type": "markdown", "metadata": {}, "source": [f"# {name}"]},
            {
                "cell_type": "code",
                "execution_count": 7,
                "metadata": {"tags": ["parameters"]},
                "outputs": [{"output_type": "stream", "name": "stdout", "text": ["old\n"]}],
                "source": ["import sys\n", f"print('{name}')\n",
                           *[f"{k} = {v}\n" for k, v in PARAMETERS.items()],
                           "_declared = set(dir())"],
            },
        ],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                    "language": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }


class Sandbox:
    def __init__(self, root: Path, fake: FakeKaggle) -> None:
        self.root = root
        self.fake = fake
        self.home = root / "home"
        self.config = root / "kaggle-config"
        self.notebooks = root / "notebooks"
        self.build = root / "build"
        for d in (self.home, self.config, self.notebooks, root / "tmp"):
            d.mkdir(parents=True)
        for name in ("train", "infer", "explore", "quick"):
            (self.notebooks / f"{name}.ipynb").write_text(json.dumps(notebook(name), indent=1))
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "HOME": str(self.home),
            "KAGGLE_CONFIG_DIR": str(self.config),
            "XDG_CONFIG_HOME": str(root / "xdg"),
            "TMPDIR": str(root / "tmp"),
            **fake.env(),
        }

    def write_kaggle_json(self, username: str = USER, key: str = KEY) -> None:
        path = self.config / "kaggle.json"
        path.write_text(json.dumps({"username": username, "key": key}))
        path.chmod(0o600)

    def make(self, target: str, *assignments: str, timeout: float = HANG,
             **env: str) -> subprocess.CompletedProcess:
        cmd = [
            "make", "--no-print-directory", "-C", str(REPO),
            "-o", ".venv/.installed-stamp",  # never (re)create the venv from a test
            f"PY={sys.executable}", f"KAGGLE={KAGGLE_EXE}",
            f"NOTEBOOKS_DIR={self.notebooks}", f"KAGGLE_BUILD={self.build}",
            target, *assignments,
        ]
        result = subprocess.run(cmd, env={**self.env, **env}, capture_output=True, text=True,
                                timeout=timeout, check=False)
        # Whatever happened, the key is never shown.
        assert KEY not in result.stdout + result.stderr
        return result


@pytest.fixture
def fake() -> Iterator[FakeKaggle]:
    with FakeKaggle() as server:
        yield server
    # Only the fake API was asked: no https tunnel, every request for http://localhost.
    assert not [r for r in server.requests if r.method == "CONNECT"], server.calls()
    assert all(r.headers.get("Host", "").startswith("localhost") for r in server.requests)


@pytest.fixture
def box(tmp_path: Path, fake: FakeKaggle) -> Sandbox:
    sandbox = Sandbox(tmp_path, fake)
    sandbox.write_kaggle_json()
    return sandbox


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def failed(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0, result.stdout + result.stderr
    return result.stdout + result.stderr


# --------------------------------------------------------------------------- push-kernel
def test_push_kernel_default_train(box: Sandbox, fake: FakeKaggle) -> None:
    out = ok(box.make("push-kernel")).stdout
    # is the lib dataset ready? is there a previous run to resume from? then push
    assert fake.calls() == [DATASET_STATUS, STATUS, SAVE]
    assert fake.one(DATASET_STATUS).json == {"ownerSlug": USER, "datasetSlug": "pixelplay-lib"}
    req = fake.one(SAVE)
    expected_auth = "Basic " + base64.b64encode(f"{USER}:{KEY}".encode()).decode()
    assert req.headers["Authorization"] == expected_auth
    body = req.json
    assert body["slug"] == f"{USER}/pixelplay-train"
    assert body["newTitle"] == "pixelplay-train"
    assert body["language"] == "python"
    assert body["kernelType"] == "notebook"
    assert body["enableGpu"] is True
    assert body["isPrivate"] is True
    assert body["enableInternet"] is True  # torchvision fetches the ImageNet weights
    assert body["machineShape"] == "NvidiaTeslaT4"  # the P100 has no kernels in Kaggle's torch
    assert "dockerImage" not in body and "dockerImagePinningType" not in body  # Kaggle's image
    assert body.get("modelDataSources", []) == []
    assert body["competitionDataSources"] == [COMPETITION]
    assert body["datasetDataSources"] == [f"{USER}/pixelplay-lib"]
    assert body["kernelDataSources"] == [f"{USER}/pixelplay-train"]  # resume from itself

    pushed = json.loads(body["text"])
    original = notebook("train")
    assert pushed["metadata"] == original["metadata"]  # no P=: nothing injected
    assert [c["cell_type"] for c in pushed["cells"]] == ["markdown", "code"]
    for got, want in zip(pushed["cells"], original["cells"], strict=True):
        assert got["source"] == "".join(want["source"])
    assert pushed["cells"][1]["outputs"] == []
    assert pushed["cells"][1]["execution_count"] is None

    assert "WARNING" not in out and "retired" not in out
    staged = box.build / "kernel-train"
    assert sorted(p.name for p in staged.iterdir()) == ["kernel-metadata.json", "train.ipynb"]
    meta = json.loads((staged / "kernel-metadata.json").read_text())
    assert meta["code_file"] == "train.ipynb" and meta["id"] == f"{USER}/pixelplay-train"


def test_push_kernel_infer_on_t4_with_extra_datasets(box: Sandbox, fake: FakeKaggle) -> None:
    out = ok(box.make("push-kernel", "NB=infer", "ACCELERATOR=NvidiaTeslaT4",
                      "DATASETS=someone/imagenet-weights other/clip-weights")).stdout
    assert fake.calls() == [DATASET_STATUS, SAVE]
    body = fake.one(SAVE).json
    assert body["slug"] == f"{USER}/pixelplay-infer"
    assert body["machineShape"] == "NvidiaTeslaT4"
    assert body["enableGpu"] is True
    assert body["kernelDataSources"] == [f"{USER}/pixelplay-train"]  # the trained model
    assert body["datasetDataSources"] == [
        f"{USER}/pixelplay-lib", "someone/imagenet-weights", "other/clip-weights"]
    assert body["competitionDataSources"] == [COMPETITION]
    assert "print('infer')" in json.loads(body["text"])["cells"][1]["source"]
    assert "retired" not in out


def test_push_kernel_p100_warns_why_and_still_asks_for_it(box: Sandbox, fake: FakeKaggle) -> None:
    out = ok(box.make("push-kernel", "NB=explore", "ACCELERATOR=NvidiaTeslaP100")).stdout
    assert fake.one(SAVE).json["machineShape"] == "NvidiaTeslaP100"  # the user's choice stands
    warning = next(line for line in out.splitlines() if line.startswith("WARNING:"))
    for why in ("sm_60", "no kernel image is available", "quota", "issue 1151",  # why
                "ACCELERATOR=NvidiaTeslaT4", "NvidiaL4", "DOCKER_IMAGE=", "PIN=original"):  # fix
        assert why in warning


def test_accelerator_warnings() -> None:
    for fine in ("NvidiaTeslaT4", "NvidiaL4", "NvidiaH100", ""):
        assert ops.accelerator_warning(fine) is None
    assert "issue 1151" in ops.accelerator_warning("nvidiateslap100")  # any case
    assert "CPU" in ops.accelerator_warning("TpuV5E8")  # pixelplay has no TPU path


def test_push_kernel_passes_image_pinning_and_models(box: Sandbox, fake: FakeKaggle) -> None:
    image = "gcr.io/kaggle-gpu-images/python:v160"
    models = ["owner1/clip/transformers/vit-b-32/1", "owner2/siglip/pytorch/base/3"]
    ok(box.make("push-kernel", "NB=infer", f"DOCKER_IMAGE={image}", "PIN=original",
                f"MODELS={' '.join(models)}"))
    body = fake.one(SAVE).json
    # What kaggle 2.2.5 sends (ApiSaveKernelRequest, kernels_push in kaggle_api_extended.py)
    assert body["dockerImage"] == image
    assert body["dockerImagePinningType"] == "original"
    assert body["modelDataSources"] == models
    assert body["enableInternet"] is True
    meta = json.loads((box.build / "kernel-infer" / "kernel-metadata.json").read_text())
    assert meta["docker_image"] == image and meta["docker_image_pinning_type"] == "original"
    assert meta["model_sources"] == models


@pytest.mark.parametrize("assignment, message", [
    ("PIN=newest", "PIN=original"),
    ("MODELS=owner/clip/transformers/vit-b-32", "owner/model/framework/variation/version"),
    ("MODELS=owner/clip/transformers/vit-b-32/latest", "version number"),
    ("DOCKER_IMAGE=gcr.io/a:1 gcr.io/b:2", "one registry/name:tag"),
])
def test_push_kernel_refuses_bad_values_before_any_request(box: Sandbox, fake: FakeKaggle,
                                                           assignment: str, message: str) -> None:
    text = failed(box.make("push-kernel", "NB=explore", assignment))
    assert message in text
    assert fake.requests == []


def test_push_kernel_explore_has_no_kernel_sources(box: Sandbox, fake: FakeKaggle) -> None:
    ok(box.make("push-kernel", "NB=explore"))
    body = fake.one(SAVE).json
    assert body["slug"] == f"{USER}/pixelplay-explore"
    assert body.get("kernelDataSources", []) == []


def test_push_kernel_resume_can_be_turned_off(box: Sandbox, fake: FakeKaggle) -> None:
    ok(box.make("push-kernel", "NB=train", "RESUME_FROM="))
    assert fake.calls() == [DATASET_STATUS, SAVE]
    assert fake.one(SAVE).json.get("kernelDataSources", []) == []


@pytest.mark.parametrize("status", [404, 403])
def test_first_train_push_has_nothing_to_resume(box: Sandbox, fake: FakeKaggle,
                                                status: int) -> None:
    fake.routes[STATUS] = Answer(status, {"code": status, "message": "Kernel not found"})
    out = ok(box.make("push-kernel")).stdout
    assert fake.one(SAVE).json.get("kernelDataSources", []) == []
    assert "no previous run" in out


def test_kaggle_user_variable_wins(box: Sandbox, fake: FakeKaggle) -> None:
    ok(box.make("push-kernel", "NB=explore", "KAGGLE_USER=someone-else"))
    body = fake.one(SAVE).json
    assert body["slug"] == "someone-else/pixelplay-explore"
    assert body["datasetDataSources"] == ["someone-else/pixelplay-lib"]


def test_push_error_answer_fails_the_target(box: Sandbox, fake: FakeKaggle) -> None:
    fake.routes[SAVE] = Answer(body={"error": "Notebook exceeds the GPU quota"})
    text = failed(box.make("push-kernel", "NB=explore"))
    assert "Kernel push error: Notebook exceeds the GPU quota" in text


def test_missing_notebook_fails_before_any_request(box: Sandbox, fake: FakeKaggle) -> None:
    (box.notebooks / "explore.ipynb").unlink()
    text = failed(box.make("push-kernel", "NB=explore"))
    assert "explore.ipynb not found" in text
    assert fake.requests == []


def test_push_kernel_competition_variable(box: Sandbox, fake: FakeKaggle) -> None:
    ok(box.make("push-kernel", "NB=explore", "COMPETITION=other-comp"))
    assert fake.one(SAVE).json["competitionDataSources"] == ["other-comp"]
    meta = json.loads((box.build / "kernel-explore" / "kernel-metadata.json").read_text())
    assert meta["competition_sources"] == ["other-comp"]


@pytest.mark.parametrize("slug", ["Other Comp", "https://www.kaggle.com/competitions/x"])
def test_push_kernel_refuses_a_bad_competition_slug(box: Sandbox, fake: FakeKaggle,
                                                    slug: str) -> None:
    text = failed(box.make("push-kernel", "NB=explore", f"COMPETITION={slug}"))
    assert "not a competition slug" in text and "kaggle.com/competitions/<slug>" in text
    assert fake.requests == []


# --------------------------------------------------------------------------- push-time P=
def injected_cells(body: dict[str, Any]) -> list[dict[str, Any]]:
    cells = json.loads(body["text"])["cells"]
    return [c for c in cells if "injected-parameters" in c["metadata"].get("tags", [])]


def test_push_kernel_injects_parameters_as_papermill_does(box: Sandbox, fake: FakeKaggle) -> None:
    out = ok(box.make("push-kernel", "NB=train", "RESUME_FROM=", "P=-p experts "
                      "imagenet,text,probe -p vl_model openai/clip-vit-large-patch14 "
                      "-p epochs 30 -p lr_gamma 0.5")).stdout
    body = fake.one(SAVE).json
    cells = json.loads(body["text"])["cells"]
    tags = [c["metadata"].get("tags", []) for c in cells]
    # papermill's place for it: right after the cell tagged parameters
    assert tags.index(["injected-parameters"]) == tags.index(["parameters"]) + 1
    (cell,) = injected_cells(body)
    assert cell["source"].splitlines() == [
        "# Parameters", 'experts = "imagenet,text,probe"',
        'vl_model = "openai/clip-vit-large-patch14"', "epochs = 30", "lr_gamma = 0.5"]
    assert cell["outputs"] == [] and cell["execution_count"] is None
    assert json.loads(body["text"])["metadata"]["papermill"]["parameters"] == {
        "experts": "imagenet,text,probe", "vl_model": "openai/clip-vit-large-patch14",
        "epochs": 30, "lr_gamma": 0.5}
    assert "Injected into train.ipynb" in out and 'vl_model = "openai/clip-vit' in out
    # the source notebook is left as it was
    assert json.loads((box.notebooks / "train.ipynb").read_text()) == notebook("train")


def test_push_kernel_parameters_raw_and_yaml_like_papermill_cli(box: Sandbox,
                                                                fake: FakeKaggle) -> None:
    # papermill's CLI: -y first, then -p (typed), then -r (text), whatever the order given
    ok(box.make("push-kernel", "NB=explore",
                "P=-r epochs 3 -p lr_gamma 1e-1 -y '{epochs: 7, preset: demo}'"))
    (cell,) = injected_cells(fake.one(SAVE).json)
    assert cell["source"].splitlines()[1:] == ['epochs = "3"', 'preset = "demo"',
                                               "lr_gamma = 0.1"]


def test_push_kernel_quick_notebook_takes_parameters(box: Sandbox, fake: FakeKaggle) -> None:
    ok(box.make("push-kernel", "NB=quick", "P=-p experts imagenet,text"))
    assert fake.calls() == [DATASET_STATUS, SAVE]  # no kernel output to attach
    body = fake.one(SAVE).json
    assert body["slug"] == f"{USER}/pixelplay-quick" and body.get("kernelDataSources", []) == []
    assert 'experts = "imagenet,text"' in injected_cells(body)[0]["source"]


@pytest.mark.parametrize("params, messages", [
    ("-p lr_gamm 0.5", ["unknown parameter", "lr_gamm (did you mean lr_gamma?)"]),
    ("-p epoch 3 -p vl_modle x", ["epoch (did you mean epochs?)", "did you mean vl_model?"]),
    ("-p epochs abc", ["epochs='abc' is not valid", "an integer"]),
    ("-p epochs 2.5", ["epochs=2.5 is not valid"]),
    ("-p preset fast", ["unknown preset 'fast'", "demo"]),
    ("-y '{preset: baseline, lr_gamma: fast}'", ["lr_gamma='fast' is not valid"]),
    ("-p epochs", ["-p needs NAME VALUE"]),
    ("-k python3", ["'-k' is not a parameter option"]),
    ("-y '[1, 2]'", ["not a YAML mapping"]),
])
def test_push_kernel_refuses_bad_parameters_before_any_request(
        box: Sandbox, fake: FakeKaggle, params: str, messages: list[str]) -> None:
    text = failed(box.make("push-kernel", "NB=train", f"P={params}"))
    for message in messages:
        assert message in text
    assert "Traceback" not in text and "nothing was sent" in text
    assert fake.requests == []
    assert not box.build.exists()


def test_push_kernel_refuses_parameters_for_a_notebook_without_a_parameters_cell(
        box: Sandbox, fake: FakeKaggle) -> None:
    nb = notebook("explore")
    nb["cells"][1]["metadata"]["tags"] = []
    (box.notebooks / "explore.ipynb").write_text(json.dumps(nb))
    text = failed(box.make("push-kernel", "NB=explore", "P=-p epochs 1"))
    assert "no cell tagged 'parameters'" in text
    assert fake.requests == []


@pytest.mark.slow
def test_pushed_parameters_run_under_papermill_without_new_ones(
        box: Sandbox, fake: FakeKaggle, demo_root: Path, tmp_path: Path) -> None:
    """The real train notebook, pushed with P=, then executed as Kaggle would: as pushed,
    no parameters given. The run's config.json shows the injected values."""
    import papermill

    shutil.copy(REPO / "notebooks" / "train.ipynb", box.notebooks / "train.ipynb")
    out_dir, inputs = tmp_path / "run", tmp_path / "no-inputs"
    inputs.mkdir()
    params = (f"-p preset demo -p epochs 1 -p data_root {demo_root} -p output_dir {out_dir} "
              f"-p input_root {inputs} -p num_workers 0 -p image_size 32 -p zero_shot off "
              "-p lr_gamma 0.5 -p milestones '[3, 5]' -p tta_votes 1")
    ok(box.make("push-kernel", "NB=train", "RESUME_FROM=", f"P={params}", timeout=HANG))
    pushed = tmp_path / "pushed.ipynb"
    pushed.write_text(fake.one(SAVE).json["text"])
    executed = tmp_path / "executed.ipynb"
    papermill.execute_notebook(str(pushed), str(executed), kernel_name="python3",
                               cwd=str(REPO / "notebooks"), progress_bar=False,
                               execution_timeout=1800)
    ran = json.loads(executed.read_text())
    assert len(injected_cells({"text": executed.read_text()})) == 1  # not injected again
    assert ran["metadata"]["papermill"]["parameters"]["epochs"] == 1
    config = json.loads((out_dir / "config.json").read_text())
    assert (config["epochs"], config["image_size"], config["lr_gamma"]) == (1, 32, 0.5)
    assert (config["arch"], config["zero_shot"], config["milestones"]) == (
        "resnet18", "off", [3, 5])  # the demo preset, the injected values on top
    assert config["data_root"] == str(demo_root)


def test_parameter_parsing_reuses_papermill_type_guesses() -> None:
    sys.path.insert(0, str(REPO / "tools"))
    from kaggle_params import parse_params

    assert parse_params("-p a 1 -p b 1.5 -p c True -p d None -p e x,y -r f 2") == {
        "a": 1, "b": 1.5, "c": True, "d": None, "e": "x,y", "f": "2"}
    assert parse_params("-y 'a: 2019-01-01'") == {"a": "2019-01-01"}  # no dates, as papermill
    assert parse_params("--parameters a 'two words'") == {"a": "two words"}


# --------------------------------------------------------------------------- lib status
@pytest.mark.parametrize("answer, messages", [
    (dataset_status("BLOBS_RECEIVED"), ["not ready (status blobs_received)", "Wait",
                                        "make push-lib"]),
    (dataset_status("NOT_YET_PERSISTED"), ["not ready (status not_yet_persisted)"]),
    (dataset_status("FAILED"), ["is failed on Kaggle", "make push-lib` again"]),
    (not_found("Dataset not found"), ["does not exist", "make push-lib` first"]),
])
def test_push_kernel_refuses_while_the_lib_is_not_ready(box: Sandbox, fake: FakeKaggle,
                                                        answer: Answer,
                                                        messages: list[str]) -> None:
    fake.routes[DATASET_STATUS] = answer
    text = failed(box.make("push-kernel", "NB=infer"))
    for message in messages:
        assert message in text
    assert f"{USER}/pixelplay-lib" in text
    assert fake.calls() == [DATASET_STATUS]  # asked once, nothing pushed


def test_push_kernel_stops_when_the_lib_status_cannot_be_read(box: Sandbox,
                                                              fake: FakeKaggle) -> None:
    fake.routes[DATASET_STATUS] = Answer(500, {"code": 500, "message": "backend unavailable"})
    text = failed(box.make("push-kernel", "NB=infer"))
    assert "kaggle datasets status tester/pixelplay-lib failed: backend unavailable" in text
    assert SAVE not in fake.calls()


# --------------------------------------------------------------------------- credentials
@pytest.mark.parametrize("target", ["push-kernel", "push-lib", "kernel-status",
                                    "kernel-output", "submit"])
def test_missing_credentials(tmp_path: Path, fake: FakeKaggle, target: str) -> None:
    box = Sandbox(tmp_path, fake)  # no kaggle.json, no KAGGLE_* credentials
    text = failed(box.make(target))
    assert "No Kaggle credentials found" in text
    for hint in ("kaggle.json", "chmod 600", "KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        assert hint in text
    assert "Authentication required" not in text  # the CLI was not even started
    assert fake.requests == []
    assert not (box.build).exists()


def test_credentials_from_environment(tmp_path: Path, fake: FakeKaggle) -> None:
    box = Sandbox(tmp_path, fake)
    out = ok(box.make("push-kernel", "NB=explore", KAGGLE_USERNAME="envuser", KAGGLE_KEY=KEY))
    assert fake.one(SAVE).json["slug"] == "envuser/pixelplay-explore"
    assert KEY not in out.stdout


def test_token_without_user_name_asks_for_kaggle_user(tmp_path: Path, fake: FakeKaggle) -> None:
    box = Sandbox(tmp_path, fake)
    text = failed(box.make("push-kernel", KAGGLE_API_TOKEN="tok-" + KEY))
    assert "KAGGLE_USER=" in text
    assert fake.requests == []


def test_kaggle_user_target_prints_name_not_key(box: Sandbox) -> None:
    result = ok(box.make("kaggle-user"))
    assert result.stdout.strip().splitlines()[-1] == USER


# --------------------------------------------------------------------------- kernel-status
def test_kernel_status_complete(box: Sandbox, fake: FakeKaggle) -> None:
    out = ok(box.make("kernel-status", "NB=infer")).stdout
    assert "COMPLETE" in out
    assert fake.one(STATUS).json == {"userName": USER, "kernelSlug": "pixelplay-infer"}


def test_kernel_status_error_fails(box: Sandbox, fake: FakeKaggle) -> None:
    fake.routes[STATUS] = Answer(body={"status": "ERROR", "failureMessage": "CUDA out of memory"})
    text = failed(box.make("kernel-status"))
    assert "CUDA out of memory" in text and "error" in text


def test_kernel_status_cancelled_fails(box: Sandbox, fake: FakeKaggle) -> None:
    fake.routes[STATUS] = Answer(body={"status": "CANCEL_ACKNOWLEDGED"})
    failed(box.make("kernel-status"))


def test_kernel_status_running_is_not_a_failure(box: Sandbox, fake: FakeKaggle) -> None:
    fake.routes[STATUS] = Answer(body={"status": "RUNNING"})
    assert "RUNNING" in ok(box.make("kernel-status")).stdout


def test_kernel_status_wait_polls_until_done(box: Sandbox, fake: FakeKaggle) -> None:
    fake.routes[STATUS] = [Answer(body={"status": "QUEUED"}), Answer(body={"status": "RUNNING"}),
                           Answer(body={"status": "COMPLETE"})]
    ok(box.make("kernel-status", "WAIT=1", "POLL=0.05"))
    assert fake.calls() == [STATUS] * 3


def test_kernel_status_unknown_kernel_fails(box: Sandbox, fake: FakeKaggle) -> None:
    fake.routes[STATUS] = not_found("Kernel not found")
    failed(box.make("kernel-status"))


# --------------------------------------------------------------------------- kernel-output
def test_kernel_output_downloads_files(box: Sandbox, fake: FakeKaggle) -> None:
    listing = fake.routes["kernels.KernelsApiService/ListKernelSessionOutput"]
    assert isinstance(listing, Answer)
    listing.body["files"].append(
        {"fileName": "checkpoints/last.pt", "url": "http://localhost/files/last.pt"})
    fake.routes["files/last.pt"] = Answer(body=b"\x00checkpoint")
    out_dir = box.root / "runs" / "kaggle-infer"
    out = ok(box.make("kernel-output", "NB=infer", f"OUT={out_dir}")).stdout
    assert (out_dir / "checkpoints" / "last.pt").read_bytes() == b"\x00checkpoint"
    assert fake.one("kernels.KernelsApiService/ListKernelSessionOutput").json["kernelSlug"] == (
        "pixelplay-infer")
    assert (out_dir / "submission.csv").read_text().startswith("image_id,class\n")
    assert json.loads((out_dir / "metrics.json").read_text()) == {"val_acc": 0.9}
    # no submission.check.json came with it: make submit needs the competition folder
    assert f"make submit FILE={out_dir / 'submission.csv'} DATA=<competition folder>" in out


def sidecar(ids: list[str], classes: list[str]) -> bytes:
    return json.dumps({"format": "pixelplay-submission-check/1", "header": ["image_id", "class"],
                       "ids": ids, "classes": classes}).encode()


def test_kernel_output_checks_the_submissions_it_downloads(box: Sandbox,
                                                           fake: FakeKaggle) -> None:
    listing = fake.routes["kernels.KernelsApiService/ListKernelSessionOutput"]
    assert isinstance(listing, Answer)
    files = {"submission.check.json": sidecar(["00001.jpg"], ["fox", "blue+whale"]),
             "soft/sub.csv": b"image_id,class\n00001.jpg,fox\n00001.jpg,wolf\n",
             "soft/sub.check.json": sidecar(["00001.jpg", "00002.jpg"], ["fox"])}
    for name, data in files.items():
        url = f"files/{name.split('/')[-1]}"  # routes go by the last two parts of the path
        listing.body["files"].append({"fileName": name, "url": f"http://localhost/{url}"})
        fake.routes[url] = Answer(body=data)
    out_dir = box.root / "runs" / "kaggle-infer"
    out = ok(box.make("kernel-output", "NB=infer", f"OUT={out_dir}")).stdout
    good, bad = out_dir / "submission.csv", out_dir / "soft" / "sub.csv"
    assert f"{good}: OK (1 rows" in out and f"Next: make submit FILE={good}" in out
    report = out[out.index(f"WARNING: {bad} would not score"):]
    for problem in ("'00001.jpg' (lines 2, 3)", "without a row: '00002.jpg'",
                    "'wolf' (line 3)", f"make submit refuses it (make submit FILE={bad})"):
        assert problem in report


def test_kernel_output_failure_fails(box: Sandbox, fake: FakeKaggle) -> None:
    fake.routes["kernels.KernelsApiService/ListKernelSessionOutput"] = not_found()
    failed(box.make("kernel-output", f"OUT={box.root / 'out'}"))


# --------------------------------------------------------------------------- submit
CLASSES = [f"animal{i:02d}" for i in range(49)] + ["blue+whale"]
N_TEST = 3000


@pytest.fixture
def written(box: Sandbox) -> Path:
    """A valid submission of 3000 rows and its submission.check.json, as predict writes."""
    from pixelplay_lib.submission import write_submission

    files = [Path(f"{i:05d}.jpg") for i in range(1, N_TEST + 1)]
    frame = pd.DataFrame({"image_id": [f.name for f in files],
                          "class": [CLASSES[i % 50] for i in range(N_TEST)]})
    return write_submission(frame, files, CLASSES, box.root / "out" / "submission.csv")


def edit_lines(path: Path, edit: Any) -> None:
    lines = path.read_text().splitlines()
    path.write_text("\n".join(edit(lines)) + "\n")


def test_submit_uploads_a_checked_file(box: Sandbox, fake: FakeKaggle, written: Path) -> None:
    out = ok(box.make("submit", f"FILE={written}", "MSG=resnet101 + zero-shot, it's v2")).stdout
    assert "3000 rows, one per test image" in out and "submission.check.json" in out
    assert fake.calls()[:3] == [UPLOAD, "PUT upload/sub-token-1", CREATE_SUBMISSION]
    start = fake.one(UPLOAD).json
    assert start["competitionName"] == COMPETITION and start["fileName"] == "submission.csv"
    assert fake.uploads["/upload/sub-token-1"] == written.read_bytes()
    create = fake.one(CREATE_SUBMISSION).json
    assert create["competitionName"] == COMPETITION
    assert create["blobFileTokens"] == "sub-token-1"
    assert create["submissionDescription"] == "resnet101 + zero-shot, it's v2"


def test_submit_to_another_competition(box: Sandbox, fake: FakeKaggle, written: Path) -> None:
    ok(box.make("submit", f"FILE={written}", "COMPETITION=other-comp"))
    assert fake.one(UPLOAD).json["competitionName"] == "other-comp"
    assert fake.one(CREATE_SUBMISSION).json["competitionName"] == "other-comp"
    assert "(3000 rows)" in fake.one(CREATE_SUBMISSION).json["submissionDescription"]


@pytest.mark.parametrize("edit, messages", [
    (lambda lines: lines[:61], ["60 rows, expected 3000 (one per test image)",
                                "2940 test image(s) without a row: '00061.jpg', '00062.jpg'"]),
    (lambda lines: [*lines[:4], "00004.jpg,blue whale", *lines[5:8], "00008.jpg,",
                    "00009.jpg,Blue+Whale", *lines[10:]],
     ["2 row(s) with a label that is not a class: 'blue whale' (line 5), 'Blue+Whale' "
      "(line 10)", "1 row(s) without a label: line 9"]),
    (lambda lines: [*lines[:3], lines[2], *lines[4:], lines[10]],
     ["2 image_id(s) on several rows: '00002.jpg' (lines 3, 4), '00010.jpg' (lines 11, 3002)",
      "1 test image(s) without a row: '00003.jpg'"]),
    (lambda lines: ["id,label", *lines[1:], "x.jpg,animal00"],
     ["line 1: the header is 'id,label', expected 'image_id,class'",
      "3001 rows, expected 3000", "'x.jpg' (line 3002)"]),
])
def test_submit_refuses_wrong_rows_before_any_request(box: Sandbox, fake: FakeKaggle,
                                                      written: Path, edit: Any,
                                                      messages: list[str]) -> None:
    edit_lines(written, edit)
    text = failed(box.make("submit", f"FILE={written}"))
    assert f"{written} would not score, nothing was sent to Kaggle" in text
    for message in messages:
        assert message in text
    assert "Traceback" not in text
    assert fake.requests == []


def test_submit_without_sidecar_or_data_says_how(box: Sandbox, fake: FakeKaggle,
                                                 written: Path) -> None:
    written.with_suffix(".check.json").unlink()
    text = failed(box.make("submit", f"FILE={written}"))
    for hint in ("nothing to check", "keep submission.check.json", "DATA=<competition folder>",
                 f"kaggle competitions download {COMPETITION}"):
        assert hint in text
    assert "not found" in failed(box.make("submit", f"FILE={box.root / 'missing.csv'}"))
    assert fake.requests == []


def demo_rows(demo_root: Path) -> list[str]:
    from pixelplay_lib.data import load_challenge

    ch = load_challenge(demo_root)
    return [f"{f.name},{ch.classes[i % len(ch.classes)]}" for i, f in
            enumerate(ch.test_files())]


def test_submit_checks_against_the_competition_folder(box: Sandbox, fake: FakeKaggle,
                                                      demo_root: Path, written: Path) -> None:
    """DATA= wins over a sidecar: here the sidecar (3000 ids) is of another test set."""
    rows = demo_rows(demo_root)
    written.write_text("\n".join(["image_id,class", *rows]) + "\n")
    out = ok(box.make("submit", f"FILE={written}", f"DATA={demo_root.parent}")).stdout
    assert f"{len(rows)} rows, one per test image" in out and "competition folder" in out
    assert fake.uploads["/upload/sub-token-1"] == written.read_bytes()


@pytest.mark.parametrize("data, message", [
    ("short", "10 rows, expected"),
    ("nowhere", "competition folder"),
])
def test_submit_refuses_against_the_competition_folder(box: Sandbox, fake: FakeKaggle,
                                                       demo_root: Path, data: str,
                                                       message: str) -> None:
    csv = box.root / "submission.csv"
    csv.write_text("\n".join(["image_id,class", *demo_rows(demo_root)[:10]]) + "\n")
    folder = demo_root if data == "short" else box.root / "nowhere"
    text = failed(box.make("submit", f"FILE={csv}", f"DATA={folder}"))
    assert message in text and "nothing was sent" in text.lower()
    assert fake.requests == []


# --------------------------------------------------------------------------- push-lib
@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A tiny pure-Python project (distribution pixelplay) with junk a wheel must not ship."""
    src = tmp_path / "project"
    (src / "pixelplay_lib" / "__pycache__").mkdir(parents=True)
    (src / "tests").mkdir()
    (src / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "pixelplay"\nversion = "0.1.0"\n'
        '[tool.setuptools]\npackages = ["pixelplay_lib"]\n'
    )
    (src / "pixelplay_lib" / "__init__.py").write_text("VERSION = '0.1.0'\n")
    (src / "pixelplay_lib" / "__pycache__" / "__init__.cpython-311.pyc").write_bytes(b"junk")
    (src / "tests" / "test_x.py").write_text("def test_x():\n    pass\n")
    return src


def wheel_names(data: bytes) -> list[str]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return zf.namelist()


def check_lib_stage(box: Sandbox) -> None:
    staged = sorted(p.name for p in (box.build / "kaggle-lib").iterdir())
    assert staged == ["dataset-metadata.json", "pixelplay-0.1.0-py3-none-any.whl"]


UPLOAD_BLOB = ["blobs.BlobApiService/StartBlobUpload", "PUT upload/blob-token-1"]


def test_push_lib_creates_the_dataset_and_waits_until_ready(box: Sandbox, fake: FakeKaggle,
                                                            project: Path) -> None:
    fake.routes[DATASET_STATUS] = new_dataset_processed()
    out = ok(box.make("push-lib", f"LIB_SRC={project}", "POLL=0.01")).stdout
    # create asks whether the slug exists (no), uploads, creates; then we poll until ready
    assert fake.calls() == [DATASET_STATUS, *UPLOAD_BLOB,
                            "datasets.DatasetApiService/CreateDataset"] + [DATASET_STATUS] * 3
    assert all(r.json == {"ownerSlug": USER, "datasetSlug": "pixelplay-lib"}
               for r in fake.find(DATASET_STATUS))
    for progress in (f"{USER}/pixelplay-lib: blobs_received; next check in 0.01 s",
                     f"{USER}/pixelplay-lib: blobs_decompressed", f"{USER}/pixelplay-lib is ready",
                     "Next: make push-kernel"):
        assert progress in out
    start = fake.one("blobs.BlobApiService/StartBlobUpload").json
    assert start["name"] == "pixelplay-0.1.0-py3-none-any.whl"
    names = wheel_names(fake.uploads["/upload/blob-token-1"])  # the wheel, as a plain file
    assert "pixelplay_lib/__init__.py" in names
    assert not [n for n in names if "__pycache__" in n or n.startswith("tests/")]
    create = fake.one("datasets.DatasetApiService/CreateDataset").json
    assert create["ownerSlug"] == USER and create["slug"] == "pixelplay-lib"
    assert create["licenseName"] == "CC0-1.0"
    assert create["isPrivate"] is True
    assert create["files"] == [{"token": "blob-token-1"}]
    check_lib_stage(box)


def test_push_lib_versions_an_existing_dataset(box: Sandbox, fake: FakeKaggle,
                                               project: Path) -> None:
    out = ok(box.make("push-lib", f"LIB_SRC={project}", "MSG=new losses")).stdout
    assert fake.calls() == [DATASET_STATUS, *UPLOAD_BLOB,  # exists (ready): a new version
                            "datasets.DatasetApiService/CreateDatasetVersion", DATASET_STATUS]
    version = fake.one("datasets.DatasetApiService/CreateDatasetVersion").json
    assert version["ownerSlug"] == USER and version["datasetSlug"] == "pixelplay-lib"
    assert version["body"]["versionNotes"] == "new losses"
    assert version["body"]["files"] == [{"token": "blob-token-1"}]
    assert "pixelplay_lib/__init__.py" in wheel_names(fake.uploads["/upload/blob-token-1"])
    assert "new version" in out and "is ready" in out
    check_lib_stage(box)


def test_push_lib_fails_when_kaggle_cannot_process_the_version(box: Sandbox, fake: FakeKaggle,
                                                               project: Path) -> None:
    fake.routes[DATASET_STATUS] = new_version_failed()
    text = failed(box.make("push-lib", f"LIB_SRC={project}", "POLL=0.01"))
    assert (f"Kaggle could not process {USER}/pixelplay-lib (status failed): see "
            f"https://www.kaggle.com/datasets/{USER}/pixelplay-lib") in text
    assert "not_yet_persisted; next check" in text
    assert fake.calls()[-3:] == ["datasets.DatasetApiService/CreateDatasetVersion",
                                 DATASET_STATUS, DATASET_STATUS]


def test_push_lib_gives_up_waiting_after_the_timeout(box: Sandbox, fake: FakeKaggle,
                                                     project: Path) -> None:
    fake.routes[DATASET_STATUS] = [not_found("Dataset not found"),
                                   dataset_status("BLOBS_RECEIVED")]  # the last one repeats
    text = failed(box.make("push-lib", f"LIB_SRC={project}", "POLL=0.05", "LIB_TIMEOUT=0.3"))
    assert f"{USER}/pixelplay-lib is still blobs_received after" in text
    assert "the upload went through" in text and "LIB_TIMEOUT=" in text
    polls = fake.calls()[4:]  # after create's own status call, the upload and the create
    assert polls and set(polls) == {DATASET_STATUS}


@pytest.mark.parametrize("existing", [False, True])
def test_push_lib_error_answer_fails(box: Sandbox, fake: FakeKaggle, project: Path,
                                     existing: bool) -> None:
    rpc = "CreateDatasetVersion" if existing else "CreateDataset"
    if not existing:
        fake.routes[DATASET_STATUS] = not_found("Dataset not found")
    fake.routes[f"datasets.DatasetApiService/{rpc}"] = Answer(
        body={"status": "error", "error": "Dataset storage quota exceeded"})
    text = failed(box.make("push-lib", f"LIB_SRC={project}"))
    assert "Dataset storage quota exceeded" in text
    assert fake.calls().count(DATASET_STATUS) == 1  # nothing to wait for


def test_the_project_wheel_ships_only_the_library(tmp_path: Path) -> None:
    """Build this repository's own wheel (from a copy) and look inside."""
    src = tmp_path / "src"
    shutil.copytree(REPO / "pixelplay_lib", src / "pixelplay_lib",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (REPO / name).exists():
            shutil.copy(REPO / name, src / name)
    (src / "pixelplay_lib" / "__pycache__").mkdir(exist_ok=True)
    (src / "pixelplay_lib" / "__pycache__" / "x.pyc").write_bytes(b"junk")
    wheel = ops.build_wheel(sys.executable, src, tmp_path / "dist")
    names = zipfile.ZipFile(wheel).namelist()
    assert wheel.name.startswith("pixelplay-") and wheel.name.endswith("-py3-none-any.whl")
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"pixelplay_lib"}
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert any(n.startswith("pixelplay_lib/resources/") for n in names)


# --------------------------------------------------------------------------- make clean
def test_make_clean_keeps_downloaded_kaggle_runs(tmp_path: Path) -> None:
    kept = ["runs/kaggle-infer/submission.csv", "runs/kaggle-train/model.pt",
            "runs/my-experiment/model.pt", ".venv/bin/python", "notebooks/train.py"]
    removed = ["demo-data", "runs/demo", "runs/notebooks", "build", "dist"]
    for name in kept + [f"{folder}/some/file" for folder in removed]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    result = subprocess.run(["make", "--no-print-directory", "-C", str(tmp_path), "-f",
                             str(REPO / "Makefile"), "clean"], capture_output=True, text=True,
                            timeout=HANG, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert [n for n in kept if not (tmp_path / n).exists()] == []
    assert [n for n in removed if (tmp_path / n).exists()] == []
    help_text = subprocess.run(["make", "--no-print-directory", "-C", str(REPO), "help"],
                               capture_output=True, text=True, timeout=HANG).stdout
    clean_help = next(line for line in help_text.splitlines() if line.startswith("clean"))
    assert "keeps" in clean_help and "runs/kaggle-*" in clean_help


# --------------------------------------------------------------------------- templates
def test_dataset_template_satisfies_the_cli_rules() -> None:
    meta = ops.render(json.loads((REPO / "dataset-metadata.json").read_text()),
                      {"KAGGLE_USER": USER})
    owner, slug = meta["id"].split("/")
    assert owner == USER and slug == "pixelplay-lib"
    assert 6 <= len(slug) <= 50 and 6 <= len(meta["title"]) <= 50
    assert len(meta["licenses"]) == 1 and meta["licenses"][0]["name"]
    assert "subtitle" not in meta or 20 <= len(meta["subtitle"]) <= 80


def test_kernel_template_renders_lists() -> None:
    template = json.loads((REPO / "kernel-metadata.json").read_text())
    meta = ops.render(template, {"KAGGLE_USER": "u1", "NB": "infer", "ACCELERATOR": "X",
                                 "COMPETITION": COMPETITION,
                                 "DOCKER_IMAGE": "", "PIN": "", "MODELS": ["o/m/f/v/1"],
                                 "DATASETS": [], "KERNEL_SOURCES": ["u1/pixelplay-train"]})
    assert meta["id"] == "u1/pixelplay-infer" and meta["code_file"] == "infer.ipynb"
    assert meta["dataset_sources"] == ["u1/pixelplay-lib"]
    assert meta["kernel_sources"] == ["u1/pixelplay-train"]
    assert meta["model_sources"] == ["o/m/f/v/1"]
    assert meta["enable_internet"] is True
    assert meta["kernel_type"] == "notebook" and meta["enable_gpu"] is True
    assert meta["is_private"] is True and meta["competition_sources"] == [COMPETITION]
    with pytest.raises(ops.OpsError):
        ops.render(template, {"KAGGLE_USER": "u1"})


def test_credentials_are_looked_up_like_the_cli(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("KAGGLE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert ops.find_credentials() is None
    (tmp_path / "xdg" / "kaggle").mkdir(parents=True)  # Linux: no ~/.kaggle -> XDG dir
    (tmp_path / "xdg" / "kaggle" / "kaggle.json").write_text(
        json.dumps({"username": "xdguser", "key": KEY}))
    creds = ops.find_credentials()
    assert creds is not None and creds.username == "xdguser" and KEY in creds.secrets
    monkeypatch.setenv("KAGGLE_USERNAME", "envuser")
    assert ops.find_credentials().username == "envuser"
