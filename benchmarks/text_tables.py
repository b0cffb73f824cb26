"""The seed's Table 1 (speed) and Table 3 / Figure 4 (fidelity, kNN recall) on the text setting.

    python benchmarks/text_tables.py [--depth 100] [--repeats 3] [--cache benchmarks/.cache] [--damping d]

text-minilm fine-tuned on Rotten Tomatoes (all 10,246 training snippets); the model and the
frozen layers' outputs are cached under ``--cache`` so a rerun skips training.

Table 1, one misclassified validation example, the same LiSSA depth J, damping and scale in
every row (λ = 0.3 × the Hessian's sampled top eigenvalue, the product's default ridge, unless
``--damping``; the scale estimated once for B = 1, the larger, so stable for B = 128 too):
  original       all N training rows, LiSSA B = 128 / T = 1, per-example autograd loop
  kNN k          the k nearest training rows only, same s_test and loop
  kNN + fast     k = 1000, LiSSA B = 1 / T = 2, batched per-sample gradients
  … 2 workers    the same, T's repeats and then the candidates split over 2 warm processes
  default        k = 1000, fastif's default solver (``auto``, same damping and scale), built once
Table 3: fast (and the default solver's) vs original s_test, influence on each test example's 1,000 candidates,
Pearson / Spearman / Kendall over 6 test examples (3 correct, 3 wrong).
Recall R@m: share of the m most helpful / harmful rows of the whole training set (fast s_test,
scored on all N) that the k nearest neighbours contain, for 8 correct and 8 wrong predictions.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import kendalltau, pearsonr, spearmanr

from _shared import add_ridge_options, ridge_damping, loop_influence, timed
from fastif_engine.data.batching import take
from fastif_engine.data.datasets import export
from fastif_engine.data.tables import load_dataset
from fastif_engine.influence.api import extract_features
from fastif_engine.influence.gradients import FlatParams, gradient_matrix
from fastif_engine.influence.knn import FaissIndex
from fastif_engine.influence.scores import influence_on_candidates
from fastif_engine.influence.planning import make_solver
from fastif_engine.influence.solvers import LissaSettings, LissaSolver, auto_scale
from fastif_engine.models import DataInfo, create_model

ORIGINAL_B, FAST_T = 128, 2


def setup(cache: Path, max_train: int | None = None):
    """The trained model and prepared inputs (cached): train, valid."""
    cache.mkdir(parents=True, exist_ok=True)
    model = create_model("text-minilm", DataInfo("text", 2, ()))
    tag = f"rt{max_train or ''}"
    inputs_file, model_file = cache / f"{tag}-inputs.pt", cache / f"{tag}-model.pt"
    if not inputs_file.exists():
        paths = export("rotten-tomatoes", cache / tag, seed=0, max_train=max_train)
        ds = load_dataset({k: str(v) for k, v in paths.items()})
        blob = {s: (model.prepare(ds.splits[s].values), torch.as_tensor(ds.splits[s].labels)) for s in ("train", "valid")}
        torch.save(blob, inputs_file)
    blob = torch.load(inputs_file, weights_only=False)
    if model_file.exists():
        model.model.load_state_dict(torch.load(model_file, weights_only=True))
        model.model.eval()
    else:
        model.fit(*blob["train"], seed=0)
        torch.save(model.model.state_dict(), model_file)
    return model, blob


# --- warm worker processes for the 2-worker row (spawned; each loads the cached model once) ---
_W: dict = {}


def _init_worker(cache: str, max_train: int | None) -> None:
    torch.set_num_threads(1)
    model, blob = setup(Path(cache), max_train)
    _W.update(model=model, x=blob["train"][0], y=blob["train"][1])


def _w_repeat(v: torch.Tensor, settings: LissaSettings, repeat: int) -> torch.Tensor:
    return LissaSolver(_W["model"], _W["x"], _W["y"], settings).solve_repeat(v, repeat)


def _w_influence(s: torch.Tensor, rows: np.ndarray) -> np.ndarray:
    return influence_on_candidates(_W["model"], _W["x"], _W["y"], s, [rows], chunk_size=16).influence


def _w_ready() -> bool:
    return "model" in _W


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--depth", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3, help="timing repeats of the fast rows (median)")
    ap.add_argument("--cache", type=Path, default=Path("benchmarks/.cache"))
    ap.add_argument("--max-train", type=int, default=None, help="fewer training rows (a quick trial)")
    add_ridge_options(ap)
    args = ap.parse_args()
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    model, blob = setup(args.cache, args.max_train)
    (x, y), (xv, yv) = blob["train"], blob["valid"]
    n, flat = len(y), FlatParams.of(model)
    wrong = (model.predict(xv) != yv).nonzero().ravel()
    right = (model.predict(xv) == yv).nonzero().ravel()
    print(f"train rows {n}, validation errors {len(wrong)} of {len(yv)}, differentiated parameters {flat.size:,}")
    scale = auto_scale(model, flat, x, y, batch_size=1)
    damping = ridge_damping(model, flat, x, y, scale, args.damping)
    orig = LissaSettings(depth=args.depth, batch_size=ORIGINAL_B, repeats=1, damping=damping, scale=scale)
    fast = LissaSettings(depth=args.depth, batch_size=1, repeats=FAST_T, damping=damping, scale=scale)
    print(f"J = {args.depth}, damping {damping:.4g}, scale {scale:.4g} (λ = {damping * scale:.4g})\n")

    index = FaissIndex("flat")
    index.build(extract_features(model, x))
    test = take(xv, wrong[:1])
    v = gradient_matrix(model, test, yv[wrong[:1]])
    _, nn_all = index.search(extract_features(model, test), min(10_000, n))

    # ---- Table 1 ----
    rows = {}
    s_orig, t_s = timed(lambda: LissaSolver(model, x, y, orig).solve(v)[0])
    _, t_g = timed(lambda: loop_influence(model, x, y, s_orig, np.arange(n)))
    rows["original: all N, B=128, T=1, loop"] = [(t_s, t_g)]
    for k in (1_000, 10_000):
        cand = nn_all[0][:k]
        s_k, t_s = timed(lambda: LissaSolver(model, x, y, orig).solve(v)[0])
        _, t_g = timed(lambda: loop_influence(model, x, y, s_k, cand))
        rows[f"kNN k={k:,}, B=128, T=1, loop"] = [(t_s, t_g)]
    cand = nn_all[0][:1000]
    rows[f"kNN k=1,000 + fast s_test (B=1, T={FAST_T}), batched gradients"] = []
    for _ in range(args.repeats):
        s_f, t_s = timed(lambda: LissaSolver(model, x, y, fast).solve(v))
        _, t_g = timed(lambda: influence_on_candidates(model, x, y, s_f, [cand], chunk_size=16))
        rows[f"kNN k=1,000 + fast s_test (B=1, T={FAST_T}), batched gradients"].append((t_s, t_g))
    label = "… same, spread over 2 worker processes (1 thread each)"
    rows[label] = []
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(2, mp_context=ctx, initializer=_init_worker, initargs=(str(args.cache), args.max_train)) as pool:
        assert all(f.result() for f in [pool.submit(_w_ready) for _ in range(4)])  # workers warm before timing
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            s_w = sum(f.result() for f in [pool.submit(_w_repeat, v, fast, r) for r in range(FAST_T)]) / FAST_T
            t_s = time.perf_counter() - t0
            halves = np.array_split(cand, 2)
            t0 = time.perf_counter()
            [f.result() for f in [pool.submit(_w_influence, s_w, h) for h in halves]]
            rows[label].append((t_s, time.perf_counter() - t0))
    torch.testing.assert_close(s_w, s_f)  # the workers computed the same s_test
    default, t_build = timed(lambda: make_solver("auto", model, x, y, LissaSettings(damping=damping, scale=scale),
                                                 flat=flat, n_vectors=1))
    label = f"kNN k=1,000 + fastif's default solver (auto: {type(default).__name__}, built once in {t_build:.1f} s)"
    rows[label] = []
    for _ in range(args.repeats):
        s_d, t_s = timed(lambda: default.solve(v))
        _, t_g = timed(lambda: influence_on_candidates(model, x, y, s_d, [cand], chunk_size=16))
        rows[label].append((t_s, t_g))

    base = sum(rows["original: all N, B=128, T=1, loop"][0])
    print(f"Table 1 (J = {args.depth}; original and k rows timed once, fast rows median of {args.repeats})\n")
    print("| configuration | s_test (s) | influence gradients (s) | total (s) | speed-up vs original |")
    print("|---|---|---|---|---|")
    for name, times in rows.items():
        ts, tg = statistics.median(t[0] for t in times), statistics.median(t[1] for t in times)
        tot = statistics.median(sum(t) for t in times)
        print(f"| {name} | {ts:.2f} | {tg:.2f} | {tot:.2f} | {base / tot:.1f}× |", flush=True)

    # ---- Recall R@m and fidelity (Table 3) ----
    picks = torch.cat([wrong[:8], right[:8]])
    kinds = ["wrong"] * 8 + ["correct"] * 8
    xt, yt = take(xv, picks), yv[picks]
    vt = gradient_matrix(model, xt, yt)
    s_fast = LissaSolver(model, x, y, fast).solve(vt)
    full = influence_on_candidates(model, x, y, s_fast, None, chunk_size=16).as_matrix(len(picks), n)
    _, nn = index.search(extract_features(model, xt), min(5_000, n))
    print(f"\n(the default solver's one-off build, counted for this one error: {base / (t_build + sum(map(statistics.median, zip(*rows[label])))):.1f}×)")
    print(f"\nkNN recall R@m (fast s_test, all {n:,} rows scored; random = k/N)\n")
    print("| prediction | ranking | m | " + " | ".join(f"k={k:,}" for k in (100, 1000, 5000)) + " |")
    print("|---|---|---|---|---|---|")
    for kind in ("wrong", "correct"):
        sel = [i for i, kk in enumerate(kinds) if kk == kind]
        for ranking, sign in (("most helpful", 1.0), ("most harmful", -1.0)):
            for m in (10, 100):
                cells = []
                for k in (100, 1000, 5000):
                    rec = [len(np.intersect1d(np.argsort(sign * full[i])[:m], nn[i][:k])) / m for i in sel]
                    cells.append(f"{statistics.mean(rec):.3f}")
                print(f"| {kind} | {ranking} | {m} | " + " | ".join(cells) + " |", flush=True)
    print(f"| random | | | {100 / n:.3f} | {1000 / n:.3f} | {5000 / n:.3f} |")

    six = [0, 1, 2, 8, 9, 10]  # 3 wrong, 3 correct
    s_full = LissaSolver(model, x, y, orig).solve(vt[six])
    s_default = default.solve(vt[six])
    compared = {"fast (B=1, T=2)": {"Pearson": [], "Spearman": [], "Kendall": []},
                f"fastif default ({type(default).__name__})": {"Pearson": [], "Spearman": [], "Kendall": []}}
    for j, i in enumerate(six):
        cand_i = nn[i][:1000]
        b = influence_on_candidates(model, x, y, s_full[j:j + 1], [cand_i], chunk_size=16).influence
        d = influence_on_candidates(model, x, y, s_default[j:j + 1], [cand_i], chunk_size=16).influence
        for stats, a in zip(compared.values(), (full[i][cand_i], d)):
            stats["Pearson"].append(pearsonr(a, b)[0])
            stats["Spearman"].append(spearmanr(a, b)[0])
            stats["Kendall"].append(kendalltau(a, b)[0])
    print(f"\nvs the original (B={ORIGINAL_B}, T=1) s_test, J = {args.depth}: influence on each test example's "
          "1,000 nearest training rows, 6 test examples (3 wrong, 3 correct), mean ± std\n")
    print("| s_test | Pearson | Spearman | Kendall |\n|---|---|---|---|")
    for name, stats in compared.items():
        print(f"| {name} | " + " | ".join(f"{statistics.mean(v):.3f} ± {statistics.stdev(v):.3f}"
                                          for v in stats.values()) + " |")


if __name__ == "__main__":
    main()
