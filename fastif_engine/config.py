"""The one settings model for a cleaning run: CLI options and YAML keys are these fields.

Unknown keys are rejected with their name; every value is type- and range-checked before any
work starts.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fastif_engine.cleaning.flagging import DEFAULT_FLAG_FRACTION
from fastif_engine.errors import ConfigError
from fastif_engine.influence.gradients import MEMORY_BUDGET_GB
from fastif_engine.influence.krylov import LOW_RANK
from fastif_engine.influence.solvers import EXACT_MAX_PARAMS, RIDGE_OF_TOP


# Workers when --workers is not given. The thread runner's tasks take turns inside torch.func and the
# seeded-RNG lock (fastif_engine.influence.gradients.TRANSFORM_LOCK, training.seeded), so a second thread would only
# halve each task's memory budget (docs/decisions/thread-workers.md); a deployed run (flows.clean's
# own runner) takes as many. The process, Dask and Ray runners' workers run at once.
THREAD_WORKERS = 1
POOL_WORKERS = 2


GROUPS = {"data": "data", "model": "model", "influence": "influence (positive = harmful)",
          "flags": "flags and retraining", "execution": "execution"}


def _setting(default=..., group: str = "data", help: str | None = None, cli: dict | None = None, **checks):
    """A field of the settings model: its CLI group and help live here, next to its default and checks.

    ``cli`` overrides how the option is spelt on the command line (see ``flows/cli.py``)."""
    return Field(default, description=help, json_schema_extra={"group": group, **(cli or {})}, **checks)


class CleanConfig(BaseModel):
    """Every setting of a cleaning run: the CLI's options and the YAML keys are generated from these fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    train: str = _setting(help="training table (parquet/CSV, path or fsspec URL)")
    valid: str = _setting(help="validation table: its misclassified rows are explained")
    test: Optional[str] = _setting(None, help="held-out table for the retrain evaluation")
    out: str = _setting(help="output folder (flags.parquet, influence.parquet, metrics.json, report)")
    label_column: str = _setting("label")
    id_column: Optional[str] = _setting(None, help="id column (default: 'id' if present, else row numbers)")
    text_column: Optional[str] = _setting(None)
    feature_columns: Optional[list[str]] = _setting(None, help="comma-separated numeric columns")
    image_column: Optional[str] = _setting(None)
    embedding_column: Optional[str] = _setting(None, help="a column of equal-length float vectors (an encoder's "
                                               "embeddings): the tabular models' inputs")

    model: str = _setting(group="model", help="tabular-logreg, tabular-mlp, image-cnn, text-minilm or "
                                              "package.module:callable")
    model_options: dict = _setting(default_factory=dict, group="model",
                                   help="keyword option for the model (YAML value), repeatable",
                                   cli={"flag": "--model-option", "metavar": "KEY=VALUE"})
    weights: Literal["train", "given"] = _setting(
        "train", group="model", help="train: fastif trains the model (the built-ins from scratch); given: explain "
                                     "the model with the weights it comes with (hf:PATH, a factory's trained model); "
                                     "retrains still fit copies")
    seed: int = _setting(0, group="model")

    k: int = _setting(1000, group="influence", help="nearest training rows scored per error", ge=1)
    index: Literal["flat", "ivf", "ivfpq", "hnsw"] = _setting("flat", group="influence")
    solver: Literal["auto", "exact", "lissa", "lowrank", "ekfac", "cg"] = _setting(
        "auto", group="influence", help="inverse-HVP solver; auto: by predicted cost, exact-quality (exact, or "
        "block CG) where it fits the budget, else EK-FAC or the low-rank Hessian, whichever fits better (logged, "
        "in metrics.json); cg: block CG, EK-FAC-preconditioned when named; ekfac: "
        f"Kronecker-factored Gauss-Newton; exact: ≤ {EXACT_MAX_PARAMS:,} parameters; lowrank: top-{LOW_RANK} "
        "Hessian eigenpairs")
    depth: int = _setting(300, group="influence", help="LiSSA recursion depth J", ge=1)
    repeats: int = _setting(1, group="influence", help="LiSSA independent repeats T, spread over workers", ge=1)
    batch_size: int = _setting(16, group="influence", help="LiSSA minibatch B (training rows per HVP)", ge=1)
    damping: Optional[float] = _setting(None, group="influence", help="damping d: ridge λ = d × scale (unset: "
                                        f"λ = {RIDGE_OF_TOP:g} × the Hessian's top eigenvalue, estimated)",
                                        ge=0.0, lt=1.0)
    scale: Optional[float] = _setting(None, group="influence", help="LiSSA scale s (unset: estimated from the "
                                                                     "curvature)", gt=0.0)
    tolerance: Optional[float] = _setting(None, group="influence", help="stop a LiSSA repeat early below this "
                                                                         "relative change per 10 steps", gt=0.0)
    scale_sweep: bool = _setting(False, group="influence", help="if LiSSA diverges, retry with 10× the scale, "
                                 "logged (off: the scale is never changed)")
    self_influence: Literal["auto", "on", "off"] = _setting(
        "auto", group="influence", help="second score per training row; auto: only for ≤ 4,096 differentiated "
                                        "parameters")

    flag_by: Literal["combined", "net-harm", "harm", "self-influence", "loss"] = _setting(
        "combined", group="flags", help="score that ranks and flags rows: combined (net harm on the validation "
        "loss and the row's own loss, by rank), net-harm, harm (to the errors only), self-influence or loss")
    flag_fraction: Optional[float] = _setting(None, group="flags", help="flag at most this fraction of training "
                                              f"rows ({DEFAULT_FLAG_FRACTION:g} when no other rule is given)",
                                              ge=0.0, le=1.0)
    flag_top: Optional[int] = _setting(None, group="flags", help="flag at most the N top-scoring rows", ge=0)
    flag_threshold: Optional[float] = _setting(None, group="flags", help="flag rows whose score is above this")
    flag_evidence: float = _setting(2.0, group="flags", help="flag only rows whose net harm has a t-statistic "
                                    "over the validation folds of at least this (0: no floor, the budget is a "
                                    "quota)", ge=0.0)
    net_harm_prior: Literal["auto", "refit", "model"] = _setting(
        "auto", group="flags", help="class prior of net harm's validation loss: auto refits it to the validation "
        "rows unless their class mix differs from the model's predictions with z ≥ flag_evidence; refit: always; "
        "model: never (a shift of the prior alone then flags rows of the over-predicted class)")
    fix: Literal["remove", "relabel"] = _setting(
        "remove", group="flags", help="what the retrain does with the flags: remove them, or relabel them to the "
                                      "class a model trained without them predicts")
    retrain: bool = _setting(False, group="flags", help="retrain with the flags fixed (and a random control) "
                                                        "and give a verdict with 95% CIs")
    seeds: int = _setting(3, group="flags", help="retrain seeds", ge=1)
    history: Optional[str] = _setting(None, group="flags", help="run-history table each run appends to and "
                                      "compares with (default: history.parquet in the output folder)")

    runner: Literal["thread", "process", "dask", "ray"] = _setting("thread", group="execution")
    dask_address: Optional[str] = _setting(None, group="execution", help="existing Dask scheduler "
                                                                         "(tcp://host:8786)")
    ray_address: Optional[str] = _setting(None, group="execution", help="existing Ray cluster (auto or "
                                                                        "ray://host:10001)")
    device: Literal["auto", "cpu", "cuda"] = _setting("auto", group="execution",
                                                      help="auto: a GPU when the worker sees one")
    workers: Optional[int] = _setting(None, group="execution", help="parallel workers (unset: "
                                      f"{THREAD_WORKERS} with the thread runner, whose tasks take turns inside torch "
                                      "anyway, so one at a time has the whole memory budget; "
                                      f"{POOL_WORKERS} with the others)", ge=1)
    tests_per_batch: int = _setting(16, group="execution", help="errors solved together in one s_test task", ge=1)
    memory_budget: float = _setting(MEMORY_BUDGET_GB, group="execution", help="GB the per-sample-gradient chunks and "
                                    "LiSSA blocks of one process may take at once (thread workers share it); sets "
                                    "chunk rows and vectors solved at once from the parameter count; the influence + "
                                    "net harm stage holds as much again of s_test vectors", gt=0.0)
    chunk_size: Optional[int] = _setting(None, group="execution", help="rows per per-sample-gradient chunk "
                                         "(unset: from --memory-budget)", ge=1)

    @model_validator(mode="before")
    @classmethod
    def _default_workers(cls, values):
        if isinstance(values, dict) and values.get("workers") is None:
            runner = values.get("runner") or cls.model_fields["runner"].default
            values = {**values, "workers": THREAD_WORKERS if runner == "thread" else POOL_WORKERS}
        return values

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

    def columns(self):
        """Which columns hold what (``fastif_engine.data.tables.Columns``)."""
        from fastif_engine.data.tables import Columns

        return Columns(label=self.label_column, id=self.id_column, text=self.text_column,
                       features=tuple(self.feature_columns) if self.feature_columns else None,
                       image=self.image_column, embedding=self.embedding_column)

    def flag_rule(self):
        from fastif_engine.cleaning.flagging import FlagRule

        if self.flag_top is not None:
            return FlagRule(fraction=None, top=self.flag_top)
        if self.flag_threshold is not None:
            return FlagRule(fraction=None, threshold=self.flag_threshold)
        return FlagRule(fraction=DEFAULT_FLAG_FRACTION if self.flag_fraction is None else self.flag_fraction)


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
