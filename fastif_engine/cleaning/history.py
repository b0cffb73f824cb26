"""Run history for scheduled cleaning: one record per run, and what changed since the last one.

A nightly data-quality flow wants to know which flags are *new*, which are *still there* and
which are *gone* (resolved: the row was fixed or no longer looks suspect) since the previous
run, and how errors, flags and accuracy move over time. Each run appends one row to a parquet
table (``history.parquet`` beside the outputs unless another path is given); the flagged ids
are kept as a JSON list so the next run can compare.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..data.tables import DataError, read_table
from ..store.files import write_parquet

COLUMNS = ("time", "train", "data", "model", "flag_by", "errors", "flagged", "valid_accuracy", "eval_accuracy",
           "retrained_fixed_minus_original", "verdict", "flagged_ids")


def load(path: str | Path) -> pd.DataFrame:
    """The history table, oldest run first (empty with the history columns if there is none yet)."""
    path = Path(path)
    if not path.exists():
        return pd.DataFrame({c: pd.Series(dtype=object) for c in COLUMNS})
    table = read_table(str(path), "history")
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise DataError(f"history file {path}: not a fastif run history (missing column '{missing[0]}'); "
                        "give another --history path")
    return table


def changes(history: pd.DataFrame, flagged_ids: list[str]) -> dict | None:
    """New / still flagged / gone ids against the last run in ``history`` (None for the first run)."""
    if not len(history):
        return None
    last = history.iloc[-1]
    before = json.loads(last["flagged_ids"])
    was, now = set(before), set(flagged_ids)
    return {"previous_time": str(last["time"]), "new": [i for i in flagged_ids if i not in was],
            "still": [i for i in flagged_ids if i in was], "gone": [i for i in before if i not in now]}


def append(path: str | Path, history: pd.DataFrame, record: dict) -> pd.DataFrame:
    """Write ``history`` plus ``record`` atomically to ``path``; return the new table."""
    row = {c: record.get(c) for c in COLUMNS}
    row["flagged_ids"] = json.dumps([str(i) for i in record["flagged_ids"]])
    table = pd.concat([history, pd.DataFrame([row])], ignore_index=True) if len(history) else pd.DataFrame([row])
    write_parquet(path, table)
    return table
