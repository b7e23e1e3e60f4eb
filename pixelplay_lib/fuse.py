"""`python -m pixelplay_lib fuse --run-dir DIR`: refit and reapply the fusion from saved arrays.

A run's arrays (experts/arrays.py: embeddings, network log-probabilities, labels, class text
embeddings; train writes the train and val pools, predict the test and Special-Package
pools) hold everything the fusion needs. This command refits the protocol on them, lets the
fusion choose on the test pool, and writes a submission with its files beside it, on a CPU
in seconds, with no image, network or GPU: a Kaggle kernel's downloaded output is enough
(`make kernel-output NB=quick`, then `fuse --run-dir runs/kaggle-quick --name ...`).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from . import experts as bridge
from .checkpoint import atomic_write_text
from .config import Config
from .experts import arrays, fusion
from .predict import write_outputs
from .runtime import setup_logging
from .submission import name_problem

log = logging.getLogger("pixelplay")


def fuse(run_dir: str, cfg: Config) -> dict[str, Any]:
    """Refit the fusion on run_dir's arrays and write submission `cfg.name` into
    cfg.output_dir (default run_dir). Fields used: experts (auto = those of run_dir's
    fusion.pt, else every one the arrays allow), zs_gamma (auto: chosen on the test pool |
    protocol | a number), transductive, zs_folds, seed, name, overwrite.
    Returns the summary (also <name>.summary.json). Raises arrays.ArraysError (missing or
    inconsistent arrays), ValueError (an unknown expert, the name taken)."""
    setup_logging()
    started = time.monotonic()
    out = Path(cfg.output_dir or run_dir)
    problem = name_problem(out, cfg.name, cfg.overwrite)
    if problem:
        raise ValueError(problem)
    run = arrays.load(run_dir)
    names = chosen_experts(cfg.experts, run, Path(run_dir))
    log.info("fuse: %s; experts %s", json.dumps(arrays.summary(run)), ", ".join(names))
    state = arrays.fit(run, names, cfg.zs_folds, cfg.seed, cfg.transductive,
                       bridge.policy(cfg))
    if cfg.zs_gamma not in ("auto", "protocol"):
        state.gamma = float(cfg.zs_gamma)
    summary: dict[str, Any] = {"run_dir": str(run_dir), "experts": names}
    if "test" in run.pools:
        pred, _ = arrays.apply(state, run, "test", choose=True)
        test = run.pools["test"]
        write_outputs(out, cfg.name, pred, [str(i) for i in test.ids], run.classes,
                      run.unseen, summary, state)
    else:
        fusion.save_fusion(state, out, f"{cfg.name}.fusion")
        summary["note"] = "no test pool in the arrays (run predict first): fusion only"
    if "special" in run.pools:
        special = run.pools["special"]
        pred, alone = arrays.apply(state, run, "special", choose=False)
        table = bridge.table_for(pred, alone, special.labels, run.classes, run.unseen)
        summary["special_package"] = bridge.write_special(table, out, cfg.name)
    for line in fusion.report_lines(state):
        log.info(line)
    summary["seconds"] = round(time.monotonic() - started, 2)
    atomic_write_text(out / f"{cfg.name}.summary.json",
                      json.dumps(summary, indent=2, default=str) + "\n")
    log.info("fuse: done in %.1f s", summary["seconds"])
    return summary


def chosen_experts(spec: str, run: arrays.RunArrays, run_dir: Path) -> list[str]:
    """The experts to fuse: `experts` auto = those of run_dir's fusion.pt (what the run
    chose to fuse), else every expert the arrays allow; a comma list is checked against
    what the arrays allow (fusion.parse_experts' message names the field)."""
    available = run.available()
    if spec.strip() == "auto" and (run_dir / "fusion.pt").is_file():
        saved = fusion.load_fusion(run_dir).names
        return [n for n in saved if n in available] or fusion.parse_experts(spec, available)
    return fusion.parse_experts(spec, available)
