"""fastif's default solver beside Kronfluence's EK-FAC and the seed's LiSSA, on the demo's text model
(or image-cnn on Fashion-MNIST).

    pip install --no-deps --target benchmarks/.peers kronfluence==1.0.1 accelerate einops einconv opt-einsum
    PYTHONPATH=benchmarks/.peers python benchmarks/vs_kronfluence.py [--repeats 3] [--ridge-of-top 0.03 | --damping 0.05]
    PYTHONPATH=benchmarks/.peers python benchmarks/vs_kronfluence.py --model image-cnn [--max-train 10000]

Kronfluence is never a fastif dependency: it installs beside the benchmark with ``--no-deps``.

The demo's data (Rotten Tomatoes, 2,000 training snippets, 30% of the ``rotten`` ones labelled
``fresh``) and model (``text-minilm``: the top MiniLM layer + head, 1.78M parameters, fit with
its own recipe, seed 0). Queries: the misclassified validation rows; candidates: each one's 200
nearest training rows (one exact FAISS index, built once and shared). Each method computes
I = −∇L(query)ᵀ (H + λI)⁻¹ ∇L(candidate) at one ridge λ: by default the product's, ``--ridge-of-top``
(0.3) × the Hessian's sampled top eigenvalue (``hessian.spectrum``, timed as part of fastif's default),
or d × scale with ``--damping d``. Timed from the trained model to the scores (the solver's set-up
included), medians over ``--repeats`` runs on the machine's threads:

* fastif's default (``solver="auto"``), and fastif's EK-FAC by name;
* Kronfluence 1.0.1 EK-FAC (factors on all training rows, its default sampled Fisher, pairwise
  scores over the candidates' union), with ``damping_factor`` = λ + l2 (its curvature knows no L2
  term; this also damps the biases, which fastif leaves unpenalised) and with its heuristic
  (``damping_factor=None``: 0.1 × each module's mean eigenvalue). LayerNorm parameters are not
  ``nn.Linear`` and so not tracked by Kronfluence: they drop out of its scores;
* LiSSA at the seed's defaults (J = 300, B = 16), once, on the first ``--lissa-errors`` errors
  (its time for all errors is that × errors / lissa-errors, marked "scaled");
* the no-Hessian baseline −∇L(query)ᵀ∇L(candidate)/λ.

Reference: conjugate gradient on the full-data damped Hessian, preconditioned by its top-8
eigenspace, run to a relative residual of ``--reference-tolerance`` (1e-6) for the first
``--reference-errors`` errors (8; each costs ~10 full-data Hessian-vector passes, ~11 s apiece
here), the residual checked afterwards by a fresh full-data product. Agreement is taken over
those errors' candidates: Pearson over every (error, candidate) pair, the mean overlap of each
error's top 10, and the overlap of the 300 rows (15%, the demo's budget) with the most harm
summed over those errors. Times are for all errors.

``--model image-cnn``: the same comparison on Fashion-MNIST (``--max-train`` training images, 10%
of labels flipped uniformly, seed 0) with image-cnn fit by its own recipe; both methods track its
two differentiated ``nn.Linear`` layers (``fc``, ``head``), so EK-FAC covers every parameter.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

import fastif_engine
from fastif_engine.data.batching import take
from fastif_engine.data.datasets import export
from fastif_engine.influence.api import FastIF, extract_features
from fastif_engine.influence.gradients import FlatParams, gradient_matrix
from fastif_engine.influence.hessian import full_hvp, spectrum
from fastif_engine.influence.knn import FaissIndex
from fastif_engine.influence.scores import influence_on_candidates
from fastif_engine.influence.solvers import DEFAULT_DAMPING, RIDGE_OF_TOP, LissaSettings, with_scale
from fastif_engine.data.tables import load_dataset
from flows.cli import DEMO_NOISE, DEMO_SETTINGS
from _shared import model_for, reference_cg, results_dir

RESULTS = results_dir()
CACHE = Path(__file__).parent / ".cache" / "vs_kronfluence"  # converged references, reused by later runs
TOP, FLAG_SHARE = 10, 0.15
REFERENCE_BLOCK = 16  # vectors per CG solve (memory: each is a [P] float32 in five CG buffers)


# -- the demo's model and errors ------------------------------------------------------------------

def demo_problem(tmp: Path, max_train: int, model: str = "text-minilm"):
    """The trained model, its training rows and its misclassified validation rows."""
    if model == "text-minilm":
        paths = export("rotten-tomatoes", tmp / "data", max_train=max_train, **DEMO_NOISE)
    else:
        paths = export("fashion-mnist", tmp / "data", max_train=max_train, noise=0.1, seed=0)
    ds = load_dataset({k: str(v) for k, v in paths.items()})
    adapter, inputs = model_for(model, ds)
    x, xv = inputs("train"), inputs("valid")
    y, yv = torch.as_tensor(ds.splits["train"].labels), torch.as_tensor(ds.splits["valid"].labels)
    adapter.fit(x, y)
    wrong = (adapter.predict(xv) != yv).nonzero().squeeze(1)
    return adapter, x, y, take(xv, wrong), yv[wrong]


# -- Kronfluence -----------------------------------------------------------------------------------

class _Rows(Dataset):
    def __init__(self, inputs: dict, labels: torch.Tensor):
        self.inputs, self.labels = inputs, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        row = {k: v[i] for k, v in self.inputs.items()} if isinstance(self.inputs, dict) else self.inputs[i]
        return row, self.labels[i]


def kronfluence_run(adapter, x, y, xq, yq, candidates: np.ndarray, damping: float | None, workdir: str,
                    seed: int = 0) -> np.ndarray:
    """[queries, len(candidates)] in fastif's sign: Kronfluence scores ∇L(query)ᵀ(G + λ)⁻¹∇L(train), helpful > 0."""
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.task import Task
    from kronfluence.utils.dataset import DataLoaderKwargs

    wanted = set(adapter.parameter_names())

    class ClassifierTask(Task):
        def compute_train_loss(self, batch, model, sample=False):
            inputs, labels = batch
            logits = model(inputs)
            if sample:  # its default true Fisher: labels drawn from the model's own prediction
                with torch.no_grad():
                    labels = torch.multinomial(F.softmax(logits.detach(), -1), 1).squeeze(1)
            return F.cross_entropy(logits, labels, reduction="sum")

        def compute_measurement(self, batch, model):
            inputs, labels = batch
            return F.cross_entropy(model(inputs), labels, reduction="sum")

        def get_influence_tracked_modules(self):
            return modules

        def get_attention_mask(self, batch):  # text: an int mask (it is summed into an int64 counter)
            return batch[0]["mask"].long() if isinstance(batch[0], dict) else None

    def collate(items):
        inputs, labels = zip(*items)
        if not isinstance(inputs[0], dict):
            return torch.stack(inputs), torch.stack(labels)
        return adapter.trim_batch({k: torch.stack([r[k] for r in inputs]) for k in inputs[0]}), torch.stack(labels)

    with adapter.rows_first():  # every activation [rows, tokens, dim]: Kronfluence's samples are rows
        model = copy.deepcopy(adapter.model).eval()  # prepare_model swaps the Linear modules in place
    modules = [name for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and f"{name}.weight" in wanted]
    task = ClassifierTask()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*GradScaler.*|.*CUDA is not available.*")
        analyzer = Analyzer("fastif", prepare_model(model, task), task, cpu=True, disable_tqdm=True,
                            output_dir=workdir, log_level=logging.WARNING)
        analyzer.set_dataloader_kwargs(DataLoaderKwargs(collate_fn=collate))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            analyzer.fit_all_factors("f", _Rows(x, y), per_device_batch_size=32, overwrite_output_dir=True,
                                     factor_args=FactorArguments(strategy="ekfac", covariance_max_examples=None,
                                                                 lambda_max_examples=None))
        analyzer.compute_pairwise_scores("s", "f", _Rows(xq, yq), _Rows(x, y), per_device_query_batch_size=len(yq),
                                         per_device_train_batch_size=32, overwrite_output_dir=True,
                                         train_indices=[int(i) for i in candidates],
                                         score_args=ScoreArguments(damping_factor=damping))
    return -analyzer.load_pairwise_scores("s")["all_modules"].double().numpy()


