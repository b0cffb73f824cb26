"""What a cleaning run writes: the flags and influence tables, metrics.json, the report, the history record.

Built from the pipeline's stage results by :func:`fastif_engine.cleaning.pipeline.run_pipeline`; every file is written
to a staging folder first and moved into place, so a failure keeps the previous run's outputs.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from ..cleaning.fixes import fixes_table
from ..cleaning.flagging import FLAG_SCORES, within_budget
from ..cleaning.retrain import summarise
from ..cleaning.verdict import accuracy_stderr, retrain_verdict
from ..influence.knn import faiss_build
from ..store.files import write_bytes, write_json, write_parquet, write_text
from .content import render
from .plots import plot_accuracy, plot_score_distribution, thumbnail

from ..cleaning.workers import worker_device

OUTPUTS = ("flags.parquet", "influence.parquet", "fixes.csv", "metrics.json", "report.md", "report.html")


def history_record(cfg, data_key: str, metrics: dict, flags: pd.DataFrame) -> dict:
    from datetime import datetime, timezone

    retrain = metrics["accuracy"]["retrain"]
    return {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "train": cfg.train, "data": data_key,
            "model": cfg.model, "flag_by": cfg.flag_by, "errors": metrics["counts"]["errors"],
            "flagged": metrics["counts"]["flagged"], "valid_accuracy": metrics["accuracy"]["before"]["valid"],
            "eval_accuracy": metrics["accuracy"]["before"].get("eval"),
            "retrained_fixed_minus_original": retrain["fixed_minus_original"]["mean"] if retrain else None,
            "verdict": retrain["verdict"] if retrain else None,
            "flagged_ids": [str(i) for i in flags.loc[flags["flagged"], "train_id"]]}


def flagging_counts(cfg, scores: pd.DataFrame, by: str, folds: int) -> dict:
    """How many rows the budget allowed, how many of those cleared the evidence floor, and why not the rest;
    ``past_budget``: rows outside the budget that would clear the floor too (the budget, not the evidence,
    stopped there; counted only where there is a floor)."""
    score = scores[by].to_numpy(dtype=np.float64)
    budget = within_budget(score, scores["rank"].to_numpy(), cfg.flag_rule())
    t = scores["net_harm_t"].to_numpy()
    floor = cfg.flag_evidence > 0
    return {"score": cfg.flag_by, "min_evidence": cfg.flag_evidence, "folds": folds,
            "within_budget": int(budget.sum()), "flagged": int(scores["flagged"].sum()),
            "below_evidence": int((budget & ~(t >= cfg.flag_evidence)).sum()) if floor else 0,
            "net_harm_not_positive": int((budget & ~(t > 0)).sum()),
            "past_budget": int((~budget & (score > 0) & (t >= cfg.flag_evidence)).sum()) if floor else 0}


def retrain_summary(cfg, ds, results: list[dict]) -> dict:
    """Per-variant mean ± std, the paired verdict, and the evaluation split's size and accuracy error."""
    summary = summarise(results)
    eval_split = results[0]["eval_split"]
    n_eval = len(ds.splits[eval_split])
    return {"seeds": cfg.seeds, "fix": cfg.fix, "eval_split": eval_split, "eval_rows": n_eval,
            "accuracy_stderr": accuracy_stderr(summary["original"].mean, n_eval),
            **retrain_verdict({k: v.values for k, v in summary.items()}),
            "summary": {k: v.as_dict() for k, v in summary.items()},
            "loss": {k: v.as_dict() for k, v in summarise(results, "loss").items()},
            "runs": results}


def _class_names(ds, codes) -> list[str]:
    return [str(ds.classes[int(c)]) for c in codes]


FLAG_TABLE_SCORES = ("harm_score", "self_influence", "n_errors_harmed", "rank", "flagged", "train_loss", "net_harm",
                     "net_harm_t", "combined_score")


