"""Command line: `python -m pixelplay_lib {train,predict,score,demo-data} --flags`.

The flags of train and predict are the fields of Config (`data_root` -> `--data-root`).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import MISSING, fields
from pathlib import Path

from .config import PRESETS, Config, field_help, make_config


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pixelplay_lib", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text, more in (
            ("train", "train (or resume) the network into --output-dir, then fit the fusion "
             "of the experts", ""),
            ("predict", "the fused decision (or votes) for every test image; writes "
             "submission.csv", "The run's training settings (arch, image size, experts, "
             "image-text model...) come from its model.pt / fusion.pt: flags that change the "
             "model are ignored here. What applies: paths, devices, workers, batch sizes, "
             "tta_votes, vote, zero_shot, zs_gamma, model_path.")):
        add_config_flags(sub.add_parser(name, help=text, description=(text + ". " + more)))
    score = sub.add_parser("score", help="accuracy of a submission against an answer key, "
                           "and of every expert on the Special-Package photos")
    score.add_argument("--submission", required=True)
    score.add_argument("--answers", default="", help="image_id,class of the test images "
                       "(the demo data's answer_key.csv); empty: Special-Package scores only")
    score.add_argument("--data-root", default="", help="to split seen / unseen classes")
    score.add_argument("--input-root", default="/kaggle/input")
    demo = sub.add_parser("demo-data", help="write the generated demo dataset")
    demo.add_argument("--out", default="demo-data")
    demo.add_argument("--train-per-class", type=int, default=48)
    demo.add_argument("--n-test", type=int, default=500)
    demo.add_argument("--seed", type=int, default=0)
    argv = sys.argv[1:] if argv is None else argv
    args = vars(parser.parse_args(argv))
    command = args.pop("command")

    from .data import DataError
    from .experts.imagetext import ModelNotFound
    from .model import WeightsUnavailable
    from .runtime import UnsupportedGPU
    from .train import ConfigMismatch

    try:
        if command in ("train", "predict"):
            from . import distributed

            cfg = make_config(**args)
            world = distributed.world_size_for(cfg.devices)
            if world > 1 and not distributed.in_launched_process():
                return distributed.relaunch_with_torchrun(world, argv)
            if command == "train":
                from .train import train

                train(cfg)
            else:
                from .predict import predict

                predict(cfg)
            return 0
        if command == "score":
            from .score import score

            print(json.dumps(score(**args), indent=2))
            return 0
        from .demo import write_demo_dataset

        root = write_demo_dataset(Path(args["out"]), train_per_class=args["train_per_class"],
                                  n_test=args["n_test"], seed=args["seed"])
        print(f"demo data written: {root} (answer key: {Path(args['out']) / 'answer_key.csv'})")
        return 0
    except (DataError, WeightsUnavailable, ConfigMismatch, ModelNotFound, UnsupportedGPU,
            FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: files are written atomically, nothing is half-done
        print(f"interrupted. {command}: run the same command again"
              + (" to resume from the newest checkpoint." if command == "train" else "."),
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
