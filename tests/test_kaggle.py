"""The Kaggle make targets, run offline with the real `kaggle` CLI against a fake API.

Each test runs ``make -C <repo> <target>`` with HOME, KAGGLE_CONFIG_DIR and TMPDIR in a
temporary directory, fake credentials, and the CLI's requests sent (through
``HTTP_PROXY``) to tests/kaggle_server.py on 127.0.0.1. Nothing leaves the machine,
and the user's real ~/.kaggle is never read.
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

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import load_kaggle_ops  # noqa: E402
from kaggle_server import Answer, FakeKaggle, not_found  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
KAGGLE_EXE = Path(sys.executable).parent / "kaggle"
USER = "tester"
KEY = "s3cr3t-api-key-0123456789"
COMPETITION = "vlg-recruitment-24-challenge"
SAVE = "kernels.KernelsApiService/SaveKernel"
STATUS = "kernels.KernelsApiService/GetKernelSessionStatus"

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
                "source": ["import sys\n", f"print('{name}')"],
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
        for name in ("train", "infer", "explore"):
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

    def make(self, target: str, *assignments: str, **env: str) -> subprocess.CompletedProcess:
        cmd = [
            "make", "--no-print-directory", "-C", str(REPO),
            "-o", ".venv/.installed-stamp",  # never (re)create the venv from a test
            f"PY={sys.executable}", f"KAGGLE={KAGGLE_EXE}",
            f"NOTEBOOKS_DIR={self.notebooks}", f"KAGGLE_BUILD={self.build}",
            target, *assignments,
        ]
        result = subprocess.run(cmd, env={**self.env, **env}, capture_output=True, text=True,
                                timeout=120, check=False)
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
    assert fake.calls() == [STATUS, SAVE]  # is there a previous run to resume from? then push
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
    assert pushed["metadata"] == original["metadata"]
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
    assert fake.calls() == [SAVE]
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
    assert fake.calls() == [SAVE]
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
    assert "make submit" in out


def test_kernel_output_failure_fails(box: Sandbox, fake: FakeKaggle) -> None:
    fake.routes["kernels.KernelsApiService/ListKernelSessionOutput"] = not_found()
    failed(box.make("kernel-output", f"OUT={box.root / 'out'}"))


# --------------------------------------------------------------------------- submit
def test_submit_uploads_and_creates_submission(box: Sandbox, fake: FakeKaggle) -> None:
    csv = box.root / "submission.csv"
    csv.write_text("image_id,class\n00001.jpg,blue+whale\n00002.jpg,fox\n")
    ok(box.make("submit", f"FILE={csv}", "MSG=resnet101 + zero-shot, it's v2"))
    calls = fake.calls()
    assert calls[:3] == ["competitions.CompetitionApiService/StartSubmissionUpload",
                         "PUT upload/sub-token-1",
                         "competitions.CompetitionApiService/CreateSubmission"]
    start = fake.one("competitions.CompetitionApiService/StartSubmissionUpload").json
    assert start["competitionName"] == COMPETITION and start["fileName"] == "submission.csv"
    assert fake.uploads["/upload/sub-token-1"] == csv.read_bytes()
    create = fake.one("competitions.CompetitionApiService/CreateSubmission").json
    assert create["competitionName"] == COMPETITION
    assert create["blobFileTokens"] == "sub-token-1"
    assert create["submissionDescription"] == "resnet101 + zero-shot, it's v2"


def test_submit_refuses_a_wrong_file(box: Sandbox, fake: FakeKaggle) -> None:
    csv = box.root / "bad.csv"
    csv.write_text("id,label\n1,fox\n")
    assert "image_id,class" in failed(box.make("submit", f"FILE={csv}"))
    assert "not found" in failed(box.make("submit", f"FILE={box.root / 'missing.csv'}"))
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


def test_push_lib_creates_the_dataset(box: Sandbox, fake: FakeKaggle, project: Path) -> None:
    ok(box.make("push-lib", f"LIB_SRC={project}"))
    assert fake.calls() == [
        "datasets.DatasetApiService/GetDatasetStatus",
        "blobs.BlobApiService/StartBlobUpload",
        "PUT upload/blob-token-1",
        "datasets.DatasetApiService/CreateDataset",
    ]
    assert fake.one("datasets.DatasetApiService/GetDatasetStatus").json == {
        "ownerSlug": USER, "datasetSlug": "pixelplay-lib"}
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
    fake.routes["datasets.DatasetApiService/GetDatasetStatus"] = Answer(body={"status": "READY"})
    out = ok(box.make("push-lib", f"LIB_SRC={project}", "MSG=new losses")).stdout
    assert fake.calls() == [
        "datasets.DatasetApiService/GetDatasetStatus",
        "blobs.BlobApiService/StartBlobUpload",
        "PUT upload/blob-token-1",
        "datasets.DatasetApiService/CreateDatasetVersion",
    ]
    version = fake.one("datasets.DatasetApiService/CreateDatasetVersion").json
    assert version["ownerSlug"] == USER and version["datasetSlug"] == "pixelplay-lib"
    assert version["body"]["versionNotes"] == "new losses"
    assert version["body"]["files"] == [{"token": "blob-token-1"}]
    assert "pixelplay_lib/__init__.py" in wheel_names(fake.uploads["/upload/blob-token-1"])
    assert "new version" in out
    check_lib_stage(box)


@pytest.mark.parametrize("existing", [False, True])
def test_push_lib_error_answer_fails(box: Sandbox, fake: FakeKaggle, project: Path,
                                     existing: bool) -> None:
    rpc = "CreateDatasetVersion" if existing else "CreateDataset"
    if existing:
        fake.routes["datasets.DatasetApiService/GetDatasetStatus"] = Answer(
            body={"status": "READY"})
    fake.routes[f"datasets.DatasetApiService/{rpc}"] = Answer(
        body={"status": "error", "error": "Dataset storage quota exceeded"})
    text = failed(box.make("push-lib", f"LIB_SRC={project}"))
    assert "Dataset storage quota exceeded" in text


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
