#!/usr/bin/env python3
"""Kaggle workflow for pixelplay, driven by the official ``kaggle`` CLI (see kaggle.mk).

Subcommands (one per make target):

  push-lib       build the wheel, publish it as the dataset <user>/pixelplay-lib
                 (``datasets create``; when the slug exists, ``datasets version``), then
                 poll ``datasets status`` until Kaggle has processed it (fails on failed)
  push-kernel    stage notebooks/<nb>.ipynb (outputs cleared; with --params, P's values
                 injected as papermill does: tools/kaggle_params.py, checked first) +
                 kernel-metadata.json rendered from the top-level template (competition,
                 datasets, kernel sources), check once that the lib dataset is ready, then
                 ``kernels push``
  kernel-status  ``kernels status``; exits 1 on error/cancelled (``--wait`` polls)
  kernel-output  ``kernels output`` into a local folder (default runs/kaggle-<nb>); each
                 submission CSV with its X.check.json beside it is checked
  submit         check a submission CSV (pixelplay_lib.submission: against its
                 X.check.json, or the competition folder --data), then
                 ``competitions submit``; a file with wrong rows is never sent
  whoami         print the Kaggle user name the targets would use (never the key)

The CLI exits 0 after "Kernel push error: ..." and whatever a kernel's status is, so
every command here reads the CLI's output as well as its exit status. Credentials are
looked up (without printing them) before the CLI runs; anything the CLI prints is
echoed with known secret values masked. Standard library only, but for --params
(papermill, pixelplay_lib) and the submission checks (pixelplay_lib), imported when used:
run it with the venv's python (kaggle.mk does).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
COMPETITION = "vlg-recruitment-24-challenge"
LIB_SLUG = "pixelplay-lib"
KERNEL_PREFIX = "pixelplay-"
# "GPU T4 x2". Not the P100: Kaggle's default image has no kernels for it (see below).
DEFAULT_ACCELERATOR = "NvidiaTeslaT4"
PIN_TYPES = ("original", "latest")  # docker_image_pinning_type values the CLI accepts
ARCH_FIX = ("Use ACCELERATOR=NvidiaTeslaT4 (the default, GPU T4 x2) or NvidiaL4, or bring an "
            "image whose torch supports this GPU: DOCKER_IMAGE=<image> PIN=original.")
# Accelerators that push fine but are expected to fail in the kernel (lower case -> why).
ACCELERATOR_WARNINGS = {
    "nvidiateslap100": (
        "Kaggle's default image ships a PyTorch built for CUDA 12.8 without Pascal (sm_60) "
        "kernels: on a P100 torch.cuda.is_available() is True and the first CUDA operation "
        "fails with 'no kernel image is available', while the session counts against your "
        "GPU quota (Kaggle/kaggle-cli issue 1151; the CLI also marks the P100 retired). The "
        "kernel's preflight stops such a run within seconds."),
}
PLACEHOLDER = re.compile(r"\{\{([A-Z_]+)\}\}")

AUTH_HELP = """\
No Kaggle credentials found (nothing was sent to Kaggle). Provide one of:
  1. ~/.kaggle/kaggle.json with {"username": "<user>", "key": "<key>"}, then
       chmod 600 ~/.kaggle/kaggle.json
     (Kaggle > Settings > API > Create New Token downloads it; set
      KAGGLE_CONFIG_DIR=<dir> to use <dir>/kaggle.json instead)
  2. export KAGGLE_USERNAME=<user> KAGGLE_KEY=<key>
  3. export KAGGLE_API_TOKEN=<token> (or save the token in ~/.kaggle/access_token)
     and tell make who you are: make ... KAGGLE_USER=<user>