def flags_table(ds, scores: pd.DataFrame, predictions: dict, targets: np.ndarray | None) -> pd.DataFrame:
    train = ds.splits["train"]
    table = pd.DataFrame({
        "train_id": train.ids,
        "label": _class_names(ds, train.labels),
        "predicted": _class_names(ds, predictions["train"]["predictions"]),
        **{col: scores[col].to_numpy() for col in FLAG_TABLE_SCORES},
    })
    if targets is not None:  # fix: relabel — the label each flagged row would get
        table["suggested_label"] = np.where(table["flagged"], _class_names(ds, targets), None)
    for col in train.extra.columns:  # truth columns of an exported noisy dataset, for scoring
        table[col] = train.extra[col].astype(str).to_numpy() if col == "true_label" else train.extra[col].to_numpy()
    return table


def influence_table(ds, influence: pd.DataFrame, errors: np.ndarray) -> pd.DataFrame:
    valid_ids = ds.splits["valid"].ids
    train_ids = ds.splits["train"].ids
    table = pd.DataFrame({
        "test_id": valid_ids[errors[influence["test_pos"].to_numpy()]] if len(influence) else valid_ids[:0],
        "train_id": train_ids[influence["train_index"].to_numpy()],
        "influence": influence["influence"].to_numpy(),
    })
    table["rank"] = (table.groupby("test_id", sort=False)["influence"]
                     .rank(ascending=False, method="first").astype(np.int64)) if len(table) else np.zeros(0, np.int64)
    return table


def _class_mix(flags: pd.DataFrame) -> dict:
    """Flags per given label vs the training rows' class mix, and the total-variation distance between them."""
    train = flags["label"].value_counts()
    flagged = flags.loc[flags["flagged"], "label"].value_counts().reindex(train.index, fill_value=0)
    n_flagged = int(flagged.sum())
    share_train = train / train.sum()
    share_flagged = flagged / n_flagged if n_flagged else share_train * 0
    return {"classes": [{"label": str(c), "train": int(train[c]), "flagged": int(flagged[c]),
                         "train_share": float(share_train[c]), "flagged_share": float(share_flagged[c])}
                        for c in train.index],
            "distance": float(0.5 * (share_flagged - share_train).abs().sum()) if n_flagged else 0.0}


def metrics_record(cfg, ds, predictions, errors, flags, n_candidates, solver_info, retrain, timings, flagging) -> dict:
    import torch

    before = {"valid": predictions["valid"]["accuracy"]}
    if "test" in predictions:
        before.update(eval=predictions["test"]["accuracy"], eval_split="test")
    return {
        "accuracy": {"before": before, "per_class_valid": predictions["valid"]["per_class_accuracy"],
                     "retrain": retrain},
        "counts": {"train": int(len(flags)), "valid": int(len(ds.splits["valid"])),
                   "test": int(len(ds.splits["test"])) if "test" in ds.splits else 0,
                   "errors": int(len(errors)), "distinct_candidates": n_candidates,
                   "flagged": int(flags["flagged"].sum()),
                   "harmful": int((flags["harm_score"] > 0).sum())},
        "flag_by": cfg.flag_by,
        "flagging": flagging,
        "class_mix": _class_mix(flags),
        "solver": solver_info,
        "model_fit": predictions["train"].get("fit"),  # is θ̂ a minimum? (gradients.fit_check)
        "device": str(worker_device(cfg.device)),  # where the flow's own stages (training) ran
        "sign_convention": "influence = -grad L(test)^T (H + ridge I)^-1 grad L(train); positive = harmful",
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "config": json.loads(cfg.model_dump_json()),
        "versions": {"fastif": fastif_version(), "python": platform.python_version(),
                     "torch": torch.__version__, "faiss": faiss_build(), "prefect": _installed("prefect")},
    }


