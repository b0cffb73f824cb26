"""``fastif explain``: the most harmful and most helpful training rows for one validation error."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from fastif_engine.data.tables import read_table
from fastif_engine.errors import FastIFError

SHADES = " .:-=+*#%@"


def _ascii_image(pixels, width: int = 14) -> list[str]:
    img = np.asarray(pixels, dtype=np.float64).ravel()
    side = int(round(np.sqrt(len(img))))
    img = img[: side * side].reshape(side, side)
    step = max(1, int(np.ceil(side / width)))
    small = img[::step, ::step]
    lo, hi = small.min(), small.max()
    levels = ((small - lo) / (hi - lo) * (len(SHADES) - 1)).astype(int) if hi > lo else np.zeros_like(small, int)
    return ["    " + "".join(SHADES[v] * 2 for v in row) for row in levels]


def _content(frame: pd.DataFrame, row: int, cfg: dict) -> list[str]:
    if frame is None:
        return []
    rec = frame.iloc[row]
    if cfg.get("text_column") or "text" in frame.columns and not cfg.get("feature_columns"):
        text = str(rec[cfg.get("text_column") or "text"])
        return ["    " + (text if len(text) <= 200 else text[:197] + "…")]
    if cfg.get("image_column") or "image" in frame.columns:
        return _ascii_image(rec[cfg.get("image_column") or "image"])
    skip = {cfg.get("label_column") or "label", cfg.get("id_column") or "id", "true_label", "noisy"}
    cols = [c for c in (cfg.get("feature_columns") or frame.columns) if c not in skip]
    return ["    " + ", ".join(f"{c}={rec[c]}" for c in cols[:8]) + (", …" if len(cols) > 8 else "")]


def _positions(frame: pd.DataFrame | None, id_column: str | None) -> dict:
    if frame is None:
        return {}
    id_column = id_column or "id"
    ids = frame[id_column] if id_column in frame.columns else pd.Series(range(len(frame)))
    return {str(v): i for i, v in enumerate(ids)}


def explain(run: str, test_id: str, top: int = 10) -> str:
    run_dir = Path(run)
    for name in ("metrics.json", "influence.parquet", "flags.parquet"):
        if not (run_dir / name).exists():
            raise FastIFError(f"--run {run}: no {name} here (is it the --out folder of a finished clean run?)")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    cfg = metrics["config"]
    influence = pd.read_parquet(run_dir / "influence.parquet")
    mine = influence[influence["test_id"].astype(str) == str(test_id)]
    if mine.empty:
        known = influence["test_id"].astype(str).unique()
        raise FastIFError(f"test id {test_id!r} is not one of the {len(known)} misclassified validation rows of "
                          f"this run (e.g. {', '.join(known[:5])})")
    frames = {}
    for split in ("train", "valid"):
        try:
            frames[split] = read_table(cfg[split], split)
        except Exception:
            frames[split] = None  # the source moved: show ids and scores only
    flags = pd.read_parquet(run_dir / "flags.parquet").set_index("train_id")
    flags.index = flags.index.astype(str)
    lines = [f"Validation example {test_id}"]
    vpos = _positions(frames["valid"], cfg["id_column"]).get(str(test_id))
    if vpos is not None:
        rec = frames["valid"].iloc[vpos]
        lines[0] += f" — label {rec[cfg['label_column']]!r}"
        lines += _content(frames["valid"], vpos, cfg)
    lines += ["", "Scores: I(z, test) = −∇L(test)ᵀ(H + λI)⁻¹∇L(z); positive = harmful, negative = helpful.",
              f"Scored over its {len(mine)} nearest training rows (k = {cfg['k']})."]
    tpos = _positions(frames["train"], cfg["id_column"])
    for title, part in (("Most harmful (removing them should lower this error's loss)",
                         mine.sort_values("influence", ascending=False).head(top)),
                        ("Most helpful", mine.sort_values("influence").head(top))):
        lines += ["", title + ":"]
        # zip, not iterrows: iterrows would turn integer ids into floats beside the float scores
        for train_id, score in zip(part["train_id"], part["influence"]):
            tid = str(train_id)
            flag = flags.loc[tid] if tid in flags.index else None
            label = f"label {flag['label']!r}, predicted {flag['predicted']!r}" if flag is not None else ""
            mark = "  [flagged]" if flag is not None and bool(flag["flagged"]) else ""
            lines.append(f"  {score:+.4g}  train {tid}  {label}{mark}")
            if tid in tpos:
                lines += _content(frames["train"], tpos[tid], cfg)
    return "\n".join(lines)
