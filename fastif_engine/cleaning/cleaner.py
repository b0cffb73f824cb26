"""The whole product from Python: ``fastif_engine.clean(train, valid, test, model=...)``.

Runs the same pipeline as ``fastif clean`` (``fastif_engine.cleaning.pipeline``), in this process, with
no Prefect server: tables in, a :class:`CleanResult` out (flags, influence, verdict, metrics,
fixes, the report, explanations). The run's files are written to ``out`` as the command line
writes them, so a second call with the same data and settings reuses every cached stage::

    import fastif_engine
    result = fastif_engine.clean(train_df, valid_df, test_df, model="tabular-logreg", retrain=True)
    result.flagged            # the flagged training rows, most harmful first
    result.verdict            # did retraining without them help?
    result.write_report("report.html")
"""
from __future__ import annotations

import logging
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..config import load_config
from ..errors import FastIFError
from ..store.files import write_parquet
from .pipeline import LocalRunner, check_inputs, run_pipeline

log = logging.getLogger("fastif_engine")


class _PrintingRunner(LocalRunner):
    """In-process stages, one line per finished stage on stderr (as the command line prints them)."""

    def stage_done(self, name: str, seconds: float) -> None:
        print(f"  {name:<20} {seconds:7.1f} s", file=sys.stderr, flush=True)


@dataclass
class CleanResult:
    """One cleaning run's results; ``out`` is the folder holding its files."""

    out: Path
    metrics: dict
    flags: pd.DataFrame  # every training row: its scores, rank and whether it is flagged
    influence: pd.DataFrame  # per validation error: its scored candidates, most harmful first
    _tmp: tempfile.TemporaryDirectory | None = field(default=None, repr=False)

    @property
    def flagged(self) -> pd.DataFrame:
        """The flagged rows only, by rank (1 = most harmful)."""
        return self.flags[self.flags["flagged"]].sort_values("rank").reset_index(drop=True)

    @property
    def verdict(self) -> str | None:
        """The retrain's verdict ("helped, beyond random removal", …); None without ``retrain=True``."""
        retrain = self.metrics["accuracy"]["retrain"]
        return retrain["verdict"] if retrain else None

    @property
    def fixes(self) -> pd.DataFrame:
        """``fixes.csv``: one row per flagged training row, the action to take (edit, then ``fastif apply``)."""
        return pd.read_csv(self.out / "fixes.csv", dtype=str, keep_default_na=False)

    def write_report(self, path: str | Path) -> Path:
        """Copy the report to ``path``: ``.html`` (images inline) or ``.md`` (its images in
        ``report_assets/`` beside it)."""
        path = Path(path)
        if path.suffix not in (".html", ".md"):
            raise FastIFError(f"write_report({str(path)!r}): give a .html or .md path")
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.out / f"report{path.suffix}", path)
        if path.suffix == ".md" and (self.out / "report_assets").exists():
            shutil.copytree(self.out / "report_assets", path.parent / "report_assets", dirs_exist_ok=True)
        return path

    def explain(self, test_id, top: int = 10) -> str:
        """The most harmful and most helpful training rows for one misclassified validation row."""
        from .explain import explain

        return explain(str(self.out), str(test_id), top)

    def __repr__(self) -> str:
        counts = self.metrics["counts"]
        return (f"CleanResult({counts['flagged']} of {counts['train']} training rows flagged, "
                f"{counts['errors']} validation errors, verdict={self.verdict!r}, out={str(self.out)!r})")


def clean(train, valid, test=None, *, model, out: str | Path | None = None, progress: bool = True,
          **settings) -> CleanResult:
    """Flag the training rows that cause the model's validation errors; see the module docstring.

    ``train``/``valid``/``test``: a pandas DataFrame, anything with ``.to_pandas()`` (polars,
    pyarrow, Hugging Face datasets) or a path to a CSV/Parquet file, in the data format of
    ``fastif clean`` (a label column, and feature, text, image or embedding columns). ``model``: a
    built-in model (``tabular-logreg``, ``tabular-mlp``, ``image-cnn``, ``text-minilm``),
    ``hf:PATH`` (a local Hugging Face checkpoint), ``module:function``, or a model object (a
    :class:`~fastif_engine.TrainableAdapter`, e.g. :class:`~fastif_engine.TorchClassifier`
    around your ``nn.Module``; ``weights="given"`` explains it as it is). ``out``: where the
    run's files go (default: a temporary folder that lives as long as the result). ``settings``: any ``fastif clean`` setting by its Python name
    (``k=200``, ``retrain=True``, ``label_column="y"``, …); a wrong name or value raises
    ``ConfigError`` naming it, before any work.
    """
    if not isinstance(model, str):  # a model object: known by its content in this process
        from ..models import register_object

        model = register_object(model)
    tmp = None
    if out is None:
        tmp = tempfile.TemporaryDirectory(prefix="fastif-")
        out = tmp.name
    out = Path(out)
    load_config(None, {**settings, "train": "-", "valid": "-", "out": str(out), "model": model})  # settings first
    tables = {"train": train, "valid": valid, "test": test}
    files = {name: _as_file(table, out / "inputs", name) for name, table in tables.items()}
    cfg = load_config(None, {**settings, **files, "out": str(out), "model": model})
    check_inputs(cfg)
    metrics = run_pipeline(cfg, _PrintingRunner() if progress else LocalRunner())
    return CleanResult(out, metrics, pd.read_parquet(out / "flags.parquet"), pd.read_parquet(out / "influence.parquet"),
                       tmp)


def _as_file(table, folder: Path, name: str) -> str | None:
    """A path to ``table`` as the pipeline reads it: paths as given, tables written as Parquet."""
    if table is None or isinstance(table, (str, Path)):
        return None if table is None else str(table)
    if hasattr(table, "to_pandas") and not isinstance(table, pd.DataFrame):
        table = table.to_pandas()
    if not isinstance(table, pd.DataFrame):
        raise FastIFError(f"{name}: expected a DataFrame, a table with .to_pandas() or a file path, "
                          f"got {type(table).__name__}")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.parquet"
    write_parquet(path, table.reset_index(drop=True))
    return str(path)