def top_rows(ds, flags: pd.DataFrame, influence: pd.DataFrame, predictions: dict, n: int = 20) -> list[dict]:
    """The top flagged rows with their content, and the validation errors each harms most with theirs."""
    train, valid = ds.splits["train"], ds.splits["valid"]
    top = flags[flags["flagged"]].sort_values("rank").head(n)
    pos_of = {tid: i for i, tid in enumerate(train.ids)}
    valid_pos = {tid: i for i, tid in enumerate(valid.ids)}
    valid_predicted = predictions["valid"]["predictions"]
    rows = []
    for _, r in top.iterrows():
        i = pos_of[r["train_id"]]
        harms = influence[(influence["train_id"] == r["train_id"]) & (influence["influence"] > 0)]
        harms = harms.sort_values("influence", ascending=False).head(3)
        described = []
        for t, v in zip(harms["test_id"], harms["influence"]):
            j = valid_pos[t]
            labels = f"{ds.classes[int(valid.labels[j])]} → predicted {ds.classes[int(valid_predicted[j])]}"
            content = "" if ds.modality == "image" else f" “{_content(ds, valid.values[j], 60)}”"
            described.append(f"{t} ({v:.3g}; {labels}){content}")
        row = {"rank": int(r["rank"]), "train_id": r["train_id"], "given": r["label"], "predicted": r["predicted"],
               "harm_score": float(r["harm_score"]), "self_influence": float(r["self_influence"]),
               "train_loss": float(r["train_loss"]), "n_errors_harmed": int(r["n_errors_harmed"]),
               "net_harm": float(r["net_harm"]), "net_harm_t": float(r["net_harm_t"]),
               "combined_score": float(r["combined_score"]), "suggested": r.get("suggested_label"),
               "harms": "; ".join(described)}
        if ds.modality == "image":
            row["image_png"] = thumbnail(train.values[i])
        else:
            row["content"] = _content(ds, train.values[i], 160)
        rows.append(row)
    return rows


def _content(ds, value, width: int) -> str:
    """A text snippet, or the first feature values, in at most about ``width`` characters."""
    if ds.modality == "text":
        return value if len(value) <= width else value[:width - 3] + "…"
    n = 6 if width >= 100 else 3
    shown = ", ".join(f"{c}={v:.3g}" for c, v in zip(ds.input_columns[:n], value[:n]))
    return shown + (", …" if len(value) > n else "")


def write_outputs(out: Path, cfg, ds, flags, influence, metrics, predictions: dict) -> str:
    """Render and write every output into a staging folder first, then move them into place;
    returns the report's markdown.

    A failure while rendering or writing (a bad value, a full disk) leaves the previous run's
    outputs untouched; the final moves are single renames on the same filesystem.
    """
    plots = {}
    flagged = flags["flagged"].to_numpy()
    if metrics["flag_by"] != "harm":
        plots["flag_scores"] = plot_score_distribution(flags[FLAG_SCORES[metrics["flag_by"]]].to_numpy(), flagged,
                                                       metrics["flag_by"])
    if (flags["harm_score"] != 0).any():
        plots["harm_scores"] = plot_score_distribution(flags["harm_score"].to_numpy(), flagged, "harm")
    if metrics["accuracy"]["retrain"]:
        plots["accuracy"] = plot_accuracy(metrics["accuracy"]["retrain"]["summary"])
    markdown, html, assets = render(metrics, top_rows(ds, flags, influence, predictions), plots)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".fastif-staging-", dir=out))
    try:
        for name, png in assets.items():
            write_bytes(staging / "report_assets" / name, png)
        write_parquet(staging / "flags.parquet", flags)
        write_parquet(staging / "influence.parquet", influence)
        write_text(staging / "fixes.csv", fixes_table(flags).to_csv(index=False))
        write_json(staging / "metrics.json", metrics)
        write_text(staging / "report.md", markdown)
        write_text(staging / "report.html", html)
        if (out / "report_assets").exists():
            os.replace(out / "report_assets", staging / "previous_assets")
        if (staging / "report_assets").exists():
            os.replace(staging / "report_assets", out / "report_assets")
        for name in OUTPUTS:
            os.replace(staging / name, out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return markdown


def _installed(package: str) -> str | None:
    """A package's installed version (without importing it), None when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def fastif_version() -> str:
    from .. import __version__  # read when a run ends (the package imports this module)

    return __version__
