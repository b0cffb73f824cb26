"""The ``fastif`` command line (every option: docs/reference/cli.md).

    fastif clean   --train T --valid V [--test X] --out DIR --model NAME [options]
    fastif explain --run DIR --test-id ID [--top 10]
    fastif apply   --fixes DIR/fixes.csv --train T --out CORRECTED
    fastif demo    [--out DIR]
    fastif datasets export NAME --out DIR [--noise 0.1 --seed 0]

Exit codes: 0 success; 2 bad input or settings (one clear message, no traceback unless
``--debug``); 1 a failure while running (the message says what failed).
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
import traceback
from pathlib import Path

import flows  # noqa: F401  (pins the embedded-server settings before prefect is imported)
from fastif_engine import __version__
from fastif_engine.data.datasets import DATASETS, NOISE_MODES
from fastif_engine.errors import FastIFError

# The demo's data: Rotten Tomatoes with one class under-reported (30% of its training rows carry the
# other label), the systematic kind of label error a rushed annotator makes. Every solver setting is the
# default `fastif clean` uses; k = 200 candidates keeps the influence stage short on two cores, and 5
# retrain seeds make the verdict's interval narrow enough to read.
DEMO_NOISE = dict(noise=0.3, noise_mode="class-conditional", seed=0)
DEMO_SETTINGS = dict(k=200, seeds=5)


class _NoTracebacks(logging.Filter):
    """Keep Prefect's failure messages but drop their tracebacks (shown with --debug)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info, record.exc_text = None, None
        return True


def _add_clean_options(p: argparse.ArgumentParser) -> None:
    """One option per field of :class:`fastif_engine.config.CleanConfig`, in its group, with its help and default.

    Every option defaults to ``None`` ("not given"), so a YAML ``--config`` fills what the command
    line leaves out and the settings model supplies the rest."""
    from fastif_engine.config import GROUPS, CleanConfig

    groups = {name: p.add_argument_group(title) for name, title in GROUPS.items()}
    groups["data"].add_argument("--config", help="YAML file with any of these settings (flags win)")
    for name, field in CleanConfig.model_fields.items():
        extra = dict(field.json_schema_extra or {})
        groups[extra.pop("group")].add_argument(extra.pop("flag", "--" + name.replace("_", "-")), dest=name,
                                                default=None, help=_help(field), **_argparse_kind(field), **extra)


def _help(field) -> str | None:
    text = field.description or ""
    if not field.is_required() and field.default is not None and field.default is not False \
            and field.default_factory is None:
        text += f" (default {field.default})" if text else f"default {field.default}"
    return text.replace("%", "%%") or None


