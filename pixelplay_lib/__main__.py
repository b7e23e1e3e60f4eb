"""Command line: `python -m pixelplay_lib {train,predict,fuse,score,demo-data} --flags`.

The flags of train and predict are the fields of Config (`data_root` -> `--data-root`).
Each subcommand is one entry of COMMANDS (its help, its flags, what it runs): adding one is
adding an entry. Flags are never abbreviated; an unknown one stops the command (exit 2)
with the closest known flags.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

from .config import PREDICT_FIELDS, PRESETS, Config, field_help, make_config

PROG = "python -m pixelplay_lib"


class StrictParser(argparse.ArgumentParser):
    """An ArgumentParser that never guesses: no prefix matching (argparse would take
    `--lr-gamm` for `--lr-gamma`), and an unknown flag stops with the closest known ones
    (difflib), as config.check_parameters does for notebook parameters. Exit status 2, as
    for any usage error. Subparsers made by add_subparsers are of this class too."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        # A subcommand's parser checks its own flags: it knows the ones to suggest. First,
        # so that a typo is named before argparse's own complaints (a required flag missing).
        if self._subparsers is None and args is not None:
            unknown = [a for a in args if a.startswith("--") and a != "--"
                       and a.split("=", 1)[0] not in self._option_string_actions]
            if unknown:
                self.error(self.unknown_message(unknown))
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(self.unknown_message(extras))
        return namespace, extras

    def unknown_message(self, extras: list[str]) -> str:
        """'unknown flag --lr-gamm (did you mean --lr-gamma?)' for each unknown flag of
        `extras` (`--flag=value` counts as --flag), or the stray values when no flag."""
        known = [o for action in self._actions for o in action.option_strings]
        flags = [a.split("=", 1)[0] for a in extras if a.startswith("-")]
        if not flags:
            return f"unexpected value(s): {' '.join(extras)}"
        named = []
        for flag in flags:
            close = difflib.get_close_matches(flag, known, n=3, cutoff=0.6)
            named.append(flag + (f" (did you mean {' or '.join(close)}?)" if close else ""))
        return f"unknown flag{'s' if len(named) > 1 else ''} {', '.join(named)}"

    def error(self, message: str):
        # No usage block: train's would list every Config flag above the one line that matters.
        self.exit(2, f"{self.prog}: error: {message}\n(`{self.prog} --help` lists every "
                     "flag)\n")


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    # Values stay text here: Config converts them (config.coerce_value), so the CLI, papermill
    # and JSON accept the same spellings and a bad one gets the same message naming the field.
    described = field_help()
    for f in fields(Config):
        default = f.default if f.default is not MISSING else None
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        text = described.get(f.name, "").replace("%", "%%")
        # SUPPRESS: only flags given on the command line override presets / saved configs.
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name,
                            default=argparse.SUPPRESS, help=f"{text} (default: {shown})")
    parser.add_argument("--preset", default="", choices=list(PRESETS),
                        help="start from a named set of defaults (demo: small CPU recipe)")


def run_config_command(entry: Callable[[Config], Any], args: dict[str, Any],
                       argv: list[str]) -> int:
    """train / predict: the config from the flags, then `entry(cfg)` in this process, or
    under torchrun once per device (devices > 1)."""
    from . import distributed

    cfg = make_config(**args)
    world = distributed.world_size_for(cfg.devices)
    if world > 1 and not distributed.in_launched_process():
        return distributed.relaunch_with_torchrun(world, argv)
    entry(cfg)
    return 0


def run_train(args: dict[str, Any], argv: list[str]) -> int:
    from .train import train

    return run_config_command(train, args, argv)


def run_predict(args: dict[str, Any], argv: list[str]) -> int:
    from .predict import predict

    return run_config_command(predict, args, argv)


# The Config fields `fuse` takes (the fusion's own knobs and where its files go).
FUSE_FIELDS = ("experts", "zs_gamma", "transductive", "zs_folds", "seed", "name", "overwrite",
               "output_dir")


