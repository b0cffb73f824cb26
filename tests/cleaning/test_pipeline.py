"""The pipeline's cache keys and the Python entry point's checks (no Prefect here)."""
import numpy as np
import pandas as pd
import pytest

import fastif_engine
from fastif_engine.cleaning.stage_cache import NOT_IN_OUTPUTS, STAGE_KEYS, stage_keys
from fastif_engine.config import CleanConfig, ConfigError
from fastif_engine.errors import FastIFError

# a different valid value for every setting a stage declares
CHANGED = {"label_column": "y", "id_column": "row_id", "text_column": "text", "feature_columns": ["a"],
           "image_column": "pixels", "embedding_column": "vector", "model": "tabular-logreg",
           "model_options": {"hidden": 8}, "seed": 1, "weights": "given",
           "index": "ivf", "k": 10, "solver": "exact", "damping": 0.02, "scale": 3.0, "scale_sweep": True,
           "depth": 301, "tests_per_batch": 8, "batch_size": 4, "tolerance": 1e-3, "repeats": 2,
           "net_harm_prior": "refit", "flag_evidence": 3.0}
CACHED = [name for name in STAGE_KEYS if name not in ("flags", "retrain")]


def _declared(spec) -> set[str]:
    return {*spec.settings, *spec.lissa, *(name for name, _ in spec.when)}


def test_every_setting_is_declared_by_a_stage_or_as_not_in_any_output():
    """A new CleanConfig field fails here until a stage declares it (or it is marked as changing no output),
    so no setting can be forgotten by the cache keys."""
    declared = set().union(*(_declared(spec) for spec in STAGE_KEYS.values()))
    fields = set(CleanConfig.model_fields)
    assert declared | set(NOT_IN_OUTPUTS) == fields
    assert not declared & set(NOT_IN_OUTPUTS)


@pytest.mark.parametrize("stage", CACHED)
def test_each_declared_setting_changes_its_stage_key_and_those_after_it(stage, tmp_path):
    cfg = CleanConfig(train=str(tmp_path / "t.csv"), valid=str(tmp_path / "v.csv"), out=str(tmp_path),
                      model="tabular-mlp", model_options={})
    spec = STAGE_KEYS[stage]
    for setting in sorted(_declared(spec)):
        # under the condition in which `depth` keys the solver (a scale sweep), unless that is what changes
        base = cfg.model_copy(update={"scale_sweep": setting != "scale_sweep"})
        changed = base.model_copy(update={setting: CHANGED[setting]})
        before, after = stage_keys(base, "lissa"), stage_keys(changed, "lissa")
        assert before[stage] != after[stage], f"{setting} does not change the {stage} key"
        later = [name for name in CACHED if stage in STAGE_KEYS[name].after]
        assert all(before[n] != after[n] for n in later), f"{setting}: a stage after {stage} kept its key"


def test_settings_that_no_output_depends_on_leave_every_key(tmp_path):
    cfg = CleanConfig(train=str(tmp_path / "t.csv"), valid=str(tmp_path / "v.csv"), out=str(tmp_path),
                      model="tabular-mlp")
    moved = cfg.model_copy(update={"out": str(tmp_path / "elsewhere"), "runner": "process", "workers": 7,
                                   "memory_budget": 2.0, "chunk_size": 64, "device": "cpu"})
    assert stage_keys(moved) == stage_keys(cfg)


def test_clean_names_a_wrong_setting_and_a_wrong_table_before_any_work(tmp_path):
    frame = pd.DataFrame({"a": np.arange(6.0), "label": ["x", "y"] * 3})
    with pytest.raises(ConfigError, match="'kk': unknown key"):
        fastif_engine.clean(frame, frame, model="tabular-logreg", out=tmp_path / "a", kk=3)
    assert not (tmp_path / "a").exists()  # refused before any table was written
    with pytest.raises(FastIFError, match="valid: expected a DataFrame"):
        fastif_engine.clean(frame, [1, 2, 3], model="tabular-logreg", out=tmp_path / "b")
    with pytest.raises(FastIFError, match="missing.parquet"):
        fastif_engine.clean(tmp_path / "missing.parquet", frame, model="tabular-logreg", out=tmp_path / "c",
                            progress=False)
    assert not (tmp_path / "c" / "flags.parquet").exists()


def test_the_prefect_flow_orchestrates_only():
    """flows/clean.py and flows/tasks.py reach the engine through the pipeline, its stages, the settings and
    the workers' device/threads alone: no scoring, flagging or record-building of their own."""
    import ast
    from pathlib import Path

    import importlib.util

    def module(package: str, name: str) -> str:  # `from package import name`: a module, or a name in package
        try:
            return f"{package}.{name}" if importlib.util.find_spec(f"{package}.{name}") else package
        except ModuleNotFoundError:
            return package

    allowed = {"fastif_engine.config", "fastif_engine.cleaning.pipeline", "fastif_engine.cleaning.stages",
               "fastif_engine.cleaning.workers"}
    root = Path(__file__).resolve().parents[2]
    for name in ("flows/clean.py", "flows/tasks.py"):
        tree = ast.parse((root / name).read_text())
        engine = {module(node.module, a.name) for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                  and (node.module or "").startswith("fastif_engine") for a in node.names}
        engine |= {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names
                   if a.name.startswith("fastif_engine")}
        assert engine <= allowed, f"{name} imports {sorted(engine - allowed)}"


def test_the_default_ridge_is_a_fraction_of_the_top_eigenvalue_and_damping_overrides_it(tmp_path):
    """λ = RIDGE_OF_TOP × the top eigenvalue unless --damping is given (then λ = damping × scale); a top
    eigenvalue the scale cannot hold names both settings instead of failing inside LiSSA."""
    from fastif_engine.cleaning.worker_state import run_damping
    from fastif_engine.influence.hessian import Spectrum
    from fastif_engine.influence.solvers import RIDGE_OF_TOP

    def cfg(**kw):
        return CleanConfig(train=str(tmp_path / "t.csv"), valid=str(tmp_path / "v.csv"), out=str(tmp_path),
                           model="tabular-mlp", **kw)
    spec = Spectrum(largest=4.0, mean=0.01, rows=64)
    assert cfg().damping is None
    assert run_damping(cfg(), 10.0, spec) * 10.0 == pytest.approx(RIDGE_OF_TOP * 4.0)
    assert run_damping(cfg(damping=0.02), 10.0, spec) == 0.02
    assert run_damping(cfg(damping=0.02), 10.0, None) == 0.02  # no spectrum needed
    for bad in (Spectrum(largest=-1.0, mean=0.0, rows=64), Spectrum(largest=100.0, mean=1.0, rows=64)):
        with pytest.raises(FastIFError, match="--damping"):
            run_damping(cfg(), 10.0, bad)