def _argparse_kind(field) -> dict:
    """argparse keywords for a field's type: choices for a Literal, on/off for a bool, a list or a
    repeatable KEY=VALUE for the collection fields, else the scalar type."""
    import typing

    kind = field.annotation
    if typing.get_origin(kind) is typing.Union:  # Optional[X]
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    origin = typing.get_origin(kind)
    if origin is typing.Literal:
        return {"choices": list(typing.get_args(kind))}
    if kind is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is list:
        return {"type": lambda text: [c.strip() for c in text.split(",") if c.strip()]}
    if kind is dict or origin is dict:
        return {"action": "append"}
    return {"type": kind}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastif", description="Find the training examples that make a "
                                     "model wrong (FastIF influence functions).")
    parser.add_argument("--version", action="version", version=f"fastif {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--verbose", action="store_true",
                        help="show Prefect's log lines (every task run) on the console too")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    clean = commands.add_parser("clean", help="flag the training rows that cause validation errors")
    _add_clean_options(clean)
    clean.set_defaults(handler=_clean)

    explain = commands.add_parser("explain", help="most harmful and most helpful training rows for one error")
    explain.add_argument("--run", required=True, help="the --out folder of a clean run")
    explain.add_argument("--test-id", required=True, help="id of a misclassified validation row")
    explain.add_argument("--top", type=int, default=10)
    explain.set_defaults(handler=_explain)

    apply = commands.add_parser("apply", help="write a corrected training table from an edited fixes.csv")
    apply.add_argument("--fixes", required=True, help="fixes.csv from a clean run (edit its action / new_label)")
    apply.add_argument("--train", required=True, help="the training table the run cleaned (never changed)")
    apply.add_argument("--out", required=True, help="corrected table to write (.parquet or .csv)")
    apply.add_argument("--label-column", default="label")
    apply.add_argument("--id-column", default=None)
    apply.set_defaults(handler=_apply)

    demo = commands.add_parser("demo", help="rotten-tomatoes with one class under-reported, cleaned with text-minilm")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--max-train", type=int, default=2000, help="training rows used (default 2000)")
    demo.set_defaults(handler=_demo)

    datasets = commands.add_parser("datasets", help="export the bundled real datasets")
    ds_commands = datasets.add_subparsers(dest="datasets_command", metavar="ACTION", required=True)
    export = ds_commands.add_parser("export", help="write train/valid/test parquet files")
    export.add_argument("name", choices=list(DATASETS))
    export.add_argument("--out", required=True, help="folder for train/valid/test.parquet")
    export.add_argument("--noise", type=float, default=0.0,
                        help="fraction of training labels to flip (class-conditional: of each confused class)")
    export.add_argument("--noise-mode", choices=list(NOISE_MODES), default="uniform",
                        help="uniform: to any other class; pairwise: class c to c+1; class-conditional: "
                             "that share of half the classes' rows (binary: of one class) labelled as one "
                             "other class each; instance: the rows a clean-label model finds most like "
                             "another class take its label")
    export.add_argument("--seed", type=int, default=0)
    export.add_argument("--max-train", type=int, default=None,
                        help="keep a random subset of this many training rows (valid/test in proportion)")
    export.set_defaults(handler=_datasets_export)
    return parser


def _scalar(text: str):
    """``3`` → 3, ``1e-3`` → 0.001 (which YAML 1.1 would keep as a string), else YAML."""
    import yaml

    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return yaml.safe_load(text)


def _model_options(pairs: list[str] | None) -> dict | None:
    if not pairs:
        return None
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise FastIFError(f"--model-option {pair!r}: expected KEY=VALUE")
        out[key.strip()] = _scalar(value)
    return out


def _preflight(cfg) -> None:
    """Validate runner, data and model before Prefect starts: bad input fails fast, and nothing is written."""
    from fastif_engine.cleaning.pipeline import check_inputs

    from .runtime import check_runner_installed

    check_runner_installed(cfg.runner)
    check_inputs(cfg)


def _run_clean(cfg) -> dict:
    from .clean import run_clean
    from .runtime import api_server_for

    _preflight(cfg)
    with api_server_for(cfg.runner):
        return run_clean(cfg)


def config_from_args(args: argparse.Namespace):
    """The run's settings: ``--config`` YAML, then every option given on the command line on top."""
    from fastif_engine.config import CleanConfig, load_config

    overrides = {k: getattr(args, k) for k in CleanConfig.model_fields}
    overrides["model_options"] = _model_options(args.model_options)
    return load_config(args.config, overrides)