def add_fuse_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", required=True, help="a run's output holding arrays/ "
                        "(train, then predict; a Kaggle kernel's output after make "
                        "kernel-output)")
    described = field_help()
    defaults = {"name": "fused", "output_dir": ""}
    for name in FUSE_FIELDS:
        default = defaults.get(name, getattr(Config, name))
        text = {"output_dir": "where the files go; empty: --run-dir"}.get(
            name, described.get(name, "")).replace("%", "%%")
        parser.add_argument("--" + name.replace("_", "-"), dest=name, default=default,
                            help=f"{text} (default: {default})")


def run_fuse(args: dict[str, Any], argv: list[str]) -> int:
    from .fuse import fuse

    run_dir = args.pop("run_dir")
    fuse(run_dir, make_config(**args))
    return 0


def add_score_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--submission", required=True)
    parser.add_argument("--answers", default="", help="image_id,class of the test images "
                        "(the demo data's answer_key.csv); empty: Special-Package scores only")
    parser.add_argument("--data-root", default="", help="to split seen / unseen classes")
    parser.add_argument("--input-root", default="/kaggle/input")


def run_score(args: dict[str, Any], argv: list[str]) -> int:
    from .score import score

    print(json.dumps(score(**args), indent=2))
    return 0


def add_demo_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo-data")
    parser.add_argument("--train-per-class", type=int, default=48)
    parser.add_argument("--n-test", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="processes drawing the images (the same files for any number)")


def run_demo_data(args: dict[str, Any], argv: list[str]) -> int:
    from .demo import write_demo_dataset

    root = write_demo_dataset(Path(args["out"]), train_per_class=args["train_per_class"],
                              n_test=args["n_test"], seed=args["seed"],
                              workers=args["workers"])
    print(f"demo data written: {root} (answer key: {Path(args['out']) / 'answer_key.csv'})")
    return 0


@dataclass(frozen=True)
class Command:
    """One subcommand: `help` (one line in the list), `add_flags(parser)`, `run(flags as a
    dict, the raw argv) -> exit status`, and more text for its own --help."""

    help: str
    add_flags: Callable[[argparse.ArgumentParser], None]
    run: Callable[[dict[str, Any], list[str]], int]
    description: str = ""


PREDICT_APPLIES = (
    "The model's settings (architecture, image size, trainable blocks, augmentation, the "
    "experts and their prompts) come from the run's model.pt / fusion.pt. Of the flags below "
    "only these apply: " + ", ".join("--" + f.replace("_", "-") for f in PREDICT_FIELDS)
    + ". --vl-model applies when it names another image-text model than the trained one (its "
    "class text embeddings must match those the fusion was fitted with). Every other flag is "
    "ignored; one that changes the model, given with another value than the trained one, is "
    "named in a warning.")

COMMANDS: dict[str, Command] = {
    "train": Command("train (or resume) the network into --output-dir, then fit the fusion of "
                     "the experts", add_config_flags, run_train),
    "predict": Command("the fused decision (or votes) for every test image; writes "
                       "submission.csv", add_config_flags, run_predict, PREDICT_APPLIES),
    "fuse": Command("refit and reapply the fusion from a run's saved arrays (CPU, seconds); "
                    "writes <name>.csv with its fusion, summary and Special-Package scores",
                    add_fuse_flags, run_fuse),
    "score": Command("accuracy of a submission against an answer key, and of every expert on "
                     "the Special-Package photos", add_score_flags, run_score),
    "demo-data": Command("write the generated demo dataset", add_demo_flags, run_demo_data),
}


def build_parser() -> StrictParser:
    parser = StrictParser(prog=PROG, description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        text = command.help + (". " + command.description if command.description else "")
        command.add_flags(sub.add_parser(name, help=command.help, description=text))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = vars(build_parser().parse_args(argv))
    command = args.pop("command")

    from .data import DataError
    from .experts.arrays import ArraysError
    from .experts.imagetext import ModelNotFound
    from .model import WeightsUnavailable
    from .runtime import UnsupportedGPU
    from .train import ConfigMismatch

    try:
        return COMMANDS[command].run(args, argv)
    except (DataError, WeightsUnavailable, ConfigMismatch, ModelNotFound, UnsupportedGPU,
            ArraysError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: files are written atomically, nothing is half-done
        print(f"interrupted. {command}: run the same command again"
              + (" to resume from the newest checkpoint." if command == "train" else "."),
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