# -- fastif ----------------------------------------------------------------------------------------

def on_candidates(scores: np.ndarray, columns: np.ndarray, lists: list[np.ndarray]) -> list[np.ndarray]:
    """Rows of a [queries, columns] matrix read at each query's own candidates."""
    where = {int(c): j for j, c in enumerate(columns)}
    return [scores[q, [where[int(c)] for c in cand]] for q, cand in enumerate(lists)]


def fastif_run(adapter, x, y, xq, yq, index, damping, scale, solver):
    fi = FastIF(adapter, x, y, k=DEMO_SETTINGS["k"], index=index, solver=solver, lissa=LissaSettings(damping=damping, scale=scale))
    table = fi.influence(xq, yq).sort_values(["test_pos", "train_index"])
    fastif_run.chosen = type(fi.solver).__name__
    return table


def as_lists(table: pd.DataFrame, lists: list[np.ndarray]) -> list[np.ndarray]:
    by = {q: g.set_index("train_index")["influence"] for q, g in table.groupby("test_pos")}
    return [by[q].loc[cand].to_numpy() for q, cand in enumerate(lists)]


def solved_scores(adapter, x, y, s: torch.Tensor, lists, flat) -> list[np.ndarray]:
    res = influence_on_candidates(adapter, x, y, s, lists, flat=flat)
    table = pd.DataFrame({"test_pos": res.test_pos, "train_index": res.train_index, "influence": res.influence})
    return as_lists(table, lists)


