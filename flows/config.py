"""The one settings model for a cleaning run: CLI flags and YAML keys map to these fields.

Unknown keys are rejected with their name; every value is type- and range-checked before any
work starts.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fastif_engine.errors import FastIFError


class ConfigError(FastIFError):
    """A config file or flag that cannot be used."""


class CleanConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    train: str = Field(description="training table (parquet/CSV, path or fsspec URL)")
    valid: str = Field(description="validation table: its misclassified rows are explained")
    test: Optional[str] = Field(None, description="held-out table for the retrain evaluation")
    out: str = Field(description="output folder")
    model: str = Field(description="built-in model name or package.module:callable")
    model_options: dict = Field(default_factory=dict, description="keyword options for the model")
    label_column: str = "label"
    id_column: Optional[str] = Field(None, description="id column (default: 'id' if present, else row numbers)")
    text_column: Optional[str] = None
    feature_columns: Optional[list[str]] = None
    image_column: Optional[str] = None

    k: int = Field(1000, ge=1, description="nearest training rows scored per error")
    index: Literal["flat", "ivf", "ivfpq", "hnsw"] = "flat"
    solver: Literal["lissa", "exact"] = "lissa"
    depth: int = Field(1000, ge=1, description="LiSSA recursion depth J")
    repeats: int = Field(1, ge=1, description="LiSSA independent repeats T")
    batch_size: int = Field(1, ge=1, description="LiSSA minibatch size B")
    damping: float = Field(0.01, ge=0.0, lt=1.0)
    scale: Optional[float] = Field(None, gt=0.0, description="LiSSA scale; unset = estimated")
    tolerance: Optional[float] = Field(None, gt=0.0)
    scale_sweep: bool = Field(False, description="on LiSSA divergence, retry with 10× the scale (logged)")
    self_influence: Literal["auto", "on", "off"] = Field(
        "auto", description="second score per training row; auto: only for ≤ 4,096 differentiated parameters")

    flag_by: Literal["combined", "net-harm", "harm", "self-influence", "loss"] = Field(
        "combined", description="score that ranks and flags rows: combined (net harm on the validation loss "
                                "and the row's own loss, by rank), net-harm, harm (to the errors only), "
                                "self-influence or loss")
    flag_fraction: Optional[float] = Field(None, ge=0.0, le=1.0)
    flag_top: Optional[int] = Field(None, ge=0)
    flag_threshold: Optional[float] = None
    flag_evidence: float = Field(2.0, ge=0.0, description="flag only rows whose net harm has a fold t-statistic "
                                                          "at least this (0: no floor, the budget is a quota)")
    fix: Literal["remove", "relabel"] = Field("remove", description="what the retrain does with the flags: remove "
                                              "them, or relabel them to what a model trained without them predicts")

    history: Optional[str] = Field(None, description="run-history table each run appends to (default: "
                                                     "history.parquet in the output folder)")
    retrain: bool = False
    seeds: int = Field(3, ge=1)
    runner: Literal["thread", "process", "dask", "ray"] = "thread"
    dask_address: Optional[str] = Field(None, description="existing Dask scheduler (tcp://host:8786)")
    ray_address: Optional[str] = Field(None, description="existing Ray cluster (auto or ray://host:10001)")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: a GPU when the worker sees one")
    workers: int = Field(2, ge=1)
    tests_per_batch: int = Field(16, ge=1, description="errors solved together in one s_test task")
    chunk_size: int = Field(64, ge=1, description="rows per per-sample-gradient chunk")
    seed: int = 0

    @model_validator(mode="after")
    def _one_flag_rule(self):
        given = [v is not None for v in (self.flag_fraction, self.flag_top, self.flag_threshold)]
        if sum(given) > 1:
            raise ValueError("give only one of flag_fraction, flag_top, flag_threshold")
        if self.flag_by == "self-influence" and self.self_influence == "off":
            raise ValueError("flag_by: self-influence needs self_influence on or auto")
        if self.dask_address and self.runner != "dask":
            raise ValueError("dask_address needs runner: dask")
        if self.ray_address and self.runner != "ray":
            raise ValueError("ray_address needs runner: ray")
        return self

    def flag_rule(self):
        from fastif_engine.ranking import FlagRule

        if self.flag_top is not None:
            return FlagRule(fraction=None, top=self.flag_top)
        if self.flag_threshold is not None:
            return FlagRule(fraction=None, threshold=self.flag_threshold)
        return FlagRule(fraction=0.1 if self.flag_fraction is None else self.flag_fraction)


def load_config(path: str | None, overrides: dict) -> CleanConfig:
    """YAML file (optional) with flag ``overrides`` on top, validated; errors name the key."""
    values: dict = {}
    if path:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"config file {path}: not found")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path}: not valid YAML ({exc})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path}: expected a mapping of settings, got {type(loaded).__name__}")
        values.update({k.replace("-", "_"): v for k, v in loaded.items()})
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return CleanConfig(**values)
    except ValidationError as exc:
        where = f"config file {path}" if path else "settings"
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "config"
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            problems.append(f"'{key}': {msg}" if key != "config" else msg)
        raise ConfigError(f"{where}: " + "; ".join(problems)) from None