Never commit these files (.gitignore lists kaggle.json and access_token)."""


class OpsError(Exception):
    """A failure with a message meant for the user (exit status 1)."""


# --------------------------------------------------------------------------- credentials
@dataclass
class Credentials:
    source: str
    username: str | None = None
    secrets: list[str] = field(default_factory=list)  # values masked in echoed output


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _read_token(value: str) -> str:
    """KAGGLE_API_TOKEN holds a token or the path of a file holding one."""
    path = Path(value).expanduser()
    if len(value) < 4096 and path.is_file():
        return path.read_text(encoding="utf-8").strip()
    return value.strip()


def config_dir() -> Path:
    """Where the CLI reads kaggle.json: $KAGGLE_CONFIG_DIR, ~/.kaggle, else XDG (Linux)."""
    if os.environ.get("KAGGLE_CONFIG_DIR"):
        return Path(os.environ["KAGGLE_CONFIG_DIR"])
    home = Path.home() / ".kaggle"
    if home.exists() or not sys.platform.startswith("linux"):
        return home
    xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(xdg) / "kaggle"


def find_credentials() -> Credentials | None:
    """The credentials the CLI would use, in its order; None when there are none."""
    conf = _read_json(config_dir() / "kaggle.json")
    username = os.environ.get("KAGGLE_USERNAME") or conf.get("username") or None
    key = os.environ.get("KAGGLE_KEY") or conf.get("key") or None

    token_env = os.environ.get("KAGGLE_API_TOKEN", "")
    token = _read_token(token_env) if token_env else ""
    for name in ("access_token", "access_token.txt"):
        path = Path.home() / ".kaggle" / name
        if not token and path.is_file():
            token = path.read_text(encoding="utf-8").strip()
    if token:
        return Credentials("access token", username, [t for t in (token, key) if t])
    if username and key:
        return Credentials("username/key", username, [key])
    oauth = _read_json(Path.home() / ".kaggle" / "credentials.json")
    if oauth.get("refresh_token") or oauth.get("access_token"):
        secrets = [str(oauth[k]) for k in ("refresh_token", "access_token") if oauth.get(k)]
        return Credentials("kaggle auth login", oauth.get("username") or username, secrets)
    return None


def require_credentials() -> Credentials:
    creds = find_credentials()
    if creds is None:
        raise OpsError(AUTH_HELP)
    return creds


def resolve_user(explicit: str | None, creds: Credentials) -> str:
    user = (explicit or "").strip() or creds.username
    if not user:
        raise OpsError(
            f"Kaggle credentials found ({creds.source}) but no user name: "
            "run make with KAGGLE_USER=<your kaggle user name> (or export KAGGLE_USERNAME)."
        )
    return user


# --------------------------------------------------------------------------- running the CLI
@dataclass
class CliResult:
    rc: int
    output: str


@dataclass
class Kaggle:
    """Runs the kaggle executable, echoing its output (secrets masked) and keeping it."""

    exe: str
    creds: Credentials

    def mask(self, text: str) -> str:
        for secret in self.creds.secrets:
            if len(secret) >= 4:
                text = text.replace(secret, "***")
        return text

    def run(self, *args: str, echo: bool = True) -> CliResult:
        env = {k: v for k, v in os.environ.items() if k not in ("VERBOSE", "VERBOSE_OUTPUT")}
        if echo:
            print("+ kaggle " + shlex.join(args), flush=True)
        proc = subprocess.Popen(
            [self.exe, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            env=env,
        )
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            line = self.mask(line)
            lines.append(line)
            if echo:
                sys.stdout.write(line)
                sys.stdout.flush()
        rc = proc.wait()
        if echo and lines and not lines[-1].endswith("\n"):
            print(flush=True)  # the CLI may end without a newline
        return CliResult(rc, "".join(lines))

    def check(self, what: str, result: CliResult) -> None:
        if result.rc != 0:
            raise OpsError(f"{what} failed (kaggle exited {result.rc}): {last_line(result.output)}")


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


def find_kaggle_exe(explicit: str | None) -> str:
    candidates = [explicit] if explicit else [str(Path(sys.executable).parent / "kaggle"), "kaggle"]
    for cand in candidates:
        found = shutil.which(cand)
        if found:
            return found
    raise OpsError(
        f"kaggle CLI not found ({candidates[0]}): run `make venv` "
        "(or `.venv/bin/pip install kaggle six`)."
    )


def git_rev(repo: Path) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


# --------------------------------------------------------------------------- templates
def render(template: Any, values: dict[str, str | list[str]]) -> Any:
    """Fill ``{{NAME}}`` placeholders in a JSON template.

    A list element that is exactly ``"{{NAME}}"`` with a list value expands into the
    list's items (none when empty); other placeholders are replaced as text.
    """
    if isinstance(template, dict):
        return {k: render(v, values) for k, v in template.items()}
    if isinstance(template, list):
        out: list[Any] = []
        for item in template:
            m = PLACEHOLDER.fullmatch(item) if isinstance(item, str) else None
            if m and isinstance(values.get(m.group(1)), list):
                out.extend(values[m.group(1)])
            else:
                out.append(render(item, values))
        return out
    if isinstance(template, str):
        def sub(m: re.Match[str]) -> str:
            value = values.get(m.group(1))
            if value is None or isinstance(value, list):
                raise OpsError(f"template placeholder {m.group(0)} has no value")
            return value
        return PLACEHOLDER.sub(sub, template)
    return template


def load_template(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise OpsError(f"cannot read template {path}: {exc}") from exc


def split_refs(text: str | None) -> list[str]:
    """'a/b c/d,e/f' -> ['a/b', 'c/d', 'e/f']; each must be owner/slug."""
    refs = [r for r in re.split(r"[\s,]+", text or "") if r]
    for ref in refs:
        if ref.count("/") != 1 or ref.startswith("/") or ref.endswith("/"):
            raise OpsError(f"not an owner/slug reference: {ref!r}")
    return refs


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- push-kernel
def accelerator_warning(accelerator: str) -> str | None:
    """Why `accelerator` (a kernel-metadata machine_shape) will likely fail, with the fix;
    None when nothing is known against it. The push still goes through: the user decides."""
    reason = ACCELERATOR_WARNINGS.get(accelerator.lower())
    if reason:
        return f"ACCELERATOR={accelerator} will most likely fail. {reason} {ARCH_FIX}"
    if accelerator and not accelerator.lower().startswith("nvidia"):
        return (f"ACCELERATOR={accelerator} has no NVIDIA GPU: pixelplay trains with CUDA or, "
                f"very slowly, on the CPU. {ARCH_FIX}")
    return None


def checked_pin(pin: str) -> str:
    """PIN= (kernel-metadata docker_image_pinning_type): '' (Kaggle's default), 'original'
    (keep the image of the kernel's first version) or 'latest'. Raises OpsError otherwise."""
    pin = pin.strip()
    if pin and pin not in PIN_TYPES:
        raise OpsError(f"PIN={pin!r} is not a docker_image_pinning_type: use PIN=original "
                       "(keep the kernel's original image) or PIN=latest, or leave it empty.")
    return pin


def checked_docker_image(image: str) -> str:
    """DOCKER_IMAGE= (kernel-metadata docker_image), e.g.
    gcr.io/kaggle-gpu-images/python:<tag>; '' = Kaggle's default image."""
    image = image.strip()
    if any(c.isspace() for c in image):
        raise OpsError(f"DOCKER_IMAGE={image!r} is not one image name: give one "
                       "registry/name:tag, e.g. DOCKER_IMAGE=gcr.io/kaggle-gpu-images/python:TAG")
    return image


def split_models(text: str | None) -> list[str]:
    """MODELS='a/b/c/d/1 ...' -> model_sources; each must be a Kaggle Models instance
    version owner/model/framework/variation/version (version a number), as the CLI checks."""
    refs = [r for r in re.split(r"[\s,]+", text or "") if r]
    for ref in refs:
        parts = ref.split("/")
        if len(parts) != 5 or not all(parts) or not parts[4].isdigit():
            raise OpsError(f"MODELS: {ref!r} is not owner/model/framework/variation/version "
                           "(e.g. <owner>/<model>/transformers/<variation>/1: copy it from "
                           "the model's page on Kaggle, version number included).")
    return refs


def clear_outputs(nb: dict[str, Any]) -> dict[str, Any]:
    """The notebook with code-cell outputs and execution counts removed (in place)."""
    for cell in nb["cells"]:
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
    return nb


def cleared_notebook(path: Path) -> dict[str, Any]:
    """The notebook at `path`, outputs cleared."""
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise OpsError(f"cannot read notebook {path}: {exc}") from exc
    if not isinstance(nb, dict) or "cells" not in nb:
        raise OpsError(f"{path} is not a Jupyter notebook (no 'cells')")
    return clear_outputs(nb)


def notebook_for_push(path: Path, params: str) -> dict[str, Any]:
    """The notebook to push, outputs cleared: as it is, or with the values of P
    (``-p NAME VALUE ...``) injected the way papermill does (tools/kaggle_params.py, which
    checks them first). Prints the injected cell. Raises OpsError with the fix."""
    cleared = cleared_notebook(path)  # also checks that it is a notebook
    if not params.strip():
        return cleared
    # tools/ is sys.path[0] when this script runs; kaggle_params imports papermill and
    # pixelplay_lib when called
    from kaggle_params import ParamsError, notebook_with_parameters

    try:
        nb, _ = notebook_with_parameters(path, params)
    except ParamsError as exc:
        raise OpsError(f"{exc} (nothing was sent to Kaggle)") from None
    except ImportError as exc:
        raise OpsError(f"P= needs papermill and pixelplay_lib ({exc}): run it with the venv's "
                       "python (`make venv`)") from None
    cell = next(c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", []))
    print(f"Injected into {path.name} (papermill's injected-parameters cell after the "
          "parameters cell):\n" + "".join(f"  {line}\n" for line in cell.source.splitlines()),
          end="", flush=True)
    return clear_outputs(nb)


def checked_competition(slug: str) -> str:
    """COMPETITION= (a competition slug, as in kaggle.com/competitions/<slug>)."""
    slug = slug.strip()
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", slug):
        raise OpsError(f"COMPETITION={slug!r} is not a competition slug: give the name in "
                       f"the competition's URL, kaggle.com/competitions/<slug> (e.g. "
                       f"{COMPETITION})")
    return slug


def kernel_sources_for(nb: str, user: str, resume_from: str | None,
                       train_kernel: str | None, kaggle: Kaggle) -> list[str]:
    """train: its own previous run (resume); infer: the train kernel; others: none."""
    train_ref = f"{user}/{KERNEL_PREFIX}train"
    if nb == "train":
        if resume_from is not None:  # given explicitly (empty = no resume)
            return split_refs(resume_from)
        # The first push has no previous run to attach: ask before naming it. Kaggle
        # answers "not found" or "permission denied" for a kernel that does not exist.
        status = kaggle.run("kernels", "status", train_ref, echo=False)
        if status.rc != 0:
            answer = status.output.lower()
            if "not found" in answer or "denied" in answer:
                print(f"{train_ref} has no previous run yet: pushing without a resume source.")
                return []
            print(f"WARNING: could not check {train_ref} ({last_line(status.output)}); "
                  "attaching it anyway.")
        return [train_ref]
    if nb == "infer":
        return split_refs(train_ref if train_kernel is None else train_kernel)
    return []


def cmd_push_kernel(args: argparse.Namespace, kaggle: Kaggle, user: str) -> None:
    nb = args.nb
    notebooks = Path(args.notebooks)
    source = notebooks / f"{nb}.ipynb"
    if not source.is_file():
        have = sorted(p.stem for p in notebooks.glob("*.ipynb"))
        raise OpsError(
            f"{source} not found (notebooks there: {', '.join(have) or 'none'}). "
            "Pair/sync the notebooks first (jupytext, e.g. `make sync`)."
        )
    paired = notebooks / f"{nb}.py"
    if paired.is_file() and paired.stat().st_mtime > source.stat().st_mtime + 2:
        print(f"WARNING: {paired} is newer than {source}: sync the pair before pushing.")
    notebook = notebook_for_push(source, args.params)

    accelerator = args.accelerator.strip()
    warning = accelerator_warning(accelerator)
    if warning:
        print(f"WARNING: {warning}")
    values: dict[str, str | list[str]] = {
        "KAGGLE_USER": user,
        "NB": nb,
        "COMPETITION": checked_competition(args.competition),
        "ACCELERATOR": accelerator,
        "DOCKER_IMAGE": checked_docker_image(args.docker_image),
        "PIN": checked_pin(args.pin),
        "DATASETS": split_refs(args.datasets),
        "MODELS": split_models(args.models),
    }
    # The first requests: everything above is checked locally.
    check_lib_ready(kaggle, f"{user}/{LIB_SLUG}")
    values["KERNEL_SOURCES"] = kernel_sources_for(nb, user, args.resume_from,
                                                  args.train_kernel, kaggle)
    meta = render(load_template(Path(args.template)), values)
    # Empty = Kaggle's choice: ACCELERATOR= its default GPU, DOCKER_IMAGE=/PIN= its image.
    for key in ("machine_shape", "docker_image", "docker_image_pinning_type"):
        if not meta.get(key):
            meta.pop(key, None)
    meta["dataset_sources"] = list(dict.fromkeys(meta.get("dataset_sources", [])))

    stage = Path(args.stage)
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    write_json(stage / meta["code_file"], notebook)
    write_json(stage / "kernel-metadata.json", meta)
    print(f"Staged {stage}: {meta['code_file']} + kernel-metadata.json "
          f"(id {meta['id']}, kernel_sources {meta.get('kernel_sources') or 'none'})")

    result = kaggle.run("kernels", "push", "-p", str(stage))
    kaggle.check("kaggle kernels push", result)
    errors = [ln for ln in result.output.splitlines() if "push error" in ln.lower()]
    if errors:
        raise OpsError(errors[0].strip())
    for line in result.output.splitlines():
        if "not valid" in line and "sources" in line:
            print(f"WARNING: {line.strip()}")
    if "successfully" not in result.output:
        raise OpsError(f"kaggle kernels push: unexpected answer: {last_line(result.output)}")
    print(f"Pushed {meta['id']}. Next: make kernel-status NB={nb} [WAIT=1]")


# --------------------------------------------------------------------------- kernel-status
STATUS_RE = re.compile(r'has status "([^"]*)"')
FAILURE_RE = re.compile(r'Failure message: "(.*)"', re.S)
RUNNING = {"queued", "running", "new_script"}
FAILED = {"error", "cancel_requested", "cancel_acknowledged"}


def parse_status(output: str) -> tuple[str, str]:
    """('complete' | 'error' | ..., failure message) from ``kaggle kernels status``."""
    m = STATUS_RE.search(output)
    if not m:
        raise OpsError(f"kaggle kernels status: unexpected answer: {last_line(output)}")
    status = m.group(1).rsplit(".", 1)[-1].lower()  # "KernelWorkerStatus.ERROR" -> "error"
    failure = FAILURE_RE.search(output)
    return status, failure.group(1).strip() if failure else ""


def cmd_kernel_status(args: argparse.Namespace, kaggle: Kaggle, user: str) -> None:
    ref = f"{user}/{KERNEL_PREFIX}{args.nb}"
    deadline = time.monotonic() + args.timeout
    while True:
        result = kaggle.run("kernels", "status", ref)
        kaggle.check("kaggle kernels status", result)
        status, failure = parse_status(result.output)
        if status in FAILED:
            raise OpsError(f"{ref} has status {status}: {failure or '(no message)'}"
                           f" -- see `kaggle kernels logs {ref}`")
        if failure:
            print(f"WARNING: {ref} reports a failure message: {failure}")
        if not (args.wait and status in RUNNING) or time.monotonic() >= deadline:
            break
        time.sleep(args.poll)
    if status == "complete":
        print(f"Done. Next: make kernel-output NB={args.nb}")


# --------------------------------------------------------------------------- kernel-output
def cmd_kernel_output(args: argparse.Namespace, kaggle: Kaggle, user: str) -> None:
    ref = f"{user}/{KERNEL_PREFIX}{args.nb}"
    out = Path(args.out or f"runs/kaggle-{args.nb}")
    out.mkdir(parents=True, exist_ok=True)
    result = kaggle.run("kernels", "output", ref, "-p", str(out), "-o")
    kaggle.check("kaggle kernels output", result)
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    print(f"{len(files)} file(s) in {out}: " + ", ".join(map(str, files[:20]))
          + (" ..." if len(files) > 20 else ""))
    report_submissions(out)


def report_submissions(out: Path) -> None:
    """Check each downloaded submission (a CSV with its X.check.json beside it) against
    its sidecar and print the result with the `make submit` line to use."""
    pairs = [(sidecar.with_name(sidecar.name.removesuffix(".check.json") + ".csv"), sidecar)
             for sidecar in sorted(out.rglob("*.check.json"))]
    pairs = [(csv, sidecar) for csv, sidecar in pairs if csv.is_file()]
    sub = submission_module() if pairs else None
    for csv, sidecar in pairs:
        line = f"make submit FILE={shlex.quote(str(csv))}"
        try:
            expected = sub.read_check(sidecar)
        except sub.SubmissionError as exc:
            print(f"WARNING: {exc}; check it against the competition folder: {line} "
                  "DATA=<competition folder>")
            continue
        problems = sub.check_submission(csv, expected.ids, expected.classes, expected.header)
        if problems:
            print(f"WARNING: {csv} would not score ({len(problems)} problem(s), checked "
                  f"against {sidecar.name}):" + "".join(f"\n  - {p}" for p in problems)
                  + f"\nmake submit refuses it ({line}).")
        else:
            print(f"{csv}: OK ({len(expected.ids)} rows, one per test image, labels among "
                  f"the {len(expected.classes)} classes). Next: {line}")
    default = out / "submission.csv"
    if default.is_file() and default not in [csv for csv, _ in pairs]:
        print(f"Next: make submit FILE={shlex.quote(str(default))} DATA=<competition folder> "
              f"(no {default.stem}.check.json beside it to check it against)")


# --------------------------------------------------------------------------- submit
def submission_module() -> Any:
    """pixelplay_lib.submission (the venv's package), imported when needed."""
    try:
        from pixelplay_lib import submission
    except ImportError as exc:
        raise OpsError(f"checking a submission needs pixelplay_lib ({exc}): run this with the "
                       "venv's python (`make venv`)") from None
    return submission


def checked_submission(path: Path, data: str, competition: str) -> int:
    """Check the CSV at `path` against its X.check.json, or against the competition folder
    `data` when given; returns its row count. Raises OpsError listing the wrong rows, or
    saying how to give something to check against."""
    sub = submission_module()
    try:
        expected = sub.expected_from(path, data)
    except sub.SubmissionError as exc:
        raise OpsError(f"{exc}: make submit FILE={shlex.quote(str(path))} DATA=<competition "
                       f"folder> (e.g. from `kaggle competitions download {competition}`). "
                       "Nothing was sent to Kaggle.") from None
    problems = sub.check_submission(path, expected.ids, expected.classes, expected.header)
    if problems:
        raise OpsError(f"{path} would not score, nothing was sent to Kaggle (checked against "
                       f"{expected.source}):" + "".join(f"\n  - {p}" for p in problems))
    print(f"{path}: {len(expected.ids)} rows, one per test image, labels among the "
          f"{len(expected.classes)} classes (checked against {expected.source}).")
    return len(expected.ids)


def cmd_submit(args: argparse.Namespace, kaggle: Kaggle, user: str) -> None:
    path = Path(args.file or "runs/kaggle-infer/submission.csv")
    if not path.is_file():
        raise OpsError(f"{path} not found: run `make kernel-output NB=infer` first, "
                       "or pass FILE=<submission.csv>.")
    competition = checked_competition(args.competition)
    rows = checked_submission(path, args.data, competition)
    message = args.message or f"pixelplay {path.name} ({rows} rows) {git_rev(REPO)}".strip()
    result = kaggle.run("competitions", "submit", competition, "-f", str(path),
                        "-m", message)
    kaggle.check("kaggle competitions submit", result)


# --------------------------------------------------------------------------- dataset status
# `kaggle datasets status` prints the DatabundleVersionStatus name in lower case (kaggle
# 2.2.5, dataset_status): not_yet_persisted, blobs_received, blobs_decompressed,
# blobs_copied_to_sds, individual_blobs_compressed, reprocessing (pending), ready, failed,
# deleted; an unknown dataset is an HTTP 404 ("... not found", exit 1).
DATASET_READY = "ready"
DATASET_FAILED = {"failed", "deleted"}


def dataset_status(kaggle: Kaggle, ref: str) -> str | None:
    """The status word of dataset `ref` (owner/slug), None when Kaggle does not know it.
    Raises OpsError when the CLI fails otherwise or answers something unexpected."""
    result = kaggle.run("datasets", "status", ref, echo=False)
    if result.rc != 0:
        if "not found" in result.output.lower():
            return None
        first = next((ln.strip() for ln in result.output.splitlines() if ln.strip()), "")
        raise OpsError(f"kaggle datasets status {ref} failed: {first or '(no output)'}")
    status = last_line(result.output).lower()
    if not re.fullmatch(r"[a-z_]+", status):
        raise OpsError(f"kaggle datasets status {ref}: unexpected answer: {status}")
    return status


def check_lib_ready(kaggle: Kaggle, ref: str) -> None:
    """Refuse (OpsError with the fix) to push a kernel whose lib dataset is missing, failed
    or still being processed: the kernel would import an old pixelplay_lib, or none."""
    status = dataset_status(kaggle, ref)
    if status is None:
        raise OpsError(f"the dataset {ref} does not exist (the kernel imports pixelplay_lib "
                       "from it): run `make push-lib` first.")
    if status in DATASET_FAILED:
        raise OpsError(f"the dataset {ref} is {status} on Kaggle: run `make push-lib` again.")
    if status != DATASET_READY:
        raise OpsError(f"the dataset {ref} is not ready (status {status}): Kaggle is still "
                       "processing its newest version, which the kernel would miss. Wait a "
                       "minute and push again (`make push-lib` waits until it is ready).")
    print(f"{ref} is ready.")


def wait_until_ready(kaggle: Kaggle, ref: str, poll: float, timeout: float) -> None:
    """Poll `kaggle datasets status ref` every `poll` seconds until it is ready; raises
    OpsError on failed/deleted or after `timeout` seconds. "Not found" counts as pending:
    a dataset just created may not be visible yet."""
    start = time.monotonic()
    while True:
        status = dataset_status(kaggle, ref)
        elapsed = time.monotonic() - start
        if status == DATASET_READY:
            print(f"{ref} is ready ({elapsed:.0f} s).")
            return
        if status in DATASET_FAILED:
            raise OpsError(f"Kaggle could not process {ref} (status {status}): see "
                           f"https://www.kaggle.com/datasets/{ref}, then run `make push-lib` "
                           "again.")
        shown = status or "not visible yet"
        if elapsed + poll > timeout:
            raise OpsError(f"{ref} is still {shown} after {elapsed:.0f} s (the upload went "
                           f"through; Kaggle is still processing it): check with `kaggle "
                           f"datasets status {ref}` before make push-kernel, or wait longer "
                           "(LIB_TIMEOUT=<seconds>).")
        print(f"{ref}: {shown}; next check in {poll:g} s ({elapsed:.0f} s of at most "
              f"{timeout:g} s)", flush=True)
        time.sleep(poll)


# --------------------------------------------------------------------------- push-lib
def build_wheel(python: str, src: Path, dest: Path) -> Path:
    """``pip wheel <src> --no-deps -w <dest>``; returns the one wheel, checked."""
    # setuptools builds in <src>/build/: files left there by an earlier build would
    # end up in the wheel (e.g. a module since deleted), so start from a clean slate.
    for scratch in [src / "build" / "lib", *(src / "build").glob("bdist.*")]:
        shutil.rmtree(scratch, ignore_errors=True)
    base = [python, "-m", "pip", "wheel", str(src), "--no-deps", "-w", str(dest), "-q",
            "--disable-pip-version-check"]
    # First offline (the venv's setuptools, no index); if that cannot build the
    # project, let pip fetch the build requirements into an isolated environment.
    offline = [*base, "--no-build-isolation", "--no-index"]
    print("+ " + shlex.join(["pip", *offline[3:]]), flush=True)
    if subprocess.run(offline, check=False).returncode != 0:
        print("retrying with build isolation", flush=True)
        if subprocess.run(base, check=False).returncode != 0:
            raise OpsError(f"pip wheel {src} failed")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise OpsError(f"expected one wheel in {dest}, found {[w.name for w in wheels]}")
    with zipfile.ZipFile(wheels[0]) as zf:
        names = zf.namelist()
    bad = [n for n in names if "__pycache__" in n or n.endswith(".pyc")
           or n.split("/")[0] in ("tests", "notebooks", "build")]
    if bad:
        raise OpsError(f"{wheels[0].name} contains files it must not ship: {bad[:5]}")
    return wheels[0]


def cmd_push_lib(args: argparse.Namespace, kaggle: Kaggle, user: str) -> None:
    stage = Path(args.stage)
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    wheel = build_wheel(args.python, Path(args.src), stage)
    meta = render(load_template(Path(args.template)), {"KAGGLE_USER": user})
    write_json(stage / "dataset-metadata.json", meta)
    print(f"Staged {stage}: {wheel.name} + dataset-metadata.json (id {meta['id']})")

    # `datasets create` first asks GetDatasetStatus and, when the slug exists, answers
    # "... is already in use by a dataset" without uploading: then add a version.
    result = kaggle.run("datasets", "create", "-p", str(stage))
    kaggle.check("kaggle datasets create", result)
    if "already in use" in result.output:
        version = wheel.name.split("-")[1] if wheel.name.count("-") >= 2 else "?"
        message = args.message or f"pixelplay {version} {git_rev(REPO)}".strip()
        print(f"{meta['id']} exists: uploading a new version.")
        result = kaggle.run("datasets", "version", "-p", str(stage), "-m", message)
        kaggle.check("kaggle datasets version", result)
    errors = [ln for ln in result.output.splitlines() if "error:" in ln.lower()]
    if errors:
        raise OpsError(errors[0].strip())
    if "being created" not in result.output:
        raise OpsError(f"kaggle datasets: unexpected answer: {last_line(result.output)}")
    print(f"Uploaded {wheel.name} to {meta['id']}; waiting until Kaggle has processed it.",
          flush=True)
    wait_until_ready(kaggle, meta["id"], args.poll, args.timeout)
    print(f"Published {meta['id']} ({wheel.name}). Next: make push-kernel")


def cmd_whoami(args: argparse.Namespace, kaggle: Kaggle, user: str) -> None:
    print(user)


# --------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kaggle", help="kaggle executable (default: next to this python)")
    p.add_argument("--user", help="Kaggle user name (default: from the credentials)")
    sub = p.add_subparsers(dest="command", required=True)

    def with_nb(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--nb", default="train",
                        help="notebook: train | infer | explore | quick (notebooks/<nb>.ipynb)")
        return sp

    lib = sub.add_parser("push-lib", help="publish the wheel as <user>/pixelplay-lib")
    lib.add_argument("--python", default=sys.executable, help="python whose pip builds")
    lib.add_argument("--src", default=str(REPO), help="project to build (pyproject.toml)")
    lib.add_argument("--stage", default="build/kaggle-lib")
    lib.add_argument("--template", default=str(REPO / "dataset-metadata.json"))
    lib.add_argument("-m", "--message", default="", help="version notes")
    lib.add_argument("--poll", type=float, default=10.0,
                     help="seconds between `datasets status` checks")
    lib.add_argument("--timeout", type=float, default=900.0,
                     help="seconds to wait for the new version to be ready")
    lib.set_defaults(func=cmd_push_lib)

    push = with_nb(sub.add_parser("push-kernel", help="push notebooks/<nb>.ipynb"))
    push.add_argument("--notebooks", default="notebooks")
    push.add_argument("--accelerator", default=DEFAULT_ACCELERATOR,
                      help="machine_shape, e.g. NvidiaTeslaT4; empty: Kaggle's default")
    push.add_argument("--datasets", default="", help="extra dataset_sources (owner/slug ...)")
    push.add_argument("--models", default="",
                      help="model_sources: owner/model/framework/variation/version ...")
    push.add_argument("--docker-image", default="",
                      help="docker_image; empty: Kaggle's default image")
    push.add_argument("--pin", default="", help="docker_image_pinning_type: original | latest")
    push.add_argument("--resume-from", default=None,
                      help="train only: kernel whose output to attach (default: its own "
                           "previous run; empty: none)")
    push.add_argument("--train-kernel", default=None,
                      help="infer only: kernel with the model (default <user>/pixelplay-train)")
    push.add_argument("--params", default="",
                      help="P: -p NAME VALUE / -r NAME VALUE / -y YAML, injected as papermill "
                           "does")
    push.add_argument("--competition", default=COMPETITION, help="competition_sources slug")
    push.add_argument("--stage", default=None, help="default build/kernel-<nb>")
    push.add_argument("--template", default=str(REPO / "kernel-metadata.json"))
    push.set_defaults(func=cmd_push_kernel)

    status = with_nb(sub.add_parser("kernel-status", help="status; exit 1 on error"))
    status.add_argument("--wait", action="store_true", help="poll until it stops running")
    status.add_argument("--poll", type=float, default=60.0, help="seconds between polls")
    status.add_argument("--timeout", type=float, default=13 * 3600, help="give up waiting")
    status.set_defaults(func=cmd_kernel_status)

    out = with_nb(sub.add_parser("kernel-output", help="download the kernel's outputs"))
    out.add_argument("--out", default="", help="default runs/kaggle-<nb>")
    out.set_defaults(func=cmd_kernel_output)

    submit = sub.add_parser("submit", help="check a CSV, then submit it to the competition")
    submit.add_argument("--file", default="", help="default runs/kaggle-infer/submission.csv")
    submit.add_argument("--data", default="",
                        help="competition folder to check against (default: X.check.json "
                             "beside the file)")
    submit.add_argument("-m", "--message", default="")
    submit.add_argument("--competition", default=COMPETITION)
    submit.set_defaults(func=cmd_submit)

    sub.add_parser("whoami", help="print the Kaggle user name").set_defaults(func=cmd_whoami)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    nb = getattr(args, "nb", "train")
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,40}", nb):
        print(f"ERROR: NB must be a notebook name like train, infer, explore (got {nb!r})",
              file=sys.stderr)
        return 2
    if getattr(args, "stage", "") is None:
        args.stage = f"build/kernel-{nb}"
    try:
        creds = require_credentials()  # before any CLI call
        user = resolve_user(args.user, creds)
        kaggle = Kaggle(find_kaggle_exe(args.kaggle), creds)
        args.func(args, kaggle, user)
    except OpsError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