# -- the reference ---------------------------------------------------------------------------------

def reference_solution(adapter, x, y, v, ridge, flat, tolerance, path: Path) -> dict:
    """(H + λI)⁻¹ v by CG to ``tolerance``, its residual checked by a fresh full-data product; saved to
    ``path`` with a checksum of the model's parameters, and read back by a later run on the same model."""
    checksum = float(sum(p.double().abs().sum() for p in flat.as_dict().values()))
    if path.exists():
        saved = torch.load(path)
        if saved["checksum"] == checksum and saved["s"].shape == v.shape:
            return {**saved, "cached": True}
    t = time.perf_counter()
    cg = reference_cg(adapter, x, y, ridge=ridge, flat=flat, tolerance=tolerance)
    s = torch.cat([cg.solve(block) for block in v.split(REFERENCE_BLOCK)])
    check = max(float(((b - full_hvp(adapter, flat, x, y, si) - ridge * si).norm(dim=1) / b.norm(dim=1)).max())
                for b, si in zip(v.split(REFERENCE_BLOCK), s.split(REFERENCE_BLOCK)))
    saved = {"s": s, "residual": check, "iterations": max(cg.iterations_used), "checksum": checksum,
             "seconds": time.perf_counter() - t}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(saved, path)
    return {**saved, "cached": False}


# -- agreement ------------------------------------------------------------------------------------

