"""``fixes.csv``: the flags as a list of actions a person can edit, and applying it to a table.

A clean run writes one row per flagged training row: its id, given label, the suggested action
(``remove``, or ``relabel`` to ``suggested_label`` with ``--fix relabel``) and the editable
columns ``action`` / ``new_label``, pre-filled with the suggestion. A person changes what they
disagree with (``keep`` leaves a row as it is) and feeds the file back to ``fastif apply``,
which writes a corrected copy of the training table; the input table is never changed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..data.tables import DataError, _rows, read_table
from ..store.files import atomic_path

ACTIONS = ("remove", "relabel", "keep")
COLUMNS = ("train_id", "given_label", "suggested_action", "suggested_label", "action", "new_label")


def fixes_table(flags: pd.DataFrame) -> pd.DataFrame:
    """The flagged rows of ``flags.parquet``, best-ranked first, as editable actions."""
    flagged = flags[flags["flagged"]].sort_values("rank")
    relabel = "suggested_label" in flagged.columns
    suggested = np.full(len(flagged), "relabel" if relabel else "remove", dtype=object)
    label = flagged["suggested_label"].astype(str).to_numpy() if relabel else np.full(len(flagged), "", dtype=object)
    return pd.DataFrame({"train_id": flagged["train_id"].astype(str).to_numpy(),
                         "given_label": flagged["label"].astype(str).to_numpy(),
                         "suggested_action": suggested, "suggested_label": label,
                         "action": suggested, "new_label": label})


def apply_fixes(train_path: str, fixes_path: str, out_path: str, label_column: str = "label",
                id_column: str | None = None) -> dict[str, int]:
    """Write ``train_path`` with ``fixes_path`` applied to ``out_path``; counts of each action taken.

    Every problem is reported before anything is written, naming the file, column and rows."""
    if Path(out_path).resolve() == Path(train_path).resolve():
        raise DataError(f"--out {out_path}: is the training table itself; fastif never changes it in place")
    train = read_table(train_path, "train")
    fixes = read_table(fixes_path, "fixes")
    fixes = fixes.astype(object).where(fixes.notna(), "")  # empty cells of an edited CSV
    missing = [c for c in ("train_id", "action", "new_label") if c not in fixes.columns]
    if missing:
        raise DataError(f"fixes file {fixes_path}: missing column '{missing[0]}'")
    if label_column not in train.columns:
        raise DataError(f"train file {train_path}: missing column '{label_column}'")
    ids_column = id_column or ("id" if "id" in train.columns else None)
    ids = train[ids_column].astype(str) if ids_column else pd.Series(np.arange(len(train)).astype(str))
    action = fixes["action"].astype(str).str.strip().str.lower()
    fix_ids = fixes["train_id"].astype(str).str.strip()
    bad = ~action.isin(ACTIONS)
    if bad.any():
        raise DataError(f"fixes file {fixes_path}: column 'action' must be one of {', '.join(ACTIONS)}; "
                        f"rows {_rows(bad)}")
    unknown = ~fix_ids.isin(set(ids))
    if unknown.any():
        raise DataError(f"fixes file {fixes_path}: column 'train_id' has ids not in {train_path}; "
                        f"rows {_rows(unknown)}")
    dup = fix_ids.duplicated(keep=False)
    if dup.any():
        raise DataError(f"fixes file {fixes_path}: column 'train_id' repeats ids; rows {_rows(dup)}")
    classes = {str(c): c for c in pd.unique(train[label_column])}
    new_label = fixes["new_label"].astype(str).str.strip()
    bad = (action == "relabel") & ~new_label.isin(set(classes))
    if bad.any():
        raise DataError(f"fixes file {fixes_path}: column 'new_label' must be a class of the training table "
                        f"({', '.join(sorted(classes))}) where action is relabel; rows {_rows(bad)}")
    out = train.copy()
    position = pd.Series(np.arange(len(train)), index=ids.to_numpy())
    relabel = action == "relabel"
    rows = position.loc[fix_ids[relabel]].to_numpy()
    out.loc[out.index[rows], label_column] = [classes[v] for v in new_label[relabel]]
    drop = position.loc[fix_ids[action == "remove"]].to_numpy()
    out = out.drop(index=out.index[drop]).reset_index(drop=True)
    with atomic_path(out_path) as tmp:
        if str(out_path).lower().endswith(".csv"):
            out.to_csv(tmp, index=False)
        else:
            out.to_parquet(tmp, index=False)
    return {"removed": int(len(drop)), "relabelled": int(relabel.sum()), "kept": int((action == "keep").sum())}