def _clean(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    t0 = time.perf_counter()
    metrics = _run_clean(cfg)
    _print_summary(cfg, metrics, time.perf_counter() - t0)
    return 0


def _print_summary(cfg, metrics: dict, seconds: float) -> None:
    from fastif_engine.report.content import verdict_line

    c, f = metrics["counts"], metrics["flagging"]
    floor = (f" ({f['below_evidence']} more within the budget lacked evidence of net harm, t < {f['min_evidence']:g})"
             if f["below_evidence"] and f["min_evidence"] > 0 else "")
    if f.get("past_budget"):
        floor += f"; {f['past_budget']} rows past the budget clear the evidence floor too (see the report)"
    print(f"\n{c['errors']} of {c['valid']} validation rows misclassified; {c['distinct_candidates']} training "
          f"rows scored against them; {c['flagged']} of {c['train']} flagged by {metrics['flag_by']}{floor}.")
    retrain = metrics["accuracy"]["retrain"]
    if retrain:
        s = retrain["summary"]
        print(f"{retrain['eval_split']} accuracy over {retrain['seeds']} seeds ({retrain['eval_rows']} rows, standard "
              f"error ±{retrain['accuracy_stderr']:.4f}): original {s['original']['mean']:.4f} → fixed "
              f"({retrain['fix']}) {s['cleaned']['mean']:.4f}; random control {s['random']['mean']:.4f}")
        print(verdict_line(metrics))
    changes = metrics["history"]["changes"]
    if changes:
        print(f"since the run of {changes['previous_time']}: {len(changes['new'])} new flags, {len(changes['still'])} "
              f"still flagged, {len(changes['gone'])} gone (history: {metrics['history']['path']})")
    _print_flipped_found(Path(cfg.out) / "flags.parquet", metrics["flag_by"])
    print(f"report: {Path(cfg.out) / 'report.html'} (finished in {seconds:.0f} s)")


def _print_flipped_found(flags_path: Path, flag_by: str) -> None:
    """For data exported with ``--noise`` (a ``noisy`` column): how many flipped rows the flags hold."""
    import pandas as pd

    flags = pd.read_parquet(flags_path)
    if "noisy" not in flags.columns or not flags["noisy"].any():
        return
    n_flagged, flipped = int(flags["flagged"].sum()), int(flags["noisy"].sum())
    found = int(flags.loc[flags["flagged"], "noisy"].sum())
    line = (f"flipped labels among the flags: {found} of {flipped} ({found / flipped:.0%}; as many random flags "
            f"would hold {n_flagged / len(flags):.0%})")
    if flag_by != "loss":
        by_loss = int(flags.nlargest(n_flagged, "train_loss")["noisy"].sum())
        line += f"; the {n_flagged} rows with the highest own training loss (--flag-by loss) hold {by_loss}"
    print(line)


def _explain(args: argparse.Namespace) -> int:
    from fastif_engine.cleaning.explain import explain

    print(explain(args.run, args.test_id, args.top))
    return 0


def _apply(args: argparse.Namespace) -> int:
    from fastif_engine.cleaning.fixes import apply_fixes

    done = apply_fixes(args.train, args.fixes, args.out, args.label_column, args.id_column)
    print(f"{done['removed']} rows removed, {done['relabelled']} relabelled, {done['kept']} kept as they were "
          f"-> {args.out}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from fastif_engine.data.datasets import export

    from fastif_engine.config import CleanConfig

    t0 = time.perf_counter()
    data = Path(args.out) / "data"
    import pandas as pd

    paths = export("rotten-tomatoes", data, max_train=args.max_train, **DEMO_NOISE)
    train = pd.read_parquet(paths["train"], columns=["label", "true_label", "noisy"])
    flipped = train[train["noisy"]]
    under = flipped["true_label"].iloc[0]
    print(f"exported rotten-tomatoes to {data}: {len(flipped)} of the {int((train['true_label'] == under).sum())} "
          f"'{under}' training snippets ({DEMO_NOISE['noise']:.0%}) labelled '{flipped['label'].iloc[0]}'")
    cfg = CleanConfig(train=str(paths["train"]), valid=str(paths["valid"]), test=str(paths["test"]),
                      out=args.out, model="text-minilm", retrain=True,
                      **DEMO_SETTINGS)
    metrics = _run_clean(cfg)
    _print_summary(cfg, metrics, time.perf_counter() - t0)
    return 0


def _datasets_export(args: argparse.Namespace) -> int:
    import pandas as pd

    from fastif_engine.data.datasets import export

    paths = export(args.name, args.out, noise=args.noise, seed=args.seed, noise_mode=args.noise_mode,
                   max_train=args.max_train)
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
    if not args.debug:
        for name in ("prefect.task_runs", "prefect.flow_runs", "prefect.flows", "prefect.tasks"):
            logging.getLogger(name).addFilter(_NoTracebacks())
    if args.command in ("clean", "demo"):
        from . import console

        console.enable(verbose=args.verbose)
    try:
        return args.handler(args)
    except FastIFError as exc:  # input or settings fastif checked and refused: exit 2, what to change
        if args.debug:
            traceback.print_exc()
        print(f"fastif: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # anything else failed while running: exit 1, one line, details with --debug
        if args.debug:
            traceback.print_exc()
        hint = "" if args.debug else " (--debug shows the traceback)"
        print(f"fastif: failed: {type(exc).__name__}: {exc}{hint}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