def agreement(got: list[np.ndarray], ref: list[np.ndarray], lists: list[np.ndarray], n_train: int) -> dict:
    g, r = np.concatenate(got), np.concatenate(ref)
    top = [len(set(c[np.argsort(-a)[:TOP]]) & set(c[np.argsort(-b)[:TOP]])) / TOP
           for a, b, c in zip(got, ref, lists)]

    def flagged(scores):
        total = np.zeros(n_train)
        for s, c in zip(scores, lists):
            np.add.at(total, c, s)
        return set(np.argsort(-total)[:round(FLAG_SHARE * n_train)])

    return {"pearson": float(np.corrcoef(g, r)[0, 1]), "top10_overlap": float(np.mean(top)),
            "flag_overlap": len(flagged(got) & flagged(ref)) / round(FLAG_SHARE * n_train)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lissa-errors", type=int, default=8)
    parser.add_argument("--model", choices=("text-minilm", "image-cnn"), default="text-minilm")
    parser.add_argument("--max-train", type=int, help="training rows (default: 2,000 text / 10,000 images)")
    parser.add_argument("--ridge-of-top", type=float, default=RIDGE_OF_TOP,
                        help="λ = this × the Hessian's sampled top eigenvalue (the product's rule; default %(default)s)")
    parser.add_argument("--damping", type=float, help="d: λ = d × the estimated scale instead")
    parser.add_argument("--reference-tolerance", type=float, default=1e-6)
    parser.add_argument("--reference-errors", type=int, default=8,
                        help="errors the reference is solved for (each costs ~10 full-data HVP passes)")
    parser.add_argument("--skip", default="", help="methods left out, comma-separated: ekfac, kronfluence, lissa")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    with tempfile.TemporaryDirectory() as tmp:
        max_train = args.max_train or (2000 if args.model == "text-minilm" else 10_000)
        adapter, x, y, xq, yq = demo_problem(Path(tmp), max_train, args.model)
        flat = FlatParams.of(adapter)
        scale = with_scale(adapter, x, y, LissaSettings(damping=DEFAULT_DAMPING), flat).scale

        def damping() -> float:  # the product's ridge rule: the spectrum is part of the default's cost
            if args.damping is not None:
                return args.damping
            return args.ridge_of_top * spectrum(adapter, flat, x, y).largest / scale
        settings = LissaSettings(damping=damping(), scale=scale)
        ridge, tag = settings.ridge, (f"d{args.damping:g}" if args.damping is not None else f"top{args.ridge_of_top:g}")
        index = FaissIndex("flat").build(extract_features(adapter, x))
        _, idx = index.search(extract_features(adapter, xq), DEMO_SETTINGS["k"])
        lists = [np.sort(row[row >= 0]) for row in idx]
        union = np.unique(np.concatenate(lists))
        print(f"{len(y)} training rows, {len(yq)} errors, {len(union)} distinct candidates; "
              f"{flat.size:,} parameters, λ = {ridge:.4g}", flush=True)

        r = min(args.reference_errors, len(yq))
        v = gradient_matrix(adapter, take(xq, slice(0, r)), yq[:r], flat=flat)
        ref = reference_solution(adapter, x, y, v, ridge, flat, args.reference_tolerance,
                                 CACHE / f"reference-{args.model}-{len(y)}-{tag}-"
                                         f"tol{args.reference_tolerance:g}-e{r}.pt")
        s_ref, check = ref["s"], ref["residual"]
        reference = solved_scores(adapter, x, y, s_ref, lists[:r], flat)
        dot = solved_scores(adapter, x, y, v / ridge, lists[:r], flat)
        print(f"reference: CG, {ref['iterations']} iterations, relative residual ≤ {check:.1e} "
              f"({ref['seconds']:.0f} s{', saved by an earlier run' if ref['cached'] else ''})", flush=True)

        rows = [{"method": "gradient dot product (no Hessian)", "seconds": None,
                 **agreement(dot, reference, lists[:r], len(y))}]

        def measure(name, fn, repeats, queries=None):
            times, chosen = [], None
            for _ in range(repeats):
                t0 = time.perf_counter()
                got = fn()
                times.append(time.perf_counter() - t0)
                chosen = getattr(fastif_run, "chosen", None) if "fastif" in name else None
            n = queries or len(yq)
            row = {"method": name, "solver": chosen, "seconds": statistics.median(times),
                   "queries_timed": n, **agreement(got[:r], reference, lists[:r], len(y))}
            rows.append(row)
            print(f"  {name:<52} {row['seconds']:7.1f} s ({n} queries)  Pearson {row['pearson']:.4f}  "
                  f"top-10 {row['top10_overlap']:.3f}  flags {row['flag_overlap']:.3f}"
                  f"{'  [' + chosen + ']' if chosen else ''}", flush=True)

        measure("fastif default (auto)",
                lambda: as_lists(fastif_run(adapter, x, y, xq, yq, index, damping(), scale, "auto"), lists),
                args.repeats)
        if "ekfac" not in skip:
            measure("fastif ekfac", lambda: as_lists(fastif_run(adapter, x, y, xq, yq, index, settings.damping, scale,
                                                            "ekfac"), lists), args.repeats)
        for label, damping in (("λ + l2", ridge + adapter.l2), ("its heuristic, 0.1 × mean eigenvalue", None)):
            if "kronfluence" in skip:
                break
            def kf(damping=damping):
                with tempfile.TemporaryDirectory() as work:
                    return on_candidates(kronfluence_run(adapter, x, y, xq, yq, union, damping, work), union, lists)
            measure(f"Kronfluence EK-FAC, damping {label}", kf, args.repeats)
        m = max(min(args.lissa_errors, len(yq)), r)
        if "lissa" not in skip:
            measure("LiSSA J = 300, B = 16 (the seed's)",
                    lambda: as_lists(fastif_run(adapter, x, y, take(xq, slice(0, m)), yq[:m], index, settings.damping,
                                                scale, "lissa"), lists[:m]), 1, queries=m)
            rows[-1]["seconds_all_queries_scaled"] = rows[-1]["seconds"] * len(yq) / m

    RESULTS.mkdir(parents=True, exist_ok=True)
    model_tag = "" if args.model == "text-minilm" else f"{args.model}-"
    partial = "-without-" + "-".join(sorted(skip)) if skip else ""  # a partial run keeps the full run's file
    (RESULTS / f"vs_kronfluence-{model_tag}{tag}{partial}.json").write_text(json.dumps({
        "version": fastif_engine.__version__, "model": args.model, "train_rows": len(y), "errors": len(yq), "k": DEMO_SETTINGS["k"],
        "parameters": flat.size, "damping": settings.damping, "ridge_rule": tag, "ridge": ridge, "threads": torch.get_num_threads(), "repeats": args.repeats,
        "reference": {"solver": "cg", "iterations": ref["iterations"], "relative_residual": check}, "skipped": sorted(skip),
        "rows": rows}, indent=1))
    print("\n| method | median s | Pearson | top-10 overlap | flag overlap |\n|---|---|---|---|---|")
    for r in rows:
        secs = "–" if r["seconds"] is None else f"{r['seconds']:.1f}"
        if "seconds_all_queries_scaled" in r:
            secs = f"{r['seconds']:.0f} ({r['queries_timed']} errors; {r['seconds_all_queries_scaled']:.0f} scaled)"
        print(f"| {r['method']} | {secs} | {r['pearson']:.4f} | {r['top10_overlap']:.3f} | {r['flag_overlap']:.3f} |")


if __name__ == "__main__":
    main()
