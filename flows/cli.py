"""The ``fastif`` command line.

    fastif datasets export NAME --out DIR [--noise 0.1 --seed 0]

Exit codes: 0 success; 2 bad input or settings (one clear message, no traceback unless
``--debug``); 1 any other failure.
"""
from __future__ import annotations

import argparse
import sys
import traceback

from fastif_engine import __version__
from fastif_engine.errors import FastIFError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastif", description="Find the training examples that make a "
                                     "model wrong (FastIF influence functions).")
    parser.add_argument("--version", action="version", version=f"fastif {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    datasets = commands.add_parser("datasets", help="export the bundled real datasets")
    ds_commands = datasets.add_subparsers(dest="datasets_command", metavar="ACTION", required=True)
    export = ds_commands.add_parser("export", help="write train/valid/test parquet files")
    export.add_argument("name", choices=["rotten-tomatoes", "fashion-mnist", "digits"])
    export.add_argument("--out", required=True, help="folder for train/valid/test.parquet")
    export.add_argument("--noise", type=float, default=0.0, help="fraction of training labels to flip")
    export.add_argument("--noise-mode", choices=["uniform", "pairwise"], default="uniform",
                        help="uniform: to any other class; pairwise: class c to c+1 (class-conditional)")
    export.add_argument("--seed", type=int, default=0)
    export.add_argument("--max-train", type=int, default=None,
                        help="keep a random subset of this many training rows (valid/test in proportion)")
    export.set_defaults(handler=_datasets_export)
    return parser


def _datasets_export(args: argparse.Namespace) -> int:
    from fastif_engine.datasets import export

    paths = export(args.name, args.out, noise=args.noise, seed=args.seed, noise_mode=args.noise_mode,
                   max_train=args.max_train)
    import pandas as pd

    for split, path in paths.items():
        frame = pd.read_parquet(path, columns=["label"] + (["noisy"] if split == "train" else []))
        extra = f", {int(frame['noisy'].sum())} labels flipped" if split == "train" else ""
        print(f"{split}: {len(frame)} rows{extra} -> {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.handler(args)
    except (FastIFError, ValueError, FileNotFoundError) as exc:
        if args.debug:
            traceback.print_exc()
        print(f"fastif: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
