"""The stage cache: each stage's output is a file named by a content key (input fingerprints + the
settings its output depends on, declared per stage in ``STAGE_KEYS``), written atomically and
reused when it exists; ``@stage`` adds the timing, the fault-injection point and the log line.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import threading
from functools import wraps
from pathlib import Path


from ..store.files import (file_fingerprint, fingerprint)
from ..store.memory import return_freed_memory

from ..config import CleanConfig

log = logging.getLogger("fastif_engine")
_LOCK = threading.Lock()


class StageCache:
    """``<out>/.fastif-cache/<stage>-<key>.<ext>``: present means done (files land by rename)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, stage: str, key: str, ext: str) -> Path:
        return self.root / f"{stage}-{key}.{ext}"


def prior_path(fold_s_test_path: str | Path) -> Path:
    """Where the net harm s_test stage records its class-prior check, beside the fold vectors."""
    return Path(fold_s_test_path).with_suffix(".prior.json")


def part_net_harm_path(scores_part_path: str | Path) -> Path:
    """Where an influence + net harm part writes its rows' per-fold net harm, beside their pairs."""
    return Path(scores_part_path).with_suffix(".netharm.npy")


def _cached(cache: str, stage: str, key: str, ext: str, *, log_as: str | None = None) -> tuple[Path, bool]:
    """This stage's output file and whether it is already there (the stage is then skipped).

    ``log_as`` names the stage in the log line of a reuse (per-batch tasks reuse silently)."""
    path = StageCache(cache).path(stage, key, ext)
    if path.exists() and log_as:
        log.info("%s: inputs unchanged, reusing %s", log_as, path.name)
    return path, path.exists()


def _fault_point(stage: str) -> None:
    """Fault injection for the reliability tests: ``FASTIF_KILL_ONCE=<stage>:<marker file>``
    kills the worker process the first time ``stage`` runs (the marker file records it)."""
    spec = os.environ.get("FASTIF_KILL_ONCE", "")
    name, _, marker = spec.partition(":")
    if name == stage and marker and not os.path.exists(marker):
        Path(marker).write_text(f"killed in {stage}\n")
        os._exit(137)


def stage(name: str):
    """Mark a function as the pipeline stage ``name`` (what logs, timings and Prefect call it); it
    hands what it freed back to the OS when it ends (see ``return_freed_memory``)."""
    def decorate(fn):
        @wraps(fn)
        def run(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            finally:
                return_freed_memory()
        run.stage_name = name
        return run
    return decorate


# ---- cache keys: each stage declares the settings its output depends on ----

@dataclasses.dataclass(frozen=True)
class StageKey:
    """A stage's cache key: the keys of the stages it reads (``after``) and the settings its output
    depends on. ``lissa``: settings that count only when the run's solver is LiSSA (another solver
    gives the same answer whatever they are); ``when``: settings that count only under a condition
    on the config."""

    after: tuple[str, ...]
    settings: tuple[str, ...] = ()
    lissa: tuple[str, ...] = ()
    when: tuple[tuple[str, object], ...] = ()  # (setting, predicate on the config)


LISSA = ("depth", "batch_size", "tolerance")
# In pipeline order. "data" also keys on the input files' contents and fastif's version, "prep" on
# the model's recipe; "flags" and "retrain" are keyed by the flagged rows themselves, which these
# settings decide (the declaration is what the completeness test reads).
STAGE_KEYS = {
    "data": StageKey((), ("label_column", "id_column", "text_column", "feature_columns", "image_column",
                          "embedding_column")),
    "prep": StageKey(("data",), ("model", "model_options")),
    "model": StageKey(("prep",), ("seed", "weights")),
    "index": StageKey(("model",), ("index",)),
    "candidates": StageKey(("index",), ("k",)),
    "solver": StageKey(("model",), ("solver", "damping", "scale", "seed"),
                       when=(("scale_sweep", lambda cfg: True), ("depth", lambda cfg: cfg.scale_sweep))),
    "stest": StageKey(("solver",), ("tests_per_batch",), lissa=LISSA),
    "net harm": StageKey(("solver",), ("net_harm_prior",), lissa=(*LISSA, "repeats"),
                         when=(("flag_evidence", lambda cfg: cfg.net_harm_prior == "auto"),)),
    # per-error influence and net harm, from one pass over the training rows
    "scores": StageKey(("stest", "candidates", "net harm"), lissa=("repeats",)),
    "self-influence": StageKey(("solver",)),
    "flags": StageKey(("scores", "net harm", "self-influence"),
                      ("flag_by", "flag_fraction", "flag_top", "flag_threshold", "flag_evidence", "self_influence")),
    "retrain": StageKey(("flags",), ("fix", "retrain", "seeds")),
}
# Settings no output depends on: where the files are (their contents key "data"), where and how
# the work runs, and how much memory a step may take at once.
NOT_IN_OUTPUTS = ("train", "valid", "test", "out", "history", "runner", "dask_address", "ray_address", "device",
                  "workers", "memory_budget", "chunk_size")


def stage_keys(cfg: CleanConfig, solver: str | None = None) -> dict[str, str]:
    """Cache key per stage, from ``STAGE_KEYS``: each key extends the keys of the stages it reads.

    ``solver``: the resolved solver, once known (None: assume LiSSA); LiSSA's settings then key
    the solving stages only when it is ``lissa`` (``auto`` → exact does not solve again for a new
    ``--depth``)."""
    from .. import __version__
    from ..models import model_recipe

    keys: dict[str, str] = {}
    for name, spec in STAGE_KEYS.items():
        if name in ("flags", "retrain"):
            continue
        parts = [name, *(keys[a] for a in spec.after), *(getattr(cfg, s) for s in spec.settings)]
        parts += [getattr(cfg, s) if solver in (None, "lissa") else None for s in spec.lissa]
        parts += [getattr(cfg, s) if applies(cfg) else None for s, applies in spec.when]
        if name == "data":
            parts += [__version__, *(_safe_fingerprint(p) for p in (cfg.train, cfg.valid, cfg.test))]
        if name == "prep":
            parts.append(model_recipe(cfg.model))
        keys[name] = fingerprint(*parts)
    return keys


def _safe_fingerprint(location: str | None) -> str | None:
    """Content hash, or a marker for a file that cannot be read (validation then says why)."""
    if location is None:
        return None
    try:
        return file_fingerprint(location)
    except Exception:
        return f"unreadable:{location}"
